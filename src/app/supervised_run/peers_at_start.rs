//! The peer watch of a multi-node launch: its port, its start (before torchrun), and the exit
//! status a node stopped by another node's failure takes.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::app::error::{AppError, Result};
use crate::app::settings::{Planned, env_var};
use crate::cli::LaunchArgs;
use crate::cluster::peers::{self, PeerWatch};
use crate::launch::supervisor;

/// `--peer-watch-port`: `Ok(None)` for off, `Ok(Some(None))` for the default port.
pub(in crate::app) fn peer_watch_port(args: &LaunchArgs) -> Result<Option<Option<u16>>> {
    match args.peer_watch_port.as_deref().map(str::trim) {
        None => Ok(Some(None)),
        Some("off") => Ok(None),
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(Some(port))),
            _ => Err(AppError::usage(format!(
                "--peer-watch-port {}: not a port number (1-65535) or \"off\"",
                crate::input::shown(p, 20)
            ))),
        },
    }
}

/// Several nodes: start the peer watch (node 0 listens, the others connect to it) so that one
/// node's failure stops the whole job. `stopped` receives the reason when it stops this node.
pub(in crate::app) fn start_peer_watch(
    ctx: &Planned,
    args: &LaunchArgs,
    log_dir: &Path,
    signals: &supervisor::SignalHandle,
    stopped: Arc<Mutex<Option<peers::PeerStop>>>,
) -> Result<Option<PeerWatch>> {
    let asked = peer_watch_port(args)?;
    let (true, Some(rdzv)) = (ctx.topology.is_multi_node(), &ctx.topology.rendezvous) else {
        return Ok(None);
    };
    let Some((host, rdzv_port)) = rdzv
        .endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
    else {
        return Ok(None);
    };
    let node = ctx.topology.node_rank;
    if node == 0 {
        peers::check_rendezvous_port(rdzv_port)
            .map_err(|e| AppError::Environment(e.to_string()))?;
    }
    let Some(asked) = asked else {
        return Ok(None);
    };
    let port = asked.unwrap_or_else(|| peers::watch_port(rdzv_port));
    let handle = signals.clone();
    let on_stop: peers::OnStop = Arc::new(move |why: peers::PeerStop| {
        warn!(
            "{why}: stopping this node's training too (SIGTERM to torchrun, then the grace period)"
        );
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        handle.stop();
    });
    let secrets_dir = secrets_dir(ctx, log_dir);
    let w = peers::NodeWatch {
        job_id: rdzv.id.clone(),
        nnodes: ctx.topology.nnodes,
        node_rank: node,
        host: host.to_string(),
        port,
        env_secret: env_var(peers::SECRET_ENV),
        secrets_dir,
        secret_wait: peers::SECRET_WAIT,
        timing: peers::Timing::default(),
    };
    let watch =
        peers::start_node_watch(&w, on_stop).map_err(|e| AppError::Environment(e.to_string()))?;
    if watch.is_some() {
        info!("peer watch: node {node} on port {port}");
    }
    Ok(watch)
}

/// The job's private directory: the secret file and the start-failure notes live under the run
/// root, which every node shares (--log-dir may not).
fn secrets_dir(ctx: &Planned, log_dir: &Path) -> std::path::PathBuf {
    ctx.resolved
        .run_root_dir()
        .map(|root| root.join("vla-launch"))
        .unwrap_or_else(|| log_dir.to_path_buf())
        .join(".secrets")
}

/// (job id, Slurm restart) of a multi-node launch: what names its start-failure notes.
fn job_start(ctx: &Planned) -> Option<(String, u32)> {
    let rdzv = ctx.topology.rendezvous.as_ref()?;
    let restart = env_var("SLURM_RESTART_COUNT").and_then(|r| r.trim().parse().ok());
    ctx.topology
        .is_multi_node()
        .then(|| (rdzv.id.clone(), restart.unwrap_or(0)))
}

/// A multi-node launch refused before torchrun (its port taken): leave the code and why for the
/// other nodes, which srun stops with a bare SIGTERM once this launcher exits (issue 25 item 6).
pub(in crate::app) fn leave_start_failure(ctx: &Planned, log_dir: &Path, err: &AppError) {
    let Some((job, restart)) = job_start(ctx) else {
        return;
    };
    let dir = secrets_dir(ctx, log_dir);
    let code = err.exit_code().code();
    let node = ctx.topology.node_rank;
    if let Err(e) = peers::write_start_failure(&dir, &job, restart, node, code, &err.to_string()) {
        warn!(
            "cannot leave this node's start failure for the other nodes in {}: {e}",
            dir.display()
        );
    }
}

/// Why another node stopped this one, if it did: the watch's cause unless both were signalled
/// ([`caused_by_peer`]); else, for a node stopped by a signal (its own, or torchrun's: Slurm
/// signals every process of the step), another node's start failure, when one left a note
/// (srun's SIGTERM after that node exited).
pub(in crate::app) fn peer_cause(
    ctx: &Planned,
    log_dir: &Path,
    outcome: Option<&supervisor::Outcome>,
    from_watch: Option<peers::PeerStop>,
) -> Option<peers::PeerStop> {
    // Stopped by a signal, or torchrun ended badly before the launcher handled its own signal
    // (srun signals every process of the step: torchrun may exit 143 first): a peer that could
    // not start is then the cause.
    let ended_badly = outcome
        .is_some_and(|o| o.interrupted_by.is_some() || o.signal.is_some() || o.exit_code != 0);
    from_watch
        .filter(|peer| caused_by_peer(outcome, peer))
        .or_else(|| {
            ended_badly
                .then(|| peer_start_failure(ctx, log_dir))
                .flatten()
        })
}

