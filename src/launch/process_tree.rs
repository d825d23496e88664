//! Finding and ending every process of one run on Linux, including workers that torchrun (or a
//! dataloader) started in a new session, which leave torchrun's process group.
//!
//! A process belongs to the run when it descends from torchrun, or when its environment carries
//! the run's marker variable (set on torchrun, inherited by everything below it). The marker
//! finds new-session grandchildren even after their parent died and they were re-parented: to us
//! when we are a child subreaper, else to init. The launcher being a subreaper also lets it reap
//! them, so a killed worker does not linger as a zombie.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Environment variable that tags every process of one run.
pub const MARKER_VAR: &str = "VLA_LAUNCH_RUN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub zombie: bool,
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
    Some(ProcInfo {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process visible in /proc (they come and go while we read: missing ones are skipped).
pub fn snapshot() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    })
    .collect()
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

/// The run's live processes: descendants of `root` (while it exists) and of every process
/// carrying `MARKER_VAR=marker`. Never includes the launcher itself.
pub fn members(root: Option<i32>, marker: &str) -> Vec<ProcInfo> {
    let procs = snapshot();
    let me = std::process::id() as i32;
    let needle = format!("{MARKER_VAR}={marker}").into_bytes();
    let mut roots: Vec<i32> = root.into_iter().collect();
    roots.extend(
        procs
            .iter()
            .filter(|p| p.pid != me && !p.zombie && has_marker(p.pid, &needle))
            .map(|p| p.pid),
    );
    let set = with_descendants(&procs, &roots);
    procs
        .into_iter()
        .filter(|p| p.pid != me && set.contains(&p.pid))
        .collect()
}

/// Sends `sig` to each pid; returns how many were signalled (gone ones are skipped).
pub fn signal_all(pids: impl IntoIterator<Item = i32>, sig: Signal) -> usize {
    pids.into_iter()
        .filter(|&pid| kill(Pid::from_raw(pid), sig).is_ok())
        .count()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn descendants_follow_parents_only() {
        let p = |pid, ppid| ProcInfo {
            pid,
            ppid,
            zombie: false,
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
}
