//! Plan: settled settings and gathered facts into the plan every command shares ([`Planned`]),
//! a pure step. A value once built is not changed: a re-plan (calibrate's probe configurations,
//! the re-plan after a CUDA OOM) and `--resume`'s flags give a new one.

use super::super::error::Result;
use super::gather::Facts;
use super::resolve::Settings;
use crate::budget::{FsdpVersion, Strategy};
use crate::calibration::Store;
use crate::cluster::Topology;
use crate::gpu::Gpu;
use crate::launch::command::AllocConf;
use crate::model;
use crate::plan::{self, Pins, Plan, PlanInput, Policy, explain};
use crate::profile::{self, Loaded, Resolved, ScriptArgs};
use crate::record::Params;
use crate::script_choice::torch::{self, AdditionFsdp, TorchInfo};
use crate::script_choice::{self, ScriptChoice};
use crate::units::GIB;

/// Everything `plan` and the launch form share, resolved once.
#[derive(Debug, Clone)]
pub(in crate::app) struct Planned {
    pub loaded: Loaded,
    /// The profile's placeholders, expanded once.
    pub resolved: Resolved,
    /// The words after `--`, parsed once.
    pub script_args: ScriptArgs,
    pub gpus: Vec<Gpu>,
    pub topology: Topology,
    pub spec: model::ModelSpec,
    pub policy: Policy,
    pub pins: Pins,
    pub plan: Plan,
    pub warnings: Vec<String>,
    pub vram_cap: Option<u64>,
    pub alloc_conf: AllocConf,
    /// Which script runs (the profile's, or the FSDP addition around it) and why.
    pub script_choice: ScriptChoice,
    pub host_ram_bytes: Option<u64>,
    /// Corrections learned from earlier runs; empty when none or unreadable.
    pub store: Store,
    /// The torch of the training environment, when it could be learnt.
    pub torch: Option<TorchInfo>,
    /// Which FSDP the addition runs on that torch (FSDP1 for a script with its own --use_fsdp).
    pub fsdp: AdditionFsdp,
    /// The model's parameters by component, with their sums (the plan record's `params`).
    pub params: Params,
    /// Flags `--resume` sets on the script (replacing the profile's of the same name).
    pub resume_flags: Vec<(String, String)>,
    /// The planner reads the calibration store (off for calibrate's probe runs).
    calibrated: bool,
}

/// How calibrate steers a re-plan: one probe configuration, any global batch, no corrections.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::app) struct Steer {
    pub pins: Pins,
    pub min_global_batch: u32,
    pub calibrated: bool,
}

/// The planner's policy: the profile's and the command line's, with what the script and its
/// torch allow.
fn policy(settings: &Settings, choice: &ScriptChoice, fsdp: &AdditionFsdp) -> Policy {
    let p = &settings.loaded.profile.planning;
    let takes = |flag: &str| choice.accepts.iter().any(|a| a == flag);
    let (version, unavailable) = match fsdp {
        AdditionFsdp::Runs { version } => (*version, None),
        AdditionFsdp::Unavailable { why } => (FsdpVersion::Fsdp1, Some(why.clone())),
    };
    Policy {
        min_global_batch: settings.min_global_batch,
        exact_global_batch: settings.exact_global_batch,
        strategies: p.strategies.clone(),
        script_accepts_fsdp: takes("use_fsdp") && unavailable.is_none(),
        script_accepts_checkpointing: takes("gradient_checkpointing"),
        margin_fraction: p.margin_fraction,
        margin_min_bytes: (p.margin_min_gib * GIB as f64) as u64,
        max_batch_size: p.max_batch_size,
        allocator: settings.alloc_conf.allocator(),
        fsdp: version,
        fsdp_unavailable: unavailable,
        fsdp_by_addition: choice.addition_gives_fsdp(),
    }
}

