//! One supervised run of torchrun: the command, the run record before and after, the VRAM
//! monitor, the peer watch, the diagnosis, and what the calibration store learns from it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::error::{AppError, Result};
use super::run_files::{self, NodeTag};
use super::settings::{Planned, env_var, store_path};
use super::slurm;
use super::torchrun::{RanksFilter, command_for, plan_record};
use crate::budget::Strategy;
use crate::calibration::{self, Source};
use crate::cli::LaunchArgs;
use crate::cluster::peers::{self, PeerWatch};
use crate::launch::command;
use crate::launch::diagnosis;
use crate::launch::status;
use crate::launch::supervisor::{self, SuperviseOptions};
use crate::monitor::{Monitor, NvmlSampler, WatchdogConfig};
use crate::profile;
use crate::record::{self, PlanRecord, RecordedDiagnosis, RecordedProgress, RunOutcome};
use crate::units::fmt_gib;
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::eprintln_lossy as eprintln;

/// What one launch of torchrun left behind.
pub(super) struct RunResult {
    pub(super) outcome: supervisor::Outcome,
    /// The launcher's exit status for this run ([`exit_status`]).
    pub(super) status: i32,
    pub(super) diagnosis: Option<diagnosis::Diagnosis>,
    /// The largest NVML (total - free) peak among the run's GPUs.
    pub(super) worst_peak: Option<u64>,
}

