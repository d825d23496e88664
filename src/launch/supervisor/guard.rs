//! The run's watchdog slot: starts the watchdog, tells it torchrun's group, and replaces it when
//! it dies before the run ends (killed by someone: issue 25 item 4), saying so.

use std::path::PathBuf;
use std::time::Duration;

use crate::launch::log::LogSender;
use crate::launch::watchdog::{Spec, Watchdog};

pub(super) struct Guard {
    program: Option<PathBuf>,
    spec: Spec,
    current: Option<Watchdog>,
    pgid: Option<i32>,
}

impl Guard {
    /// Starts the watchdog (none when `program` is `None`, as in tests).
    pub(super) fn start(program: Option<PathBuf>, spec: Spec) -> Guard {
        let mut g = Guard {
            program,
            spec,
            current: None,
            pgid: None,
        };
        g.current = g.spawn();
        g
    }

    fn spawn(&self) -> Option<Watchdog> {
        let program = self.program.as_deref()?;
        match Watchdog::start(program, &self.spec) {
            Ok(mut w) => {
                if let Some(g) = self.pgid {
                    w.tell_group(g);
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    "no watchdog ({e}): if the launcher is killed outright, workers in new sessions may survive it"
                );
                None
            }
        }
    }

    /// torchrun runs, in its own process group `pgid`.
    pub(super) fn tell_group(&mut self, pgid: i32) {
        self.pgid = Some(pgid);
        if let Some(w) = &mut self.current {
            w.tell_group(pgid);
        }
    }

    /// Resolves when the watchdog died before the run ended; never while there is none.
    pub(super) async fn lost(&mut self) {
        match &mut self.current {
            Some(w) => w.lost().await,
            None => std::future::pending().await,
        }
    }

    /// After [`Guard::lost`]: says so and starts another.
    pub(super) fn replace(&mut self, notes: &LogSender) {
        let old = self.current.take().map_or(0, |w| w.pid());
        let text = format!(
            "the watchdog (pid {old}) is gone (killed?): starting another, so that a launcher killed outright still ends the run"
        );
        tracing::warn!("{text}");
        notes.note(text);
        self.current = self.spawn();
    }

    /// The run ended under the launcher's control: the watchdog exits quietly.
    pub(super) fn finish(self) {
        if let Some(w) = self.current {
            w.finish(Duration::from_secs(1));
        }
    }
}
