//! Bytes per named term for one configuration. Pure.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Ddp,
    Fsdp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocator {
    /// PYTORCH_CUDA_ALLOC_CONF unset.
    Default,
    /// PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
    ExpandableSegments,
}

/// Which FSDP runs when `strategy` is FSDP: it changes the memory and step-time terms.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FsdpVersion {
    /// A fork's own `--use_fsdp`: FSDP1 `FullyShardedDataParallel` with `use_orig_params`
    /// (the probe's figures; gradients for every flat parameter, frozen base included). The
    /// default, and what is assumed when nobody could ask the script.
    #[default]
    Fsdp1,
    /// vla-launch's addition `scripts/finetune_fsdp.py`: FSDP2 `fully_shard` per unit, no
    /// gradient storage for frozen weights (docs/fsdp.md, fsdp-v1/fsdp-v2 measurements).
    Fsdp2,
}

/// One candidate configuration, as seen by one rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub strategy: Strategy,
    /// Ranks in the whole job (nproc_per_node x nnodes).
    pub world_size: u32,
    /// Ranks on this node (NCCL buffers grow with peers on the node).
    pub nproc_per_node: u32,
    /// Per-GPU micro-batch.
    pub batch_size: u32,
    pub checkpointing: bool,
    pub allocator: Allocator,
    /// GPU model name as NVML reports it ("NVIDIA H100 80GB HBM3"); drives per-rank overhead.
    pub gpu_name: String,
    /// Which FSDP implementation runs (ignored under DDP).
    #[serde(default)]
    pub fsdp: FsdpVersion,
}

/// "DDP" or "FSDP", as plans and messages write it.
pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Ddp => "DDP",
        Strategy::Fsdp => "FSDP",
    }
}

/// Predicted bytes per GPU by term; `peak()` is their sum and what nvidia-smi shows at the peak.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    /// FSDP all-gathered units in flight and reduce-scatter buffers (0 under DDP).
    pub fsdp_working: u64,
    /// Optimizer-step and backward transients above the steady state.
    pub transients: u64,
    /// Reserved-but-unallocated memory of the caching allocator.
    pub allocator_slack: u64,
    /// CUDA context, cuBLAS workspaces, NCCL buffers.
    pub overhead: u64,
}

pub mod fsdp;
pub mod render;

pub use fsdp::Fsdp2Working;

use crate::model::{self, Arch, Component, Dtype, ModelError, ModelSpec};
use crate::units::{GIB, MIB};

/// Bytes of parameters, optionally only trainable ones, each in its own dtype.
fn param_bytes(components: &[Component], trainable_only: bool) -> u64 {
    components
        .iter()
        .filter(|c| c.trainable || !trainable_only)
        .map(|c| c.params * c.dtype.bytes())
        .sum()
}

/// Weights: every parameter in its dtype (frozen base bf16, FiLM/proprio fp32, LoRA as configured).
/// FSDP FULL_SHARD keeps a 1/world shard of each flat parameter between uses (padding ignored).
pub fn weights(components: &[Component], cfg: &Config) -> u64 {
    let all = param_bytes(components, false);
    match cfg.strategy {
        Strategy::Ddp => all,
        Strategy::Fsdp => all.div_ceil(u64::from(cfg.world_size.max(1))),
    }
}

/// Gradients. DDP with gradient_as_bucket_view=True: one bucket copy per trainable parameter in
/// its own dtype, allocated at wrap time (measured: 2.47 GiB for ALOHA), no second .grad copy.
/// FSDP1 use_orig_params: the gradient of a flat parameter is allocated whole as soon as one of
/// its parameters trains; with LoRA in every Llama layer, ViT block and the root, that is every
/// flat parameter, frozen base included -- sharded 1/world.
/// FSDP2 (the addition): per-parameter sharding allocates gradients only for parameters that
/// train, sharded 1/world (measured: static memory = weights / world, no gradient storage).
pub fn gradients(components: &[Component], cfg: &Config) -> u64 {
    match (cfg.strategy, cfg.fsdp) {
        (Strategy::Ddp, _) => param_bytes(components, true),
        (Strategy::Fsdp, FsdpVersion::Fsdp1) => weights(components, cfg),
        (Strategy::Fsdp, FsdpVersion::Fsdp2) => {
            param_bytes(components, true).div_ceil(u64::from(cfg.world_size.max(1)))
        }
    }
}

