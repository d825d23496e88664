//! Issue 26 item 11: `runs` and `logs` as a new user meets them: a live run shows as running,
//! both agree on "no runs", and `logs` shows a tqdm bar's last state (with `--raw` for every
//! update) and `--tail N`.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use crate::common::{Vla, WithoutAmbient};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Vla {
    let mut c = Vla::new();
    c.without_ambient_topology()
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root().join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("WANDB_MODE", "offline")
        .current_dir(root());
    c
}

fn text(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn launch(dir: &Path, env: &[(&str, &str)]) -> Child {
    bin()
        .args(["--profile", "aloha", "--gpus", "1xh100", "--log-dir"])
        .arg(dir.join("logs"))
        .arg("--torchrun")
        .arg(root().join("tests/fixtures/fake_torchrun"))
        .env("VLA_RUN_ROOT", dir)
        .envs(env.iter().copied())
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The run's record once it is written (it is claimed empty first), and its log once the
/// launcher has started torchrun.
fn wait_started(logs: &Path, child: &mut Child) -> PathBuf {
    loop {
        let record = std::fs::read_dir(logs).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p.is_symlink()
                    && std::fs::read(p).is_ok_and(|b| {
                        serde_json::from_slice::<serde_json::Value>(&b)
                            .is_ok_and(|v| v["started_unix"].is_u64())
                    })
            })
        });
        let log_ready = std::fs::read_dir(logs).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("run-")
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("torchrun pid"))
            })
        });
        if let (Some(r), true) = (record, log_ready) {
            return r;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the launch ended first"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_live_run_is_listed_as_running() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut child = launch(dir.path(), &[("FAKE_SLEEP", "120")]);
    wait_started(&logs, &mut child);
    let o = bin()
        .args(["runs", "--log-dir"])
        .arg(&logs)
        .output()
        .unwrap();
    let (code, out, err) = text(&o);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("running"), "{out}");
    assert!(!out.contains("no outcome yet"), "{out}");
    // Stopped, it shows how it ended.
    let o = bin()
        .args(["runs", "--log-dir"])
        .arg(&logs)
        .output()
        .unwrap();
    let (_, out, _) = text(&o);
    assert!(out.contains("interrupted (signal 15)"), "{out}");
}

#[test]
fn runs_and_logs_agree_on_no_runs() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none");
    let runs = text(
        &bin()
            .args(["runs", "--log-dir"])
            .arg(&none)
            .output()
            .unwrap(),
    );
    let logs = text(
        &bin()
            .args(["logs", "--log-dir"])
            .arg(&none)
            .output()
            .unwrap(),
    );
    assert!(runs.2.contains("no runs found"), "{}", runs.2);
    assert!(logs.2.contains("no runs found"), "{}", logs.2);
    assert_eq!(runs.0, logs.0, "runs: {}\nlogs: {}", runs.2, logs.2);
}

/// `logs` showed each of tqdm's `\r` updates as a line of its own: it shows a bar's last state
/// (`--raw` gives the log as it is), and `--tail N` the last N lines.
#[test]
fn logs_show_a_bars_last_state_and_tail_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut child = launch(
        dir.path(),
        &[("FAKE_TQDM", "5"), ("FAKE_TQDM_DELAY", "0.01")],
    );
    assert!(child.wait().unwrap().success());
    let show = |extra: &[&str]| {
        let o = bin()
            .args(["logs", "--log-dir"])
            .arg(&logs)
            .args(extra)
            .output()
            .unwrap();
        let (code, out, err) = text(&o);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let out = show(&[]);
    let bars: Vec<&str> = out.lines().filter(|l| l.contains("it/s]")).collect();
    assert_eq!(bars.len(), 1, "one line for the bar:\n{out}");
    assert!(bars[0].contains("5/5"), "its last state: {out}");
    assert!(!out.contains('\r'), "{out:?}");
    let raw = show(&["--raw"]);
    assert!(raw.matches("it/s]").count() >= 5, "{raw}");
    let tail = show(&["--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("torchrun exited with code 0"), "{tail}");
    assert!(out.ends_with(&tail), "the last lines of the whole:\n{tail}");
}
