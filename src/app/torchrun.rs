//! The torchrun command of a plan, and the plan record that describes it.

use std::path::{Path, PathBuf};

use super::error::Result;
use super::settings::Planned;
use crate::budget::{FsdpVersion, Strategy};
use crate::gpu::{self, Gpu};
use crate::launch::command::{self, CommandSpec, Inherited, LaunchCommand};
use crate::plan::Alternative;
use crate::record::{self, PlanRecord, ScriptRunInfo};
use crate::script_choice::{self, ScriptRun};

/// The planner's flags for the script, in a fixed order, followed by any flags it adds.
pub(super) fn planner_flags(ctx: &Planned) -> Vec<(String, String)> {
    let mut flags = Vec::new();
    let Some(c) = &ctx.plan.chosen else {
        return flags;
    };
    flags.push(("--batch_size".into(), c.batch_size.to_string()));
    flags.push((
        "--grad_accumulation_steps".into(),
        c.grad_accumulation_steps.to_string(),
    ));
    // Only flags the script takes: upstream finetune.py rejects unknown flags at start.
    let accepts = ctx.script_for_plan().accepts;
    if accepts.iter().any(|a| a == "use_fsdp") {
        let v = if c.strategy == Strategy::Fsdp {
            "True"
        } else {
            "False"
        };
        flags.push(("--use_fsdp".into(), v.into()));
    }
    if accepts.iter().any(|a| a == "gradient_checkpointing") {
        let v = if c.gradient_checkpointing {
            "True"
        } else {
            "False"
        };
        flags.push(("--gradient_checkpointing".into(), v.into()));
    }
    flags.extend(ctx.plan.extra_flags.iter().cloned());
    flags
}

/// Terminal output of only some local ranks (`--ranks`); torchrun keeps all ranks' in `log_dir`.
pub(super) struct RanksFilter<'a> {
    pub ranks: &'a str,
    pub log_dir: PathBuf,
}

/// `WANDB_MODE` (the profile's `env:` first, then the launcher's environment) is offline or
/// disabled.
fn wandb_off(ctx: &Planned) -> bool {
    let mode = ctx
        .resolved
        .env
        .iter()
        .find(|(k, _)| k == "WANDB_MODE")
        .map(|(_, e)| e.value.clone())
        .or_else(|| super::settings::env_var("WANDB_MODE"));
    matches!(
        mode.as_deref()
            .map(str::trim)
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("offline" | "disabled" | "dryrun")
    )
}

/// The torchrun command for the chosen plan; also the list of unset `${VAR}` placeholders.
pub(super) fn command_for(
    ctx: &Planned,
    torchrun: Option<&Path>,
    ranks: Option<RanksFilter>,
) -> Result<(LaunchCommand, Vec<(String, String)>)> {
    let p = &ctx.loaded.profile;
    let r = &ctx.resolved;
    let mut flags = ctx.script_flags();
    flags.extend(planner_flags(ctx));
    let mut missing = r.missing(torchrun.is_none());
    if wandb_off(ctx) {
        // W&B logs nothing to a server: its entity and project are not needed, and an unset
        // placeholder is left out rather than passed on literally (the script's defaults apply).
        let unset = |field: &str| missing.iter().any(|(f, _)| f == field);
        let drop: Vec<String> = ["wandb_entity", "wandb_project"]
            .into_iter()
            .filter(|k| unset(&format!("train.{k}")))
            .map(|k| k.to_string())
            .collect();
        flags.retain(|(k, _)| {
            !drop
                .iter()
                .any(|d| k.strip_prefix("--") == Some(d.as_str()))
        });
        missing.retain(|(f, _)| {
            !drop
                .iter()
                .any(|d| f.strip_prefix("train.") == Some(d.as_str()))
        });
    }
    let torchrun_path = match torchrun {
        Some(t) => t.to_path_buf(),
        None => PathBuf::from(&r.torchrun.value),
    };
    let mut env: Vec<(String, String)> = r
        .env
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect();
    let script = match &ctx.script_for_plan().run {
        ScriptRun::Script => PathBuf::from(&r.script.value),
        ScriptRun::Addition { addition } => {
            // The addition imports the profile's script, named by its absolute path.
            let real = super::settings::script_path(r);
            let real = std::path::absolute(&real).unwrap_or(real);
            env.retain(|(k, _)| k != script_choice::ENV_FINETUNE_SCRIPT);
            env.push((
                script_choice::ENV_FINETUNE_SCRIPT.into(),
                real.display().to_string(),
            ));
            // The FSDP the plan's memory and step time are for (the addition picks it from its
            // torch the same way; this makes the choice visible in the command and the record).
            env.retain(|(k, _)| k != script_choice::ENV_FSDP_IMPL);
            if ctx
                .plan
                .chosen
                .as_ref()
                .is_some_and(|c| c.strategy == Strategy::Fsdp)
            {
                let name = match ctx.policy.fsdp {
                    FsdpVersion::Fsdp1 => "fsdp1",
                    FsdpVersion::Fsdp2 => "fsdp2",
                };
                env.push((script_choice::ENV_FSDP_IMPL.into(), name.into()));
            }
            addition.clone()
        }
    };
    let c = ctx.plan.chosen.as_ref().expect("command only for a plan");
    let chosen: Vec<Gpu> = ctx
        .gpus
        .iter()
        .filter(|g| c.gpu_indices.contains(&g.index))
        .cloned()
        .collect();
    let described = chosen.iter().any(|g| g.described);
    let spec = CommandSpec {
        torchrun: torchrun_path,
        script,
        workdir: PathBuf::from(&r.workdir.value),
        nproc_per_node: c.nproc_per_node,
        topology: ctx.topology.clone(),
        max_restarts: p.script.max_restarts,
        script_flags: flags,
        extra_args: ctx.script_args.raw().to_vec(),
        env,
        cuda_visible_devices: if described {
            None
        } else {
            Some(gpu::cuda_visible_devices_value(&chosen))
        },
        vram_cap_bytes: ctx.vram_cap,
        ranks_filter: ranks.as_ref().map(|r| r.ranks.to_string()),
        torchrun_log_dir: ranks.map(|r| r.log_dir),
    };
    let cmd = command::build(&spec, &Inherited::from_process())?;
    Ok((cmd, missing))
}

