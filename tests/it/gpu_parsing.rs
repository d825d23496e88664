//! Table-driven parsing of CUDA_VISIBLE_DEVICES and `--gpus`, hostile inputs included.

use vla_launch::app::AppError;
use vla_launch::gpu::cuda_visible::{Entry, parse, resolve};
use vla_launch::gpu::spec::{
    DRIVER_RESERVE_BYTES, MAX_GPUS, SpecError, describe_gpus, parse_gpus_spec,
};
use vla_launch::gpu::{GpuError, lookup_alias, lookup_by_name};
use vla_launch::units::{GIB, MIB};

const UUIDS: [&str; 4] = [
    "GPU-aaaa1111-0000-0000-0000-000000000000",
    "GPU-aaaa2222-0000-0000-0000-000000000000",
    "GPU-bbbb3333-0000-0000-0000-000000000000",
    "MIG-cccc4444-0000-0000-0000-000000000000",
];

/// (value, positions CUDA would expose among UUIDS with 3 physical GPUs, warnings expected)
#[test]
fn cuda_visible_devices_table() {
    let long_garbage = "x".repeat(100_000);
    let long_list = (0..10_000)
        .map(|i| (i % 3).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let cases: Vec<(&str, &[usize], usize)> = vec![
        ("", &[], 0),
        ("0", &[0], 0),
        ("2,0", &[2, 0], 0),
        (" 1", &[1], 0),
        ("+1", &[1], 0),
        ("1gpu2,2ampere", &[1, 2], 0),
        ("0,1,2,3", &[0, 1, 2], 1),
        ("3", &[], 1),
        ("-1", &[], 1),
        ("0,-1,1", &[0], 1),
        ("0,abc,1", &[0], 1),
        (",,,", &[], 1),
        ("0,,1", &[0], 1),
        ("0,0", &[], 1),
        ("1,2,1", &[], 1),
        ("99999999999999999999999", &[], 1),
        ("18446744073709551615", &[], 1),
        ("０", &[], 1),
        ("ü,0", &[], 1),
        ("GPU-aaaa1111", &[0], 0),
        ("GPU-bbbb,GPU-aaaa1", &[2, 0], 0),
        ("GPU-aaaa", &[], 1),
        ("GPU-zzzz,GPU-bbbb", &[], 1),
        ("GPU-bbbb,0", &[2], 1),
        ("GPU-bbbb,GPU-bbbb3333", &[], 1),
        ("GPU-bbbb,GPU-bbbb", &[], 1),
        ("MIG-cccc", &[3], 0),
        ("MIG-cccc,GPU-aaaa1", &[3], 1),
        ("0,GPU-aaaa1111", &[0], 1),
        (&long_garbage, &[], 1),
        (&long_list, &[], 1),
    ];
    for (value, expected, n_warnings) in cases {
        let got = resolve(&parse(value), &UUIDS, 3);
        let shown: String = value.chars().take(40).collect();
        assert_eq!(got.positions, expected, "CUDA_VISIBLE_DEVICES={shown:?}");
        assert_eq!(
            got.warnings.len(),
            n_warnings,
            "{shown:?}: {:?}",
            got.warnings
        );
        for w in &got.warnings {
            assert!(w.len() < 300, "warning too long for {shown:?}: {w}");
        }
    }
}

#[test]
fn ordinals_read_like_strtoul() {
    let p = parse("7,  3 ,12abc");
    assert_eq!(
        p.entries,
        vec![Entry::Ordinal(7), Entry::Ordinal(3), Entry::Ordinal(12)]
    );
    assert!(p.warnings.is_empty());
}

#[test]
fn warnings_name_the_bad_entry_and_its_position() {
    let got = resolve(&parse("0,1,banana,2"), &UUIDS, 3);
    assert_eq!(got.positions, vec![0, 1]);
    assert!(
        got.warnings[0].contains("\"banana\""),
        "{}",
        got.warnings[0]
    );
    assert!(
        got.warnings[0].contains("position 3"),
        "{}",
        got.warnings[0]
    );
}

#[test]
fn gpus_spec_valid_forms() {
    let cases: Vec<(&str, usize, u64)> = vec![
        ("4x24GiB", 4, 24 * GIB),
        ("2x75GB", 2, 75_000_000_000),
        ("1x40960MiB", 1, 40960 * MIB),
        ("1x2000MB", 1, 2_000_000_000),
        ("1x1.5gib", 1, 3 * GIB / 2),
        ("3X24gib", 3, 24 * GIB),
        (" 2 x 24GiB ", 2, 24 * GIB),
        ("4xrtx4090", 4, 24564 * MIB),
        ("1xa100-40gb", 1, 40960 * MIB),
        ("1xa100-80gb", 1, 81920 * MIB),
        ("8xh100", 8, 81559 * MIB),
        ("1xH100_PCIe", 1, 81559 * MIB),
        ("1xh200", 1, 143771 * MIB),
        ("1024x24GiB", 1024, 24 * GIB),
    ];
    for (spec, count, bytes) in cases {
        let gpus = parse_gpus_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(gpus.len(), count, "{spec}");
        for (i, g) in gpus.iter().enumerate() {
            assert_eq!(g.total_bytes, bytes, "{spec}");
            assert_eq!(
                g.free_bytes,
                g.total_bytes - DRIVER_RESERVE_BYTES,
                "{spec}: described GPUs are idle"
            );
            assert_eq!(g.index as usize, i);
            assert_eq!(g.uuid, format!("described-{i}"));
            assert!(g.described);
        }
    }
}

#[test]
fn gpus_spec_mixed_keeps_order_and_models() {
    let got: Vec<_> = parse_gpus_spec("1xh100,1xa100-40gb,2x24GiB")
        .unwrap()
        .into_iter()
        .map(|g| (g.total_bytes, g.name, g.compute_capability))
        .collect();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        (81559 * MIB, "NVIDIA H100 80GB HBM3".into(), Some((9, 0)))
    );
    assert_eq!(
        got[1],
        (40960 * MIB, "NVIDIA A100-SXM4-40GB".into(), Some((8, 0)))
    );
    assert_eq!(got[2].0, 24 * GIB);
    assert_eq!(got[3].2, None);
}

