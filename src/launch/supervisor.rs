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
use std::fs::File;
use std::io::IsTerminal as _;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::command::{LaunchCommand, display};
use super::log::{LogSender, LogWriter, Stream};
use super::process_tree::{self, MARKER_VAR};
use super::watchdog::Watchdog;

/// Longer than torchrun's own 30 s worker shutdown, so it can finish cleanly.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
/// The longest `--grace` accepted (a week); longer ones are refused where they are parsed.
pub const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Deadlines further away than this are treated as "never" (no arithmetic can overflow).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How long to wait for output pipes that leftover grandchildren keep open.
pub const DEFAULT_LEAK_TIMEOUT: Duration = Duration::from_secs(1);
/// After torchrun exits on its own, leftover processes get SIGTERM and this long before SIGKILL.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// Chunks (of up to 256 KiB) waiting for a slow terminal before further ones are dropped there.
const TERMINAL_QUEUE: usize = 256;
const READ_CHUNK: usize = 256 * 1024;
/// A chunk is passed on once it holds this much, or when the stream has been quiet this long.
const COALESCE_UNTIL: usize = 128 * 1024;
const COALESCE: Duration = Duration::from_millis(2);
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Where relayed output goes besides the log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The launcher's own stdout.
    Stdout,
    /// The launcher's own stderr.
    Stderr,
    /// A file (created or truncated); used by tests and benchmarks.
    File(PathBuf),
    Discard,
}

/// Lets the caller (or the real signal handlers) ask the supervisor to signal the run.
#[derive(Debug, Clone)]
pub struct SignalHandle(broadcast::Sender<Request>);

#[derive(Debug, Clone, Copy)]
enum Request {
    /// As if the launcher had received the signal (a second stop signal kills at once).
    Signal(Signal),
    /// Stop the run as SIGTERM does, unless it is already stopping: never escalates.
    Stop,
}

impl Default for SignalHandle {
    fn default() -> Self {
        SignalHandle(broadcast::channel(16).0)
    }
}

impl SignalHandle {
    /// Delivers `sig` as if the launcher had received it (SIGINT, SIGTERM, SIGHUP, SIGUSR1).
    pub fn send(&self, sig: Signal) {
        // No receiver yet means no run in progress: nothing to signal.
        let _ = self.0.send(Request::Signal(sig));
    }

    /// Stops the run like a SIGTERM, with the grace period, but does nothing to a run that is
    /// already stopping (so another node's failure never turns the user's Ctrl-C into a kill).
    pub fn stop(&self) {
        let _ = self.0.send(Request::Stop);
    }
}

/// Routes the launcher's SIGINT, SIGTERM, SIGHUP and SIGUSR1 into `handle`. Must be called
/// inside a tokio runtime; the handlers stay installed for the life of the process (the default
/// "terminate" action is replaced, so the launcher can clean up).
pub fn install_signal_forwarding(handle: &SignalHandle) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = handle.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tx.send(sig);
            }
        });
    }
    Ok(())
}

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
            watchdog: super::watchdog::default_program(),
            on_spawn: None,
            progress: None,
        }
    }
}

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
    /// True when SIGKILL was needed: the grace period ran out, a second stop signal came, or a
    /// leftover process ignored SIGTERM.
    pub force_killed: bool,
    /// Processes of the run still alive after torchrun exited, which the launcher ended.
    pub leftover_processes: usize,
    /// Bytes not shown on the terminal because it did not keep up (all are in the log).
    pub terminal_dropped_bytes: u64,
    /// The first error writing the run log (the log is incomplete from there on).
    pub log_error: Option<String>,
}

