//! Issue 14 item 1 / issue 13 item 5: runs never share a log or a record. Launches (and replays)
//! in one directory in the same second each get their own files, created exclusively, and
//! `latest.log` / `latest.json` point at the newest.

use crate::common::WithoutAmbient;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn launcher(run_root: &Path, logs: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_vla-launch"));
    c.args(["--profile", "aloha", "--gpus", "1xh100", "--grace", "5"])
        .arg("--torchrun")
        .arg(crate::common::fake_torchrun())
        .arg("--log-dir")
        .arg(logs)
        .without_ambient_topology()
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", run_root)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=info")
        .env("FAKE_EXIT", "0")
        .current_dir(root);
    c
}

fn files(dir: &Path, prefix: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(ext) && !p.is_symlink()
        })
        .collect();
    v.sort();
    v
}

fn both(mut a: Command, mut b: Command) -> (Output, Output) {
    let ca = a.spawn().unwrap();
    let cb = b.spawn().unwrap();
    (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    )
}

fn started(record: &Path) -> u64 {
    let v: Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    v["started_unix"].as_u64().unwrap()
}

#[test]
fn two_launches_in_one_second_keep_two_logs_and_two_records() {
    // Two launches started together almost always share a second; try again when they did not.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let (a, b) = both(launcher(dir.path(), &logs), launcher(dir.path(), &logs));
        for o in [&a, &b] {
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let records = files(&logs, "plan-", ".json");
        let runs = files(&logs, "run-", ".log");
        if records.len() == 2 && started(&records[0]) != started(&records[1]) {
            continue;
        }
        assert_eq!(records.len(), 2, "two records: {records:?}");
        assert_eq!(runs.len(), 2, "two logs: {runs:?}");
        for r in &records {
            let v: Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
            assert_eq!(v["outcome"]["exit_code"], 0, "{r:?}");
        }
        let logged: Vec<String> = records
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
                v["outcome"]["log"].as_str().unwrap().to_string()
            })
            .collect();
        assert_ne!(logged[0], logged[1], "each record names its own log");
        // Readable names: a local date and time, not unix seconds.
        let name = runs[0].file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.len() > 19 && name.as_bytes()[12] == b'-',
            "run-YYYYmmdd-HHMMSS...: {name}"
        );
        let latest = std::fs::read_link(logs.join("latest.json")).expect("latest.json");
        assert!(records.iter().any(|r| r.ends_with(&latest)), "{latest:?}");
        assert!(logs.join("latest.log").exists());
        return;
    }
    panic!("no two launches started in the same second in 5 tries");
}

#[test]
fn two_replays_in_one_second_keep_two_logs() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let out = launcher(dir.path(), &logs).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = files(&logs, "plan-", ".json").remove(0);
    // `replay` takes no launch flags: the same environment, the record as its argument.
    let replay = || {
        let env = launcher(dir.path(), &logs);
        let mut r = Command::new(env!("CARGO_BIN_EXE_vla-launch"));
        // The record's program is the fake torchrun: replay runs it only when told so.
        r.arg("replay")
            .arg(&record)
            .arg("--torchrun")
            .arg(crate::common::fake_torchrun());
        for (k, v) in env.get_envs() {
            match v {
                Some(v) => r.env(k, v),
                None => r.env_remove(k),
            };
        }
        r.current_dir(env.get_current_dir().unwrap());
        r
    };
    for _ in 0..5 {
        for f in files(&logs, "replay-", ".log") {
            std::fs::remove_file(f).unwrap();
        }
        let t0 = std::time::SystemTime::now();
        let (a, b) = both(replay(), replay());
        let secs = t0.elapsed().unwrap().as_secs_f64();
        for o in [&a, &b] {
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if secs > 0.9 {
            continue;
        }
        let replays = files(&logs, "replay-", ".log");
        assert_eq!(replays.len(), 2, "two replay logs: {replays:?}");
        // As private as the record they replay.
        use std::os::unix::fs::PermissionsExt;
        for f in replays.iter().chain([&record]) {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        return;
    }
    panic!("no two replays ran within one second in 5 tries");
}
