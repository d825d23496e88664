//! Step-time estimate per candidate. Pure.
//!
//! Fitted to the REAL OpenVLA-OFT code (upstream's finetune.py through the launcher with random
//! weights, `scripts/real-steptime.sh`, docs/performance.md "Step time"): 12 DDP configurations on
//! one H100 80GB HBM3 (ALOHA, LIBERO and BRIDGE shapes, batch 1-16, with and without checkpointing,
//! 20 steps each, the LIBERO plan's near tie run three times; tests/it/speed.rs), minimising worst +
//! mean relative error over a grid of the constants below while the measured order of each 1-GPU
//! plan's top three holds: worst 7.1%, mean 3.4%. (The constants of the stand-in probe were 11-19%
//! low for ALOHA's large micro-batches and up to 41% high for BRIDGE on the real code; the first
//! real-code fit ranked LIBERO's b16 with checkpointing 4% ahead of b8 x2 without, which measured 7%
//! faster.) What the numbers say: a micro-batch has a fixed cost of ~0.2 s per input image (every
//! image runs both ViTs, 51 LoRA'd blocks, launch-bound at these sizes), so small micro-batches are
//! inefficient; the per-sample work reaches ~64% of the GPU's dense bf16 peak, plus an attention
//! cost growing with the square of the Llama's sequence (ALOHA's 1144 tokens: 0.037 s a sample,
//! LIBERO's 594: 0.010 s); checkpointing's recomputed Llama forward takes twice the time its FLOPs
//! would at that rate (the recompute runs the memory-bound parts too: norms, rotary embeddings,
//! LoRA's dropout and casts). DDP's exposed gradient synchronisation is ~0.15 s per micro-batch on
//! 2 GPUs, FSDP1's communication and bookkeeping ~1.4 s (all-gathers and reduce-scatters of every
//! unit, forward, recompute and backward).

use crate::budget::{FsdpVersion, Strategy};
use crate::model::ModelSpec;

/// Dense bf16 tensor TFLOP/s of the GPU the calibration was measured on (H100 SXM).
pub const REFERENCE_TFLOPS: f64 = 989.0;

/// Fixed cost of one micro-batch on the reference GPU: a base plus one part per input image
/// (each image runs both ViTs): ALOHA (3 images) 0.60 s, LIBERO (2 images) 0.40 s, BRIDGE 0.20 s.
const MICRO_FIXED_BASE_S: f64 = 0.0;
const MICRO_FIXED_PER_IMAGE_S: f64 = 0.20;

/// The fraction of the GPU's dense bf16 peak that the per-sample work reaches: one ALOHA sample
/// (1144 tokens, 3.35e13 training FLOPs) costs 0.053 s of it on the reference GPU.
const EFFECTIVE_FRACTION_OF_PEAK: f64 = 0.64;

/// Attention beyond its FLOP count, per sample, on the reference GPU: this many seconds times the
/// square of the Llama's sequence length (ALOHA 1144 tokens: 0.037 s; LIBERO 594: 0.010 s).
const ATTENTION_S_PER_TOKEN_SQUARED: f64 = 2.8e-8;

/// Checkpointing's recomputed forward takes this many times the time its FLOPs take at
/// [`EFFECTIVE_FRACTION_OF_PEAK`] (LIBERO b8 x2: 1.70 s with checkpointing against 1.39 s without).
const RECOMPUTE_TIME_FACTOR: f64 = 2.0;

/// Exposed DDP gradient synchronisation per micro-batch on 2 GPUs of one node, for the ALOHA
/// gradients (2.65 GB); scaled by gradient bytes and by the ring factor 2(w-1)/w.
const DDP_SYNC_S_AT_2: f64 = 0.15;
const DDP_SYNC_REFERENCE_BYTES: f64 = 2.65e9;

/// FSDP1 communication and bookkeeping per micro-batch on 2 GPUs, scaled by the ring factor and
/// by the frozen + trainable weights that are gathered (ALOHA: 17.74 GB).
const FSDP_PER_MICRO_S_AT_2: f64 = 1.40;
const FSDP_REFERENCE_WEIGHT_BYTES: f64 = 17.74e9;

/// FSDP2 (the addition): time per micro-batch on top of DDP's, on the reference GPU, one node.
/// It does not grow with the batch: on 2 H200s (the launcher's runs, fsdp-v6/v7/v8) FSDP2's
/// micro-batch took 1.0-1.4 s longer than the DDP model's at batch 1 to 8, with and without
/// checkpointing, and about as much at 4 GPUs (fsdp-v5): per-unit all-gathers (and re-gathers
/// for the recompute), reduce-scatters and the hooks of 188 units, whose sizes do not depend on
/// the batch. Scaled with the GPU like the launch-bound fixed part. Chosen to minimise the worst
/// relative error over those 10 runs while the two FSDP2/DDP ratios measured on one machine stay
/// within 5% (tests/it/speed.rs): runs within 13.2% (batch 1 x 2, whose micro-batches were 10%
/// faster than the same micro-batch in the batch 1 x 8 run), mean 4.9%.
pub const FSDP2_PER_MICRO_S: f64 = 1.17;