impl Outcome {
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
    let how = match o.signal {
        Some(sig) => format!("torchrun killed by {}", signal_name(sig)),
        None => format!("torchrun exited with code {}", o.exit_code),
    };
    let mut extra = Vec::new();
    if let Some(sig) = o.interrupted_by {
        extra.push(format!("stopped by {}", signal_name(sig)));
    }
    if o.force_killed {
        extra.push("grace period over, SIGKILL sent".to_string());
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

fn signal_name(sig: i32) -> String {
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
                Request::Signal(sig) => Some(sig),
                Request::Stop if interrupted_by.is_none() => Some(Signal::SIGTERM),
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
                    tracing::warn!("{sig}: stopping torchrun (again to kill at once; SIGKILL in {:?})", opts.grace);
                }
                Some(sig) => {
                    notes.note(format!("{sig} received again: killing the run now"));
                    kill_run(Some(pid), &marker);
                    force_killed = true;
                    deadline = None;
                }
            },
            () = grace_over => {
                notes.note("grace period over: SIGKILL to the run");
                tracing::warn!("torchrun did not stop within {:?}: killing the run", opts.grace);
                kill_run(Some(pid), &marker);
                force_killed = true;
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
        force_killed,
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

/// `now + d`, saturating at [`FAR_FUTURE`] (a `--grace` of u64::MAX seconds must not panic).
fn after<I: std::ops::Add<Duration, Output = I> + Copy>(now: I, d: Duration) -> I {
    now + d.min(FAR_FUTURE)
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

/// SIGKILL to torchrun's group and to every member of the run, until none is left.
fn kill_run(root: Option<i32>, marker: &str) -> usize {
    if let Some(pgid) = root {
        process_tree::signal_group(pgid, Signal::SIGKILL);
    }
    let mut killed = 0;
    // A member may fork while we kill; a few rounds catch the late ones.
    for _ in 0..50 {
        let live: Vec<i32> = process_tree::members(root, marker)
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| p.pid)
            .collect();
        if live.is_empty() {
            break;
        }
        killed += process_tree::signal_all(live, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(5));
    }
    process_tree::reap_adopted(&process_tree::members(None, marker), root);
    killed
}

/// Ends whatever of the run is still alive after torchrun exited: SIGTERM, `grace`, SIGKILL.
/// Returns how many there were and whether SIGKILL was needed.
async fn end_leftovers(marker: &str, grace: Duration, notes: &LogSender) -> (usize, bool) {
    let live = |marker: &str| -> Vec<i32> {
        let members = process_tree::members(None, marker);
        process_tree::reap_adopted(&members, None);
        members
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| p.pid)
            .collect()
    };
    let first = live(marker);
    if first.is_empty() {
        return (0, false);
    }
    notes.note(format!(
        "{} process(es) of the run outlived torchrun: {first:?}; ending them",
        first.len()
    ));
    if !grace.is_zero() {
        process_tree::signal_all(first.iter().copied(), Signal::SIGTERM);
        let until = after(Instant::now(), grace);
        while Instant::now() < until && !live(marker).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let needed_kill = kill_run(None, marker) > 0;
    // Give the kernel a moment to turn them into zombies we can reap.
    for _ in 0..20 {
        if live(marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (first.len(), needed_kill)
}

type TerminalQueue = mpsc::SyncSender<Arc<Vec<u8>>>;

/// A thread that writes chunks to `sink`; `None` when the sink discards.
fn terminal_writer(
    sink: &Sink,
    progress: Option<Arc<super::status::Tracker>>,
) -> io::Result<(Option<TerminalQueue>, Option<JoinHandle<()>>)> {
    // The status line belongs on the launcher's own terminal, never in a file.
    let status =
        progress.filter(|t| t.shows_status() && matches!(sink, Sink::Stdout | Sink::Stderr));
    let mut out: Box<dyn Write + Send> = match sink {
        Sink::Discard => return Ok((None, None)),
        // Flushed after every chunk: a `\r` progress update must appear now, not at the next `\n`.
        Sink::Stdout => Box::new(io::stdout()),
        Sink::Stderr => Box::new(io::stderr()),
        Sink::File(path) => Box::new(File::create(path)?),
    };
    // The launcher's own lines follow on stderr (and, on a terminal, after stdout's): a last
    // line the script left unterminated there is ended, so they do not run together.
    let end_last_line = match sink {
        Sink::Stderr => true,
        Sink::Stdout => io::stdout().is_terminal(),
        _ => false,
    };
    let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(TERMINAL_QUEUE);
    let thread = std::thread::Builder::new()
        .name("vla-launch-relay".into())
        .spawn(move || {
            // A closed terminal (EPIPE) must not stop the training: keep draining the queue.
            let mut broken = false;
            let mut last = b'\n';
            for chunk in rx {
                broken = broken
                    || match &status {
                        Some(t) => t.write_terminal(&mut out, &chunk),
                        None => out.write_all(&chunk).and_then(|()| out.flush()),
                    }
                    .is_err();
                last = chunk.last().copied().unwrap_or(last);
            }
            if let Some(t) = &status {
                t.clear_terminal();
            }
            if end_last_line && !broken && last != b'\n' {
                let _ = out.write_all(b"\n").and_then(|()| out.flush());
            }
        })?;
    Ok((Some(tx), Some(thread)))
}

async fn join_within(threads: [Option<JoinHandle<()>>; 2], timeout: Duration) {
    let until = after(Instant::now(), timeout);
    for t in threads.into_iter().flatten() {
        while !t.is_finished() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Copies one pipe to the log (every byte) and the terminal (if it keeps up) until EOF.
///
/// Reads are coalesced: after a read, more output that follows within [`COALESCE`] joins the
/// same chunk (up to [`COALESCE_UNTIL`] bytes), so a flood of small writes (8 KiB each from
/// most writers) costs one hand-off to the terminal and log threads per ~128 KiB instead of one
/// per write; a lone line or a tqdm update is passed on [`COALESCE`] later at most. The chunk
/// itself is shared by both threads, never copied here.
async fn relay(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    log: LogSender,
    terminal: Option<TerminalQueue>,
    dropped: Arc<AtomicU64>,
    progress: Option<Arc<super::status::Tracker>>,
) {
    let mut dropping = false;
    let mut eof = false;
    while !eof {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        loop {
            let read = if buf.is_empty() {
                pipe.read_buf(&mut buf).await
            } else {
                match tokio::time::timeout(COALESCE, pipe.read_buf(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => break, // quiet: pass on what we have
                }
            };
            match read {
                Ok(0) => eof = true,
                Ok(_) if buf.len() < COALESCE_UNTIL => continue,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log.note(format!("reading torchrun's {stream:?} failed: {e}"));
                    eof = true;
                }
            }
            break;
        }
        if buf.is_empty() {
            continue;
        }
        if let Some(p) = &progress {
            p.feed(stream, &buf);
        }
        let chunk = Arc::new(buf);
        log.chunk(stream, chunk.clone());
        if let Some(tx) = &terminal {
            let len = chunk.len() as u64;
            match tx.try_send(chunk) {
                Ok(()) => dropping = false,
                Err(mpsc::TrySendError::Full(_)) => {
                    if !dropping {
                        log.note(format!(
                            "terminal not keeping up: {stream:?} output dropped there (kept here)"
                        ));
                    }
                    dropping = true;
                    dropped.fetch_add(len, Ordering::Relaxed);
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {}
            }
        }
    }
}
