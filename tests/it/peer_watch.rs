//! Issue 13 (items 1-4): the peer watch never stops a healthy job, nobody without the job's
//! secret can stop, flood or squat it, node 0 refuses taken ports, and node names that do not
//! resolve are said loudly. Real TCP on 127.0.0.1, with the watch's intervals shortened.

use crate::common::Vla;
use crate::peer_proto;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vla_launch::cluster::peers::{
    self, JobSecret, MAX_PENDING, NodeWatch, OnStop, PeerFailure, PeerStop, PeerWatch, Timing,
    WatchJob,
};

/// 20 ms pings, 1.5 s silence limit (75 periods: 2 busy cores can stall a thread for a while),
/// 1 s to authenticate.
fn fast() -> Timing {
    Timing {
        ping_every: Duration::from_millis(20),
        silence_limit: Duration::from_millis(1500),
        auth_deadline: Duration::from_secs(1),
        connect_warn_after: Duration::from_secs(60),
    }
}

fn secret() -> JobSecret {
    JobSecret::from_env_value(peer_proto::SECRET).unwrap()
}

fn job(id: &str, nnodes: u32) -> WatchJob {
    WatchJob {
        id: id.into(),
        nnodes,
        secret: secret(),
        timing: fast(),
    }
}

fn recorder() -> (OnStop, Receiver<PeerStop>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    (
        Arc::new(move |why: PeerStop| {
            let _ = tx.lock().unwrap().send(why);
        }),
        rx,
    )
}

struct Job {
    hub: PeerWatch,
    hub_rx: Receiver<PeerStop>,
    port: u16,
    peers: Vec<(PeerWatch, Receiver<PeerStop>)>,
}

fn start_job(id: &str, nnodes: u32) -> Job {
    let (on_stop, hub_rx) = recorder();
    let hub = PeerWatch::hub(job(id, nnodes), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let peers = (1..nnodes)
        .map(|r| {
            let (on_stop, rx) = recorder();
            (
                PeerWatch::peer(job(id, nnodes), r, "127.0.0.1", port, on_stop).unwrap(),
                rx,
            )
        })
        .collect();
    Job {
        hub,
        hub_rx,
        port,
        peers,
    }
}

impl Job {
    /// No node was stopped so far.
    fn assert_healthy(&self, what: &str) {
        if let Ok(why) = self.hub_rx.try_recv() {
            panic!("{what}: node 0 stopped: {why}");
        }
        for (i, (_, rx)) in self.peers.iter().enumerate() {
            if let Ok(why) = rx.try_recv() {
                panic!("{what}: node {} stopped: {why}", i + 1);
            }
        }
    }

    /// Node 1 reports a failure: node 0 must hear it at once (the watch still works), with
    /// the cause as data; then everyone finishes.
    fn finish_with_node_1_failing(self, code: i32) {
        let mut peers = self.peers.into_iter();
        let (p1, _) = peers.next().unwrap();
        p1.finish(code);
        let why = self
            .hub_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("node 0 hears node 1's failure");
        assert_eq!(
            why,
            PeerStop {
                node: 1,
                failure: PeerFailure::Failed { exit_code: code },
                torchrun_exit: None,
            }
        );
        for (p, rx) in peers {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), why);
            p.finish(143);
        }
        self.hub.finish(143);
    }
}

/// Item 1: two and four launchers over 200+ heartbeat periods: 0 stops. (Before, a side pinged
/// only after its own read timed out, so one side could fall silent and be declared lost.)
#[test]
fn healthy_jobs_of_2_and_4_nodes_are_never_stopped() {
    let jobs = [start_job("soak2", 2), start_job("soak4", 4)];
    let periods = 250;
    std::thread::sleep(fast().ping_every * periods);
    for j in &jobs {
        j.assert_healthy(&format!("{periods} heartbeat periods"));
    }
    for j in jobs {
        j.finish_with_node_1_failing(5);
    }
}