/// Each bad spec and a fragment its message must contain (the bad part, or the fix).
#[test]
fn gpus_spec_errors_name_the_bad_part() {
    let long = format!("1x{}", "9".repeat(10_000));
    let long_model = format!("1x{}", "q".repeat(10_000));
    let cases: Vec<(&str, &str)> = vec![
        ("", "empty"),
        ("   ", "empty"),
        (",,,", "position 1"),
        ("4x24GiB,", "position 2"),
        ("-1x24GiB", "\"-1\""),
        ("0x24GiB", "\"0\""),
        ("0x", "\"0\""),
        ("x24GiB", "no COUNTx"),
        ("4x", "no size or model"),
        ("24GiB", "no COUNTx"),
        ("h100", "how many? 1xh100 for one card"),
        ("rtx4090", "how many? 1xrtx4090 for one card"),
        ("4x24", "\"24\""),
        ("4x24TB", "\"TB\""),
        ("4x24 GiB", "\" GiB\""),
        ("4x-24GiB", "\"-24GiB\""),
        ("4x1.2.3GiB", "\"1.2.3GiB\""),
        ("4x0GiB", "outside the accepted range"),
        ("4x100MB", "outside the accepted range"),
        ("1x1000MB", "outside the accepted range"),
        ("1x99999999999GiB", "outside the accepted range"),
        ("1x18446744073709551616GiB", "\"18446744073709551616GiB\""),
        ("4xh1000", "known models: rtx3090"),
        ("4xＨ100", "unknown GPU model"),
        ("2xv100", "compute capability 7.0"),
        ("1xt4", "compute capability 7.5"),
        ("1025x24GiB", "\"1025\""),
        ("99999999999999999999x24GiB", "from 1 to 1024"),
        ("1000xh100,100xh100", "1100 GPUs"),
        ("4x24GiB;2x80GB", "\"GiB;2x80GB\""),
        // GPU names as people say them: a model number, another separator, a typo, an
        // ambiguous name.
        ("4x4090", "did you mean 4xrtx4090"),
        ("2x3090", "did you mean 2xrtx3090"),
        ("4-rtx4090", "did you mean 4xrtx4090"),
        ("4:h100", "did you mean 4xh100"),
        ("4 rtx4090", "did you mean 4xrtx4090"),
        ("4xrtx490", "did you mean 4xrtx4090"),
        (
            "2xa100",
            "2xa100-40gb (40.00 GiB) or 2xa100-80gb (80.00 GiB)",
        ),
        ("2xA100_PCIe", "2xa100-40gb"),
        (&long, "characters)"),
        (&long_model, "characters)"),
    ];
    for (spec, fragment) in cases {
        let shown: String = spec.chars().take(40).collect();
        let err = parse_gpus_spec(spec).expect_err(&shown);
        let msg = err.to_string();
        assert!(msg.contains(fragment), "{shown:?}: {msg}");
        let bounded = msg.len() < 400 || matches!(err, SpecError::UnknownModel { .. });
        assert!(bounded, "{shown:?}: message too long: {msg}");
        assert_eq!(
            AppError::from(GpuError::from(err)).exit_code().code(),
            2,
            "{shown:?}"
        );
    }
    assert_eq!(MAX_GPUS, 1024);
}

