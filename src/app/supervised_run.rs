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

mod peers_at_start;
pub(super) use peers_at_start::peer_watch_port;
use peers_at_start::{exit_status, leave_start_failure, peer_cause, start_peer_watch};

/// What one launch of torchrun left behind.
pub(super) struct RunResult {
    pub(super) outcome: supervisor::Outcome,
    /// The launcher's exit status for this run ([`exit_status`]).
    pub(super) status: i32,
    pub(super) diagnosis: Option<diagnosis::Diagnosis>,
    /// The largest NVML (total - free) peak among the run's GPUs.
    pub(super) worst_peak: Option<u64>,
}

/// One launch in phases, each handing the next a named value, so the order the run depends on
/// is the order of the types: [`claim`] (command, files, begin-record) -> [`prepare`] (options,
/// peer watch, monitor) -> [`supervise`] (the command line, torchrun, then the peer watch told this node's code)
/// -> [`finish`] (peaks, diagnosis, the completed record, what the store learns).
pub(super) fn launch_once(
    ctx: &Planned,
    args: &LaunchArgs,
    log_dir: &Path,
    attempt: u32,
    source: Source,
) -> Result<RunResult> {
    let claimed = claim(ctx, args, log_dir, attempt)?;
    let prepared = prepare(claimed, ctx, args, log_dir)?;
    let supervised = supervise(prepared, ctx, log_dir);
    finish(supervised, ctx, source)
}

/// The command, this run's files and its begin-record: a run that exists, not started yet.
struct Claimed {
    cmd: command::LaunchCommand,
    log_path: PathBuf,
    recorder: record::Recorder,
}

impl Claimed {
    /// A launch refused after its record began (the rendezvous port taken, torchrun missing):
    /// the log says why and the record gets an outcome, so neither is left empty or open.
    fn refuse(self, err: AppError) -> AppError {
        let code = err.exit_code().code();
        let why = err.to_string();
        append_note(
            &self.log_path,
            &format!("launch refused (exit {code}): {why}"),
        );
        let path = self.recorder.path().to_path_buf();
        let (_, written) = self.recorder.complete(RunOutcome {
            exit_code: code,
            log: Some(self.log_path.clone()),
            diagnosis: Some(RecordedDiagnosis {
                kind: "LaunchRefused".into(),
                summary: why,
                hint: "the launch stopped before torchrun ran to an end: see the log's last line"
                    .into(),
                ..RecordedDiagnosis::default()
            }),
            ..RunOutcome::default()
        });
        if let Err(e) = written {
            warn!("cannot complete the run record {}: {e}", path.display());
        }
        err
    }
}

/// Builds the command and claims the log and the record, which begins with the plan. A launch
/// refused here leaves no file behind and `latest.*` where it was.
fn claim(ctx: &Planned, args: &LaunchArgs, log_dir: &Path, attempt: u32) -> Result<Claimed> {
    let stamp_dir = log_dir.join(format!("torchrun-{attempt}-{}", std::process::id()));
    let ranks = ranks_filter(args, ctx, stamp_dir)?;
    let (cmd, missing) = command_for(ctx, args.torchrun.as_deref(), ranks)?;
    profile::require_env(&missing, &ctx.loaded.origin)?;
    let mode = args.planning.record_mode;
    let no_files = |e: std::io::Error| {
        AppError::environment(format!(
            "cannot create this run's log and record in {}: {e}; pass --log-dir DIR with a writable directory",
            log_dir.display()
        ))
    };
    record::create_dir(log_dir, mode).map_err(|e| {
        AppError::environment(format!(
            "cannot create the log directory {}: {e}; pass --log-dir DIR",
            log_dir.display()
        ))
    })?;
    let started = unix_seconds();
    let node = node_tag(ctx);
    let stamp = run_files::local_stamp(started as i64);
    let files =
        run_files::claim(log_dir, "run", &stamp, node.as_ref(), attempt, mode).map_err(no_files)?;
    let log_path = files.log.clone();
    let plan_path = files.record.clone().expect("a launch claims a record");
    let begin = PlanRecord {
        cwd: Some(cmd.cwd.clone()),
        started_unix: Some(started),
        attempt: Some(attempt),
        launcher_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        ..plan_record(ctx, Some(&cmd))
    };
    let recorder = record::Recorder::begin(&plan_path, mode, begin).map_err(|e| {
        // Not a run: its claimed (empty) files go, and `latest.*` keeps pointing at the last run.
        files.remove();
        no_files(e)
    })?;
    for f in [&log_path, &plan_path] {
        if let Err(e) = run_files::point_latest(f, node.as_ref()) {
            warn!("cannot point latest at {}: {e}", f.display());
        }
    }
    Ok(Claimed {
        cmd,
        log_path,
        recorder,
    })
}

