//! What every command resolves once from the command line, the environment and the profile:
//! the profile (placeholders expanded), the GPUs, the topology, the planner's input and its plan.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::error::{AppError, Result};
use crate::budget::Strategy;
use crate::calibration::{self, Store};
use crate::cli::{PlanningArgs, StrategyArg, Toggle};
use crate::cluster::{self, Topology, TopologyFlags};
use crate::gpu::{self, Gpu, NvmlSource};
use crate::launch::command::{self, Inherited};
use crate::model;
use crate::plan::{self, Pins, Plan, PlanInput, Policy, explain};
use crate::profile::{self, Loaded, Resolved};
use crate::script_caps;
use crate::script_choice::{self, ScriptChoice};
use crate::units::{GIB, fmt_gib};

pub(super) fn env_var(name: &str) -> Option<String> {
    if name == crate::install::ENV_DIR {
        // Unset: the files `pip install` put next to the binary (src/install.rs).
        return crate::install::vla_launch_dir().value();
    }
    std::env::var(name).ok()
}

pub(super) fn user_config_dir() -> Option<PathBuf> {
    if let Some(dir) = env_var(crate::cli::ENV_PROFILE_DIR) {
        return Some(PathBuf::from(dir));
    }
    let base = env_var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env_var("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("vla-launch").join("profiles"))
}

pub(super) fn load_profile(name: Option<&str>, sets: &[String]) -> Result<Loaded> {
    let name = name.ok_or_else(|| {
        AppError::usage("no profile given: pass --profile NAME (see `vla-launch profiles`) or --profile PATH.yaml",
        )
    })?;
    let installed = crate::install::installed_profiles_dir();
    let mut loaded = profile::load_with(name, user_config_dir().as_deref(), installed.as_deref())?;
    profile::apply_overrides(&mut loaded, sets)?;
    Ok(loaded)
}

pub(super) fn parse_size(flag: &str, value: &str) -> Result<u64> {
    gpu::spec::parse_size(value, value).map_err(|_| {
        AppError::usage(format!("{flag} {}: not a size; write a number followed by GiB, GB, MiB or MB, e.g. {flag} 24GiB", crate::input::shown(value, 40)),
        )
    })
}

/// GPUs from `--gpus` (described) or NVML (queried), with `--vram-cap` applied.
pub(super) fn gpus_for(args: &PlanningArgs) -> Result<(Vec<Gpu>, Vec<String>)> {
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
        let cap_bytes = parse_size("--vram-cap", cap)?;
        if let Some(largest) = gpus.iter().max_by_key(|g| g.total_bytes)
            && largest.total_bytes <= cap_bytes
        {
            warnings.push(format!(
                "--vram-cap {cap} is not below any GPU's memory (GPU {}: {}): it changes nothing; \
                 give a smaller size to emulate a smaller card, e.g. --vram-cap 24564MiB for an RTX 4090",
                largest.index,
                fmt_gib(largest.total_bytes)
            ));
        } else {
            warnings.push(format!(
                "--vram-cap {cap}: every GPU treated as holding at most {}",
                fmt_gib(cap_bytes)
            ));
        }
        for g in &mut gpus {
            let used = g.total_bytes.saturating_sub(g.free_bytes);
            g.total_bytes = g.total_bytes.min(cap_bytes);
            g.free_bytes = g.total_bytes.saturating_sub(used).min(g.free_bytes);
        }
    }
    Ok((gpus, warnings))
}

