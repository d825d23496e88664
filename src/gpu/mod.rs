//! GPU discovery (NVML), CUDA_VISIBLE_DEVICES, and the `--gpus` spec.
//!
//! Flow: a `GpuSource` (NVML, or a fake) gives raw devices -> they are put in PCI bus order
//! (the launcher sets CUDA_DEVICE_ORDER=PCI_BUS_ID) -> CUDA_VISIBLE_DEVICES picks and orders
//! them by position or UUID, never by NVML index -> GPUs without bf16 are left out.

pub mod cuda_visible;
mod device;
mod error;
pub mod known;
pub mod nvml;
pub mod source;
pub mod spec;
mod table;

use std::time::Instant;

use serde::Serialize;

pub use device::{Gpu, GpuProcess};
pub use error::{GpuError, NVML_UNAVAILABLE};
pub use known::{KnownGpu, lookup_alias, lookup_by_name};
pub use nvml::NvmlSource;
pub use source::{FakeSource, GpuSource, RawDevice};
pub use spec::{Described, SpecError, describe_gpus, parse_gpus_spec};
pub use table::render_table;

/// The GPUs in CUDA order, what was left out and why, and how long the query took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovery {
    pub gpus: Vec<Gpu>,
    pub warnings: Vec<String>,
    /// Time spent in the device source and selection (NVML start-up dominates).
    pub elapsed_ms: f64,
}

/// Sort key for NVML's "DDDDDDDD:BB:DD.F" (hex); unparsable ids sort last, by NVML index.
fn pci_key(device: &RawDevice) -> (u8, u64, u32) {
    let parsed = device.pci_bus_id.as_deref().and_then(|id| {
        let (domain, rest) = id.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        Some((((hex(domain)? * 256 + hex(bus)?) * 256 + hex(dev)?) * 16) + hex(func)?)
    });
    match parsed {
        Some(k) => (0, k, device.nvml_index),
        None => (1, 0, device.nvml_index),
    }
}

fn describe(d: &RawDevice) -> String {
    format!("{} ({})", d.name, d.uuid)
}

/// Picks the GPUs the training processes will see, in their CUDA order.
/// `cuda_visible_devices` is the raw environment value (`None` when unset).
pub fn discover(
    source: &dyn GpuSource,
    cuda_visible_devices: Option<&str>,
) -> Result<Discovery, GpuError> {
    let started = Instant::now();
    let mut physical = source.devices()?;
    if physical.is_empty() {
        return Err(GpuError::NoGpus);
    }
    physical.sort_by_key(pci_key);
    let migs: Vec<(usize, &RawDevice)> = physical
        .iter()
        .enumerate()
        .flat_map(|(p, d)| d.mig_instances.iter().map(move |m| (p, m)))
        .collect();
    // Candidates in CUDA order: physical GPUs (what ordinals count), then MIG instances.
    let candidates: Vec<&RawDevice> = physical
        .iter()
        .chain(migs.iter().map(|(_, m)| *m))
        .collect();
    let mut warnings = Vec::new();

    let chosen_positions = visible_positions(
        &physical,
        &migs,
        &candidates,
        cuda_visible_devices,
        &mut warnings,
    )?;

    if chosen_positions.len() > 1 && chosen_positions.iter().any(|&p| p >= physical.len()) {
        warnings.push(
            "MIG instances are visible: CUDA gives one process a single MIG instance, so a multi-GPU torchrun cannot use them; name one with CUDA_VISIBLE_DEVICES=MIG-..."
                .into(),
        );
    }

    let gpus = bf16_gpus(chosen_positions, &candidates, &mut warnings)?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(elapsed_ms, gpus = gpus.len(), "GPU discovery done");
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(Discovery {
        gpus,
        warnings,
        elapsed_ms,
    })
}

