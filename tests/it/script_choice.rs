//! Which script a launch runs (issue 16): in an upstream checkout, `plan`, `--dry-run` and a launch
//! ask the script for its flags the same way (cached), run vla-launch's FSDP addition around it
//! when it lacks `--use_fsdp` / `--gradient_checkpointing` and the addition is installed, and never
//! print a command with a flag the script lacks.

use crate::common::Vla;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::fake_torchrun;

pub(crate) fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn checkout(name: &str) -> PathBuf {
    manifest().join("tests/fixtures").join(name)
}

/// The binary with a clean environment, a private cache dir, the given checkout and
/// VLA_LAUNCH_DIR (where the addition is looked for), and torch 2.11 on PYTHONPATH.
pub(crate) fn bin(cache: &Path, checkout: &Path, launch_dir: &Path) -> Vla {
    let mut c = Vla::new();
    for v in [
        "VLA_LAUNCH_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "SLURM_JOB_ID",
        "SLURM_NNODES",
        "MASTER_ADDR",
        "NNODES",
        "NODE_RANK",
        "PYTORCH_CUDA_ALLOC_CONF",
        "VLA_FINETUNE_SCRIPT",
    ] {
        c.env_remove(v);
    }
    c.env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", cache)
        .env("OPENVLA_OFT_DIR", checkout)
        .env("VLA_LAUNCH_DIR", launch_dir)
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", cache.join("runs"))
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=warn")
        // A current torch in the training environment (issue 24; tests/it/torch_aware.rs
        // gives others).
        .env("PYTHONPATH", stand_in_torch("2.11.0"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(manifest());
    c
}

/// A directory for PYTHONPATH whose `torch` package only says its version and CUDA.
pub(crate) fn stand_in_torch(version: &str) -> PathBuf {
    manifest()
        .join("tests/fixtures/torch-stand-in")
        .join(version)
}

/// The harness's result (torch_aware.rs names it `Out`).
pub(crate) type Out = crate::common::Ran;

pub(crate) fn run(c: &mut Vla) -> Out {
    c.run()
}

/// A VLA_LAUNCH_DIR holding the FSDP addition (its content does not matter to the planner).
pub(crate) fn with_addition(dir: &Path) -> PathBuf {
    let d = dir.join("vla-launch-data");
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    std::fs::write(d.join("scripts/finetune_fsdp.py"), "# the addition\n").unwrap();
    d
}

pub(crate) fn torchrun_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains("torchrun"))
        .unwrap_or_else(|| panic!("no torchrun line in:\n{stdout}"))
}

