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
//!   A second stop signal kills at once, except a repeated SIGTERM under Slurm (Slurm signals
//!   every process of the step and srun forwards it too). What each signal means is decided by
//!   a pure state machine (`policy.rs`, table-tested); `run` only carries out its actions.
//! - SIGUSR1 (Slurm's "preemption soon" warning) goes to the workers that handle it (`SigCgt` in
//!   /proc), which may checkpoint on it; the others (upstream finetune.py) would die of it, so they
//!   do not get it. torchrun gets it only if it declares it handles it
//!   (`TORCHELASTIC_SIGNALS_TO_HANDLE`), since its default action would terminate torchrun without
//!   stopping the workers.
//! - torchrun gets PR_SET_PDEATHSIG=SIGTERM: if the launcher is killed outright, torchrun still
//!   shuts its workers down. The kernel sends it when the *thread* that spawned torchrun exits,
//!   so call `run` from a thread that lives as long as the run (`run_blocking` does).
//! - The launcher becomes a child subreaper, so workers started in new sessions are re-parented
//!   to it and can be found, killed and reaped (`process_tree`).
//!
//! Output (`output.rs`, `relay.rs`): both pipes are read concurrently as bytes, one read one
//! chunk; the reader itself writes the chunk's log records (every byte, timestamped per line
//! there) and, where the launcher's stdout/stderr is a regular file, that copy too. A terminal,
//! pipe or FIFO gets the chunk through a bounded queue to a thread of its own: when it does not
//! keep up (paused, or piped into a stalled reader) chunks are dropped there only, so a full pipe
//! never blocks training.

use std::ffi::OsString;
use std::io::{self};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::launch::command::{LaunchCommand, display};
use crate::launch::log::{LogSender, LogWriter};
use crate::launch::process_tree::{self, RunCgroup, Scope};
use crate::launch::watchdog;

mod child;
mod cleanup;
mod guard;
mod outcome;
mod output;
mod policy;
mod relay;
mod signals;

use child::Torchrun;
use cleanup::{after, end_leftovers, kill_run};
use guard::Guard;
pub use outcome::{KillReason, LaunchError, Outcome, fmt_duration, signal_name, summary_line};
use output::Output;
use policy::{Action, Event, LeftoverGrace, StopConfig, StopPolicy};
pub use relay::Sink;
use signals::Request;
pub use signals::{SignalHandle, install_signal_forwarding};

/// Set (to anything but 0) to run without a cgroup even where one could be made.
pub const NO_CGROUP_VAR: &str = "VLA_LAUNCH_NO_CGROUP";

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
    /// The run record, which the watchdog completes if the launcher is killed outright.
    pub record: Option<PathBuf>,
    /// Put the run in a cgroup of its own where the kernel allows it (off with
    /// `VLA_LAUNCH_NO_CGROUP=1`, to exercise the fallback).
    pub cgroup: bool,
    /// Count orphans re-parented to this process as the run's (see `process_tree::Scope`);
    /// off in a process that supervises several runs at once.
    pub adopt_orphans: bool,
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
            record: None,
            cgroup: std::env::var_os(NO_CGROUP_VAR).is_none_or(|v| v.is_empty() || v == "0"),
            adopt_orphans: true,
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

