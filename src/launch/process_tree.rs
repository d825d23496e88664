//! Finding and ending every process of one run on Linux, including workers that torchrun (or a
//! dataloader) started in a new session, which leave torchrun's process group.
//!
//! A process belongs to the run when it descends from torchrun, or when its environment carries
//! the run's marker variable (set on torchrun, inherited by everything below it). The marker
//! finds new-session grandchildren even after their parent died and they were re-parented: to us
//! when we are a child subreaper, else to init. The launcher being a subreaper also lets it reap
//! them, so a killed worker does not linger as a zombie.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The watchdog's hidden subcommand (`watchdog::SUBCOMMAND`; here so that this module, which
/// the watchdog uses, need not use it back).
pub const WATCHDOG_SUBCOMMAND: &str = "__vla-launch-watchdog";

/// Environment variable that tags every process of one run.
pub const MARKER_VAR: &str = "VLA_LAUNCH_RUN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub zombie: bool,
    /// Its process group (0 where the line has no such field).
    pub pgrp: i32,
    /// When it started (clock ticks since boot; 0 where the line has no such field): with the
    /// pid, names the process so that a reused pid is never taken for it.
    pub start: u64,
}

/// Orphans of our descendants are re-parented to us instead of init.
pub fn become_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only changes a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// "pid (comm) S ppid ..." -> ProcInfo; comm may hold spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<ProcInfo> {
    let pid = stat.split_once(' ')?.0.parse().ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    // Field 22 of proc(5), the 20th after comm (state is the first).
    let start = fields.nth(16).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some(ProcInfo {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
        pgrp,
        start,
    })
}

/// `path` (a /proc stat file) read into `buf` and parsed; `None` when it cannot be read.
fn read_stat(path: &str, buf: &mut String) -> Option<ProcInfo> {
    buf.clear();
    let mut f = fs::File::open(path).ok()?;
    io::Read::read_to_string(&mut f, buf).ok()?;
    parse_stat(buf)
}

/// `/proc/PID/stat` parsed; `None` when the process is gone.
fn stat_of(pid: i32) -> Option<ProcInfo> {
    read_stat(&format!("/proc/{pid}/stat"), &mut String::new())
}

/// One process, safe against pid reuse: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// The live descendants of `root`, with their start times, never `skip` (the caller) nor a
/// watchdog. Read down from `root` through `/proc/PID/task/TID/children` (every thread's), so
/// the cost is the run's own tree, not every process of the machine; one walk of all /proc
/// where the kernel lacks those files (CONFIG_PROC_CHILDREN).
pub fn descendants_of(root: i32, skip: i32) -> Vec<ProcId> {
    let pids = match tree_below(root) {
        Some(pids) => pids,
        None => {
            let procs = snapshot();
            let set = with_descendants(&procs, &[root]);
            procs
                .iter()
                .filter(|p| p.pid != root && set.contains(&p.pid))
                .map(|p| p.pid)
                .collect()
        }
    };
    pids.into_iter()
        .filter(|&pid| pid != skip && !is_watchdog(pid))
        .filter_map(|pid| {
            let p = stat_of(pid)?;
            (!p.zombie).then_some(ProcId {
                pid,
                start: p.start,
            })
        })
        .collect()
}

/// Every descendant of `root` from the kernel's per-thread children lists; `None` when `root`'s
/// own list cannot be read (no CONFIG_PROC_CHILDREN, or `root` is gone).
fn tree_below(root: i32) -> Option<Vec<i32>> {
    let mut found: Vec<i32> = Vec::new();
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stack = vec![root];
    let mut first = true;
    let mut buf = String::new();
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            if first {
                return None;
            }
            continue;
        };
        for t in tasks.flatten() {
            buf.clear();
            let path = t.path().join("children");
            match fs::File::open(&path).and_then(|mut f| io::Read::read_to_string(&mut f, &mut buf))
            {
                Ok(_) => {}
                Err(_) if first => return None,
                Err(_) => continue,
            }
            first = false;
            for child in buf.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if seen.insert(child) {
                    found.push(child);
                    stack.push(child);
                }
            }
        }
        first = false;
    }
    Some(found)
}

/// Whether `id` still runs: the same pid with the same start time, not a zombie.
pub fn still_running(id: ProcId) -> bool {
    stat_of(id.pid).is_some_and(|p| !p.zombie && p.start == id.start)
}

/// Every process visible in /proc (they come and go while we read: missing ones are skipped).
pub fn snapshot() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    // One buffer for every stat file, read without asking its size first (a stat file has none).
    let mut buf = String::with_capacity(1024);
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        read_stat(&format!("/proc/{pid}/stat"), &mut buf)
    })
    .collect()
}

