//! The real-signal path: the test process itself receives SIGINT / SIGTERM / SIGHUP (as the
//! launcher would from a terminal or a scheduler) with `forward_process_signals` on. Its own
//! test binary, so the process-wide handlers cannot disturb other tests.

#[path = "it/supervisor_support.rs"]
mod supervisor_support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use supervisor_support::{Fixture, assert_all_dead};

#[test]
fn real_signals_to_the_launcher_stop_the_whole_run() {
    let grace = Duration::from_millis(1500);
    // One run per signal, in sequence: the handlers are process-wide.
    for (sig, on_stop, force) in [
        (Signal::SIGINT, "exit", false),
        (Signal::SIGTERM, "ignore", true),
        (Signal::SIGHUP, "slow:0.3", false),
    ] {
        let fx = Fixture::new(&[
            ("FAKE_ON_STOP", on_stop),
            ("FAKE_WORKERS", "1"),
            ("FAKE_ORPHANS", "2"),
            ("FAKE_SLEEP", "60"),
        ]);
        let mut opts = fx.options(grace);
        opts.forward_process_signals = true;
        let (_handle, thread) = fx.start(opts);
        let pids = fx.wait_ready();
        let sent = Instant::now();
        kill(Pid::this(), sig).unwrap();
        let o = thread.join().unwrap().unwrap();
        let took = sent.elapsed();
        assert_all_dead(&pids, &format!("{sig}"));
        // Only a missing SIGKILL matters (the fake sleeps 60 s); a loaded machine needs room.
        assert!(took <= grace + Duration::from_secs(20), "{sig}: {took:?}");
        assert_eq!(o.interrupted_by, Some(sig as i32), "{sig}");
        assert_eq!(o.force_killed, force, "{sig}");
        let log = String::from_utf8_lossy(&fx.read("run.log")).into_owned();
        assert!(
            log.contains(&format!("{sig} received: forwarded to torchrun")),
            "{log}"
        );
    }
}