fn peer_start_failure(ctx: &Planned, log_dir: &Path) -> Option<peers::PeerStop> {
    let (job, restart) = job_start(ctx)?;
    let dir = secrets_dir(ctx, log_dir);
    peers::read_start_failure(
        &dir,
        &job,
        restart,
        ctx.topology.nnodes,
        ctx.topology.node_rank,
    )
}

/// Whether `peer` caused this node's stop. Not when this node stopped on a signal of its own
/// and the peer ended on a signal too (exit > 128): both were signalled (scancel, the time
/// limit), and one node's record said "stopped: node 0's training ended with exit 143" after
/// every scancel (issue 25 item 6). A peer that failed with its own code still counts when
/// Slurm's SIGTERM (`--kill-on-bad-exit`) raced ahead of its message.
fn caused_by_peer(outcome: Option<&supervisor::Outcome>, peer: &peers::PeerStop) -> bool {
    // The launcher's own signal, or torchrun's (Slurm signals every process of the step; torchrun
    // may end of it before the launcher has handled its own), not a stop the watch asked for.
    let own_signal = outcome
        .is_some_and(|o| (o.interrupted_by.is_some() || o.signal.is_some()) && !o.stop_requested);
    !(own_signal && peer.exit_code().is_some_and(|c| c > 128))
}

/// The launcher's exit status for a run (0, 1 or 128+N): a node stopped by another node's
/// failure exits with that failure's code, so that srun and the job's state show the real
/// failure and not this node's SIGTERM (docs/cluster.md, contract 5). A peer that was lost or
/// gone (no code) reads as a failed training, unless this node had been signalled first.
pub(in crate::app) fn exit_status(
    outcome: &supervisor::Outcome,
    peer: Option<&peers::PeerStop>,
) -> i32 {
    use peers::PeerFailure;
    match peer.map(|p| &p.failure) {
        Some(PeerFailure::Failed { exit_code }) if *exit_code != 0 => *exit_code,
        // The failing node exits with its own code (4, a port taken): the job reads it, srun
        // taking the highest; this node's is a failed run's (the statuses are 0, 1 or 128+N).
        Some(PeerFailure::Refused { exit_code, .. }) if *exit_code != 0 => 1,
        Some(PeerFailure::Gone | PeerFailure::Lost { .. }) if outcome.stop_requested => 1,
        _ => outcome.process_exit_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::peers::{PeerFailure, PeerStop};
    use std::path::PathBuf;
    use std::time::Duration;

    fn stopped(stop_requested: bool) -> supervisor::Outcome {
        supervisor::Outcome {
            exit_code: 143,
            signal: None,
            duration: Duration::from_secs(1),
            log_path: PathBuf::from("x.log"),
            interrupted_by: Some(15),
            stop_requested,
            force_killed: false,
            kill_reason: None,
            leftover_processes: 0,
            terminal_dropped_bytes: 0,
            log_error: None,
            not_started: false,
        }
    }

    fn peer(failure: PeerFailure) -> PeerStop {
        PeerStop {
            node: 1,
            failure,
            torchrun_exit: None,
        }
    }

    #[test]
    fn a_node_stopped_by_a_peer_exits_with_the_peers_code() {
        let failed = |c| peer(PeerFailure::Failed { exit_code: c });
        // Stopped by the watch, then (or never) Slurm's SIGTERM: the peer's code.
        assert_eq!(exit_status(&stopped(true), Some(&failed(1))), 1);
        // Slurm's SIGTERM (kill-on-bad-exit) raced ahead of the peer's message: still its code.
        assert_eq!(exit_status(&stopped(false), Some(&failed(1))), 1);
        assert_eq!(exit_status(&stopped(false), Some(&failed(143))), 143);
        // A lost or vanished peer: a failure when it stopped us, our signal when one came first.
        assert_eq!(
            exit_status(&stopped(true), Some(&peer(PeerFailure::Gone))),
            1
        );
        assert_eq!(
            exit_status(
                &stopped(false),
                Some(&peer(PeerFailure::Lost { silent_s: 31 }))
            ),
            143
        );
        assert_eq!(exit_status(&stopped(false), None), 143);
        // A peer that could not start (exit 4): this node's run failed (1), never 143.
        let refused = peer(PeerFailure::Refused {
            exit_code: 4,
            why: "port taken".into(),
        });
        assert_eq!(exit_status(&stopped(false), Some(&refused)), 1);
    }

    #[test]
    fn a_peer_signalled_like_this_node_did_not_stop_it() {
        let failed = |c| peer(PeerFailure::Failed { exit_code: c });
        // scancel: both nodes got SIGTERM; the other's 143 is not why this one stopped.
        assert!(!caused_by_peer(Some(&stopped(false)), &failed(143)));
        // Stopped by the watch: the peer's signal exit is the cause.
        assert!(caused_by_peer(Some(&stopped(true)), &failed(143)));
        // A real failure that srun's SIGTERM raced ahead of: still the cause.
        assert!(caused_by_peer(Some(&stopped(false)), &failed(1)));
        assert!(caused_by_peer(
            Some(&stopped(false)),
            &peer(PeerFailure::Gone)
        ));
        assert!(caused_by_peer(None, &failed(143)));
        // torchrun itself ended by Slurm's SIGTERM before the launcher handled its own.
        let torchrun_signalled = supervisor::Outcome {
            interrupted_by: None,
            signal: Some(15),
            ..stopped(false)
        };
        assert!(!caused_by_peer(Some(&torchrun_signalled), &failed(143)));
    }
}