/// When this process started (clock ticks since boot, as in `/proc/PID/stat`); 0 if unknown.
pub fn own_start() -> u64 {
    read_stat("/proc/self/stat", &mut String::new()).map_or(0, |p| p.start)
}

/// `roots` and all their descendants in `procs` (pure).
pub fn with_descendants(procs: &[ProcInfo], roots: &[i32]) -> HashSet<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if seen.insert(pid) {
            stack.extend(children.get(&pid).into_iter().flatten());
        }
    }
    seen
}

fn has_marker(pid: i32, needle: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|var| var == needle))
        .unwrap_or(false)
}

/// Where a run's processes are looked for, besides torchrun's descendants.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `MARKER_VAR`'s value for this run.
    pub marker: String,
    /// The run's cgroup (v2) directory, when the launcher could make one: every process the run
    /// starts is in it, whatever its environment, session or parent.
    pub cgroup: Option<PathBuf>,
    /// Count every other child of this process but the watchdog (orphans re-parented to it, a
    /// child subreaper) as the run's: right in the launcher, which runs one run at a time; wrong
    /// in a process running several (tests).
    pub adopted: bool,
    /// Start time (clock ticks since boot) of the process that made the marker: no process
    /// started before it can carry the marker, so only younger ones have their environment
    /// read (a machine's hundreds of others cost a stat read each, not an environment read).
    /// 0 reads every process's environment.
    pub born_after: u64,
}

impl Scope {
    pub fn marker_only(marker: &str) -> Scope {
        Scope {
            marker: marker.to_string(),
            ..Scope::default()
        }
    }
}

/// The run's live processes per `scope` and their descendants, and `root`'s. Never the caller.
pub fn members_in(root: Option<i32>, scope: &Scope) -> Vec<ProcInfo> {
    let roots: Vec<i32> = root.into_iter().collect();
    members_in_roots(&roots, scope)
}

/// [`members_in`] with several roots.
pub fn members_in_roots(roots: &[i32], scope: &Scope) -> Vec<ProcInfo> {
    let procs = snapshot();
    let me = std::process::id() as i32;
    let needle = format!("{MARKER_VAR}={}", scope.marker).into_bytes();
    let mut roots: Vec<i32> = roots.to_vec();
    roots.extend(
        procs
            .iter()
            .filter(|p| {
                p.pid != me
                    && !p.zombie
                    && p.start >= scope.born_after
                    && has_marker(p.pid, &needle)
            })
            .map(|p| p.pid),
    );
    if let Some(dir) = &scope.cgroup {
        roots.extend(cgroup_procs(dir));
    }
    if scope.adopted {
        roots.extend(
            procs
                .iter()
                .filter(|p| p.ppid == me && !p.zombie && !is_watchdog(p.pid))
                .map(|p| p.pid),
        );
    }
    let set = with_descendants(&procs, &roots);
    procs
        .into_iter()
        .filter(|p| p.pid != me && set.contains(&p.pid))
        .collect()
}

/// The kernel's count of processes its OOM killer has killed since boot (`oom_kill` in
/// `/proc/vmstat`), when it can be read. The caller reads it before and after a run.
pub fn oom_kill_count() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Sends `sig` to each pid; returns how many were signalled (gone ones are skipped).
pub fn signal_all(pids: impl IntoIterator<Item = i32>, sig: Signal) -> usize {
    pids.into_iter()
        .filter(|&pid| kill(Pid::from_raw(pid), sig).is_ok())
        .count()
}

/// Whether `pid` has a handler for `sig` (its bit in `SigCgt` of `/proc/PID/status`): such a
/// process survives the signal; one without would take the default action (for SIGUSR1: die).
/// False when the process is gone or the line cannot be read.
pub fn catches(pid: i32, sig: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    sig_caught(&status, sig)
}

fn sig_caught(status: &str, sig: Signal) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig as i32 - 1)) != 0)
}

/// Signals a whole process group; false when the group no longer exists.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    kill(Pid::from_raw(-pgid), sig) != Err(Errno::ESRCH)
}

