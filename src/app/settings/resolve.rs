//! Settle: the command line, the profile and the environment into one immutable [`Settings`],
//! with no other effect (no file, process or NVML): every value a later stage needs from them,
//! computed once.

use super::super::error::{AppError, Result};
use crate::budget::{FsdpVersion, Strategy};
use crate::cli::{PlanningArgs, StrategyArg, Toggle};
use crate::cluster::{self, Topology, TopologyFlags};
use crate::launch::command::{self, AllocConf, Inherited};
use crate::model::ModelSpec;
use crate::plan::Pins;
use crate::profile::{self, Loaded, Resolved, ScriptArgs};
use crate::script_choice::{self, torch};

/// Which GPUs to plan for: described by `--gpus`, or queried from NVML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::app) struct GpuRequest {
    /// `--gpus SPEC`; None: ask NVML.
    pub described: Option<String>,
    /// `--vram-cap` as given, and in bytes.
    pub vram_cap: Option<(String, u64)>,
}

/// Where this node's RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::app) enum HostRamSource {
    /// `--host-ram SIZE`.
    Given(u64),
    /// This machine's (`/proc/meminfo`).
    ThisMachine,
    /// Planning for described GPUs: this machine's RAM says nothing about theirs.
    Unknown,
}

/// Everything a command needs from the command line, the profile and the environment.
#[derive(Debug, Clone)]
pub(in crate::app) struct Settings {
    pub loaded: Loaded,
    /// The profile's placeholders, expanded once.
    pub resolved: Resolved,
    /// The words after `--`, parsed once.
    pub script_args: ScriptArgs,
    /// `--set`s as given (messages name the one at fault).
    pub sets: Vec<String>,
    pub gpus: GpuRequest,
    pub topology: Topology,
    pub spec: ModelSpec,
    pub pins: Pins,
    /// `--global-batch`, else the profile's minimum; `exact`: given on the command line.
    pub min_global_batch: u32,
    pub exact_global_batch: bool,
    pub alloc_conf: AllocConf,
    pub host_ram: HostRamSource,
    /// `VLA_FSDP_IMPL` (the profile's `env:`, else the launcher's): the FSDP the addition must run.
    pub fsdp_forced: Option<FsdpVersion>,
    /// What the settling noticed (a plan-only topology, no platform word), in order.
    pub warnings: Vec<String>,
}

impl Settings {
    pub(in crate::app) fn vram_cap(&self) -> Option<u64> {
        self.gpus.vram_cap.as_ref().map(|(_, b)| *b)
    }
}

/// `--vram-cap` / `--host-ram` sizes.
pub(in crate::app) fn parse_size(flag: &str, value: &str) -> Result<u64> {
    crate::gpu::spec::parse_size(value, value).map_err(|_| {
        AppError::usage(format!("{flag} {}: not a size; write a number followed by GiB, GB, MiB or MB, e.g. {flag} 24GiB", crate::input::shown(value, 40)),
        )
    })
}

/// Settles `args` (+ the parsed `script_args`) with the loaded profile and the environment
/// (`env`: a variable's value; `inherited`: the launcher's own environment, for the allocator
/// setting). `plan_only`: a plan for a job that is not running (a multi-node plan from a login
/// node), where a topology the environment cannot give is taken from `--nnodes`.
pub(in crate::app) fn resolve(
    args: &PlanningArgs,
    script_args: ScriptArgs,
    loaded: Loaded,
    env: &dyn Fn(&str) -> Option<String>,
    inherited: &Inherited,
    plan_only: bool,
) -> Result<Settings> {
    let resolved = loaded.resolve(env);
    let mut warnings = Vec::new();
    let topology = topology(args, env, plan_only, &mut warnings)?;
    let p = &loaded.profile;
    let spec = profile::model_spec(p, &script_args);
    let (platform, word) = profile::platform_of(p, &script_args);
    if word.is_none() {
        warnings.push(format!(
            "no platform word (libero, aloha, bridge) in the script's arguments: finetune.py will use {platform:?} constants"
        ));
    }
    let profile_env: Vec<(String, String)> =
        p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let alloc_conf = command::effective_alloc_conf(&profile_env, inherited);
    let pins = pins_from(args, &loaded)?;
    let fsdp_forced = fsdp_forced(&resolved, env).map_err(AppError::usage)?;
    let vram_cap = match &args.vram_cap {
        Some(s) => Some((s.clone(), parse_size("--vram-cap", s)?)),
        None => None,
    };
    let host_ram = match (&args.host_ram, &args.gpus) {
        (Some(s), _) => HostRamSource::Given(parse_size("--host-ram", s)?),
        (None, Some(_)) => HostRamSource::Unknown,
        (None, None) => HostRamSource::ThisMachine,
    };
    Ok(Settings {
        min_global_batch: args.global_batch.unwrap_or(p.planning.min_global_batch),
        exact_global_batch: args.global_batch.is_some(),
        resolved,
        script_args,
        sets: args.sets.clone(),
        gpus: GpuRequest {
            described: args.gpus.clone(),
            vram_cap,
        },
        topology,
        spec,
        pins,
        alloc_conf,
        host_ram,
        fsdp_forced,
        warnings,
        loaded,
    })
}

/// `VLA_FSDP_IMPL` from the profile's `env:`, else the environment: the FSDP the addition must
/// run (None: its torch chooses), or why the value is not one.
pub(in crate::app) fn fsdp_forced(
    resolved: &Resolved,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Option<FsdpVersion>, String> {
    let value = resolved
        .env
        .iter()
        .find(|(k, _)| k == script_choice::ENV_FSDP_IMPL)
        .map(|(_, e)| e.value.clone())
        .or_else(|| env(script_choice::ENV_FSDP_IMPL));
    torch::parse_forced(value.as_deref().unwrap_or_default())
}

/// The topology from the environment (Slurm, torchrun's variables) and the flags.
fn topology(
    args: &PlanningArgs,
    env: &dyn Fn(&str) -> Option<String>,
    plan_only: bool,
    warnings: &mut Vec<String>,
) -> Result<Topology> {
    let flags = TopologyFlags {
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        rdzv_endpoint: args.rdzv_endpoint.clone(),
        rdzv_port: args.rdzv_port,
    };
    match cluster::topology_from_env(env, &flags) {
        Ok(t) => Ok(t),
        // Planning for a multi-node job from a login node: only the node count matters.
        Err(e) if plan_only && args.nnodes.is_some_and(|n| n > 1) => {
            warnings.push(format!("{e}; planning only, so this is taken as node 0"));
            // As node 0 with what was given (--rdzv-endpoint): the command shows it (issue 26).
            let as_node_0 = TopologyFlags {
                node_rank: Some(0),
                ..flags
            };
            Ok(
                cluster::topology_from_env(env, &as_node_0).unwrap_or_else(|_| Topology {
                    nnodes: args.nnodes.unwrap_or(1),
                    source: "--nnodes (plan only)".into(),
                    ..Topology::single_node()
                }),
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The axes the command line (else the profile) pins.
pub(in crate::app) fn pins_from(args: &PlanningArgs, loaded: &Loaded) -> Result<Pins> {
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