/// torch AdamW: exp_avg + exp_avg_sq in the parameter's own dtype (bf16 params get bf16 states,
/// not fp32 as the seed assumed), for trainable parameters only, created at the first step.
/// FSDP: states follow the sharded original parameters, 1/world.
pub fn optimizer(components: &[Component], cfg: &Config) -> u64 {
    let states = 2 * param_bytes(components, true);
    match cfg.strategy {
        Strategy::Ddp => states,
        Strategy::Fsdp => states.div_ceil(u64::from(cfg.world_size.max(1))),
    }
}

/// Activation memory of one sample, by part (bytes), as autograd saves it under bf16 autocast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationBreakdown {
    /// Tensors saved inside the Llama decoder layers (all 32, or one recomputed layer when checkpointed).
    pub llm_layers: u64,
    /// The 33 hidden states kept by output_hidden_states=True (also the checkpointed layer inputs).
    pub hidden_states: u64,
    /// Final norm, bf16 logits, fp32 upcast and log-softmax of the full-vocabulary cross-entropy.
    pub logits_loss: u64,
    /// Both ViTs for every image (never checkpointed).
    pub vision: u64,
    pub projector: u64,
    pub action_head: u64,
}

impl ActivationBreakdown {
    pub fn total(&self) -> u64 {
        self.llm_layers
            + self.hidden_states
            + self.logits_loss
            + self.vision
            + self.projector
            + self.action_head
    }
}

/// Bytes autograd keeps per token in one Llama decoder layer (bf16 autocast, sdpa attention).
/// RMSNorm keeps its fp32 upcast input (4h) twice per layer; q/k/v share their bf16 input (2h);
/// RoPE'd q, k and v are saved by sdpa (6h) with its output (2h) and the contiguous copy o_proj
/// saves (2h); gate/up share their input (2h); SiLU input, SiLU output, up output and the product
/// down_proj saves (4 x 2I); LoRA adds its rank-r A outputs (7 x 2r). Total 22h + 8I + 14r.
pub fn llama_layer_bytes_per_token(arch: &Arch, lora_rank: u64) -> u64 {
    let (h, i) = (arch.llm.hidden, arch.llm.mlp);
    22 * h + 8 * i + 14 * lora_rank
}

/// Bytes per token per Llama decoder layer that a padded micro-batch keeps beyond an unpadded one:
/// three bf16 tensors of the hidden size, the size of q, k and v (with a padding mask the fork's
/// LlamaSdpaAttention makes contiguous copies of q, k and v before SDPA, transformers 4.40's
/// workaround for torch 2.1's memory-efficient kernel: the likely source, not traced). Measured on
/// the real code (1x H100, docs/validation.md section 19), padded minus fixed-instruction batches,
/// allocated peak: 3.34 GiB at ALOHA batch 4 (this term: 3.33 GiB) and 4.15 GiB at LIBERO batch 8
/// (3.48 GiB, plus the longer padded instructions' own activations). With checkpointing only the
/// recomputed layer holds it.
pub fn masked_attention_bytes_per_token(arch: &Arch) -> u64 {
    3 * 2 * arch.llm.hidden
}

/// Bytes per token per Llama decoder layer of the K and V that the model returns and DDP clones,
/// when checkpointing is off. PrismaticForConditionalGeneration passes `use_cache and not
/// self.training` (= None) to the fork's LlamaModel, so `config.use_cache` (True) applies unless
/// gradient checkpointing turns it off; the output then holds every layer's K and V (bf16, 2h
/// each), and DDP with `find_unused_parameters=True` (upstream's `wrap_ddp(vla, ..., True)`)
/// clones each tensor of the output at the end of the forward (`_DDPSink`), which is where the
/// peak is. Seen in the allocator trace of the real code (docs/validation.md section 17): 64
/// clones of exactly 2h bytes per token at ALOHA batch 1 (570 MiB), none with checkpointing.
pub fn kv_clone_bytes_per_token(arch: &Arch) -> u64 {
    2 * 2 * arch.llm.hidden
}

