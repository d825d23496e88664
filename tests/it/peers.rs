//! The peer watch between the launchers of one multi-node job (src/cluster/peers.rs), over real
//! TCP on localhost: a node that fails or vanishes stops the others; a node that finishes
//! normally does not; another job's launcher is turned away.

use crate::peer_proto;

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use vla_launch::cluster::peers::{JobSecret, OnStop, PeerStop, PeerWatch, Timing, WatchJob};

fn job(id: &str) -> WatchJob {
    WatchJob {
        id: id.into(),
        nnodes: 3,
        secret: JobSecret::from_env_value(peer_proto::SECRET).unwrap(),
        timing: Timing::default(),
    }
}

fn recorder() -> (OnStop, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    (
        Arc::new(move |why: PeerStop| {
            let _ = tx.lock().unwrap().send(why.to_string());
        }),
        rx,
    )
}

fn hub() -> (PeerWatch, u16, Receiver<String>) {
    let (on_stop, rx) = recorder();
    let hub = PeerWatch::hub(job("job7"), 0, on_stop).unwrap();
    let port = hub.port().unwrap();
    (hub, port, rx)
}

fn peer(port: u16, rank: u32) -> (PeerWatch, Receiver<String>) {
    let (on_stop, rx) = recorder();
    (
        PeerWatch::peer(job("job7"), rank, "127.0.0.1", port, on_stop).unwrap(),
        rx,
    )
}

/// A hand-made node `rank` with the job's secret, so a test controls exactly what it sends.
fn raw_peer(port: u16, rank: &str) -> peer_proto::Client {
    peer_proto::connect_as(port, peer_proto::SECRET, "job7", rank).unwrap()
}

const SOON: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

/// Gives the peers time to connect and say hello (they do so on their own threads).
fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

#[test]
fn normal_finishes_stop_nobody() {
    let (hub, port, hub_rx) = hub();
    let (p1, p1_rx) = peer(port, 1);
    let (p2, p2_rx) = peer(port, 2);
    settle();
    p1.finish(0);
    assert!(
        hub_rx.recv_timeout(QUIET).is_err(),
        "node 1 finished normally"
    );
    hub.finish(0);
    assert!(
        p2_rx.recv_timeout(QUIET).is_err(),
        "node 0 finished normally"
    );
    p2.finish(0);
    assert!(p1_rx.try_recv().is_err());
}

#[test]
fn a_failed_node_stops_node_0_and_every_other_node() {
    let (hub, port, hub_rx) = hub();
    let (p1, _p1_rx) = peer(port, 1);
    let (p2, p2_rx) = peer(port, 2);
    settle();
    p1.finish(143);
    let why = hub_rx.recv_timeout(SOON).expect("node 0 stops");
    assert_eq!(why, "node 1's training ended with exit 143");
    let why = p2_rx.recv_timeout(SOON).expect("node 2 is told");
    assert_eq!(why, "node 1's training ended with exit 143");
    // Stopping is said once, even as the stopped nodes report their own exits.
    p2.finish(1);
    hub.finish(1);
    assert!(hub_rx.recv_timeout(QUIET).is_err());
}

#[test]
fn a_vanished_launcher_stops_the_job() {
    let (hub, port, hub_rx) = hub();
    let (p2, p2_rx) = peer(port, 2);
    let killed = raw_peer(port, "1");
    settle();
    drop(killed); // SIGKILL: the kernel closes its socket, no `exit` line
    let why = hub_rx.recv_timeout(SOON).expect("node 0 stops");
    assert!(why.contains("node 1's launcher is gone"), "{why}");
    assert!(p2_rx.recv_timeout(SOON).unwrap().contains("node 1"));
    hub.finish(1);
    p2.finish(1);
}

#[test]
fn node_0_failing_or_vanishing_stops_the_peers() {
    let (hub, port, _hub_rx) = hub();
    let (p1, p1_rx) = peer(port, 1);
    settle();
    hub.finish(1);
    assert_eq!(
        p1_rx.recv_timeout(SOON).unwrap(),
        "node 0's training ended with exit 1"
    );
    p1.finish(1);

    // Node 0 gone without a word: a stand-in node 0 that authenticates, then closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (p1, p1_rx) = peer(port, 1);
    let conn = peer_proto::accept_as_hub(&listener, peer_proto::SECRET, "job7");
    drop(conn);
    let why = p1_rx.recv_timeout(SOON).unwrap();
    assert!(why.contains("node 0's launcher is gone"), "{why}");
    p1.finish(1);
}

#[test]
fn a_launcher_of_another_job_is_turned_away_without_stopping_this_one() {
    let (hub, port, hub_rx) = hub();
    let refused = peer_proto::connect_as(port, peer_proto::SECRET, "job8", "1");
    assert!(refused.is_err(), "another job's hello is not welcomed");
    assert!(hub_rx.recv_timeout(QUIET).is_err());
    hub.finish(0);
}

#[test]
fn a_peer_waits_for_node_0_to_come_up() {
    // Pick a free port, then start node 0 on it after the peer.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (p1, p1_rx) = peer(port, 1);
    std::thread::sleep(Duration::from_millis(1500));
    let (on_stop, hub_rx) = recorder();
    let hub = PeerWatch::hub(job("job7"), port, on_stop).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    p1.finish(2);
    assert_eq!(
        hub_rx.recv_timeout(SOON).unwrap(),
        "node 1's training ended with exit 2"
    );
    hub.finish(1);
    assert!(
        p1_rx.recv_timeout(QUIET).is_err(),
        "node 1 already finished"
    );
}

#[test]
fn a_node_stopped_before_its_watch_connected_still_reports_its_failure() {
    for _ in 0..5 {
        let (hub, port, hub_rx) = hub();
        let (p1, _rx) = peer(port, 1);
        p1.finish(3); // at once: connected or not, node 0 must hear it
        assert_eq!(
            hub_rx.recv_timeout(SOON).unwrap(),
            "node 1's training ended with exit 3"
        );
        hub.finish(1);
    }
}
