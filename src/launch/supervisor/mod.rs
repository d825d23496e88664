//! Runs torchrun and stays in charge of it: relays its output, forwards signals, and makes sure
//! nothing of the run outlives it.
//!
//! Signal semantics (why it is done this way):
//! - torchrun runs in its own process group, so a terminal's Ctrl-C reaches only the launcher;
//!   the launcher forwards the same signal to torchrun's pid alone. torchrun treats SIGINT,
//!   SIGTERM and SIGHUP alike: it sends that signal to its workers, waits up to 30 s, then kills
//!   them. Sending it to the whole group as well would make every worker receive it twice.
//! - Our grace period (default 40 s) is longer than torchrun's own 30 s, so torchrun normally
//!   finishes its shutdown; after it, SIGKILL goes to the group and to every member of the run.
//!   A second stop signal kills at once.
//! - SIGUSR1 (Slurm's "preemption soon" warning) goes to the workers, which may checkpoint on it;
//!   torchrun gets it only if it declares it handles it (`TORCHELASTIC_SIGNALS_TO_HANDLE`),
//!   since its default action would terminate torchrun without stopping the workers.
//! - torchrun gets PR_SET_PDEATHSIG=SIGTERM: if the launcher is killed outright, torchrun still
//!   shuts its workers down. The kernel sends it when the *thread* that spawned torchrun exits,
//!   so call `run` from a thread that lives as long as the run (`run_blocking` does).
//! - The launcher becomes a child subreaper, so workers started in new sessions are re-parented
//!   to it and can be found, killed and reaped (`process_tree`).
//!
//! Output: both pipes are read concurrently as bytes; the reader writes each chunk to the log
//! (every byte, timestamped per line there) and hands it to a terminal thread through a bounded queue. When the
//! terminal does not keep up (paused, or piped into a stalled reader) chunks are dropped from the
//! terminal only, so a full pipe never blocks training.

use std::ffi::OsString;
use std::io::{self};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::launch::command::{LaunchCommand, display};
use crate::launch::log::{LogWriter, Stream};
use crate::launch::process_tree::{self, MARKER_VAR};
use crate::launch::watchdog::Watchdog;

mod cleanup;
mod outcome;
mod relay;
mod signals;

use cleanup::{after, end_leftovers, kill_run};
pub use outcome::{KillReason, LaunchError, Outcome, fmt_duration, summary_line};
pub use relay::Sink;
use relay::{PIPE_SIZE, join_within, relay, terminal_writer};
use signals::Request;
pub use signals::{SignalHandle, install_signal_forwarding};

/// Longer than torchrun's own 30 s worker shutdown, so it can finish cleanly.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// The longest `--grace` accepted (a week); longer ones are refused where they are parsed.
pub const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;
/// How long to wait for output pipes that leftover grandchildren keep open.
pub const DEFAULT_LEAK_TIMEOUT: Duration = Duration::from_secs(1);
/// After torchrun exits on its own, leftover processes get SIGTERM and this long before SIGKILL.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(2);

pub struct SuperviseOptions {
    pub log_path: PathBuf,
    pub grace: Duration,
    pub leak_timeout: Duration,
    pub orphan_grace: Duration,
    pub stdout: Sink,
    pub stderr: Sink,
    /// Signals sent here are handled like the launcher's own.
    pub signals: SignalHandle,
    /// Also install real signal handlers (`install_signal_forwarding`) for the run.
    pub forward_process_signals: bool,
    /// The program re-executed as the run's watchdog (`watchdog::Watchdog`), which ends the
    /// run if the launcher is killed outright; `None` for no watchdog.
    pub watchdog: Option<PathBuf>,
    /// Whether a SIGTERM while the run is already stopping kills it at once. `false` under
    /// Slurm, which sends SIGTERM to every process of the step and srun forwards it as well:
    /// the second one is not a user asking twice. A second SIGINT/SIGHUP always kills.
    pub repeated_sigterm_escalates: bool,
    /// Called with torchrun's pid right after spawn (e.g. to start a VRAM monitor).
    pub on_spawn: Option<Box<dyn Fn(u32) + Send + Sync>>,
    /// Reads the script's tqdm progress from its output (and may show a status line).
    pub progress: Option<Arc<super::status::Tracker>>,
}