/// Spawns torchrun per `cmd` and supervises it to the end (see the module comment): the effect
/// loop around [`StopPolicy`], which decides what each signal means.
pub async fn run(cmd: &LaunchCommand, opts: &SuperviseOptions) -> Result<Outcome, LaunchError> {
    let start = Instant::now();
    // Subscribe and install handlers before spawning, so an early Ctrl-C is not lost.
    let mut requests = opts.signals.0.subscribe();
    take_charge(cmd, opts)?;
    let log = LogWriter::create(&opts.log_path).map_err(|e| log_error(opts, e))?;
    let notes = log.sender();
    notes.note(format!("launch: {}", display(cmd)));
    let marker = run_marker();
    let (cgroup, mut scope) = run_scope(opts, &marker);
    // Started before torchrun, so no moment of the run is without it.
    let mut guard = Guard::start(opts.watchdog.clone(), watchdog_spec(opts, &scope));
    let (mut child, output) = start_torchrun(cmd, opts, &marker, cgroup.as_ref(), &log)?;
    let pid = child.pid;
    if cgroup.as_ref().is_some_and(|c| !c.contains(pid)) {
        tracing::debug!("torchrun is not in the run's cgroup: finding the run without it");
        scope.cgroup = None;
    }
    guard.tell_group(pid);
    let mut policy = StopPolicy::new(stop_config(cmd, opts));
    let effects = Effects {
        pid,
        scope: &scope,
        notes: &notes,
    };
    let (status, deadline) = effects
        .supervise(&mut child, &mut requests, &mut policy, &mut guard)
        .await?;
    let leftover_processes = effects.end_leftovers(&mut policy, deadline, opts).await;
    let (terminal, dropped) = output.drain(opts.leak_timeout, &notes).await;
    let (exit_code, signal) = exit_of(status);
    let mut outcome = Outcome {
        exit_code,
        signal,
        duration: start.elapsed(),
        log_path: opts.log_path.clone(),
        interrupted_by: policy.interrupted_by(),
        stop_requested: policy.stop_requested(),
        force_killed: policy.force_killed(),
        kill_reason: policy.kill_reason(),
        leftover_processes,
        terminal_dropped_bytes: dropped,
        log_error: None,
        not_started: false,
    };
    notes.note(summary_line(&outcome));
    drop(notes);
    terminal.join().await;
    // A log that could not be written (a full disk) was warned about when it happened; it never
    // changes how the training ended.
    outcome.log_error = log.finish().err().map(|e| e.to_string());
    guard.finish();
    drop(cgroup);
    Ok(outcome)
}

/// torchrun's exit code, or 128+N and N when signal N ended it.
fn exit_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (1, None),
    }
}

fn start_torchrun(
    cmd: &LaunchCommand,
    opts: &SuperviseOptions,
    marker: &str,
    cgroup: Option<&RunCgroup>,
    log: &LogWriter,
) -> Result<(Torchrun, Output), LaunchError> {
    let mut child = child::spawn(cmd, marker, cgroup).map_err(|source| LaunchError::Spawn {
        program: cmd.program.clone(),
        source,
    })?;
    let pid = child.pid;
    tracing::debug!(pid, "torchrun started");
    log.sender().note(format!("torchrun pid {pid}"));
    if let Some(cb) = &opts.on_spawn {
        cb(pid as u32);
    }
    let sinks = [&opts.stdout, &opts.stderr];
    let output = Output::start(&mut child.pipes, log, sinks, opts.progress.clone())
        .map_err(|e| log_error(opts, e))?;
    Ok((child, output))
}

fn log_error(opts: &SuperviseOptions, source: io::Error) -> LaunchError {
    LaunchError::Log {
        path: opts.log_path.clone(),
        source,
    }
}

/// Signal handlers, the subreaper flag, a usable working directory: before anything starts.
fn take_charge(cmd: &LaunchCommand, opts: &SuperviseOptions) -> Result<(), LaunchError> {
    if opts.forward_process_signals {
        install_signal_forwarding(&opts.signals).map_err(LaunchError::Signals)?;
    }
    if let Err(e) = process_tree::become_child_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}): workers in new sessions are found by marker only"
        );
    }
    match std::fs::metadata(&cmd.cwd) {
        Ok(_) => Ok(()),
        Err(source) => Err(LaunchError::Workdir {
            cwd: cmd.cwd.clone(),
            source,
        }),
    }
}

fn watchdog_spec(opts: &SuperviseOptions, scope: &Scope) -> watchdog::Spec {
    watchdog::Spec {
        record: opts.record.clone(),
        cgroup: scope.cgroup.clone(),
        // Everything below a launcher that runs one run is that run's (adoption's premise).
        launcher: scope.adopted.then(|| std::process::id() as i32),
        ..watchdog::Spec::new(&scope.marker, opts.grace, &opts.log_path)
    }
}

fn stop_config(cmd: &LaunchCommand, opts: &SuperviseOptions) -> StopConfig {
    StopConfig {
        grace: opts.grace,
        repeated_sigterm_escalates: opts.repeated_sigterm_escalates,
        usr1_to_torchrun: declares_usr1(cmd),
    }
}