/// Item 1, the cause: each side pings on its own timer, even when the other side talks more
/// often than that (before, a side pinged only when its own read timed out, so a chatty side kept
/// the other one silent until it was declared lost).
#[test]
fn both_sides_ping_on_their_own_timer_however_often_the_other_talks() {
    let periods = 200u32;
    let chatty = |c: &mut peer_proto::Client| {
        // Talk every half period; count the other side's pings meanwhile.
        c.stream
            .set_read_timeout(Some(fast().ping_every / 2))
            .unwrap();
        let mut pings = 0;
        let until = Instant::now() + fast().ping_every * periods;
        while Instant::now() < until {
            c.send("ping").unwrap();
            if let Some(b) = c.recv_ready() {
                pings += u32::from(b == "ping");
            }
        }
        pings
    };
    // Node 0's side, against a chatty node 1.
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("chat", 2), 0, on_stop).unwrap();
    let mut c =
        peer_proto::connect_as(hub.port().unwrap(), peer_proto::SECRET, "chat", "1").unwrap();
    let from_hub = chatty(&mut c);
    assert!(rx.try_recv().is_err());
    hub.finish(0);
    // Node 1's side, against a chatty node 0.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (on_stop, rx) = recorder();
    let p1 = PeerWatch::peer(job("chat", 2), 1, "127.0.0.1", port, on_stop).unwrap();
    let mut c = peer_proto::accept_as_hub(&listener, peer_proto::SECRET, "chat");
    let from_node = chatty(&mut c);
    assert!(rx.try_recv().is_err());
    p1.finish(0);
    // 2 busy cores may delay some; half of them must come.
    assert!(
        from_hub >= periods / 2 && from_node >= periods / 2,
        "pings in {periods} periods: from node 0 {from_hub}, from node 1 {from_node}"
    );
}

/// A node that authenticates and then falls silent is lost after the silence limit, and the
/// cause says which node and how.
#[test]
fn a_silent_node_is_lost_after_the_silence_limit() {
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("silent", 2), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let t0 = Instant::now();
    let _mute = peer_proto::connect_as(port, peer_proto::SECRET, "silent", "1").unwrap();
    let why = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(why.node, 1);
    assert!(matches!(why.failure, PeerFailure::Lost { .. }), "{why:?}");
    assert!(t0.elapsed() >= fast().silence_limit, "{:?}", t0.elapsed());
    hub.finish(143);
}

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until the other side closes; how long that took (`None`: not within 5 s).
fn closed_within(mut s: TcpStream) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(t0.elapsed());
            }
            Err(_) => return None,
        }
    }
}

/// Item 2: the old protocol's forgeries, and forged lines in the new one, stop nobody.
#[test]
fn forged_exit_and_stop_lines_stop_nobody() {
    let j = start_job("forge", 2);
    std::thread::sleep(Duration::from_millis(300));
    // What stopped both nodes before: `hello JOB 1` + `exit 1`, and `stop <ANSI>`.
    let mut s = raw(j.port);
    s.write_all(b"hello forge 1\nexit 1\nstop \x1b[31mpwned\x1b[0m\n")
        .unwrap();
    assert!(closed_within(s).is_some(), "closed, unauthenticated");
    // A new-style hello with a made-up MAC, then MAC-less and badly MACed lines.
    let mut s = raw(j.port);
    s.write_all(
        format!(
            "hello forge 1 {} {}\n0 exit 1 {}\n",
            "ab".repeat(16),
            "cd".repeat(32),
            "ef".repeat(32)
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(closed_within(s).is_some());
    // With a wrong secret.
    assert!(
        peer_proto::connect_as(
            j.port,
            "wrong-secret-wrong-secret-wrong-secret",
            "forge",
            "1"
        )
        .is_err()
    );
    std::thread::sleep(Duration::from_millis(500));
    j.assert_healthy("forged lines");
    j.finish_with_node_1_failing(7);
}

/// Item 2: a hello for a rank the job does not have is refused even with the secret, and an
/// authenticated node's connection is never replaced by a second one for its rank.
#[test]
fn bad_ranks_and_second_connections_for_a_rank_are_refused() {
    let j = start_job("ranks", 2);
    std::thread::sleep(Duration::from_millis(300));
    for rank in ["0", "2", "99", "01", "-1", "4294967296"] {
        let r = peer_proto::connect_as(j.port, peer_proto::SECRET, "ranks", rank);
        assert!(r.is_err(), "rank {rank} welcomed");
    }
    // Node 1 is connected: a second node 1 (even one with the secret) is turned away.
    let second = peer_proto::connect_as(j.port, peer_proto::SECRET, "ranks", "1");
    assert!(second.is_err(), "a second node 1 was welcomed");
    std::thread::sleep(Duration::from_millis(300));
    j.assert_healthy("bad ranks");
    // The real node 1's connection is still the one node 0 listens to.
    j.finish_with_node_1_failing(9);
}

/// Item 2: replaying an authenticated line, or injecting one with a wrong sequence number or
/// MAC, is dropped.
#[test]
fn replayed_and_injected_lines_are_dropped() {
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("replay", 3), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let mut c = peer_proto::connect_as(port, peer_proto::SECRET, "replay", "1").unwrap();
    c.send("ping").unwrap();
    // Replay of line 0 (seq 0 again), a skipped sequence number, a bad MAC.
    c.seq_out = 0;
    c.send("exit 3").unwrap();
    c.seq_out = 5;
    c.send("exit 3").unwrap();
    c.stream
        .write_all(format!("1 exit 3 {}\n", "00".repeat(32)).as_bytes())
        .unwrap();
    // Another connection's line cannot be spliced in either (other session key).
    let mut other = peer_proto::connect_as(port, peer_proto::SECRET, "replay", "2").unwrap();
    other.send("ping").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "a replayed or forged exit stopped node 0"
    );
    // The right next line still counts.
    c.seq_out = 1;
    c.send("exit 3").unwrap();
    let why = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(why.exit_code(), Some(3));
    drop(other);
    hub.finish(143);
}

/// Tests that measure the whole process (RSS, threads) must not count the other tests of this
/// binary, which run side by side: such a test re-runs itself alone in a child process.
/// Returns true in that child (run the body), false in the parent (the child passed).
fn in_own_process(test: &str) -> bool {
    const KEY: &str = "VLA_TEST_OWN_PROCESS";
    if std::env::var(KEY).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(KEY, test)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the test did not run in its own process: {text}"
    );
    false
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Threads of the watch (named vla-peer*), across every watch of this test process.
fn watch_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vla-peer"))
        })
        .count()
}

