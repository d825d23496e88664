//! Issue 26 item 2: bounds on how much work something takes, measured in CPU time instead of wall
//! time. A thread's CPU time does not grow while other work holds the cores, so a bound on it
//! means the same on an idle machine and on a 2-core machine whose cores are both busy; the wall
//! clock only guards against a hang (a read that blocks forever uses no CPU at all), with the
//! margin a loaded machine needs.

use std::sync::mpsc;
use std::time::Duration;

/// How long a call may block (wall clock) before it counts as hung: far beyond any answer on a
/// loaded machine, far below "forever".
pub const HANG: Duration = Duration::from_secs(120);

/// CPU time the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, ours and alive across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` on the calling thread; its value and the CPU time it used.
pub fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = thread_cpu();
    let v = f();
    (v, thread_cpu().saturating_sub(t0))
}

/// Runs `f` on a thread of its own and fails the test when it used more than `limit` of CPU (a
/// parser gone quadratic), or gave no answer within [`HANG`] (a read that blocks forever).
pub fn within_cpu<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(measured(f));
    });
    let (v, used) = rx
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("no answer within {HANG:?} of wall-clock time: blocked"));
    assert!(
        used <= limit,
        "took {used:?} of CPU time, more than the {limit:?} allowed"
    );
    v
}

#[test]
fn cpu_time_grows_with_work_and_not_with_sleep() {
    let ((), slept) = measured(|| std::thread::sleep(Duration::from_millis(200)));
    assert!(slept < Duration::from_millis(100), "{slept:?}");
    let (_, spun) = measured(|| {
        let t0 = thread_cpu();
        while thread_cpu() - t0 < Duration::from_millis(50) {}
    });
    assert!(spun >= Duration::from_millis(50), "{spun:?}");
}
