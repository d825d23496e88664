//! The stop policy: what the supervisor does about each stop signal, SIGUSR1, another node's
//! failure and the grace period running out. A plain state machine: events in, actions out, no
//! process, file or clock (the effect loop in `mod.rs` does the sending, sleeping and killing).
//!
//! The promises it keeps (module comment of `supervisor`, docs/design.md "Stopping a run"):
//! - The first stop signal (SIGINT, SIGTERM, SIGHUP) goes to torchrun alone and starts the grace
//!   period; when the grace is over, SIGKILL to the run.
//! - A second stop signal kills at once, except a repeated SIGTERM under Slurm (Slurm signals
//!   every process of the step and srun forwards it as well: that is not a user asking twice).
//! - SIGUSR1 goes to the workers that handle it (to torchrun too only if it declares it handles
//!   it), never stops.
//! - Another node's failure stops the run like SIGTERM, but never escalates a stop under way.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::outcome::KillReason;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// The launcher received this signal (or a caller asked as if it had).
    Signal(Signal),
    /// Another node failed (`SignalHandle::stop`).
    PeerStop,
    /// The grace period armed by [`Action::ArmDeadline`] ran out.
    GraceOver,
}

/// What to do about it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Send this signal to torchrun's pid alone (torchrun passes it on to its workers).
    ForwardToTorchrun(Signal),
    /// Send this signal to the run's workers, and to torchrun as well when `with_torchrun`.
    SignalWorkers { sig: Signal, with_torchrun: bool },
    /// [`Event::GraceOver`] after this long (replacing no earlier deadline: there is at most one).
    ArmDeadline(Duration),
    /// SIGKILL to torchrun's group and every member of the run; the deadline is off.
    KillRun,
    /// A line for the run log.
    Note(String),
    /// A warning for the person running the launcher (stderr).
    Warn(String),
}

/// How long processes left after torchrun exited get between SIGTERM and SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeftoverGrace {
    /// The run ended on its own: the usual short orphan grace.
    Usual,
    /// A stop is under way: what is left of its grace period.
    RestOfDeadline,
    /// The run was killed: none.
    None,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct StopConfig {
    pub(super) grace: Duration,
    /// `false` under Slurm (see the module comment).
    pub(super) repeated_sigterm_escalates: bool,
    /// torchrun declares it handles SIGUSR1 (`TORCHELASTIC_SIGNALS_TO_HANDLE`).
    pub(super) usr1_to_torchrun: bool,
}

/// The policy's state; also what the outcome says about how the run was stopped.
#[derive(Debug)]
pub(super) struct StopPolicy {
    config: StopConfig,
    interrupted_by: Option<Signal>,
    stop_requested: bool,
    deadline_armed: bool,
    force_killed: bool,
    kill_reason: Option<KillReason>,
}

impl StopPolicy {
    pub(super) fn new(config: StopConfig) -> Self {
        StopPolicy {
            config,
            interrupted_by: None,
            stop_requested: false,
            deadline_armed: false,
            force_killed: false,
            kill_reason: None,
        }
    }

