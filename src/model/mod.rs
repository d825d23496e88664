//! Architecture -> components (parameter count, dtype, trainable). Pure.

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
    /// Whether micro-batches mix instructions of different lengths (padded, with an attention mask),
    /// as every dataset with more than one instruction length does; see
    /// [`crate::budget::masked_attention_bytes_per_token`]. Records written before it existed read
    /// as false: their plans were made without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub padded_batches: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub params: u64,
    pub dtype: Dtype,
    pub trainable: bool,
}

/// Errors a user can fix in the profile: each names the value at fault and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model preset {preset:?}; valid presets: {}", valid.join(", "))]
    UnknownPreset {
        preset: String,
        valid: Vec<&'static str>,
    },
    #[error(
        "lora_rank is 0: full fine-tuning is not modelled; set lora_rank to 1 or more (32 is upstream's default)"
    )]
    FullFineTuning,
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
}

/// Model presets this crate can describe.
pub const PRESETS: [&str; 1] = ["openvla-7b"];

/// Robot platform whose constants finetune.py picks from its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Libero,
    Aloha,
    Bridge,
}

impl Platform {
    /// What finetune.py falls back to when no platform word is on its command line.
    pub const DEFAULT: Platform = Platform::Libero;

    /// The word finetune.py looks for, in the order it looks for them.
    pub const SEARCH_ORDER: [(&'static str, Platform); 3] = [
        ("libero", Platform::Libero),
        ("aloha", Platform::Aloha),
        ("bridge", Platform::Bridge),
    ];

    /// NUM_ACTIONS_CHUNK.
    pub fn action_chunk(self) -> u32 {
        match self {
            Platform::Libero => 8,
            Platform::Aloha => 25,
            Platform::Bridge => 5,
        }
    }

    /// ACTION_DIM.
    pub fn action_dim(self) -> u32 {
        match self {
            Platform::Libero => 7,
            Platform::Aloha => 14,
            Platform::Bridge => 7,
        }
    }

    /// PROPRIO_DIM.
    pub fn proprio_dim(self) -> u32 {
        match self {
            Platform::Libero => 8,
            Platform::Aloha => 14,
            Platform::Bridge => 7,
        }
    }

    /// The platform finetune.py will use for this command line, or `None` when no platform word is
    /// present (then finetune.py silently uses [`Platform::DEFAULT`]; the caller should warn).
    /// Mirrors the script: lower-case substring search over the joined argv, libero before aloha
    /// before bridge, so "aloha_libero_mix" is LIBERO.
    pub fn from_words(words: &[&str]) -> Option<Platform> {
        Self::detect(words).map(|(platform, _)| platform)
    }

    /// Like [`Platform::from_words`], also returning the word that matched.
    pub fn detect(words: &[&str]) -> Option<(Platform, &'static str)> {
        let joined = words.join(" ").to_lowercase();
        Self::SEARCH_ORDER
            .iter()
            .find(|(word, _)| joined.contains(word))
            .map(|&(word, platform)| (platform, word))
    }
}

/// Shapes of the OpenVLA-7B preset (Prismatic "dinosiglip-vit-so-224px" + Llama-2-7B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub llm: LlamaShape,
    pub dino: VitShape,
    pub siglip: VitShape,
    /// Patches per image per ViT at 224 px with patch 14: (224/14)^2.
    pub patches_per_image: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    pub hidden: u64,
    pub layers: u64,
    pub mlp: u64,
    pub vocab: u64,
}

/// A timm VisionTransformer as OpenVLA builds it (num_classes=0, img_size=224).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitShape {
    pub dim: u64,
    pub depth: u64,
    pub mlp: u64,
    pub patch: u64,
    /// Position-embedded tokens (no_embed_class: patches only).
    pub pos_tokens: u64,
    /// Class + register tokens prepended before the blocks.
    pub prefix_tokens: u64,
    /// LayerScale gammas in each block (DINOv2).
    pub layer_scale: bool,
    /// timm AttentionPoolLatent head ("map" global pool, SigLIP).
    pub attn_pool: bool,
}

