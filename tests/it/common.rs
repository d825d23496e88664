//! Helpers shared by the integration tests: model specs, the planner policy, the fake torchrun.
//! Take these rather than writing another literal.

use std::path::{Path, PathBuf};

use vla_launch::budget::{Allocator, FsdpVersion, Strategy};
use vla_launch::model::{ActionHead, Dtype, ModelSpec, Platform};
use vla_launch::plan::Policy;
use vla_launch::profile::{self, BUILTIN};
use vla_launch::units::GIB;

/// The model spec of a built-in profile (as `--profile NAME` plans it).
pub fn builtin_spec(name: &str) -> ModelSpec {
    let text = BUILTIN.iter().find(|(n, _)| *n == name).unwrap().1;
    profile::model_spec(
        &profile::parse(text, name).unwrap(),
        &profile::ScriptArgs::default(),
    )
}

/// The planner policy of the shipped profiles: global batch at least 16, DDP or FSDP, a script
/// that takes both planner flags, a 5% / 1 GiB margin, batch up to 64, expandable segments.
/// Tests change what they exercise: `Policy { min_global_batch: 8, ..policy() }`.
pub fn policy() -> Policy {
    Policy {
        min_global_batch: 16,
        exact_global_batch: false,
        strategies: vec![Strategy::Ddp, Strategy::Fsdp],
        script_accepts_fsdp: true,
        script_accepts_checkpointing: true,
        margin_fraction: 0.05,
        margin_min_bytes: GIB,
        max_batch_size: 64,
        allocator: Allocator::ExpandableSegments,
        fsdp: FsdpVersion::Fsdp1,
        fsdp_unavailable: None,
        fsdp_by_addition: false,
    }
}

/// The stand-in for torchrun (tests/fixtures/fake_torchrun; its header lists what it can do).
pub fn fake_torchrun() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_torchrun")
}

/// The measured layouts: ALOHA (3 images, FiLM, proprio) or LIBERO (2 images, proprio), LoRA r=32,
/// a 23-token prompt (ALOHA 1144 tokens, LIBERO 594).
pub fn spec(platform: Platform, lora_dtype: Dtype) -> ModelSpec {
    let aloha = platform == Platform::Aloha;
    ModelSpec {
        preset: "openvla-7b".into(),
        num_images: if aloha { 3 } else { 2 },
        use_film: aloha,
        use_proprio: true,
        action_head: ActionHead::L1Regression,
        num_diffusion_steps_train: 50,
        action_chunk: platform.action_chunk(),
        action_dim: platform.action_dim(),
        proprio_dim: platform.proprio_dim(),
        lora_rank: 32,
        lora_dtype,
        prompt_tokens: 23,
    }
}

/// Removes the variables through which the machine running the tests would leak into a
/// launcher's plan: described GPUs, visible devices, and a Slurm or torchrun topology.
pub trait WithoutAmbient {
    fn without_ambient_topology(&mut self) -> &mut Self;
}

impl WithoutAmbient for std::process::Command {
    fn without_ambient_topology(&mut self) -> &mut Self {
        for var in [
            "VLA_LAUNCH_GPUS",
            "CUDA_VISIBLE_DEVICES",
            "SLURM_JOB_ID",
            "SLURM_NNODES",
            "SLURM_RESTART_COUNT",
            "MASTER_ADDR",
            "NNODES",
            "NODE_RANK",
        ] {
            self.env_remove(var);
        }
        self
    }
}