/// Item 2: a silent hello, a trickling one and garbage are closed by the clock
/// (`auth_deadline`), not kept; nothing stops.
#[test]
fn silent_trickling_and_garbage_connections_are_closed_by_the_clock() {
    let j = start_job("slow", 2);
    std::thread::sleep(Duration::from_millis(300));
    let deadline = fast().auth_deadline;
    let silent = raw(j.port);
    let trickle = raw(j.port);
    let trickler = {
        let mut t = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            // One byte every 50 ms, never a newline: every read returns data.
            for _ in 0..200 {
                if t.write_all(b"h").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let mut garbage = raw(j.port);
    let noise: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = garbage.write_all(&noise);
    for (what, s) in [
        ("silent", silent),
        ("trickling", trickle),
        ("garbage", garbage),
    ] {
        let took = closed_within(s).unwrap_or_else(|| panic!("{what} connection kept open"));
        assert!(
            took <= deadline + Duration::from_millis(1500),
            "{what}: closed after {took:?}"
        );
    }
    assert!(
        trickler.join().unwrap(),
        "the trickler's writes end in an error"
    );
    j.assert_healthy("slow connections");
    j.finish_with_node_1_failing(11);
}

/// Item 2: 100 MiB without a newline neither grows node 0's memory nor stops anything: the
/// connection is cut as soon as the line is over the limit.
#[test]
fn a_100_mib_line_is_cut_off_and_memory_stays_bounded() {
    if !in_own_process("peer_watch::a_100_mib_line_is_cut_off_and_memory_stays_bounded") {
        return;
    }
    let j = start_job("big", 2);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    let mut s = raw(j.port);
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..100 {
        match s.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    let grew = rss_kib().saturating_sub(before);
    assert!(
        sent < 100 << 20,
        "all 100 MiB were taken in ({sent} bytes): the watch read them"
    );
    assert!(grew < 16 * 1024, "RSS grew by {grew} KiB");
    j.assert_healthy("100 MiB line");
    j.finish_with_node_1_failing(12);
}

/// Item 2: 2000 connections at once: the excess is closed at once, the watch's threads stay
/// under a fixed bound, the job goes on and node 0 still hears node 1 at once.
#[test]
fn two_thousand_connections_neither_stop_nor_swamp_the_job() {
    if !in_own_process("peer_watch::two_thousand_connections_neither_stop_nor_swamp_the_job") {
        return;
    }
    let j = start_job("flood", 2);
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib();
    let mut held = Vec::new();
    let mut max_watch_threads = 0;
    let mut max_threads = 0;
    for i in 0..2000 {
        match TcpStream::connect(("127.0.0.1", j.port)) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connection {i}: {e}"),
        }
        if i % 100 == 0 {
            max_watch_threads = max_watch_threads.max(watch_threads());
            max_threads = max_threads.max(threads());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    max_watch_threads = max_watch_threads.max(watch_threads());
    max_threads = max_threads.max(threads());
    // Every watch of this test process (tests run side by side): each holds at most
    // MAX_PENDING handshakes + its nodes + accept and heartbeat threads.
    assert!(
        max_watch_threads <= 6 * (MAX_PENDING + 8),
        "{max_watch_threads} watch threads"
    );
    eprintln!(
        "2000 connections: at most {max_threads} threads in the test process, {max_watch_threads} of them the watch's"
    );
    assert!(
        max_threads < 100,
        "{max_threads} threads in the test process"
    );
    let grew = rss_kib().saturating_sub(rss_before);
    assert!(grew < 64 * 1024, "RSS grew by {grew} KiB");
    j.assert_healthy("2000 connections held");
    // Most were closed by node 0 at once (no challenge, straight EOF).
    let closed_at_once = held
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut b = [0u8; 64];
            matches!((&mut &**s).read(&mut b), Ok(0))
        })
        .count();
    assert!(
        closed_at_once > 1000,
        "only {closed_at_once} closed at once"
    );
    drop(held);
    j.finish_with_node_1_failing(13);
}

/// Items 2/3: a launcher of another job on the same port (jobs whose ids differ by 9000 derive
/// the same port), with its own secret, neither stops this job nor is stopped by it.
#[test]
fn another_jobs_launcher_on_the_same_port_stops_nobody() {
    let (on_stop, hub_rx) = recorder();
    let hub = PeerWatch::hub(job("1234", 2), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let other = WatchJob {
        id: "10234".into(),
        nnodes: 2,
        secret: JobSecret::from_env_value("another-jobs-secret-another-jobs-secret").unwrap(),
        timing: fast(),
    };
    let (on_stop, other_rx) = recorder();
    let stranger = PeerWatch::peer(other, 1, "127.0.0.1", port, on_stop).unwrap();
    // Same job id but another secret (a squatter that guessed the id): refused too.
    let squat = WatchJob {
        id: "1234".into(),
        ..job("x", 2)
    };
    let squat = WatchJob {
        secret: JobSecret::from_env_value("a-squatter-guessing-the-job-id-only").unwrap(),
        ..squat
    };
    let (on_stop, squat_rx) = recorder();
    let squatter = PeerWatch::peer(squat, 1, "127.0.0.1", port, on_stop).unwrap();
    std::thread::sleep(fast().silence_limit + Duration::from_millis(500));
    assert!(hub_rx.try_recv().is_err());
    assert!(
        other_rx.try_recv().is_err(),
        "the other job's node was stopped"
    );
    assert!(squat_rx.try_recv().is_err());
    hub.finish(1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        other_rx.try_recv().is_err(),
        "node 0's exit reached another job"
    );
    stranger.finish(0);
    squatter.finish(0);
}

/// Item 3: something squatting the watch port as node 0 (accepting, answering garbage or
/// nothing) cannot stop a node; the node keeps trying.
#[test]
fn a_squatter_on_node_0s_port_cannot_stop_a_node() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (on_stop, rx) = recorder();
    let p1 = PeerWatch::peer(job("sq", 2), 1, "127.0.0.1", port, on_stop).unwrap();
    for reply in [
        &b"stop you\n"[..],
        b"challenge zz\n0 stop 0 failed 1 00\n",
        b"",
    ] {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(reply);
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(rx.try_recv().is_err(), "a squatter stopped node 1");
    p1.finish(0);
}

fn node_watch(dir: &std::path::Path, rank: u32, port: u16) -> NodeWatch {
    NodeWatch {
        job_id: "55".into(),
        nnodes: 2,
        node_rank: rank,
        host: "127.0.0.1".into(),
        port,
        env_secret: None,
        secrets_dir: dir.join("vla-launch/.secrets"),
        secret_wait: Duration::from_secs(2),
        timing: fast(),
    }
}

/// The secret file: node 0 creates it 0600 in a 0700 directory, node 1 reads it; a file others
/// can read is refused; without a secret the watch does not run.
#[test]
fn the_secret_file_is_private_and_required() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let w0 = node_watch(dir.path(), 0, 0);
    let s0 = peers::job_secret(&w0).unwrap();
    let file = JobSecret::file_path(&w0.secrets_dir, "55");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&w0.secrets_dir), 0o700);
    let w1 = node_watch(dir.path(), 1, 0);
    let s1 = peers::job_secret(&w1).unwrap();
    assert_eq!(format!("{s0:?}"), "JobSecret(..)", "never printed");
    // Same secret on both: they authenticate each other.
    let (on_stop, rx0) = recorder();
    let hub = PeerWatch::hub(
        WatchJob {
            id: "55".into(),
            nnodes: 2,
            secret: s0,
            timing: fast(),
        },
        0,
        on_stop,
    )
    .unwrap();
    let port = hub.port().unwrap();
    let (on_stop, _rx1) = recorder();
    let p1 = PeerWatch::peer(
        WatchJob {
            id: "55".into(),
            nnodes: 2,
            secret: s1,
            timing: fast(),
        },
        1,
        "127.0.0.1",
        port,
        on_stop,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p1.finish(21);
    assert_eq!(
        rx0.recv_timeout(Duration::from_secs(5))
            .unwrap()
            .exit_code(),
        Some(21)
    );
    hub.finish(143);
    // Readable by others: refused, naming the file and the fix.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = peers::job_secret(&w1).unwrap_err().to_string();
    assert!(
        e.contains("job-55.key") && e.contains("644") && e.contains("fix"),
        "{e}"
    );
    // No file within the wait: no secret, and the watch does not start.
    let empty = tempfile::tempdir().unwrap();
    let w1 = node_watch(empty.path(), 1, 1);
    let e = peers::job_secret(&w1).unwrap_err().to_string();
    assert!(e.contains(peers::SECRET_ENV), "{e}");
    let (on_stop, _) = recorder();
    let t0 = Instant::now();
    let late = peers::start_node_watch(&w1, on_stop)
        .unwrap()
        .expect("waits on its own thread");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "training held up"
    );
    late.finish(0);
    // A short environment secret is refused naming the variable.
    let e = JobSecret::from_env_value("short").unwrap_err().to_string();
    assert!(e.contains(peers::SECRET_ENV) && e.contains("32"), "{e}");
}