pub(super) fn host_ram_bytes(args: &PlanningArgs) -> Result<Option<u64>> {
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
pub(super) struct Planned {
    pub loaded: Loaded,
    /// The profile's placeholders, expanded once.
    pub resolved: Resolved,
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
    /// Which script runs (the profile's, or the FSDP addition around it) and why.
    pub script_choice: ScriptChoice,
    pub host_ram_bytes: Option<u64>,
    /// Corrections learned from earlier runs; empty when none or unreadable.
    pub store: Store,
}

impl Planned {
    /// The plan for a terminal (`--explain` adds the budget table and the bars).
    pub(super) fn render(&self, explain: bool) -> String {
        let mut text = explain::render_plan(
            &self.loaded.name,
            &self.plan,
            &self.gpus,
            self.policy.min_global_batch,
            self.max_steps(),
            explain,
        );
        text.push_str(&format!("Script: {}\n", self.script_for_plan().why));
        text
    }

    /// Which script this plan runs (the addition only when the plan needs a flag the script lacks).
    pub(super) fn script_for_plan(&self) -> ScriptChoice {
        let (fsdp, ckpt) = self.plan.chosen.as_ref().map_or((false, false), |c| {
            (c.strategy == Strategy::Fsdp, c.gradient_checkpointing)
        });
        script_choice::for_plan(&self.script_choice, fsdp, ckpt, &self.resolved.script.value)
    }

    /// The run's optimizer steps: a `--max_steps` passed through to the script, else the
    /// profile's `train.max_steps` (after `--set`).
    pub(super) fn max_steps(&self) -> Option<u64> {
        let mut from_extra = None;
        let mut it = self.extra.iter();
        while let Some(a) = it.next() {
            if a == "--max_steps" {
                from_extra = it.next().and_then(|v| v.parse().ok());
            } else if let Some(v) = a.strip_prefix("--max_steps=") {
                from_extra = v.parse().ok();
            }
        }
        from_extra.or_else(|| {
            let v = self.loaded.profile.train.get("max_steps")?;
            v.as_u64().or_else(|| v.as_str()?.parse().ok())
        })
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

pub(super) fn pins_from(args: &PlanningArgs, loaded: &Loaded) -> Result<Pins> {
    let p = &loaded.profile.planning;
    for (flag, v) in [
        ("--batch-size", args.batch_size),
        ("--grad-accum", args.grad_accum),
        ("--nproc", args.nproc),
        ("--global-batch", args.global_batch),
        ("--nnodes", args.nnodes),
    ] {
        if v == Some(0) {
            return Err(AppError::usage(format!("{flag} 0: must be at least 1")));
        }
    }
    // Each flag is range-checked by clap; their product, the global batch, must fit too.
    let product = [args.batch_size, args.grad_accum, args.nproc, args.nnodes]
        .iter()
        .flatten()
        .map(|&n| u64::from(n))
        .product::<u64>();
    if product > u64::from(crate::cli::MAX_GLOBAL_BATCH) {
        return Err(AppError::usage(format!(
            "--batch-size x --grad-accum x --nproc x --nnodes is {product}, more than the {} samples a global batch may have; lower one of them",
            crate::cli::MAX_GLOBAL_BATCH
        )));
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

/// Resolves everything a command shares, once: the profile and its placeholders, (with
/// `ask_script`) the planner flags the script really takes, the GPUs, the topology, and the plan.
/// `plan_only`: a plan for a job that is not running (a multi-node plan from a login node).
pub(super) fn resolve_plan(
    args: &PlanningArgs,
    extra: &[String],
    ask_script: bool,
    plan_only: bool,
) -> Result<Planned> {
    refuse_planner_flags(extra)?;
    let loaded = load_profile(args.profile.as_deref(), &args.sets)?;
    let resolved = loaded.resolve(&env_var);
    // Every command asks the script which flags it takes (cached), or says what it assumed; a
    // real launch needs the script.
    let (script_choice, answer) = choose_script(&loaded, &resolved, ask_script)?;
    // calibrate's real-code probe (ours) passes every flag on to the checkout's finetune.py, for
    // which the profile's flags were written; its own --help does not speak for them.
    let real_probe =
        script_choice::installed(&crate::install::vla_launch_dir(), script_choice::REAL_PROBE)
            .is_some_and(|probe| {
                std::fs::canonicalize(script_path(&resolved)).is_ok_and(|s| s == probe)
            });
    let unknown_flags = answer
        .filter(|_| !real_probe)
        .map(|a| {
            super::script_flags::unknown(
                &loaded,
                &args.sets,
                extra,
                &script_path(&resolved),
                &super::script_flags::known(&script_choice, &a.caps.flags),
                a.from,
            )
        })
        .unwrap_or_default();
    if ask_script && !unknown_flags.is_empty() {
        // A flag the script does not define would only fail inside torchrun.
        return Err(AppError::usage(format!(
            "not launching: {}",
            unknown_flags.join("; ")
        )));
    }
    let (gpus, mut warnings) = gpus_for(args)?;
    warnings.extend(unknown_flags.iter().cloned());
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
            // As node 0 with what was given (--rdzv-endpoint): the command shows it (issue 26).
            let as_node_0 = TopologyFlags {
                nnodes: args.nnodes,
                node_rank: Some(0),
                rdzv_endpoint: args.rdzv_endpoint.clone(),
                rdzv_port: args.rdzv_port,
            };
            cluster::topology_from_env(&env_var, &as_node_0).unwrap_or_else(|_| Topology {
                nnodes: args.nnodes.unwrap_or(1),
                source: "--nnodes (plan only)".into(),
                ..Topology::single_node()
            })
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
    let accepts = script_choice.accepts.clone();
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
        fsdp: script_choice.fsdp_version(),
    };
    let pins = pins_from(args, &loaded)?;
    let vram_cap = match &args.vram_cap {
        Some(s) => Some(parse_size("--vram-cap", s)?),
        None => None,
    };
    let host_ram_bytes = host_ram_bytes(args)?;
    let store = load_store();
    let mut planned = Planned {
        loaded,
        resolved,
        gpus,
        topology,
        spec,
        policy,
        pins,
        plan: Plan::default(),
        warnings,
        extra: extra.to_vec(),
        vram_cap,
        alloc_conf,
        script_choice,
        host_ram_bytes,
        store,
    };
    planned.plan = plan::plan(&planned.plan_input())?;
    Ok(planned)
}

/// A script argument after `--` that sets what the planner chose (`--batch_size 64`) would
/// silently override the plan while the record and the summary still showed the plan's value:
/// refused, naming the launcher's own flag that pins it.
pub(super) fn refuse_planner_flags(extra: &[String]) -> Result<()> {
    for arg in extra {
        let Some(name) = arg.strip_prefix("--") else {
            continue;
        };
        let name = name.split('=').next().unwrap_or_default().replace('-', "_");
        if !profile::PLANNER_FLAGS.contains(&name.as_str()) {
            continue;
        }
        let pin = match name.as_str() {
            "batch_size" => "--batch-size N",
            "grad_accumulation_steps" => "--grad-accum N",
            "use_fsdp" => "--strategy fsdp (or ddp)",
            _ => "--checkpointing on (or off)",
        };
        return Err(AppError::usage(format!(
            "-- {}: the planner sets --{name} (and records it); passing it to the script would override the plan behind its back; pin it with {pin} instead",
            crate::input::excerpt(arg, 40)
        )));
    }
    Ok(())
}

/// Why the profile's training script is not where the profile says, if it is not.
pub(super) fn missing_script(loaded: &Loaded, resolved: &Resolved) -> Option<String> {
    let script = PathBuf::from(&resolved.workdir.value).join(&resolved.script.value);
    (!script.is_file()).then(|| {
        crate::install::missing_script_message(
            &script,
            &loaded.profile.script.workdir,
            &crate::install::vla_launch_dir(),
        )
    })
}

/// The script's path as the launch runs it (workdir joined).
pub(super) fn script_path(resolved: &Resolved) -> PathBuf {
    PathBuf::from(&resolved.workdir.value).join(&resolved.script.value)
}

/// Which script runs and which optional planner flags it takes: asks the script (`--help`, else
/// its source; cached in the user cache dir), then [`script_choice::choose`]. Without the script
/// (planning away from the checkout) the profile's `script.accepts` is assumed and said so;
/// `need_script` (a real launch) refuses that.
pub(super) fn choose_script(
    loaded: &Loaded,
    resolved: &Resolved,
    need_script: bool,
) -> Result<(ScriptChoice, Option<script_choice::FlagsAnswer>)> {
    let p = &loaded.profile;
    let workdir = PathBuf::from(&resolved.workdir.value);
    let script = script_path(resolved);
    let missing = missing_script(loaded, resolved);
    if let (true, Some(message)) = (need_script, &missing) {
        return Err(AppError::environment(message.clone()));
    }
    let answer = if missing.is_some() {
        None
    } else {
        let python = PathBuf::from(&resolved.python.value);
        let cache = store_path().and_then(|p| Some(p.parent()?.join(script_choice::CACHE_FILE)));
        match script_choice::script_flags(
            &script_caps::SystemRunner,
            &python,
            &script,
            &workdir,
            script_caps::DEFAULT_PROBE_TIMEOUT,
            cache.as_deref(),
        ) {
            Ok(a) => {
                if let Some(e) = &a.help_error {
                    warn!(
                        "{e}\nread {}'s flags from its source instead (its dataclass fields)",
                        script.display()
                    );
                }
                Some(a)
            }
            Err(e) => {
                warn!(
                    "could not ask {} for its flags ({e}); assuming the profile's script.accepts",
                    script.display()
                );
                None
            }
        }
    };
    let addition =
        script_choice::installed(&crate::install::vla_launch_dir(), script_choice::ADDITION);
    let choice = script_choice::choose(
        p.script.fsdp_addition,
        &p.script.accepts,
        answer.as_ref().map(|a| &a.caps),
        addition.as_deref(),
        &resolved.script.value,
    )
    .map_err(AppError::usage)?;
    let choice = if missing.is_none() && answer.is_none() {
        choice.unanswered(&resolved.script.value)
    } else {
        choice
    };
    Ok((choice, answer))
}

/// One warning for every unset placeholder (issue 26: four lines on every plan away from the
/// checkout were noise).
pub(super) fn warn_missing(missing: &[(String, String)]) {
    if missing.is_empty() {
        return;
    }
    let m = crate::profile::missing_vars(missing);
    warn!(
        "{} {} not set (used by {}): fine for a plan, a real launch refuses it; {}",
        m.vars, m.verb, m.fields, m.fix
    );
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
