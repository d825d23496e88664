//! The command-line application: dispatch, the plan context shared by `plan` and the launch form,
//! output, and the mapping of errors to design.md's exit codes. The launch form, `replay` and the
//! run record live in `launch`; `calibrate` in `calibrate`.

mod calibrate;
mod launch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tracing::{info, warn};

use crate::budget::Strategy;
use crate::calibration::Store;
use crate::cli::{Cli, Command, PlanArgs, PlanningArgs, StrategyArg, Toggle};
use crate::cluster::{self, Topology, TopologyFlags};
use crate::gpu::{self, Gpu, GpuError, NvmlSource};
use crate::launch::command::{self, CommandSpec, Inherited, LaunchCommand};
use crate::launch::supervisor;
use crate::model;
use crate::plan::{self, Pins, Plan, PlanInput, Policy, explain};
use crate::profile::{self, Loaded};
use crate::script_caps;
use crate::units::{GIB, fmt_gib};

/// An error that carries its exit code (design.md: 2 usage/profile, 3 infeasible, 4 environment).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

pub fn exit(code: i32, message: impl Into<String>) -> anyhow::Error {
    Exit {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error that reached the top.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Exit>() {
            return e.code;
        }
        if cause.downcast_ref::<profile::ProfileError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<GpuError>() {
            return e.exit_code();
        }
        if cause.downcast_ref::<gpu::SpecError>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<cluster::ClusterError>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<plan::PlanError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<supervisor::LaunchError>() {
            return e.exit_code();
        }
    }
    1
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Some(Command::Plan(args)) => cmd_plan(*args),
        Some(Command::Gpus { json }) => cmd_gpus(json),
        Some(Command::Profiles) => cmd_profiles(),
        Some(Command::Doctor { profile, sets }) => cmd_doctor(&profile, &sets),
        Some(Command::Replay { record, grace }) => launch::cmd_replay(&record, grace),
        Some(Command::Calibrate(args)) => calibrate::cmd_calibrate(*args),
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vla-launch", &mut std::io::stdout());
            Ok(0)
        }
        None => launch::cmd_launch(cli.launch),
    }
}

fn env_var(name: &str) -> Option<String> {
    if name == crate::install::ENV_DIR {
        // Unset: the files `pip install` put next to the binary (src/install.rs).
        return crate::install::vla_launch_dir().value();
    }
    std::env::var(name).ok()
}

fn user_config_dir() -> Option<PathBuf> {
    if let Some(dir) = env_var(crate::cli::ENV_PROFILE_DIR) {
        return Some(PathBuf::from(dir));
    }
    let base = env_var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env_var("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("vla-launch").join("profiles"))
}

fn load_profile(name: Option<&str>, sets: &[String]) -> Result<Loaded> {
    let name = name.ok_or_else(|| {
        exit(
            2,
            "no profile given: pass --profile NAME (see `vla-launch profiles`) or --profile PATH.yaml",
        )
    })?;
    let mut loaded = profile::load(name, user_config_dir().as_deref())?;
    profile::apply_overrides(&mut loaded, sets)?;
    Ok(loaded)
}

fn parse_size(flag: &str, value: &str) -> Result<u64> {
    gpu::spec::parse_size(value, value).map_err(|_| {
        exit(
            2,
            format!("{flag} {value}: not a size; write a number followed by GiB, GB, MiB or MB, e.g. {flag} 24GiB"),
        )
    })
}

/// GPUs from `--gpus` (described) or NVML (queried), with `--vram-cap` applied.
fn gpus_for(args: &PlanningArgs) -> Result<(Vec<Gpu>, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut gpus = match &args.gpus {
        Some(spec) => {
            let described = gpu::describe_gpus(spec)?;
            warnings.extend(described.notes);
            described.gpus
        }
        None => {
            let d = gpu::discover(
                &NvmlSource::new(),
                env_var("CUDA_VISIBLE_DEVICES").as_deref(),
            )?;
            tracing::debug!(elapsed_ms = d.elapsed_ms, "GPU discovery");
            warnings.extend(d.warnings);
            d.gpus
        }
    };
    if let Some(cap) = &args.vram_cap {
        let cap = parse_size("--vram-cap", cap)?;
        for g in &mut gpus {
            let used = g.total_bytes.saturating_sub(g.free_bytes);
            g.total_bytes = g.total_bytes.min(cap);
            g.free_bytes = g.total_bytes.saturating_sub(used).min(g.free_bytes);
        }
        warnings.push(format!(
            "--vram-cap {}: every GPU treated as holding at most {}",
            args.vram_cap.as_deref().unwrap_or_default(),
            fmt_gib(cap)
        ));
    }
    Ok((gpus, warnings))
}

fn host_ram_bytes(args: &PlanningArgs) -> Result<Option<u64>> {
    if let Some(s) = &args.host_ram {
        return parse_size("--host-ram", s).map(Some);
    }
    if args.gpus.is_some() {
        // Planning for another machine: this one's RAM says nothing about it.
        return Ok(None);
    }
    Ok(std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| crate::doctor::meminfo_field(&m, "MemTotal")))
}

