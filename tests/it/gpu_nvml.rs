//! The real NVML source. Without the driver it must fail with the one documented sentence;
//! with it, it must agree with nvidia-smi on UUIDs, totals and (roughly) free memory.

use std::process::Command;

use vla_launch::app::AppError;
use vla_launch::gpu::{GpuError, GpuSource, NVML_UNAVAILABLE, NvmlSource, discover};
use vla_launch::units::MIB;

/// (uuid, total MiB, free MiB, PCI bus id) per GPU, in nvidia-smi's order.
fn nvidia_smi() -> Vec<(String, u64, u64, String)> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=uuid,memory.total,memory.free,pci.bus_id",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .expect("NVML works but nvidia-smi cannot run");
    assert!(out.status.success(), "nvidia-smi failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].to_string(),
            )
        })
        .collect()
}

#[test]
fn nvml_source_matches_nvidia_smi_or_reports_no_driver() {
    let devices = match NvmlSource.devices() {
        Err(e @ GpuError::NvmlUnavailable { .. }) => {
            assert_eq!(e.to_string(), NVML_UNAVAILABLE);
            assert_eq!(AppError::from(e).exit_code().code(), 4);
            return;
        }
        other => other.expect("NVML is present but the query failed"),
    };
    let smi = nvidia_smi();
    assert_eq!(devices.len(), smi.len(), "GPU count");
    for (uuid, total_mib, free_mib, bus) in &smi {
        let d = devices
            .iter()
            .find(|d| &d.uuid == uuid)
            .unwrap_or_else(|| panic!("{uuid} missing from NVML source"));
        assert_eq!(d.total_bytes / MIB, *total_mib, "{uuid} total");
        // Free memory moves between the two calls; a few hundred MiB is the tolerance.
        assert!(
            (d.free_bytes / MIB).abs_diff(*free_mib) <= 256,
            "{uuid} free {} MiB vs nvidia-smi {free_mib} MiB",
            d.free_bytes / MIB
        );
        assert!(
            d.pci_bus_id
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(bus)),
            "{uuid} bus {:?} vs {bus}",
            d.pci_bus_id
        );
        eprintln!(
            "{uuid}: {} total {} MiB free {} MiB cc {:?} processes {:?}",
            d.name,
            d.total_bytes / MIB,
            d.free_bytes / MIB,
            d.compute_capability,
            d.processes
        );
    }

    // Ordinals count in PCI bus order: CUDA_VISIBLE_DEVICES=N is the N-th GPU by bus id.
    let mut by_bus = smi.clone();
    by_bus.sort_by_key(|g| g.3.to_ascii_lowercase());
    let last = by_bus.len() - 1;
    let d = discover(&NvmlSource, Some(&last.to_string())).unwrap();
    assert_eq!(d.gpus.len(), 1);
    assert_eq!(d.gpus[0].uuid, by_bus[last].0);
    eprintln!("discovery took {:.1} ms", d.elapsed_ms);

    // A unique UUID prefix selects exactly that GPU.
    let prefix = &by_bus[0].0[..12];
    if by_bus.iter().filter(|g| g.0.starts_with(prefix)).count() == 1 {
        let d = discover(&NvmlSource, Some(prefix)).unwrap();
        assert_eq!(d.gpus.len(), 1);
        assert_eq!(d.gpus[0].uuid, by_bus[0].0);
    }
}