/// Reaps the run's zombies that were re-parented to us (never `skip`, which tokio owns).
pub fn reap_adopted(procs: &[ProcInfo], skip: Option<i32>) {
    let me = std::process::id() as i32;
    for p in procs {
        if p.ppid == me && p.zombie && Some(p.pid) != skip {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// The live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    snapshot()
        .into_iter()
        .filter(|p| !p.zombie && p.pid != std::process::id() as i32 && p.pgrp == pgid)
        .map(|p| p.pid)
        .collect()
}

/// Whether `pid` runs as a watchdog (`vla-launch __vla-launch-watchdog ...`).
fn is_watchdog(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(WATCHDOG_SUBCOMMAND.as_bytes()))
}

/// The pids in a cgroup's `cgroup.procs` (none when it is gone).
pub fn cgroup_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL to every process in the cgroup: `cgroup.kill` where the kernel has it (5.14+, no
/// process can fork its way out), else each listed pid, a few rounds.
pub fn cgroup_kill(dir: &Path) -> usize {
    let n = cgroup_procs(dir).len();
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for _ in 0..20 {
            let pids = cgroup_procs(dir);
            if pids.is_empty() {
                break;
            }
            signal_all(pids, Signal::SIGKILL);
        }
    }
    n
}

/// Removes a run's cgroup once the kernel has finished its processes (killed ones leave it as
/// they exit, which on a busy machine can take a while): waits on `cgroup.events`, which the
/// kernel marks changed when the group empties, for at most `limit`. `false` if it still holds a
/// process then (it stays, and says so by name).
pub fn remove_group(dir: &Path, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut events = fs::File::open(dir.join("cgroup.events")).ok();
    loop {
        // Reading the file also re-arms its change notification for the poll below.
        if let Some(f) = &mut events {
            let mut text = String::new();
            let _ = io::Seek::rewind(f).and_then(|_| io::Read::read_to_string(f, &mut text));
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Woken by the change; the cap only bounds a change missed between the read and now.
        let step = left.min(Duration::from_millis(100));
        match &events {
            Some(f) => {
                let mut fd = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(f),
                    events: libc::POLLPRI,
                    revents: 0,
                }];
                // SAFETY: poll on one pollfd of an open file.
                unsafe { libc::poll(fd.as_mut_ptr(), 1, step.as_millis() as libc::c_int) };
            }
            None => std::thread::sleep(step.min(Duration::from_millis(10))),
        }
    }
}

/// The cgroup (v2) directory of this process, when the unified hierarchy is mounted.
fn own_cgroup() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... mount-point ... - cgroup2 source options"
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))?
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Removes the empty run groups of launchers that are gone (killed outright without a watchdog):
/// `vla-launch-<pid>-...` whose pid no longer runs. A group still holding processes stays.
fn remove_stale_groups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vla-launch-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// A cgroup made for one run, so that its processes can be found and ended whatever they do to
/// their environment, session or parent (issue 25 items 3-4). Removed when dropped, once empty.
#[derive(Debug)]
pub struct RunCgroup {
    dir: PathBuf,
    procs: CString,
}

