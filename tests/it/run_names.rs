//! Issue 14 item 1 / issue 13 item 5: runs never share a log or a record. Launches (and replays)
//! in one directory in the same second each get their own files, created exclusively, and
//! `latest.log` / `latest.json` point at the newest.

use crate::common::{Vla, WithoutAmbient};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

fn launcher(run_root: &Path, logs: &Path) -> Vla {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Vla::new();
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
        // File names carry the local time: UTC here, so `take_names` knows them.
        .env("TZ", "UTC0")
        .current_dir(root);
    c
}

/// `YYYYmmdd-HHMMSS` in UTC (src/app/run_files.rs names files by the local time; the launches
/// here run with TZ=UTC0).
fn utc_stamp(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .expect("a time of this century")
        .strftime("%Y%m%d-%H%M%S")
        .to_string()
}

/// How many seconds ahead `take_names` claims: far more than two launches take on a loaded machine.
const TAKEN_SECONDS: u64 = 600;

/// Takes the first name of every second from just before now to `TAKEN_SECONDS` ahead
/// (`<kind>-<stamp>.log`), as another run of that second would have: every run started in that
/// window must then move on to another name, whatever second it lands in. This exercises the
/// collision of runs in one second on every try, instead of hoping two processes start within one
/// second of each other (they often did not on a busy machine: issue 26 item 2).
fn take_names(dir: &Path, kind: &str) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now - 2..now + TAKEN_SECONDS)
        .map(|t| {
            let p = dir.join(format!("{kind}-{}.log", utc_stamp(t)));
            std::fs::write(&p, "taken").unwrap();
            p
        })
        .collect()
}

/// Every taken name still holds what it held: no run wrote into another's file.
fn assert_untouched(taken: &[PathBuf]) {
    for p in taken {
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "taken",
            "{}",
            p.display()
        );
    }
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

fn both(mut a: Vla, mut b: Vla) -> (Output, Output) {
    let ca = a.command().spawn().unwrap();
    let cb = b.command().spawn().unwrap();
    (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    )
}

#[test]
fn utc_stamps() {
    assert_eq!(utc_stamp(0), "19700101-000000");
    assert_eq!(utc_stamp(951_782_400 + 3_723), "20000229-010203");
}

#[test]
fn two_launches_in_one_second_keep_two_logs_and_two_records() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let taken = take_names(&logs, "run");
    let (a, b) = both(launcher(dir.path(), &logs), launcher(dir.path(), &logs));
    for o in [&a, &b] {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_untouched(&taken);
    let records = files(&logs, "plan-", ".json");
    let runs: Vec<PathBuf> = files(&logs, "run-", ".log")
        .into_iter()
        .filter(|p| !taken.contains(p))
        .collect();
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
    for l in &logged {
        assert!(runs.iter().any(|r| r == Path::new(l)), "{l} among {runs:?}");
    }
    // Readable names: a local date and time, not unix seconds, and a suffix past the taken name.
    let name = runs[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.len() > 19 && name.as_bytes()[12] == b'-',
        "run-YYYYmmdd-HHMMSS...: {name}"
    );
    assert!(
        name.ends_with("-2.log") || name.ends_with("-3.log"),
        "{name}"
    );
    let latest = std::fs::read_link(logs.join("latest.json")).expect("latest.json");
    assert!(records.iter().any(|r| r.ends_with(&latest)), "{latest:?}");
    assert!(logs.join("latest.log").exists());
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
        let mut env = launcher(dir.path(), &logs);
        let env = env.command();
        let mut r = Vla::new();
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
    let taken = take_names(&logs, "replay");
    let (a, b) = both(replay(), replay());
    for o in [&a, &b] {
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_untouched(&taken);
    let replays: Vec<PathBuf> = files(&logs, "replay-", ".log")
        .into_iter()
        .filter(|p| !taken.contains(p))
        .collect();
    assert_eq!(replays.len(), 2, "two replay logs: {replays:?}");
    // As private as the record they replay.
    use std::os::unix::fs::PermissionsExt;
    for f in replays.iter().chain([&record]) {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}