pub(super) fn launch_once(
    ctx: &Planned,
    args: &LaunchArgs,
    log_dir: &Path,
    attempt: u32,
    source: Source,
) -> Result<RunResult> {
    let stamp_dir = log_dir.join(format!("torchrun-{attempt}-{}", std::process::id()));
    let ranks = ranks_filter(args, ctx, stamp_dir)?;
    let (cmd, missing) = command_for(ctx, args.torchrun.as_deref(), ranks)?;
    profile::require_env(&missing, &ctx.loaded.origin)?;
    record::create_dir(log_dir, args.planning.record_mode).map_err(|e| {
        AppError::environment(format!(
            "cannot create the log directory {}: {e}; pass --log-dir DIR",
            log_dir.display()
        ))
    })?;
    let started = unix_seconds();
    let node = node_tag(ctx);
    let files = run_files::claim(
        log_dir,
        "run",
        &run_files::local_stamp(started as i64),
        node.as_ref(),
        attempt,
        args.planning.record_mode,
    )
    .map_err(|e| {
        AppError::environment(format!(
            "cannot create this run's log and record in {}: {e}; pass --log-dir DIR with a writable directory",
            log_dir.display()
        ))
    })?;
    let log_path = files.log.clone();
    let plan_path = files.record.clone().expect("a launch claims a record");
    for f in [&log_path, &plan_path] {
        if let Err(e) = run_files::point_latest(f, node.as_ref()) {
            warn!("cannot point latest at {}: {e}", f.display());
        }
    }
    let mut record = PlanRecord {
        cwd: Some(cmd.cwd.clone()),
        started_unix: Some(started),
        attempt: Some(attempt),
        launcher_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        ..plan_record(ctx, Some(&cmd))
    };
    record::write_file(
        &plan_path,
        &record.to_json_pretty(),
        args.planning.record_mode,
    )
    .map_err(|e| AppError::environment(format!("cannot write {}: {e}", plan_path.display())))?;
    let chosen = ctx.plan.chosen.as_ref().expect("launch only with a plan");
    let uuids: Vec<String> = ctx
        .gpus
        .iter()
        .filter(|g| chosen.gpu_indices.contains(&g.index) && !g.described)
        .map(|g| g.uuid.clone())
        .collect();
    let monitor = if uuids.is_empty() {
        None
    } else {
        match NvmlSampler::new(uuids.clone()) {
            Ok(s) => Some(Monitor::start(
                Box::new(s),
                Duration::from_millis(200),
                (args.hang_minutes > 0).then(|| WatchdogConfig {
                    log_path: log_path.clone(),
                    threshold: Duration::from_secs(args.hang_minutes * 60),
                    idle_percent: 2,
                }),
            )),
            Err(e) => {
                warn!("VRAM monitor off: {e}");
                None
            }
        }
    };
    let mut opts = SuperviseOptions::new(&log_path);
    opts.grace = Duration::from_secs(args.grace);
    // tqdm counts micro-batches on each rank: one iteration is this many samples.
    let samples_per_it =
        f64::from(chosen.batch_size) * f64::from(chosen.nproc_per_node) * f64::from(chosen.nnodes);
    let progress = status::Tracker::new(status_on_terminal().then(|| status::StatusConfig {
        samples_per_it,
        predicted_peak_bytes: chosen.predicted_peak_bytes,
        gpu_used_bytes: monitor.as_ref().map(Monitor::current).unwrap_or_default(),
    }));
    opts.progress = Some(progress.clone());
    if env_var("SLURM_JOB_ID").is_some() {
        // Slurm signals every process of the step, and srun forwards its SIGTERM as well.
        opts.repeated_sigterm_escalates = false;
        let (kill_wait, source) = slurm::kill_wait();
        let grace = slurm::grace_within(opts.grace, kill_wait);
        info!(
            "under Slurm: KillWait {}s ({source}); grace period {}s{}, so the outcome is written before Slurm's SIGKILL",
            kill_wait.as_secs(),
            grace.as_secs(),
            if grace < opts.grace {
                format!(" (--grace {} shortened)", opts.grace.as_secs())
            } else {
                String::new()
            }
        );
        opts.grace = grace;
    }
    let stopped_by_peer = Arc::new(Mutex::new(None::<peers::PeerStop>));
    let peers = start_peer_watch(ctx, args, log_dir, &opts.signals, stopped_by_peer.clone())?;
    // After the peer watch's start-up warnings (an unresolvable node 0...), which belong first.
    eprintln!("vla-launch: {}", command::display(&cmd));
    let result = supervisor::run_blocking(&cmd, &opts);
    let peaks = monitor.map(Monitor::stop);
    let stopped_by_peer = stopped_by_peer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let status = result
        .as_ref()
        .map_or(1, |o| exit_status(o, stopped_by_peer.as_ref()));
    if let Some(watch) = peers {
        // Before this launcher exits: under `srun --kill-on-bad-exit` the other nodes get
        // Slurm's SIGTERM as soon as it has, and must know this node's code by then.
        // torchrun's own code (3), not only the launcher's status (1): the others name it.
        let torchrun_exit = result
            .as_ref()
            .ok()
            .filter(|o| o.signal.is_none() && o.interrupted_by.is_none())
            .map_or(status, |o| o.exit_code);
        watch.finish_reporting(status, torchrun_exit);
    }
    let outcome = result?;
    if let (Some(why), true) = (&stopped_by_peer, status != outcome.process_exit_code()) {
        warn!("exit {status}: {why} (the job's real failure, not this node's stop)");
    }
    eprintln!("vla-launch: {}", supervisor::summary_line(&outcome));
    // Without NVML (described GPUs), a script that reports its own peaks (the probe trainer's
    // `VLA_PROBE_RESULT` lines) still tells what each GPU held.
    let (uuids, peaks) = match peaks {
        Some(p) => (uuids, Some(p)),
        None => match reported_peaks(&read_tail(&log_path, 4 << 20)) {
            Some((u, p)) => (u, Some(p)),
            None => (uuids, None),
        },
    };
    if let Some(p) = &peaks {
        for (i, uuid) in uuids.iter().enumerate() {
            let (Some(Some(used)), Some(Some(held))) = (
                p.peak_used_bytes.get(i),
                p.peak_total_minus_free_bytes.get(i),
            ) else {
                continue;
            };
            eprintln!(
                "vla-launch: {uuid}: peak {} used as nvidia-smi shows it ({} NVML total - free), predicted {} ({:+.1}%)",
                fmt_gib(*used),
                fmt_gib(*held),
                fmt_gib(chosen.predicted_peak_bytes),
                (*held as f64 / chosen.predicted_peak_bytes as f64 - 1.0) * 100.0
            );
        }
    }
    let mut diagnosis =
        if outcome.exit_code != 0 && outcome.interrupted_by.is_none() && !outcome.force_killed {
            let tail = read_tail(&log_path, 256 * 1024);
            diagnosis::diagnose(&tail, outcome.exit_code, outcome.signal)
        } else {
            None
        };
    if let (Some(d), Some(c)) = (diagnosis.as_mut(), ctx.plan.chosen.as_ref()) {
        diagnosis::fit_oom_hint(d, c.gradient_checkpointing, c.strategy == Strategy::Fsdp);
    }
    if let Some(d) = &diagnosis {
        eprintln!("vla-launch: {}", d.summary);
        eprintln!("vla-launch: hint: {}", d.hint);
    }
    record.outcome = Some(RunOutcome {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        interrupted_by: outcome.interrupted_by,
        stopped_by_peer: stopped_by_peer.as_ref().map(|s| s.to_string()),
        stopped_by_peer_cause: stopped_by_peer,
        force_killed: outcome.force_killed,
        leftover_processes: outcome.leftover_processes,
        duration_s: Some(outcome.duration.as_secs_f64()),
        log: Some(outcome.log_path.clone()),
        observed_gpu_uuids: uuids,
        hangs: peaks.as_ref().map(|p| p.hangs.clone()),
        observed_peak_used_bytes: peaks.as_ref().map(|p| p.peak_used_bytes.clone()),
        observed_peak_total_minus_free_bytes: peaks
            .as_ref()
            .map(|p| p.peak_total_minus_free_bytes.clone()),
        diagnosis: diagnosis.as_ref().map(|d| RecordedDiagnosis {
            kind: format!("{:?}", d.kind),
            rank: d.rank,
            summary: d.summary.clone(),
            hint: d.hint.clone(),
            evidence: d.evidence.clone(),
        }),
        log_error: outcome.log_error.clone(),
        progress: progress.last().map(|p| RecordedProgress {
            step: p.step,
            max_steps: p.total,
            samples_per_s: p.it_per_s.map(|r| r * samples_per_it),
            elapsed_s: p.elapsed_s,
            eta_s: p.eta_s,
        }),
    });
    if let Err(e) = record::write_file(
        &plan_path,
        &record.to_json_pretty(),
        args.planning.record_mode,
    ) {
        warn!(
            "cannot complete the run record {}: {e}",
            plan_path.display()
        );
    }
    eprintln!("vla-launch: run record {}", plan_path.display());
    learn_from(&record, &plan_path, source);
    let worst_peak = peaks.as_ref().and_then(|p| {
        p.peak_total_minus_free_bytes
            .iter()
            .flatten()
            .max()
            .copied()
    });
    Ok(RunResult {
        outcome,
        status,
        diagnosis,
        worst_peak,
    })
}

