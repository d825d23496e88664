//! Torch-aware planning (issue 24): in an upstream checkout the FSDP addition runs FSDP2 on torch
//! 2.5 and later, FSDP1 on 2.2 to 2.4 (upstream's pin), and nothing below; `plan`,
//! `plan --json` and `--dry-run` plan only what the training environment's torch can run and
//! say which. The torch is a stand-in package on PYTHONPATH (tests/fixtures/torch-stand-in).

use std::path::Path;

use crate::script_choice::{Out, bin, checkout, run, stand_in_torch, torchrun_line, with_addition};

/// The binary in the upstream checkout with the addition installed, a fresh cache, `torch` (a
/// stand-in version; None: no torch) on PYTHONPATH and `env` set.
fn cli(torch: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let mut c = bin(dir.path(), &checkout("openvla-oft-upstream"), &data);
    let pythonpath = torch.map_or_else(|| Path::new("/nonexistent-torch").into(), stand_in_torch);
    c.env("PYTHONPATH", pythonpath)
        .envs(env.iter().copied())
        .args(args);
    run(&mut c)
}

/// `plan --json` for ALOHA on 4x RTX 4090 (and `more` arguments), as a value.
fn plan_json(torch: Option<&str>, env: &[(&str, &str)], more: &[&str]) -> (serde_json::Value, Out) {
    let args = [
        "plan",
        "--json",
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
    ];
    let o = cli(torch, env, &[&args[..], more].concat());
    let v = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", o.stdout, o.stderr));
    (v, o)
}

/// `plan --json` and `--dry-run` for ALOHA on 4x RTX 4090 on the given torch.
fn plan_on(torch: &str) -> (serde_json::Value, Out) {
    let (v, _) = plan_json(Some(torch), &[], &[]);
    let dry = cli(
        Some(torch),
        &[],
        &["--profile", "aloha", "--gpus", "4xrtx4090", "--dry-run"],
    );
    (v, dry)
}

fn addition_line(dry: &Out) -> &str {
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let line = torchrun_line(&dry.stdout);
    assert!(line.contains("finetune_fsdp.py"), "{line}");
    line
}

/// Upstream's pinned torch 2.2.0 has no `fully_shard`: the 24 GB plan is FSDP1.
#[test]
fn on_upstreams_pinned_torch_the_addition_plans_fsdp1() {
    let (v, dry) = plan_on("2.2.0");
    assert_eq!(v["feasible"], true, "{v}");
    assert_eq!(v["strategy"], "fsdp", "{v}");
    assert_eq!(v["fsdp_impl"], "fsdp1", "{v}");
    assert!(
        v["torch"].as_str().is_some_and(|t| t.starts_with("2.2.0")),
        "{v}"
    );
    assert_eq!(v["torch_cuda"], "12.1", "{v}");
    assert_eq!(v["env"]["VLA_FSDP_IMPL"], "fsdp1", "{v}");
    let line = addition_line(&dry);
    assert!(
        line.contains("VLA_FSDP_IMPL=fsdp1") && line.contains("--use_fsdp True"),
        "{line}"
    );
    assert!(
        dry.stderr.contains("torch 2.2.0+cu121") && dry.stderr.contains("FSDP1"),
        "{}",
        dry.stderr
    );
}

#[test]
fn on_a_current_torch_the_addition_plans_fsdp2() {
    let (v, dry) = plan_on("2.11.0");
    assert_eq!(v["feasible"], true, "{v}");
    assert_eq!(v["fsdp_impl"], "fsdp2", "{v}");
    assert!(
        v["torch"].as_str().is_some_and(|t| t.starts_with("2.11.0")),
        "{v}"
    );
    let line = addition_line(&dry);
    assert!(line.contains("VLA_FSDP_IMPL=fsdp2"), "{line}");
}

/// torch 1.13 has neither FSDP the addition runs: no FSDP plan (ALOHA does not fit 24 GB cards
/// without it), and the reason names the version and the torch that would do.
#[test]
fn a_torch_without_either_fsdp_gets_no_fsdp_plan_and_is_named() {
    let (v, dry) = plan_on("1.13.1");
    assert_eq!(v["feasible"], false, "{v}");
    assert_ne!(v["strategy"], "fsdp", "{v}");
    assert!(v.get("fsdp_impl").is_none(), "{v}");
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("torch 1.13.1") && reasons.contains("2.2 or later"),
        "{reasons}"
    );
    assert!(!reasons.contains("does not take --use_fsdp"), "{reasons}");
    // The levers blame the torch, not the script (which takes --use_fsdp through the addition).
    let levers = v["levers"].to_string();
    assert!(
        levers.contains("with a torch that runs FSDP") && !levers.contains("in the script"),
        "{levers}"
    );
    assert_eq!(dry.code, Some(3), "{}", dry.stderr);
}

