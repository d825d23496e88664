//! The calibration store: fitting, the safety bounds, the JSON file, and run records feeding it.

use std::path::Path;

use vla_launch::budget::{Allocator, Strategy};
use vla_launch::calibration::{self, FitKind, Key, Observation, Source, Store};
use vla_launch::record;
use vla_launch::units::GIB;

const H100: &str = "NVIDIA H100 80GB HBM3";

fn key() -> Key {
    Key::new(H100, "aloha", Strategy::Ddp, false, 2)
}

fn obs(batch: u32, predicted: u64, observed: u64, t: u64) -> Observation {
    Observation {
        batch_size: batch,
        predicted_peak_bytes: predicted,
        observed_peak_bytes: observed,
        allocator: Allocator::ExpandableSegments,
        timestamp_unix: t,
        source: Source::Calibrate,
        model_revision: vla_launch::budget::MODEL_REVISION,
    }
}

/// A synthetic "true" GPU: observed = slope x predicted + intercept, with predictions that grow
/// with the batch like the budget model's (fixed part + per-sample activations).
fn linear_store(slope: f64, intercept: f64, batches: &[u32]) -> Store {
    let mut s = Store::default();
    for (i, &b) in batches.iter().enumerate() {
        let p = predicted_at(b);
        let o = (slope * p as f64 + intercept).round() as u64;
        s.add(key(), obs(b, p, o, 1000 + i as u64));
    }
    s
}

fn predicted_at(batch: u32) -> u64 {
    20 * GIB + u64::from(batch) * 3 * GIB / 2
}

#[test]
fn fit_recovers_a_known_linear_relation() {
    for (slope, intercept_gib) in [(1.05, 0.5), (1.2, -1.0), (0.9, 2.0), (1.0, 0.0)] {
        let intercept = intercept_gib * GIB as f64;
        let s = linear_store(slope, intercept, &[2, 4, 8]);
        let f = s.fit(&key()).expect("observations");
        assert_eq!(f.kind, FitKind::Linear);
        assert!(
            (f.slope - slope).abs() < 1e-6,
            "slope {} vs {slope}",
            f.slope
        );
        assert!(
            (f.intercept_bytes - intercept).abs() < 1e3,
            "intercept {} vs {intercept}",
            f.intercept_bytes
        );
        assert!(!f.slope_clamped);
    }
}

#[test]
fn held_out_batch_size_predicted_within_5_percent() {
    // Calibrate at batches 2 and 8 (as `calibrate` does), check batch 5 and 12.
    let (slope, intercept) = (1.12, 0.7 * GIB as f64);
    let s = linear_store(slope, intercept, &[2, 8]);
    for held_out in [5u32, 12] {
        let p = predicted_at(held_out);
        let truth = slope * p as f64 + intercept;
        let (corrected, info) = s.corrected_peak(&key(), p);
        let info = info.expect("a correction");
        let err = (corrected as f64 / truth - 1.0).abs();
        let err_uncorrected = (p as f64 / truth - 1.0).abs();
        assert!(err < 0.05, "batch {held_out}: corrected off by {err:.3}");
        assert!(
            err < err_uncorrected,
            "the correction must help: {err} vs {err_uncorrected}"
        );
        assert!(info.describe().contains("calibrated from 2 runs"));
    }
}

#[test]
fn one_batch_size_gives_a_ratio_that_only_raises() {
    let p = predicted_at(4);
    // (observed factor, expected corrected factor, bounded)
    let table = [
        (1.10, 1.10, false),
        (1.25, 1.25, false),
        (1.45, 1.30, false), // slope clamped to 1.3, within the 1.5x cap
        (0.97, 1.00, true),  // one batch size never lowers
        (0.70, 1.00, true),
    ];
    for (factor, expected, bounded) in table {
        let mut s = Store::default();
        s.add(key(), obs(4, p, (p as f64 * factor) as u64, 1));
        let f = s.fit(&key()).unwrap();
        assert_eq!(f.kind, FitKind::Ratio, "factor {factor}");
        let (corrected, info) = s.corrected_peak(&key(), p);
        let info = info.unwrap();
        let got = corrected as f64 / p as f64;
        assert!(
            (got - expected).abs() < 1e-3,
            "factor {factor}: got {got}, want {expected}"
        );
        assert_eq!(info.bounded_by.is_some(), bounded, "factor {factor}");
        assert_eq!(info.slope_clamped, !(0.8..=1.3).contains(&factor));
    }
}