/// Node 1 may get to its watch before node 0 has created the secret file: its watch waits for
/// the file on its own thread, then authenticates; node 0 then hears node 1's failure.
#[test]
fn a_node_started_before_the_secret_file_exists_joins_once_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut w1 = node_watch(dir.path(), 1, port);
    w1.secret_wait = Duration::from_secs(10);
    let (on_stop, _rx1) = recorder();
    let p1 = peers::start_node_watch(&w1, on_stop).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (on_stop, rx0) = recorder();
    let hub = peers::start_node_watch(&node_watch(dir.path(), 0, port), on_stop)
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    p1.finish(17);
    assert_eq!(
        rx0.recv_timeout(Duration::from_secs(5))
            .unwrap()
            .exit_code(),
        Some(17)
    );
    hub.finish(143);
}

/// Item 3: node 0 refuses a taken watch port or rendezvous port, naming the flag.
#[test]
fn node_0_refuses_taken_ports_naming_the_flag() {
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut w = node_watch(dir.path(), 0, port);
    w.env_secret = Some(peer_proto::SECRET.into());
    let (on_stop, _) = recorder();
    let e = peers::start_node_watch(&w, on_stop).err().expect("refused");
    assert_eq!((e.flag, e.port), ("--peer-watch-port", port));
    assert!(e.to_string().contains("--peer-watch-port PORT"), "{e}");
    let e = peers::check_rendezvous_port(port).unwrap_err();
    assert!(e.to_string().contains("--rdzv-port"), "{e}");
    drop(taken);
    // A free port passes. Another test may take the port just freed (tests run in parallel), so
    // try fresh ones: a check that refused free ports would fail every time.
    let passed = (0..20).any(|_| {
        let p = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        peers::check_rendezvous_port(p).is_ok()
    });
    assert!(
        passed,
        "check_rendezvous_port refused 20 ports that were just free"
    );
}

