//! The FSDP2 memory model (vla-launch's addition scripts/finetune_fsdp.py) against its
//! measurements: docs/fsdp.md, archives validation/fsdp-v1.tar.xz (2x H200, `gpu-call1/`) and
//! fsdp-v2.tar.xz (4x H200, `res/`): ALOHA, batch 2 per GPU, gradient checkpointing, default
//! allocator, under a 24564 MiB cap, torch 2.11 standing in for the pinned 2.2; and the
//! launcher's own runs, fsdp-v5 ... fsdp-v8 (`FSDP2_LAUNCHER_RUNS`). Issue 15's bound: within 5%
//! of the NVML peak, never more than 3% under.

use vla_launch::budget::{self, Allocator, Config, FsdpVersion, Strategy};
use vla_launch::model::{Dtype, Platform};
use vla_launch::units::gib;

use crate::common::spec;

const H200: &str = "NVIDIA H200";

fn cfg(fsdp: FsdpVersion, world: u32, batch: u32, checkpointing: bool) -> Config {
    Config {
        strategy: Strategy::Fsdp,
        world_size: world,
        nproc_per_node: world,
        batch_size: batch,
        checkpointing,
        allocator: Allocator::Default,
        gpu_name: H200.into(),
        fsdp,
    }
}

/// (world size, peak allocated, peak reserved, peak NVML used), GiB, identical on every rank
/// (4 GPUs: the rank JSONs' peak_alloc_bytes 17,280,194,048, peak_nvml_used_bytes 19,952,238,592).
const FSDP2_MEMORY: &[(u32, f64, f64, f64)] = &[(2, 17.37, 21.75, 23.93), (4, 16.09, 16.40, 18.58)];

fn aloha() -> vla_launch::model::ModelSpec {
    spec(Platform::Aloha, Dtype::Bf16)
}

/// Runs by the launcher itself, with its allocator setting (expandable_segments); both or all
/// ranks identical; (world size, batch, checkpointing, peak allocated, peak reserved, peak NVML
/// used), bytes, from the rank JSONs (peak_alloc_bytes, peak_reserved_bytes,
/// peak_nvml_used_bytes); the accumulation (which the model does not take) in the comments.
const FSDP2_LAUNCHER_RUNS: &[(u32, u32, bool, u64, u64, u64)] = &[
    // validation/fsdp-v5.tar.xz `lc4/check/rank*.json`: the 4x RTX 4090 plan on 4x H200 under the
    // 24564 MiB cap, accumulation 2, 20 steps and a checkpoint
    (4, 2, true, 17_265_164_800, 17_267_949_568, 19_444_727_808),
    // The batch axis on 2x H200 without a cap (10 steps and a checkpoint):
    // validation/fsdp-v6.tar.xz `ax/<run>/check/rank*.json` (global batch 8)
    (2, 2, true, 19_732_751_360, 22_403_874_816, 24_740_036_608), // x 2
    (2, 4, true, 23_212_122_112, 26_197_622_784, 28_533_784_576), // x 1
    (2, 2, false, 32_196_100_096, 34_860_957_696, 37_197_119_488), // x 2
    (2, 1, false, 23_748_564_992, 26_644_316_160, 28_980_477_952), // x 4
    // validation/fsdp-v7.tar.xz `ay/<run>/check/rank*.json` (the same, global batch 4 or 16)
    (2, 2, true, 18_445_614_592, 22_129_147_904, 24_465_309_696), // x 1
    (2, 4, true, 24_499_258_880, 26_535_264_256, 28_871_426_048), // x 2
    (2, 8, true, 32_745_136_128, 35_878_076_416, 38_214_238_208), // x 1
    // validation/fsdp-v8.tar.xz `az/b1-ckpt-ga2/check/rank*.json` (global batch 4)
    (2, 1, true, 18_074_199_040, 20_562_575_360, 22_898_737_152), // x 2
    // ... `aw/plan-2x4090/check/rank*.json`: the 2x RTX 4090 plan under the 24564 MiB cap
    (2, 1, true, 18_074_199_040, 20_562_575_360, 22_898_737_152), // x 8
];

#[test]
fn fsdp2_launcher_runs_are_predicted_within_issue_15s_bound_and_covered() {
    let mut report = String::new();
    let mut bad = 0;
    for &(w, batch, ck, alloc, reserved, nvml) in FSDP2_LAUNCHER_RUNS {
        let c = Config {
            allocator: Allocator::ExpandableSegments,
            ..cfg(FsdpVersion::Fsdp2, w, batch, ck)
        };
        let b = budget::predict(&aloha(), &c).unwrap();
        let err = (b.peak() as f64 / nvml as f64 - 1.0) * 100.0;
        let required = b.peak() - vla_launch::plan::reclaimable_cache(&b, c.allocator);
        let held = alloc + (nvml - reserved);
        let ok = (-3.0..=5.0).contains(&err) && required >= held;
        bad += usize::from(!ok);
        report.push_str(&format!(
            "{} {w} GPUs batch {batch} ckpt {ck}: predicted {:.2} GiB, NVML {:.2} GiB, {err:+.1}%; \
             required {:.2} GiB, held {:.2} GiB\n",
            if ok { "ok " } else { "BAD" },
            gib(b.peak()),
            gib(nvml),
            gib(required),
            gib(held)
        ));
    }
    eprintln!("{report}");
    assert_eq!(bad, 0, "\n{report}");
}

