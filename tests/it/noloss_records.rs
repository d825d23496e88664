//! Issue 14 item 6, the record half: secrets masked by name and by value in everything the
//! launcher writes (the run record, `plan --json`, `plan -o`), records 0600 in 0700 directories
//! unless `--record-mode` says otherwise.

use crate::common::{Vla, WithoutAmbient};
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

fn bin(dir: &Path) -> Vla {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkout = checkout_with_secret_flags(dir);
    let mut c = Vla::new();
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
fn secret_args(c: &mut Vla) -> &mut Vla {
    c.args(["--profile", "aloha", "--gpus", "1xh100"])
        .arg("--set")
        .arg("env.MY_HF_AUTH=${HF_TOKEN}")
        .arg("--set")
        .arg(format!("train.hf_token={}", SECRETS[1]))
}

fn secret_extra(c: &mut Vla) -> &mut Vla {
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

/// A small tmpfs at `dir`, unmounted when dropped; `None` (and why, printed) where mounting is
/// refused (not root, no CAP_SYS_ADMIN, a container without mount rights).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            Ok(o) => {
                println!(
                    "skipped: cannot mount a small tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The real binary launching the fake torchrun into `logs`.
fn fake_launch(dir: &Path, logs: &Path, fake: &[(&str, &str)]) -> Vla {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Vla::new();
    c.without_ambient_topology()
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", dir.join("cache"))
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", dir)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root)
        .args(["--profile", "aloha", "--gpus", "1xh100", "--grace", "2"])
        .arg("--torchrun")
        .arg(root.join("tests/fixtures/fake_torchrun"))
        .arg("--log-dir")
        .arg(logs)
        .envs(fake.iter().copied());
    c
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Issue 25 item 5: the record used to be rewritten in place with its outcome, and a disk with
/// room for the first version but not the longer second left it cut off (3 of 5 trials). Here
/// the disk fills up while the run runs; the record's length varies by a padding variable, so
/// that in some trials the outcome needs one more block than the first version had, and the
/// disk keeps 0 to 16 KiB free. In every trial the record is valid JSON: the completed one, or
/// the one written at the start with a warning saying so.
#[test]
fn a_full_disk_never_leaves_a_cut_off_record() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let Some(_disk) = SmallDisk::mount(&logs, "256k") else {
        return;
    };
    let (mut kept, mut trials) = (0, 0);
    for leave in [0, 16384] {
        for pad in (0..4096).step_by(256) {
            trials += 1;
            let (complete, err) = disk_full_trial(dir.path(), &logs, leave, pad);
            kept += usize::from(complete);
            assert!(
                complete || err.contains("the record written at the start is still there"),
                "leave {leave} pad {pad}: {err}"
            );
        }
    }
    println!("{kept} of {trials} trials had room for the outcome; every record was valid JSON");
}

/// One launch on a disk that fills up under it: whether the record got its outcome, and stderr.
fn disk_full_trial(dir: &Path, logs: &Path, leave: usize, pad: usize) -> (bool, String) {
    for f in names_in(logs) {
        std::fs::remove_file(logs.join(f)).unwrap();
    }
    let filler = logs.join("filler");
    let out = fake_launch(
        dir,
        logs,
        &[
            ("FAKE_FILL", filler.to_str().unwrap()),
            ("FAKE_FILL_LEAVE", &leave.to_string()),
        ],
    )
    .arg("--set")
    .arg(format!("env.VLA_TEST_PAD={}", "x".repeat(pad + 1)))
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "leave {leave} pad {pad}: {err}");
    let names = names_in(logs);
    let records: Vec<&String> = names.iter().filter(|n| n.starts_with("plan-")).collect();
    assert_eq!(records.len(), 1, "{names:?}");
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
    let text = std::fs::read_to_string(logs.join(records[0])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "leave {leave} pad {pad}: cut-off record ({e}), {} bytes",
            text.len()
        )
    });
    if !v["outcome"].is_null() {
        assert_eq!(v["outcome"]["exit_code"], 0);
    }
    (!v["outcome"].is_null(), err)
}

/// Issue 25 item 5: a launch refused because the log directory is full left 0-byte files and
/// pointed `latest.*` at them.
#[test]
fn a_refused_launch_leaves_no_empty_files_and_latest_alone() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let Some(_disk) = SmallDisk::mount(&logs, "64k") else {
        return;
    };
    // Fill it to the last byte.
    let mut f = std::fs::File::create(logs.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let out = fake_launch(dir.path(), &logs, &[("FAKE_RECORD", "/dev/null")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("--log-dir"), "{err}");
    assert_eq!(names_in(&logs), ["filler"], "{err}");
}

/// Issue 25 item 6, the record part: node 0 whose rendezvous port is taken exits 4 before
/// torchrun starts; its record said "no outcome yet" forever and its log was empty.
#[test]
fn a_node_refused_at_start_leaves_a_record_with_an_outcome_and_says_why_in_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = fake_launch(dir.path(), &logs, &[])
        .env("SLURM_JOB_ID", "8801")
        .env("SLURM_NNODES", "2")
        .env("SLURM_NODEID", "0")
        .env("SLURM_JOB_NODELIST", "127.0.0.1,localhost")
        .env_remove("VLA_LAUNCH_JOB_SECRET")
        .args(["--rdzv-port", &port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let names = names_in(&logs);
    let record = names
        .iter()
        .find(|n| n.starts_with("plan-"))
        .expect("a record");
    let log = names.iter().find(|n| n.starts_with("run-")).expect("a log");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(logs.join(record)).unwrap()).unwrap();
    assert_eq!(v["outcome"]["exit_code"], 4, "{v}");
    assert_eq!(v["outcome"]["diagnosis"]["kind"], "LaunchRefused", "{v}");
    let log_text = std::fs::read_to_string(logs.join(log)).unwrap();
    assert!(log_text.contains("launch refused (exit 4)"), "{log_text}");
    assert!(log_text.contains("--rdzv-port"), "{log_text}");
}