/// Item 4: a node name that does not resolve, or that resolves elsewhere than node 0 itself,
/// is said at start with the fix.
#[test]
fn unresolvable_or_foreign_node_names_are_warned_about() {
    let w = peers::rendezvous_host_warning("no-such-node.invalid", 20015, 1).unwrap();
    assert!(
        w.contains("does not resolve") && w.contains("--rdzv-endpoint"),
        "{w}"
    );
    // TEST-NET-1: routable-looking, never this machine.
    let w = peers::rendezvous_host_warning("192.0.2.1", 20015, 0).unwrap();
    assert!(w.contains("none of them this machine's"), "{w}");
    assert!(peers::rendezvous_host_warning("127.0.0.1", 20015, 0).is_none());
    assert!(peers::rendezvous_host_warning("localhost", 20015, 1).is_none());
}

// --- The launcher binary -------------------------------------------------------------------

fn launcher(dir: &std::path::Path) -> std::process::Command {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Vla::new();
    for v in [
        "VLA_LAUNCH_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "MASTER_ADDR",
        "NNODES",
        "NODE_RANK",
        peers::SECRET_ENV,
    ] {
        c.env_remove(v);
    }
    c.env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", dir.join("cache"))
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", dir)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=warn")
        .current_dir(root)
        .args(["--profile", "aloha", "--gpus", "1xh100", "--grace", "2"])
        .arg("--torchrun")
        .arg(root.join("tests/fixtures/fake_torchrun"));
    c.into_command()
}

fn slurm_node(c: &mut std::process::Command, job: &str, rank: &str) {
    c.env("SLURM_JOB_ID", job)
        .env("SLURM_NNODES", "2")
        .env("SLURM_NODEID", rank)
        .env("SLURM_JOB_NODELIST", "127.0.0.1,localhost");
}

/// Item 3: node 0 with its rendezvous port (or watch port) taken exits 4 naming the flag,
/// before torchrun starts.
#[test]
fn the_launcher_exits_4_when_node_0s_ports_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let record = dir.path().join("fake.json");
    for (flag, other) in [
        ("--rdzv-port", "--peer-watch-port"),
        ("--peer-watch-port", "--rdzv-port"),
    ] {
        let free = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = launcher(dir.path());
        slurm_node(&mut c, "880", "0");
        let out = c
            .args([flag, &port, other, &free.to_string()])
            .arg("--log-dir")
            .arg(dir.path().join("logs"))
            .env("FAKE_RECORD", &record)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{flag}: {err}");
        assert!(err.contains(flag) && err.contains(&port), "{err}");
        assert!(!record.exists(), "torchrun was started");
    }
}

