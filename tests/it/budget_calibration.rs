//! Every row of the measured table (tests/fixtures/measured-vram.csv) predicted within 10%.

use vla_launch::budget::{self, Allocator, Config, FsdpVersion, Strategy};
use vla_launch::model::{Dtype, ModelSpec, Platform};
use vla_launch::units::gib;

use crate::common::spec;

const FIXTURE: &str = include_str!("../fixtures/measured-vram.csv");
const H100: &str = "NVIDIA H100 80GB HBM3";

struct Row {
    label: String,
    spec: ModelSpec,
    cfg: Config,
    static_gib: Option<f64>,
    alloc: f64,
    reserved: f64,
    nvml: f64,
}

fn rows() -> Vec<Row> {
    FIXTURE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let platform = Platform::from_words(&[f[0]]).expect("platform word");
            let lora_dtype = if f[2] == "fp32" {
                Dtype::Fp32
            } else {
                Dtype::Bf16
            };
            let world: u32 = f[4].parse().unwrap();
            let cfg = Config {
                strategy: if f[1] == "fsdp" {
                    Strategy::Fsdp
                } else {
                    Strategy::Ddp
                },
                world_size: world,
                nproc_per_node: world,
                batch_size: f[5].parse().unwrap(),
                checkpointing: f[6] == "yes",
                allocator: if f[3] == "default" {
                    Allocator::Default
                } else {
                    Allocator::ExpandableSegments
                },
                gpu_name: H100.into(),
                fsdp: FsdpVersion::Fsdp1,
            };
            Row {
                label: format!(
                    "{} {} {} {} w{} b{} ckpt={}",
                    f[0], f[1], f[2], f[3], f[4], f[5], f[6]
                ),
                spec: spec(platform, lora_dtype),
                cfg,
                static_gib: f[7].parse().ok(),
                alloc: f[8].parse().unwrap(),
                reserved: f[9].parse().unwrap(),
                nvml: f[10].parse().unwrap(),
            }
        })
        .collect()
}

#[test]
fn every_measured_row_within_ten_percent() {
    let rows = rows();
    assert_eq!(rows.len(), 9, "fixture rows");
    println!(
        "{:<48} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "config", "static", "alloc", "a.meas", "resv", "r.meas", "nvml", "n.meas  err"
    );
    let mut worst: f64 = 0.0;
    for row in &rows {
        let b = budget::predict(&row.spec, &row.cfg).unwrap();
        // Before step 1 DDP holds its gradient buckets; FSDP allocates sharded gradients in backward.
        let static_pred = match row.cfg.strategy {
            Strategy::Ddp => b.weights + b.gradients,
            Strategy::Fsdp => b.weights,
        };
        let alloc = b.allocated();
        let reserved = alloc + b.allocator_slack;
        let err = (gib(b.peak()) - row.nvml) / row.nvml * 100.0;
        println!(
            "{:<48} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:+5.1}%",
            row.label,
            gib(static_pred),
            gib(alloc),
            row.alloc,
            gib(reserved),
            row.reserved,
            gib(b.peak()),
            row.nvml,
            err
        );
        if let Some(s) = row.static_gib {
            assert!(
                (gib(static_pred) - s).abs() / s < 0.02,
                "{}: static {} vs {}",
                row.label,
                gib(static_pred),
                s
            );
        }
        worst = worst.max(err.abs());
    }
    println!("worst nvml error {worst:.1}%");
    for row in &rows {
        let b = budget::predict(&row.spec, &row.cfg).unwrap();
        let err = (gib(b.peak()) - row.nvml).abs() / row.nvml;
        assert!(
            err < 0.10,
            "{}: predicted {:.2} GiB vs nvml {:.2} GiB",
            row.label,
            gib(b.peak()),
            row.nvml
        );
    }
}

const PROBE: &str = include_str!("../fixtures/measured-vram-probe.csv");

/// The probe's points: held-out configurations (never used for fitting), the FSDP points at
/// 4 GPUs that fixed the FSDP slack, and re-measurements of reference rows.
#[test]
fn probe_points_within_ten_percent() {
    let mut n = 0;
    for line in PROBE.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let platform = Platform::from_words(&[f[1]]).expect("platform word");
        let mut s = spec(platform, Dtype::Bf16);
        s.lora_rank = f[3].parse().unwrap();
        let world: u32 = f[5].parse().unwrap();
        let cfg = Config {
            strategy: if f[2] == "fsdp" {
                Strategy::Fsdp
            } else {
                Strategy::Ddp
            },
            world_size: world,
            nproc_per_node: world,
            batch_size: f[6].parse().unwrap(),
            checkpointing: f[7] == "yes",
            allocator: if f[4] == "default" {
                Allocator::Default
            } else {
                Allocator::ExpandableSegments
            },
            gpu_name: H100.into(),
            fsdp: FsdpVersion::Fsdp1,
        };
        let (static_m, alloc_m, nvml_m): (f64, f64, f64) = (
            f[8].parse().unwrap(),
            f[9].parse().unwrap(),
            f[11].parse().unwrap(),
        );
        let b = budget::predict(&s, &cfg).unwrap();
        let static_pred = match cfg.strategy {
            Strategy::Ddp => b.weights + b.gradients,
            Strategy::Fsdp => b.weights,
        };
        let err = (gib(b.peak()) - nvml_m) / nvml_m * 100.0;
        println!(
            "{:<58} static {:>6.2}/{:<6.2} alloc {:>6.2}/{:<6.2} nvml {:>6.2}/{:<6.2} {:+5.1}%",
            line,
            gib(static_pred),
            static_m,
            gib(b.allocated()),
            alloc_m,
            gib(b.peak()),
            nvml_m,
            err
        );
        assert!(
            (gib(static_pred) - static_m).abs() / static_m < 0.03,
            "{line}: static"
        );
        assert!(err.abs() < 10.0, "{line}: {err:+.1}%");
        n += 1;
    }
    assert_eq!(n, 8);
}
