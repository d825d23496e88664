//! Peer watch: the launchers of one multi-node job stop together.
//!
//! torchrun's c10d rendezvous forms the job, but once training runs nothing tells the other
//! nodes that one node's launcher is gone (killed, crashed, its node lost): their workers wait in
//! an NCCL collective for ranks that will never answer until NCCL's timeout, ten minutes or more
//! of every GPU of the job. So the launchers keep a small side channel of their own, beside
//! torchrun's (which they do not touch): node 0's launcher listens on the watch port, every other
//! node's launcher holds one TCP connection to it.
//!
//! Line protocol (ASCII, one message per line):
//! - node n -> node 0: `hello JOB_ID n`, then `ping` every few seconds, and `exit CODE` when its
//!   torchrun has ended.
//! - node 0 -> node n: `ping`, `exit CODE` when node 0's torchrun has ended, `stop REASON` when
//!   another node failed.
//!
//! A node stops its own run (as if it had received SIGTERM: torchrun gets it, then the grace
//! period) when: a peer reports a non-zero exit, a peer's connection ends without an `exit`
//! line (SIGKILL, crash), nothing arrives for [`SILENCE_LIMIT`] (a lost node), or node 0 says
//! `stop`. A peer that reports `exit 0` finished its part normally and is let go.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often each side writes `ping` (and wakes up to check for silence).
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// No line for this long: the other side is taken for lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// The watch port for a rendezvous port: 10000 below it (the derived rendezvous ports are
/// 20000-28999, so 10000-18999, clear of torchrun's 29400/29500 and the ephemeral range), or
/// 10000 above a rendezvous port too low for that.
pub fn watch_port(rdzv_port: u16) -> u16 {
    if rdzv_port > 11_024 {
        rdzv_port - 10_000
    } else {
        rdzv_port.saturating_add(10_000)
    }
}

/// Called once, with a sentence saying why, when this node's run must stop.
pub type OnStop = Arc<dyn Fn(String) + Send + Sync>;

/// A running watch; [`PeerWatch::finish`] reports this node's exit to the others.
pub struct PeerWatch {
    shared: Arc<Shared>,
    /// Node 0: the port it listens on.
    port: Option<u16>,
}

struct Shared {
    job: String,
    node_rank: u32,
    /// Node n: node 0's `host:port`.
    target: Option<String>,
    /// This node's run has ended: losses after this are expected, not failures.
    finished: AtomicBool,
    /// Its exit code, set before `finished`.
    exit_code: AtomicI32,
    /// `on_stop` already called.
    stopped: AtomicBool,
    on_stop: OnStop,
    /// Node 0: one writer per connected peer (node rank, stream). Node n: the one to node 0.
    writers: Mutex<Vec<(u32, Arc<Mutex<TcpStream>>)>>,
}

impl Shared {
    fn stop(&self, why: String) {
        if self.finished.load(Ordering::SeqCst) || self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        (self.on_stop)(why);
    }

    fn send_all(&self, line: &str, except: Option<u32>) {
        let writers = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (rank, w) in writers {
            if Some(rank) != except {
                let _ = send(&w, line);
            }
        }
    }
}

fn send(w: &Mutex<TcpStream>, line: &str) -> io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    s.write_all(format!("{line}\n").as_bytes())
}

impl PeerWatch {
    /// Node 0: listen on `port` (all interfaces) for the other nodes' launchers.
    pub fn hub(job: &str, port: u16, on_stop: OnStop) -> io::Result<PeerWatch> {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        let mut watch = PeerWatch::new(job, 0, None, on_stop);
        watch.port = Some(listener.local_addr()?.port());
        let shared = watch.shared.clone();
        std::thread::Builder::new()
            .name("vla-launch-peers".into())
            .spawn(move || accept_loop(listener, shared))?;
        Ok(watch)
    }