/// The plan for `settings` on this machine's `facts`.
pub(in crate::app) fn plan(settings: Settings, facts: Facts) -> Result<Planned> {
    let fsdp = facts
        .script_choice
        .fsdp_on(facts.torch.as_ref().ok(), settings.fsdp_forced);
    let mut warnings = facts.warnings;
    warnings.extend(settings.warnings.iter().cloned());
    if let (Err(why), true) = (&facts.torch, facts.script_choice.addition_gives_fsdp()) {
        warnings.push(format!(
            "could not learn the torch version from {} ({why}); {}",
            crate::input::excerpt(&settings.resolved.python.value, 80),
            torch::describe(None, &fsdp)
        ));
    }
    let policy = policy(&settings, &facts.script_choice, &fsdp);
    let vram_cap = settings.vram_cap();
    // What the planner's model is made of, summed once for the record.
    let params = Params::of(model::components(&settings.spec).unwrap_or_default());
    let planned = Planned {
        policy,
        pins: settings.pins,
        plan: Plan::default(),
        warnings,
        vram_cap,
        alloc_conf: settings.alloc_conf,
        script_choice: facts.script_choice,
        host_ram_bytes: facts.host_ram_bytes,
        store: facts.store,
        torch: facts.torch.ok(),
        fsdp,
        resume_flags: Vec::new(),
        params,
        calibrated: true,
        gpus: facts.gpus,
        topology: settings.topology,
        spec: settings.spec,
        script_args: settings.script_args,
        resolved: settings.resolved,
        loaded: settings.loaded,
    };
    planned.replanned()
}

impl Planned {
    /// This value with its plan made again from its own input.
    fn replanned(self) -> Result<Planned> {
        let plan = plan::plan(&self.plan_input())?;
        Ok(self.with_plan(plan))
    }

    /// The same settings with another plan (the re-plan after a CUDA OOM).
    pub(in crate::app) fn with_plan(self, plan: Plan) -> Planned {
        Planned { plan, ..self }
    }

    /// The plan for one of calibrate's probe configurations.
    pub(in crate::app) fn steered(&self, steer: &Steer) -> Result<Planned> {
        let mut policy = self.policy.clone();
        policy.min_global_batch = steer.min_global_batch;
        Planned {
            pins: steer.pins.clone(),
            policy,
            calibrated: steer.calibrated,
            ..self.clone()
        }
        .replanned()
    }

    /// The same plan, with `--resume`'s flags for the script.
    pub(in crate::app) fn with_resume_flags(self, flags: Vec<(String, String)>) -> Planned {
        Planned {
            resume_flags: flags,
            ..self
        }
    }

    /// The script's flags from the profile, with `--resume`'s.
    pub(in crate::app) fn script_flags(&self) -> Vec<(String, String)> {
        let mut flags = self.resolved.flags.flags.clone();
        super::super::resume::set_flags(&mut flags, &self.resume_flags);
        flags
    }

    /// The plan for a terminal (`--explain` adds the budget table and the bars).
    pub(in crate::app) fn render(&self, explain: bool) -> String {
        let mut text = explain::render_plan(
            &self.loaded.name,
            &self.plan,
            &self.gpus,
            self.policy.min_global_batch,
            self.max_steps(),
            explain,
            self.spec.padded_batches,
        );
        text.push_str(&format!("Script: {}\n", self.script_for_plan().why));
        if self.script_choice.addition_gives_fsdp() {
            let line = torch::describe(self.torch.as_ref(), &self.fsdp);
            text.push_str(&format!("Torch: {line}\n"));
        } else if let Some(t) = &self.torch {
            text.push_str(&format!("Torch: {}\n", t.version));
        }
        text
    }

    /// Which script this plan runs (the addition only when the plan needs a flag the script lacks).
    pub(in crate::app) fn script_for_plan(&self) -> ScriptChoice {
        let (fsdp, ckpt) = self.plan.chosen.as_ref().map_or((false, false), |c| {
            (c.strategy == Strategy::Fsdp, c.gradient_checkpointing)
        });
        script_choice::for_plan(&self.script_choice, fsdp, ckpt, &self.resolved.script.value)
    }

    /// The run's optimizer steps: a `--max_steps` passed through to the script, else the
    /// profile's `train.max_steps` (after `--set`).
    pub(in crate::app) fn max_steps(&self) -> Option<u64> {
        self.script_args.max_steps().or_else(|| {
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
            calibration: self.calibrated.then_some(plan::Calibration {
                store: &self.store,
                profile: &self.loaded.name,
            }),
        }
    }
}