#[test]
fn slope_is_clamped_and_lowering_is_bounded() {
    // A steep relation (noise, another tenant) is clamped to 1.3.
    let s = linear_store(2.0, -40.0 * GIB as f64, &[2, 8]);
    let f = s.fit(&key()).unwrap();
    assert_eq!(f.slope, calibration::SLOPE_MAX);
    assert!(f.slope_clamped);
    // A model that over-predicts by 20%: the correction lowers by 5% at most.
    let s = linear_store(0.8, 0.0, &[2, 8]);
    let p = predicted_at(4);
    let (corrected, info) = s.corrected_peak(&key(), p);
    assert_eq!(corrected, (p as f64 * 0.95).round() as u64);
    assert!(info.unwrap().bounded_by.is_some());
    // Huge observations are capped at 1.5x the model.
    let s = linear_store(1.3, 30.0 * GIB as f64, &[2, 8]);
    let (corrected, _) = s.corrected_peak(&key(), p);
    assert_eq!(corrected, (p as f64 * 1.5).round() as u64);
}

#[test]
fn no_observations_no_correction_and_keys_are_separate() {
    let s = linear_store(1.2, 0.0, &[2, 8]);
    for other in [
        Key::new(H100, "libero", Strategy::Ddp, false, 2),
        Key::new(H100, "aloha", Strategy::Fsdp, false, 2),
        Key::new(H100, "aloha", Strategy::Ddp, true, 2),
        Key::new(H100, "aloha", Strategy::Ddp, false, 1),
        Key::new("NVIDIA A100-SXM4-80GB", "aloha", Strategy::Ddp, false, 2),
    ] {
        assert_eq!(s.corrected_peak(&other, 10 * GIB), (10 * GIB, None));
    }
}

#[test]
fn world_sizes_share_buckets() {
    let table = [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16)];
    for (world, bucket) in table {
        assert_eq!(calibration::world_bucket(world), bucket, "world {world}");
    }
    assert_eq!(
        Key::new(H100, "aloha", Strategy::Fsdp, true, 3),
        Key::new(H100, "aloha", Strategy::Fsdp, true, 4)
    );
}

