//! The watchdog: a small process that outlives a launcher killed outright (SIGKILL, the OOM
//! killer, a scheduler's hard kill) and then ends every process of its run.
//!
//! How: before torchrun starts, the launcher re-executes its own binary as
//! `vla-launch __vla-launch-watchdog MARKER GRACE_MS LOG RECORD CGROUP` in a process group of its
//! own, with SIGHUP, SIGINT and SIGTERM ignored (a closing terminal, a Ctrl-C to the launcher's
//! group, and Slurm's scancel, which sends SIGTERM to every process of the step, never end it;
//! only the pipe does) and the read end of a pipe as its stdin. The launcher alone holds the write
//! end (close-on-exec, so torchrun and its workers never inherit it); it writes `pgid N` once
//! torchrun runs. When the launcher finishes normally it writes `done` and closes the pipe: the
//! watchdog exits quietly. When the launcher dies, the kernel closes the pipe without `done`:
//! the watchdog sends SIGTERM to every process of the run (same uid; in the run's cgroup, or
//! carrying the run's marker variable or descending from one that does, or in torchrun's process
//! group), waits up to the grace period, SIGKILLs what is left, notes it in the run log, gives
//! the run record an outcome if it has none, and exits. The launcher notices a watchdog that
//! dies before it (a pidfd) and starts another. Linux only (/proc).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process_tree;

/// The hidden first argument that turns the binary into a watchdog.
pub const SUBCOMMAND: &str = process_tree::WATCHDOG_SUBCOMMAND;
/// The line the launcher writes when it finished normally.
const DONE: &str = "done";
/// After SIGKILL, how long the watchdog keeps checking for processes that are still there.
const KILL_ROUNDS: Duration = Duration::from_secs(3);
/// How long the watchdog waits for the run's killed processes to leave its cgroup, to remove it.
const CGROUP_DRAIN: Duration = Duration::from_secs(10);

/// Without a cgroup, how often the watchdog refreshes the run's process set (one /proc walk).
const TRACK_EVERY: Duration = Duration::from_secs(1);

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Called by the binary's `main`: supervised runs get a watchdog that re-executes this binary.
/// (Test binaries that use the library never call it, so they run without one unless they set
/// `SuperviseOptions::watchdog` themselves.)
pub fn enable_self_exec() {
    // /proc/self/exe, resolved in the child at exec time, is this binary even if its file was
    // replaced or deleted since (an upgrade during a days-long run).
    let _ = PROGRAM.set(PathBuf::from("/proc/self/exe"));
}

/// The program `SuperviseOptions::new` uses as watchdog, if `enable_self_exec` was called.
pub fn default_program() -> Option<PathBuf> {
    PROGRAM.get().cloned()
}

/// What a watchdog watches.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The run's `VLA_LAUNCH_RUN` marker.
    pub marker: String,
    pub grace: Duration,
    /// The run log, where it notes what it did.
    pub log: PathBuf,
    /// The run record, which it completes with an outcome if it has none.
    pub record: Option<PathBuf>,
    /// The run's cgroup, whose every process it ends.
    pub cgroup: Option<PathBuf>,
    /// The launcher: without a cgroup, the watchdog keeps the set of its descendants (every
    /// process of the run, the launcher being a subreaper) while it lives.
    pub launcher: Option<i32>,
}

impl Spec {
    pub fn new(marker: &str, grace: Duration, log: &Path) -> Spec {
        Spec {
            marker: marker.to_string(),
            grace,
            log: log.to_path_buf(),
            record: None,
            cgroup: None,
            launcher: None,
        }
    }
}