/// Without torch in the Python that runs the script, the plan says what it assumed.
#[test]
fn a_python_without_torch_assumes_fsdp1_and_says_so() {
    let (v, _) = plan_json(None, &[], &[]);
    assert_eq!(v["fsdp_impl"], "fsdp1", "{v}");
    assert!(v.get("torch").is_none(), "{v}");
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("could not learn the torch version") && warnings.contains("assumed"),
        "{warnings}"
    );
}

/// A real launch on torch 2.2.0 runs the addition told FSDP1, and its record says so.
#[test]
fn a_launch_on_the_pinned_torch_runs_the_addition_with_fsdp1() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let logs = dir.path().join("logs");
    let seen = dir.path().join("torchrun-saw.json");
    let mut c = bin(dir.path(), &checkout("openvla-oft-upstream"), &data);
    c.env("PYTHONPATH", stand_in_torch("2.2.0"))
        .env("FAKE_RECORD", &seen)
        .args(["--profile", "aloha", "--gpus", "4xrtx4090", "--torchrun"])
        .arg(crate::common::fake_torchrun())
        .arg("--log-dir")
        .arg(&logs);
    let o = run(&mut c);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let seen: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(seen["env"]["VLA_FSDP_IMPL"], "fsdp1", "{seen}");
    assert!(
        seen["argv"].to_string().contains("finetune_fsdp.py"),
        "{seen}"
    );
    let record = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("plan-"))
        })
        .expect("a run record");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(rec["fsdp_impl"], "fsdp1", "{rec}");
    assert_eq!(rec["torch"], "2.2.0+cu121", "{rec}");
}

/// `doctor` says which FSDP the addition will run on the training environment's torch.
#[test]
fn doctor_says_which_fsdp_the_torch_gives_the_addition() {
    let o = cli(Some("2.2.0"), &[], &["doctor", "--profile", "aloha"]);
    assert!(
        o.stdout
            .contains("torch 2.2.0+cu121 (CUDA 12.1): the addition runs FSDP1"),
        "{}",
        o.stdout
    );
}

/// The addition merges LoRA at a checkpoint on the saving rank alone, FSDP1 or FSDP2: on torch
/// 2.2.0 a node with 96 GiB of RAM keeps `--merge_lora_during_training` as on a current torch
/// (every rank loading the 15 GB base model would need 111 GiB).
#[test]
fn the_addition_merges_on_one_rank_under_fsdp1_too() {
    let plan = |torch| plan_json(Some(torch), &[], &["--host-ram", "96GiB"]).0;
    let (fsdp1, fsdp2) = (plan("2.2.0"), plan("2.11.0"));
    assert_eq!(fsdp1["fsdp_impl"], "fsdp1", "{fsdp1}");
    for v in [&fsdp1, &fsdp2] {
        assert!(
            !v["command"]
                .to_string()
                .contains("--merge_lora_during_training"),
            "{v}"
        );
    }
    assert_eq!(fsdp1["host_ram"], fsdp2["host_ram"]);
}

/// `VLA_FSDP_IMPL`, which the addition honours, is planned for too: FSDP1 on a current torch,
/// no FSDP where it asks for one the torch lacks, and a usage error for another word.
#[test]
fn a_forced_fsdp_implementation_is_planned_where_the_torch_has_it() {
    let plan = |torch, forced| plan_json(Some(torch), &[("VLA_FSDP_IMPL", forced)], &[]);
    let (v, _) = plan("2.11.0", "fsdp1");
    assert_eq!(v["fsdp_impl"], "fsdp1", "{v}");
    assert_eq!(v["env"]["VLA_FSDP_IMPL"], "fsdp1", "{v}");
    let (v, o) = plan("2.2.0", "fsdp2");
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        v["reasons"]
            .to_string()
            .contains("VLA_FSDP_IMPL=fsdp2 needs torch 2.4"),
        "{v}"
    );
    let o = cli(
        Some("2.11.0"),
        &[("VLA_FSDP_IMPL", "fsdp3")],
        &["plan", "--profile", "aloha", "--gpus", "4xrtx4090"],
    );
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("VLA_FSDP_IMPL=\"fsdp3\": not fsdp1 or fsdp2"),
        "{}",
        o.stderr
    );
}