#[test]
fn fsdp2_points_are_predicted_within_issue_15s_bound() {
    let mut report = String::new();
    let mut bad = Vec::new();
    for &(w, _, _, nvml) in FSDP2_MEMORY {
        let b = budget::predict(&aloha(), &cfg(FsdpVersion::Fsdp2, w, 2, true)).unwrap();
        let err = (gib(b.peak()) / nvml - 1.0) * 100.0;
        report.push_str(&format!(
            "{w} GPUs: predicted {:.2} GiB, NVML {nvml:.2} GiB, {err:+.1}%\n",
            gib(b.peak())
        ));
        if !(-3.0..=5.0).contains(&err) {
            bad.push(w);
        }
    }
    assert!(bad.is_empty(), "outside +5%/-3% at {bad:?} GPUs:\n{report}");
}

/// The planner fits a plan on `peak - reclaimable slack` (search.rs): that must cover what the
/// runs really held, torch's allocated peak plus the memory outside torch (NVML - reserved).
#[test]
fn fsdp2_requirement_covers_the_measured_allocation() {
    // The runs used the default allocator; profiles set expandable_segments, under which the
    // planner counts the whole slack as reclaimable: both must cover what was held.
    for allocator in [Allocator::Default, Allocator::ExpandableSegments] {
        for &(w, alloc, reserved, nvml) in FSDP2_MEMORY {
            let c = Config {
                allocator,
                ..cfg(FsdpVersion::Fsdp2, w, 2, true)
            };
            let b = budget::predict(&aloha(), &c).unwrap();
            let required = b.peak() - vla_launch::plan::reclaimable_cache(&b, allocator);
            let held = alloc + (nvml - reserved);
            assert!(
                gib(required) >= held,
                "{w} GPUs, {allocator:?}: requirement {:.2} GiB below the {held:.2} GiB held",
                gib(required)
            );
            assert!(
                gib(b.allocated()) >= alloc,
                "{w} GPUs: allocated {:.2} < {alloc}",
                gib(b.allocated())
            );
        }
    }
}

/// FSDP2 keeps no gradients for frozen weights; FSDP1 (a fork's --use_fsdp) does.
#[test]
fn fsdp2_gradients_are_the_trainable_ones_sharded() {
    let comps = vla_launch::model::components(&aloha()).unwrap();
    let trainable: u64 = comps
        .iter()
        .filter(|c| c.trainable)
        .map(|c| c.params * c.dtype.bytes())
        .sum();
    for w in [2, 4, 8] {
        let two = budget::predict(&aloha(), &cfg(FsdpVersion::Fsdp2, w, 2, true)).unwrap();
        let one = budget::predict(&aloha(), &cfg(FsdpVersion::Fsdp1, w, 2, true)).unwrap();
        assert_eq!(two.gradients, trainable.div_ceil(u64::from(w)));
        assert_eq!(two.weights, one.weights);
        assert_eq!(two.optimizer, one.optimizer);
        assert!(one.gradients > 5 * two.gradients);
        assert!(two.peak() < one.peak(), "{w} GPUs: FSDP2 not below FSDP1");
    }
}

/// The FSDP1 terms stay as they were for forks: 2 GPUs batch 2 with checkpointing on H100 is
/// still the probe's ~46 GiB, and the version field changes nothing under DDP.
#[test]
fn fsdp1_and_ddp_predictions_are_unchanged() {
    let h100 = "NVIDIA H100 80GB HBM3";
    let mut c = cfg(FsdpVersion::Fsdp1, 2, 2, true);
    c.gpu_name = h100.into();
    let one = budget::predict(&aloha(), &c).unwrap();
    assert!(
        (45.0..48.0).contains(&gib(one.peak())),
        "{:.2}",
        gib(one.peak())
    );
    for fsdp in [FsdpVersion::Fsdp1, FsdpVersion::Fsdp2] {
        for (w, b, ck) in [(1, 1, false), (2, 2, true), (4, 8, true)] {
            let ddp = Config {
                strategy: Strategy::Ddp,
                fsdp,
                ..cfg(fsdp, w, b, ck)
            };
            let base = Config {
                fsdp: FsdpVersion::Fsdp1,
                ..ddp.clone()
            };
            assert_eq!(
                budget::predict(&aloha(), &ddp).unwrap(),
                budget::predict(&aloha(), &base).unwrap()
            );
        }
    }
}

/// Measured at 2 GPUs (FSDP2_LAUNCHER_RUNS): what is not sharded grows with the batch by the
/// samples' activations and nothing more, so the residual is one figure per world size, and batch
/// 1 with checkpointing has no floor at batch 2's peak (FSDP1's does).
#[test]
fn fsdp2_residual_is_fixed_along_the_batch_and_batch_1_has_no_floor() {
    for w in [2, 4] {
        let at = |fsdp, b: u32, ck: bool| budget::predict(&aloha(), &cfg(fsdp, w, b, ck)).unwrap();
        let two = at(FsdpVersion::Fsdp2, 2, true);
        for (b, ck) in [(1, true), (4, true), (8, true), (1, false), (2, false)] {
            let other = at(FsdpVersion::Fsdp2, b, ck);
            assert_eq!(
                other.fsdp_working, two.fsdp_working,
                "{w} GPUs, batch {b} {ck}"
            );
        }
        assert!(at(FsdpVersion::Fsdp2, 1, true).peak() < two.peak());
        let fsdp1 = |b| at(FsdpVersion::Fsdp1, b, true).peak();
        assert!(fsdp1(1) >= fsdp1(2), "{w} GPUs: FSDP1's floor is gone");
    }
}