#[test]
fn json_round_trip_and_file_io() {
    let mut s = linear_store(1.1, 0.0, &[2, 4]);
    s.add(
        Key::new(H100, "libero", Strategy::Fsdp, true, 4),
        obs(8, 30 * GIB, 33 * GIB, 5),
    );
    let text = s.to_json();
    assert!(text.contains("\"source\": \"calibrate\""));
    assert!(text.contains("\"strategy\": \"fsdp\""));
    let back = Store::from_json(&text, Path::new("x")).unwrap();
    assert_eq!(back, s);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/calibration.json");
    assert_eq!(calibration::load(&path).unwrap(), Store::default());
    calibration::save(&s, &path).unwrap();
    assert_eq!(calibration::load(&path).unwrap(), s);

    std::fs::write(&path, "{not json").unwrap();
    let e = calibration::load(&path).unwrap_err().to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    std::fs::write(&path, r#"{"version": 99, "entries": []}"#).unwrap();
    let e = calibration::load(&path).unwrap_err().to_string();
    assert!(e.contains("format version 99"), "{e}");
}

#[test]
fn remove_one_key_a_profile_or_all() {
    let mut s = linear_store(1.1, 0.0, &[2, 4, 8]);
    let libero = Key::new(H100, "libero", Strategy::Ddp, false, 1);
    s.add(libero.clone(), obs(2, 10 * GIB, 11 * GIB, 1));
    s.add(libero.clone(), obs(4, 12 * GIB, 13 * GIB, 2));
    assert_eq!(s.remove(&key()), 3);
    assert_eq!(s.remove(&key()), 0);
    assert_eq!(s.observations(&libero).len(), 2);
    assert_eq!(s.remove_where(|k| k.profile == "libero"), 2);
    assert!(s.entries.is_empty());
    let mut s = linear_store(1.1, 0.0, &[2, 4]);
    assert_eq!(s.clear(), 2);
}

#[test]
fn keeps_the_newest_observations() {
    let mut s = Store::default();
    let n = calibration::MAX_OBSERVATIONS_PER_KEY as u64 + 5;
    for t in (0..n).rev() {
        s.add(key(), obs(2, 10 * GIB, 11 * GIB, t));
    }
    let kept = s.observations(&key());
    assert_eq!(kept.len(), calibration::MAX_OBSERVATIONS_PER_KEY);
    assert_eq!(kept[0].timestamp_unix, 5);
}

#[test]
fn cache_path_from_the_environment() {
    type Env<'a> = &'a [(&'a str, &'a str)];
    let table: [(Env, Option<&str>); 5] = [
        (
            &[("VLA_LAUNCH_CACHE_DIR", "/c"), ("XDG_CACHE_HOME", "/x")],
            Some("/c/calibration.json"),
        ),
        (
            &[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")],
            Some("/x/vla-launch/calibration.json"),
        ),
        (
            &[("XDG_CACHE_HOME", ""), ("HOME", "/h")],
            Some("/h/.cache/vla-launch/calibration.json"),
        ),
        (
            &[("HOME", "/h")],
            Some("/h/.cache/vla-launch/calibration.json"),
        ),
        (&[], None),
    ];
    for (vars, want) in table {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let got = calibration::default_path(&env).ok();
        assert_eq!(got.as_deref(), want.map(Path::new), "{vars:?}");
    }
}

/// The lead's `calibrate` flow end to end on records: two probe runs at two batch sizes feed the
/// store, which then predicts a third batch size.
#[test]
fn run_records_feed_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::default();
    let (slope, intercept) = (1.08, 0.4 * GIB as f64);
    for (i, batch) in [2u32, 8].into_iter().enumerate() {
        let p = predicted_at(batch);
        let observed = (slope * p as f64 + intercept) as u64 + 3 * GIB; // + other tenant
        let path = dir.path().join(format!("plan-{}.json", 1700000000 + i));
        std::fs::write(&path, record_json(batch, p, observed, 0)).unwrap();
        let rec = record::load(&path).unwrap();
        for (k, o) in record::observations(&rec, &path, Source::Calibrate) {
            store.add(k, o);
        }
    }
    assert_eq!(store.observations(&key()).len(), 2);
    assert_eq!(store.observations(&key())[0].timestamp_unix, 1700000000);
    let p = predicted_at(5);
    let (corrected, _) = store.corrected_peak(&key(), p);
    let truth = slope * p as f64 + intercept;
    assert!((corrected as f64 / truth - 1.0).abs() < 0.01);
}

/// A record as app.rs writes it; `other` bytes held by another process on GPU 1 at plan time.
pub fn record_json(batch: u32, predicted: u64, observed: u64, exit_code: i32) -> String {
    let other = 3 * GIB;
    serde_json::json!({
        "profile": "aloha",
        "feasible": true,
        "strategy": "ddp",
        "gradient_checkpointing": false,
        "batch_size": batch,
        "grad_accumulation_steps": 16 / batch,
        "nproc_per_node": 2,
        "nnodes": 1,
        "global_batch": 32,
        "gpu_indices": [0, 1],
        "predicted_peak_bytes": predicted,
        "budget_model_revision": vla_launch::budget::MODEL_REVISION,
        "allocator": "expandable_segments",
        "gpus": [
            {"index": 0, "name": H100, "uuid": "GPU-a", "total_bytes": 80 * GIB,
             "free_bytes": 79 * GIB, "used_bytes": GIB, "processes": [], "described": false},
            {"index": 1, "name": H100, "uuid": "GPU-b", "total_bytes": 80 * GIB,
             "free_bytes": 76 * GIB, "used_bytes": 4 * GIB,
             "processes": [{"pid": 7, "used_bytes": other, "name": "other"}], "described": false}
        ],
        "command": ["torchrun", "--nproc-per-node", "2", "finetune.py", "--batch_size", batch.to_string()],
        "env": {"CUDA_VISIBLE_DEVICES": "0,1", "HF_TOKEN": "***"},
        "outcome": {
            "exit_code": exit_code,
            "signal": null,
            "interrupted_by": null,
            "duration_s": 60.0,
            "observed_peak_used_bytes": [observed - other - GIB, observed],
            "observed_gpu_uuids": ["GPU-a", "GPU-b"],
            "diagnosis": null
        }
    })
    .to_string()
}

#[test]
fn record_gives_what_replay_needs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan-1700000123.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&record_json(4, 30 * GIB, 40 * GIB, 0)).unwrap();
    v["cwd"] = "/work/openvla-oft".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let rec = record::load(&path).unwrap();
    assert_eq!(rec.profile, "aloha");
    let argv = rec.argv(&path).unwrap();
    assert_eq!(argv[0], "torchrun");
    assert_eq!(argv.last().unwrap(), "4");
    assert_eq!(rec.cwd.as_deref(), Some(Path::new("/work/openvla-oft")));
    assert_eq!(rec.redacted(), vec!["HF_TOKEN".to_string()]);
    assert_eq!(
        rec.env.as_ref().unwrap()["HF_TOKEN"],
        record::REDACTED,
        "the secret's value is not in the record"
    );
    assert_eq!(rec.started_unix(&path), Some(1700000123));
    assert_eq!(
        (
            rec.strategy,
            rec.batch_size,
            rec.grad_accumulation_steps,
            rec.global_batch
        ),
        (Some(Strategy::Ddp), Some(4), Some(4), Some(32))
    );

    // Secrets come from the replaying environment, or replay refuses naming them.
    let env = rec
        .replay_env(&path, &|k: &str| {
            (k == "HF_TOKEN").then(|| "hf_x".to_string())
        })
        .unwrap();
    assert_eq!(
        env,
        vec![
            ("CUDA_VISIBLE_DEVICES".to_string(), "0,1".to_string()),
            ("HF_TOKEN".to_string(), "hf_x".to_string())
        ]
    );
    let e = rec
        .replay_env(&path, &|_: &str| None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("export HF_TOKEN="), "{e}");
}

