//! The watchdog: a small process that outlives a launcher killed outright (SIGKILL, the OOM
//! killer, a scheduler's hard kill) and then ends every process of its run.
//!
//! How: before torchrun starts, the launcher re-executes its own binary as
//! `vla-launch __vla-launch-watchdog MARKER GRACE_MS LOG` in a process group of its own, with
//! SIGHUP and SIGINT ignored (a closing terminal or a Ctrl-C to the launcher's group never reaches
//! it) and the read end of a pipe as its stdin. The launcher alone holds the write end
//! (close-on-exec, so torchrun and its workers never inherit it). When the launcher finishes
//! normally it writes `d` and closes the pipe: the watchdog exits quietly. When the launcher dies,
//! the kernel closes the pipe without the `d`: the watchdog sends SIGTERM to every process of
//! the run (same uid, carrying the run's marker variable, or descending from one that does,
//! setsid grandchildren included), waits up to the grace period, SIGKILLs what is left, notes
//! it in the run log and exits. Linux only (/proc).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process_tree;

/// The hidden first argument that turns the binary into a watchdog.
pub const SUBCOMMAND: &str = "__vla-launch-watchdog";
/// The byte the launcher writes when it finished normally.
const DONE: u8 = b'd';
/// After SIGKILL, how long the watchdog keeps checking for processes that are still there.
const KILL_ROUNDS: Duration = Duration::from_secs(3);

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

/// The launcher's side: dropping it without `finish` (the launcher dying, or an error path)
/// closes the pipe without the done byte, which makes the watchdog end the run.
pub struct Watchdog {
    child: Child,
    pipe: Option<std::fs::File>,
}

impl Watchdog {
    /// Starts `program` as the watchdog of the run tagged `marker`.
    pub fn start(program: &Path, marker: &str, grace: Duration, log: &Path) -> io::Result<Self> {
        // Close-on-exec: torchrun and its workers must never hold the write end.
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let writer = std::fs::File::from(writer);
        let mut cmd = Command::new(program);
        cmd.arg(SUBCOMMAND)
            .arg(marker)
            .arg(grace.as_millis().min(u128::from(u64::MAX)).to_string())
            .arg(log)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group: a terminal's Ctrl-C or hangup to our group does not reach it.
            .process_group(0);
        let child = cmd.spawn()?;
        // `cmd` (holding the read end) is dropped here: only the watchdog has it now.
        drop(cmd);
        Ok(Watchdog {
            child,
            pipe: Some(writer),
        })
    }

    /// The run ended under the launcher's control: tell the watchdog to exit, and reap it.
    pub fn finish(mut self, wait: Duration) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(&[DONE]);
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

/// In the binary's `main`, before anything else: runs the watchdog and exits when the first
/// argument asks for it; returns otherwise.
pub fn main_if_requested() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != SUBCOMMAND) {
        return;
    }
    let (Some(marker), Some(grace_ms), Some(log)) = (
        args.get(2).and_then(|m| m.to_str()),
        args.get(3)
            .and_then(|g| g.to_str())
            .and_then(|g| g.parse::<u64>().ok()),
        args.get(4),
    ) else {
        std::process::exit(2);
    };
    std::process::exit(watch(
        marker,
        Duration::from_millis(grace_ms),
        Path::new(log),
    ));
}

fn watch(marker: &str, grace: Duration, log: &Path) -> i32 {
    // SAFETY: setting signal dispositions to "ignore" in a single-threaded process.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got.contains(&DONE) {
        return 0;
    }
    let start = Instant::now();
    let (ended, killed) = end_run(marker, grace);
    let text = format!(
        "watchdog: the launcher is gone (killed outright?): {ended} process(es) of the run ended \
         ({killed} needed SIGKILL) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // Nothing to end (the launcher failed before torchrun started): nothing to say either.
    if ended > 0 {
        crate::eprintln_lossy!("vla-launch: {text}");
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = f.write_all(&super::log::note_record(&text));
        }
    }
    0
}

/// The run's live processes that belong to this user.
fn live(marker: &str) -> Vec<i32> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    process_tree::members(None, marker)
        .iter()
        .filter(|p| !p.zombie)
        .filter(|p| std::fs::metadata(format!("/proc/{}", p.pid)).is_ok_and(|m| m.uid() == uid))
        .map(|p| p.pid)
        .collect()
}

/// SIGTERM, up to `grace` for them to end, then SIGKILL. Returns (how many, how many killed).
fn end_run(marker: &str, grace: Duration) -> (usize, usize) {
    let mut seen: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let until = Instant::now() + grace.min(Duration::from_secs(100 * 365 * 24 * 3600));
    loop {
        let now = live(marker);
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
        let now = live(marker);
        if now.is_empty() || Instant::now() >= until {
            break;
        }
        seen.extend(now.iter().copied());
        killed.extend(now.iter().copied());
        process_tree::signal_all(now, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
    (seen.len(), killed.len())
}