/// Bytes autograd keeps per token in one timm ViT block under autocast. LayerNorm runs in fp32
/// there: its fp32 input is saved (2 x 4d) and its fp32 output is cast to bf16 separately for the
/// base Linear and for the LoRA A Linear (qkv and fc1: 2 x 2 x 2d). qkv output (6d, q/k/v for
/// sdpa), sdpa output (2d), proj input (2d), fc1 output and GELU output (2 x 2m), LoRA A outputs
/// (4 x 2r), and with FiLM the pre-modulation residual (2d).
pub fn vit_block_bytes_per_token(dim: u64, mlp: u64, film: bool, lora_rank: u64) -> u64 {
    let film = if film { 2 * dim } else { 0 };
    8 * dim + 8 * dim + 6 * dim + 4 * dim + 4 * mlp + 8 * lora_rank + film
}

/// Activations of one sample. Checkpointed: the Llama layers keep only their inputs (which are
/// the retained hidden states) plus one layer recomputed during backward; ViTs are not checkpointed.
/// The ViTs run up to the second-to-last block (OpenVLA takes that block's output).
/// `ddp_output_clones`: DDP clones the returned K/V (`kv_clone_bytes_per_token`); FSDP has no such
/// hook on the output.
pub fn activations_per_sample(
    spec: &ModelSpec,
    arch: &Arch,
    checkpointing: bool,
    ddp_output_clones: bool,
) -> ActivationBreakdown {
    let r = u64::from(spec.lora_rank);
    let s = u64::from(model::sequence_tokens(spec));
    let images = u64::from(spec.num_images);
    let (h, v) = (arch.llm.hidden, arch.llm.vocab);
    let masked = if spec.padded_batches {
        masked_attention_bytes_per_token(arch)
    } else {
        0
    };
    let layer = (llama_layer_bytes_per_token(arch, r) + masked) * s;
    let kv_clones = if ddp_output_clones {
        kv_clone_bytes_per_token(arch) * s
    } else {
        0
    };
    let llm_layers = if checkpointing {
        layer
    } else {
        arch.llm.layers * (layer + kv_clones)
    };
    let hidden_states = (arch.llm.layers + 1) * 2 * h * s;
    // Final RMSNorm (fp32 input 4h + bf16 output 2h); logits bf16 2V, fp32 copy 4V, log-softmax 4V.
    let logits_loss = (6 * h + 10 * v) * s;
    let vit = |vit: &model::VitShape| {
        let blocks = vit.depth - 1;
        blocks * vit.tokens() * vit_block_bytes_per_token(vit.dim, vit.mlp, spec.use_film, r)
            + vit.tokens() * 2 * vit.dim // patch embedding output
    };
    let vision = images * (vit(&arch.dino) + vit(&arch.siglip));
    // Fused input 2F, fc1 out + GELU out 2 x 2(4F), fc2 out + GELU out 2 x 2h.
    let f = arch.fused_vision_dim();
    let projector = images * u64::from(arch.patches_per_image) * (2 * f + 16 * f + 4 * h);
    // MLPResNet on chunk rows of h*A: LN in/out 2 x 2hA, three (LN in, LN out, ReLU out) at 2h each.
    let a = u64::from(spec.action_dim);
    let action_head = u64::from(spec.action_chunk) * (4 * h * a + 18 * h);
    ActivationBreakdown {
        llm_layers,
        hidden_states,
        logits_loss,
        vision,
        projector,
        action_head,
    }
}

/// bf16 copies autocast caches of fp32 trainable leaf weights used inside the autocast region
/// (FiLM, proprio projector, noisy-action projector, fp32 LoRA). Alive until the forward ends:
/// measured as the ~0.87 GiB batch-independent part of ALOHA's activation peak.
pub fn autocast_weight_cache(components: &[Component]) -> u64 {
    components
        .iter()
        .filter(|c| c.trainable && c.dtype == Dtype::Fp32)
        .map(|c| c.params * Dtype::Bf16.bytes())
        .sum()
}

