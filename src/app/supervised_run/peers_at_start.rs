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
    // The secret file lives under the run root, which every node shares (--log-dir may not).
    let secrets_dir = ctx
        .resolved
        .run_root_dir()
        .map(|root| root.join("vla-launch"))
        .unwrap_or_else(|| log_dir.to_path_buf())
        .join(".secrets");
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
    }
}
