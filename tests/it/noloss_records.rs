//! Issue 14 item 6, the record half: secrets masked by name and by value in everything the
//! launcher writes (the run record, `plan --json`, `plan -o`), records 0600 in 0700 directories
//! unless `--record-mode` says otherwise.

use crate::common::WithoutAmbient;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECRETS: &[&str] = &[
    "hf_env_secret_0001",
    "set_secret_0002",
    "wandb_secret_0003",
    "hf_flag_secret_0004",
    "api_secret_0005",
];

/// A copy of the stand-in finetune.py whose `--help` also lists the secret-carrying flags these
/// tests pass (a fork with W&B and Hugging Face tokens as flags): unknown flags are refused.
fn checkout_with_secret_flags(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(
        root.join("tests/fixtures/openvla-oft/vla-scripts/finetune.py"),
    )
    .unwrap()
    .replace(
        "wandb_log_freq int\"\"\"",
        "wandb_log_freq int hf_token str wandb_api_key str hf-token str api_token str\"\"\"",
    );
    assert!(text.contains("api_token"), "the stand-in's flag list moved");
    let checkout = dir.join("openvla-oft-with-tokens");
    std::fs::create_dir_all(checkout.join("vla-scripts")).unwrap();
    std::fs::write(checkout.join("vla-scripts/finetune.py"), text).unwrap();
    checkout
}

fn bin(dir: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkout = checkout_with_secret_flags(dir);
    let mut c = Command::new(env!("CARGO_BIN_EXE_vla-launch"));
    c.without_ambient_topology()
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", &checkout)
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", dir)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("HF_TOKEN", SECRETS[0])
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root);
    c
}

/// Profile env that carries a token under a harmless name, a secret `--set`, secret flags.
fn secret_args(c: &mut Command) -> &mut Command {
    c.args(["--profile", "aloha", "--gpus", "1xh100"])
        .arg("--set")
        .arg("env.MY_HF_AUTH=${HF_TOKEN}")
        .arg("--set")
        .arg(format!("train.hf_token={}", SECRETS[1]))
}

fn secret_extra(c: &mut Command) -> &mut Command {
    c.args(["--", "--wandb_api_key", SECRETS[2]])
        .arg(format!("--hf-token={}", SECRETS[3]))
        .args(["--api_token", SECRETS[4]])
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn records_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        // `latest.json` is a link to the newest record, not a record of its own.
        .filter(|p| !p.is_symlink())
        .collect()
}

#[test]
fn plan_json_and_plan_o_mask_secrets_by_name_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("plan.json");
    let mut c = bin(dir.path());
    c.arg("plan");
    secret_args(&mut c).arg("--json").arg("-o").arg(&out_file);
    let out = secret_extra(&mut c).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MY_HF_AUTH"), "{stdout}");
    assert_no_secret("plan --json", &stdout);
    assert_no_secret("stderr", &stderr);
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert_no_secret("plan -o", &written);
    assert_eq!(mode(&out_file), 0o600);

    // A file that was there already (0644) gets the mode asked for too.
    let old = dir.path().join("old.json");
    std::fs::write(&old, "{}").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin(dir.path())
        .args(["plan", "-p", "aloha", "--gpus", "1xh100", "-o"])
        .arg(&old)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(mode(&old), 0o600);
}

#[test]
fn the_run_record_masks_secrets_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("new/logs");
    let mut c = bin(dir.path());
    secret_args(&mut c)
        .arg("--torchrun")
        .arg(vla_torchrun())
        .arg("--log-dir")
        .arg(&logs);
    let out = secret_extra(&mut c).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_no_secret("stderr", &stderr);
    let recs = records_in(&logs);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let text = std::fs::read_to_string(&recs[0]).unwrap();
    assert!(text.contains("MY_HF_AUTH"), "{text}");
    assert_no_secret("the run record", &text);
    assert_eq!(mode(&recs[0]), 0o600);
    assert_eq!(mode(&logs), 0o700);
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    // The log holds everything the script printed (tokens included, if it prints them): as
    // private as the record, also in a --log-dir that was there already with 0755.
    assert_eq!(mode(&logs_in(&logs)[0]), 0o600);
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    launch_aloha(dir.path(), &shared, &[]);
    assert_eq!(mode(&logs_in(&shared)[0]), 0o600);
}

/// A launch of the aloha profile with the fake torchrun, logs in `logs`; it must succeed.
fn launch_aloha(dir: &Path, logs: &Path, more: &[&str]) {
    let out = bin(dir)
        .args(["--profile", "aloha", "--gpus", "1xh100"])
        .args(more)
        .arg("--torchrun")
        .arg(vla_torchrun())
        .arg("--log-dir")
        .arg(logs)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn logs_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log") && !p.is_symlink())
        .collect()
}

#[test]
fn record_mode_makes_records_shareable_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    launch_aloha(dir.path(), &logs, &["--record-mode", "0640"]);
    let recs = records_in(&logs);
    assert_eq!(mode(&recs[0]), 0o640);
    assert_eq!(mode(&logs), 0o750);
    assert_eq!(mode(&logs_in(&logs)[0]), 0o640);
    for bad in ["0777", "abc", "0200", "99999"] {
        let out = bin(dir.path())
            .args([
                "plan",
                "--profile",
                "aloha",
                "--gpus",
                "1xh100",
                "--record-mode",
                bad,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--record-mode"), "{stderr}");
    }
}

fn vla_torchrun() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_torchrun")
}