/// Issue 16, acceptance: in an upstream checkout with no addition available, `plan` and
/// `--dry-run` print the plan the real launch would run, never one with flags the script lacks.
#[test]
fn upstream_without_the_addition_plans_without_the_flags_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-addition");
    std::fs::create_dir_all(&empty).unwrap();
    let upstream = checkout("openvla-oft-upstream");
    let o = run(bin(dir.path(), &upstream, &empty).args([
        "plan",
        "--profile",
        "aloha",
        "--gpus",
        "2xh100",
    ]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let command = o.stdout.split("Command:").nth(1).expect("a command");
    assert!(!command.contains("--use_fsdp"), "{command}");
    assert!(!command.contains("--gradient_checkpointing"), "{command}");
    assert!(
        o.stdout
            .contains("lacks --use_fsdp, --gradient_checkpointing"),
        "{}",
        o.stdout
    );
    let o = run(bin(dir.path(), &upstream, &empty).args([
        "--profile",
        "aloha",
        "--gpus",
        "2xh100",
        "--dry-run",
    ]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let line = torchrun_line(&o.stdout);
    assert!(
        !line.contains("--use_fsdp") && !line.contains("--gradient_checkpointing"),
        "{line}"
    );
    assert!(line.contains("--batch_size"), "{line}");
    // JSON says which script runs and what it takes.
    let o = run(bin(dir.path(), &upstream, &empty).args([
        "plan",
        "--json",
        "--profile",
        "aloha",
        "--gpus",
        "2xh100",
    ]));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["script_accepts"], serde_json::json!([]));
    assert_eq!(v["script_run"]["addition"], false, "{v}");
    assert!(
        v["command"].to_string().contains("vla-scripts/finetune.py"),
        "{v}"
    );
}

/// With the addition installed (default `script.fsdp_addition: auto`), the launcher runs it around
/// upstream's finetune.py and plans with both flags; the 4x RTX 4090 plan is FSDP + checkpointing.
#[test]
fn upstream_with_the_addition_runs_it_and_gets_the_24_gb_plans() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let o = run(bin(dir.path(), &upstream, &data).args([
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
        "--dry-run",
    ]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let line = torchrun_line(&o.stdout);
    let addition = std::fs::canonicalize(data.join("scripts/finetune_fsdp.py")).unwrap();
    assert!(
        line.contains(&format!("--nproc-per-node 4 {}", addition.display())),
        "{line}"
    );
    assert!(
        line.contains("--use_fsdp True") && line.contains("--gradient_checkpointing True"),
        "{line}"
    );
    let script = upstream.join("vla-scripts/finetune.py");
    assert!(
        line.contains(&format!("VLA_FINETUNE_SCRIPT={}", script.display())),
        "{line}"
    );
    assert!(
        o.stderr.contains("runs scripts/finetune_fsdp.py around"),
        "{}",
        o.stderr
    );
    let o = run(bin(dir.path(), &upstream, &data).args([
        "plan",
        "--json",
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
    ]));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["strategy"], "fsdp", "{v}");
    assert_eq!(v["script_run"]["addition"], true, "{v}");
    assert_eq!(
        v["env"]["VLA_FINETUNE_SCRIPT"],
        script.display().to_string(),
        "{v}"
    );
    // Off: the bare script again, and the 24 GB cards cannot hold ALOHA (exit 3).
    let o = run(bin(dir.path(), &upstream, &data).args([
        "plan",
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
        "--set",
        "script.fsdp_addition=off",
    ]));
    assert_eq!(o.code, Some(3), "{}\n{}", o.stdout, o.stderr);
    assert!(!o.stdout.contains("finetune_fsdp.py"), "{}", o.stdout);
    // The fork has both flags: never the addition.
    let o = run(bin(dir.path(), &checkout("openvla-oft"), &data).args([
        "--profile",
        "aloha",
        "--gpus",
        "4xrtx4090",
        "--dry-run",
    ]));
    let line = torchrun_line(&o.stdout);
    assert!(
        !line.contains("finetune_fsdp.py") && line.contains("vla-scripts/finetune.py"),
        "{line}"
    );
    assert!(line.contains("--use_fsdp True"), "{line}");
}

/// A checkout like upstream's: `--help` crashes (draccus %-formats a "10%" comment), the fields are
/// in a dataclass. `fake_python` counts its runs into `count`.
fn crashing_checkout(dir: &Path, fork: bool) -> (PathBuf, PathBuf, PathBuf) {
    let co = dir.join(if fork { "fork" } else { "upstream" });
    std::fs::create_dir_all(co.join("vla-scripts")).unwrap();
    let extra = if fork {
        "    use_fsdp: bool = False\n    gradient_checkpointing: bool = False\n"
    } else {
        ""
    };
    std::fs::write(
        co.join("vla-scripts/finetune.py"),
        format!(
            "from dataclasses import dataclass\n\n@dataclass\nclass FinetuneConfig:\n    \
             batch_size: int = 8\n    lr_warmup_steps: int = 0   # (from 10% to 100%)\n    \
             grad_accumulation_steps: int = 1\n{extra}\n\ndef finetune(cfg):\n    x: int = 1\n"
        ),
    )
    .unwrap();
    let count = dir.join("python-runs");
    let python = dir.join("fake-python");
    std::fs::write(
        &python,
        format!(
            "#!/bin/sh\necho run >> '{}'\necho 'Traceback (most recent call last):' >&2\n\
             echo \"ValueError: unsupported format character 't' (0x74) at index 40\" >&2\nexit 1\n",
            count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    (co, python, count)
}

/// Upstream's own `--help` fails: the flags come from the source, and the answer is cached so a
/// second plan runs nothing.
#[test]
fn a_crashing_help_is_read_from_the_source_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-addition");
    std::fs::create_dir_all(&empty).unwrap();
    let (co, python, count) = crashing_checkout(dir.path(), false);
    let plan = |set_python: &Path| {
        run(bin(dir.path(), &co, &empty)
            .args([
                "--profile",
                "aloha",
                "--gpus",
                "2xh100",
                "--dry-run",
                "--set",
            ])
            .arg(format!("script.python={}", set_python.display())))
    };
    let o = plan(&python);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let line = torchrun_line(&o.stdout);
    assert!(
        !line.contains("--use_fsdp") && !line.contains("--gradient_checkpointing"),
        "{line}"
    );
    assert!(
        o.stderr.contains("unsupported format character"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("from its source"), "{}", o.stderr);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    let o = plan(&python);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().lines().count(),
        1,
        "the second plan asked the script again"
    );
    assert!(dir.path().join("script-flags.json").is_file());
    // A fork whose --help crashes the same way: both flags found in its source.
    let fork_dir = dir.path().join("f");
    std::fs::create_dir_all(&fork_dir).unwrap();
    let (co, python, _) = crashing_checkout(&fork_dir, true);
    let o = run(bin(dir.path(), &co, &empty)
        .args([
            "--profile",
            "aloha",
            "--gpus",
            "2xh100",
            "--dry-run",
            "--set",
        ])
        .arg(format!("script.python={}", python.display())));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        torchrun_line(&o.stdout).contains("--use_fsdp False"),
        "{}",
        o.stdout
    );
}

/// Outside a checkout `plan` still plans, and says which flags it assumed.
#[test]
fn outside_a_checkout_the_assumed_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin(
        dir.path(),
        Path::new("/nonexistent-openvla-oft"),
        dir.path(),
    )
    .args(["plan", "--profile", "aloha", "--gpus", "2xh100"]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout
            .contains("assumed it runs with --use_fsdp, --gradient_checkpointing"),
        "{}",
        o.stdout
    );
}

/// A real launch runs the addition with the script named in its environment.
#[test]
fn a_launch_runs_the_addition_with_the_script_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let record = dir.path().join("record.json");
    let o = run(bin(dir.path(), &upstream, &data)
        .args(["--profile", "aloha", "--gpus", "4xrtx4090", "--torchrun"])
        .arg(fake_torchrun())
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env("FAKE_RECORD", &record));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let argv = rec["argv"].to_string();
    assert!(
        argv.contains("finetune_fsdp.py") && argv.contains("--use_fsdp"),
        "{argv}"
    );
    assert!(rec.to_string().contains("VLA_FINETUNE_SCRIPT"), "{rec}");
}

