//! The launch form (`vla-launch --profile NAME`): plan, run torchrun under supervision, re-plan
//! after a CUDA OOM; `--plan-file` pins every node to one plan.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::resume;
use crate::app::settings::{Planned, env_var, missing_script, resolve_plan, warn_missing};
use crate::app::supervised_run::{launch_once, peer_watch_port, ranks_filter};
use crate::app::torchrun::command_for;
use crate::budget::Strategy;
use crate::calibration::Source;
use crate::cli::{LaunchArgs, PlanningArgs, StrategyArg, Toggle};
use crate::launch::command;
use crate::launch::diagnosis;
use crate::plan::retry;
use crate::record;
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::{eprint_lossy as eprint, eprintln_lossy as eprintln, println_lossy as println};

/// The global -q / -v: -q leaves the plan out of the terminal, -v adds its memory budget
/// (the table and a bar per GPU, as `plan --explain`).
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::app) struct Verbosity {
    pub quiet: bool,
    pub verbose: u8,
}

pub(in crate::app) fn cmd_launch(mut args: LaunchArgs, verbosity: Verbosity) -> Result<ExitCode> {
    if let Some(path) = args.plan_file.clone() {
        pin_to_plan_file(&mut args.planning, &path)?;
    }
    if args.planning.profile.is_none() {
        return Err(AppError::usage(
            "no profile given: `vla-launch --profile aloha` launches, `vla-launch --help` lists the commands",
        ));
    }
    // Checked on every launch, so a typo is caught on one node before the job goes wide.
    peer_watch_port(&args)?;
    let ctx = resolve_plan(&args.planning, &args.extra, !args.dry_run, args.dry_run)?;
    if let (Some(path), false) = (&args.plan_file, ctx.plan.feasible) {
        return Err(AppError::infeasible(format!(
            "this node's GPUs cannot hold the plan in {}: {}",
            path.display(),
            ctx.plan.reasons.join("; ")
        )));
    }
    let (mut ctx, resumed) = decide_resume(ctx, &args);
    show_plan(&ctx, resumed, verbosity);
    if !ctx.plan.feasible {
        let forced = args.force && ctx.pins.all_pinned() && ctx.plan.chosen.is_some();
        if !forced {
            if args.force {
                return Err(AppError::usage(
                    "--force needs a fully pinned configuration: --strategy, --batch-size, --grad-accum and --checkpointing",
                ));
            }
            return Ok(ExitCode::Infeasible);
        }
        warn!("--force: launching a configuration the plan says does not work");
    }
    if args.dry_run {
        return print_dry_run(&ctx, &args);
    }
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => ctx
            .resolved
            .run_root_dir()
            .map(|d| d.join("vla-launch"))
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
            return Ok(ExitCode::of_run(run.status));
        };
        let oom_details = match &d.details {
            diagnosis::Details::CudaOom(o) => Some(o),
            _ => None,
        };
        let observed = diagnosis::oom_evidence(run.worst_peak, oom_details);
        match retry::replan_after_oom(
            &ctx.plan_input(),
            &failed,
            observed,
            attempt,
            args.oom_retries,
        ) {
            retry::RetryDecision::Stop { reason } => {
                eprintln!("vla-launch: {reason}");
                return Ok(ExitCode::of_run(run.status));
            }
            retry::RetryDecision::Retry { plan, message } => {
                eprintln!("vla-launch: {message}");
                ctx = ctx.with_plan(*plan);
                attempt += 1;
            }
        }
    }
}

/// The warnings and the plan as a launch shows them on stderr, with `--resume`'s line.
fn show_plan(ctx: &Planned, resumed: Option<String>, verbosity: Verbosity) {
    let node = ctx.topology.node_rank;
    let other_node = ctx.topology.is_multi_node() && node > 0;
    if other_node {
        // The job's nodes usually share one output file: say which node each line is from.
        crate::launch::term::set_line_prefix(format!("[node {node}] "));
    }
    for w in &ctx.warnings {
        warn!("{w}");
    }
    if ctx.gpus.iter().any(|g| g.described) {
        warn!(
            "the GPUs were described with --gpus, not queried: the plan is only as good as that description"
        );
    }
    // The plan once per job (node 0), unless this node's differs by failing. An infeasible plan
    // is the error itself: shown even with -q.
    if other_node && ctx.plan.feasible {
        if !verbosity.quiet {
            eprintln!(
                "vla-launch: node {node} of {}: the plan is node 0's (printed there)",
                ctx.topology.nnodes
            );
        }
    } else if !verbosity.quiet || !ctx.plan.feasible {
        eprint!("{}", ctx.render(verbosity.verbose > 0));
    }
    if let Some(line) = resumed {
        eprintln!("vla-launch: {line}");
    }
}

/// `--dry-run`: the exact command on stdout, nothing run.
fn print_dry_run(ctx: &Planned, args: &LaunchArgs) -> Result<ExitCode> {
    if let Some(message) = missing_script(&ctx.loaded, &ctx.resolved) {
        warn!("{message}");
    }
    let ranks = ranks_filter(args, ctx, PathBuf::from("<log-dir>/torchrun"))?;
    let (cmd, missing) = command_for(ctx, args.torchrun.as_deref(), ranks)?;
    warn_missing(&missing);
    println!("{}", command::display_with_unset(&cmd, &missing));
    Ok(ExitCode::Success)
}

