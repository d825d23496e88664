//! The real device source: NVML, loaded at run time (libnvidia-ml.so.1) so the binary runs
//! on machines without the driver and only `gpus`/planning without `--gpus` fail there.

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::device::GpuProcess;
use super::error::GpuError;
use super::source::{GpuSource, RawDevice};

/// NVML's "MIG enabled" value for `MigMode::current`.
const MIG_ENABLED: u32 = 1;

#[derive(Debug, Clone, Copy, Default)]
pub struct NvmlSource;

impl NvmlSource {
    pub fn new() -> Self {
        Self
    }
}

fn init() -> Result<Nvml, GpuError> {
    Nvml::init().map_err(|e| match e {
        NvmlError::NoPermission => GpuError::NvmlInit {
            reason: "no permission to talk to the NVIDIA driver".into(),
        },
        // Library missing, symbols missing or driver not loaded: all mean "no usable driver here".
        other => GpuError::NvmlUnavailable {
            reason: other.to_string(),
        },
    })
}

fn query_err(what: &'static str, nvml_index: u32) -> impl Fn(NvmlError) -> GpuError {
    move |e| GpuError::Query {
        what,
        nvml_index,
        message: e.to_string(),
    }
}

/// Compute processes with their memory; the name comes from /proc when the pid is in our
/// namespace (in a container, other processes' pids often are not).
fn processes(device: &Device<'_>, nvml_index: u32) -> Vec<GpuProcess> {
    match device.running_compute_processes() {
        Ok(list) => list
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
                name: std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                    .ok()
                    .map(|s| s.trim_end().to_string())
                    .filter(|s| !s.is_empty()),
            })
            .collect(),
        Err(e) => {
            tracing::debug!(nvml_index, error = %e, "cannot list compute processes");
            Vec::new()
        }
    }
}

/// The fields every device (physical or MIG) has.
fn read_device(
    device: &Device<'_>,
    nvml_index: u32,
    pci_bus_id: Option<String>,
    compute_capability: Option<(u32, u32)>,
) -> Result<RawDevice, GpuError> {
    let memory = device
        .memory_info()
        .map_err(query_err("memory", nvml_index))?;
    Ok(RawDevice {
        nvml_index,
        name: device.name().map_err(query_err("name", nvml_index))?,
        uuid: device.uuid().map_err(query_err("UUID", nvml_index))?,
        pci_bus_id,
        total_bytes: memory.total,
        free_bytes: memory.free,
        used_bytes: memory.used,
        compute_capability,
        processes: processes(device, nvml_index),
        mig_instances: Vec::new(),
    })
}

/// MIG instances of a MIG-enabled GPU (best effort: slots without an instance are skipped).
fn mig_instances(device: &Device<'_>, parent: &RawDevice) -> Result<Vec<RawDevice>, GpuError> {
    let enabled = matches!(device.mig_mode(), Ok(m) if m.current == MIG_ENABLED);
    if !enabled {
        return Ok(Vec::new());
    }
    let slots = device.mig_device_count().unwrap_or(0);
    let mut out = Vec::new();
    for slot in 0..slots {
        match device.mig_device_by_index(slot) {
            Ok(mig) => out.push(read_device(
                &mig,
                parent.nvml_index,
                parent.pci_bus_id.clone(),
                parent.compute_capability,
            )?),
            Err(NvmlError::NotFound) => continue,
            Err(e) => tracing::debug!(slot, error = %e, "cannot open MIG instance"),
        }
    }
    Ok(out)
}

impl GpuSource for NvmlSource {
    fn devices(&self) -> Result<Vec<RawDevice>, GpuError> {
        let nvml = init()?;
        let count = nvml.device_count().map_err(|e| GpuError::Query {
            what: "device count",
            nvml_index: 0,
            message: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(count as usize);
        for nvml_index in 0..count {
            let device = nvml
                .device_by_index(nvml_index)
                .map_err(query_err("handle", nvml_index))?;
            let pci = device.pci_info().ok().map(|p| p.bus_id);
            let cc = device
                .cuda_compute_capability()
                .ok()
                .and_then(|c| Some((u32::try_from(c.major).ok()?, u32::try_from(c.minor).ok()?)));
            let mut raw = read_device(&device, nvml_index, pci, cc)?;
            raw.mig_instances = mig_instances(&device, &raw)?;
            out.push(raw);
        }
        Ok(out)
    }
}