pub(super) fn argv_of(cmd: &LaunchCommand) -> Vec<String> {
    std::iter::once(cmd.program.to_string_lossy().into_owned())
        .chain(cmd.args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect()
}

/// docs/design.md's `plan --json` object: the plan record without what a launch adds.
/// The command in it is masked (`command::masked`): secrets by name and by value, the launcher's
/// own secret-named variables' values included, wherever they appear.
pub(super) fn plan_record(ctx: &Planned, command: Option<&LaunchCommand>) -> PlanRecord {
    let shown = command.map(command::masked);
    let command = shown.as_ref();
    let plan = &ctx.plan;
    let c = plan.chosen.as_ref();
    PlanRecord {
        format_version: record::FORMAT_VERSION,
        profile: ctx.loaded.name.clone(),
        profile_origin: Some(ctx.loaded.origin.clone()),
        feasible: plan.feasible,
        strategy: c.map(|c| c.strategy),
        gradient_checkpointing: c.map(|c| c.gradient_checkpointing),
        batch_size: c.map(|c| c.batch_size),
        grad_accumulation_steps: c.map(|c| c.grad_accumulation_steps),
        nproc_per_node: c.map(|c| c.nproc_per_node),
        nnodes: ctx.topology.nnodes,
        node_rank: ctx.topology.node_rank,
        global_batch: c.map(|c| c.global_batch),
        min_global_batch: ctx.policy.min_global_batch,
        gpu_indices: c.map(|c| c.gpu_indices.clone()),
        predicted_peak_bytes: c.map(|c| c.predicted_peak_bytes),
        required_bytes: c.map(|c| c.required_bytes),
        model_peak_bytes: c.map(|c| c.model_peak_bytes),
        correction: c.and_then(|c| c.correction.clone()),
        usable_bytes: c.map(|c| c.usable_bytes),
        fits: c.map(|c| c.fits),
        step_time_s: c.map(|c| c.step_time_s),
        samples_per_s: c.map(|c| c.samples_per_s),
        max_steps: ctx.max_steps(),
        predicted_run_time_s: c
            .zip(ctx.max_steps())
            .map(|(c, n)| c.step_time_s * n as f64),
        budget: c.map(|c| c.budget.clone()),
        budget_model_revision: crate::budget::MODEL_REVISION,
        fsdp: c
            .filter(|c| c.strategy == Strategy::Fsdp)
            .map(|_| ctx.policy.fsdp),
        torch: ctx.torch.as_ref().map(|t| t.version.clone()),
        torch_cuda: ctx.torch.as_ref().and_then(|t| t.cuda.clone()),
        allocator: Some(ctx.policy.allocator),
        alloc_conf: Some(ctx.alloc_conf.clone()),
        params: Some(ctx.params.clone()),
        model: Some(ctx.spec.clone()),
        gpus: ctx.gpus.clone(),
        topology: Some(ctx.topology.clone()),
        pins: Some(ctx.pins.clone()),
        script_accepts: ctx.script_for_plan().accepts,
        script_run: Some(script_run_info(ctx)),
        command: command.map(argv_of),
        // Masked above: secret-named variables hold `record::REDACTED` (the same `***`).
        env: command.map(|cmd| cmd.env.iter().cloned().collect()),
        alternatives: plan
            .alternatives
            .iter()
            .map(|a| Alternative {
                predicted_run_time_s: ctx.max_steps().map(|n| a.candidate.step_time_s * n as f64),
                ..a.clone()
            })
            .collect(),
        reasons: plan.reasons.clone(),
        levers: plan.levers.clone(),
        host_ram: plan.host_ram,
        warnings: ctx.warnings.clone(),
        evaluated: plan.evaluated,
        cwd: None,
        started_unix: None,
        attempt: None,
        launcher_version: None,
        outcome: None,
    }
}

/// The plan record's `script_run`.
pub(super) fn script_run_info(ctx: &Planned) -> ScriptRunInfo {
    let c = &ctx.script_for_plan();
    // As the command names them: the script relative to the working directory.
    let script = PathBuf::from(&ctx.resolved.script.value);
    let (runs, addition) = match &c.run {
        ScriptRun::Script => (script.clone(), false),
        ScriptRun::Addition { addition } => (addition.clone(), true),
    };
    ScriptRunInfo {
        runs,
        addition,
        script,
        assumed: c.assumed,
        why: c.why.clone(),
    }
}
