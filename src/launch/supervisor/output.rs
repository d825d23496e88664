//! Wiring torchrun's two output pipes to the relay (`relay.rs`): started after spawn, drained
//! after torchrun exits without waiting forever for pipes that leftover grandchildren hold.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::launch::log::{LogSender, LogWriter, Stream};
use crate::launch::status::Tracker;

use super::relay::{PIPE_SIZE, Sink, join_within, relay, terminal_writer};

/// The readers of both pipes and the terminal threads they feed.
pub(super) struct Output {
    readers: tokio::task::JoinSet<()>,
    threads: [Option<JoinHandle<()>>; 2],
    dropped: Arc<AtomicU64>,
}

impl Output {
    pub(super) fn start(
        pipes: &mut [Option<OwnedFd>; 2],
        log: &LogWriter,
        [stdout, stderr]: [&Sink; 2],
        progress: Option<Arc<Tracker>>,
    ) -> std::io::Result<Output> {
        let dropped = Arc::new(AtomicU64::new(0));
        let (out_tx, out_thread) = terminal_writer(stdout, progress.clone())?;
        let (err_tx, err_thread) = terminal_writer(stderr, progress.clone())?;
        let mut readers = tokio::task::JoinSet::new();
        let [out_pipe, err_pipe] = pipes;
        for (pipe, stream, terminal) in [
            (out_pipe.take(), Stream::Out, out_tx),
            (err_pipe.take(), Stream::Err, err_tx),
        ] {
            let Some(pipe) = pipe else { continue };
            // A larger pipe lets a burst of output sit in the kernel instead of blocking the
            // writer, and lets each read move more bytes (best effort: the kernel may refuse).
            // SAFETY: fcntl on a pipe fd we own; no memory is passed.
            unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            readers.spawn(relay(
                pipe,
                stream,
                log.sender(),
                terminal,
                dropped.clone(),
                progress.clone(),
            ));
        }
        Ok(Output {
            readers,
            threads: [out_thread, err_thread],
            dropped,
        })
    }

    /// Reads what is left in the pipes, for at most `leak_timeout` (pipes held open by processes
    /// we could not find must not keep us waiting forever). Returns the bytes the terminal
    /// dropped, and the terminal threads to join with [`Output::join_terminal`].
    pub(super) async fn drain(
        mut self,
        leak_timeout: Duration,
        notes: &LogSender,
    ) -> (TerminalThreads, u64) {
        let drained = tokio::time::timeout(leak_timeout, async {
            while self.readers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.readers.abort_all();
            notes.note("output pipes still open after torchrun exited: stopped reading them");
        }
        drop(self.readers);
        (
            TerminalThreads(self.threads, leak_timeout),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// The threads writing to the terminal, and how long they may take to finish.
pub(super) struct TerminalThreads([Option<JoinHandle<()>>; 2], Duration);

impl TerminalThreads {
    /// Terminal threads may sit on a stalled terminal: give them the leak timeout, then leave them.
    pub(super) async fn join(self) {
        join_within(self.0, self.1).await;
    }
}
