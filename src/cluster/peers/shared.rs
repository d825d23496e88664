//! What a node's watch threads share, and one authenticated connection.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{config::*, secret::*, stop::*};

pub(super) struct Shared {
    pub(super) job: String,
    pub(super) node_rank: u32,
    pub(super) nnodes: u32,
    /// Set at start, or (node n) by its watch thread once node 0 has created the secret file.
    pub(super) secret: std::sync::OnceLock<JobSecret>,
    pub(super) loader: Mutex<Option<SecretLoader>>,
    pub(super) timing: Timing,
    /// Node n: node 0's `host:port`.
    pub(super) target: Option<String>,
    /// This node's run has ended: losses after this are expected, not failures.
    pub(super) finished: AtomicBool,
    /// Its exit code, set before `finished`.
    pub(super) exit_code: AtomicI32,
    /// `on_stop` already called.
    pub(super) stopped: AtomicBool,
    pub(super) on_stop: OnStop,
    /// Authenticated connections (node 0: one per node; node n: the one to node 0).
    pub(super) conns: Mutex<Vec<Arc<Conn>>>,
    /// Node 0: nodes that have authenticated once.
    pub(super) seen: Mutex<Vec<u32>>,
    /// Node 0: connections in their handshake.
    pub(super) pending: Mutex<Pending>,
    /// Node 0: connections refused so far (only the first few are logged).
    pub(super) refusals: AtomicUsize,
}

/// Finds the job's secret later (node n waiting for node 0's file).
pub(super) type SecretLoader = Box<dyn FnOnce() -> Result<JobSecret, SecretError> + Send>;

pub(super) const OFF: &str = "PEER WATCH OFF: if a node fails, the other nodes' training waits for NCCL's timeout (10 min or more) instead of stopping";

impl Shared {
    /// The secret's bytes; only called once it is known (before any handshake).
    pub(super) fn key(&self) -> &[u8] {
        &self
            .secret
            .get()
            .expect("the secret is known before any handshake")
            .0
    }

    /// Logs a refused connection; a flood of them is not logged line by line.
    pub(super) fn refused(&self, msg: String) {
        match self.refusals.fetch_add(1, Ordering::SeqCst) {
            0..5 => tracing::warn!("{msg}"),
            5 => tracing::warn!("{msg}; further refused connections are not logged"),
            _ => tracing::debug!("{msg}"),
        }
    }

    pub(super) fn stop(&self, why: PeerStop) {
        if self.finished.load(Ordering::SeqCst) || self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        (self.on_stop)(why);
    }

    pub(super) fn conns(&self) -> Vec<Arc<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A peer failed: node 0 tells every other node, then this node stops.
    pub(super) fn failed(&self, why: PeerStop) {
        if self.finished.load(Ordering::SeqCst) || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        if self.node_rank == 0 {
            for c in self.conns() {
                if c.rank != why.node {
                    let _ = c.send(&why.wire());
                }
            }
        }
        self.stop(why);
    }
}

/// One authenticated connection.
pub(super) struct Conn {
    /// The other side's node rank.
    pub(super) rank: u32,
    pub(super) key: [u8; 32],
    /// Direction labels: what this side sends, what it receives.
    pub(super) out_dir: &'static str,
    pub(super) in_dir: &'static str,
    pub(super) writer: Mutex<(TcpStream, u64)>,
    pub(super) last_heard: Mutex<Instant>,
    pub(super) clean_exit: AtomicBool,
}

impl Conn {
    pub(super) fn send(&self, body: &str) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let seq = w.1.to_string();
        let mac = mac_hex(&self.key, &[self.out_dir, &seq, body]);
        w.1 += 1;
        w.0.write_all(format!("{seq} {body} {mac}\n").as_bytes())
    }

    pub(super) fn shutdown(&self) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.0.shutdown(std::net::Shutdown::Both);
    }

    /// The body of an authenticated line with sequence number `seq`, or `None`.
    pub(super) fn open<'a>(&self, line: &'a str, seq: u64) -> Option<&'a str> {
        let (rest, mac) = line.rsplit_once(' ')?;
        let (s, body) = rest.split_once(' ')?;
        (s == seq.to_string() && mac_ok(&self.key, &[self.in_dir, s, body], mac)).then_some(body)
    }
}