pub const OPENVLA_7B: Arch = Arch {
    llm: LlamaShape {
        hidden: 4096,
        layers: 32,
        mlp: 11008,
        vocab: 32064,
    },
    // vit_large_patch14_reg4_dinov2: 1 cls + 4 register tokens, LayerScale, no_embed_class.
    dino: VitShape {
        dim: 1024,
        depth: 24,
        mlp: 4096,
        patch: 14,
        pos_tokens: 256,
        prefix_tokens: 5,
        layer_scale: true,
        attn_pool: false,
    },
    // vit_so400m_patch14_siglip_224: no class token, MAP head; mlp_ratio 3.7362 -> 4304.
    siglip: VitShape {
        dim: 1152,
        depth: 27,
        mlp: 4304,
        patch: 14,
        pos_tokens: 256,
        prefix_tokens: 0,
        layer_scale: false,
        attn_pool: true,
    },
    patches_per_image: 256,
};

/// nn.Linear parameters.
pub const fn linear(inp: u64, out: u64) -> u64 {
    inp * out + out
}

/// LoRA adapters on a Linear: A (r x in) + B (out x r), no biases.
pub const fn lora_linear(inp: u64, out: u64, r: u64) -> u64 {
    r * (inp + out)
}

/// nn.LayerNorm(dim) with affine weight and bias.
pub const fn layer_norm(dim: u64) -> u64 {
    2 * dim
}

impl LlamaShape {
    /// One LlamaDecoderLayer: q,k,v,o (no bias), gate/up/down (no bias), two RMSNorm weights.
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden;
        4 * h * h + 3 * h * self.mlp + 2 * h
    }
    /// embed_tokens + lm_head (untied) + final norm: what sits outside the decoder layers.
    pub fn outer_params(&self) -> u64 {
        2 * self.vocab * self.hidden + self.hidden
    }
    pub fn params(&self) -> u64 {
        self.layers * self.layer_params() + self.outer_params()
    }
    /// LoRA on the seven projections of one layer.
    pub fn layer_lora(&self, r: u64) -> u64 {
        let (h, m) = (self.hidden, self.mlp);
        4 * lora_linear(h, h, r) + 2 * lora_linear(h, m, r) + lora_linear(m, h, r)
    }
    /// LoRA on lm_head ("all-linear" in peft keeps lm_head in OpenVLA's setup: the seed log counts it).
    pub fn lm_head_lora(&self, r: u64) -> u64 {
        lora_linear(self.hidden, self.vocab, r)
    }
}

