//! How a run ended, the launch errors, and the summary line.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// torchrun's exit code, or 128+N when a signal N ended it.
    pub exit_code: i32,
    /// The signal that ended torchrun, if one did.
    pub signal: Option<i32>,
    pub duration: Duration,
    pub log_path: PathBuf,
    /// The first stop signal the launcher received (SIGINT, SIGTERM, SIGHUP).
    pub interrupted_by: Option<i32>,
    /// The stop came from `SignalHandle::stop` (another node's failure), not a signal.
    pub stop_requested: bool,
    /// True when SIGKILL was needed: the grace period ran out, a second stop signal came, or a
    /// leftover process ignored SIGTERM.
    pub force_killed: bool,
    /// Why SIGKILL was sent, when it was (the first reason).
    pub kill_reason: Option<KillReason>,
    /// Processes of the run still alive after torchrun exited, which the launcher ended.
    pub leftover_processes: usize,
    /// Bytes not shown on the terminal because it did not keep up (all are in the log).
    pub terminal_dropped_bytes: u64,
    /// The first error writing the run log (the log is incomplete from there on).
    pub log_error: Option<String>,
    /// torchrun was never started: a stop signal (`interrupted_by`) came first.
    pub not_started: bool,
}

/// Why the launcher sent SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// torchrun had not stopped when the grace period ran out.
    GraceOver,
    /// A second stop signal (this one) asked to kill at once.
    SignalAgain(i32),
    /// Processes of the run outlived torchrun and ignored SIGTERM.
    Leftovers,
}

impl Outcome {
    /// A run stopped by `sig` before torchrun was started (the launcher held the signal while
    /// it started: `exit_code` is 128 + `sig`, as the launcher's own).
    pub fn not_started(sig: i32, log_path: &std::path::Path) -> Outcome {
        Outcome {
            exit_code: 128 + sig,
            signal: None,
            duration: Duration::ZERO,
            log_path: log_path.to_path_buf(),
            interrupted_by: Some(sig),
            stop_requested: false,
            force_killed: false,
            kill_reason: None,
            leftover_processes: 0,
            terminal_dropped_bytes: 0,
            log_error: None,
            not_started: true,
        }
    }

    /// The launcher's exit status per design.md: 0 success, 1 training failed, 128+N signal.
    pub fn process_exit_code(&self) -> i32 {
        match (self.interrupted_by, self.signal, self.exit_code) {
            (Some(sig), _, _) => 128 + sig,
            (None, Some(sig), _) => 128 + sig,
            (None, None, 0) => 0,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start {program:?}: {source}; check --torchrun PATH or the profile's torchrun")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("working directory {cwd:?} is not usable: {source}; set the profile's workdir")]
    Workdir {
        cwd: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the run log {path:?}: {source}; choose a writable run directory")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("waiting for torchrun failed: {0}")]
    Wait(#[source] io::Error),
}

/// One line for the end of a run: exit, duration, how it ended, where the log is.
pub fn summary_line(o: &Outcome) -> String {
    if let (true, Some(sig)) = (o.not_started, o.interrupted_by) {
        return format!(
            "torchrun not started: {} came first; log: {}",
            signal_name(sig),
            o.log_path.display()
        );
    }
    let how = match o.signal {
        Some(sig) => format!("torchrun killed by {}", signal_name(sig)),
        None => format!("torchrun exited with code {}", o.exit_code),
    };
    let mut extra = Vec::new();
    if let Some(sig) = o.interrupted_by {
        extra.push(format!("stopped by {}", signal_name(sig)));
    }
    match (o.force_killed, o.kill_reason) {
        (false, _) => {}
        (true, Some(KillReason::SignalAgain(sig))) => {
            extra.push(format!("{} again: SIGKILL sent", signal_name(sig)));
        }
        (true, Some(KillReason::Leftovers)) => {
            extra.push("leftover processes ignored SIGTERM: SIGKILL sent".to_string());
        }
        (true, Some(KillReason::GraceOver) | None) => {
            extra.push("grace period over, SIGKILL sent".to_string());
        }
    }
    if o.leftover_processes > 0 {
        extra.push(format!(
            "{} leftover process(es) ended",
            o.leftover_processes
        ));
    }
    if let Some(e) = &o.log_error {
        extra.push(format!("the log is incomplete: {e}"));
    }
    if o.terminal_dropped_bytes > 0 {
        extra.push(format!(
            "{} bytes not shown on the terminal",
            o.terminal_dropped_bytes
        ));
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join("; "))
    };
    format!(
        "{how} after {}{extra}; log: {}",
        fmt_duration(o.duration),
        o.log_path.display()
    )
}

/// `SIGTERM` for 15; `signal N` for a number that names no signal.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// "3.2s", "4m05s", "2h03m09s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60),
    }
}