/// The connections in their handshake on node 0, by arrival. Each holds a clone of its socket,
/// so that a slot can be taken back (the socket shut down: its thread's read ends at once).
#[derive(Default)]
pub(super) struct Pending {
    pub(super) entries: Vec<PendingEntry>,
    pub(super) next_id: u64,
    /// All slots were found taken once already (a flood; said once).
    pub(super) full_said: bool,
}

pub(super) struct PendingEntry {
    pub(super) id: u64,
    pub(super) ip: std::net::IpAddr,
    pub(super) stream: TcpStream,
}

/// What a newcomer to full handshake slots gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WhenFull {
    /// The slot of the entry at this index (the busiest address's oldest).
    Evict(usize),
    /// Nothing: no address holds more than the newcomer's would.
    Refuse,
}

impl Pending {
    pub(super) fn count(&self, ip: std::net::IpAddr) -> usize {
        self.entries.iter().filter(|e| e.ip == ip).count()
    }

    /// For a newcomer from `ip` when every slot is taken: the oldest handshake of the address
    /// that holds the most, if it holds more than the newcomer's would. Also, the first time,
    /// the busiest address and its count, to warn of the flood (whether or not this newcomer
    /// gets a slot: a flood spread evenly over addresses takes every slot without evicting).
    pub(super) fn when_full(
        &mut self,
        ip: std::net::IpAddr,
    ) -> (WhenFull, Option<(std::net::IpAddr, usize)>) {
        let mut counts: std::collections::HashMap<std::net::IpAddr, usize> =
            std::collections::HashMap::new();
        for e in &self.entries {
            *counts.entry(e.ip).or_default() += 1;
        }
        let Some((&busiest, &most)) = counts.iter().max_by_key(|(_, n)| **n) else {
            return (WhenFull::Refuse, None);
        };
        let say = (!std::mem::replace(&mut self.full_said, true)).then_some((busiest, most));
        let decision = match self.entries.iter().position(|e| e.ip == busiest) {
            Some(at) if most > self.count(ip) + 1 => WhenFull::Evict(at),
            _ => WhenFull::Refuse,
        };
        (decision, say)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, TcpListener};

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    /// Every slot taken: 16 handshakes, `per` from each address from 127.0.0.2 on.
    fn full(per: usize) -> Pending {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut p = Pending::default();
        for id in 0..16u64 {
            p.entries.push(PendingEntry {
                id,
                ip: ip(2 + (id as usize / per) as u8),
                stream: TcpStream::connect(addr).unwrap(),
            });
        }
        p
    }

    /// CI saw a flood from eight addresses take every slot without one warning: the slots were
    /// shared evenly, so no newcomer evicted anything, and the warning came only with an eviction.
    #[test]
    fn a_flood_spread_evenly_is_said_once_though_it_evicts_nothing() {
        let mut p = full(2);
        let (decision, said) = p.when_full(ip(2));
        assert_eq!(decision, WhenFull::Refuse);
        assert_eq!(
            said.map(|(_, most)| most),
            Some(2),
            "said: the busiest holds 2"
        );
        assert_eq!(p.when_full(ip(3)), (WhenFull::Refuse, None), "said once");
        // A newcomer with no handshake of its own takes the oldest slot of a busiest address.
        let (decision, said) = p.when_full(ip(200));
        let WhenFull::Evict(at) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(p.entries[at].id % 2, 0, "the oldest of its address");
        assert_eq!(said, None);
    }

    #[test]
    fn the_address_holding_the_most_gives_up_its_oldest_handshake() {
        let mut p = full(4); // 127.0.0.2-5, four each
        p.entries.truncate(14); // 127.0.0.5 holds two
        p.entries.extend(full(8).entries.drain(..2)); // two more from 127.0.0.2: six
        let (decision, said) = p.when_full(ip(5));
        assert_eq!(decision, WhenFull::Evict(0));
        assert_eq!(said, Some((ip(2), 6)));
    }
}
