//! The OOM re-plan policy: never loop, never change the global batch, always strictly safer.

use vla_launch::budget::Strategy;
use vla_launch::gpu::{Gpu, parse_gpus_spec};
use vla_launch::launch::diagnosis::{OomDetails, oom_evidence};
use vla_launch::model::ModelSpec;
use vla_launch::plan::retry::{RetryDecision, replan_after_oom};
use vla_launch::plan::{Candidate, Pins, PlanInput, Policy, plan};
use vla_launch::units::GIB;

use crate::common::builtin_spec as spec;

fn policy(min_global_batch: u32) -> Policy {
    Policy {
        min_global_batch,
        ..crate::common::policy()
    }
}

fn input<'a>(spec: &'a ModelSpec, gpus: &'a [Gpu], g: u32, pins: Pins) -> PlanInput<'a> {
    PlanInput {
        spec,
        gpus,
        nnodes: 1,
        policy: policy(g),
        pins,
        host_ram_bytes: None,
        merge_lora_during_training: false,
        calibration: None,
    }
}

/// The configuration that was launched: the plan's choice (pinned ones may not fit: --force).
fn launched(input: &PlanInput) -> Candidate {
    plan(input).unwrap().chosen.expect("a configuration")
}

fn pinned(strategy: Strategy, ckpt: bool, batch: u32, accum: u32) -> Pins {
    Pins {
        strategy: Some(strategy),
        batch_size: Some(batch),
        grad_accum: Some(accum),
        checkpointing: Some(ckpt),
        nproc: None,
    }
}

struct Case {
    name: &'static str,
    profile: &'static str,
    gpus: &'static str,
    global: u32,
    pins: Pins,
    /// Observed peak as a multiple of the failed prediction (None: no NVML figure).
    observed: Option<f64>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "forced over-large batch, 1 H100",
            profile: "aloha",
            gpus: "1xh100",
            global: 16,
            pins: pinned(Strategy::Ddp, false, 16, 1),
            observed: None,
        },
        Case {
            name: "forced over-large batch, 2 H100, observed",
            profile: "aloha",
            gpus: "2xh100",
            global: 32,
            pins: pinned(Strategy::Ddp, false, 16, 1),
            observed: Some(1.0),
        },
        Case {
            name: "planner's own choice under-predicted by 15%",
            profile: "aloha",
            gpus: "2xh100",
            global: 32,
            pins: Pins::default(),
            observed: Some(1.15),
        },
        Case {
            name: "planner's own choice, libero, 1 A100 40GB, no NVML figure",
            profile: "libero",
            gpus: "1xa100-40gb",
            global: 8,
            pins: Pins::default(),
            observed: None,
        },
        Case {
            name: "4x 4090 FSDP choice under-predicted by 5%",
            profile: "libero",
            gpus: "4xrtx4090",
            global: 16,
            pins: Pins::default(),
            observed: Some(1.05),
        },
    ]
}

#[test]
fn retry_keeps_the_global_batch_and_is_strictly_safer() {
    for case in cases() {
        let spec = spec(case.profile);
        let gpus = parse_gpus_spec(case.gpus).unwrap();
        let inp = input(&spec, &gpus, case.global, case.pins.clone());
        let failed = launched(&inp);
        let observed = case
            .observed
            .map(|f| (failed.required_bytes as f64 * f) as u64);
        match replan_after_oom(&inp, &failed, observed, 0, 1) {
            RetryDecision::Retry { plan, message } => {
                let c = plan.chosen.as_ref().unwrap();
                assert!(plan.feasible, "{}", case.name);
                assert_eq!(c.global_batch, failed.global_batch, "{}", case.name);
                assert_eq!(c.nproc_per_node, failed.nproc_per_node, "{}", case.name);
                assert_eq!(c.nnodes, failed.nnodes, "{}", case.name);
                assert_eq!(c.gpu_indices, failed.gpu_indices, "{}", case.name);
                assert!(
                    c.required_bytes < failed.required_bytes,
                    "{}: {} !< {}",
                    case.name,
                    c.required_bytes,
                    failed.required_bytes
                );
                assert_ne!(c.label(), failed.label(), "{}", case.name);
                assert!(message.contains("retry 1 of 1"), "{message}");
                assert!(
                    message.contains(&format!("global batch {} unchanged", c.global_batch)),
                    "{message}"
                );
            }
            RetryDecision::Stop { reason } => panic!("{}: stopped: {reason}", case.name),
        }
    }
}

