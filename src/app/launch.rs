//! The launch form: plan, spawn and supervise torchrun, diagnose, re-plan after an OOM, keep the
//! run record and feed the calibration store; `--plan-file` and `replay`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Context, RanksFilter, build_context, command_for, confirm_script_flags, env_var, exit,
    load_profile, plan_json, warn_missing,
};
use crate::calibration::{self, Source, Store};
use crate::cli::{LaunchArgs, PlanningArgs, StrategyArg, Toggle};
use crate::cluster::peers::{self, PeerWatch};
use crate::launch::command::{self, LaunchCommand};
use crate::launch::diagnosis;
use crate::launch::supervisor::{self, SuperviseOptions};
use crate::monitor::{Monitor, NvmlSampler, WatchdogConfig};
use crate::plan::retry;
use crate::profile;
use crate::units::fmt_gib;

pub(super) fn cmd_launch(mut args: LaunchArgs) -> Result<i32> {
    if let Some(path) = args.plan_file.clone() {
        pin_to_plan_file(&mut args.planning, &path)?;
    }
    if args.planning.profile.is_none() {
        return Err(exit(
            2,
            "no profile given: `vla-launch --profile aloha` launches, `vla-launch --help` lists the commands",
        ));
    }
    // Checked on every launch, so a typo is caught on one node before the job goes wide.
    peer_watch_port(&args)?;
    // A real launch first asks the script which planner flags it really takes.
    let accepts = if args.dry_run {
        None
    } else {
        let loaded = load_profile(args.planning.profile.as_deref(), &args.planning.sets)?;
        confirm_script_flags(&loaded)?
    };
    let mut ctx = build_context(&args.planning, &args.extra, accepts, args.dry_run)?;
    if let (Some(path), false) = (&args.plan_file, ctx.plan.feasible) {
        return Err(exit(
            3,
            format!(
                "this node's GPUs cannot hold the plan in {}: {}",
                path.display(),
                ctx.plan.reasons.join("; ")
            ),
        ));
    }
    for w in &ctx.warnings {
        warn!("{w}");
    }
    if ctx.gpus.iter().any(|g| g.described) {
        warn!(
            "the GPUs were described with --gpus, not queried: the plan is only as good as that description"
        );
    }
    eprint!("{}", ctx.render(false));
    if !ctx.plan.feasible {
        let forced = args.force && ctx.pins.all_pinned() && ctx.plan.chosen.is_some();
        if !forced {
            if args.force {
                return Err(exit(
                    2,
                    "--force needs a fully pinned configuration: --strategy, --batch-size, --grad-accum and --checkpointing",
                ));
            }
            return Ok(3);
        }
        warn!("--force: launching a configuration the plan says does not work");
    }
    if args.dry_run {
        if let Some(message) = super::missing_script(&ctx.loaded) {
            warn!("{message}");
        }
        let ranks = ranks_filter(&args, &ctx, PathBuf::from("<log-dir>/torchrun"))?;
        let (cmd, missing) = command_for(&ctx, args.torchrun.as_deref(), ranks)?;
        warn_missing(&missing);
        println!("{}", command::display(&cmd));
        return Ok(0);
    }
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => profile::resolved_flags(&ctx.loaded.profile, &env_var)
            .flags
            .iter()
            .find(|(k, _)| k == "--run_root_dir")
            .map(|(_, v)| Path::new(v).join("vla-launch"))
            .unwrap_or_else(|| PathBuf::from("vla-launch-logs")),
    };
    let mut attempt = 0;
    loop {
        let run = launch_once(&ctx, &args, &log_dir, attempt, Source::Run)?;
        let oom = run
            .diagnosis
            .as_ref()
            .filter(|d| d.kind == diagnosis::DiagnosisKind::CudaOom);
        let (Some(d), Some(failed)) = (oom, ctx.plan.chosen.clone()) else {
            return Ok(run.outcome.process_exit_code());
        };
        let oom_details = match &d.details {
            diagnosis::Details::CudaOom(o) => Some(o),
            _ => None,
        };
        let observed = retry::oom_evidence(run.worst_peak, oom_details);
        match retry::replan_after_oom(
            &ctx.plan_input(),
            &failed,
            observed,
            attempt,
            args.oom_retries,
        ) {
            retry::RetryDecision::Stop { reason } => {
                eprintln!("vla-launch: {reason}");
                return Ok(run.outcome.process_exit_code());
            }
            retry::RetryDecision::Retry { plan, message } => {
                eprintln!("vla-launch: {message}");
                ctx.plan = *plan;
                attempt += 1;
            }
        }
    }
}

