//! Running as a Slurm job step: how long Slurm waits between its SIGTERM and its SIGKILL
//! (KillWait), the grace period that fits inside it (docs/cluster.md, contract 3), and stop
//! signals held while the launcher starts.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Whether the stop signals are held (see [`hold_stop_signals`]).
static HELD: AtomicBool = AtomicBool::new(false);
/// The first stop signal that came while they were held (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn latch(sig: libc::c_int) {
    // Async-signal-safe: one atomic operation.
    let _ = CAUGHT.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Under Slurm, from the start of a launch until the supervisor installs its handlers: a stop
/// signal is noted instead of killing the launcher outright. srun SIGTERMs every node as soon as
/// one exits non-zero (`--kill-on-bad-exit`): a node still planning died of it with its record
/// begun and no outcome, and the job read 143:0 instead of the failing node's code (issue 25
/// item 6). Children started meanwhile (`scontrol`) get the default action back at exec.
pub(super) fn hold_stop_signals() {
    for sig in STOP_SIGNALS {
        // SAFETY: a zeroed sigaction with a handler that only does an atomic store.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = latch as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    HELD.store(true, Ordering::SeqCst);
}

/// Ends the hold (once; later calls return `None` and touch nothing): the default action again,
/// then the first stop signal that came while held. Nothing is lost between the two: one that
/// comes after the reset kills the launcher as it would have without the hold.
pub(super) fn release_stop_signals() -> Option<i32> {
    if !HELD.swap(false, Ordering::SeqCst) {
        return None;
    }
    for sig in STOP_SIGNALS {
        // SAFETY: restoring the default disposition.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    match CAUGHT.swap(0, Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Slurm's default KillWait, assumed when `scontrol` does not say.
pub(super) const DEFAULT_KILL_WAIT: Duration = Duration::from_secs(30);
/// Time kept free at the end of KillWait for SIGKILL to the run, the log summary and the record.
pub(super) const MARGIN: Duration = Duration::from_secs(5);
/// How long `scontrol show config` may take before it is given up.
const SCONTROL_TIMEOUT: Duration = Duration::from_secs(3);

/// KillWait from `scontrol show config` output (`KillWait = 30 sec`).
pub(super) fn parse_kill_wait(config: &str) -> Option<Duration> {
    config.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        if key.trim() != "KillWait" {
            return None;
        }
        let secs: u64 = value.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_secs(secs))
    })
}

/// The grace that ends `MARGIN` before Slurm's SIGKILL: `asked`, or less (at least 1 s).
pub(super) fn grace_within(asked: Duration, kill_wait: Duration) -> Duration {
    asked.min(kill_wait.saturating_sub(MARGIN).max(Duration::from_secs(1)))
}

/// KillWait and where it came from: read from `scontrol show config` (bounded by a short
/// timeout), or Slurm's default assumed, with why.
pub(super) fn kill_wait() -> (Duration, String) {
    match read_scontrol_config() {
        Ok(text) => match parse_kill_wait(&text) {
            Some(d) => (d, "from `scontrol show config`".into()),
            None => (
                DEFAULT_KILL_WAIT,
                "assumed (no KillWait in `scontrol show config`)".into(),
            ),
        },
        Err(e) => (
            DEFAULT_KILL_WAIT,
            format!("assumed (`scontrol show config`: {e})"),
        ),
    }
}

fn read_scontrol_config() -> Result<String, String> {
    let mut child = Command::new("scontrol")
        .args(["show", "config"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + SCONTROL_TIMEOUT;
    let mut out = child.stdout.take().expect("piped");
    // The reader keeps the pipe drained; the output is a few KiB.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.by_ref().take(1 << 20).read_to_string(&mut s);
        s
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                return reader.join().map_err(|_| "reader failed".to_string());
            }
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {SCONTROL_TIMEOUT:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_wait_is_read_from_scontrol_show_config() {
        let text = "Configuration data as of 2026-11-28T06:00:00\nJobRequeue              = 1\nKillWait                = 45 sec\nKillOnBadExit           = 0\n";
        assert_eq!(parse_kill_wait(text), Some(Duration::from_secs(45)));
        assert_eq!(parse_kill_wait("KillOnBadExit = 0\n"), None);
        assert_eq!(parse_kill_wait("KillWait = soon\n"), None);
    }

    #[test]
    fn a_stop_signal_while_held_is_kept_for_the_release() {
        // SIGHUP, so that a failure here cannot take the test process down with SIGTERM's
        // meaning; the hold covers all three alike.
        assert_eq!(release_stop_signals(), None, "nothing held yet");
        hold_stop_signals();
        // SAFETY: raising a signal at this process, whose handler is `latch`.
        unsafe {
            libc::raise(libc::SIGHUP);
        }
        assert_eq!(release_stop_signals(), Some(libc::SIGHUP));
        assert_eq!(release_stop_signals(), None, "released once");
    }

    #[test]
    fn the_grace_ends_before_slurms_sigkill() {
        let s = Duration::from_secs;
        assert_eq!(grace_within(s(40), s(30)), s(25));
        assert_eq!(grace_within(s(10), s(30)), s(10));
        assert_eq!(grace_within(s(40), s(3)), s(1));
        assert_eq!(grace_within(s(40), s(120)), s(40));
    }
}