/// `--resume`: the plan with the script's resume flags (and, under Slurm, its fixed run id),
/// and what to tell the user.
fn decide_resume(ctx: Planned, args: &LaunchArgs) -> (Planned, Option<String>) {
    let from_profile = ctx
        .resolved
        .flags
        .flags
        .iter()
        .rev()
        .find(|(k, _)| k == "--run_id_override")
        .map(|(_, v)| v.as_str());
    let run_id_given = ctx
        .script_args
        .last_value("run_id_override")
        .or(from_profile);
    let slurm_job = env_var("SLURM_JOB_ID").filter(|j| !j.is_empty());
    let restart_count = env_var("SLURM_RESTART_COUNT")
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    let run_root = ctx.resolved.run_root_dir();
    let decision = resume::decide(&resume::Situation {
        mode: args.resume,
        profile: &ctx.loaded.name,
        run_root: run_root.as_deref(),
        run_id_given,
        slurm_job: slurm_job.as_deref(),
        restart_count,
        needs: resume::Needs::from_flags(&ctx.resolved.flags.flags),
    });
    (ctx.with_resume_flags(decision.flags), decision.message)
}

/// `--plan-file`: every node runs the plan written by `vla-launch plan -o` (on a login node or
/// node 0), so all nodes pass identical planner flags; this node only checks its GPUs can hold it.
pub(in crate::app) fn pin_to_plan_file(args: &mut PlanningArgs, path: &Path) -> Result<()> {
    let bad = |why: String| AppError::usage(format!("--plan-file {}: {why}", path.display()));
    let v = match record::load(path) {
        Ok(v) => v,
        Err(record::RecordError::Read { source, .. }) => {
            return Err(bad(format!("cannot read it: {source}")));
        }
        Err(record::RecordError::Parse { message, .. }) => {
            return Err(bad(format!(
                "not a plan written by `vla-launch plan -o`: {message}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // Range-checked here, naming the file's field (not the flag it becomes).
    use crate::cli::{MAX_BATCH_SIZE, MAX_GLOBAL_BATCH, MAX_GRAD_ACCUM, MAX_NNODES, MAX_NPROC};
    for (field, value, max) in [
        ("batch_size", v.batch_size, MAX_BATCH_SIZE),
        (
            "grad_accumulation_steps",
            v.grad_accumulation_steps,
            MAX_GRAD_ACCUM,
        ),
        ("nproc_per_node", v.nproc_per_node, MAX_NPROC),
        ("nnodes", Some(v.nnodes), MAX_NNODES),
        (
            "min_global_batch",
            Some(v.min_global_batch).filter(|&n| n != 0),
            MAX_GLOBAL_BATCH,
        ),
    ] {
        if let Some(n) = value.filter(|n| !(1..=max).contains(n)) {
            return Err(bad(format!(
                "`{field}` is {n}; it must be from 1 to {max} (write the file with `vla-launch plan -o FILE`)"
            )));
        }
    }
    if !v.feasible {
        return Err(bad("the plan in it is not feasible; plan again".into()));
    }
    let missing = |key: &str| {
        bad(format!(
            "no `{key}` in it; write it with `vla-launch plan -o FILE`"
        ))
    };
    let profile = v.profile.clone();
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
        // A profile is code (its `script.python` runs for the --help probe, its torchrun for
        // the launch): one named by path in a file is used only when the user names it too.
        None if profile.contains('/')
            || profile.ends_with(".yaml")
            || profile.ends_with(".yml") =>
        {
            return Err(bad(format!(
                "it names the profile file {}; pass --profile {} to use that file (after reading it), or --profile NAME",
                crate::input::excerpt(&profile, 80),
                command::shell_quote(&profile)
            )));
        }
        None => args.profile = Some(profile),
    }
    args.strategy = match v.strategy {
        Some(Strategy::Ddp) => StrategyArg::Ddp,
        Some(Strategy::Fsdp) => StrategyArg::Fsdp,
        None => return Err(missing("strategy")),
    };
    args.checkpointing = match v.gradient_checkpointing {
        Some(true) => Toggle::On,
        Some(false) => Toggle::Off,
        None => return Err(bad("no `gradient_checkpointing` in it".into())),
    };
    args.batch_size = Some(v.batch_size.ok_or_else(|| missing("batch_size"))?);
    args.grad_accum = Some(
        v.grad_accumulation_steps
            .ok_or_else(|| missing("grad_accumulation_steps"))?,
    );
    args.nproc = Some(v.nproc_per_node.ok_or_else(|| missing("nproc_per_node"))?);
    let nnodes = v.nnodes;
    if args.nnodes.is_some_and(|n| n != nnodes) {
        return Err(bad(format!(
            "it is for {nnodes} nodes, but --nnodes says otherwise"
        )));
    }
    args.nnodes = Some(nnodes);
    // Always at least 1 in a plan; 0 is the serde default of a file without it.
    if v.min_global_batch == 0 {
        return Err(missing("min_global_batch"));
    }
    args.global_batch = Some(v.min_global_batch);
    Ok(())
}
