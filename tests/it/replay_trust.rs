//! Issue 14 item 8: `replay` shows what it will run and does not run a record's program,
//! environment or directory blindly; `--plan-file` does not run a profile it names by path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fake() -> PathBuf {
    root().join("tests/fixtures/fake_torchrun")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vla-launch"));
    c.env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("BASH_ENV")
        .env_remove("HF_TOKEN")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root());
    c
}

/// main's launch record, moved to this checkout, edited by `edit`, written to `dir`.
fn record(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let text = std::fs::read_to_string(
        root().join("tests/fixtures/records/main-f32ef0c-run-plan-1795850263.json"),
    )
    .unwrap()
    .replace(
        "/work/wt/structure/tests/fixtures/",
        &format!("{}/tests/fixtures/", root().display()),
    );
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let path = dir.join("plan-1795850263.json");
    std::fs::write(&path, v.to_string()).unwrap();
    path
}

fn replay(path: &Path, args: &[&str], dir: &Path) -> Output {
    bin()
        .arg("replay")
        .arg(path)
        .args(args)
        .env("FAKE_RECORD", dir.join("seen.json"))
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn seen(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("seen.json")).unwrap()).unwrap()
}

#[test]
fn a_record_whose_program_is_not_torchrun_is_refused_after_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let pwn = dir.path().join("PWN");
    let cmd = format!("touch {}", pwn.display());
    for argv in [
        serde_json::json!(["/bin/sh", "-c", cmd]),
        serde_json::json!([root().join("evil.sh"), "x"]),
    ] {
        let path = record(dir.path(), |v| v["command"] = argv.clone());
        let out = replay(&path, &[], dir.path());
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(!pwn.exists(), "the record's program ran");
        let program = argv[0].as_str().unwrap();
        assert!(e.contains(program) && e.contains("torchrun"), "{e}");
        assert!(e.contains("--trust-record"), "{e}");
        // What it would have run is shown.
        assert!(e.contains("cd "), "{e}");
    }
}

#[test]
fn the_profiles_torchrun_given_with_torchrun_replays() {
    let dir = tempfile::tempdir().unwrap();
    let path = record(dir.path(), |_| {});
    let out = replay(&path, &["--torchrun", fake().to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        seen(dir.path())["argv"].as_array().unwrap().last().unwrap(),
        "x"
    );
}

#[test]
fn loader_variables_and_a_foreign_directory_from_a_record_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake();
    let torchrun = ["--torchrun", fake.to_str().unwrap()];
    for (name, value) in [
        ("BASH_ENV", "/tmp/evil"),
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("PYTHONSTARTUP", "/tmp/evil.py"),
    ] {
        let path = record(dir.path(), |v| v["env"][name] = value.into());
        let out = replay(&path, &torchrun, dir.path());
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {e}");
        assert!(e.contains(name) && e.contains("--trust-record"), "{e}");
    }
    let path = record(dir.path(), |v| v["cwd"] = "/tmp".into());
    let out = replay(&path, &torchrun, dir.path());
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("/tmp") && e.contains("workdir"), "{e}");

    // Asked for explicitly, it runs as recorded.
    let path = record(dir.path(), |v| v["env"]["BASH_ENV"] = "/dev/null".into());
    let mut args = torchrun.to_vec();
    args.push("--trust-record");
    let out = replay(&path, &args, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(seen(dir.path())["env"]["BASH_ENV"], "/dev/null");
}

#[test]
fn masked_secret_arguments_come_from_the_environment_or_replay_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = record(dir.path(), |v| {
        let argv = v["command"].as_array_mut().unwrap();
        argv.push("--hf_token".into());
        argv.push("***".into());
        argv.push("--wandb-api-key=***".into());
    });
    let fake = fake();
    let torchrun = ["--torchrun", fake.to_str().unwrap()];
    let out = replay(&path, &torchrun, dir.path());
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("HF_TOKEN") && e.contains("WANDB_API_KEY"), "{e}");
    let out = bin()
        .arg("replay")
        .arg(&path)
        .args(torchrun)
        .env("FAKE_RECORD", dir.path().join("seen.json"))
        .env("HF_TOKEN", "hf_from_env")
        .env("WANDB_API_KEY", "wandb_from_env")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let argv: Vec<String> = serde_json::from_value(seen(dir.path())["argv"].clone()).unwrap();
    assert!(
        argv.ends_with(&[
            "--hf_token".into(),
            "hf_from_env".into(),
            "--wandb-api-key=wandb_from_env".into()
        ]),
        "{argv:?}"
    );
    assert!(!stderr(&out).contains("hf_from_env"), "{}", stderr(&out));
}

#[test]
fn a_plan_file_naming_a_profile_by_path_does_not_run_it_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let pwn = dir.path().join("PWNED");
    let evil_py = dir.path().join("evil-python");
    std::fs::write(&evil_py, format!("#!/bin/sh\ntouch {}\n", pwn.display())).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&evil_py)
        .status()
        .unwrap();
    let profile = dir.path().join("evil.yaml");
    let aloha = std::fs::read_to_string(root().join("launch-profiles/aloha.yaml"))
        .unwrap()
        .replace("python: python3", &format!("python: {}", evil_py.display()));
    std::fs::write(&profile, aloha).unwrap();
    let plan = dir.path().join("plan.json");
    let out = bin()
        .args(["plan", "--gpus", "1xh100", "-o"])
        .arg(&plan)
        .arg("--profile")
        .arg(&profile)
        .env("VLA_DATA_ROOT", "/d")
        .env("VLA_RUN_ROOT", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // `plan` asks the script for its flags as a launch does (issue 16), with the python of the
    // profile the user named: that one may run. The plan file's profile below may not.
    let _ = std::fs::remove_file(&pwn);
    // A hand-edited (or hostile) plan file names the profile by its path.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    v["profile"] = profile.to_str().unwrap().into();
    std::fs::write(&plan, v.to_string()).unwrap();
    let out = bin()
        .args(["--gpus", "1xh100", "--plan-file"])
        .arg(&plan)
        .arg("--torchrun")
        .arg(fake())
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env("VLA_DATA_ROOT", "/d")
        .env("VLA_RUN_ROOT", dir.path())
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .output()
        .unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(!pwn.exists(), "the plan file's profile ran its python");
    assert!(e.contains("--profile") && e.contains("evil.yaml"), "{e}");
}