    /// Node `node_rank` > 0: connect to node 0's launcher at `host:port`, retrying until it
    /// answers (it may start later than this node) or this run ends.
    pub fn peer(
        job: &str,
        node_rank: u32,
        host: &str,
        port: u16,
        on_stop: OnStop,
    ) -> io::Result<PeerWatch> {
        let target = format!("{host}:{port}");
        let watch = PeerWatch::new(job, node_rank, Some(target.clone()), on_stop);
        let shared = watch.shared.clone();
        std::thread::Builder::new()
            .name("vla-launch-peers".into())
            .spawn(move || peer_loop(&target, shared))?;
        Ok(watch)
    }

    /// Node 0: the port it listens on (the one asked for, or the one given for port 0).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn new(job: &str, node_rank: u32, target: Option<String>, on_stop: OnStop) -> PeerWatch {
        PeerWatch {
            port: None,
            shared: Arc::new(Shared {
                job: job.to_string(),
                node_rank,
                target,
                finished: AtomicBool::new(false),
                exit_code: AtomicI32::new(0),
                stopped: AtomicBool::new(false),
                on_stop,
                writers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// This node's torchrun ended with `exit_code`: tell the other side(s) and close.
    pub fn finish(self, exit_code: i32) {
        self.shared.exit_code.store(exit_code, Ordering::SeqCst);
        self.shared.finished.store(true, Ordering::SeqCst);
        let never_connected = self
            .shared
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if let (true, Some(target)) = (never_connected, &self.shared.target) {
            // Stopped before the watch connected (node 0's launcher came up later): a failure
            // must still reach node 0, so say it on a short-lived connection.
            if exit_code != 0 {
                if let Some(mut s) = connect(target, Duration::from_secs(2)) {
                    let _ = s.write_all(
                        format!(
                            "hello {} {}\nexit {exit_code}\n",
                            self.shared.job, self.shared.node_rank
                        )
                        .as_bytes(),
                    );
                }
            }
            return;
        }
        self.shared.send_all(&format!("exit {exit_code}"), None);
        let writers = std::mem::take(
            &mut *self
                .shared
                .writers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (_, w) in writers {
            let s = w.lock().unwrap_or_else(|p| p.into_inner());
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.finished.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("vla-launch-peer".into())
                    .spawn(move || serve_peer(stream, from, shared));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::warn!("peer watch: accepting connections failed ({e}); it is off now");
                return;
            }
        }
    }
    // Dropping the listener frees the port (an OOM retry starts a new watch on it).
}

/// Node 0's side of one peer connection.
fn serve_peer(stream: TcpStream, from: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let Ok(writer) = stream.try_clone().map(|s| Arc::new(Mutex::new(s))) else {
        return;
    };
    let mut lines = Lines::new(stream);
    let connected = Instant::now();
    let rank = loop {
        match lines.next_line() {
            Line::Text(l) => match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["hello", job, rank] if job == shared.job => match rank.parse::<u32>() {
                    Ok(r) => break r,
                    Err(_) => return,
                },
                ["hello", job, _] => {
                    // Not a failure of this job: that launcher is told, this run goes on.
                    tracing::warn!(
                        "peer watch: {from} belongs to job {job}, not {}: ignored",
                        shared.job
                    );
                    let _ = send(
                        &writer,
                        "stop a launcher of another job answered on this port",
                    );
                    return;
                }
                _ => return,
            },
            Line::Quiet if connected.elapsed() < SILENCE_LIMIT => {}
            _ => return,
        }
    };
    tracing::debug!("peer watch: node {rank} connected from {from}");
    shared
        .writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((rank, writer.clone()));
    let why = watch_lines(&mut lines, &writer, &shared, &format!("node {rank}"));
    shared
        .writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(r, _)| *r != rank);
    if let Some(why) = why {
        shared.send_all(&format!("stop {why}"), Some(rank));
        shared.stop(why);
    }
}

/// A peer's loop: connect, say hello, then watch node 0.
fn peer_loop(target: &str, shared: Arc<Shared>) {
    let started = Instant::now();
    let mut warned = false;
    let stream = loop {
        if shared.finished.load(Ordering::SeqCst) {
            return;
        }
        if let Some(s) = connect(target, Duration::from_secs(2)) {
            break s;
        }
        if !warned && started.elapsed() > Duration::from_secs(120) {
            tracing::warn!(
                "peer watch: node 0's launcher does not answer at {target}; if a node fails, the others will wait for NCCL's timeout"
            );
            warned = true;
        }
        // Often at first (the launchers start together), then every second.
        std::thread::sleep(if started.elapsed() < Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        });
    };
    let Ok(writer) = stream.try_clone().map(|s| Arc::new(Mutex::new(s))) else {
        return;
    };
    if send(
        &writer,
        &format!("hello {} {}", shared.job, shared.node_rank),
    )
    .is_err()
    {
        return;
    }
    shared
        .writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((0, writer.clone()));
    if shared.finished.load(Ordering::SeqCst) {
        // Finished while connecting: finish() may have missed this writer.
        let code = shared.exit_code.load(Ordering::SeqCst);
        let _ = send(&writer, &format!("exit {code}"));
        return;
    }
    let mut lines = Lines::new(stream);
    if let Some(why) = watch_lines(&mut lines, &writer, &shared, "node 0") {
        shared.stop(why);
    }
}