#[test]
fn the_observed_overshoot_applies_to_the_retry() {
    // The chosen DDP plan OOMs at 1.15x its prediction: the retry must fit with that overshoot.
    let spec = spec("aloha");
    let gpus = parse_gpus_spec("2xh100").unwrap();
    let inp = input(&spec, &gpus, 32, Pins::default());
    let failed = launched(&inp);
    let factor = 1.15;
    let observed = (failed.required_bytes as f64 * factor) as u64;
    let RetryDecision::Retry { plan, .. } = replan_after_oom(&inp, &failed, Some(observed), 0, 2)
    else {
        panic!("expected a retry");
    };
    let c = plan.chosen.unwrap();
    let usable_real = failed.usable_bytes;
    assert!(
        c.required_bytes as f64 * factor <= usable_real as f64,
        "{} x {factor} > {usable_real}",
        c.required_bytes
    );
}

#[test]
fn never_more_than_max_retries() {
    // Each retry OOMs again at 1.3x its prediction; count how many relaunches the policy allows.
    for max in [0u32, 1, 2, 3] {
        let spec = spec("aloha");
        let gpus = parse_gpus_spec("2xh100").unwrap();
        let inp = input(&spec, &gpus, 64, pinned(Strategy::Ddp, false, 32, 1));
        let mut failed = launched(&inp);
        let mut relaunches = 0;
        for attempt in 0..10 {
            let observed = (failed.required_bytes as f64 * 1.3) as u64;
            match replan_after_oom(&inp, &failed, Some(observed), attempt, max) {
                RetryDecision::Retry { plan, .. } => {
                    relaunches += 1;
                    let c = plan.chosen.unwrap();
                    assert_eq!(c.global_batch, 64);
                    assert!(c.required_bytes < failed.required_bytes);
                    failed = c;
                }
                RetryDecision::Stop { reason } => {
                    if relaunches == max {
                        assert!(reason.contains("--oom-retries"), "{reason}");
                    }
                    break;
                }
            }
        }
        assert!(relaunches <= max, "max {max}: {relaunches} relaunches");
        assert_eq!(relaunches, max, "max {max}: each step down exists here");
    }
}

#[test]
fn stops_when_nothing_safer_keeps_the_global_batch() {
    // Batch 1 with checkpointing on a single GPU is already the smallest footprint there is.
    let spec = spec("aloha");
    let gpus = parse_gpus_spec("1xh100").unwrap();
    let inp = input(&spec, &gpus, 1, pinned(Strategy::Ddp, true, 1, 1));
    let failed = launched(&inp);
    let observed = Some(failed.required_bytes * 2);
    match replan_after_oom(&inp, &failed, observed, 0, 3) {
        RetryDecision::Stop { reason } => {
            assert!(
                reason.contains("no configuration of global batch 1"),
                "{reason}"
            );
        }
        RetryDecision::Retry { message, .. } => panic!("unexpected retry: {message}"),
    }
}

#[test]
fn multi_node_runs_stop() {
    let spec = spec("aloha");
    let gpus = parse_gpus_spec("2xh100").unwrap();
    let mut inp = input(&spec, &gpus, 64, Pins::default());
    inp.nnodes = 2;
    let failed = launched(&inp);
    match replan_after_oom(&inp, &failed, None, 0, 1) {
        RetryDecision::Stop { reason } => assert!(reason.contains("2-node"), "{reason}"),
        RetryDecision::Retry { message, .. } => panic!("unexpected retry: {message}"),
    }
}

