//! Discovery against fake device sources: ordering, CUDA_VISIBLE_DEVICES, bf16, MIG, output.

use vla_launch::app::AppError;
use vla_launch::gpu::{
    FakeSource, GpuError, GpuProcess, NVML_UNAVAILABLE, RawDevice, cuda_visible_devices_value,
    discover, render_table,
};
use vla_launch::units::{GIB, MIB};

fn device(nvml_index: u32, uuid: &str, bus: u32, name: &str, cc: (u32, u32)) -> RawDevice {
    RawDevice {
        nvml_index,
        name: name.into(),
        uuid: uuid.into(),
        pci_bus_id: Some(format!("00000000:{bus:02X}:00.0")),
        total_bytes: 81559 * MIB,
        free_bytes: 81000 * MIB,
        used_bytes: 559 * MIB,
        compute_capability: Some(cc),
        processes: Vec::new(),
        mig_instances: Vec::new(),
    }
}

const H100: &str = "NVIDIA H100 80GB HBM3";

/// Four H100s whose NVML order (by index) differs from their PCI bus order.
fn four_h100() -> FakeSource {
    FakeSource::new(vec![
        device(0, "GPU-3333", 0xC3, H100, (9, 0)),
        device(1, "GPU-1111", 0x19, H100, (9, 0)),
        device(2, "GPU-4444", 0xDF, H100, (9, 0)),
        device(3, "GPU-2222", 0x3B, H100, (9, 0)),
    ])
}

fn uuids(cvd: Option<&str>) -> Result<Vec<String>, GpuError> {
    let d = discover(&four_h100(), cvd)?;
    for (i, g) in d.gpus.iter().enumerate() {
        assert_eq!(g.index as usize, i, "indices follow CUDA order");
    }
    Ok(d.gpus.into_iter().map(|g| g.uuid).collect())
}

#[test]
fn order_and_selection_follow_pci_bus_ids_and_uuids() {
    let cases: Vec<(Option<&str>, &[&str])> = vec![
        (None, &["GPU-1111", "GPU-2222", "GPU-3333", "GPU-4444"]),
        (Some("0"), &["GPU-1111"]),
        (Some("1"), &["GPU-2222"]),
        (Some("3,0"), &["GPU-4444", "GPU-1111"]),
        (Some("GPU-33"), &["GPU-3333"]),
        (Some("GPU-4444,GPU-2"), &["GPU-4444", "GPU-2222"]),
        (Some("1,7,2"), &["GPU-2222"]),
    ];
    for (cvd, expected) in cases {
        assert_eq!(
            uuids(cvd).unwrap(),
            expected,
            "CUDA_VISIBLE_DEVICES={cvd:?}"
        );
    }
}

#[test]
fn nothing_visible_is_an_environment_error_that_says_why() {
    for cvd in ["", "0,0", "-1", "GPU-9", "GPU-"] {
        let err = uuids(Some(cvd)).unwrap_err();
        assert!(
            matches!(err, GpuError::NoneVisible { .. }),
            "{cvd:?}: {err}"
        );
        assert!(err.to_string().contains("CUDA_VISIBLE_DEVICES="), "{err}");
        assert_eq!(AppError::from(err).exit_code().code(), 4);
    }
}

#[test]
fn invalid_entry_keeps_what_precedes_with_a_warning() {
    let d = discover(&four_h100(), Some("2,oops,0")).unwrap();
    assert_eq!(d.gpus.len(), 1);
    assert_eq!(d.gpus[0].uuid, "GPU-3333");
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].contains("\"oops\""));
}

#[test]
fn gpus_without_bf16_are_left_out_or_refused() {
    let mixed = FakeSource::new(vec![
        device(0, "GPU-v100", 0x10, "Tesla V100-SXM2-32GB", (7, 0)),
        device(1, "GPU-a100", 0x20, "NVIDIA A100-SXM4-80GB", (8, 0)),
    ]);
    let d = discover(&mixed, None).unwrap();
    assert_eq!(d.gpus.len(), 1);
    assert_eq!(d.gpus[0].uuid, "GPU-a100");
    assert_eq!(d.gpus[0].index, 0);
    assert!(
        d.warnings[0].contains("Tesla V100-SXM2-32GB"),
        "{:?}",
        d.warnings
    );
    assert!(d.warnings[0].contains("7.0"));

    let err = discover(&mixed, Some("0")).unwrap_err();
    assert!(matches!(err, GpuError::NoBf16 { .. }));
    assert!(err.to_string().contains("GPU-v100"), "{err}");
    assert_eq!(AppError::from(err).exit_code().code(), 4);

    // Compute capability unknown to NVML: the known-model table fills it in.
    let mut t4 = device(0, "GPU-t4", 0x10, "Tesla T4", (0, 0));
    t4.compute_capability = None;
    let err = discover(&FakeSource::new(vec![t4]), None).unwrap_err();
    assert!(matches!(err, GpuError::NoBf16 { .. }), "{err}");
}