impl VitShape {
    /// One timm Block: norm1, qkv (bias), proj, [ls1], norm2, fc1, fc2, [ls2].
    pub fn block_params(&self) -> u64 {
        let d = self.dim;
        let ls = if self.layer_scale { 2 * d } else { 0 };
        2 * layer_norm(d)
            + linear(d, 3 * d)
            + linear(d, d)
            + linear(d, self.mlp)
            + linear(self.mlp, d)
            + ls
    }
    pub fn patch_embed_params(&self) -> u64 {
        3 * self.patch * self.patch * self.dim + self.dim
    }
    /// AttentionPoolLatent: latent query, q, kv, proj, norm, Mlp.
    pub fn attn_pool_params(&self) -> u64 {
        if !self.attn_pool {
            return 0;
        }
        let d = self.dim;
        d + linear(d, d)
            + linear(d, 2 * d)
            + linear(d, d)
            + layer_norm(d)
            + linear(d, self.mlp)
            + linear(self.mlp, d)
    }
    /// Everything outside the blocks: patch embed, cls/register tokens, pos embed, final norm, pool.
    pub fn outer_params(&self) -> u64 {
        self.patch_embed_params()
            + self.prefix_tokens * self.dim
            + self.pos_tokens * self.dim
            + layer_norm(self.dim)
            + self.attn_pool_params()
    }
    pub fn params(&self) -> u64 {
        self.depth * self.block_params() + self.outer_params()
    }
    pub fn block_lora(&self, r: u64) -> u64 {
        let d = self.dim;
        lora_linear(d, 3 * d, r)
            + lora_linear(d, d, r)
            + lora_linear(d, self.mlp, r)
            + lora_linear(self.mlp, d, r)
    }
    /// LoRA on the patch-embed Conv2d: A = Conv2d(3, r, patch), B = Conv2d(r, dim, 1).
    pub fn patch_embed_lora(&self, r: u64) -> u64 {
        3 * self.patch * self.patch * r + r * self.dim
    }
    pub fn attn_pool_lora(&self, r: u64) -> u64 {
        if !self.attn_pool {
            return 0;
        }
        let d = self.dim;
        lora_linear(d, d, r)
            + lora_linear(d, 2 * d, r)
            + lora_linear(d, d, r)
            + lora_linear(d, self.mlp, r)
            + lora_linear(self.mlp, d, r)
    }
    /// LoRA outside the blocks (patch embed, attention pool).
    pub fn outer_lora(&self, r: u64) -> u64 {
        self.patch_embed_lora(r) + self.attn_pool_lora(r)
    }
    pub fn lora(&self, r: u64) -> u64 {
        self.depth * self.block_lora(r) + self.outer_lora(r)
    }
    /// FiLM per block: scale and shift, each Linear(llm_hidden -> dim).
    pub fn film(&self, llm_hidden: u64) -> u64 {
        self.depth * 2 * linear(llm_hidden, self.dim)
    }
    /// Tokens through the blocks per image.
    pub fn tokens(&self) -> u64 {
        self.pos_tokens + self.prefix_tokens
    }
}

impl Arch {
    /// Concatenated DINOv2 + SigLIP channels per patch.
    pub fn fused_vision_dim(&self) -> u64 {
        self.dino.dim + self.siglip.dim
    }
    /// FusedMLPProjector: Linear(F -> 4F), GELU, Linear(4F -> h), GELU, Linear(h -> h).
    pub fn projector_linears(&self) -> [(u64, u64); 3] {
        let f = self.fused_vision_dim();
        let h = self.llm.hidden;
        [(f, 4 * f), (4 * f, h), (h, h)]
    }
    pub fn projector_params(&self) -> u64 {
        self.projector_linears()
            .iter()
            .map(|&(i, o)| linear(i, o))
            .sum()
    }
    pub fn projector_lora(&self, r: u64) -> u64 {
        self.projector_linears()
            .iter()
            .map(|&(i, o)| lora_linear(i, o, r))
            .sum()
    }
    /// Frozen OpenVLA-7B: Llama + both ViTs + projector.
    pub fn base_params(&self) -> u64 {
        self.llm.params() + self.dino.params() + self.siglip.params() + self.projector_params()
    }
    pub fn llm_lora(&self, r: u64) -> u64 {
        self.llm.layers * self.llm.layer_lora(r) + self.llm.lm_head_lora(r)
    }
    pub fn vision_lora(&self, r: u64) -> u64 {
        self.dino.lora(r) + self.siglip.lora(r)
    }
    pub fn lora(&self, r: u64) -> u64 {
        self.llm_lora(r) + self.vision_lora(r) + self.projector_lora(r)
    }
    pub fn film(&self) -> u64 {
        self.dino.film(self.llm.hidden) + self.siglip.film(self.llm.hidden)
    }
    /// MLPResNet (2 blocks) as the L1 head and the diffusion noise predictor use it:
    /// LN(h*A), Linear(h*A -> h), 2 x (LN(h), Linear(h -> h)), LN(h), Linear(h -> A).
    pub fn mlp_resnet_head(&self, action_dim: u64) -> u64 {
        let h = self.llm.hidden;
        let inp = h * action_dim;
        layer_norm(inp)
            + linear(inp, h)
            + 2 * (layer_norm(h) + linear(h, h))
            + layer_norm(h)
            + linear(h, action_dim)
    }
    /// ProprioProjector: Linear(P -> h), GELU, Linear(h -> h).
    pub fn proprio_projector(&self, proprio_dim: u64) -> u64 {
        linear(proprio_dim, self.llm.hidden) + linear(self.llm.hidden, self.llm.hidden)
    }
    /// NoisyActionProjector (diffusion): Linear(1 -> h), GELU, Linear(h -> h).
    pub fn noisy_action_projector(&self) -> u64 {
        linear(1, self.llm.hidden) + linear(self.llm.hidden, self.llm.hidden)
    }
}