/// Per-GPU activations: batch x per-sample. FSDP2 (the addition) peaks in the backward, once the
/// loss and the logits are freed, so its samples count without `logits_loss`: measured at 2 GPUs
/// with checkpointing, the allocated peak grew by 2.22 GiB per sample from batch 2 to 4 and from 4
/// to 8, against 2.21 GiB modelled without the logits and 2.58 with them (docs/budget-model.md).
pub fn activations(spec: &ModelSpec, arch: &Arch, cfg: &Config) -> u64 {
    let ddp = cfg.strategy == Strategy::Ddp;
    let sample = activations_per_sample(spec, arch, cfg.checkpointing, ddp);
    let per_sample = match (cfg.strategy, cfg.fsdp) {
        (Strategy::Fsdp, FsdpVersion::Fsdp2) => sample.total() - sample.logits_loss,
        _ => sample.total(),
    };
    u64::from(cfg.batch_size) * per_sample
}

/// Temporaries of the foreach AdamW step: one tensor list as large as the biggest dtype group
/// of trainable parameters (the sqrt(exp_avg_sq) denominators). Sharded under FSDP.
pub fn optimizer_step_temporaries(components: &[Component], cfg: &Config) -> u64 {
    let group = |d: Dtype| {
        components
            .iter()
            .filter(|c| c.trainable && c.dtype == d)
            .map(|c| c.params * d.bytes())
            .sum::<u64>()
    };
    let largest = group(Dtype::Bf16).max(group(Dtype::Fp32));
    match cfg.strategy {
        Strategy::Ddp => largest,
        Strategy::Fsdp => largest.div_ceil(u64::from(cfg.world_size.max(1))),
    }
}

/// Transients above weights + gradients + optimizer + activations at the peak moment: the
/// peak is the larger of (end of forward: activations + autocast cache) and (optimizer step:
/// activations freed, step temporaries), so this term is max(cache, step - activations).
pub fn transients(components: &[Component], cfg: &Config, activations: u64) -> u64 {
    let cache = autocast_weight_cache(components);
    let step = optimizer_step_temporaries(components, cfg);
    cache.max(step.saturating_sub(activations))
}

/// FSDP working memory (0 under DDP). FSDP2 (the addition): see `fsdp::fsdp2_working`. FSDP1:
/// parameters outside any auto-wrap unit stay unsharded from the forward to the end of the backward (roots are not resharded after forward): the VLA
/// root (embeddings, lm_head, ViT stems, projector and their LoRA), the action head and proprio
/// projector roots; each root's whole unsharded gradient also exists before its reduce-scatter
/// (frozen members included, use_orig_params); plus, with limit_all_gathers, two all-gathered
/// decoder layers in flight and one unsharded layer gradient.
pub fn fsdp_working(spec: &ModelSpec, arch: &Arch, components: &[Component], cfg: &Config) -> u64 {
    match (cfg.strategy, cfg.fsdp) {
        (Strategy::Ddp, _) => 0,
        (Strategy::Fsdp, FsdpVersion::Fsdp1) => fsdp::fsdp1_working(spec, arch, components),
        (Strategy::Fsdp, FsdpVersion::Fsdp2) => {
            fsdp::fsdp2_working(spec, arch, components, cfg.world_size).total()
        }
    }
}

/// The budget model's revision: raised whenever a change moves its predictions, so that a calibration
/// (observed against predicted peaks) corrects only the model it was measured against. 0: before
/// revisions existed; 1: padded batches' masked attention (issue 24).
pub const MODEL_REVISION: u32 = 1;

/// Fitted allocator constants (see docs/budget-model.md for the fit).
pub mod fitted {
    use crate::units::MIB;
    /// DDP, default allocator: slack = autocast cache + FIXED + FRAC x activations. Least squares
    /// over the five DDP default-allocator calibration rows (residuals <= 0.14 GiB).
    pub const DDP_DEFAULT_FIXED: u64 = 100 * MIB;
    pub const DDP_DEFAULT_FRAC: f64 = 0.084;
    /// FSDP, default allocator: slack = FRAC x the unsharded weights, independent of world size
    /// (measured ALOHA batch 2 with checkpointing: 14.29 GiB at 2 GPUs, 16.62 GiB at 4 GPUs).
    pub const FSDP_DEFAULT_FULL_WEIGHTS_FRAC: f64 = 0.936;
    /// expandable_segments keeps this share of the default allocator's slack (DDP: 0.39 of
    /// 1.32 GiB; FSDP: 8.02 of 14.29 GiB at 2 GPUs, 9.66 of 16.62 GiB at 4 GPUs).
    pub const DDP_EXPANDABLE_SHARE: f64 = 0.27;
    pub const FSDP_EXPANDABLE_SHARE: f64 = 0.57;
    /// Memory outside torch's allocator that appears once training runs (cuBLAS/cuBLASLt
    /// workspaces, lazily loaded kernel modules incl. sdpa): nvml - reserved - context on H100.
    pub const RUNTIME_BEYOND_CONTEXT: u64 = 790 * MIB;
    /// NCCL communicator buffers per rank once a process group has peers (world 2 on H100).
    pub const NCCL_BUFFERS: u64 = 287 * MIB;
}

