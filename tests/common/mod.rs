//! Helpers shared by the budget test crates.

use vla_launch::model::{ActionHead, Dtype, ModelSpec, Platform};

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