/// Everything `plan` and the launch form share, resolved once.
pub struct Context {
    pub loaded: Loaded,
    pub gpus: Vec<Gpu>,
    pub topology: Topology,
    pub spec: model::ModelSpec,
    pub policy: Policy,
    pub pins: Pins,
    pub plan: Plan,
    pub warnings: Vec<String>,
    pub extra: Vec<String>,
    pub vram_cap: Option<u64>,
    pub alloc_conf: command::AllocConf,
    pub accepts: Vec<String>,
    pub host_ram_bytes: Option<u64>,
    /// Corrections learned from earlier runs; empty when none or unreadable.
    pub store: Store,
}

impl Context {
    /// The plan for a terminal (`--explain` adds the budget table and the bars).
    fn render(&self, explain: bool) -> String {
        explain::render_plan(
            &self.loaded.name,
            &self.plan,
            &self.gpus,
            self.policy.min_global_batch,
            explain,
        )
    }

    /// The planner's input again (for a re-plan after a failure).
    pub fn plan_input(&self) -> PlanInput<'_> {
        PlanInput {
            spec: &self.spec,
            gpus: &self.gpus,
            nnodes: self.topology.nnodes,
            policy: self.policy.clone(),
            pins: self.pins.clone(),
            host_ram_bytes: self.host_ram_bytes,
            merge_lora_during_training: profile::merges_lora_during_training(&self.loaded.profile),
            calibration: Some(plan::Calibration {
                store: &self.store,
                profile: &self.loaded.name,
            }),
        }
    }
}

fn pins_from(args: &PlanningArgs, loaded: &Loaded) -> Result<Pins> {
    let p = &loaded.profile.planning;
    for (flag, v) in [
        ("--batch-size", args.batch_size),
        ("--grad-accum", args.grad_accum),
        ("--nproc", args.nproc),
        ("--global-batch", args.global_batch),
        ("--nnodes", args.nnodes),
    ] {
        if v == Some(0) {
            return Err(exit(2, format!("{flag} 0: must be at least 1")));
        }
    }
    Ok(Pins {
        strategy: match args.strategy {
            StrategyArg::Auto => p.strategy,
            StrategyArg::Ddp => Some(Strategy::Ddp),
            StrategyArg::Fsdp => Some(Strategy::Fsdp),
        },
        batch_size: args.batch_size.or(p.batch_size),
        grad_accum: args.grad_accum.or(p.grad_accumulation_steps),
        checkpointing: match args.checkpointing {
            Toggle::Auto => p.gradient_checkpointing,
            Toggle::On => Some(true),
            Toggle::Off => Some(false),
        },
        nproc: args.nproc,
    })
}