/// The parts of a budget the allocator's slack depends on.
#[derive(Debug, Clone, Copy)]
pub struct SlackInputs {
    pub autocast_cache: u64,
    pub activations: u64,
    /// All parameters unsharded, in their dtypes.
    pub full_weights: u64,
}

/// Reserved-but-unallocated memory of the caching allocator at the peak (torch's peak reserved
/// minus peak allocated). DDP, default allocator: the autocast weight cache is freed at the end
/// of the forward and its blocks stay reserved while backward asks for other sizes, plus a
/// fixed part and a share of the activations that cannot be coalesced. FSDP1 is far worse and
/// does not shrink with more GPUs: all-gathers (unshard stream) and reduce-scatters (post-backward
/// stream) allocate from their own per-stream pools, which the compute stream cannot reuse, and
/// the full-size blocks freed when the model was flattened and sharded stay cached; we model it
/// as a fitted fraction of the unsharded weights. expandable_segments keeps a fraction of either.
/// FSDP2 (the addition) measured far less (0.31 GiB at 4 GPUs): DDP's fixed part and activation
/// share, without its autocast-cache part.
pub fn allocator_slack(cfg: &Config, x: SlackInputs) -> u64 {
    let ddp_like = (x.autocast_cache + fitted::DDP_DEFAULT_FIXED) as f64
        + fitted::DDP_DEFAULT_FRAC * x.activations as f64;
    let default = match (cfg.strategy, cfg.fsdp) {
        (Strategy::Ddp, _) => ddp_like,
        (Strategy::Fsdp, FsdpVersion::Fsdp1) => {
            fitted::FSDP_DEFAULT_FULL_WEIGHTS_FRAC * x.full_weights as f64
        }
        // FSDP2: DDP's fixed part and activation share, without the autocast-cache part (the
        // measured slack at 4 GPUs, 0.31 GiB, is below even that; see docs/budget-model.md).
        (Strategy::Fsdp, FsdpVersion::Fsdp2) => {
            fitted::DDP_DEFAULT_FIXED as f64 + fitted::DDP_DEFAULT_FRAC * x.activations as f64
        }
    };
    // FSDP2's slack is modelled as DDP's without the autocast cache, and so is its share under
    // expandable_segments: measured at 4 GPUs (fsdp-v5, the launcher's 4x RTX 4090 plan) the slack
    // was 0.003 GiB, below DDP's share of the 0.53 GiB default-allocator figure (0.14 GiB).
    let share = match (cfg.allocator, cfg.strategy, cfg.fsdp) {
        (Allocator::Default, _, _) => 1.0,
        (Allocator::ExpandableSegments, Strategy::Ddp, _)
        | (Allocator::ExpandableSegments, Strategy::Fsdp, FsdpVersion::Fsdp2) => {
            fitted::DDP_EXPANDABLE_SHARE
        }
        (Allocator::ExpandableSegments, Strategy::Fsdp, FsdpVersion::Fsdp1) => {
            fitted::FSDP_EXPANDABLE_SHARE
        }
    };
    (default * share).round() as u64
}

