//! The step-time model against step times measured on H100s. What it is fitted to, and held to
//! within 10%: the REAL OpenVLA-OFT code through the launcher (`scripts/real-steptime.sh`, 20 steps
//! each, mean over steps 3..20; docs/performance.md "Step time"). Kept as a looser check: the
//! stand-in probe's runs (the measured VRAM table's s/step column, 3 steps each, and
//! docs/validation's probe runs), which the earlier constants were fitted to.

use vla_launch::budget::{FsdpVersion, Strategy};
use vla_launch::model::{self, ModelSpec};
use vla_launch::plan::speed::{REFERENCE_TFLOPS, SpeedInput, step_time};

fn spec(name: &str, lora_rank: u32) -> ModelSpec {
    let mut s = crate::common::builtin_spec(name);
    s.lora_rank = lora_rank;
    s
}

struct Point {
    source: &'static str,
    profile: &'static str,
    lora_rank: u32,
    strategy: Strategy,
    world: u32,
    batch: u32,
    accum: u32,
    ckpt: bool,
    measured_s: f64,
}

#[allow(clippy::too_many_arguments)] // one argument per column of the table below
const fn pt(
    source: &'static str,
    profile: &'static str,
    strategy: Strategy,
    world: u32,
    batch: u32,
    accum: u32,
    ckpt: bool,
    measured_s: f64,
) -> Point {
    Point {
        source,
        profile,
        lora_rank: 32,
        strategy,
        world,
        batch,
        accum,
        ckpt,
        measured_s,
    }
}

use Strategy::{Ddp, Fsdp};

/// The real code on one H100 80GB HBM3 (issue 27): st-h100 (2026-12-06, this table's first 9 rows,
/// 20 steps each), the issue's own runs (ALOHA b4: two runs, 1.01 and 1.02 s; ALOHA b1 x16 with
/// checkpointing: three runs, 11.7-12.8 s) and st-h100-v2 (the LIBERO plan's top three again, two
/// runs each of the near tie; where a configuration ran more than once, the mean of its runs:
/// LIBERO b8 x2 without checkpointing 1.448, 1.365, 1.367 s; b16 with 1.534, 1.530, 1.433 s).
const REAL_CODE_H100: &[Point] = &[
    pt("st aloha-b16-on", "aloha", Ddp, 1, 16, 1, true, 2.814),
    pt("st aloha-b8x2-on", "aloha", Ddp, 1, 8, 2, true, 3.306),
    pt("st aloha-b3-off", "aloha", Ddp, 1, 3, 1, false, 0.940),
    Point {
        lora_rank: 64,
        ..pt("st aloha-b2-r64-off", "aloha", Ddp, 1, 2, 1, false, 0.768)
    },
    pt("st libero-b8x2-off", "libero", Ddp, 1, 8, 2, false, 1.393),
    pt("st libero-b16-on", "libero", Ddp, 1, 16, 1, true, 1.499),
    pt("st-v2 libero-b8x2-on", "libero", Ddp, 1, 8, 2, true, 1.699),
    pt("st libero-b6-off", "libero", Ddp, 1, 6, 1, false, 0.624),
    pt("st libero-b12-on", "libero", Ddp, 1, 12, 1, true, 1.131),
    pt("st bridge-b8-off", "bridge", Ddp, 1, 8, 1, false, 0.355),
    pt("issue 27 aloha-b4-off", "aloha", Ddp, 1, 4, 1, false, 1.015),
    pt(
        "issue 27 aloha-b1x16-on",
        "aloha",
        Ddp,
        1,
        1,
        16,
        true,
        12.2,
    ),
];

const POINTS: &[Point] = &[
    pt("measured-vram", "aloha", Ddp, 1, 1, 1, false, 0.59),
    pt("measured-vram", "aloha", Ddp, 1, 2, 1, false, 0.69),
    pt("measured-vram", "aloha", Ddp, 1, 2, 1, true, 0.94),
    pt("measured-vram", "aloha", Ddp, 2, 2, 1, true, 1.23),
    pt("measured-vram", "libero", Ddp, 1, 1, 1, false, 0.44),
    pt("measured-vram", "aloha", Fsdp, 2, 2, 1, true, 2.4),
    pt("v1 one-ddp-b2", "aloha", Ddp, 1, 2, 8, false, 6.21),
    pt("v1 one-libero-plan", "libero", Ddp, 1, 8, 2, false, 1.45),
    pt("v3 quality-1-0", "aloha", Ddp, 1, 16, 1, true, 2.62),
    pt("v3 quality-1-1", "aloha", Ddp, 1, 4, 4, false, 3.46),
    pt("v3 quality-1-2", "aloha", Ddp, 1, 8, 2, true, 3.04),
    pt("v3 quality-1-3", "aloha", Ddp, 1, 4, 4, true, 4.06),
    pt("v3 quality-2-0", "aloha", Ddp, 2, 8, 1, true, 1.60),
    pt("v3 quality-2-1", "aloha", Ddp, 2, 4, 2, false, 1.81),
    pt("v2 four-plan", "aloha", Ddp, 4, 4, 1, false, 1.16),
    pt("v1 two-fsdp-b2", "aloha", Fsdp, 2, 2, 4, true, 8.92),
];

