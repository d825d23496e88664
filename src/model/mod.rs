//! Architecture -> components (parameter count, dtype, trainable). Pure.
//! OWNER: budget helper. The types below are the agreed interface.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Bf16,
    Fp32,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Bf16 => 2,
            Dtype::Fp32 => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionHead {
    L1Regression,
    Diffusion,
}

/// Everything the budget model needs to know about the network being trained.
/// Built by `profile` from the profile's `model:` section and its training flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture preset; only "openvla-7b" exists today.
    pub preset: String,
    pub num_images: u32,
    pub use_film: bool,
    pub use_proprio: bool,
    pub action_head: ActionHead,
    /// Diffusion steps at training time (only with the diffusion head).
    pub num_diffusion_steps_train: u32,
    pub action_chunk: u32,
    pub action_dim: u32,
    pub proprio_dim: u32,
    /// 0 = LoRA off (full fine-tuning is not modelled; profile validation refuses it).
    pub lora_rank: u32,
    pub lora_dtype: Dtype,
    /// Tokens of the text prompt ("In: What action should the robot take to ...?\nOut:").
    pub prompt_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub params: u64,
    pub dtype: Dtype,
    pub trainable: bool,
}