pub(super) fn store_path() -> Option<PathBuf> {
    calibration::default_path(&env_var)
        .map_err(|e| warn!("calibration store off: {e}"))
        .ok()
}

/// The calibration store, or an empty one (a broken store is reported, never fatal).
pub(super) fn load_store() -> Store {
    let Some(path) = store_path() else {
        return Store::default();
    };
    calibration::load(&path).unwrap_or_else(|e| {
        warn!("calibration store ignored: {e}");
        Store::default()
    })
}

/// Adds a completed run's observed peak to the store (normal runs and calibration probes alike).
fn learn_from(record: &serde_json::Value, record_path: &Path, source: Source) {
    let Ok(rec) = crate::record::from_value(record, record_path) else {
        return;
    };
    let observations = crate::record::observations(&rec, source);
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

/// `--plan-file`: every node runs the plan written by `vla-launch plan -o` (on a login node or
/// node 0), so all nodes pass identical planner flags; this node only checks its GPUs can hold it.
fn pin_to_plan_file(args: &mut PlanningArgs, path: &Path) -> Result<()> {
    let bad = |why: String| exit(2, format!("--plan-file {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a plan written by `vla-launch plan -o`: {e}")))?;
    if v["feasible"] != json!(true) {
        return Err(bad("the plan in it is not feasible; plan again".into()));
    }
    let num = |key: &str| -> Result<u32> {
        v[key]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "no `{key}` in it; write it with `vla-launch plan -o FILE`"
                ))
            })
    };
    let profile = v["profile"].as_str().unwrap_or_default().to_string();
    match &args.profile {
        Some(p)
            if Path::new(p).file_stem().and_then(|s| s.to_str()) != Some(profile.as_str())
                && *p != profile =>
        {
            return Err(bad(format!(
                "it was made for profile '{profile}', not '{p}'"
            )));
        }
        Some(_) => {}
        None => args.profile = Some(profile),
    }
    args.strategy = match v["strategy"].as_str() {
        Some("ddp") => StrategyArg::Ddp,
        Some("fsdp") => StrategyArg::Fsdp,
        other => return Err(bad(format!("unknown strategy {other:?}"))),
    };
    args.checkpointing = match v["gradient_checkpointing"].as_bool() {
        Some(true) => Toggle::On,
        Some(false) => Toggle::Off,
        None => return Err(bad("no `gradient_checkpointing` in it".into())),
    };
    args.batch_size = Some(num("batch_size")?);
    args.grad_accum = Some(num("grad_accumulation_steps")?);
    args.nproc = Some(num("nproc_per_node")?);
    let nnodes = num("nnodes")?;
    if args.nnodes.is_some_and(|n| n != nnodes) {
        return Err(bad(format!(
            "it is for {nnodes} nodes, but --nnodes says otherwise"
        )));
    }
    args.nnodes = Some(nnodes);
    args.global_batch = Some(num("min_global_batch")?);
    Ok(())
}

/// `--ranks 0,1`: local ranks whose output the terminal shows; each must exist on this node.
fn ranks_filter<'a>(
    args: &'a LaunchArgs,
    ctx: &Context,
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
                return Err(exit(
                    2,
                    format!(
                        "--ranks {ranks}: '{part}' is not a local rank of this plan (0 to {})",
                        nproc - 1
                    ),
                ));
            }
        }
    }
    Ok(Some(RanksFilter { ranks, log_dir }))
}