/// CUDA context as nvidia-smi shows it before the model loads, by GPU family. H100 measured
/// (~1.0 GiB); the others are typical figures for their driver/architecture (not measured
/// here). Unknown GPUs get the H100 figure, the largest, so the model errs on the safe side.
pub fn cuda_context(gpu_name: &str) -> u64 {
    let name = gpu_name.to_ascii_lowercase();
    let table: [(&[&str], u64); 3] = [
        (
            &["h100", "h200", "h800", "h20", "gh200", "b200", "b100"],
            1024 * MIB,
        ),
        (
            &[
                "a100", "a800", "a6000", "a40", "a10", "l40", "l4", "a5000", "a4000",
            ],
            800 * MIB,
        ),
        (
            &["4090", "4080", "3090", "3080", "titan", "2080"],
            700 * MIB,
        ),
    ];
    table
        .iter()
        .find(|(keys, _)| keys.iter().any(|k| name.contains(k)))
        .map_or(1024 * MIB, |&(_, bytes)| bytes)
}

/// Per-rank memory outside torch's allocator: CUDA context + runtime workspaces/modules +
/// NCCL buffers when the job has more than one rank. nproc_per_node is accepted for NCCL's
/// intra-node buffers; one measurement (world 2) exists, so the NCCL figure is flat in it.
pub fn gpu_context_overhead(gpu_name: &str, world_size: u32, nproc_per_node: u32) -> u64 {
    let _ = nproc_per_node;
    let nccl = if world_size > 1 {
        fitted::NCCL_BUFFERS
    } else {
        0
    };
    cuda_context(gpu_name) + fitted::RUNTIME_BEYOND_CONTEXT + nccl
}

/// Predicted per-GPU peak, by term. Errors only for a spec the model does not describe.
/// Batches below this one do not lower an FSDP rank's peak any further.
pub const FSDP_FLOOR_BATCH: u32 = 2;

/// FSDP's peak barely falls below batch 2: on 4 H100s capped at 24564 MiB, ALOHA FSDP with
/// checkpointing allocated 18.9-19.1 GiB at batch 1 and 20.0-20.2 GiB at batch 2 (docs/validation.md,
/// v2 cap runs), a difference of ~1.1 GiB where a sample's activations are ~2.6 GiB: at small
/// batches the batch-independent backward phase (unsharded root gradients, gathered units) sets the
/// peak. Modelled as a phase that needs as much as 2 checkpointed samples' activations: the
/// shortfall of this configuration's activations below that is counted with FSDP's working
/// memory (without it batch 1 was predicted 2.5 GiB too low). Zero for DDP, for batches >= 2, and
/// without checkpointing (one sample's full activations already exceed it). Zero for FSDP2 too: on
/// 2 H200s (fsdp-v8) its batch 1 with checkpointing held 1.55 GiB less than batch 2, within the
/// model's bound without a floor (docs/budget-model.md, "FSDP2").
pub fn fsdp_small_batch_floor(spec: &ModelSpec, arch: &Arch, cfg: &Config) -> u64 {
    if cfg.strategy != Strategy::Fsdp
        || cfg.fsdp != FsdpVersion::Fsdp1
        || cfg.batch_size >= FSDP_FLOOR_BATCH
    {
        return 0;
    }
    let at_floor = Config {
        batch_size: FSDP_FLOOR_BATCH,
        checkpointing: true,
        ..cfg.clone()
    };
    activations(spec, arch, &at_floor).saturating_sub(activations(spec, arch, cfg))
}

pub fn predict(spec: &ModelSpec, cfg: &Config) -> Result<Budget, ModelError> {
    let arch = model::validate(spec)?;
    let components = model::components(spec)?;
    let weights = weights(&components, cfg);
    let gradients = gradients(&components, cfg);
    let optimizer = optimizer(&components, cfg);
    let activations = activations(spec, arch, cfg);
    let floor = fsdp_small_batch_floor(spec, arch, cfg);
    let fsdp_working = fsdp_working(spec, arch, &components, cfg) + floor;
    let transients = transients(&components, cfg, activations);
    let allocator_slack = allocator_slack(
        cfg,
        SlackInputs {
            autocast_cache: autocast_weight_cache(&components),
            // Below the FSDP floor batch the slack follows the floor's phase, as the peak does.
            activations: activations + floor,
            full_weights: param_bytes(&components, false),
        },
    );
    let overhead = gpu_context_overhead(&cfg.gpu_name, cfg.world_size, cfg.nproc_per_node);
    Ok(Budget {
        weights,
        gradients,
        optimizer,
        activations,
        fsdp_working,
        transients,
        allocator_slack,
        overhead,
    })
}

