//! FSDP working memory: the all-gathered units and unsharded roots, FSDP1 (a fork's
//! --use_fsdp) and FSDP2 (vla-launch's addition): the parts that follow from the model's units,
//! and FSDP2's fitted residual.
//! Pure; the budget module combines them with a configuration.

use serde::{Deserialize, Serialize};

use crate::model::{self, Arch, Component, ModelSpec};
use crate::units::MIB;

/// FSDP2 (the addition), 3 GPUs and more: working memory the measurements need beyond the
/// unsharded root, two gathered units, the activations (without the logits), transients and
/// slack. The smallest multiple of 256 MiB for which the planner's requirement at 4 GPUs (peak
/// minus the reclaimable slack, either allocator) covers what the runs held, torch's allocated
/// peak plus the memory outside torch (16.09 + 2.18 GiB); ALOHA batch 2 with checkpointing
/// (docs/budget-model.md).
pub const FSDP2_RESIDUAL_WORKING: u64 = 3584 * MIB;
/// The same at 2 GPUs, where the part of the peak that is not sharded measured about 1 GiB
/// less than at 4 (NVML minus the sharded state: 11.08 vs 12.13 GiB with expandable_segments,
/// 11.97 vs 12.60 with the default allocator): the smallest multiple of 256 MiB for which the
/// 2-GPU batch-2 checkpointed peaks measured under the launcher's allocator setting
/// (expandable_segments; 22.79 and 23.04 GiB) are not predicted low.
pub const FSDP2_RESIDUAL_WORKING_2_GPUS: u64 = 2048 * MIB;

/// FSDP2 working memory by part (bytes), ALOHA figures in docs/budget-model.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fsdp2Working {
    /// The root unit (embeddings, lm_head, ViT stems and norms, projector, their LoRA): FSDP2
    /// keeps the root unsharded from its forward to the end of the backward.
    pub root_unsharded: u64,
    /// The largest unit all-gathered and the next one prefetched (default prefetch of one unit
    /// in forward and in backward): 2 x the largest unit.
    pub gathered_units: u64,
    /// Measured working set not accounted for by the two parts above or by the DDP-like terms
    /// (activations, transients): fitted, see `FSDP2_RESIDUAL_WORKING`.
    pub residual: u64,
}

impl Fsdp2Working {
    pub fn total(&self) -> u64 {
        self.root_unsharded + self.gathered_units + self.residual
    }
}

/// Parameter bytes of the VLA's root unit (everything outside the per-layer/per-block units).
fn vla_root_bytes(spec: &ModelSpec, arch: &Arch) -> u64 {
    let r = u64::from(spec.lora_rank);
    let lora = spec.lora_dtype.bytes();
    2 * (arch.llm.outer_params()
        + arch.dino.outer_params()
        + arch.siglip.outer_params()
        + arch.projector_params())
        + lora
            * (arch.llm.lm_head_lora(r)
                + arch.dino.outer_lora(r)
                + arch.siglip.outer_lora(r)
                + arch.projector_lora(r))
}

/// Parameter bytes of the head units (action head, noisy-action and proprio projectors), each
/// a unit of its own.
fn head_unit_bytes(components: &[Component]) -> Vec<u64> {
    components
        .iter()
        .filter(|c| {
            [
                model::names::ACTION_HEAD_L1,
                model::names::ACTION_HEAD_DIFFUSION,
                model::names::NOISY_ACTION_PROJECTOR,
                model::names::PROPRIO_PROJECTOR,
            ]
            .contains(&c.name.as_str())
        })
        .map(|c| c.params * c.dtype.bytes())
        .collect()
}

/// FSDP2 working memory (the addition) on `world_size` GPUs: the unsharded root and two gathered
/// units, which follow from the model's units, and the fitted residual, which depends on the world
/// size (measured at 2 and 4 GPUs; 3 and more take the 4-GPU figure) and not on the batch: at 2
/// GPUs, batch 1 to 8 with and without checkpointing grew by their activations and no more
/// (docs/budget-model.md).
pub fn fsdp2_working(
    spec: &ModelSpec,
    arch: &Arch,
    components: &[Component],
    world_size: u32,
) -> Fsdp2Working {
    let r = u64::from(spec.lora_rank);
    let lora = spec.lora_dtype.bytes();
    let layer = 2 * arch.llm.layer_params() + lora * arch.llm.layer_lora(r);
    let largest = head_unit_bytes(components)
        .into_iter()
        .fold(layer, u64::max);
    Fsdp2Working {
        root_unsharded: vla_root_bytes(spec, arch),
        gathered_units: 2 * largest,
        residual: if world_size <= 2 {
            FSDP2_RESIDUAL_WORKING_2_GPUS
        } else {
            FSDP2_RESIDUAL_WORKING
        },
    }
}

/// FSDP1 working memory, see `budget::fsdp_working`.
pub fn fsdp1_working(spec: &ModelSpec, arch: &Arch, components: &[Component]) -> u64 {
    let r = u64::from(spec.lora_rank);
    let lora = spec.lora_dtype.bytes();
    let head_roots: u64 = head_unit_bytes(components).into_iter().sum();
    let unit = 2 * arch.llm.layer_params() + lora * arch.llm.layer_lora(r);
    2 * vla_root_bytes(spec, arch) + 2 * head_roots + 3 * unit
}