/// The candidates' positions CUDA will show, in its order: every GPU (its MIG instances for one
/// in MIG mode) when `CUDA_VISIBLE_DEVICES` is unset, else what the value names.
fn visible_positions(
    physical: &[RawDevice],
    migs: &[(usize, &RawDevice)],
    candidates: &[&RawDevice],
    cuda_visible_devices: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Vec<usize>, GpuError> {
    Ok(match cuda_visible_devices {
        None => (0..physical.len())
            .flat_map(|p| {
                let mine: Vec<usize> = migs
                    .iter()
                    .enumerate()
                    .filter(|(_, (parent, _))| *parent == p)
                    .map(|(i, _)| physical.len() + i)
                    .collect();
                if mine.is_empty() { vec![p] } else { mine }
            })
            .collect(),
        Some(value) => {
            let uuids: Vec<&str> = candidates.iter().map(|d| d.uuid.as_str()).collect();
            let resolved =
                cuda_visible::resolve(&cuda_visible::parse(value), &uuids, physical.len());
            warnings.extend(resolved.warnings.iter().cloned());
            if resolved.positions.is_empty() {
                let why = resolved
                    .warnings
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "the value is empty".into());
                return Err(GpuError::NoneVisible {
                    value: cuda_visible::echo(value),
                    why,
                });
            }
            // A GPU in MIG mode is reached through its MIG instance: CUDA shows the first one.
            resolved
                .positions
                .into_iter()
                .map(|pos| {
                    let first_mig = migs.iter().position(|(parent, _)| *parent == pos);
                    match first_mig {
                        Some(i) if pos < physical.len() => {
                            warnings.push(format!(
                                "GPU {} is in MIG mode; CUDA uses its MIG instance {}",
                                describe(&physical[pos]),
                                migs[i].1.uuid
                            ));
                            physical.len() + i
                        }
                        _ => pos,
                    }
                })
                .collect()
        }
    })
}

/// The chosen devices that can train in bf16 (compute capability 8.0 or newer), numbered in
/// order; the others are left out with a warning.
fn bf16_gpus(
    chosen_positions: Vec<usize>,
    candidates: &[&RawDevice],
    warnings: &mut Vec<String>,
) -> Result<Vec<Gpu>, GpuError> {
    let mut gpus = Vec::new();
    let mut refused = Vec::new();
    for pos in chosen_positions {
        let d = candidates[pos];
        let cc = d
            .compute_capability
            .or_else(|| lookup_by_name(&d.name).map(|k| k.compute_capability));
        if let Some((major, minor)) = cc.filter(|(major, _)| *major < 8) {
            warnings.push(format!(
                "GPU {} has compute capability {major}.{minor}; bf16 needs 8.0 (Ampere) or newer, so it is left out",
                describe(d)
            ));
            refused.push(describe(d));
            continue;
        }
        gpus.push(Gpu {
            index: gpus.len() as u32,
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            pci_bus_id: d.pci_bus_id.clone(),
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes,
            used_bytes: d.used_bytes,
            compute_capability: cc,
            processes: d.processes.clone(),
            described: false,
        });
    }
    if gpus.is_empty() {
        return Err(GpuError::NoBf16 {
            gpus: refused.join(", "),
        });
    }
    Ok(gpus)
}

/// Environment variable names the launcher sets for torchrun.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
pub const CUDA_DEVICE_ORDER: &str = "CUDA_DEVICE_ORDER";

/// The environment that makes torchrun's ranks see exactly `gpus`, in this order: UUIDs (immune
/// to numbering differences) and PCI bus order (so ordinals inside the job match `gpus` too).
pub fn torchrun_gpu_env(gpus: &[Gpu]) -> [(&'static str, String); 2] {
    [
        (CUDA_VISIBLE_DEVICES, cuda_visible_devices_value(gpus)),
        (CUDA_DEVICE_ORDER, "PCI_BUS_ID".to_string()),
    ]
}

/// CUDA_VISIBLE_DEVICES for torchrun: the chosen GPUs by UUID, in their order, so the ranks
/// see exactly these whatever the NVML or CUDA numbering (real GPUs only: described GPUs
/// carry synthetic UUIDs).
pub fn cuda_visible_devices_value(gpus: &[Gpu]) -> String {
    gpus.iter()
        .map(|g| g.uuid.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