/// Item 4: on Slurm's node 0, torchrun is told to host the rendezvous store itself
/// (`--rdzv-conf is_host=1`, torchrun 2.x spelling), so node names that are not the host's own
/// name still work; the other nodes are told not to (issue 25 item 12: where node 0's name
/// resolves to a local address, another node's torchrun would race node 0 to host it).
#[test]
fn slurm_node_0_hosts_the_rendezvous_store() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = |rank: &str| {
        let mut c = launcher(dir.path());
        slurm_node(&mut c, "881", rank);
        let out = c.arg("--dry-run").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(cmd("0").contains("--rdzv-conf is_host=1"), "{}", cmd("0"));
    assert!(cmd("1").contains("--rdzv-conf is_host=0"), "{}", cmd("1"));
}

/// Item 2: `accept` failing (EMFILE: the process is out of file descriptors) does not turn the
/// watch off: it retries with backoff, and once descriptors are free again a node connects and
/// its failure stops node 0. Runs in a child process of this test binary, whose fd soft limit it
/// lowers to 64 (only the child's).
#[test]
fn accept_errors_are_retried_and_the_watch_stays_on() {
    if std::env::var_os("VLA_PEER_WATCH_EMFILE_CHILD").is_some() {
        return emfile_child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peer_watch::accept_errors_are_retried_and_the_watch_stays_on",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VLA_PEER_WATCH_EMFILE_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("EMFILE seen"), "{text}");
    assert!(
        text.contains("accepting a connection failed") && text.contains("retrying"),
        "accept never failed, the test proves nothing: {text}"
    );
}

/// The child's log, kept to wait on (and copied to stderr for the parent's checks).
#[derive(Clone, Default)]
struct SharedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl SharedLog {
    /// Whether the log holds `needle` by the end of `wait`.
    fn within(&self, needle: &str, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            if String::from_utf8_lossy(&self.0.lock().unwrap()).contains(needle) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn emfile_child() {
    let log = SharedLog::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("vla_launch=debug")
        .init();
    let lim = libc::rlimit {
        rlim_cur: 64,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let lim = libc::rlimit {
            rlim_max: old.rlim_max,
            ..lim
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("emfile", 2), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    // Use up the descriptors: connections (each also costs node 0 one when accepted), then
    // plain files, until the process has none left.
    let mut hog: Vec<Box<dyn std::any::Any>> = Vec::new();
    while let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
        hog.push(Box::new(s));
    }
    // Now a connection queued on the listener makes accept fail with EMFILE... if one can still
    // be made: free one descriptor for the client side only. Node 0 closes the hog connections
    // that never authenticate (its handshake bound), which gives descriptors back, and on a busy
    // machine that can happen first: so take back whatever is free and queue another, until node
    // 0 says its accept failed (the event; the bound only catches a hang).
    let mut queued = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(Box::new(f));
        }
        hog.pop();
        queued.extend(TcpStream::connect(("127.0.0.1", port)).ok());
        if log.within("accepting a connection failed", Duration::from_millis(500)) {
            break;
        }
        assert!(Instant::now() < until, "accept never failed with EMFILE");
    }
    println!("EMFILE seen: {} descriptors held", hog.len());
    drop(hog);
    drop(queued);
    let (on_stop, _rx1) = recorder();
    let p1 = PeerWatch::peer(job("emfile", 2), 1, "127.0.0.1", port, on_stop).unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    while hub.joined() != [1] || p1.joined() != [0] {
        assert!(Instant::now() < until, "node 1 never joined after EMFILE");
        std::thread::sleep(Duration::from_millis(20));
    }
    p1.finish(23);
    let why = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("node 0's watch still accepts after EMFILE");
    assert_eq!(why.exit_code(), Some(23));
    hub.finish(143);
}

/// End to end, two real launchers without VLA_LAUNCH_JOB_SECRET (node 0 creates the secret file
/// under the shared run root, node 1 reads it): node 1's torchrun dies of SIGABRT (its launcher
/// exits 134), node 0 is stopped and its run record keeps the cause as data: node 1, failed,
/// node 1's exit code.
#[test]
fn a_peer_stop_is_recorded_with_its_structured_cause() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string()
    };
    let (rdzv, watch) = (free(), free());
    let node = |rank: &str, fake: &[(&str, &str)]| {
        let mut c = launcher(dir.path());
        slurm_node(&mut c, "4545", rank);
        c.args(["--rdzv-port", &rdzv, "--peer-watch-port", &watch])
            .arg("--log-dir")
            .arg(dir.path().join(format!("logs{rank}")))
            .envs(fake.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let n0 = node("0", &[("FAKE_SLEEP", "60")]);
    let n1 = node("1", &[("FAKE_SLEEP", "3"), ("FAKE_EXIT_SIGNAL", "6")]);
    let o1 = n1.wait_with_output().unwrap();
    let t0 = Instant::now();
    let o0 = n0.wait_with_output().unwrap();
    let e0 = String::from_utf8_lossy(&o0.stderr);
    assert_eq!(
        o1.status.code(),
        Some(134),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "node 0 ran on: {e0}"
    );
    assert!(e0.contains("node 1's training ended with exit 134"), "{e0}");
    // Issue 25 item 14: a job without the secret variable is told what that costs, once.
    assert_eq!(
        e0.matches("VLA_LAUNCH_JOB_SECRET is not set").count(),
        1,
        "{e0}"
    );
    let record = std::fs::read_dir(dir.path().join("logs0"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("plan-"))
        .unwrap();
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    assert_eq!(
        rec["outcome"]["stopped_by_peer_cause"],
        serde_json::json!({"node": 1, "kind": "failed", "exit_code": 134})
    );
    let secrets = dir.path().join("vla-launch/.secrets");
    assert!(
        secrets.join("job-4545.key").is_file(),
        "node 0 made the secret file"
    );
}

/// A TCP connection to 127.0.0.1:`port` from the source address 127.0.0.`last`.
fn connect_from(last: u8, port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |a: [u8; 4], p: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: p.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, valid sockaddr_in pointers and lengths; the fd is owned by the
    // TcpStream (or closed) afterwards.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let src = sin([127, 0, 0, last], 0);
        let dst = sin([127, 0, 0, 1], port);
        if libc::bind(fd, (&raw const src).cast(), len) != 0
            || libc::connect(fd, (&raw const dst).cast(), len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Item 2: one outsider holding every handshake slot it can (from one address) does not keep a
/// node from another address out.
#[test]
fn one_address_cannot_take_every_handshake_slot() {
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("slots", 2), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outsider = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Keep 2 x MAX_PENDING silent connections from 127.0.0.2, reopening as node 0
            // closes them.
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                held.retain(|s| {
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 128];
                    !matches!((&mut &*s).read(&mut b), Ok(0))
                });
                while held.len() < 2 * MAX_PENDING {
                    match connect_from(2, port) {
                        Ok(s) => held.push(s),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut welcomed = 0;
    for _ in 0..5 {
        if let Ok(c) = peer_proto::connect_as(port, peer_proto::SECRET, "slots", "1") {
            welcomed += 1;
            // Dropping it stops node 0 (node 1 gone), as a real node's loss would: only the
            // handshake getting through matters here.
            drop(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    outsider.join().unwrap();
    assert_eq!(welcomed, 1, "node 1 never got a handshake slot");
    let _ = rx.recv_timeout(Duration::from_secs(5));
    hub.finish(0);
}

/// Issue 25 item 10: 1,000 hostile handshakes a second from 8 local addresses (127.0.0.2-9),
/// each holding its connections silent, do not keep node 1 out of the watch: it joins, and a
/// failure it reports still reaches node 0.
#[test]
fn a_handshake_flood_from_eight_addresses_does_not_keep_a_node_out() {
    let (on_stop, hub_rx) = recorder();
    // A real job's 10 s to authenticate: the flood's connections hold their slots that long.
    let mut slow = job("flood8", 2);
    slow.timing.auth_deadline = Duration::from_secs(10);
    let hub = PeerWatch::hub(slow.clone(), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    let flood = Flood::start(port);
    // The flood is on before node 1 starts.
    while flood.made() < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (on_stop, _p1_rx) = recorder();
    let p1 = PeerWatch::peer(slow, 1, "127.0.0.1", port, on_stop).unwrap();
    let joined = Instant::now();
    while hub.joined() != [1] || p1.joined() != [0] {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "node 1 kept out of the watch for 60 s by {} hostile connections",
            flood.made()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "node 1 joined {:?} after it started, {} hostile connections so far",
        joined.elapsed(),
        flood.made()
    );
    p1.finish(7);
    let why = hub_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("node 1's failure reaches node 0 under the flood");
    assert_eq!(why.exit_code(), Some(7), "{why}");
    drop(flood);
    hub.finish(1);
}

/// Issue 25 item 11: the ports of a job are `20000 + id mod 9000` (rendezvous) and 10000 less
/// (watch), and a pending job's id is public (squeue): another user who binds both before the job
/// starts must not fail it. With the job's secret (the shipped sbatch makes one) the ports are
/// derived from it, which other users cannot read: two real launchers start, join the watch and
/// finish with 0 while squatters hold the predictable ports.
#[test]
fn squatters_on_the_predictable_ports_do_not_fail_a_job_with_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    // A job id whose two predictable ports this test can hold (another suite on the same machine
    // may hold those of a fixed id).
    let (job_id, squat) = (4646..4646 + 500)
        .find_map(|id| {
            let predictable = vla_launch::cluster::port_for_job(&id.to_string());
            let squat: Vec<TcpListener> = [predictable, predictable - 10_000]
                .iter()
                .filter_map(|p| TcpListener::bind(("0.0.0.0", *p)).ok())
                .collect();
            (squat.len() == 2).then(|| (id.to_string(), squat))
        })
        .expect("a job id with both predictable ports free");
    let job_id = job_id.as_str();
    let predictable = vla_launch::cluster::port_for_job(job_id);
    let secret = "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f";
    let node = |rank: &str| {
        let mut c = launcher(dir.path());
        slurm_node(&mut c, job_id, rank);
        c.arg("--log-dir")
            .arg(dir.path().join(format!("logs{rank}")))
            .env(peers::SECRET_ENV, secret)
            .env("RUST_LOG", "vla_launch=info")
            .env("FAKE_SLEEP", "2")
            .env("FAKE_RECORD", dir.path().join(format!("seen{rank}.json")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let (n0, n1) = (node("0"), node("1"));
    let (o0, o1) = (
        n0.wait_with_output().unwrap(),
        n1.wait_with_output().unwrap(),
    );
    let (e0, e1) = (
        String::from_utf8_lossy(&o0.stderr),
        String::from_utf8_lossy(&o1.stderr),
    );
    assert_eq!(o0.status.code(), Some(0), "node 0: {e0}");
    assert_eq!(o1.status.code(), Some(0), "node 1: {e1}");
    assert!(e0.contains("peer watch: node 1 connected"), "{e0}");
    assert!(e1.contains("connected to node 0"), "{e1}");
    let endpoint = |rank: &str| {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("seen{rank}.json"))).unwrap(),
        )
        .unwrap();
        let argv = v["argv"].as_array().unwrap().clone();
        let i = argv.iter().position(|a| a == "--rdzv-endpoint").unwrap();
        argv[i + 1].as_str().unwrap().to_string()
    };
    assert_eq!(endpoint("0"), endpoint("1"), "the nodes agree");
    assert!(
        !endpoint("0").ends_with(&format!(":{predictable}")),
        "{}",
        endpoint("0")
    );
    drop(squat);
}

/// Hostile clients on 127.0.0.2-9: 1,000 connections a second in all to `port` on 127.0.0.1,
/// each held silent until the other side closes it (never closed first), up to 64 an address.
/// Connections refused (nothing listens yet) are retried at the same rate. Stops when dropped.
pub(crate) struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    made: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    pub(crate) fn start(port: u16) -> Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (2..=9u8)
            .map(|last| {
                let (stop, made) = (stop.clone(), made.clone());
                std::thread::spawn(move || {
                    let mut held: Vec<TcpStream> = Vec::new();
                    let start = Instant::now();
                    let mut n = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        // 125 a second from each address: 1,000 a second in all.
                        let due = start + Duration::from_millis(8) * n;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        n += 1;
                        held.retain(|s| {
                            s.set_nonblocking(true).unwrap();
                            let mut b = [0u8; 128];
                            match (&mut &*s).read(&mut b) {
                                Ok(0) => false, // closed by node 0
                                Ok(_) => true,  // its challenge: stay silent
                                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                            }
                        });
                        if held.len() < 64
                            && let Ok(s) = connect_from(last, port)
                        {
                            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            held.push(s);
                        }
                    }
                })
            })
            .collect();
        Flood {
            stop,
            made,
            threads,
        }
    }

    /// Connections made so far.
    pub(crate) fn made(&self) -> usize {
        self.made.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Issue 25 item 14: a node whose torchrun exited 3 (its launcher exits 1, "training failed")
/// is named with torchrun's real code on every node, node 2 (told by node 0) included.
#[test]
fn a_failed_node_is_named_with_its_torchruns_real_exit_code() {
    let j = start_job("realcode", 3);
    let mut peers = j.peers.into_iter();
    let (p1, _) = peers.next().unwrap();
    let (p2, rx2) = peers.next().unwrap();
    while j.hub.joined().len() < 2 || p1.joined().is_empty() || p2.joined().is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    p1.finish_reporting(1, 3);
    for why in [
        j.hub_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        rx2.recv_timeout(Duration::from_secs(10)).unwrap(),
    ] {
        assert_eq!(
            why.exit_code(),
            Some(1),
            "the launcher's status decides the job's"
        );
        assert_eq!(why.torchrun_exit, Some(3));
        let said = why.to_string();
        assert!(said.contains("exited with 3"), "{said}");
        assert!(!said.contains("ended with exit 1"), "{said}");
    }
    p2.finish(143);
    j.hub.finish(143);
}