#[test]
fn nvml_names_map_to_models() {
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("NVIDIA H100 80GB HBM3", Some("h100")),
        ("NVIDIA H100 PCIe", Some("h100-pcie")),
        ("NVIDIA H100 NVL", Some("h100-nvl")),
        ("NVIDIA H200", Some("h200")),
        ("NVIDIA B200", Some("b200")),
        ("NVIDIA A100-SXM4-80GB", Some("a100-80gb")),
        ("NVIDIA A100 80GB PCIe", Some("a100-80gb")),
        ("NVIDIA A100-PCIE-40GB", Some("a100-40gb")),
        ("NVIDIA A100-SXM4-40GB", Some("a100-40gb")),
        ("NVIDIA GeForce RTX 4090", Some("rtx4090")),
        ("nvidia geforce rtx 3090", Some("rtx3090")),
        ("NVIDIA GeForce RTX 5090", Some("rtx5090")),
        ("NVIDIA L40S", Some("l40s")),
        ("NVIDIA L40", Some("l40")),
        ("NVIDIA A40", Some("a40")),
        ("NVIDIA A10", Some("a10")),
        ("Tesla V100-SXM2-32GB", Some("v100")),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
        ("NVIDIA A10G", None),
        ("NVIDIA GH200 480GB", None),
        ("", None),
        ("🙂", None),
    ];
    for (name, key) in cases {
        assert_eq!(lookup_by_name(name).map(|k| k.key), key, "{name}");
    }
    let h100 = lookup_by_name("NVIDIA H100 80GB HBM3").unwrap();
    assert_eq!(
        h100.total_bytes(),
        85_520_809_984,
        "measured NVML total of an H100 80GB HBM3"
    );
    assert!(h100.bf16_dense_tflops.unwrap() > 900.0);
    assert_eq!(lookup_alias("A100-80GB").map(|k| k.key), Some("a100-80gb"));
    assert_eq!(lookup_alias("h100 sxm").map(|k| k.key), Some("h100"));
}

/// `4*rtx4090` and `4×rtx4090` are read as `4xrtx4090`.
#[test]
fn gpus_spec_accepts_star_and_times_as_the_separator() {
    for spec in ["4*rtx4090", "4×rtx4090", "4 * 24GiB", "2*h100,2xh100"] {
        let gpus = parse_gpus_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(gpus.len(), 4, "{spec}");
    }
}

/// `4x24GB` is the size a card is sold with: planned with the least capacity NVML shows for a
/// card sold with it, and a note says which cards those are and how to be exact.
#[test]
fn marketed_sizes_plan_with_what_nvml_shows() {
    let d = describe_gpus("4x24GB").unwrap();
    assert_eq!(d.gpus.len(), 4);
    // a10: 23028 MiB with ECC on; rtx4090 24564, rtx3090 24576, l4 23034.
    assert!(d.gpus.iter().all(|g| g.total_bytes == 23028 * MIB));
    let note = d.notes.join("\n");
    for word in ["rtx4090", "a10", "4xrtx4090", "22.49 GiB", "24GiB"] {
        assert!(note.contains(word), "{word}: {note}");
    }
    let d = describe_gpus("2x80GB").unwrap();
    assert!(
        d.gpus.iter().all(|g| g.total_bytes == 81559 * MIB),
        "h100: 81559 MiB"
    );
    // Not a size any card is sold with: decimal GB as before, and nothing to say.
    let d = describe_gpus("1x75GB").unwrap();
    assert_eq!(d.gpus[0].total_bytes, 75_000_000_000);
    assert!(d.notes.is_empty());
    // GiB is exact.
    let d = describe_gpus("1x24GiB").unwrap();
    assert_eq!(d.gpus[0].total_bytes, 24 * GIB);
    assert!(d.notes.is_empty());
    assert_eq!(
        parse_gpus_spec("4x24GB").unwrap(),
        describe_gpus("4x24GB").unwrap().gpus
    );
}