/// Everything started around torchrun before it starts: the supervisor's options (the Slurm
/// grace applied), the peer watch (whose start-up warnings come before the command line), the
/// VRAM monitor and the progress tracker.
struct Prepared {
    claimed: Claimed,
    opts: SuperviseOptions,
    peers: Option<PeerWatch>,
    stopped_by_peer: Arc<Mutex<Option<peers::PeerStop>>>,
    monitor: Option<Monitor>,
    uuids: Vec<String>,
    progress: Arc<status::Tracker>,
    samples_per_it: f64,
}

fn prepare(claimed: Claimed, ctx: &Planned, args: &LaunchArgs, log_dir: &Path) -> Result<Prepared> {
    let chosen = ctx.plan.chosen.as_ref().expect("launch only with a plan");
    let mut opts = SuperviseOptions::new(&claimed.log_path);
    opts.grace = Duration::from_secs(args.grace);
    opts.record = Some(claimed.recorder.path().to_path_buf());
    if env_var("SLURM_JOB_ID").is_some() {
        slurm_grace(&mut opts);
    }
    let stopped_by_peer = Arc::new(Mutex::new(None::<peers::PeerStop>));
    let peers = match start_peer_watch(ctx, args, log_dir, &opts.signals, stopped_by_peer.clone()) {
        Ok(p) => p,
        Err(e) => {
            leave_start_failure(ctx, log_dir, &e);
            return Err(claimed.refuse(e));
        }
    };
    let uuids: Vec<String> = ctx
        .gpus
        .iter()
        .filter(|g| chosen.gpu_indices.contains(&g.index) && !g.described)
        .map(|g| g.uuid.clone())
        .collect();
    let monitor = start_monitor(&uuids, args, &claimed.log_path);
    // tqdm counts micro-batches on each rank: one iteration is this many samples.
    let samples_per_it =
        f64::from(chosen.batch_size) * f64::from(chosen.nproc_per_node) * f64::from(chosen.nnodes);
    let progress = status::Tracker::new(status_on_terminal().then(|| status::StatusConfig {
        samples_per_it,
        predicted_peak_bytes: chosen.predicted_peak_bytes,
        gpu_used_bytes: monitor.as_ref().map(Monitor::current).unwrap_or_default(),
    }));
    opts.progress = Some(progress.clone());
    Ok(Prepared {
        claimed,
        opts,
        peers,
        stopped_by_peer,
        monitor,
        uuids,
        progress,
        samples_per_it,
    })
}