#[test]
fn no_driver_and_no_gpu() {
    let err = discover(&FakeSource::without_driver(), None).unwrap_err();
    assert_eq!(err.to_string(), NVML_UNAVAILABLE);
    assert_eq!(
        NVML_UNAVAILABLE,
        "NVML not found: no NVIDIA driver on this machine; use --gpus to plan for other GPUs"
    );
    assert_eq!(AppError::from(err).exit_code().code(), 4);
    let err = discover(&FakeSource::new(vec![]), None).unwrap_err();
    assert!(matches!(err, GpuError::NoGpus));
}

#[test]
fn busy_gpu_shows_its_processes_and_reduced_free_memory() {
    let mut busy = device(0, "GPU-busy", 0x10, H100, (9, 0));
    busy.used_bytes = 20 * GIB + 559 * MIB;
    busy.free_bytes = busy.total_bytes - busy.used_bytes - 500 * MIB;
    busy.processes = vec![GpuProcess {
        pid: 4242,
        used_bytes: Some(20 * GIB),
        name: Some("python3".into()),
    }];
    let d = discover(&FakeSource::new(vec![busy.clone()]), None).unwrap();
    let g = &d.gpus[0];
    assert_eq!(g.free_bytes, busy.free_bytes);
    assert_eq!(g.processes, busy.processes);
    let table = render_table(&d.gpus);
    assert!(table.contains("4242 python3 20.00 GiB"), "{table}");
    assert!(table.contains("GPU-busy"));
    assert!(table.contains("79.65 GiB"), "total shown: {table}");
}

#[test]
fn mig_instances_replace_their_parent() {
    let mut parent = device(0, "GPU-parent", 0x10, "NVIDIA A100-SXM4-40GB", (8, 0));
    let mut mig = device(
        0,
        "MIG-aaaa",
        0x10,
        "NVIDIA A100-SXM4-40GB MIG 3g.20gb",
        (8, 0),
    );
    mig.total_bytes = 19968 * MIB;
    let mut mig2 = mig.clone();
    mig2.uuid = "MIG-bbbb".into();
    parent.mig_instances = vec![mig, mig2];
    let plain = device(1, "GPU-plain", 0x20, "NVIDIA A100-SXM4-40GB", (8, 0));
    let source = FakeSource::new(vec![plain, parent]);

    let all = discover(&source, None).unwrap();
    let listed: Vec<&str> = all.gpus.iter().map(|g| g.uuid.as_str()).collect();
    assert_eq!(listed, ["MIG-aaaa", "MIG-bbbb", "GPU-plain"]);
    assert!(
        all.warnings
            .iter()
            .any(|w| w.contains("single MIG instance"))
    );

    let one = discover(&source, Some("MIG-bb")).unwrap();
    assert_eq!(one.gpus[0].uuid, "MIG-bbbb");
    assert_eq!(one.gpus[0].total_bytes, 19968 * MIB);
    assert!(one.warnings.is_empty(), "{:?}", one.warnings);

    let by_ordinal = discover(&source, Some("0")).unwrap();
    assert_eq!(by_ordinal.gpus[0].uuid, "MIG-aaaa");
    assert!(by_ordinal.warnings[0].contains("MIG mode"));
}

#[test]
fn torchrun_gets_uuids_in_cuda_order() {
    let d = discover(&four_h100(), Some("2,1")).unwrap();
    assert_eq!(cuda_visible_devices_value(&d.gpus), "GPU-3333,GPU-2222");
    assert_eq!(cuda_visible_devices_value(&[]), "");
}

#[test]
fn json_has_the_contract_keys() {
    let d = discover(&four_h100(), Some("0")).unwrap();
    let v = serde_json::to_value(&d.gpus).unwrap();
    let g = &v[0];
    for key in [
        "index",
        "name",
        "uuid",
        "total_bytes",
        "free_bytes",
        "used_bytes",
        "pci_bus_id",
    ] {
        assert!(g.get(key).is_some(), "missing {key}: {g}");
    }
    assert_eq!(g["uuid"], "GPU-1111");
    assert_eq!(g["total_bytes"], 81559 * MIB);
    assert_eq!(g["compute_capability"], serde_json::json!([9, 0]));
    assert!(d.elapsed_ms >= 0.0);
}

#[test]
fn table_has_one_aligned_row_per_gpu() {
    let d = discover(&four_h100(), None).unwrap();
    let table = render_table(&d.gpus);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("IDX"));
    let uuid_col = lines[0].find("UUID").unwrap();
    for (i, line) in lines[1..].iter().enumerate() {
        assert_eq!(&line[uuid_col..uuid_col + 4], "GPU-", "row {i}: {line}");
        assert!(line.contains("9.0"));
        assert!(line.trim_end().ends_with('-'), "no processes: {line}");
    }
}

#[test]
fn torchrun_env_names_gpus_by_uuid_in_pci_order() {
    let d = discover(&four_h100(), Some("GPU-4444,GPU-11")).unwrap();
    let env = vla_launch::gpu::torchrun_gpu_env(&d.gpus);
    assert_eq!(
        env[0],
        ("CUDA_VISIBLE_DEVICES", "GPU-4444,GPU-1111".to_string())
    );
    assert_eq!(env[1], ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".to_string()));
}
