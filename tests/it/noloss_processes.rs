//! Issue 25 items 3-4: processes that escape. A run whose torchrun starts processes that wipe
//! their environment (`env -i`, so no marker), double-fork into a session of their own and ignore
//! SIGTERM must leave nothing behind however it ends (exit 0, SIGTERM, SIGHUP, SIGKILL of the
//! launcher at several moments, SIGSTOP then SIGKILL, the watchdog killed first). The launcher
//! finds them through the run's cgroup where it may make one, else as orphans re-parented to it,
//! and its watchdog, after a SIGKILL of the launcher, from the process set it keeps.
//! Every trial waits on events (the launcher's exit, the watchdog's exit), never on a clock
//! except the generous bound of `wait_all_dead`.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use vla_launch::launch::watchdog::SET_FILE_VAR;

use crate::noloss::{
    Reap, launcher, record_outcome, wait_all_dead, wait_exit, wait_ready, watchdogs_of,
};

/// The escaping kinds, beside a worker and a setsid orphan that ignore SIGTERM too.
fn start(dir: &Path, sleep: &str, cgroup: bool, escapes: &str) -> Child {
    let mut c = launcher(
        dir,
        "1",
        &[
            ("FAKE_ESCAPE", escapes),
            ("FAKE_WORKERS", "1"),
            ("FAKE_ORPHANS", "1"),
            ("FAKE_CHILD_TERM", "ignore"),
            ("FAKE_SLEEP", sleep),
        ],
    );
    if !cgroup {
        c.env("VLA_LAUNCH_NO_CGROUP", "1");
    }
    c.env(SET_FILE_VAR, dir.join("tracked"));
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

/// Waits until no watchdog of the run under `dir` is left (it has done its work).
fn wait_watchdogs_gone(dir: &Path) {
    let until = Instant::now() + Duration::from_secs(30);
    while !watchdogs_of(dir).is_empty() {
        assert!(Instant::now() < until, "the watchdog never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    Normal,
    Term,
    Hup,
    /// SIGKILL of the launcher before the fake is ready (its children starting).
    KillEarly,
    KillReady,
    /// SIGKILL while the stop's grace period runs.
    KillStopping,
    StopThenKill,
    WatchdogFirst,
}

fn trial(end: End, cgroup: bool, escapes: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sleep = if matches!(end, End::Normal) {
        "2"
    } else {
        "120"
    };
    let mut child = start(dir.path(), sleep, cgroup, escapes);
    let case = format!("{end:?} cgroup={cgroup} {escapes}");
    if let End::KillEarly = end {
        // As soon as the fake torchrun has started (it writes its pid before its children's).
        let until = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(dir.path().join("pids")).is_err() {
            assert!(Instant::now() < until, "{case}: torchrun never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(child.id(), Signal::SIGKILL);
    } else {
        wait_ready(dir.path(), &mut child);
    }
    let _reap = Reap(read_pids(dir.path()));
    if !cgroup && killed_outright(end) && !matches!(end, End::WatchdogFirst) {
        wait_tracked(dir.path(), &case, None);
    }
    let killed = match end {
        End::Normal => false,
        End::Term => {
            signal(child.id(), Signal::SIGTERM);
            false
        }
        End::Hup => {
            signal(child.id(), Signal::SIGHUP);
            false
        }
        End::KillEarly => true,
        End::KillReady => {
            signal(child.id(), Signal::SIGKILL);
            true
        }
        End::KillStopping => {
            signal(child.id(), Signal::SIGTERM);
            signal(child.id(), Signal::SIGKILL);
            true
        }
        End::StopThenKill => {
            signal(child.id(), Signal::SIGSTOP);
            signal(child.id(), Signal::SIGKILL);
            true
        }
        End::WatchdogFirst => {
            let now = kill_watchdog_and_wait_for_another(dir.path(), &case);
            if !cgroup {
                wait_tracked(dir.path(), &case, Some(now));
            }
            signal(child.id(), Signal::SIGKILL);
            true
        }
    };
    let launcher_pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    wait_watchdogs_gone(dir.path());
    let left = groups_of(launcher_pid);
    assert_eq!(
        left,
        Vec::<String>::new(),
        "{case}: cgroup left, holding {:?}",
        left.iter().map(|g| holding(g)).collect::<Vec<_>>()
    );
    // The escapes may have started after the SIGKILL (KillEarly): read the pids again.
    let pids = read_pids(dir.path());
    let _reap = Reap(pids.clone());
    assert!(
        pids.len() >= 2 || matches!(end, End::KillEarly),
        "{case}: {pids:?}"
    );
    wait_all_dead(&pids, Duration::from_secs(10), &case);
    // The watchdog writes it after a SIGKILL.
    let o = record_outcome(dir.path());
    assert!(
        o.is_object(),
        "{case}: the record has no outcome: {status:?}"
    );
    if killed {
        assert_eq!(o["diagnosis"]["kind"], "LauncherGone", "{case}: {o}");
    }
}

fn killed_outright(end: End) -> bool {
    matches!(
        end,
        End::KillEarly
            | End::KillReady
            | End::KillStopping
            | End::StopThenKill
            | End::WatchdogFirst
    )
}

/// Without a cgroup the watchdog knows the run's processes from its last look (every second):
/// wait until it has seen every process of the fake, so the SIGKILL that follows tests the set
/// and not the second before (docs/noloss.md). `by`: the watchdog that must have written it (a
/// replacement, which tracks anew).
fn wait_tracked(dir: &Path, case: &str, by: Option<i32>) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let want = read_pids(dir);
        let text = std::fs::read_to_string(dir.join("tracked")).unwrap_or_default();
        let writer: Option<i32> = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("watchdog ")?.parse().ok());
        let seen: Vec<i32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if by.is_none_or(|w| writer == Some(w)) && want.iter().all(|p| seen.contains(p)) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{case}: the watchdog never tracked {want:?} (it has {seen:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Returns the new watchdog's pid.
fn kill_watchdog_and_wait_for_another(dir: &Path, case: &str) -> i32 {
    let first = watchdog_pids(dir);
    assert_eq!(first.len(), 1, "{case}: {first:?}");
    kill(Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let now = watchdog_pids(dir);
        if now.len() == 1 && now != first {
            break now[0];
        }
        assert!(
            Instant::now() < until,
            "{case}: no new watchdog after the first was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = crate::noloss::run_log(dir);
    assert!(
        log.contains("the watchdog (pid"),
        "{case}: the loss is not in the log: {log}"
    );
    new
}

fn watchdog_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let zombie = stat[stat.rfind(')')? + 2..].starts_with('Z');
            (!zombie
                && text.contains(vla_launch::launch::watchdog::SUBCOMMAND)
                && text.contains(dir.to_str()?))
            .then_some(pid)
        })
        .collect()
}

/// This process's cgroup v2 directory (where the launchers it starts make their run groups).
fn own_cgroup() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(str::to_string))?
    })?;
    Some(Path::new(&mount).join(rel.trim_start_matches('/')))
}

/// The run groups launcher `pid` left behind.
fn groups_of(pid: u32) -> Vec<String> {
    let Some(dir) = own_cgroup() else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("vla-launch-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// What a leftover run cgroup still holds: each pid with its command line.
fn holding(group: &str) -> Vec<String> {
    let Some(dir) = own_cgroup() else {
        return Vec::new();
    };
    let procs = std::fs::read_to_string(dir.join(group).join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            )
        })
        .collect()
}

/// Whether this machine lets the launcher make a cgroup (cgroup v2, permission to create one).
fn cgroups_here() -> bool {
    let Some(own) = own_cgroup() else {
        return false;
    };
    let probe = own.join(format!("vla-launch-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The process-death matrix of issue 25 with the run in its cgroup: 0 leftovers in every way a
/// run ends. (On today's main the `env -i` and double-forked processes survived all of them.)
#[test]
fn escaped_processes_are_ended_however_the_run_ends() {
    if !cgroups_here() {
        println!("skipped: no cgroup v2 this test may create (the fallback test still runs)");
        return;
    }
    for end in [
        End::Normal,
        End::Term,
        End::Hup,
        End::KillEarly,
        End::KillReady,
        End::KillStopping,
        End::StopThenKill,
        End::WatchdogFirst,
    ] {
        trial(end, true, "envi,daemon");
    }
}

/// Without a cgroup the launcher, a child subreaper, counts every orphan re-parented to it as
/// the run's: while it lives, nothing escapes either. Once it is killed outright, the watchdog
/// still ends an `env -i` process left in torchrun's process group (a double-forked one: the
/// next test).
#[test]
fn without_a_cgroup_orphans_reparented_to_the_launcher_are_ended() {
    for end in [End::Normal, End::Term, End::Hup] {
        trial(end, false, "envi,daemon");
    }
    trial(End::KillReady, false, "envi");
}

/// Issue 25 items 3-4 without a cgroup (not root, no delegation): a process that double-forks
/// into a session of its own with a wiped environment (`env -i`: no marker) is the launcher's
/// (a subreaper) while it lives, and re-parented to init once it is killed outright. The watchdog
/// keeps the run's process set (pid and start time) from the launcher's descendants, so it still
/// ends that process after every SIGKILL of the launcher, the watchdog's replacement included.
/// (On main it survived every one of these.)
#[test]
fn without_a_cgroup_a_double_forked_envi_process_dies_with_a_killed_launcher() {
    for end in [
        End::KillReady,
        End::KillStopping,
        End::StopThenKill,
        End::WatchdogFirst,
    ] {
        trial(end, false, "envi,daemon");
    }
}
