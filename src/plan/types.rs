//! What the planner takes and gives: its input, the evaluated candidates, the plan.

use serde::{Deserialize, Serialize};

use crate::budget::{self, Allocator, Budget, FsdpVersion, Strategy, strategy_name};
use crate::gpu::Gpu;
use crate::model::{self, ModelSpec};

use super::speed::StepTime;

/// What the search may choose from, fixed by the profile and the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_global_batch: u32,
    /// The global batch was given explicitly (`--global-batch`): honour it exactly when possible.
    pub exact_global_batch: bool,
    pub strategies: Vec<Strategy>,
    pub script_accepts_fsdp: bool,
    pub script_accepts_checkpointing: bool,
    pub margin_fraction: f64,
    pub margin_min_bytes: u64,
    pub max_batch_size: u32,
    pub allocator: Allocator,
    /// Which FSDP an FSDP plan runs: FSDP2 when the addition supplies `--use_fsdp`, FSDP1 when
    /// the script has its own (a fork) or nobody could ask it.
    pub fsdp: FsdpVersion,
    /// Why no FSDP can run although the script takes `--use_fsdp` (the training environment's
    /// torch has none the script can use), naming what would allow it: FSDP is then not
    /// considered (`script_accepts_fsdp` is false) and this is the reason the plan gives.
    pub fsdp_unavailable: Option<String>,
    /// FSDP plans run vla-launch's addition (`--use_fsdp` is its), which merges LoRA at a
    /// checkpoint on the saving rank alone whichever FSDP it runs; a fork's own FSDP saves as
    /// upstream does, on every rank. FSDP2 is always the addition's.
    pub fsdp_by_addition: bool,
}

/// Axes pinned by the user (`--batch-size` etc.); `None` lets the search choose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub strategy: Option<Strategy>,
    pub batch_size: Option<u32>,
    pub grad_accum: Option<u32>,
    pub checkpointing: Option<bool>,
    pub nproc: Option<u32>,
}

impl Pins {
    pub fn all_pinned(&self) -> bool {
        self.strategy.is_some()
            && self.batch_size.is_some()
            && self.grad_accum.is_some()
            && self.checkpointing.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub spec: &'a ModelSpec,
    /// This node's GPUs in CUDA order.
    pub gpus: &'a [Gpu],
    pub nnodes: u32,
    pub policy: Policy,
    pub pins: Pins,
    /// This node's physical RAM, when known.
    pub host_ram_bytes: Option<u64>,
    pub merge_lora_during_training: bool,
    /// Corrections learned from earlier runs on these GPUs (`vla-launch calibrate`, and every run).
    pub calibration: Option<Calibration<'a>>,
}

/// The calibration store and the profile whose observations apply.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    pub store: &'a crate::calibration::Store,
    pub profile: &'a str,
}

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub strategy: Strategy,
    pub gradient_checkpointing: bool,
    pub batch_size: u32,
    pub grad_accumulation_steps: u32,
    pub nproc_per_node: u32,
    pub nnodes: u32,
    pub global_batch: u32,
    /// CUDA indices of the GPUs used on this node.
    pub gpu_indices: Vec<u32>,
    /// What nvidia-smi shows at the peak on a GPU with room for the allocator's cache.
    pub predicted_peak_bytes: u64,
    /// The least memory it runs in: the peak less the cache the allocator gives back under pressure.
    pub required_bytes: u64,
    pub usable_bytes: u64,
    pub fits: bool,
    /// The budget model's own peak; `predicted_peak_bytes` differs when a calibration applies.
    pub model_peak_bytes: u64,
    /// The calibration applied to the prediction, in words (`plan --explain`).
    pub correction: Option<String>,
    pub budget: Budget,
    pub step_time: StepTime,
    pub step_time_s: f64,
    pub samples_per_s: f64,
}

impl Candidate {
    pub fn world_size(&self) -> u32 {
        self.nproc_per_node * self.nnodes
    }

    /// "DDP, batch 4 x 2 GPUs x 2 accumulation, checkpointing".
    pub fn label(&self) -> String {
        format!(
            "{}, batch {} x {} GPU{}{} x {} accumulation, {}",
            strategy_name(self.strategy),
            self.batch_size,
            self.nproc_per_node,
            if self.nproc_per_node == 1 { "" } else { "s" },
            if self.nnodes > 1 {
                format!(" x {} nodes", self.nnodes)
            } else {
                String::new()
            },
            self.grad_accumulation_steps,
            if self.gradient_checkpointing {
                "checkpointing"
            } else {
                "no checkpointing"
            }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub why_not: String,
    /// `max_steps` x its step time, when the profile says how many steps (set by the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_run_time_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub feasible: bool,
    /// The chosen configuration; with every axis pinned, that configuration even when it does not fit.
    pub chosen: Option<Candidate>,
    pub alternatives: Vec<Alternative>,
    /// Why the chosen configuration, what was left out, and for an infeasible plan why nothing fits.
    pub reasons: Vec<String>,
    /// For an infeasible plan: what would make it fit, each with what it would need.
    pub levers: Vec<String>,
    /// Training flags the planner adds beyond its own four (e.g. merge_lora_during_training False).
    pub extra_flags: Vec<(String, String)>,
    pub host_ram: Option<budget::HostRam>,
    /// Number of configurations evaluated.
    pub evaluated: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no GPUs to plan for: {0}")]
    NoGpus(String),
    #[error("--nproc {nproc} asks for more GPUs than the {available} visible here")]
    TooManyProcs { nproc: u32, available: usize },
    #[error("{0}")]
    Model(#[from] model::ModelError),
}

pub(crate) fn margin_bytes(gpu: &Gpu, policy: &Policy) -> u64 {
    ((gpu.total_bytes as f64 * policy.margin_fraction) as u64).max(policy.margin_min_bytes)
}

pub(crate) fn usable(gpu: &Gpu, policy: &Policy) -> u64 {
    gpu.free_bytes.saturating_sub(margin_bytes(gpu, policy))
}