/// Under Slurm: a repeated SIGTERM is Slurm's, not a user's; the grace ends before KillWait's.
fn slurm_grace(opts: &mut SuperviseOptions) {
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

fn start_monitor(uuids: &[String], args: &LaunchArgs, log_path: &Path) -> Option<Monitor> {
    if uuids.is_empty() {
        return None;
    }
    match NvmlSampler::new(uuids.to_vec()) {
        Ok(s) => Some(Monitor::start(
            Box::new(s),
            Duration::from_millis(200),
            (args.hang_minutes > 0).then(|| WatchdogConfig {
                log_path: log_path.to_path_buf(),
                threshold: Duration::from_secs(args.hang_minutes * 60),
                idle_percent: 2,
            }),
        )),
        Err(e) => {
            warn!("VRAM monitor off: {e}");
            None
        }
    }
}

/// torchrun has run, and the peer watch knows how this node ended.
struct Supervised {
    claimed: Claimed,
    result: std::result::Result<supervisor::Outcome, supervisor::LaunchError>,
    status: i32,
    stopped_by_peer: Option<peers::PeerStop>,
    peaks: Option<crate::monitor::Peaks>,
    uuids: Vec<String>,
    progress: Arc<status::Tracker>,
    samples_per_it: f64,
    /// Processes the kernel's OOM killer killed on this host while torchrun ran, if known.
    oom_kills: Option<u64>,
}

fn supervise(p: Prepared, ctx: &Planned, log_dir: &Path) -> Supervised {
    eprintln!("vla-launch: {}", command::display(&p.claimed.cmd));
    let oom_before = crate::launch::process_tree::oom_kill_count();
    // A stop signal held while this launcher started (under Slurm): torchrun is not started.
    let result = match super::slurm::release_stop_signals() {
        Some(sig) => Ok(supervisor::Outcome::not_started(sig, &p.claimed.log_path)),
        None => supervisor::run_blocking(&p.claimed.cmd, &p.opts),
    };
    let oom_kills = crate::launch::process_tree::oom_kill_count()
        .zip(oom_before)
        .map(|(after, before)| after.saturating_sub(before));
    let peaks = p.monitor.map(Monitor::stop);
    let from_watch = p
        .stopped_by_peer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let stopped_by_peer = peer_cause(ctx, log_dir, result.as_ref().ok(), from_watch);
    if let Some(o) = result.as_ref().ok().filter(|o| o.not_started) {
        note_not_started(o, stopped_by_peer.as_ref());
    }
    let status = result
        .as_ref()
        .map_or(1, |o| exit_status(o, stopped_by_peer.as_ref()));
    if let Some(watch) = p.peers {
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
    Supervised {
        claimed: p.claimed,
        result,
        status,
        stopped_by_peer,
        peaks,
        uuids: p.uuids,
        progress: p.progress,
        samples_per_it: p.samples_per_it,
        oom_kills,
    }
}

/// The log of a run stopped before torchrun started says so, and why when another node said.
fn note_not_started(o: &supervisor::Outcome, peer: Option<&peers::PeerStop>) {
    let sig = o.interrupted_by.unwrap_or(libc::SIGTERM);
    let name = supervisor::signal_name(sig);
    let why = peer.map_or(String::new(), |p| format!(": {p}"));
    append_note(
        &o.log_path,
        &format!("stopped before torchrun started ({name} came first){why}"),
    );
}

fn finish(s: Supervised, ctx: &Planned, source: Source) -> Result<RunResult> {
    let outcome = match s.result {
        Ok(o) => o,
        Err(e) => return Err(s.claimed.refuse(e.into())),
    };
    let status = s.status;
    if let (Some(why), true) = (&s.stopped_by_peer, status != outcome.process_exit_code()) {
        warn!("exit {status}: {why} (the job's real failure, not this node's stop)");
    }
    eprintln!("vla-launch: {}", supervisor::summary_line(&outcome));
    let log_path = &s.claimed.log_path;
    // Without NVML (described GPUs), a script that reports its own peaks (the probe trainer's
    // `VLA_PROBE_RESULT` lines) still tells what each GPU held.
    let (uuids, peaks) = match s.peaks {
        Some(p) => (s.uuids, Some(p)),
        None => match reported_peaks(&read_tail(log_path, 4 << 20)) {
            Some((u, p)) => (u, Some(p)),
            None => (s.uuids, None),
        },
    };
    let chosen = ctx.plan.chosen.as_ref().expect("launch only with a plan");
    if let Some(p) = &peaks {
        print_peaks(&uuids, p, chosen.predicted_peak_bytes);
    }
    let diagnosis = diagnose(&outcome, log_path, chosen, s.oom_kills);
    let recorded = RunOutcome {
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        interrupted_by: outcome.interrupted_by,
        stopped_by_peer: s.stopped_by_peer.as_ref().map(|p| p.to_string()),
        stopped_by_peer_cause: s.stopped_by_peer,
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
        diagnosis: diagnosis.as_ref().map(recorded),
        log_error: outcome.log_error.clone(),
        progress: s.progress.last().map(|p| RecordedProgress {
            step: p.step,
            max_steps: p.total,
            samples_per_s: p.it_per_s.map(|r| r * s.samples_per_it),
            elapsed_s: p.elapsed_s,
            eta_s: p.eta_s,
        }),
    };
    let plan_path = s.claimed.recorder.path().to_path_buf();
    let (record, written) = s.claimed.recorder.complete(recorded);
    if let Err(e) = written {
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

/// Each GPU's observed peak beside the prediction.
fn print_peaks(uuids: &[String], p: &crate::monitor::Peaks, predicted: u64) {
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
            fmt_gib(predicted),
            (*held as f64 / predicted as f64 - 1.0) * 100.0
        );
    }
}

/// Why a training that failed on its own failed (none for a stopped or killed run), printed.
fn diagnose(
    outcome: &supervisor::Outcome,
    log_path: &Path,
    chosen: &crate::plan::Candidate,
    oom_kills: Option<u64>,
) -> Option<diagnosis::Diagnosis> {
    if outcome.exit_code == 0 || outcome.interrupted_by.is_some() || outcome.force_killed {
        return None;
    }
    // What the training printed: the log's own prefixes would hide torchrun's `[rankN]:` ones.
    let tail = crate::launch::log::training_output(&read_tail(log_path, 256 * 1024));
    let mut d = diagnosis::diagnose_run(&tail, outcome.exit_code, outcome.signal, oom_kills)?;
    diagnosis::fit_oom_hint(
        &mut d,
        chosen.gradient_checkpointing,
        chosen.strategy == Strategy::Fsdp,
    );
    eprintln!("vla-launch: {}", d.summary);
    eprintln!("vla-launch: hint: {}", d.hint);
    Some(d)
}

fn recorded(d: &diagnosis::Diagnosis) -> RecordedDiagnosis {
    RecordedDiagnosis {
        kind: format!("{:?}", d.kind),
        rank: d.rank,
        summary: d.summary.clone(),
        hint: d.hint.clone(),
        evidence: d.evidence.clone(),
    }
}

/// Appends a note to a run log the supervisor never opened (best effort).
fn append_note(log_path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log_path) {
        let _ = f.write_all(&crate::launch::log::note_record(text));
    }
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