/// What one launch of torchrun left behind.
pub(super) struct RunResult {
    pub(super) outcome: supervisor::Outcome,
    diagnosis: Option<diagnosis::Diagnosis>,
    /// The largest NVML (total - free) peak among the run's GPUs.
    worst_peak: Option<u64>,
}

pub(super) fn launch_once(
    ctx: &Context,
    args: &LaunchArgs,
    log_dir: &Path,
    attempt: u32,
    source: Source,
) -> Result<RunResult> {
    let stamp_dir = log_dir.join(format!("torchrun-{attempt}-{}", std::process::id()));
    let ranks = ranks_filter(args, ctx, stamp_dir)?;
    let (cmd, missing) = command_for(ctx, args.torchrun.as_deref(), ranks)?;
    profile::require_env(&missing, &ctx.loaded.origin)?;
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create the log directory {}", log_dir.display()))
        .map_err(|e| exit(4, format!("{e:#}; pass --log-dir DIR")))?;
    let started = unix_seconds();
    // Launches of one process (calibration probes, retries) can start within the same second:
    // number them so no run's log or record overwrites another's.
    static LAUNCHES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut stamp = started.to_string();
    if n > 0 {
        stamp.push_str(&format!("-{n}"));
    }
    if attempt > 0 {
        stamp.push_str(&format!("-retry{attempt}"));
    }
    let log_path = log_dir.join(format!("run-{stamp}.log"));
    let plan_path = log_dir.join(format!("plan-{stamp}.json"));
    let mut record = plan_json(ctx, Some(&cmd));
    record["cwd"] = json!(cmd.cwd);
    record["started_unix"] = json!(started);
    record["attempt"] = json!(attempt);
    record["launcher_version"] = json!(env!("CARGO_PKG_VERSION"));
    std::fs::write(&plan_path, serde_json::to_string_pretty(&record)? + "\n")
        .map_err(|e| exit(4, format!("cannot write {}: {e}", plan_path.display())))?;
    eprintln!("vla-launch: {}", command::display(&cmd));
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
    let stopped_by_peer = Arc::new(Mutex::new(None::<String>));
    let peers = start_peer_watch(ctx, args, &opts.signals, stopped_by_peer.clone())?;
    let result = supervisor::run_blocking(&cmd, &opts);
    let peaks = monitor.map(Monitor::stop);
    if let Some(watch) = peers {
        watch.finish(result.as_ref().map_or(1, |o| o.process_exit_code()));
    }
    let outcome = result?;
    let stopped_by_peer = stopped_by_peer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
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
    let diagnosis =
        if outcome.exit_code != 0 && outcome.interrupted_by.is_none() && !outcome.force_killed {
            let tail = read_tail(&log_path, 256 * 1024);
            diagnosis::diagnose(&tail, outcome.exit_code, outcome.signal)
        } else {
            None
        };
    if let Some(d) = &diagnosis {
        eprintln!("vla-launch: {}", d.summary);
        eprintln!("vla-launch: hint: {}", d.hint);
    }
    record["outcome"] = json!({
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "interrupted_by": outcome.interrupted_by,
        "stopped_by_peer": stopped_by_peer,
        "force_killed": outcome.force_killed,
        "leftover_processes": outcome.leftover_processes,
        "duration_s": outcome.duration.as_secs_f64(),
        "log": outcome.log_path,
        "observed_gpu_uuids": uuids,
        "hangs": peaks.as_ref().map(|p| &p.hangs),
        "observed_peak_used_bytes": peaks.as_ref().map(|p| &p.peak_used_bytes),
        "observed_peak_total_minus_free_bytes": peaks.as_ref().map(|p| &p.peak_total_minus_free_bytes),
        "diagnosis": diagnosis.as_ref().map(|d| json!({
            "kind": format!("{:?}", d.kind),
            "rank": d.rank,
            "summary": d.summary,
            "hint": d.hint,
            "evidence": d.evidence,
        })),
    });
    if let Err(e) = std::fs::write(&plan_path, serde_json::to_string_pretty(&record)? + "\n") {
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
        diagnosis,
        worst_peak,
    })
}

