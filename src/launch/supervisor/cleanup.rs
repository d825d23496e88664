//! Ending what is left of a run: SIGKILL to the group and every member, leftovers after torchrun.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::launch::log::LogSender;
use crate::launch::process_tree::{self, Scope};

/// Deadlines further away than this are treated as "never" (no arithmetic can overflow).
pub(super) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, saturating at [`FAR_FUTURE`] (a `--grace` of u64::MAX seconds must not panic).
pub(super) fn after<I: std::ops::Add<Duration, Output = I> + Copy>(now: I, d: Duration) -> I {
    now + d.min(FAR_FUTURE)
}

/// SIGKILL to torchrun's group, its cgroup and every member of the run, until none is left.
pub(super) fn kill_run(root: Option<i32>, scope: &Scope) -> usize {
    if let Some(pgid) = root {
        process_tree::signal_group(pgid, Signal::SIGKILL);
    }
    let mut killed = scope.cgroup.as_deref().map_or(0, process_tree::cgroup_kill);
    // A member may fork while we kill; a few rounds catch the late ones.
    for _ in 0..50 {
        let live: Vec<i32> = process_tree::members_in(root, scope)
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
    process_tree::reap_adopted(&process_tree::members_in(None, scope), root);
    killed
}

/// Ends whatever of the run is still alive after torchrun exited: SIGTERM, `grace`, SIGKILL.
/// Returns how many there were and whether SIGKILL was needed.
pub(super) async fn end_leftovers(
    scope: &Scope,
    grace: Duration,
    notes: &LogSender,
) -> (usize, bool) {
    let live = |scope: &Scope| -> Vec<i32> {
        let members = process_tree::members_in(None, scope);
        process_tree::reap_adopted(&members, None);
        members
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| p.pid)
            .collect()
    };
    let first = live(scope);
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
        while Instant::now() < until && !live(scope).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let needed_kill = kill_run(None, scope) > 0;
    // Give the kernel a moment to turn them into zombies we can reap.
    for _ in 0..20 {
        if live(scope).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (first.len(), needed_kill)
}