fn connect(target: &str, timeout: Duration) -> Option<TcpStream> {
    let addr = target.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&addr, timeout).ok()
}

/// Reads the other side's lines until it leaves. `Some(reason)` when that means a failure.
fn watch_lines(
    lines: &mut Lines,
    writer: &Mutex<TcpStream>,
    shared: &Shared,
    who: &str,
) -> Option<String> {
    let mut last_heard = Instant::now();
    let mut clean_exit = false;
    loop {
        match lines.next_line() {
            Line::Text(l) => {
                last_heard = Instant::now();
                let mut words = l.splitn(2, ' ');
                match (words.next(), words.next()) {
                    (Some("exit"), Some(code)) => match code.trim().parse::<i32>() {
                        Ok(0) => clean_exit = true,
                        Ok(c) => return Some(format!("{who}'s training ended with exit {c}")),
                        Err(_) => {}
                    },
                    (Some("stop"), Some(why)) => return Some(why.to_string()),
                    _ => {}
                }
            }
            Line::Quiet => {
                if shared.finished.load(Ordering::SeqCst) {
                    return None;
                }
                if last_heard.elapsed() >= SILENCE_LIMIT {
                    return Some(format!(
                        "{who}'s launcher has not been heard from for {} s (node lost?)",
                        SILENCE_LIMIT.as_secs()
                    ));
                }
                if send(writer, "ping").is_err() && !clean_exit {
                    return Some(format!("{who}'s launcher is gone (connection lost)"));
                }
            }
            Line::Closed => {
                return (!clean_exit && !shared.finished.load(Ordering::SeqCst))
                    .then(|| format!("{who}'s launcher is gone without reporting an exit"));
            }
        }
    }
}

enum Line {
    Text(String),
    /// Nothing for [`PING_EVERY`]: time to ping and check for silence.
    Quiet,
    Closed,
}

struct Lines {
    reader: BufReader<TcpStream>,
    partial: String,
}

impl Lines {
    fn new(stream: TcpStream) -> Lines {
        let _ = stream.set_read_timeout(Some(PING_EVERY));
        Lines {
            reader: BufReader::new(stream),
            partial: String::new(),
        }
    }

    fn next_line(&mut self) -> Line {
        match self.reader.read_line(&mut self.partial) {
            Ok(0) => Line::Closed,
            Ok(_) if self.partial.ends_with('\n') => {
                let line = std::mem::take(&mut self.partial);
                Line::Text(line.trim_end().to_string())
            }
            // A line cut by the timeout: the rest comes with the next read.
            Ok(_) => Line::Quiet,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Line::Quiet
            }
            Err(_) => Line::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_ports_stay_clear_of_rendezvous_ports() {
        assert_eq!(watch_port(20_000), 10_000);
        assert_eq!(watch_port(28_999), 18_999);
        assert_eq!(watch_port(29_400), 19_400);
        assert_eq!(watch_port(5_000), 15_000);
        assert_eq!(watch_port(65_535), 55_535);
    }
}
