//! Node 0: accepting, bounding and authenticating the other nodes' connections.

use hmac::Mac;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{config::*, secret::*, shared::*, wire::*};

/// Holds one handshake slot; frees it when dropped.
pub(super) struct PendingSlot {
    pub(super) shared: Arc<Shared>,
    id: u64,
}

impl PendingSlot {
    /// A handshake slot for `stream` from `ip`, or `None`. Fair shares, so that no set of
    /// addresses can keep another address out (issue 25 item 10):
    /// - one address holds at most [`MAX_PENDING_PER_ADDRESS`]: more from it are closed at once;
    /// - when all [`MAX_PENDING`] are taken, the newcomer takes the slot of the oldest handshake
    ///   of the address that holds the most, if that address holds more than the newcomer's
    ///   would (its socket is shut down, its thread ends at once). A node of the job has one
    ///   connection, so a flood from other addresses can delay its handshake but never refuse it.
    pub(super) fn take(
        shared: &Arc<Shared>,
        ip: std::net::IpAddr,
        stream: &TcpStream,
    ) -> Option<PendingSlot> {
        let mut p = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mine = p.count(ip);
        if mine >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        if p.entries.len() >= MAX_PENDING {
            let (decision, say) = p.when_full(ip);
            if let Some((busiest, most)) = say {
                tracing::warn!(
                    "peer watch: all {MAX_PENDING} handshake slots taken ({most} by {busiest}): a flood of connections that do not authenticate; the busiest addresses' oldest handshakes are closed to make room, so the job's nodes still get in"
                );
            }
            let WhenFull::Evict(at) = decision else {
                return None;
            };
            let old = p.entries.remove(at);
            let _ = old.stream.shutdown(std::net::Shutdown::Both);
        }
        let clone = stream.try_clone().ok()?;
        let id = p.next_id;
        p.next_id += 1;
        p.entries.push(PendingEntry {
            id,
            ip,
            stream: clone,
        });
        Some(PendingSlot {
            shared: shared.clone(),
            id,
        })
    }

    /// The handshake is done: the slot is freed for another, and the connection can no longer
    /// be taken back. False when it was taken back already (the socket is shut down).
    pub(super) fn release(self) -> bool {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = p.entries.len();
        p.entries.retain(|e| e.id != self.id);
        before != p.entries.len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        p.entries.retain(|e| e.id != self.id);
    }
}

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(10);
    let mut warned = false;
    while !shared.finished.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                backoff = Duration::from_millis(10);
                let Some(slot) = PendingSlot::take(&shared, from.ip(), &stream) else {
                    drop(stream);
                    continue;
                };
                let s = shared.clone();
                // A failed spawn drops the closure, the slot with it.
                let _ = std::thread::Builder::new()
                    .name("vla-peer".into())
                    .spawn(move || serve_peer(stream, from, s, slot));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: the watch stays on, accepting again shortly.
                if !warned {
                    tracing::warn!(
                        "peer watch: accepting a connection failed ({e}); retrying with backoff"
                    );
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // Dropping the listener frees the port (an OOM retry starts a new watch on it).
}

pub(super) fn session_key(shared: &Shared, rank: &str, nonce0: &str, nonce_n: &str) -> [u8; 32] {
    mac_of(
        shared.key(),
        &["session", &shared.job, rank, nonce0, nonce_n],
    )
    .finalize()
    .into_bytes()
    .into()
}

/// Node 0's side of one connection: handshake, then watch the node it authenticated as.
pub(super) fn serve_peer(
    stream: TcpStream,
    from: SocketAddr,
    shared: Arc<Shared>,
    slot: PendingSlot,
) {
    let deadline = Instant::now() + shared.timing.auth_deadline;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut lines = LineReader::new(stream);
    let Ok(nonce0) = random_bytes::<16>().map(|b| hex(&b)) else {
        return;
    };
    if writer
        .write_all(format!("challenge {nonce0}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let Some(hello) = lines.line_before(deadline) else {
        return;
    };
    let Some((rank, rank_text, nonce_n)) = authenticate_hello(&hello, from, &shared, &nonce0)
    else {
        return;
    };
    // Authenticated: from here on the connection is no handshake to take back.
    if !slot.release() {
        return;
    }
    let conn = Arc::new(Conn {
        rank,
        key: session_key(&shared, rank_text, &nonce0, nonce_n),
        out_dir: "to-node",
        in_dir: "to-hub",
        writer: Mutex::new((writer, 0)),
        last_heard: Mutex::new(Instant::now()),
        clean_exit: AtomicBool::new(false),
    });
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        if shared.finished.load(Ordering::SeqCst) {
            return;
        }
        if conns.iter().any(|c| c.rank == rank) {
            shared.refused(format!(
                "peer watch: {from} authenticated as node {rank}, which is connected already: closed (the first connection stays)"
            ));
            return;
        }
        let welcome = mac_hex(
            shared.key(),
            &["welcome", &shared.job, rank_text, &nonce0, nonce_n],
        );
        let sent = conn
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .write_all(format!("welcome {welcome}\n").as_bytes());
        if sent.is_err() {
            return;
        }
        conns.push(conn.clone());
        let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&rank) {
            seen.push(rank);
        }
    }
    tracing::info!("peer watch: node {rank} connected from {from} (authenticated)");
    let why = read_authenticated(&mut lines, &conn, &shared);
    shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| !Arc::ptr_eq(c, &conn));
    if let Some(why) = why {
        shared.failed(why);
    }
}

/// Checks a node's `hello` line against this job, its node count and the job's secret: the
/// rank it proved, with its rank text and nonce as sent; `None` (logged) to close the connection.
fn authenticate_hello<'a>(
    hello: &'a str,
    from: SocketAddr,
    shared: &Shared,
    nonce0: &str,
) -> Option<(u32, &'a str, &'a str)> {
    let words: Vec<&str> = hello.split(' ').collect();
    let ["hello", job, rank_text, nonce_n, mac] = words[..] else {
        tracing::debug!("peer watch: {from} sent no hello: closed");
        return None;
    };
    if job != shared.job {
        tracing::debug!(
            "peer watch: {from} says it belongs to job {}, not {}: closed",
            printable(job.as_bytes(), 40),
            shared.job
        );
        return None;
    }
    let rank = match rank_text.parse::<u32>() {
        Ok(r) if r > 0 && r < shared.nnodes && rank_text == r.to_string() => r,
        _ => {
            shared.refused(format!(
                "peer watch: {from} claimed node rank {} of this {}-node job: closed",
                printable(rank_text.as_bytes(), 20),
                shared.nnodes
            ));
            return None;
        }
    };
    if unhex(nonce_n).is_none_or(|n| n.len() != 16)
        || !mac_ok(
            shared.key(),
            &["hello", &shared.job, rank_text, nonce0, nonce_n],
            mac,
        )
    {
        shared.refused(format!(
            "peer watch: {from} failed authentication as node {rank} (not this job's secret): closed"
        ));
        return None;
    }
    Some((rank, rank_text, nonce_n))
}
