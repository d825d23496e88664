//! torchrun's output relayed as bytes: every byte to the log, to the terminal while it keeps up.

use std::fs::File;
use std::io::{self, IsTerminal as _, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::launch::log::{LogSender, Stream};
use crate::launch::status::Tracker;

use super::cleanup::after;

/// Bytes waiting for a slow terminal before further chunks are dropped there.
pub(super) const TERMINAL_BACKLOG: usize = 8 << 20;

/// How long the terminal thread, after a write, lets further output gather before the next one:
/// a script printing 100 lines a second costs 20 writes and wake-ups instead of 100 of each,
/// and a hand-off that needs no system call at all; a lone line is still written at once.
const TERMINAL_LINGER: Duration = Duration::from_millis(50);

/// Output waiting that ends the linger at once (a flood is written as fast as the terminal
/// takes it, as without the linger).
const LINGER_BYTES: usize = 64 * 1024;

pub(super) const READ_CHUNK: usize = 256 * 1024;

pub(super) const PIPE_SIZE: libc::c_int = 1 << 20;

/// After a small read, how long the next waits: the lines a script prints meanwhile stay in
/// the pipe and come with one read, one log write and one hand-off (100 lines a second cost
/// 20 wake-ups instead of 100). A lone line is still relayed as it comes; a flood's reads are
/// large and do not wait, so the pipe never fills for it.
const READ_PAUSE: Duration = Duration::from_millis(50);

/// Reads smaller than this that end a line are followed by [`READ_PAUSE`], while the stream
/// is slow.
const SMALL_READ: usize = 16 * 1024;

/// At most this much may come, at the stream's rate so far, during a pause: the pipe must not
/// fill while the relay waits (8 writers of 4 KiB lines would block on it), and a flood's reads
/// catch up with its writers without waiting.
const PAUSE_BYTES: usize = 64 * 1024;

/// Where relayed output goes besides the log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The launcher's own stdout.
    Stdout,
    /// The launcher's own stderr.
    Stderr,
    /// A file (created or truncated); used by tests and benchmarks.
    File(PathBuf),
    Discard,
}

/// How the relay reaches the terminal (or whatever the launcher's stdout and stderr are).
pub(super) enum TerminalQueue {
    /// A terminal or a pipe, which may stall (Ctrl-S, a pager not reading): a thread writes,
    /// and chunks beyond its backlog are dropped there, so that training never waits on it.
    Thread(Feeder),
    /// A regular file, which does not stall: the reader writes it itself, one write per read,
    /// with no thread to wake (batch jobs' output, Slurm's `--output` file).
    Inline(InlineSink),
}

