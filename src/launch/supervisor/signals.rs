//! Signals asked of the run: the launcher's own (SIGINT, SIGTERM, SIGHUP, SIGUSR1) and the caller's.

use std::io::{self};

use nix::sys::signal::Signal;
use tokio::sync::broadcast;

/// Lets the caller (or the real signal handlers) ask the supervisor to signal the run.
#[derive(Debug, Clone)]
pub struct SignalHandle(pub(super) broadcast::Sender<Request>);

#[derive(Debug, Clone, Copy)]
pub(super) enum Request {
    /// As if the launcher had received the signal (a second stop signal kills at once).
    Signal(Signal),
    /// Stop the run as SIGTERM does, unless it is already stopping: never escalates.
    Stop,
}

impl Default for SignalHandle {
    fn default() -> Self {
        SignalHandle(broadcast::channel(16).0)
    }
}

impl SignalHandle {
    /// Delivers `sig` as if the launcher had received it (SIGINT, SIGTERM, SIGHUP, SIGUSR1).
    pub fn send(&self, sig: Signal) {
        // No receiver yet means no run in progress: nothing to signal.
        let _ = self.0.send(Request::Signal(sig));
    }

    /// Stops the run like a SIGTERM, with the grace period, but does nothing to a run that is
    /// already stopping (so another node's failure never turns the user's Ctrl-C into a kill).
    pub fn stop(&self) {
        let _ = self.0.send(Request::Stop);
    }
}

/// Routes the launcher's SIGINT, SIGTERM, SIGHUP and SIGUSR1 into `handle`. Must be called
/// inside a tokio runtime; the handlers stay installed for the life of the process (the default
/// "terminate" action is replaced, so the launcher can clean up).
pub fn install_signal_forwarding(handle: &SignalHandle) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let tx = handle.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tx.send(sig);
            }
        });
    }
    Ok(())
}