impl RunCgroup {
    /// A new child of the launcher's own cgroup; an error where the kernel or the permissions
    /// do not allow it (cgroup v1 only, an unprivileged user outside a delegated subtree).
    pub fn create(marker: &str) -> io::Result<RunCgroup> {
        let parent = own_cgroup().ok_or_else(|| io::Error::other("no cgroup v2 hierarchy"))?;
        remove_stale_groups(&parent);
        let dir = parent.join(format!("vla-launch-{marker}"));
        fs::create_dir(&dir)?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        // Whether a process can be moved in shows at spawn: the supervisor checks that
        // torchrun landed in it, and drops it otherwise.
        Ok(RunCgroup { dir, procs })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's directory, opened: what `clone3(CLONE_INTO_CGROUP)` is given.
    pub fn open(&self) -> io::Result<OwnedFd> {
        Ok(fs::File::open(&self.dir)?.into())
    }

    /// What a child needs to move itself in between fork and exec.
    pub fn enter_fn(&self) -> EnterCgroup {
        EnterCgroup(self.procs.clone())
    }

    pub fn contains(&self, pid: i32) -> bool {
        cgroup_procs(&self.dir).contains(&pid)
    }
}

/// A cgroup's `cgroup.procs` path, prepared before fork.
#[derive(Debug, Clone)]
pub struct EnterCgroup(CString);

impl EnterCgroup {
    /// Moves the calling process into the cgroup. Async-signal-safe (open, write, close on a
    /// path prepared before fork, no allocation): for `pre_exec`.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: open/write/close with a NUL-terminated path and a stack buffer.
        unsafe {
            let fd = libc::open(self.0.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0u8; 16];
            let mut pid = libc::getpid() as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (pid % 10) as u8;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let n = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n < 0 { Err(err) } else { Ok(()) }
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Empty by now unless something was left running: then it stays (and says so by name).
        remove_group(&self.dir, Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_processes_born_after_the_marker_are_read_for_it() {
        let marker = format!("born-after-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(MARKER_VAR, &marker)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = |born_after| {
            let scope = Scope {
                born_after,
                ..Scope::marker_only(&marker)
            };
            members_in_roots(&[], &scope).iter().any(|p| p.pid == pid)
        };
        let (younger, none) = (found(own_start()), found(u64::MAX));
        let everyone = found(0);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(own_start() > 0);
        assert!(younger && everyone, "the marked child must be found");
        assert!(!none, "a cutoff after its start must leave it unread");
    }

    #[test]
    fn a_groups_members_are_read_from_their_stat() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (own, other) = (group_members(pid), group_members(i32::MAX));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(own, [pid]);
        assert!(other.is_empty());
    }

    #[test]
    fn caught_signals_are_read_from_sigcgt() {
        // Bit n-1 is signal n: 0x4a02 = SIGINT (0x2), SIGUSR1 (0x200), SIGUSR2 (0x800), SIGTERM.
        let status = "Name:\tpython\nSigIgn:\t0000000001001000\nSigCgt:\t0000000180004a02\n";
        assert!(sig_caught(status, Signal::SIGUSR1));
        assert!(sig_caught(status, Signal::SIGINT));
        assert!(!sig_caught(status, Signal::SIGHUP));
        assert!(!sig_caught("SigCgt:\t0000000000000000\n", Signal::SIGUSR1));
        assert!(!sig_caught("Name:\tx\n", Signal::SIGUSR1));
        assert!(!catches(i32::MAX, Signal::SIGUSR1));
    }

    #[test]
    fn stat_lines() {
        let cases = [
            ("42 (python3) S 7 42 42 0 -1", Some((42, 7, false))),
            ("43 (pt_main (x) y) Z 1 1 1 0", Some((43, 1, true))),
            ("44 (a b) R 0", Some((44, 0, false))),
            ("garbage", None),
        ];
        for (line, want) in cases {
            let got = parse_stat(line).map(|p| (p.pid, p.ppid, p.zombie));
            assert_eq!(got, want, "{line}");
        }
        let full = "7 (a) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1 2";
        assert_eq!(
            parse_stat(full).map(|p| (p.pgrp, p.start)),
            Some((7, 123456))
        );
    }

    #[test]
    fn descendants_are_found_below_every_thread() {
        let me = std::process::id() as i32;
        // A child of another thread of this process (each test runs on its own thread), and
        // its own child.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let found: Vec<i32> = descendants_of(me, me).iter().map(|p| p.pid).collect();
        let _ = kill(Pid::from_raw(grandchild), Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
        assert!(found.contains(&grandchild), "{found:?}");
    }

    #[test]
    fn the_hosts_oom_kill_count_is_read_where_the_kernel_has_it() {
        // Linux 4.13+ has it; the test machines do.
        if fs::read_to_string("/proc/vmstat").is_ok_and(|t| t.contains("\noom_kill ")) {
            assert!(oom_kill_count().is_some());
        }
    }

    #[test]
    fn a_process_is_known_by_its_start_time_too() {
        let me = std::process::id() as i32;
        let mine = parse_stat(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(mine.start > 0);
        assert!(still_running(ProcId {
            pid: me,
            start: mine.start
        }));
        // The same pid with another start time is another process (a reused pid).
        assert!(!still_running(ProcId {
            pid: me,
            start: mine.start + 1
        }));
    }

    #[test]
    fn descendants_follow_parents_only() {
        let p = |pid, ppid| ProcInfo {
            pid,
            ppid,
            zombie: false,
            pgrp: 0,
            start: 0,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(21, 20)];
        let cases: [(&[i32], &[i32]); 3] = [
            (&[10], &[10, 11, 12]),
            (&[11, 21], &[11, 12, 21]),
            (&[99], &[99]),
        ];
        for (roots, want) in cases {
            let mut got: Vec<i32> = with_descendants(&procs, roots).into_iter().collect();
            got.sort();
            assert_eq!(got, want, "{roots:?}");
        }
    }

    #[test]
    fn a_cgroup_is_removed_once_its_last_process_has_gone() {
        // Led by our pid: a group a failed run of this test leaves is removed by the next launcher.
        let Ok(cg) = RunCgroup::create(&format!("{}-remove-test", std::process::id())) else {
            return eprintln!("skipped: no run cgroup here");
        };
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(cg.dir().join("cgroup.procs"), child.id().to_string()).unwrap();
        let dir = cg.dir().to_path_buf();
        // A process in it: it stays.
        assert!(!remove_group(&dir, Duration::ZERO));
        assert!(dir.exists());
        // Killed while the removal waits: removed as soon as the kernel has finished it (the
        // limit is far beyond any machine's delay; the wait ends on the group's change).
        let remover = std::thread::spawn({
            let dir = dir.clone();
            move || remove_group(&dir, Duration::from_secs(600))
        });
        // A process slow to leave (CI's busy machine): the removal still waits for it after
        // 2 s, where the fixed retries it replaced (1 s in all) had given up and left the group.
        // (A slower machine only gives the waiting removal more to wait for, never a failure.)
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !remover.is_finished(),
            "gave up while a process was still in the group"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(remover.join().unwrap());
        assert!(!dir.exists());
        drop(cg);
    }
}