/// Crossing nodes over the network instead of NVLink: not measured here; an assumption.
const INTER_NODE_SLOWDOWN: f64 = 4.0;

/// AdamW step over the trainable parameters, once per optimizer step.
const OPTIMIZER_STEP_S: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeedInput {
    pub strategy: Strategy,
    pub checkpointing: bool,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub world_size: u32,
    pub nnodes: u32,
    /// Dense bf16 TFLOP/s of the slowest chosen GPU.
    pub gpu_tflops: f64,
    /// Training FLOPs of one sample, forward and backward, without checkpointing's recompute.
    pub flops_per_sample: f64,
    /// The FLOPs checkpointing recomputes per sample (0 without checkpointing).
    pub recompute_flops_per_sample: f64,
    pub gradient_bytes: u64,
    pub weight_bytes: u64,
    /// Which FSDP runs (ignored under DDP).
    pub fsdp: FsdpVersion,
}

/// Estimated seconds per optimizer step, split into its parts for `--explain`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepTime {
    pub compute_s: f64,
    pub fixed_s: f64,
    pub communication_s: f64,
    pub optimizer_s: f64,
}

impl StepTime {
    pub fn total(&self) -> f64 {
        self.compute_s + self.fixed_s + self.communication_s + self.optimizer_s
    }
}

pub fn step_time(spec: &ModelSpec, s: &SpeedInput) -> StepTime {
    let speed = s.gpu_tflops.max(1.0) / REFERENCE_TFLOPS;
    // The fixed part is partly launch-bound (CPU), so it shrinks less than linearly on faster GPUs.
    let fixed =
        (MICRO_FIXED_BASE_S + MICRO_FIXED_PER_IMAGE_S * spec.num_images as f64) / speed.sqrt();
    let tokens = f64::from(crate::model::sequence_tokens(spec));
    let attention = ATTENTION_S_PER_TOKEN_SQUARED * tokens * tokens / speed;
    let recompute = if s.checkpointing {
        RECOMPUTE_TIME_FACTOR * s.recompute_flops_per_sample
    } else {
        0.0
    };
    let per_sample = (s.flops_per_sample + recompute)
        / (s.gpu_tflops.max(1.0) * 1e12 * EFFECTIVE_FRACTION_OF_PEAK)
        + attention;
    let ring = if s.world_size > 1 {
        2.0 * (s.world_size - 1) as f64 / s.world_size as f64
    } else {
        0.0
    };
    let network = if s.nnodes > 1 {
        INTER_NODE_SLOWDOWN
    } else {
        1.0
    };
    let ddp_sync =
        DDP_SYNC_S_AT_2 * (s.gradient_bytes as f64 / DDP_SYNC_REFERENCE_BYTES) * ring * network;
    let sync_per_micro = match (s.strategy, s.fsdp) {
        (Strategy::Ddp, _) => ddp_sync,
        (Strategy::Fsdp, FsdpVersion::Fsdp2) => {
            ddp_sync + FSDP2_PER_MICRO_S / speed.sqrt() * network
        }
        (Strategy::Fsdp, FsdpVersion::Fsdp1) => {
            FSDP_PER_MICRO_S_AT_2
                * (s.weight_bytes as f64 / FSDP_REFERENCE_WEIGHT_BYTES)
                * ring
                * network
        }
    };
    let a = s.grad_accum as f64;
    StepTime {
        compute_s: a * per_sample * s.batch_size as f64,
        fixed_s: a * fixed,
        communication_s: a * sync_per_micro,
        optimizer_s: OPTIMIZER_STEP_S,
    }
}

/// How far the estimate may be off, as a fraction of it, where the model has been measured
/// against the real code; `None` where it has not (nodes over a network).
/// - DDP on one GPU: within 7.1% of 12 real-code configurations on an H100, whose own
///   step-to-step spread is 3-5% (standard deviation): 10%.
/// - FSDP2 on one node: within 13.2% of the launcher's 10 runs on 2 and 4 H200s: 15%.
/// - DDP on several GPUs of one node: its gradient synchronisation term was measured with the
///   stand-in probe only, which the real code is up to 20% slower than: 25%.
pub fn relative_error(strategy: Strategy, world_size: u32, nnodes: u32) -> Option<f64> {
    match (nnodes > 1, strategy, world_size) {
        (true, _, _) => None,
        (false, Strategy::Ddp, 1) => Some(0.10),
        (false, Strategy::Fsdp, _) => Some(0.15),
        (false, Strategy::Ddp, _) => Some(0.25),
    }
}