#[test]
fn only_completed_runs_are_observations() {
    let dir = tempfile::tempdir().unwrap();
    // (exit code, interrupted_by, observations)
    let table = [
        (0, None, 1),
        (1, None, 0),
        (137, None, 0),
        (130, Some(2), 0),
    ];
    for (exit, interrupted, n) in table {
        let mut v: serde_json::Value =
            serde_json::from_str(&record_json(4, 30 * GIB, 40 * GIB, exit)).unwrap();
        v["outcome"]["interrupted_by"] = serde_json::json!(interrupted);
        let path = dir.path().join("plan-1.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let rec = record::load(&path).unwrap();
        assert_eq!(
            record::observations(&rec, &path, Source::Run).len(),
            n,
            "exit {exit}, interrupted {interrupted:?}"
        );
    }
}

#[test]
fn observation_uses_the_uncorrected_budget_and_the_worst_gpu() {
    let mut v: serde_json::Value =
        serde_json::from_str(&record_json(4, 30 * GIB, 40 * GIB, 0)).unwrap();
    // A corrected prediction in predicted_peak_bytes; the budget terms are the raw model.
    v["predicted_peak_bytes"] = (33 * GIB).into();
    v["budget"] = serde_json::json!({
        "weights": 15 * GIB, "gradients": GIB, "optimizer": 2 * GIB, "activations": 10 * GIB,
        "fsdp_working": 0, "transients": 0, "allocator_slack": GIB, "overhead": GIB
    });
    let rec = record::parse(&v.to_string(), Path::new("plan-9.json")).unwrap();
    let obs = record::observations(&rec, Path::new("plan-9.json"), Source::Run);
    let (k, o) = &obs[0];
    assert_eq!(k, &key());
    assert_eq!(o.predicted_peak_bytes, 30 * GIB);
    // GPU-b: 40 GiB peak less 3 GiB held by another process; GPU-a: 36 GiB.
    assert_eq!(o.observed_peak_bytes, 37 * GIB);
    assert_eq!(o.source, Source::Run);
    assert_eq!(o.allocator, Allocator::ExpandableSegments);
}

#[test]
fn record_errors_name_the_file_and_the_fix() {
    let table = [
        ("{", "not valid JSON"),
        (r#"{"profile": "aloha", "command": null}"#, "has no command"),
        (r#"{"profile": "aloha"}"#, "has no command"),
    ];
    for (text, want) in table {
        let path = Path::new("/r/plan-1.json");
        let e = record::parse(text, path)
            .and_then(|r| r.argv(path).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("/r/plan-1.json"), "{e}");
    }
    let e = record::load(Path::new("/nonexistent/plan.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read the run record"), "{e}");
}

fn probe_input<'a>(
    spec: &'a vla_launch::model::ModelSpec,
    gpus: &'a [vla_launch::gpu::Gpu],
    accepts_ckpt: bool,
) -> vla_launch::plan::PlanInput<'a> {
    use vla_launch::plan::{Pins, PlanInput, Policy};
    PlanInput {
        spec,
        gpus,
        nnodes: 1,
        policy: Policy {
            script_accepts_checkpointing: accepts_ckpt,
            ..crate::common::policy()
        },
        pins: Pins::default(),
        host_ram_bytes: None,
        merge_lora_during_training: false,
        calibration: None,
    }
}

use crate::common::builtin_spec;

#[test]
fn probe_runs_cover_every_mode_at_two_batch_sizes() {
    use vla_launch::gpu::parse_gpus_spec;
    // (GPUs, accepts checkpointing, expected (strategy, checkpointing) modes)
    type Modes<'a> = &'a [(Strategy, bool)];
    let table: [(&str, bool, Modes); 3] = [
        (
            "1xh100",
            true,
            &[(Strategy::Ddp, false), (Strategy::Ddp, true)],
        ),
        ("1xh100", false, &[(Strategy::Ddp, false)]),
        (
            "2xh100",
            true,
            &[
                (Strategy::Ddp, false),
                (Strategy::Ddp, true),
                (Strategy::Fsdp, false),
                (Strategy::Fsdp, true),
            ],
        ),
    ];
    let spec = builtin_spec("aloha");
    for (gpus, ckpt, modes) in table {
        let gpus = parse_gpus_spec(gpus).unwrap();
        let inp = probe_input(&spec, &gpus, ckpt);
        let runs = vla_launch::plan::probe::probe_runs(&inp, "aloha").unwrap();
        let mut got: Vec<(Strategy, bool)> = runs
            .iter()
            .map(|r| (r.pins.strategy.unwrap(), r.pins.checkpointing.unwrap()))
            .collect();
        got.dedup();
        assert_eq!(got, modes, "{gpus:?}");
        for pair in runs.chunks(2) {
            let (lo, hi) = (&pair[0], &pair[1]);
            let (bl, bh) = (lo.pins.batch_size.unwrap(), hi.pins.batch_size.unwrap());
            assert_eq!(bl, (bh / 4).max(1));
            assert!(bl < bh, "two distinct batch sizes: {bl} {bh}");
            assert_eq!(lo.key, hi.key);
            assert_eq!(hi.pins.grad_accum, Some(1));
            assert_eq!(hi.key.world_bucket, gpus.len() as u32);
            let usable = gpus[0].free_bytes - (gpus[0].total_bytes / 20).max(GIB);
            assert!(hi.predicted_peak_bytes as f64 <= 0.9 * usable as f64);
            // One batch more would pass the headroom (or the batch limit).
            let mut next = inp.clone();
            next.policy.min_global_batch = 1;
            next.pins = vla_launch::plan::Pins {
                batch_size: Some(bh + 1),
                ..hi.pins.clone()
            };
            let c = vla_launch::plan::plan(&next).unwrap().chosen.unwrap();
            assert!(
                bh == 64 || c.predicted_peak_bytes as f64 > 0.9 * usable as f64,
                "{bh}"
            );
        }
    }
}

/// The `calibrate` acceptance on synthetic data: probe runs on a GPU whose true peak is linear in
/// the prediction, then a held-out batch size of each mode within 5% of the truth.
#[test]
fn calibrate_flow_predicts_held_out_batches() {
    use vla_launch::gpu::parse_gpus_spec;
    let spec = builtin_spec("aloha");
    let gpus = parse_gpus_spec("2xh100").unwrap();
    let inp = probe_input(&spec, &gpus, true);
    let runs = vla_launch::plan::probe::probe_runs(&inp, "aloha").unwrap();
    let truth = |p: u64| 1.09 * p as f64 + 0.6 * GIB as f64;
    let mut store = Store::default();
    for (i, r) in runs.iter().enumerate() {
        store.add(
            r.key.clone(),
            obs(
                r.pins.batch_size.unwrap(),
                r.predicted_peak_bytes,
                truth(r.predicted_peak_bytes) as u64,
                i as u64,
            ),
        );
    }
    for pair in runs.chunks(2) {
        let (lo, hi) = (
            pair[0].pins.batch_size.unwrap(),
            pair[1].pins.batch_size.unwrap(),
        );
        let held_out = (lo + hi) / 2 + 1;
        let mut q = inp.clone();
        q.policy.min_global_batch = 1;
        q.pins = vla_launch::plan::Pins {
            batch_size: Some(held_out),
            ..pair[1].pins.clone()
        };
        let p = vla_launch::plan::plan(&q)
            .unwrap()
            .chosen
            .unwrap()
            .predicted_peak_bytes;
        let (corrected, _) = store.corrected_peak(&pair[0].key, p);
        let err = corrected as f64 / truth(p) - 1.0;
        assert!(
            err.abs() < 0.05,
            "{:?} batch {held_out}: {err:.3}",
            pair[0].key
        );
    }
}

/// Observations of one FSDP (a fork's FSDP1, or runs planned before FSDP2 existed) correct only
/// predictions of that FSDP: FSDP1's figures are ~1.6x FSDP2's, so their fit would lower FSDP2's.
#[test]
fn fsdp1_observations_do_not_correct_fsdp2_predictions() {
    use vla_launch::budget::FsdpVersion;
    use vla_launch::gpu::parse_gpus_spec;
    use vla_launch::plan::{Calibration, Pins, PlanInput, Policy, plan};
    let spec = builtin_spec("aloha");
    let gpus = parse_gpus_spec("4xh100").unwrap();
    let fsdp1 = Key::new(H100, "aloha", Strategy::Fsdp, true, 4);
    let mut store = Store::default();
    // A fork's FSDP1 runs: observed well below FSDP1's predictions, at two batch sizes.
    for (i, b) in [1u32, 4].into_iter().enumerate() {
        let p = 30 * GIB + u64::from(b) * GIB;
        store.add(fsdp1.clone(), obs(b, p, p * 6 / 10, 1000 + i as u64));
    }
    let chosen = |fsdp: FsdpVersion| {
        let input = PlanInput {
            spec: &spec,
            gpus: &gpus,
            nnodes: 1,
            policy: Policy {
                fsdp,
                ..crate::common::policy()
            },
            pins: Pins {
                strategy: Some(Strategy::Fsdp),
                batch_size: Some(2),
                grad_accum: Some(2),
                checkpointing: Some(true),
                nproc: Some(4),
            },
            host_ram_bytes: None,
            merge_lora_during_training: false,
            calibration: Some(Calibration {
                store: &store,
                profile: "aloha",
            }),
        };
        plan(&input).unwrap().chosen.unwrap()
    };
    assert!(chosen(FsdpVersion::Fsdp1).correction.is_some());
    let two = chosen(FsdpVersion::Fsdp2);
    assert!(two.correction.is_none(), "{:?}", two.correction);
    assert_eq!(two.predicted_peak_bytes, two.model_peak_bytes);
}

/// A run record says which FSDP ran (`fsdp`); its observation is keyed by it. Older records (no
/// field) were predicted with FSDP1's terms and stay FSDP1's.
#[test]
fn a_record_keys_its_observation_by_the_fsdp_that_ran() {
    use vla_launch::budget::FsdpVersion;
    for (field, want) in [
        (Some("fsdp2"), FsdpVersion::Fsdp2),
        (Some("fsdp1"), FsdpVersion::Fsdp1),
        (None, FsdpVersion::Fsdp1),
    ] {
        let mut v: serde_json::Value =
            serde_json::from_str(&record_json(4, 30 * GIB, 40 * GIB, 0)).unwrap();
        v["strategy"] = "fsdp".into();
        if let Some(f) = field {
            v["fsdp"] = f.into();
        }
        let rec = record::parse(&v.to_string(), Path::new("plan-9.json")).unwrap();
        let obs = record::observations(&rec, Path::new("plan-9.json"), Source::Run);
        assert_eq!(obs[0].0.fsdp, want, "{field:?}");
        assert_eq!(obs[0].0.strategy, Strategy::Fsdp);
    }
}

/// A calibration corrects the model it was measured against: observations made before the budget
/// model changed (issue 24's padding term moved every padded prediction up ~5%) would apply their
/// old observed/predicted ratio on top of the new model. A store written before model revisions
/// existed (no `model_revision`) corrects nothing until `calibrate` runs again; its observations
/// stay in the file.
#[test]
fn observations_made_under_an_older_budget_model_do_not_correct_plans() {
    let current = linear_store(1.2, 0.0, &[2, 8]);
    let mut v: serde_json::Value = serde_json::from_str(&current.to_json()).unwrap();
    for e in v["entries"].as_array_mut().unwrap() {
        for o in e["observations"].as_array_mut().unwrap() {
            o.as_object_mut().unwrap().remove("model_revision");
        }
    }
    let old = Store::from_json(&v.to_string(), Path::new("calibration.json")).unwrap();
    assert_eq!(old.corrected_peak(&key(), 10 * GIB), (10 * GIB, None));
    assert_eq!(old.observations(&key()).len(), 2, "kept in the file");
    let (corrected, info) = current.corrected_peak(&key(), 10 * GIB);
    assert!(corrected > 11 * GIB && info.is_some(), "{corrected}");
}