/// `doctor` says which script will run and why.
#[test]
fn doctor_reports_which_script_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let o = run(
        bin(dir.path(), &checkout("openvla-oft-upstream"), &data).args([
            "doctor",
            "--profile",
            "aloha",
        ]),
    );
    assert!(
        o.stdout.contains("runs scripts/finetune_fsdp.py around")
            && o.stdout
                .contains("--use_fsdp, --gradient_checkpointing, which the script lacks"),
        "{}",
        o.stdout
    );
}

/// A VLA_LAUNCH_DIR holding the real-code probe, and a Python whose `--help` of it lists its
/// flags (upstream's plus --gradient_checkpointing, as the real probe's does).
fn with_real_probe(dir: &Path) -> (PathBuf, PathBuf) {
    let d = dir.join("vla-launch-data");
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    std::fs::write(
        d.join("scripts/real_probe_finetune.py"),
        "# the real-code probe\n",
    )
    .unwrap();
    let python = dir.join("fake-python");
    std::fs::write(
        &python,
        "#!/bin/sh\ncase \"$1\" in *real_probe_finetune.py) ;; *) exit 9;; esac\n\
         echo 'usage: real_probe_finetune.py [-h] [--batch_size int] [--grad_accumulation_steps int] [--gradient_checkpointing bool]'\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    (d, python)
}

/// Issue 15: `calibrate --profile aloha` in a checkout runs the shipped real-code probe against it
/// (random weights, synthetic batches: no VLA_DATA_ROOT or wandb needed), DDP only, and files the
/// observations under the profile the user plans with.
#[test]
fn calibrate_in_a_checkout_runs_the_real_code_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (data, python) = with_real_probe(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let record = dir.path().join("record.json");
    let report = "VLA_PROBE_RESULT {\"rank\":0,\"gpu_uuid\":\"described-0\",\"peak_nvml_used_bytes\":42949672960}\n";
    let o = run(bin(dir.path(), &upstream, &data)
        .env_remove("VLA_DATA_ROOT")
        .env_remove("WANDB_ENTITY")
        .env_remove("WANDB_PROJECT")
        .args([
            "calibrate",
            "--profile",
            "aloha",
            "--gpus",
            "1xh100",
            "--steps",
            "2",
            "--set",
        ])
        .arg(format!("script.python={}", python.display()))
        .arg("--torchrun")
        .arg(fake_torchrun())
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env("FAKE_RECORD", &record)
        .env("FAKE_STDERR", report));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stderr.contains("real-code probe"), "{}", o.stderr);
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let argv: Vec<String> = serde_json::from_value(rec["argv"].clone()).unwrap();
    let probe = std::fs::canonicalize(data.join("scripts/real_probe_finetune.py")).unwrap();
    assert!(argv.contains(&probe.display().to_string()), "{argv:?}");
    assert!(
        !argv.iter().any(|a| a.contains("vla-scripts/finetune.py")),
        "{argv:?}"
    );
    assert!(!argv.iter().any(|a| a == "--use_fsdp"), "{argv:?}");
    assert!(
        argv.iter().any(|a| a == "--gradient_checkpointing"),
        "{argv:?}"
    );
    let steps = argv.iter().position(|a| a == "--max_steps").unwrap();
    assert_eq!(argv[steps + 1], "2");
    // The probe imports finetune.py from its working directory: the checkout.
    assert_eq!(
        std::fs::canonicalize(rec["cwd"].as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&upstream).unwrap()
    );
    let store = std::fs::read_to_string(dir.path().join("calibration.json")).unwrap();
    assert!(store.contains("\"profile\": \"aloha\""), "{store}");
    assert!(o.stdout.contains("observed 40.00 GiB"), "{}", o.stdout);
    // Without the probe installed: the profile's own script, as before.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(bin(dir.path(), &upstream, &empty).args([
        "calibrate",
        "--profile",
        "aloha",
        "--gpus",
        "1xh100",
        "--steps",
        "2",
        "--dry-run",
    ]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("vla-scripts/finetune.py") && !o.stdout.contains("real_probe"),
        "{}",
        o.stdout
    );
}

