//! torchrun's output relayed as bytes: every byte to the log, to the terminal while it keeps up.

use std::fs::File;
use std::io::{self, IsTerminal as _, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::launch::log::{LogSender, Stream};
use crate::launch::status::Tracker;

use super::cleanup::after;

/// Chunks (of up to 256 KiB) waiting for a slow terminal before further ones are dropped there.
pub(super) const TERMINAL_QUEUE: usize = 256;

pub(super) const READ_CHUNK: usize = 256 * 1024;

pub(super) const PIPE_SIZE: libc::c_int = 1 << 20;

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
    /// and chunks beyond its queue are dropped there, so that training never waits on it.
    Thread(mpsc::SyncSender<Arc<Vec<u8>>>),
    /// A regular file, which does not stall: the reader writes it itself, one write per read,
    /// with no thread to wake per line (batch jobs' output, Slurm's `--output` file).
    Inline(InlineSink),
}

/// A relay's own writer to a regular file.
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
    let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(TERMINAL_QUEUE);
    let thread = std::thread::Builder::new()
        .name("vla-launch-relay".into())
        .spawn(move || {
            // A closed terminal (EPIPE) must not stop the training: keep draining the queue.
            let mut broken = false;
            let mut last = b'\n';
            for chunk in rx {
                broken = broken
                    || match &status {
                        Some(t) => t.write_terminal(&mut out, &chunk),
                        None => out.write_all(&chunk).and_then(|()| out.flush()),
                    }
                    .is_err();
                last = chunk.last().copied().unwrap_or(last);
            }
            if let Some(t) = &status {
                t.clear_terminal();
            }
            if end_last_line && !broken && last != b'\n' {
                let _ = out.write_all(b"\n").and_then(|()| out.flush());
            }
        })?;
    Ok((Some(TerminalQueue::Thread(tx)), Some(thread)))
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
/// at once, and the chunk itself is handed to the terminal thread (not copied), or written here
/// too when the launcher's output is a regular file. A script that
/// prints a line now and then costs one wake-up, one read and one log write per line; in a
/// flood the pipe (enlarged to [`PIPE_SIZE`]) fills while a chunk is handled, so the reads, the
/// log writes and the hand-offs grow with it, without waiting on a timer to collect them.
pub(super) async fn relay(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    log: LogSender,
    mut terminal: Option<TerminalQueue>,
    dropped: Arc<AtomicU64>,
    progress: Option<Arc<Tracker>>,
) {
    let mut dropping = false;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        match pipe.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log.note(format!("reading torchrun's {stream:?} failed: {e}"));
                break;
            }
        }
        if let Some(p) = &progress {
            p.feed(stream, &buf);
        }
        log.chunk(stream, &buf);
        let tx = match &mut terminal {
            Some(TerminalQueue::Thread(tx)) => tx,
            Some(TerminalQueue::Inline(sink)) => {
                sink.write(&buf);
                buf.clear();
                continue;
            }
            None => {
                buf.clear();
                continue;
            }
        };
        let chunk = Arc::new(std::mem::replace(&mut buf, Vec::with_capacity(READ_CHUNK)));
        let len = chunk.len() as u64;
        match tx.try_send(chunk) {
            Ok(()) => dropping = false,
            Err(mpsc::TrySendError::Full(_)) => {
                if !dropping {
                    log.note(format!(
                        "terminal not keeping up: {stream:?} output dropped there (kept here)"
                    ));
                }
                dropping = true;
                dropped.fetch_add(len, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}