/// The model's seconds per optimizer step for one configuration on the reference GPU, one node.
fn predicted_s(
    s: &ModelSpec,
    strategy: Strategy,
    fsdp: FsdpVersion,
    world: u32,
    batch: u32,
    accum: u32,
    ckpt: bool,
) -> f64 {
    let comps = model::components(s).unwrap();
    let bytes = |trainable_only: bool| -> u64 {
        comps
            .iter()
            .filter(|c| c.trainable || !trainable_only)
            .map(|c| c.params * c.dtype.bytes())
            .sum()
    };
    step_time(
        s,
        &SpeedInput {
            strategy,
            checkpointing: ckpt,
            batch_size: batch,
            grad_accum: accum,
            world_size: world,
            nnodes: 1,
            gpu_tflops: REFERENCE_TFLOPS,
            flops_per_sample: model::train_flops_per_sample(s, false),
            recompute_flops_per_sample: model::train_flops_per_sample(s, ckpt)
                - model::train_flops_per_sample(s, false),
            gradient_bytes: bytes(true),
            weight_bytes: bytes(false),
            fsdp,
        },
    )
    .total()
}

/// Each point's measured and predicted s/step as a table, and the worst relative error in percent.
fn compare(points: &[Point]) -> (f64, String) {
    let mut worst: f64 = 0.0;
    let mut table = String::new();
    for p in points {
        let s = spec(p.profile, p.lora_rank);
        let t = predicted_s(
            &s,
            p.strategy,
            FsdpVersion::Fsdp1,
            p.world,
            p.batch,
            p.accum,
            p.ckpt,
        );
        let err = (t / p.measured_s - 1.0) * 100.0;
        worst = worst.max(err.abs());
        table.push_str(&format!(
            "{:24} {:6} {:?} w{} b{:2} a{:2} ckpt={:5} measured {:5.2} s predicted {:5.2} s ({:+5.1}%)\n",
            p.source, p.profile, p.strategy, p.world, p.batch, p.accum, p.ckpt, p.measured_s, t, err
        ));
    }
    (worst, table)
}

#[test]
fn step_time_model_within_10_percent_of_the_real_code() {
    let (worst, table) = compare(REAL_CODE_H100);
    println!("{table}");
    assert!(worst <= 10.0, "worst error {worst:.1}%:\n{table}");
}

/// The stand-in probe (the `*-probe` profiles) runs up to ~20% faster than the real code the model
/// is fitted to (at ALOHA batch 4-8 on 1-2 GPUs): the model must stay near it, not match it.
#[test]
fn step_time_model_within_25_percent_of_the_stand_in_probe() {
    let (worst, table) = compare(POINTS);
    println!("{table}");
    assert!(worst <= 25.0, "worst error {worst:.1}%:\n{table}");
}

/// FSDP2 (the addition) against DDP on the same machine, ALOHA batch 2 with checkpointing
/// (docs/fsdp.md, fsdp-v1 and fsdp-v2, H200): (world, DDP s/step, FSDP2 s/step).
const FSDP2_VS_DDP: &[(u32, f64, f64)] = &[(2, 0.821, 1.796), (4, 1.117, 2.302)];

#[test]
fn fsdp2_step_time_over_ddp_matches_the_measured_ratio() {
    let s = spec("aloha", 32);
    let at = |strategy, fsdp, world| predicted_s(&s, strategy, fsdp, world, 2, 1, true);
    let mut report = String::new();
    let mut worst: f64 = 0.0;
    for &(w, ddp, fsdp2) in FSDP2_VS_DDP {
        let measured = fsdp2 / ddp;
        let predicted = at(Fsdp, FsdpVersion::Fsdp2, w) / at(Ddp, FsdpVersion::Fsdp2, w);
        let err = (predicted / measured - 1.0) * 100.0;
        worst = worst.max(err.abs());
        report.push_str(&format!(
            "{w} GPUs: FSDP2/DDP measured {measured:.2}x, predicted {predicted:.2}x ({err:+.1}%)\n"
        ));
    }
    println!("{report}");
    assert!(worst <= 5.0, "{report}");
    // The FSDP1 path (a fork's --use_fsdp) is unchanged and differs from FSDP2.
    assert_ne!(
        at(Fsdp, FsdpVersion::Fsdp1, 4),
        at(Fsdp, FsdpVersion::Fsdp2, 4)
    );
}