/// A multi-node job's node, for its file names: job id, node rank, host.
pub(super) fn node_tag(ctx: &Planned) -> Option<NodeTag> {
    let t = &ctx.topology;
    if !t.is_multi_node() {
        return None;
    }
    let job = t
        .slurm_job_id
        .clone()
        .or_else(|| t.rendezvous.as_ref().map(|r| r.id.clone()))
        .unwrap_or_else(|| "local".into());
    Some(NodeTag {
        job,
        node_rank: t.node_rank,
        host: run_files::host_name(&env_var),
    })
}

/// Adds a completed run's observed peak to the store (normal runs and calibration probes alike).
pub(super) fn learn_from(record: &PlanRecord, record_path: &Path, source: Source) {
    let observations = record::observations(record, record_path, source);
    if observations.is_empty() {
        return;
    }
    let Some(path) = store_path() else {
        return;
    };
    let mut store = calibration::load(&path).unwrap_or_default();
    for (key, obs) in observations {
        info!(
            "calibration: {} observed {} for predicted {}",
            key.label(),
            fmt_gib(obs.observed_peak_bytes),
            fmt_gib(obs.predicted_peak_bytes)
        );
        store.add(key, obs);
    }
    if let Err(e) = calibration::save(&store, &path) {
        warn!("cannot save the calibration store: {e}");
    }
}

/// `--ranks 0,1`: local ranks whose output the terminal shows; each must exist on this node.
pub(super) fn ranks_filter<'a>(
    args: &'a LaunchArgs,
    ctx: &Planned,
    log_dir: PathBuf,
) -> Result<Option<RanksFilter<'a>>> {
    let Some(ranks) = args.ranks.as_deref() else {
        return Ok(None);
    };
    let nproc = ctx.plan.chosen.as_ref().map_or(1, |c| c.nproc_per_node);
    for part in ranks.split(',') {
        match part.trim().parse::<u32>() {
            Ok(r) if r < nproc => {}
            _ => {
                return Err(AppError::usage(format!(
                    "--ranks {}: '{}' is not a local rank of this plan (0 to {})",
                    crate::input::shown(ranks, 40),
                    crate::input::shown(part, 20),
                    nproc - 1
                )));
            }
        }
    }
    Ok(Some(RanksFilter { ranks, log_dir }))
}

/// `--peer-watch-port`: `Ok(None)` for off, `Ok(Some(None))` for the default port.
pub(super) fn peer_watch_port(args: &LaunchArgs) -> Result<Option<Option<u16>>> {
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
pub(super) fn start_peer_watch(
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

/// Peaks the training script printed itself, one `VLA_PROBE_RESULT {json}` line per rank
/// (scripts/probe_finetune.py): GPU UUIDs and NVML total - free peaks.
pub(super) fn reported_peaks(log: &[u8]) -> Option<(Vec<String>, crate::monitor::Peaks)> {
    const MARK: &str = "VLA_PROBE_RESULT ";
    let text = String::from_utf8_lossy(log);
    let mut uuids = Vec::new();
    let mut peaks = crate::monitor::Peaks::default();
    for line in text.split(['\n', '\r']) {
        let Some(i) = line.find(MARK) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line[i + MARK.len()..]) else {
            continue;
        };
        let (Some(uuid), Some(peak)) = (v["gpu_uuid"].as_str(), v["peak_nvml_used_bytes"].as_u64())
        else {
            continue;
        };
        uuids.push(uuid.to_string());
        peaks.peak_total_minus_free_bytes.push(Some(peak));
        peaks
            .peak_used_bytes
            .push(v["peak_nvml_used_v2_bytes"].as_u64().or(Some(peak)));
        peaks.samples += 1;
    }
    (!uuids.is_empty()).then_some((uuids, peaks))
}

pub(super) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last `max` bytes of a file (the diagnosis reads the end of the run log).
pub(super) fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    // Bounded: the "file" may be a device that never ends (a log path on /dev/full).
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

/// The status line is for a person at a terminal: both output streams on one, and a terminal
/// that can erase a line.
fn status_on_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// The launcher's exit status for a run (0, 1 or 128+N): a node stopped by another node's
/// failure exits with that failure's code, so that srun and the job's state show the real
/// failure and not this node's SIGTERM (docs/cluster.md, contract 5). A peer that was lost or
/// gone (no code) reads as a failed training, unless this node had been signalled first.
pub(super) fn exit_status(outcome: &supervisor::Outcome, peer: Option<&peers::PeerStop>) -> i32 {
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