fn build_context(
    args: &PlanningArgs,
    extra: &[String],
    accepts_override: Option<Vec<String>>,
    plan_only: bool,
) -> Result<Context> {
    let loaded = load_profile(args.profile.as_deref(), &args.sets)?;
    let (gpus, mut warnings) = gpus_for(args)?;
    let topology = match cluster::topology_from_env(
        &env_var,
        &TopologyFlags {
            nnodes: args.nnodes,
            node_rank: args.node_rank,
            rdzv_endpoint: args.rdzv_endpoint.clone(),
            rdzv_port: args.rdzv_port,
        },
    ) {
        Ok(t) => t,
        // Planning for a multi-node job from a login node: only the node count matters.
        Err(e) if plan_only && args.nnodes.is_some_and(|n| n > 1) => {
            warnings.push(format!("{e}; planning only, so this is taken as node 0"));
            Topology {
                nnodes: args.nnodes.unwrap_or(1),
                source: "--nnodes (plan only)".into(),
                ..Topology::single_node()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let p = &loaded.profile;
    let spec = profile::model_spec(p, extra);
    let (platform, word) = profile::platform_of(p, extra);
    if word.is_none() {
        warnings.push(format!(
            "no platform word (libero, aloha, bridge) in the script's arguments: finetune.py will use {platform:?} constants"
        ));
    }
    let inherited = Inherited::from_process();
    let profile_env: Vec<(String, String)> =
        p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let alloc_conf = command::effective_alloc_conf(&profile_env, &inherited);
    let accepts = accepts_override.unwrap_or_else(|| p.script.accepts.clone());
    let policy = Policy {
        min_global_batch: args.global_batch.unwrap_or(p.planning.min_global_batch),
        exact_global_batch: args.global_batch.is_some(),
        strategies: p.planning.strategies.clone(),
        script_accepts_fsdp: accepts.iter().any(|a| a == "use_fsdp"),
        script_accepts_checkpointing: accepts.iter().any(|a| a == "gradient_checkpointing"),
        margin_fraction: p.planning.margin_fraction,
        margin_min_bytes: (p.planning.margin_min_gib * GIB as f64) as u64,
        max_batch_size: p.planning.max_batch_size,
        allocator: alloc_conf.allocator(),
    };
    let pins = pins_from(args, &loaded)?;
    let vram_cap = match &args.vram_cap {
        Some(s) => Some(parse_size("--vram-cap", s)?),
        None => None,
    };
    let host_ram_bytes = host_ram_bytes(args)?;
    let store = launch::load_store();
    let plan = plan::plan(&PlanInput {
        spec: &spec,
        gpus: &gpus,
        nnodes: topology.nnodes,
        policy: policy.clone(),
        pins: pins.clone(),
        host_ram_bytes,
        merge_lora_during_training: profile::merges_lora_during_training(p),
        calibration: Some(plan::Calibration {
            store: &store,
            profile: &loaded.name,
        }),
    })?;
    Ok(Context {
        loaded,
        gpus,
        topology,
        spec,
        policy,
        pins,
        plan,
        warnings,
        extra: extra.to_vec(),
        vram_cap,
        alloc_conf,
        accepts,
        host_ram_bytes,
        store,
    })
}

/// The planner's flags for the script, in a fixed order, followed by any flags it adds.
fn planner_flags(ctx: &Context) -> Vec<(String, String)> {
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
    if ctx.accepts.iter().any(|a| a == "use_fsdp") {
        let v = if c.strategy == Strategy::Fsdp {
            "True"
        } else {
            "False"
        };
        flags.push(("--use_fsdp".into(), v.into()));
    }
    if ctx.accepts.iter().any(|a| a == "gradient_checkpointing") {
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

/// The torchrun command for the chosen plan; also the list of unset `${VAR}` placeholders.
/// Terminal output of only some local ranks (`--ranks`); torchrun keeps all ranks' in `log_dir`.
pub struct RanksFilter<'a> {
    pub ranks: &'a str,
    pub log_dir: PathBuf,
}

fn command_for(
    ctx: &Context,
    torchrun: Option<&Path>,
    ranks: Option<RanksFilter>,
) -> Result<(LaunchCommand, Vec<(String, String)>)> {
    let p = &ctx.loaded.profile;
    let profile::ResolvedFlags {
        mut flags,
        mut missing,
    } = profile::resolved_flags(p, &env_var);
    flags.extend(planner_flags(ctx));
    let mut expand = |field: &str, s: &str| {
        let e = profile::expand(s, &env_var);
        missing.extend(e.missing.into_iter().map(|v| (field.to_string(), v)));
        e.value
    };
    let workdir = expand("script.workdir", &p.script.workdir);
    let script = expand("script.path", &p.script.path);
    let torchrun_path = match torchrun {
        Some(t) => t.to_path_buf(),
        None => PathBuf::from(expand("script.torchrun", &p.script.torchrun)),
    };
    let env: Vec<(String, String)> = p
        .env
        .iter()
        .map(|(k, v)| (k.clone(), expand(&format!("env.{k}"), v)))
        .collect();
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
        script: PathBuf::from(script),
        workdir: PathBuf::from(workdir),
        nproc_per_node: c.nproc_per_node,
        topology: ctx.topology.clone(),
        max_restarts: p.script.max_restarts,
        script_flags: flags,
        extra_args: ctx.extra.clone(),
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
    let cmd =
        command::build(&spec, &Inherited::from_process()).map_err(|e| exit(2, e.to_string()))?;
    Ok((cmd, missing))
}

fn argv_of(cmd: &LaunchCommand) -> Vec<String> {
    std::iter::once(cmd.program.to_string_lossy().into_owned())
        .chain(cmd.args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect()
}

/// design.md's `plan --json` object.
pub fn plan_json(ctx: &Context, command: Option<&LaunchCommand>) -> serde_json::Value {
    let plan = &ctx.plan;
    let c = plan.chosen.as_ref();
    let components = model::components(&ctx.spec).unwrap_or_default();
    let total: u64 = components.iter().map(|c| c.params).sum();
    let trainable: u64 = components
        .iter()
        .filter(|c| c.trainable)
        .map(|c| c.params)
        .sum();
    json!({
        "profile": ctx.loaded.name,
        "profile_origin": ctx.loaded.origin,
        "feasible": plan.feasible,
        "strategy": c.map(|c| c.strategy),
        "gradient_checkpointing": c.map(|c| c.gradient_checkpointing),
        "batch_size": c.map(|c| c.batch_size),
        "grad_accumulation_steps": c.map(|c| c.grad_accumulation_steps),
        "nproc_per_node": c.map(|c| c.nproc_per_node),
        "nnodes": ctx.topology.nnodes,
        "node_rank": ctx.topology.node_rank,
        "global_batch": c.map(|c| c.global_batch),
        "min_global_batch": ctx.policy.min_global_batch,
        "gpu_indices": c.map(|c| c.gpu_indices.clone()),
        "predicted_peak_bytes": c.map(|c| c.predicted_peak_bytes),
        "required_bytes": c.map(|c| c.required_bytes),
        "model_peak_bytes": c.map(|c| c.model_peak_bytes),
        "correction": c.and_then(|c| c.correction.clone()),
        "usable_bytes": c.map(|c| c.usable_bytes),
        "fits": c.map(|c| c.fits),
        "step_time_s": c.map(|c| c.step_time_s),
        "samples_per_s": c.map(|c| c.samples_per_s),
        "budget": c.map(|c| &c.budget),
        "allocator": ctx.policy.allocator,
        "alloc_conf": ctx.alloc_conf,
        "params": {
            "total": total,
            "trainable": trainable,
            "components": components,
        },
        "model": ctx.spec,
        "gpus": ctx.gpus,
        "topology": ctx.topology,
        "pins": ctx.pins,
        "script_accepts": ctx.accepts,
        "command": command.map(argv_of),
        "env": command.map(|cmd| cmd.env.iter().map(|(k, v)| {
            let v = if command::is_secret(k) { "***".to_string() } else { v.clone() };
            (k.clone(), serde_json::Value::String(v))
        }).collect::<serde_json::Map<_, _>>()),
        "alternatives": plan.alternatives,
        "reasons": plan.reasons,
        "levers": plan.levers,
        "host_ram": plan.host_ram,
        "warnings": ctx.warnings,
        "evaluated": plan.evaluated,
    })
}

fn cmd_plan(args: PlanArgs) -> Result<i32> {
    let ctx = build_context(&args.planning, &args.extra, None, true)?;
    for w in &ctx.warnings {
        warn!("{w}");
    }
    let command = match &ctx.plan.chosen {
        Some(_) if ctx.plan.feasible => match command_for(&ctx, None, None) {
            Ok((cmd, missing)) => {
                warn_missing(&missing);
                Some(cmd)
            }
            // A plan for a job that is not running yet (no rendezvous known) has no command.
            Err(e) if ctx.topology.rendezvous.is_none() && ctx.topology.nnodes > 1 => {
                warn!("no command: {e:#}");
                None
            }
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let value = plan_json(&ctx, command.as_ref());
    if let Some(path) = &args.output {
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n").map_err(|e| {
            exit(
                2,
                format!("-o {}: cannot write the plan: {e}", path.display()),
            )
        })?;
        info!("plan written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", ctx.render(args.explain));
        if let Some(cmd) = &command {
            println!("\nCommand:\n  {}", command::display(cmd));
        }
    }
    Ok(if ctx.plan.feasible { 0 } else { 3 })
}

fn warn_missing(missing: &[(String, String)]) {
    for (field, var) in missing {
        warn!("{field}: ${{{var}}} is not set; a real launch refuses it (export {var}=...)");
    }
}

fn cmd_gpus(json: bool) -> Result<i32> {
    let d = gpu::discover(
        &NvmlSource::new(),
        env_var("CUDA_VISIBLE_DEVICES").as_deref(),
    )?;
    for w in &d.warnings {
        warn!("{w}");
    }
    info!("GPU list in {:.1} ms", d.elapsed_ms);
    if json {
        println!("{}", serde_json::to_string_pretty(&d.gpus)?);
    } else {
        print!("{}", gpu::render_table(&d.gpus));
    }
    Ok(0)
}

fn cmd_profiles() -> Result<i32> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut dirs = vec![PathBuf::from("launch-profiles")];
    dirs.extend(user_config_dir());
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !seen.insert(name.clone()) {
                continue;
            }
            let desc = match profile::load(&path.display().to_string(), None) {
                Ok(l) => l.profile.description,
                Err(e) => format!("INVALID: {e}"),
            };
            rows.push((name, path.display().to_string(), desc));
        }
    }
    for (name, text) in profile::BUILTIN {
        if seen.insert(name.to_string()) {
            let desc = profile::parse(text, name)
                .map(|p| p.description)
                .unwrap_or_else(|e| format!("INVALID: {e}"));
            rows.push((name.to_string(), "built-in".into(), desc));
        }
    }
    let w_name = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let w_from = rows.iter().map(|r| r.1.len()).max().unwrap_or(4).max(4);
    println!("{:w_name$}  {:w_from$}  DESCRIPTION", "NAME", "FROM");
    for (name, from, desc) in rows {
        println!("{name:w_name$}  {from:w_from$}  {desc}");
    }
    Ok(0)
}

fn cmd_doctor(profile_name: &str, sets: &[String]) -> Result<i32> {
    use crate::doctor::{self, DoctorContext, SystemHost};
    let loaded = load_profile(Some(profile_name), sets)?;
    let p = &loaded.profile;
    let expand = |s: &str| profile::expand(s, &env_var);
    let nvml = gpu::discover(
        &NvmlSource::new(),
        env_var("CUDA_VISIBLE_DEVICES").as_deref(),
    )
    .map(|d| {
        d.gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU {} {} ({} free)",
                    g.index,
                    g.name,
                    fmt_gib(g.free_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .map_err(|e| e.to_string());
    let run_root = profile::resolved_flags(p, &env_var);
    let run_root_dir = run_root
        .flags
        .iter()
        .find(|(k, _)| k == "--run_root_dir")
        .filter(|_| {
            !run_root
                .missing
                .iter()
                .any(|(f, _)| f == "train.run_root_dir")
        })
        .map(|(_, v)| PathBuf::from(v));
    let torchrun = expand(&p.script.torchrun);
    let python = expand(&p.script.python);
    let mut planner_flags: Vec<String> =
        vec!["batch_size".into(), "grad_accumulation_steps".into()];
    planner_flags.extend(p.script.accepts.iter().cloned());
    let ctx = DoctorContext {
        torchrun: (torchrun.value.contains('/')).then(|| PathBuf::from(&torchrun.value)),
        python: (python.value.contains('/')).then(|| PathBuf::from(&python.value)),
        path_env: std::env::var_os("PATH"),
        script: PathBuf::from(expand(&p.script.path).value),
        workdir: PathBuf::from(expand(&p.script.workdir).value),
        planner_flags,
        nvml,
        run_root_dir,
        min_free_disk_bytes: doctor::DEFAULT_MIN_FREE_DISK_BYTES,
        min_host_ram_bytes: doctor::DEFAULT_MIN_HOST_RAM_BYTES,
        timeout: script_caps::DEFAULT_PROBE_TIMEOUT,
        runner: &script_caps::SystemRunner,
        host: &SystemHost,
    };
    let checks = doctor::run_checks(&ctx);
    print!("{}", doctor::render(&checks));
    Ok(if checks.iter().all(|c| c.ok) { 0 } else { 4 })
}

/// Why the profile's training script is not where the profile says, if it is not.
fn missing_script(loaded: &Loaded) -> Option<String> {
    let p = &loaded.profile;
    let workdir = PathBuf::from(profile::expand(&p.script.workdir, &env_var).value);
    let script = workdir.join(profile::expand(&p.script.path, &env_var).value);
    (!script.is_file()).then(|| {
        crate::install::missing_script_message(
            &script,
            &p.script.workdir,
            &crate::install::vla_launch_dir(),
        )
    })
}

/// Asks the script which optional planner flags it takes (`python SCRIPT --help`).
fn confirm_script_flags(loaded: &Loaded) -> Result<Option<Vec<String>>> {
    let p = &loaded.profile;
    let workdir = PathBuf::from(profile::expand(&p.script.workdir, &env_var).value);
    let script = workdir.join(profile::expand(&p.script.path, &env_var).value);
    if let Some(message) = missing_script(loaded) {
        return Err(exit(4, message));
    }
    let python = PathBuf::from(profile::expand(&p.script.python, &env_var).value);
    match script_caps::probe(&python, &script, &workdir, Duration::from_secs(120)) {
        Ok(caps) => {
            let mut accepted = Vec::new();
            for flag in &p.script.accepts {
                if caps.flags.contains(flag.as_str()) {
                    accepted.push(flag.clone());
                } else {
                    warn!(
                        "{} does not take --{flag} (its --help does not list it): planning without it",
                        script.display()
                    );
                }
            }
            Ok(Some(accepted))
        }
        Err(e) => {
            warn!(
                "could not ask {} for its flags ({e}); trusting the profile's script.accepts",
                script.display()
            );
            Ok(None)
        }
    }
}