/// The architecture behind a preset name.
pub fn arch(preset: &str) -> Result<&'static Arch, ModelError> {
    match preset {
        "openvla-7b" => Ok(&OPENVLA_7B),
        other => Err(ModelError::UnknownPreset {
            preset: other.to_string(),
            valid: PRESETS.to_vec(),
        }),
    }
}

/// Names of the components, stable: the plan JSON and the budget refer to them.
pub mod names {
    pub const LLM: &str = "llama-2-7b";
    pub const DINO: &str = "dinov2-vit-l-14-reg4";
    pub const SIGLIP: &str = "siglip-so400m-14";
    pub const PROJECTOR: &str = "projector";
    pub const LORA_LLM: &str = "lora-llm";
    pub const LORA_VISION: &str = "lora-vision";
    pub const LORA_PROJECTOR: &str = "lora-projector";
    pub const FILM: &str = "film";
    pub const ACTION_HEAD_L1: &str = "action-head-l1";
    pub const ACTION_HEAD_DIFFUSION: &str = "action-head-diffusion";
    pub const NOISY_ACTION_PROJECTOR: &str = "noisy-action-projector";
    pub const PROPRIO_PROJECTOR: &str = "proprio-projector";
}

fn check_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), ModelError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ModelError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

/// Validates the spec and returns its architecture.
pub fn validate(spec: &ModelSpec) -> Result<&'static Arch, ModelError> {
    let arch = arch(&spec.preset)?;
    if spec.lora_rank == 0 {
        return Err(ModelError::FullFineTuning);
    }
    // finetune.py supports one third-person image plus up to two wrist images.
    check_range("num_images", spec.num_images, 1, 3)?;
    check_range("action_chunk", spec.action_chunk, 1, 1024)?;
    check_range("action_dim", spec.action_dim, 1, 1024)?;
    if spec.use_proprio {
        check_range("proprio_dim", spec.proprio_dim, 1, 1024)?;
    }
    Ok(arch)
}

/// Every parameter-holding part of the network, with dtype and whether it trains.
/// Dtypes follow finetune.py: the VLA loads in bf16, FiLM and the proprio projector stay fp32,
/// the action head is cast to bf16, LoRA adapters have `spec.lora_dtype` (peft version dependent).
pub fn components(spec: &ModelSpec) -> Result<Vec<Component>, ModelError> {
    let arch = validate(spec)?;
    let r = u64::from(spec.lora_rank);
    let c = |name: &str, params: u64, dtype: Dtype, trainable: bool| Component {
        name: name.to_string(),
        params,
        dtype,
        trainable,
    };
    let mut out = vec![
        c(names::LLM, arch.llm.params(), Dtype::Bf16, false),
        c(names::DINO, arch.dino.params(), Dtype::Bf16, false),
        c(names::SIGLIP, arch.siglip.params(), Dtype::Bf16, false),
        c(
            names::PROJECTOR,
            arch.projector_params(),
            Dtype::Bf16,
            false,
        ),
        c(names::LORA_LLM, arch.llm_lora(r), spec.lora_dtype, true),
        c(
            names::LORA_VISION,
            arch.vision_lora(r),
            spec.lora_dtype,
            true,
        ),
        c(
            names::LORA_PROJECTOR,
            arch.projector_lora(r),
            spec.lora_dtype,
            true,
        ),
    ];
    if spec.use_film {
        out.push(c(names::FILM, arch.film(), Dtype::Fp32, true));
    }
    let a = u64::from(spec.action_dim);
    match spec.action_head {
        ActionHead::L1Regression => {
            out.push(c(
                names::ACTION_HEAD_L1,
                arch.mlp_resnet_head(a),
                Dtype::Bf16,
                true,
            ));
        }
        ActionHead::Diffusion => {
            out.push(c(
                names::ACTION_HEAD_DIFFUSION,
                arch.mlp_resnet_head(a),
                Dtype::Bf16,
                true,
            ));
            out.push(c(
                names::NOISY_ACTION_PROJECTOR,
                arch.noisy_action_projector(),
                Dtype::Fp32,
                true,
            ));
        }
    }
    if spec.use_proprio {
        let p = u64::from(spec.proprio_dim);
        out.push(c(
            names::PROPRIO_PROJECTOR,
            arch.proprio_projector(p),
            Dtype::Fp32,
            true,
        ));
    }
    Ok(out)
}