/// The bytes on their way from a relay to its terminal thread: the relay appends each chunk
/// (never waiting on the terminal) and wakes the thread only when it waits for output; the
/// thread takes everything there is per write.
struct Handoff {
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    thread: ThreadState,
    /// The relay is done: the thread writes what is left and ends.
    closed: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ThreadState {
    /// Writing, or about to look for output: nobody needs to wake it.
    #[default]
    Busy,
    /// Waiting for output: the next chunk wakes it.
    Idle,
    /// Letting output gather after a write: woken once [`LINGER_BYTES`] wait.
    Lingering,
}

impl Handoff {
    fn new() -> Arc<Handoff> {
        Arc::new(Handoff {
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next bytes to write, all of them, into `batch`; `false` once closed and drained.
    fn take(&self, batch: &mut Vec<u8>) -> bool {
        let mut w = self.lock();
        while w.bytes.is_empty() {
            if w.closed {
                return false;
            }
            w.thread = ThreadState::Idle;
            w = self.wake.wait(w).unwrap_or_else(|p| p.into_inner());
        }
        w.thread = ThreadState::Busy;
        std::mem::swap(&mut w.bytes, batch);
        true
    }

    /// Lets output gather for up to [`TERMINAL_LINGER`] (not once the relay is done).
    fn linger(&self) {
        let mut w = self.lock();
        if w.closed || w.bytes.len() >= LINGER_BYTES {
            return;
        }
        w.thread = ThreadState::Lingering;
        let (mut w, _) = self
            .wake
            .wait_timeout_while(w, TERMINAL_LINGER, |w| {
                !w.closed && w.thread == ThreadState::Lingering
            })
            .unwrap_or_else(|p| p.into_inner());
        w.thread = ThreadState::Busy;
    }
}

/// The relay's end of a [`Handoff`]; dropping it lets the thread finish.
pub(super) struct Feeder(Arc<Handoff>);

impl Feeder {
    /// Hands `chunk` on (taken whole when nothing waits, else copied: `chunk` may come back
    /// emptied); `false` when the terminal is that far behind and it is dropped there.
    fn offer(&self, chunk: &mut Vec<u8>) -> bool {
        let mut w = self.0.lock();
        if !w.bytes.is_empty() && w.bytes.len() + chunk.len() > TERMINAL_BACKLOG {
            return false;
        }
        if w.bytes.is_empty() {
            // A flood's chunk moves without a copy: the thread took all there was.
            std::mem::swap(&mut w.bytes, chunk);
        } else {
            w.bytes.extend_from_slice(chunk);
        }
        let wake = match w.thread {
            ThreadState::Idle => true,
            ThreadState::Lingering => w.bytes.len() >= LINGER_BYTES,
            ThreadState::Busy => false,
        };
        if wake {
            w.thread = ThreadState::Busy;
        }
        drop(w);
        if wake {
            self.0.wake.notify_one();
        }
        true
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_one();
    }
}

/// A relay's own writer to a regular file. (A writer thread for a flood's large reads, so
/// that the copy and the log are written at once on two cores, cost more CPU time than it saved
/// wall time on the shared 2-core VM: own CPU 288 against 231 ms for the block shape.)
pub(super) struct InlineSink {
    out: Box<dyn Write + Send>,
    end_last_line: bool,
    last: u8,
    broken: bool,
}

impl InlineSink {
    fn write(&mut self, chunk: &[u8]) {
        if !self.broken {
            self.broken = self
                .out
                .write_all(chunk)
                .and_then(|()| self.out.flush())
                .is_err();
        }
        self.last = chunk.last().copied().unwrap_or(self.last);
    }
}

impl Drop for InlineSink {
    fn drop(&mut self) {
        if self.end_last_line && !self.broken && self.last != b'\n' {
            let _ = self.out.write_all(b"\n").and_then(|()| self.out.flush());
        }
    }
}

/// Whether `fd` is a regular file.
fn is_regular_file(fd: libc::c_int) -> bool {
    // SAFETY: fstat fills the struct we pass; an invalid fd only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG }
}

/// The writer of `sink`: inline for a regular file, else a thread with its queue; `None` when
/// the sink discards.
pub(super) fn terminal_writer(
    sink: &Sink,
    progress: Option<Arc<Tracker>>,
) -> io::Result<(Option<TerminalQueue>, Option<JoinHandle<()>>)> {
    // The status line belongs on the launcher's own terminal, never in a file.
    let status =
        progress.filter(|t| t.shows_status() && matches!(sink, Sink::Stdout | Sink::Stderr));
    let mut file_is_regular = false;
    let mut out: Box<dyn Write + Send> = match sink {
        Sink::Discard => return Ok((None, None)),
        // Flushed after every chunk: a `\r` progress update must appear now, not at the next `\n`.
        Sink::Stdout => Box::new(io::stdout()),
        Sink::Stderr => Box::new(io::stderr()),
        Sink::File(path) => {
            let file = File::create(path)?;
            // A FIFO (a stalled reader, in the tests) is no regular file.
            file_is_regular = is_regular_file(file.as_raw_fd());
            Box::new(file)
        }
    };
    // The launcher's own lines follow on stderr (and, on a terminal, after stdout's): a last
    // line the script left unterminated there is ended, so they do not run together.
    let end_last_line = match sink {
        Sink::Stderr => true,
        Sink::Stdout => io::stdout().is_terminal(),
        _ => false,
    };
    let regular = match sink {
        Sink::Stdout => is_regular_file(libc::STDOUT_FILENO),
        Sink::Stderr => is_regular_file(libc::STDERR_FILENO),
        Sink::File(_) => file_is_regular,
        Sink::Discard => false,
    };
    if regular && status.is_none() {
        return Ok((
            Some(TerminalQueue::Inline(InlineSink {
                out,
                end_last_line,
                last: b'\n',
                broken: false,
            })),
            None,
        ));
    }
    let handoff = Handoff::new();
    let theirs = handoff.clone();
    let thread = std::thread::Builder::new()
        .name("vla-launch-relay".into())
        .spawn(move || {
            // A closed terminal (EPIPE) must not stop the training: keep draining the queue.
            let mut broken = false;
            let mut last = b'\n';
            let mut batch = Vec::new();
            while theirs.take(&mut batch) {
                broken = broken
                    || match &status {
                        Some(t) => t.write_terminal(&mut out, &batch),
                        None => out.write_all(&batch).and_then(|()| out.flush()),
                    }
                    .is_err();
                last = batch.last().copied().unwrap_or(last);
                batch.clear();
                theirs.linger();
            }
            if let Some(t) = &status {
                t.clear_terminal();
            }
            if end_last_line && !broken && last != b'\n' {
                let _ = out.write_all(b"\n").and_then(|()| out.flush());
            }
        })?;
    Ok((Some(TerminalQueue::Thread(Feeder(handoff))), Some(thread)))
}

pub(super) async fn join_within(threads: [Option<JoinHandle<()>>; 2], timeout: Duration) {
    let until = after(Instant::now(), timeout);
    for t in threads.into_iter().flatten() {
        while !t.is_finished() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Copies one pipe to the log (every byte) and the terminal (if it keeps up) until EOF.
///
/// One read, up to [`READ_CHUNK`] bytes, is one chunk: its records are written to the log here,
/// at once, and the chunk itself is appended to what waits for the terminal thread, or written
/// here too when the launcher's output is a regular file. A line that comes alone is relayed at
/// once; after a small read of a slow stream the next waits [`READ_PAUSE`], so that a script
/// printing many lines a second costs one wake-up, read and log write per pause, not per line
/// (their log records share the time of that read). In a flood the pipe
/// (enlarged to [`PIPE_SIZE`]) fills while a chunk is handled, so the reads, the log writes and
/// the hand-offs grow with it, and large reads do not wait.
pub(super) async fn relay(
    pipe: OwnedFd,
    stream: Stream,
    log: LogSender,
    mut terminal: Option<TerminalQueue>,
    dropped: Arc<AtomicU64>,
    progress: Option<Arc<Tracker>>,
) {
    let mut dropping = false;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    // Registered with the runtime only while it is read: during a pause the lines the script
    // writes must not wake the launcher (edge-triggered readiness would, once per line).
    let mut registered = match nonblocking(&pipe).and_then(|()| register(pipe)) {
        Ok(fd) => fd,
        Err(e) => {
            log.note(format!("reading torchrun's {stream:?} failed: {e}"));
            return;
        }
    };
    // When the last read returned: its bytes over the time since tell the stream's rate.
    let mut last_read: Option<Instant> = None;
    loop {
        // A chunk handed on whole leaves another buffer here (the thread's last, emptied).
        buf.clear();
        buf.reserve(READ_CHUNK);
        let read = registered
            .async_io(Interest::READABLE, |fd| read_some(fd, &mut buf))
            .await;
        let len_read = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                log.note(format!("reading torchrun's {stream:?} failed: {e}"));
                break;
            }
        };
        // A read that ends mid-line caught a writer in the middle of a write: more comes now.
        // (Asked before the hand-off, which may take the buffer.)
        let line_ended = matches!(buf.last(), Some(b'\n' | b'\r'));
        if let Some(p) = &progress {
            p.feed(stream, &buf);
        }
        log.chunk(stream, &buf);
        match &mut terminal {
            Some(TerminalQueue::Thread(feeder)) => {
                let len = buf.len() as u64;
                if feeder.offer(&mut buf) {
                    dropping = false;
                } else {
                    if !dropping {
                        log.note(format!(
                            "terminal not keeping up: {stream:?} output dropped there (kept here)"
                        ));
                    }
                    dropping = true;
                    dropped.fetch_add(len, Ordering::Relaxed);
                }
            }
            Some(TerminalQueue::Inline(sink)) => sink.write(&buf),
            None => {}
        }
        let now = Instant::now();
        let slow = last_read.is_some_and(|t| {
            // bytes * pause / time since the last read: what a pause would gather.
            let gap = now.duration_since(t).as_secs_f64();
            len_read as f64 * READ_PAUSE.as_secs_f64() < PAUSE_BYTES as f64 * gap
        });
        last_read = Some(now);
        if len_read < SMALL_READ && line_ended && slow {
            let fd = registered.into_inner();
            tokio::time::sleep(READ_PAUSE).await;
            registered = match register(fd) {
                Ok(fd) => fd,
                Err(e) => {
                    log.note(format!("reading torchrun's {stream:?} failed: {e}"));
                    break;
                }
            };
        }
    }
}

/// Sets `fd` non-blocking (tokio hands a child's pipe over blocking).
fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a pipe fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fd` (non-blocking) registered with the runtime for reading.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and its as_raw_fd the same, until the AsyncFd gives it back
    // (`into_inner`) or is dropped with it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
}

/// One `read` into the spare capacity of `buf` (EINTR retried).
fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: read writes at most `spare.len()` bytes into the spare capacity, and the length
        // grows by what it wrote.
        let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n >= 0 {
            let n = n as usize;
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> (Feeder, Arc<Handoff>) {
        let h = Handoff::new();
        (Feeder(h.clone()), h)
    }

    /// Lines that arrive while the thread writes or lingers wait for it together: one write
    /// for all of them, and no wake-up of a thread that will look by itself.
    #[test]
    fn output_gathers_while_the_thread_is_busy_and_wakes_it_only_when_idle() {
        let (feeder, h) = handoff();
        h.lock().thread = ThreadState::Lingering;
        for i in 0..100 {
            assert!(feeder.offer(&mut format!("line {i}\n").into_bytes()));
            assert!(
                h.lock().thread == ThreadState::Lingering,
                "woken at line {i}"
            );
        }
        let mut batch = Vec::new();
        assert!(h.take(&mut batch));
        assert_eq!(batch.iter().filter(|&&b| b == b'\n').count(), 100);
        assert!(batch.starts_with(b"line 0\n") && batch.ends_with(b"line 99\n"));
        // Waiting for output, it is woken by the next chunk; lingering, by a flood's.
        h.lock().thread = ThreadState::Idle;
        assert!(feeder.offer(&mut b"x\n".to_vec()));
        assert!(h.lock().thread == ThreadState::Busy);
        h.lock().thread = ThreadState::Lingering;
        assert!(feeder.offer(&mut vec![b'y'; LINGER_BYTES]));
        assert!(h.lock().thread == ThreadState::Busy);
    }

    /// A terminal that stopped reading costs the relay nothing but dropped chunks: it never
    /// waits, and what waits is bounded.
    #[test]
    fn a_stalled_terminal_drops_chunks_beyond_the_backlog() {
        let (feeder, h) = handoff();
        let chunk = vec![b'z'; READ_CHUNK];
        let taken = (0..100)
            .filter(|_| feeder.offer(&mut chunk.clone()))
            .count();
        assert_eq!(taken, TERMINAL_BACKLOG / READ_CHUNK);
        assert!(h.lock().bytes.len() <= TERMINAL_BACKLOG);
        // Once the thread took them, the next chunks go through again.
        let mut batch = Vec::new();
        assert!(h.take(&mut batch));
        assert!(feeder.offer(&mut chunk.clone()));
        // The relay done, the thread writes what is left, then ends.
        drop(feeder);
        batch.clear();
        assert!(h.take(&mut batch));
        assert_eq!(batch.len(), READ_CHUNK);
        assert!(!h.take(&mut batch));
    }
}