impl Budget {
    /// What nvidia-smi shows for one rank at its peak: the sum of the terms.
    pub fn peak(&self) -> u64 {
        // Saturating: a budget read back from a record is input, and may hold anything.
        self.terms().iter().fold(0u64, |a, t| a.saturating_add(t.2))
    }

    /// Bytes torch allocates at the peak (nvidia-smi minus slack and overhead).
    pub fn allocated(&self) -> u64 {
        self.peak()
            .saturating_sub(self.allocator_slack)
            .saturating_sub(self.overhead)
    }

    /// (json key, label, bytes) for every term, in display order.
    pub fn terms(&self) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            ("weights", "weights", self.weights),
            ("gradients", "gradients", self.gradients),
            ("optimizer", "AdamW states", self.optimizer),
            ("activations", "activations", self.activations),
            ("fsdp_working", "FSDP gathered units", self.fsdp_working),
            ("transients", "transients", self.transients),
            ("allocator_slack", "allocator slack", self.allocator_slack),
            ("overhead", "CUDA/NCCL overhead", self.overhead),
        ]
    }
}

/// Host memory per node (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRam {
    /// While training: every rank's process plus its RLDS shuffle buffer.
    pub steady_bytes: u64,
    /// At model load: every rank materialises the bf16 checkpoint on the CPU before moving it.
    pub load_peak_bytes: u64,
    /// At a checkpoint save: with merge_lora_during_training every rank (upstream; rank 0 only under
    /// the FSDP addition) loads another full bf16 base model on the CPU to merge LoRA into it
    /// (openvla-oft issues 20 and 28).
    pub checkpoint_peak_bytes: u64,
}

/// Assumed host memory of one training process without the model: Python, torch, CUDA host
/// state, TensorFlow/RLDS dataloader threads. Not measured here; a round, conservative figure.
pub const HOST_PROCESS_BASE: u64 = 6 * GIB;
/// Assumed bytes per frame in the RLDS shuffle buffer (encoded JPEGs + state) per image.
pub const SHUFFLE_BYTES_PER_IMAGE: u64 = 24 * 1024;
/// finetune.py's default --shuffle_buffer_size.
pub const SHUFFLE_BUFFER_FRAMES: u64 = 100_000;

/// Which of a node's ranks load a bf16 base model on the CPU to merge LoRA at a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOn {
    /// `merge_lora_during_training` False.
    Nowhere,
    /// Upstream's `save_training_checkpoint` (DDP; the FSDP addition with `--use_fsdp False`; a
    /// fork's FSDP, assumed like upstream): every rank.
    EveryRank,
    /// The FSDP addition with `--use_fsdp True` (scripts/finetune_fsdp.py): the saving rank only.
    RankZero,
}

/// Host RAM per node for `nproc_per_node` ranks. Call with a spec `predict` accepted: an invalid
/// spec has no components, so only the per-process terms are counted.
pub fn host_ram(spec: &ModelSpec, nproc_per_node: u32, merge: MergeOn) -> HostRam {
    let ranks = u64::from(nproc_per_node.max(1));
    let components = model::components(spec).unwrap_or_default();
    let base_bf16: u64 = components
        .iter()
        .filter(|c| !c.trainable)
        .map(|c| c.params * Dtype::Bf16.bytes())
        .sum();
    let trainable = param_bytes(&components, true);
    let lora: u64 = components
        .iter()
        .filter(|c| c.name.starts_with("lora-"))
        .map(|c| c.params * c.dtype.bytes())
        .sum();
    let per_rank = HOST_PROCESS_BASE
        + SHUFFLE_BUFFER_FRAMES * u64::from(spec.num_images) * SHUFFLE_BYTES_PER_IMAGE;
    let steady = ranks * per_rank;
    // Saving: rank 0 copies the trainable state dicts; merging loads a bf16 base model and the
    // saved adapters on every rank (upstream), or on the saving rank only (the FSDP addition).
    let merge = match merge {
        MergeOn::Nowhere => 0,
        MergeOn::EveryRank => ranks * (base_bf16 + lora),
        MergeOn::RankZero => base_bf16 + lora,
    };
    HostRam {
        steady_bytes: steady,
        load_peak_bytes: steady + ranks * base_bf16,
        checkpoint_peak_bytes: steady + trainable + merge,
    }
}
