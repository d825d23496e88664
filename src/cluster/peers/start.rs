//! Starting one node's watch from what the launcher knows.

use std::io::{self};

use super::{config::*, ports::*, secret::*, shared::*, stop::*, watch::*};

/// The job's secret, as the module header says: the environment first, else the file.
pub fn job_secret(w: &NodeWatch) -> Result<JobSecret, SecretError> {
    match &w.env_secret {
        Some(v) => JobSecret::from_env_value(v),
        None if w.node_rank == 0 => JobSecret::create_file(&w.secrets_dir, &w.job_id),
        None => JobSecret::wait_for_file(&w.secrets_dir, &w.job_id, w.secret_wait),
    }
}

/// Starts this node's watch. `Ok(None)` when it cannot run (no secret, node 0 unreachable...),
/// after a loud warning that says how to fix it; `Err` when node 0's watch port is taken.
pub fn start_node_watch(w: &NodeWatch, on_stop: OnStop) -> Result<Option<PeerWatch>, PortTaken> {
    if let Some(msg) = rendezvous_host_warning(&w.host, w.port, w.node_rank) {
        tracing::warn!("{msg}");
    }
    if w.node_rank == 0 && w.env_secret.is_none() {
        // Once per job (node 0): what the missing variable costs, and the fix.
        tracing::warn!(
            "{SECRET_ENV} is not set: the job's ports are derived from its id, which any user sees in squeue, so another user can take them before the job starts (exit 4), and the peer watch falls back to a secret file on the shared run root. Fix: export {SECRET_ENV}=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \\n') in the batch script before srun, as scripts/slurm/finetune.sbatch does"
        );
    }
    if w.node_rank > 0 && w.env_secret.is_none() {
        // Node 0 may create the file after this node gets here: wait on the watch's thread.
        let (dir, id, wait) = (w.secrets_dir.clone(), w.job_id.clone(), w.secret_wait);
        let loader: SecretLoader = Box::new(move || JobSecret::wait_for_file(&dir, &id, wait));
        return match PeerWatch::peer_later(w, loader, on_stop) {
            Ok(watch) => Ok(Some(watch)),
            Err(e) => {
                tracing::warn!("{OFF}. It could not start ({e})");
                Ok(None)
            }
        };
    }
    let secret = match job_secret(w) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{OFF}. No job secret: {e}");
            return Ok(None);
        }
    };
    let job = WatchJob {
        id: w.job_id.clone(),
        nnodes: w.nnodes,
        secret,
        timing: w.timing,
    };
    let started = if w.node_rank == 0 {
        PeerWatch::hub(job, w.port, on_stop)
    } else {
        PeerWatch::peer(job, w.node_rank, &w.host, w.port, on_stop)
    };
    match started {
        Ok(watch) => Ok(Some(watch)),
        Err(err) if w.node_rank == 0 && err.kind() == io::ErrorKind::AddrInUse => Err(PortTaken {
            flag: "--peer-watch-port",
            port: w.port,
            err,
        }),
        Err(e) => {
            tracing::warn!(
                "{OFF}. It could not start on port {} ({e}). Fix: choose a free port with --peer-watch-port PORT on every node",
                w.port
            );
            Ok(None)
        }
    }
}