/// Sum of parameters, optionally only the trainable ones.
pub fn total_params(components: &[Component], trainable_only: bool) -> u64 {
    components
        .iter()
        .filter(|c| c.trainable || !trainable_only)
        .map(|c| c.params)
        .sum()
}

/// Tokens the Llama sees per sample: BOS + 256 patches per image + proprio token + diffusion
/// timestep token + prompt + chunk x dim action tokens + stop token. ALOHA: 1144, LIBERO (2 images): 594.
pub fn sequence_tokens(spec: &ModelSpec) -> u32 {
    let patches = OPENVLA_7B.patches_per_image * spec.num_images;
    let proprio = u32::from(spec.use_proprio);
    let timestep = u32::from(spec.action_head == ActionHead::Diffusion);
    1 + patches + proprio + timestep + spec.prompt_tokens + spec.action_chunk * spec.action_dim + 1
}

/// Training FLOPs per sample (forward + backward), for throughput estimates.
/// Matmuls cost 2 FLOPs per parameter per token forward. Backward through a frozen weight only
/// needs the input gradient (2 more), a trainable one also its weight gradient (2 more): so the
/// LoRA-frozen base costs ~4N per token, not the textbook 6N. Attention scores add 4*s*h per layer
/// per token forward. Checkpointing reruns the Llama forward once: Llama cost x (4+2)/4 = 1.5
/// (it would be 4/3 with the 6N rule of full fine-tuning). The ViTs are never checkpointed.
pub fn train_flops_per_sample(spec: &ModelSpec, checkpointing: bool) -> f64 {
    let arch = &OPENVLA_7B;
    let r = u64::from(spec.lora_rank.max(1));
    let s = f64::from(sequence_tokens(spec));
    let l = &arch.llm;
    // Per token: layers + lm_head (the full-vocab logits are computed for every token).
    let llm_frozen = (l.layers * l.layer_params() + l.vocab * l.hidden) as f64;
    let llm_lora = arch.llm_lora(r) as f64;
    let llm_attn = (4 * l.layers * l.hidden) as f64 * s;
    let llm_fwd = 2.0 * (llm_frozen + llm_lora) * s + llm_attn;
    let llm_bwd = 2.0 * (llm_frozen + llm_lora) * s + 2.0 * llm_lora * s + 2.0 * llm_attn;
    let recompute = if checkpointing { llm_fwd } else { 0.0 };
    let vit = |v: &VitShape| {
        let t = v.tokens() as f64;
        let n = (v.depth * v.block_params()) as f64;
        let nl = (v.depth * v.block_lora(r)) as f64;
        let attn = (4 * v.depth * v.dim) as f64 * t;
        (4.0 * (n + nl) * t + 2.0 * nl * t + 3.0 * attn) * f64::from(spec.num_images)
    };
    let patches = f64::from(arch.patches_per_image * spec.num_images);
    let projector = 6.0 * arch.projector_params() as f64 * patches;
    llm_fwd + llm_bwd + recompute + vit(&arch.dino) + vit(&arch.siglip) + projector
}

#[cfg(test)]
mod tests;