/// The launcher's side: dropping it without `finish` (the launcher dying, or an error path)
/// closes the pipe without the done line, which makes the watchdog end the run.
pub struct Watchdog {
    child: Child,
    pipe: Option<std::fs::File>,
    gone: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Watchdog {
    /// Starts `program` as the watchdog of the run `spec` describes.
    pub fn start(program: &Path, spec: &Spec) -> io::Result<Self> {
        // Close-on-exec: torchrun and its workers must never hold the write end.
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let writer = std::fs::File::from(writer);
        let opt = |p: &Option<PathBuf>| p.as_ref().map_or_else(OsString::new, |p| p.into());
        let mut cmd = Command::new(program);
        cmd.arg(SUBCOMMAND)
            .arg(&spec.marker)
            .arg(spec.grace.as_millis().min(u128::from(u64::MAX)).to_string())
            .arg(&spec.log)
            .arg(opt(&spec.record))
            .arg(opt(&spec.cgroup))
            .arg(spec.launcher.map_or_else(String::new, |p| p.to_string()))
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group: a terminal's Ctrl-C or hangup to our group does not reach it.
            .process_group(0);
        // Ignored from the start, not only once it runs `watch`: scancel's SIGTERM to every
        // process of the step can come between the fork and that (a node stopped as it starts),
        // and then killed the new watchdog. Ignored dispositions survive exec.
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // `cmd` (holding the read end) is dropped here: only the watchdog has it now.
        drop(cmd);
        let gone = exit_notice(child.id() as i32);
        Ok(Watchdog {
            child,
            pipe: Some(writer),
            gone,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the watchdog torchrun's process group, which it signals too if the launcher dies.
    pub fn tell_group(&mut self, pgid: i32) {
        if let Some(pipe) = &mut self.pipe {
            let _ = pipe.write_all(format!("pgid {pgid}\n").as_bytes());
        }
    }

    /// Resolves when the watchdog process has exited (killed, say) before `finish`; never when
    /// that cannot be watched.
    pub async fn lost(&mut self) {
        match self.gone.as_mut() {
            Some(rx) => {
                let _ = rx.await;
                self.gone = None;
                let _ = self.child.try_wait();
            }
            None => std::future::pending().await,
        }
    }

    /// The run ended under the launcher's control: tell the watchdog to exit, and reap it.
    pub fn finish(mut self, wait: Duration) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(format!("{DONE}\n").as_bytes());
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

/// A receiver that gets `()` when process `pid` (our child) exits: a thread blocked in poll on
/// its pidfd (Linux 5.3+). `None` where pidfds are not available.
fn exit_notice(pid: i32) -> Option<tokio::sync::oneshot::Receiver<()>> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("vla-launch-watchdog-watch".into())
        .spawn(move || {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for as long as it takes.
            while unsafe { libc::poll(&mut p, 1, -1) } < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            let _ = tx.send(());
        })
        .ok()?;
    Some(rx)
}

/// In the binary's `main`, before anything else: runs the watchdog and exits when the first
/// argument asks for it; returns otherwise.
pub fn main_if_requested() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != SUBCOMMAND) {
        return;
    }
    let path = |i: usize| args.get(i).filter(|a| !a.is_empty()).map(PathBuf::from);
    let (Some(marker), Some(grace_ms), Some(log)) = (
        args.get(2).and_then(|m| m.to_str()),
        args.get(3)
            .and_then(|g| g.to_str())
            .and_then(|g| g.parse::<u64>().ok()),
        path(4),
    ) else {
        std::process::exit(2);
    };
    let spec = Spec {
        record: path(5),
        cgroup: path(6),
        launcher: args
            .get(7)
            .and_then(|p| p.to_str()?.parse().ok())
            .filter(|&p| p > 1),
        ..Spec::new(marker, Duration::from_millis(grace_ms), &log)
    };
    std::process::exit(watch(&spec));
}

/// What the launcher said on the pipe before it closed: whether it finished, torchrun's group.
/// Meanwhile, without a cgroup, the run's processes as last seen (see [`Tracked`]).
fn read_pipe(tracked: &mut Tracked) -> (bool, Option<i32>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        if tracked.enabled() && !readable(TRACK_EVERY) {
            tracked.refresh();
            continue;
        }
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    let done = text.lines().any(|l| l == DONE);
    let pgid = text
        .lines()
        .filter_map(|l| l.strip_prefix("pgid ")?.parse().ok())
        .next_back();
    (done, pgid)
}

/// Whether stdin (the pipe) has data or its end within `wait`.
fn readable(wait: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd; a timeout in milliseconds.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    // An error (EINTR) reads as readable: the caller's read sorts it out.
    rc != 0
}

/// Without a cgroup, the run's processes as last seen: every live descendant of the launcher
/// (a child subreaper, so orphans of the run, however they left torchrun's session or cleared
/// its environment, stay below it), with its start time, refreshed every [`TRACK_EVERY`] while
/// the launcher lives. When the launcher is killed outright they are re-parented to init and
/// nothing else finds them: the watchdog ends those of the set that still run (same pid, same
/// start time: never a reused pid), and their descendants.
struct Tracked {
    launcher: Option<i32>,
    me: i32,
    known: std::collections::HashMap<i32, u64>,
    /// [`SET_FILE_VAR`]: where the set is written when it changes (tests, debugging).
    show: Option<PathBuf>,
}

/// When set (to a path), the watchdog writes `watchdog PID` and the pids of the run it tracks
/// there, one a line, whenever the set changes: what tests wait on before they kill a launcher.
pub const SET_FILE_VAR: &str = "VLA_LAUNCH_WATCHDOG_SET_FILE";

impl Tracked {
    fn new(spec: &Spec) -> Tracked {
        // With a cgroup the kernel keeps the set: no walk, no cost.
        let launcher = spec.launcher.filter(|_| spec.cgroup.is_none());
        let mut t = Tracked {
            launcher,
            me: std::process::id() as i32,
            known: Default::default(),
            show: std::env::var_os(SET_FILE_VAR).map(PathBuf::from),
        };
        t.refresh();
        t
    }

    fn enabled(&self) -> bool {
        self.launcher.is_some()
    }

    /// One /proc walk: the launcher's descendants now, plus those seen before that still run.
    fn refresh(&mut self) {
        let Some(launcher) = self.launcher else {
            return;
        };
        let before = self.known.len();
        self.known.retain(|&pid, &mut start| {
            process_tree::still_running(process_tree::ProcId { pid, start })
        });
        let mut changed = self.known.len() != before;
        for p in process_tree::descendants_of(launcher, self.me) {
            changed |= self.known.insert(p.pid, p.start) != Some(p.start);
        }
        if let (true, Some(path)) = (changed, &self.show) {
            let mut pids: Vec<i32> = self.known.keys().copied().collect();
            pids.sort_unstable();
            let text: String = std::iter::once(format!("watchdog {}\n", self.me))
                .chain(pids.iter().map(|p| format!("{p}\n")))
                .collect();
            let tmp = path.with_extension("tmp");
            let _ = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        }
    }

    /// Those of the set that still run, by pid.
    fn live(&self) -> Vec<i32> {
        self.known
            .iter()
            .map(|(&pid, &start)| process_tree::ProcId { pid, start })
            .filter(|&id| process_tree::still_running(id))
            .map(|id| id.pid)
            .collect()
    }
}

fn watch(spec: &Spec) -> i32 {
    // SAFETY: setting signal dispositions to "ignore" in a single-threaded process.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut tracked = Tracked::new(spec);
    let (done, pgid) = read_pipe(&mut tracked);
    if done {
        return 0;
    }
    let start = Instant::now();
    let (ended, killed) = end_run(spec, pgid, &tracked);
    let text = format!(
        "watchdog: the launcher is gone (killed outright?): {ended} process(es) of the run ended \
         ({killed} needed SIGKILL) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // Nothing to end (the launcher failed before torchrun started): nothing to say either.
    if ended > 0 {
        crate::eprintln_lossy!("vla-launch: {text}");
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&spec.log) {
            let _ = f.write_all(&super::log::note_record(&text));
        }
    }
    if let Some(record) = &spec.record {
        complete_record(record, spec, ended, killed, &text);
    }
    if let Some(dir) = &spec.cgroup {
        // Killed processes leave the group as the kernel finishes them: slowly on a busy machine.
        process_tree::remove_group(dir, CGROUP_DRAIN);
    }
    0
}

/// The record of a launcher killed outright would say "no outcome yet" forever: say what is
/// known (issue 25 item 5). torchrun's own exit code is not (it was not our child).
fn complete_record(record: &Path, spec: &Spec, ended: usize, killed: usize, text: &str) {
    let outcome = crate::record::RunOutcome {
        exit_code: 128 + libc::SIGKILL,
        force_killed: killed > 0,
        leftover_processes: ended,
        log: Some(spec.log.clone()),
        diagnosis: Some(crate::record::RecordedDiagnosis {
            kind: "LauncherGone".into(),
            summary: text.to_string(),
            hint: "the launcher was killed (SIGKILL, the OOM killer, a hard time limit?); \
                   torchrun's own exit code is unknown: see the run log"
                .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = crate::record::complete_if_open(record, outcome) {
        crate::eprintln_lossy!(
            "vla-launch: watchdog: cannot complete the run record {}: {e}",
            record.display()
        );
    }
}

/// The run's live processes that belong to this user: its cgroup, its marker, torchrun's group,
/// the launcher's descendants last seen and theirs.
fn live(spec: &Spec, pgid: Option<i32>, tracked: &Tracked) -> Vec<i32> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let scope = process_tree::Scope {
        cgroup: spec.cgroup.clone(),
        ..process_tree::Scope::marker_only(&spec.marker)
    };
    let roots = tracked.live();
    let mut pids: Vec<i32> = process_tree::members_in_roots(&roots, &scope)
        .iter()
        .filter(|p| !p.zombie)
        .map(|p| p.pid)
        .collect();
    if let Some(g) = pgid {
        pids.extend(process_tree::group_members(g));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|p| std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == uid));
    pids
}

/// SIGTERM, up to `grace` for them to end, then SIGKILL. Returns (how many, how many killed).
fn end_run(spec: &Spec, pgid: Option<i32>, tracked: &Tracked) -> (usize, usize) {
    let mut seen: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let until = Instant::now() + spec.grace.min(Duration::from_secs(100 * 365 * 24 * 3600));
    loop {
        let now = live(spec, pgid, tracked);
        if now.is_empty() {
            return (seen.len(), 0);
        }
        // Late forks get their SIGTERM too.
        let new: Vec<i32> = now.iter().copied().filter(|p| seen.insert(*p)).collect();
        process_tree::signal_all(new, Signal::SIGTERM);
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let until = Instant::now() + KILL_ROUNDS;
    loop {
        let now = live(spec, pgid, tracked);
        if now.is_empty() || Instant::now() >= until {
            break;
        }
        seen.extend(now.iter().copied());
        killed.extend(now.iter().copied());
        if let Some(dir) = &spec.cgroup {
            process_tree::cgroup_kill(dir);
        }
        process_tree::signal_all(now, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
    (seen.len(), killed.len())
}