    pub(super) fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Signal(Signal::SIGUSR1) => vec![Action::SignalWorkers {
                sig: Signal::SIGUSR1,
                with_torchrun: self.config.usr1_to_torchrun,
            }],
            Event::PeerStop if self.interrupted_by.is_some() => vec![],
            Event::PeerStop => {
                self.stop_requested = true;
                self.first_stop(Signal::SIGTERM, "stop requested (another node failed)")
            }
            Event::Signal(sig) if self.interrupted_by.is_none() => {
                self.first_stop(sig, &format!("{sig} received"))
            }
            Event::Signal(Signal::SIGTERM) if !self.config.repeated_sigterm_escalates => {
                vec![Action::Note(
                    "SIGTERM received again (Slurm signals every process of the step, and srun \
                     forwards it too): the grace period goes on"
                        .into(),
                )]
            }
            Event::Signal(sig) => {
                let mut actions = vec![Action::Note(format!(
                    "{sig} received again: killing the run now"
                ))];
                actions.extend(self.kill(KillReason::SignalAgain(sig as i32)));
                actions
            }
            Event::GraceOver if !self.deadline_armed => vec![],
            Event::GraceOver => {
                let grace = self.config.grace;
                let mut actions = vec![
                    Action::Note("grace period over: SIGKILL to the run".into()),
                    Action::Warn(format!(
                        "torchrun did not stop within {grace:?}: killing the run"
                    )),
                ];
                actions.extend(self.kill(KillReason::GraceOver));
                actions
            }
        }
    }

    fn first_stop(&mut self, sig: Signal, what: &str) -> Vec<Action> {
        let grace = self.config.grace;
        self.interrupted_by = Some(sig);
        self.deadline_armed = true;
        let forwarded = if self.stop_requested {
            "SIGTERM forwarded"
        } else {
            "forwarded"
        };
        let mut actions = vec![
            Action::ForwardToTorchrun(sig),
            Action::ArmDeadline(grace),
            Action::Note(format!(
                "{what}: {forwarded} to torchrun, SIGKILL in {grace:?}"
            )),
        ];
        // The peer watch has warned already, naming the node that failed.
        if !self.stop_requested {
            // Only say "again to kill at once" where a second one does (issue 25 item 14).
            let again = if sig == Signal::SIGTERM && !self.config.repeated_sigterm_escalates {
                "a second SIGTERM does not cut it short; "
            } else {
                "again to kill at once; "
            };
            actions.push(Action::Warn(format!(
                "{sig}: stopping torchrun ({again}SIGKILL in {grace:?})"
            )));
        }
        actions
    }

    fn kill(&mut self, reason: KillReason) -> Vec<Action> {
        self.force_killed = true;
        self.kill_reason.get_or_insert(reason);
        self.deadline_armed = false;
        vec![Action::KillRun]
    }

    /// torchrun exited: how long its leftovers get.
    pub(super) fn leftover_grace(&self) -> LeftoverGrace {
        match (self.deadline_armed, self.force_killed) {
            (true, _) => LeftoverGrace::RestOfDeadline,
            (false, true) => LeftoverGrace::None,
            (false, false) => LeftoverGrace::Usual,
        }
    }

    /// Leftovers ignored their SIGTERM and needed SIGKILL.
    pub(super) fn leftovers_killed(&mut self) {
        self.force_killed = true;
        self.kill_reason.get_or_insert(KillReason::Leftovers);
    }

    pub(super) fn interrupted_by(&self) -> Option<i32> {
        self.interrupted_by.map(|s| s as i32)
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    pub(super) fn force_killed(&self) -> bool {
        self.force_killed
    }

    pub(super) fn kill_reason(&self) -> Option<KillReason> {
        self.kill_reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::{GraceOver, PeerStop};
    use Signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

    const GRACE: Duration = Duration::from_secs(40);

    fn policy(slurm: bool, usr1_to_torchrun: bool) -> StopPolicy {
        StopPolicy::new(StopConfig {
            grace: GRACE,
            repeated_sigterm_escalates: !slurm,
            usr1_to_torchrun,
        })
    }

    fn sig(s: Signal) -> Event {
        Event::Signal(s)
    }

    /// The actions that touch processes or the deadline, in short form (messages apart).
    fn effects(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ForwardToTorchrun(s) => Some(format!("torchrun {s}")),
                Action::SignalWorkers {
                    sig,
                    with_torchrun: false,
                } => Some(format!("workers {sig}")),
                Action::SignalWorkers {
                    sig,
                    with_torchrun: true,
                } => Some(format!("workers+torchrun {sig}")),
                Action::ArmDeadline(d) => Some(format!("arm {}s", d.as_secs())),
                Action::KillRun => Some("kill".into()),
                Action::Note(_) | Action::Warn(_) => None,
            })
            .collect()
    }

    /// The policy's final state in short form.
    fn state(p: &StopPolicy) -> String {
        format!(
            "stopped by {:?}, peer {}, kill {:?}, leftovers {:?}",
            p.interrupted_by,
            p.stop_requested(),
            p.kill_reason(),
            p.leftover_grace()
        )
    }

    fn event(word: &str) -> Event {
        match word {
            "INT" => sig(SIGINT),
            "TERM" => sig(SIGTERM),
            "HUP" => sig(SIGHUP),
            "USR1" => sig(SIGUSR1),
            "PEER" => PeerStop,
            "OVER" => GraceOver,
            other => panic!("no event {other}"),
        }
    }

    /// (what, under Slurm, events, their effects per event joined by " | ", final state).
    #[rustfmt::skip]
    const CASES: &[(&str, bool, &str, &str, &str)] = &[
        ("the run ends on its own", false, "", "",
         "stopped by None, peer false, kill None, leftovers Usual"),
        ("one Ctrl-C: torchrun alone, grace armed", false, "INT", "torchrun SIGINT,arm 40s",
         "stopped by Some(SIGINT), peer false, kill None, leftovers RestOfDeadline"),
        ("second SIGINT kills at once", false, "INT INT", "torchrun SIGINT,arm 40s | kill",
         "stopped by Some(SIGINT), peer false, kill Some(SignalAgain(2)), leftovers None"),
        ("second SIGTERM kills at once outside Slurm", false, "TERM TERM",
         "torchrun SIGTERM,arm 40s | kill",
         "stopped by Some(SIGTERM), peer false, kill Some(SignalAgain(15)), leftovers None"),
        ("repeated SIGTERM under Slurm does not escalate", true, "TERM TERM TERM",
         "torchrun SIGTERM,arm 40s |  | ",
         "stopped by Some(SIGTERM), peer false, kill None, leftovers RestOfDeadline"),
        ("under Slurm a Ctrl-C after SIGTERM still kills", true, "TERM INT",
         "torchrun SIGTERM,arm 40s | kill",
         "stopped by Some(SIGTERM), peer false, kill Some(SignalAgain(2)), leftovers None"),
        ("under Slurm a double Ctrl-C kills (srun --pty)", true, "INT INT",
         "torchrun SIGINT,arm 40s | kill",
         "stopped by Some(SIGINT), peer false, kill Some(SignalAgain(2)), leftovers None"),
        ("a closed terminal twice kills", false, "HUP HUP", "torchrun SIGHUP,arm 40s | kill",
         "stopped by Some(SIGHUP), peer false, kill Some(SignalAgain(1)), leftovers None"),
        ("under Slurm SIGHUP twice kills", true, "HUP HUP", "torchrun SIGHUP,arm 40s | kill",
         "stopped by Some(SIGHUP), peer false, kill Some(SignalAgain(1)), leftovers None"),
        ("grace over: SIGKILL to the run", false, "TERM OVER", "torchrun SIGTERM,arm 40s | kill",
         "stopped by Some(SIGTERM), peer false, kill Some(GraceOver), leftovers None"),
        ("grace over under Slurm too", true, "TERM TERM OVER",
         "torchrun SIGTERM,arm 40s |  | kill",
         "stopped by Some(SIGTERM), peer false, kill Some(GraceOver), leftovers None"),
        ("a deadline disarmed by a kill does nothing", false, "INT INT OVER",
         "torchrun SIGINT,arm 40s | kill | ",
         "stopped by Some(SIGINT), peer false, kill Some(SignalAgain(2)), leftovers None"),
        ("no deadline armed: grace over does nothing", false, "OVER", "",
         "stopped by None, peer false, kill None, leftovers Usual"),
        ("SIGUSR1 to the workers, never a stop", true, "USR1 USR1",
         "workers SIGUSR1 | workers SIGUSR1",
         "stopped by None, peer false, kill None, leftovers Usual"),
        ("SIGUSR1 during a stop still reaches the workers", false, "TERM USR1",
         "torchrun SIGTERM,arm 40s | workers SIGUSR1",
         "stopped by Some(SIGTERM), peer false, kill None, leftovers RestOfDeadline"),
        ("peer stop: SIGTERM to torchrun with the grace", true, "PEER",
         "torchrun SIGTERM,arm 40s",
         "stopped by Some(SIGTERM), peer true, kill None, leftovers RestOfDeadline"),
        ("a second peer stop never escalates", false, "PEER PEER", "torchrun SIGTERM,arm 40s | ",
         "stopped by Some(SIGTERM), peer true, kill None, leftovers RestOfDeadline"),
        ("a peer stop never turns the user's Ctrl-C into a kill", false, "INT PEER OVER",
         "torchrun SIGINT,arm 40s |  | kill",
         "stopped by Some(SIGINT), peer false, kill Some(GraceOver), leftovers None"),
        ("Slurm's SIGTERM after a peer stop keeps the grace", true, "PEER TERM",
         "torchrun SIGTERM,arm 40s | ",
         "stopped by Some(SIGTERM), peer true, kill None, leftovers RestOfDeadline"),
        ("a Ctrl-C after a peer stop kills", true, "PEER INT", "torchrun SIGTERM,arm 40s | kill",
         "stopped by Some(SIGTERM), peer true, kill Some(SignalAgain(2)), leftovers None"),
    ];

    #[test]
    fn every_signal_sequence_the_docs_promise() {
        for &(what, slurm, events, want_effects, want_state) in CASES {
            let mut p = policy(slurm, false);
            let got: Vec<String> = events
                .split_whitespace()
                .map(|e| effects(&p.handle(event(e))).join(","))
                .collect();
            assert_eq!(got.join(" | "), want_effects, "{what}");
            assert_eq!(state(&p), want_state, "{what}");
            assert_eq!(p.force_killed(), p.kill_reason().is_some(), "{what}");
        }
    }

    #[test]
    fn sigusr1_reaches_torchrun_only_when_it_declares_it() {
        let mut p = policy(false, true);
        assert_eq!(
            effects(&p.handle(sig(SIGUSR1))),
            ["workers+torchrun SIGUSR1"]
        );
    }

    #[test]
    fn leftovers_that_needed_sigkill_are_the_kill_reason_of_a_clean_run() {
        let mut p = policy(false, false);
        p.leftovers_killed();
        assert!(p.force_killed());
        assert_eq!(p.kill_reason(), Some(KillReason::Leftovers));
        // A kill with a reason keeps its first reason.
        let mut p = policy(false, false);
        p.handle(sig(SIGTERM));
        p.handle(GraceOver);
        p.leftovers_killed();
        assert_eq!(p.kill_reason(), Some(KillReason::GraceOver));
    }

    fn warnings(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Warn(w) => Some(w.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Issue 25 item 14: under Slurm a second SIGTERM does not escalate, so the warning must not
    /// promise it does; where a second signal does kill, it says so.
    #[test]
    fn the_warning_promises_a_kill_on_a_second_signal_only_where_there_is_one() {
        let cases = [
            (false, SIGTERM, true),
            (true, SIGTERM, false),
            (true, SIGINT, true),
            (true, SIGHUP, true),
            (false, SIGINT, true),
        ];
        for (slurm, s, promises) in cases {
            let mut p = policy(slurm, false);
            let w = warnings(&p.handle(sig(s))).join("\n");
            assert!(w.contains("SIGKILL in 40s"), "{w}");
            assert_eq!(
                w.contains("again to kill at once"),
                promises,
                "slurm={slurm} {s}: {w}"
            );
            let second = p.handle(sig(s));
            assert_eq!(
                second.contains(&Action::KillRun),
                promises,
                "slurm={slurm} {s}"
            );
        }
    }

    #[test]
    fn a_peer_stop_is_noted_as_one_and_warned_by_the_peer_watch_only() {
        let mut p = policy(true, false);
        let actions = p.handle(PeerStop);
        assert!(warnings(&actions).is_empty(), "{actions:?}");
        assert!(actions.contains(&Action::Note(
            "stop requested (another node failed): SIGTERM forwarded to torchrun, SIGKILL in 40s"
                .into()
        )));
    }

    #[test]
    fn log_notes_keep_their_wording() {
        let mut p = policy(true, false);
        let first = p.handle(sig(SIGHUP));
        assert!(first.contains(&Action::Note(
            "SIGHUP received: forwarded to torchrun, SIGKILL in 40s".into()
        )));
        let again = p.handle(sig(SIGHUP));
        assert!(again.contains(&Action::Note(
            "SIGHUP received again: killing the run now".into()
        )));
        let mut p = policy(true, false);
        p.handle(sig(SIGTERM));
        let again = p.handle(sig(SIGTERM));
        assert!(matches!(&again[..], [Action::Note(n)] if n.starts_with("SIGTERM received again")));
    }
}