#[test]
fn user_pins_are_kept_when_possible_and_released_otherwise() {
    let spec = spec("aloha");
    let gpus = parse_gpus_spec("2xh100").unwrap();
    // DDP and checkpointing off pinned (forced batch 16): a smaller DDP micro-batch is enough.
    let inp = input(&spec, &gpus, 32, pinned(Strategy::Ddp, false, 16, 1));
    let failed = launched(&inp);
    let RetryDecision::Retry { plan, message } = replan_after_oom(&inp, &failed, None, 0, 1) else {
        panic!("expected a retry");
    };
    let c = plan.chosen.unwrap();
    assert_eq!(
        (c.strategy, c.gradient_checkpointing),
        (Strategy::Ddp, false)
    );
    assert!(c.batch_size < 16 && c.grad_accumulation_steps > 1);
    assert!(!message.contains("released"), "{message}");

    // Checkpointing off pinned at batch 1 on one GPU: only checkpointing can go lower.
    let gpus = parse_gpus_spec("1xh100").unwrap();
    let inp = input(&spec, &gpus, 4, pinned(Strategy::Ddp, false, 1, 4));
    let failed = launched(&inp);
    let RetryDecision::Retry { plan, message } =
        replan_after_oom(&inp, &failed, Some(failed.required_bytes + GIB), 0, 1)
    else {
        panic!("expected a retry");
    };
    let c = plan.chosen.unwrap();
    assert!(c.gradient_checkpointing, "{}", c.label());
    assert_eq!(c.global_batch, 4);
    assert!(message.contains("released"), "{message}");
}

#[test]
fn decisions_are_deterministic() {
    for case in cases() {
        let spec = spec(case.profile);
        let gpus = parse_gpus_spec(case.gpus).unwrap();
        let inp = input(&spec, &gpus, case.global, case.pins.clone());
        let failed = launched(&inp);
        let a = replan_after_oom(&inp, &failed, Some(70 * GIB), 0, 1);
        let b = replan_after_oom(&inp, &failed, Some(70 * GIB), 0, 1);
        assert_eq!(a, b, "{}", case.name);
    }
}

#[test]
fn evidence_from_nvml_and_torch() {
    let oom = |held: Option<u64>, pytorch: Option<u64>, tried: Option<u64>| OomDetails {
        tried_to_allocate_bytes: tried.map(|g| g * GIB),
        process_in_use_bytes: held.map(|g| g * GIB),
        allocated_by_pytorch_bytes: pytorch.map(|g| g * GIB),
        ..OomDetails::default()
    };
    let table = [
        (Some(70), None, Some(70)),
        (None, Some(oom(Some(75), None, Some(2))), Some(77)),
        (Some(78), Some(oom(Some(75), None, Some(2))), Some(78)),
        (Some(70), Some(oom(None, Some(60), Some(4))), Some(70)),
        (None, Some(oom(None, None, Some(4))), None),
        (None, None, None),
    ];
    for (nvml, details, want) in table {
        let got = oom_evidence(nvml.map(|g| g * GIB), details.as_ref());
        assert_eq!(got, want.map(|g| g * GIB), "{nvml:?} {details:?}");
    }
}

/// The seed's configuration forced on one 24 GiB card: it dies at the card's limit, far below its
/// prediction. No retry can keep global batch 16 on that card, and the reason must say the
/// prediction was already too large, not "0% above the prediction" (the GPU run's wording
/// before this test).
#[test]
fn a_stop_below_the_prediction_says_the_prediction_already_exceeded_the_card() {
    let spec = spec("aloha");
    let gpus = parse_gpus_spec("1xrtx4090").unwrap();
    let inp = input(&spec, &gpus, 16, pinned(Strategy::Ddp, false, 2, 8));
    let failed = launched(&inp);
    let observed = Some(gpus[0].total_bytes);
    match replan_after_oom(&inp, &failed, observed, 0, 1) {
        RetryDecision::Stop { reason } => {
            assert!(
                reason.contains("already exceeded the usable memory"),
                "{reason}"
            );
            assert!(!reason.contains("% above"), "{reason}");
            assert!(!reason.contains("overshoot"), "{reason}");
        }
        RetryDecision::Retry { message, .. } => panic!("retried: {message}"),
    }
}