/// With `auto`, a plan that needs neither FSDP nor checkpointing (8 H100s: DDP, batch 2) runs upstream's
/// script itself, exactly as upstream, without the flags it lacks; `on` runs the addition anyway.
#[test]
fn a_plan_that_needs_no_missing_flag_runs_the_script_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let o = run(bin(dir.path(), &upstream, &data).args([
        "--profile",
        "aloha",
        "--gpus",
        "8xh100",
        "--dry-run",
    ]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let line = torchrun_line(&o.stdout);
    assert!(
        line.contains("--nproc-per-node 8 vla-scripts/finetune.py"),
        "{line}"
    );
    assert!(
        !line.contains("--use_fsdp") && !line.contains("VLA_FINETUNE_SCRIPT"),
        "{line}"
    );
    assert!(
        o.stderr.contains("runs vla-scripts/finetune.py itself"),
        "{}",
        o.stderr
    );
    let o = run(bin(dir.path(), &upstream, &data).args([
        "--profile",
        "aloha",
        "--gpus",
        "8xh100",
        "--dry-run",
        "--set",
        "script.fsdp_addition=on",
    ]));
    let line = torchrun_line(&o.stdout);
    assert!(
        line.contains("finetune_fsdp.py") && line.contains("--use_fsdp False"),
        "{line}"
    );
}

/// The budget follows the FSDP that runs (issue 16): the addition's FSDP2 in an upstream checkout,
/// the fork's own FSDP1 when the script has --use_fsdp, FSDP1 when nobody could ask (assumed).
#[test]
fn the_plan_predicts_the_fsdp_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let plan = |checkout: &Path| -> serde_json::Value {
        let o = run(bin(dir.path(), checkout, &data).args([
            "plan",
            "--json",
            "--profile",
            "aloha",
            "--gpus",
            "4xrtx4090",
            "--strategy",
            "fsdp",
        ]));
        assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let upstream = plan(&checkout("openvla-oft-upstream"));
    let fork = plan(&checkout("openvla-oft"));
    let nowhere = plan(&dir.path().join("no-checkout"));
    assert_eq!(upstream["fsdp_impl"], "fsdp2", "{upstream}");
    assert_eq!(fork["fsdp_impl"], "fsdp1", "{fork}");
    assert_eq!(nowhere["fsdp_impl"], "fsdp1", "{nowhere}");
    assert_eq!(upstream["script_run"]["addition"], true);
    // FSDP2 keeps gradients only for the 852,557,326 trainable parameters (2,651,283,996 bytes),
    // sharded over 4 GPUs; FSDP1 keeps them for every flat parameter.
    assert_eq!(
        upstream["budget"]["gradients"],
        2_651_283_996u64.div_ceil(4)
    );
    assert_eq!(fork["budget"]["gradients"], fork["budget"]["weights"]);
    let peak = |v: &serde_json::Value| v["predicted_peak_bytes"].as_u64().unwrap();
    assert!(
        peak(&upstream) < peak(&fork),
        "{} vs {}",
        peak(&upstream),
        peak(&fork)
    );
    assert_eq!(peak(&fork), peak(&nowhere));
}

/// Issue 17 item 5 with issue 16: a real launch through the FSDP addition is not refused for the
/// flags the addition adds (the planner's `--use_fsdp` / `--gradient_checkpointing`, which
/// upstream's finetune.py lacks), while a misspelt one after `--` is, with the addition's flag as
/// the suggestion; torchrun never starts for it.
#[test]
fn a_launch_through_the_addition_refuses_only_unknown_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = with_addition(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let record = dir.path().join("record.json");
    let launch = |extra: &[&str]| {
        run(bin(dir.path(), &upstream, &data)
            .args(["--profile", "aloha", "--gpus", "4xrtx4090", "--torchrun"])
            .arg(fake_torchrun())
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .env("FAKE_RECORD", &record)
            .args(extra))
    };
    let o = launch(&["--", "--use_fsdpp", "True"]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("did you mean --use_fsdp?"),
        "{}",
        o.stderr
    );
    assert!(!record.exists(), "torchrun was started");
    let o = launch(&[]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let argv: Vec<String> = serde_json::from_value(rec["argv"].clone()).unwrap();
    assert!(argv.iter().any(|a| a == "--use_fsdp"), "{argv:?}");
    assert!(
        argv.iter().any(|a| a == "--gradient_checkpointing"),
        "{argv:?}"
    );
}

/// On 24 GB cards nothing DDP fits, and the real-code probe runs DDP only: calibrate must say
/// that (and what plans use instead), not "not even batch 1 fits these GPUs" while the FSDP plan
/// fits.
#[test]
fn calibrate_in_a_checkout_on_24gb_cards_says_why_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, python) = with_real_probe(dir.path());
    let upstream = checkout("openvla-oft-upstream");
    let o = run(bin(dir.path(), &upstream, &data)
        .args([
            "calibrate",
            "--profile",
            "aloha",
            "--gpus",
            "4xrtx4090",
            "--dry-run",
            "--set",
        ])
        .arg(format!("script.python={}", python.display())));
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(
        !o.stderr.contains("not even batch 1 fits these GPUs"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("the real-code probe runs DDP only")
            && o.stderr.contains("FSDP")
            && o.stderr.contains("the budget model alone"),
        "{}",
        o.stderr
    );
}
