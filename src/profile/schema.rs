//! The profile's YAML schema, and a profile as loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_yaml::Mapping;

use crate::budget::{Allocator, Strategy};
use crate::model::{Dtype, Platform};

/// Training flags the planner owns: a profile may not fix them in `train:`.
pub const PLANNER_FLAGS: &[&str] = &[
    "batch_size",
    "grad_accumulation_steps",
    "use_fsdp",
    "gradient_checkpointing",
];

/// Planner flags a script may or may not accept (upstream finetune.py accepts neither).
pub const OPTIONAL_PLANNER_FLAGS: &[&str] = &["use_fsdp", "gradient_checkpointing"];

pub use crate::model::PRESETS;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// One line shown by `vla-launch profiles`.
    #[serde(default)]
    pub description: String,
    pub script: ScriptSection,
    #[serde(default)]
    pub model: ModelSection,
    /// Fixed training flags, in order, as `--name value` for the script (draccus names).
    pub train: Mapping,
    #[serde(default)]
    pub planning: PlanningSection,
    /// Extra environment variables for the training processes.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptSection {
    /// The training script, relative to `workdir`.
    pub path: String,
    /// Where torchrun is started: the OpenVLA-OFT checkout.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default = "default_python")]
    pub python: String,
    #[serde(default = "default_torchrun")]
    pub torchrun: String,
    /// Which optional planner flags (`use_fsdp`, `gradient_checkpointing`) the script takes.
    /// Confirmed with `python SCRIPT --help` before a real launch.
    #[serde(default)]
    pub accepts: Vec<String>,
    /// torchrun --max-restarts on several nodes.
    #[serde(default)]
    pub max_restarts: u32,
    /// Whether to run vla-launch's `scripts/finetune_fsdp.py` around the script, which gives
    /// upstream finetune.py `--use_fsdp` and `--gradient_checkpointing` (docs/fsdp.md).
    #[serde(default)]
    pub fsdp_addition: FsdpAddition,
}

/// `script.fsdp_addition`: when to run the FSDP addition instead of the bare script.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsdpAddition {
    /// When the script lacks a flag of `script.accepts` and the addition is installed.
    #[default]
    Auto,
    /// Always (an error if it is not installed or the script has `--use_fsdp` itself).
    On,
    /// Never: plan without the flags the script lacks.
    Off,
}

fn default_workdir() -> String {
    "${OPENVLA_OFT_DIR:-.}".into()
}
fn default_python() -> String {
    "python3".into()
}
fn default_torchrun() -> String {
    "torchrun".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default = "default_preset")]
    pub preset: String,
    /// peft 0.11.1 (pinned by OpenVLA-OFT) keeps adapters bf16; peft >= 0.12 upcasts them to fp32.
    #[serde(default = "default_lora_dtype")]
    pub lora_dtype: Dtype,
    /// Text prompt tokens ("In: What action should the robot take to ...?\nOut:").
    #[serde(default = "default_prompt_tokens")]
    pub prompt_tokens: u32,
    /// Whether a micro-batch mixes instructions of different token lengths (so it is padded and the
    /// Llama runs attention with a mask, which keeps more per layer). True unless every instruction
    /// of the dataset tokenizes to the same length (one task, one wording).
    #[serde(default = "default_padded_batches")]
    pub padded_batches: bool,
    /// Platform whose constants the script will use; derived from the flags when absent.
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            preset: default_preset(),
            lora_dtype: default_lora_dtype(),
            prompt_tokens: default_prompt_tokens(),
            padded_batches: default_padded_batches(),
            platform: None,
        }
    }
}

fn default_preset() -> String {
    "openvla-7b".into()
}
fn default_lora_dtype() -> Dtype {
    Dtype::Bf16
}
fn default_padded_batches() -> bool {
    true
}
fn default_prompt_tokens() -> u32 {
    // 23 gives the measured sequence lengths exactly: ALOHA 1144 tokens, LIBERO 594.
    23
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanningSection {
    /// Minimum global batch (batch x GPUs x nodes x accumulation); OpenVLA-OFT asks for >= 16.
    #[serde(default = "default_min_global_batch")]
    pub min_global_batch: u32,
    #[serde(default = "default_strategies")]
    pub strategies: Vec<Strategy>,
    /// Safety margin: the larger of this fraction of the GPU's memory and `margin_min_gib`.
    #[serde(default = "default_margin_fraction")]
    pub margin_fraction: f64,
    #[serde(default = "default_margin_min_gib")]
    pub margin_min_gib: f64,
    /// Largest per-GPU batch the search tries.
    #[serde(default = "default_max_batch")]
    pub max_batch_size: u32,
    /// Allocator the launcher sets unless PYTORCH_CUDA_ALLOC_CONF is already set.
    #[serde(default = "default_allocator")]
    pub allocator: Allocator,
    /// Optional pins (the command line's `--batch-size` etc. win over these).
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub grad_accumulation_steps: Option<u32>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
}

impl Default for PlanningSection {
    fn default() -> Self {
        PlanningSection {
            min_global_batch: default_min_global_batch(),
            strategies: default_strategies(),
            margin_fraction: default_margin_fraction(),
            margin_min_gib: default_margin_min_gib(),
            max_batch_size: default_max_batch(),
            allocator: default_allocator(),
            batch_size: None,
            grad_accumulation_steps: None,
            strategy: None,
            gradient_checkpointing: None,
        }
    }
}

fn default_min_global_batch() -> u32 {
    16
}
fn default_strategies() -> Vec<Strategy> {
    vec![Strategy::Ddp, Strategy::Fsdp]
}
fn default_margin_fraction() -> f64 {
    0.05
}
fn default_margin_min_gib() -> f64 {
    1.0
}
fn default_max_batch() -> u32 {
    64
}
fn default_allocator() -> Allocator {
    Allocator::ExpandableSegments
}

/// Where a profile was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Origin {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::BuiltIn => write!(f, "built into vla-launch"),
        }
    }
}

/// A profile after lookup, overrides and validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub name: String,
    pub origin: Origin,
    pub profile: Profile,
}