/// Where the run's processes are looked for: its cgroup, its marker, maybe adoption.
fn run_scope(opts: &SuperviseOptions, marker: &str) -> (Option<RunCgroup>, Scope) {
    let cgroup = run_cgroup(opts, marker);
    let scope = Scope {
        cgroup: cgroup.as_ref().map(|c| c.dir().to_path_buf()),
        adopted: opts.adopt_orphans,
        // The marker was made just now, in this process.
        born_after: process_tree::own_start(),
        ..Scope::marker_only(marker)
    };
    (cgroup, scope)
}

/// A cgroup for the run where the kernel and permissions allow one (else the run is found by
/// marker, descent and adoption).
fn run_cgroup(opts: &SuperviseOptions, marker: &str) -> Option<RunCgroup> {
    if !opts.cgroup {
        return None;
    }
    RunCgroup::create(marker)
        .map_err(|e| {
            tracing::debug!("no cgroup for the run ({e}): finding its processes without one");
        })
        .ok()
}

/// What the stop policy's actions act on: torchrun, the run's members, the run log.
struct Effects<'a> {
    pid: i32,
    scope: &'a Scope,
    notes: &'a LogSender,
}

impl Effects<'_> {
    /// Turns signals, requests and the deadline into policy events and carries out its actions,
    /// until torchrun exits. Returns its status and the deadline still armed, if any.
    async fn supervise(
        &self,
        child: &mut Torchrun,
        requests: &mut broadcast::Receiver<Request>,
        policy: &mut StopPolicy,
        guard: &mut Guard,
    ) -> Result<(std::process::ExitStatus, Option<tokio::time::Instant>), LaunchError> {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let grace_over = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                status = child.wait() => return Ok((status.map_err(LaunchError::Wait)?, deadline)),
                Ok(request) = requests.recv() => match request {
                    Request::Signal(sig) => Event::Signal(sig),
                    Request::Stop => Event::PeerStop,
                },
                () = grace_over => Event::GraceOver,
                () = guard.lost() => {
                    guard.replace(self.notes);
                    continue;
                }
            };
            for action in policy.handle(event) {
                self.apply(action, &mut deadline);
            }
        }
    }

    fn apply(&self, action: Action, deadline: &mut Option<tokio::time::Instant>) {
        match action {
            Action::ForwardToTorchrun(sig) => {
                process_tree::signal_all([self.pid], sig);
            }
            Action::SignalWorkers { sig, with_torchrun } => {
                // Only to processes that handle it: for one that does not, the default action
                // (for SIGUSR1: terminate) would end training on a mere warning.
                let (catching, not): (Vec<i32>, Vec<i32>) =
                    process_tree::members_in(Some(self.pid), self.scope)
                        .iter()
                        .filter(|p| !p.zombie && (p.pid != self.pid || with_torchrun))
                        .map(|p| p.pid)
                        .partition(|&pid| process_tree::catches(pid, sig));
                let n = process_tree::signal_all(catching, sig);
                self.notes
                    .note(format!("{sig} forwarded to {n} process(es)"));
                if !not.is_empty() {
                    self.notes.note(format!(
                        "{sig} not forwarded to {} process(es) that do not handle it (it would \
                         end them): pids {not:?}",
                        not.len()
                    ));
                }
            }
            Action::ArmDeadline(grace) => {
                *deadline = Some(after(tokio::time::Instant::now(), grace));
            }
            Action::KillRun => {
                kill_run(Some(self.pid), self.scope);
                *deadline = None;
            }
            Action::Note(text) => self.notes.note(text),
            Action::Warn(text) => tracing::warn!("{text}"),
        }
    }

    /// New-session grandchildren outlive torchrun; end them. After an interrupt they get only
    /// what is left of the grace period. Returns how many there were.
    async fn end_leftovers(
        &self,
        policy: &mut StopPolicy,
        deadline: Option<tokio::time::Instant>,
        opts: &SuperviseOptions,
    ) -> usize {
        let grace = match (policy.leftover_grace(), deadline) {
            (LeftoverGrace::RestOfDeadline, Some(d)) => {
                d.saturating_duration_since(tokio::time::Instant::now())
            }
            (LeftoverGrace::Usual, _) => opts.orphan_grace,
            (LeftoverGrace::None | LeftoverGrace::RestOfDeadline, _) => Duration::ZERO,
        };
        let (n, needed_kill) = end_leftovers(self.scope, grace, self.notes).await;
        if needed_kill {
            policy.leftovers_killed();
        }
        n
    }
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
