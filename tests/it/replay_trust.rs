//! Issue 14 item 8: `replay` shows what it will run and does not run a record's program,
//! environment or directory blindly; `--plan-file` does not run a profile it names by path.

use crate::common::Vla;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fake() -> PathBuf {
    root().join("tests/fixtures/fake_torchrun")
}

fn bin() -> Vla {
    let mut c = Vla::new();
    c.env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("BASH_ENV")
        .env_remove("HF_TOKEN")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("RUST_LOG", "vla_launch=warn")
        // What the fixture record's launch had: the profile's placeholders resolve the same.
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", "/tmp/vla-fixture-run")
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .current_dir(root());
    c
}

/// main's launch record, moved to this checkout, edited by `edit`, written to `dir`.
fn record(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut v = crate::common::main_launch_record();
    // Its launch passed `-- --run_id_note x`, which the profile does not produce: without it,
    // the record is exactly what the profile and its plan produce.
    let argv = v["command"].as_array_mut().unwrap();
    assert_eq!(argv[argv.len() - 2..], ["--run_id_note", "x"]);
    argv.truncate(argv.len() - 2);
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
    // Script arguments passed after `--` are not the profile's: refused, named.
    let path = record(dir.path(), |v| {
        let argv = v["command"].as_array_mut().unwrap();
        argv.extend(["--run_id_note".into(), "x".into()]);
    });
    let out = replay(&path, &["--torchrun", fake().to_str().unwrap()], dir.path());
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("argument 57") && e.contains("--run_id_note"),
        "{e}"
    );
    assert!(!dir.path().join("seen.json").exists());
    let path = record(dir.path(), |_| {});
    let out = replay(&path, &["--torchrun", fake().to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ran = seen(dir.path());
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        ran["argv"].as_array().unwrap()[..],
        recorded["command"].as_array().unwrap()[1..]
    );
    assert_eq!(ran["env"]["TOKENIZERS_PARALLELISM"], "false");
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
    // Script arguments the profile does not produce run only as the record has them.
    let torchrun = ["--torchrun", fake.to_str().unwrap(), "--trust-record"];
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

/// Issue 25 item 1: a record naming its own profile file (by `profile` or `profile_origin`)
/// is never checked against that file: without `--profile`, only a built-in or installed
/// profile of that name is used, and a path is refused.
#[test]
fn a_record_never_chooses_the_profile_it_is_checked_against() {
    let dir = tempfile::tempdir().unwrap();
    let pwn = dir.path().join("PWNED");
    let evil = dir.path().join("evil.sh");
    std::fs::write(&evil, format!("#!/bin/sh\ntouch {}\n", pwn.display())).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&evil)
        .status()
        .unwrap();
    let profile = dir.path().join("evil.yaml");
    let aloha = std::fs::read_to_string(root().join("launch-profiles/aloha.yaml"))
        .unwrap()
        .replace(
            "torchrun: torchrun",
            &format!("torchrun: {}", evil.display()),
        )
        .replace(
            "workdir: ${OPENVLA_OFT_DIR:-.}",
            &format!("workdir: {}", dir.path().display()),
        )
        .replace(
            "TOKENIZERS_PARALLELISM: \"false\"",
            "TOKENIZERS_PARALLELISM: \"false\"\n  BASH_ENV: /dev/null\n  LD_PRELOAD: \"\"",
        );
    std::fs::write(&profile, aloha).unwrap();
    for (name, origin) in [
        (profile.display().to_string(), serde_json::Value::Null),
        (
            "aloha".to_string(),
            serde_json::json!({"kind": "file", "path": profile}),
        ),
        (
            profile.display().to_string(),
            serde_json::json!({"kind": "file", "path": profile}),
        ),
    ] {
        let path = record(dir.path(), |v| {
            v["profile"] = name.clone().into();
            v["profile_origin"] = origin.clone();
            v["command"][0] = evil.to_str().unwrap().into();
            v["env"]["BASH_ENV"] = "/dev/null".into();
            v["env"]["LD_PRELOAD"] = "".into();
            v["cwd"] = dir.path().to_str().unwrap().into();
        });
        let out = replay(&path, &[], dir.path());
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {e}");
        assert!(
            !pwn.exists(),
            "the record's own profile let {name} run evil.sh: {e}"
        );
        assert!(e.contains("--trust-record"), "{e}");
    }
}

/// Issue 25 item 2: every argument is compared, not only the program: torchrun options the
/// profile and plan do not produce (`--no-python ./evil.sh`), another script, or another
/// flag value are refused, naming the first difference; the fake torchrun never runs.
#[test]
fn a_record_whose_torchrun_arguments_differ_is_refused_naming_the_first_difference() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake();
    let torchrun = ["--torchrun", fake.to_str().unwrap()];
    type Edit = fn(&mut Vec<serde_json::Value>);
    let cases: [(&str, Edit); 4] = [
        ("--no-python", |a| {
            a.insert(1, "--no-python".into());
            a.insert(2, "./evil.sh".into());
        }),
        ("other.py", |a| {
            let i = a
                .iter()
                .position(|x| x == "vla-scripts/finetune.py")
                .unwrap();
            a[i] = "other.py".into();
        }),
        ("/evil/model", |a| {
            let i = a.iter().position(|x| x == "--vla_path").unwrap();
            a[i + 1] = "/evil/model".into();
        }),
        ("--resume_step", |a| {
            a.push("--resume_step".into());
            a.push("5".into());
        }),
    ];
    for (shown, edit) in cases {
        let path = record(dir.path(), |v| {
            edit(v["command"].as_array_mut().unwrap());
        });
        let _ = std::fs::remove_file(dir.path().join("seen.json"));
        let out = replay(&path, &torchrun, dir.path());
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{shown}: {e}");
        assert!(
            !dir.path().join("seen.json").exists(),
            "{shown}: torchrun ran"
        );
        assert!(e.contains(shown) && e.contains("argument"), "{shown}: {e}");
        assert!(e.contains("--trust-record"), "{e}");
    }
}