impl SuperviseOptions {
    /// Terminal relay, real signal handling, default timeouts.
    pub fn new(log_path: impl Into<PathBuf>) -> Self {
        SuperviseOptions {
            log_path: log_path.into(),
            grace: DEFAULT_GRACE,
            leak_timeout: DEFAULT_LEAK_TIMEOUT,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            stdout: Sink::Stdout,
            stderr: Sink::Stderr,
            signals: SignalHandle::default(),
            forward_process_signals: true,
            repeated_sigterm_escalates: true,
            watchdog: super::watchdog::default_program(),
            on_spawn: None,
            progress: None,
        }
    }
}

/// `run` on a current-thread runtime owned by the calling thread (which must outlive the run,
/// see PR_SET_PDEATHSIG above).
pub fn run_blocking(cmd: &LaunchCommand, opts: &SuperviseOptions) -> Result<Outcome, LaunchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LaunchError::Wait)?;
    rt.block_on(run(cmd, opts))
}

/// Spawns torchrun per `cmd` and supervises it to the end (see the module comment).
pub async fn run(cmd: &LaunchCommand, opts: &SuperviseOptions) -> Result<Outcome, LaunchError> {
    let start = Instant::now();
    // Subscribe and install handlers before spawning, so an early Ctrl-C is not lost.
    let mut signals = opts.signals.0.subscribe();
    if opts.forward_process_signals {
        install_signal_forwarding(&opts.signals).map_err(LaunchError::Signals)?;
    }
    if let Err(e) = process_tree::become_child_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}): workers in new sessions are found by marker only"
        );
    }
    if let Err(source) = std::fs::metadata(&cmd.cwd) {
        return Err(LaunchError::Workdir {
            cwd: cmd.cwd.clone(),
            source,
        });
    }
    let log_err = |source| LaunchError::Log {
        path: opts.log_path.clone(),
        source,
    };
    let log = LogWriter::create(&opts.log_path).map_err(log_err)?;
    let notes = log.sender();
    notes.note(format!("launch: {}", display(cmd)));

    let marker = run_marker();
    // Started before torchrun, so no moment of the run is without it.
    let watchdog = opts.watchdog.as_deref().and_then(|program| {
        Watchdog::start(program, &marker, opts.grace, &opts.log_path)
            .map_err(|e| {
                tracing::warn!(
                    "no watchdog ({e}): if the launcher is killed outright, workers in new sessions may survive it"
                );
            })
            .ok()
    });
    let mut child = spawn(cmd, &marker).map_err(|source| LaunchError::Spawn {
        program: cmd.program.clone(),
        source,
    })?;
    let pid = child.id().map_or(0, |p| p as i32);
    tracing::debug!(pid, "torchrun started");
    notes.note(format!("torchrun pid {pid}"));
    if let Some(cb) = &opts.on_spawn {
        cb(pid as u32);
    }

    let dropped = Arc::new(AtomicU64::new(0));
    let (out_tx, out_thread) =
        terminal_writer(&opts.stdout, opts.progress.clone()).map_err(log_err)?;
    let (err_tx, err_thread) =
        terminal_writer(&opts.stderr, opts.progress.clone()).map_err(log_err)?;
    let mut readers = tokio::task::JoinSet::new();
    // A larger pipe lets a burst of output sit in the kernel instead of blocking the writer,
    // and lets each read move more bytes (best effort: the kernel may refuse).
    for fd in [
        child.stdout.as_ref().map(|p| p.as_raw_fd()),
        child.stderr.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: fcntl on a pipe fd we own; no memory is passed.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    if let Some(pipe) = child.stdout.take() {
        readers.spawn(relay(
            pipe,
            Stream::Out,
            log.sender(),
            out_tx,
            dropped.clone(),
            opts.progress.clone(),
        ));
    }
    if let Some(pipe) = child.stderr.take() {
        readers.spawn(relay(
            pipe,
            Stream::Err,
            log.sender(),
            err_tx,
            dropped.clone(),
            opts.progress.clone(),
        ));
    }

    let usr1_to_torchrun = declares_usr1(cmd);
    let mut interrupted_by: Option<i32> = None;
    let mut force_killed = false;
    let mut kill_reason: Option<KillReason> = None;
    let mut stop_requested = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        let grace_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => break status.map_err(LaunchError::Wait)?,
            Ok(request) = signals.recv() => match match request {
                Request::Stop if interrupted_by.is_none() => {
                    stop_requested = true;
                    Some(Signal::SIGTERM)
                }
                Request::Signal(sig) => Some(sig),
                Request::Stop => None,
            } {
                None => {}
                Some(Signal::SIGUSR1) => {
                    let workers: Vec<i32> = process_tree::members(Some(pid), &marker)
                        .iter()
                        .filter(|p| !p.zombie && (p.pid != pid || usr1_to_torchrun))
                        .map(|p| p.pid)
                        .collect();
                    let n = process_tree::signal_all(workers, Signal::SIGUSR1);
                    notes.note(format!("SIGUSR1 forwarded to {n} process(es)"));
                }
                Some(sig) if interrupted_by.is_none() => {
                    interrupted_by = Some(sig as i32);
                    process_tree::signal_all([pid], sig);
                    deadline = Some(after(tokio::time::Instant::now(), opts.grace));
                    notes.note(format!("{sig} received: forwarded to torchrun, SIGKILL in {:?}", opts.grace));
                    // Under Slurm a second SIGTERM does not escalate: do not promise it does.
                    let again = if sig == Signal::SIGTERM && !opts.repeated_sigterm_escalates {
                        "a second SIGTERM does not cut it short"
                    } else {
                        "again to kill at once"
                    };
                    tracing::warn!("{sig}: stopping torchrun ({again}; SIGKILL in {:?})", opts.grace);
                }
                Some(Signal::SIGTERM) if !opts.repeated_sigterm_escalates => {
                    notes.note("SIGTERM received again (Slurm signals every process of the step, and srun forwards it too): the grace period goes on");
                }
                Some(sig) => {
                    notes.note(format!("{sig} received again: killing the run now"));
                    kill_run(Some(pid), &marker);
                    force_killed = true;
                    kill_reason.get_or_insert(KillReason::SignalAgain(sig as i32));
                    deadline = None;
                }
            },
            () = grace_over => {
                notes.note("grace period over: SIGKILL to the run");
                tracing::warn!("torchrun did not stop within {:?}: killing the run", opts.grace);
                kill_run(Some(pid), &marker);
                force_killed = true;
                kill_reason.get_or_insert(KillReason::GraceOver);
                deadline = None;
            }
        }
    };

    // New-session grandchildren outlive torchrun; end them. After an interrupt they get only
    // what is left of the grace period.
    let orphan_grace = match deadline {
        Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
        None if force_killed => Duration::ZERO,
        None => opts.orphan_grace,
    };
    let (leftover_processes, needed_kill) = end_leftovers(&marker, orphan_grace, &notes).await;
    force_killed |= needed_kill;
    if needed_kill {
        kill_reason.get_or_insert(KillReason::Leftovers);
    }

    // Pipes held open by processes we could not find must not keep us waiting forever.
    let drained = tokio::time::timeout(opts.leak_timeout, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
        notes.note("output pipes still open after torchrun exited: stopped reading them");
    }
    drop(readers);
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (1, None),
    };
    let outcome = Outcome {
        exit_code,
        signal,
        duration: start.elapsed(),
        log_path: opts.log_path.clone(),
        interrupted_by,
        stop_requested,
        force_killed,
        kill_reason,
        leftover_processes,
        terminal_dropped_bytes: dropped.load(Ordering::Relaxed),
        log_error: None,
    };
    notes.note(summary_line(&outcome));
    drop(notes);
    // Terminal threads may sit on a stalled terminal: give them the leak timeout, then leave them.
    join_within([out_thread, err_thread], opts.leak_timeout).await;
    // A log that could not be written (a full disk) was warned about when it happened; it never
    // changes how the training ended.
    let mut outcome = outcome;
    outcome.log_error = log.finish().err().map(|e| e.to_string());
    if let Some(w) = watchdog {
        w.finish(Duration::from_secs(1));
    }
    Ok(outcome)
}

fn run_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn spawn(cmd: &LaunchCommand, marker: &str) -> io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        // The peer watch's job secret is the launcher's alone (issue 25 item 9).
        .env_remove(crate::cluster::peers::SECRET_ENV)
        .env(MARKER_VAR, marker)
        .current_dir(&cmd.cwd)
        // Own group: the terminal's signals come through us. No stdin: a background group
        // reading the terminal would be stopped by SIGTTIN.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe syscalls (prctl, getppid) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("launcher exited during spawn"));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Whether torchrun will handle SIGUSR1 itself (torch >= 2.6 reads this variable).
fn declares_usr1(cmd: &LaunchCommand) -> bool {
    const VAR: &str = "TORCHELASTIC_SIGNALS_TO_HANDLE";
    let value = cmd
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == VAR)
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os(VAR));
    value.is_some_and(|v| {
        v.to_string_lossy()
            .split(',')
            .any(|s| s.trim() == "SIGUSR1")
    })
}
