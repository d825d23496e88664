//! Both sides: heartbeats on their own timer and reading authenticated lines.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{config::*, shared::*, stop::*};

/// Peer-supplied bytes made safe to print: control characters, quotes and non-ASCII escaped,
/// at most `max` input bytes shown.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes
        .iter()
        .take(max)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

/// Sends `ping` to every authenticated connection every `ping_every`, whatever is read, and
/// takes a connection silent for `silence_limit` for a lost node.
pub(super) fn heartbeat(shared: Arc<Shared>) {
    let t = shared.timing;
    let tick = t.ping_every.min(Duration::from_millis(100));
    let started = Instant::now();
    let mut next = Instant::now() + t.ping_every;
    let mut warned_missing = false;
    loop {
        std::thread::sleep(tick.min(next.saturating_duration_since(Instant::now())));
        if shared.finished.load(Ordering::SeqCst) || shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next += t.ping_every;
        if next < Instant::now() {
            next = Instant::now() + t.ping_every;
        }
        for c in shared.conns() {
            if c.clean_exit.load(Ordering::SeqCst) {
                continue;
            }
            let silent = c
                .last_heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if silent >= t.silence_limit {
                shared.failed(PeerStop {
                    node: c.rank,
                    failure: PeerFailure::Lost {
                        silent_s: silent.as_secs(),
                    },
                    torchrun_exit: None,
                });
                c.shutdown();
                return;
            }
            let _ = c.send("ping");
        }
        if shared.node_rank == 0 && !warned_missing && started.elapsed() > t.connect_warn_after {
            let seen = shared
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let missing: Vec<String> = (1..shared.nnodes)
                .filter(|n| !seen.contains(n))
                .map(|n| n.to_string())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "peer watch: node(s) {} have not connected to node 0 after {} s: if one fails, the others wait for NCCL's timeout. Check that node 0's name resolves to this host on every node, that they use the same --peer-watch-port and job secret ({SECRET_ENV} or the run root's .secrets file)",
                    missing.join(", "),
                    t.connect_warn_after.as_secs()
                );
            }
            warned_missing = true;
        }
    }
}

/// Reads the other side's authenticated lines until it leaves. `Some(cause)` for a failure.
pub(super) fn read_authenticated(
    lines: &mut LineReader,
    conn: &Conn,
    shared: &Shared,
) -> Option<PeerStop> {
    let mut seq = 0u64;
    let mut dropped = 0u64;
    loop {
        if shared.finished.load(Ordering::SeqCst) {
            return None;
        }
        match lines.next_event() {
            Event::Line(l) => {
                let Some(body) = conn.open(&l, seq) else {
                    dropped += 1;
                    if dropped == 1 {
                        tracing::warn!(
                            "peer watch: a line from node {} failed authentication and was dropped",
                            conn.rank
                        );
                    }
                    continue;
                };
                seq += 1;
                *conn.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let words: Vec<&str> = body.split(' ').collect();
                match words[..] {
                    // `exit CODE [TORCHRUN]`: the launcher's status, and torchrun's own code
                    // where it differs.
                    ["exit", code, ref torchrun @ ..] if torchrun.len() <= 1 => {
                        match code.parse::<i32>() {
                            Ok(0) => conn.clean_exit.store(true, Ordering::SeqCst),
                            Ok(c) => {
                                return Some(PeerStop {
                                    node: conn.rank,
                                    failure: PeerFailure::Failed { exit_code: c },
                                    torchrun_exit: torchrun.first().and_then(|t| t.parse().ok()),
                                });
                            }
                            Err(_) => {}
                        }
                    }
                    ["stop", ref rest @ ..] if conn.rank == 0 => {
                        if let Some(s) = PeerStop::parse_wire(rest) {
                            return Some(s);
                        }
                    }
                    _ => {}
                }
            }
            Event::Idle | Event::TooLong => {}
            Event::Closed => {
                return (!conn.clean_exit.load(Ordering::SeqCst)
                    && !shared.finished.load(Ordering::SeqCst))
                .then_some(PeerStop {
                    node: conn.rank,
                    failure: PeerFailure::Gone,
                    torchrun_exit: None,
                });
            }
        }
    }
}

pub(super) enum Event {
    Line(String),
    /// Nothing to read for a moment.
    Idle,
    /// A line longer than [`MAX_LINE`]: dropped, up to its newline.
    TooLong,
    Closed,
}

/// Lines from a socket, read with a bound: never more than [`MAX_LINE`] plus one read buffered.
pub(super) struct LineReader {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) discarding: bool,
}

pub(super) const POLL: Duration = Duration::from_millis(100);

impl LineReader {
    pub(super) fn new(stream: TcpStream) -> LineReader {
        let _ = stream.set_read_timeout(Some(POLL));
        LineReader {
            stream,
            buf: Vec::with_capacity(MAX_LINE + 1024),
            discarding: false,
        }
    }

    pub(super) fn next_event(&mut self) -> Event {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                let line = &line[..line.len() - 1];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return match std::str::from_utf8(line) {
                    Ok(s) if s.is_ascii() => Event::Line(s.to_string()),
                    _ => Event::Line(String::new()),
                };
            }
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.discarding = true;
                return Event::TooLong;
            }
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Event::Closed,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // No whole line yet: back to the caller, whose deadline runs by the clock
                    // however the bytes trickle in.
                    if memchr::memchr(b'\n', &self.buf).is_none() && self.buf.len() <= MAX_LINE {
                        if self.discarding {
                            self.buf.clear();
                        }
                        return Event::Idle;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Event::Idle;
                }
                Err(_) => return Event::Closed,
            }
        }
    }

    /// A whole line before `deadline` (by the clock, however the bytes trickle in), or `None`
    /// (late, too long, closed).
    pub(super) fn line_before(&mut self, deadline: Instant) -> Option<String> {
        while Instant::now() < deadline {
            match self.next_event() {
                Event::Line(l) => return Some(l),
                Event::Idle => {}
                Event::TooLong | Event::Closed => return None,
            }
        }
        None
    }
}