/// FSDP2 (the addition) run by the launcher on H200s (same dense bf16 peak as the H100 the model
/// was fitted on), ALOHA, 10 or 20 steps, mean s/step over steps 3 on: validation/fsdp-v5
/// (`lc4`, 4 GPUs), fsdp-v6 (`ax`), fsdp-v7 (`ay`) and fsdp-v8 (`az`, `aw`), 2 GPUs. (world, batch, accumulation,
/// checkpointing, measured s/step).
const FSDP2_LAUNCHER_RUNS: &[(u32, u32, u32, bool, f64)] = &[
    (4, 2, 2, true, 5.014),
    (2, 2, 2, true, 4.740),
    (2, 4, 1, true, 2.575),
    (2, 2, 2, false, 3.995),
    (2, 1, 4, false, 7.330),
    (2, 2, 1, true, 2.186),
    (2, 4, 2, true, 5.330),
    (2, 8, 1, true, 2.898),
    // fsdp-v8: batch 1 with checkpointing, 10 steps; the 2x RTX 4090 plan under the cap, 5 steps
    (2, 1, 2, true, 3.764),
    (2, 1, 8, true, 16.497),
];

#[test]
fn fsdp2_step_time_along_the_batch_within_15_percent() {
    let s = spec("aloha", 32);
    let mut report = String::new();
    let mut worst: f64 = 0.0;
    for &(w, b, a, ck, measured) in FSDP2_LAUNCHER_RUNS {
        let predicted = predicted_s(&s, Fsdp, FsdpVersion::Fsdp2, w, b, a, ck);
        let err = (predicted / measured - 1.0) * 100.0;
        worst = worst.max(err.abs());
        report.push_str(&format!(
            "{w} GPUs b{b} x{a} ckpt {ck}: measured {measured:.2} s, predicted {predicted:.2} s ({err:+.1}%)\n"
        ));
    }
    println!("{report}");
    assert!(worst <= 15.0, "worst {worst:.1}%:\n{report}");
}

/// Issue 27: the plan chosen on one H100 is the fastest, as measured on the real code, of itself and
/// its two next best. Each must be in [`REAL_CODE_H100`] (ALOHA b4 x4 without checkpointing: four
/// of the measured b4 micro-batches, 4 x 1.015 s).
#[test]
fn chosen_plan_on_one_h100_is_the_fastest_measured_of_its_top_three() {
    use vla_launch::plan::{Pins, PlanInput, plan};
    let measured = |profile: &str, c: &vla_launch::plan::Candidate| -> Option<f64> {
        let (b, a, ck) = (
            c.batch_size,
            c.grad_accumulation_steps,
            c.gradient_checkpointing,
        );
        if (profile, b, a, ck) == ("aloha", 4, 4, false) {
            return Some(4.0 * 1.015);
        }
        REAL_CODE_H100
            .iter()
            .find(|p| {
                p.profile == profile
                    && p.lora_rank == 32
                    && p.world == 1
                    && p.strategy == Ddp
                    && (p.batch, p.accum, p.ckpt) == (b, a, ck)
            })
            .map(|p| p.measured_s)
    };
    for profile in ["aloha", "libero"] {
        let spec = crate::common::builtin_spec(profile);
        let gpus = vla_launch::gpu::parse_gpus_spec("1xh100").unwrap();
        let p = plan(&PlanInput {
            spec: &spec,
            gpus: &gpus,
            nnodes: 1,
            policy: crate::common::policy(),
            pins: Pins::default(),
            host_ram_bytes: None,
            merge_lora_during_training: false,
            calibration: None,
        })
        .unwrap();
        let chosen = p.chosen.as_ref().unwrap();
        let top: Vec<_> = std::iter::once(chosen)
            .chain(p.alternatives.iter().take(2).map(|a| &a.candidate))
            .collect();
        let times: Vec<(String, f64, f64)> = top
            .iter()
            .map(|c| {
                let m = measured(profile, c).unwrap_or_else(|| {
                    panic!(
                        "{profile}: {} is not measured: run scripts/real-steptime.sh",
                        c.label()
                    )
                });
                (c.label(), c.step_time_s, m)
            })
            .collect();
        let fastest = times.iter().map(|t| t.2).fold(f64::INFINITY, f64::min);
        assert_eq!(
            times[0].2, fastest,
            "{profile}: the chosen plan is not the fastest measured (label, predicted, measured): {times:#?}"
        );
    }
}