/// `vla-launch replay plan.json`: runs exactly the recorded command again.
pub(super) fn cmd_replay(path: &Path, grace: u64) -> Result<i32> {
    let rec = crate::record::load(path).map_err(|e| exit(2, e.to_string()))?;
    let env = rec
        .replay_env(&env_var)
        .map_err(|e| exit(2, e.to_string()))?;
    let (program, rest) = rec
        .argv
        .split_first()
        .ok_or_else(|| exit(2, format!("{}: the record has no command", path.display())))?;
    let cmd = LaunchCommand {
        program: PathBuf::from(program),
        args: rest.iter().map(Into::into).collect(),
        env,
        cwd: rec.cwd.clone().unwrap_or_else(|| PathBuf::from(".")),
        alloc_conf: command::AllocConf {
            value: String::new(),
            source: command::AllocConfSource::Profile,
        },
    };
    let log_dir = path.parent().unwrap_or(Path::new("."));
    let stamp = unix_seconds();
    eprintln!(
        "vla-launch: replaying {}: {}",
        path.display(),
        command::display(&cmd)
    );
    let mut opts = SuperviseOptions::new(log_dir.join(format!("replay-{stamp}.log")));
    opts.grace = Duration::from_secs(grace);
    let outcome = supervisor::run_blocking(&cmd, &opts)?;
    eprintln!("vla-launch: {}", supervisor::summary_line(&outcome));
    Ok(outcome.process_exit_code())
}

/// `--peer-watch-port`: `Ok(None)` for off, `Ok(Some(None))` for the default port.
fn peer_watch_port(args: &LaunchArgs) -> Result<Option<Option<u16>>> {
    match args.peer_watch_port.as_deref().map(str::trim) {
        None => Ok(Some(None)),
        Some("off") => Ok(None),
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(Some(port))),
            _ => Err(exit(
                2,
                format!("--peer-watch-port {p}: not a port number (1-65535) or \"off\""),
            )),
        },
    }
}

/// Several nodes: start the peer watch (node 0 listens, the others connect to it) so that one
/// node's failure stops the whole job. `stopped` receives the reason when it stops this node.
fn start_peer_watch(
    ctx: &Context,
    args: &LaunchArgs,
    signals: &supervisor::SignalHandle,
    stopped: Arc<Mutex<Option<String>>>,
) -> Result<Option<PeerWatch>> {
    let Some(asked) = peer_watch_port(args)? else {
        return Ok(None);
    };
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
    let port = asked.unwrap_or_else(|| peers::watch_port(rdzv_port));
    let handle = signals.clone();
    let on_stop: peers::OnStop = Arc::new(move |why: String| {
        warn!(
            "{why}: stopping this node's training too (SIGTERM to torchrun, then the grace period)"
        );
        *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        handle.stop();
    });
    let node = ctx.topology.node_rank;
    let watch = if node == 0 {
        PeerWatch::hub(&rdzv.id, port, on_stop)
    } else {
        PeerWatch::peer(&rdzv.id, node, host, port, on_stop)
    };
    match watch {
        Ok(w) => {
            info!("peer watch: node {node} on port {port}");
            Ok(Some(w))
        }
        Err(e) => {
            warn!(
                "peer watch off ({e} on port {port}; choose one with --peer-watch-port): if a node fails, the others wait for NCCL's timeout"
            );
            Ok(None)
        }
    }
}

/// Peaks the training script printed itself, one `VLA_PROBE_RESULT {json}` line per rank
/// (scripts/probe_finetune.py): GPU UUIDs and NVML total - free peaks.
fn reported_peaks(log: &[u8]) -> Option<(Vec<String>, crate::monitor::Peaks)> {
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

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The last `max` bytes of a file (the diagnosis reads the end of the run log).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf
}
