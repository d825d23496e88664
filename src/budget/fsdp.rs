//! FSDP working memory: the all-gathered units and unsharded roots, FSDP1 (a fork's
//! --use_fsdp) and FSDP2 (vla-launch's addition): the parts that follow from the model's units.
//! Pure; the budget module combines them with a configuration.

use serde::{Deserialize, Serialize};

use crate::model::{self, Arch, Component, ModelSpec};

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
    /// (activations, transients): fitted, see `budget::fitted::FSDP2_RESIDUAL_WORKING`.
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

/// The parts that follow from the model's units (residual 0: `budget::fsdp2_working` adds it).
pub fn fsdp2_parts(spec: &ModelSpec, arch: &Arch, components: &[Component]) -> Fsdp2Working {
    let r = u64::from(spec.lora_rank);
    let lora = spec.lora_dtype.bytes();
    let layer = 2 * arch.llm.layer_params() + lora * arch.llm.layer_lora(r);
    let largest = head_unit_bytes(components)
        .into_iter()
        .fold(layer, u64::max);
    Fsdp2Working {
        root_unsharded: vla_root_bytes(spec, arch),
        gathered_units: 2 * largest,
        residual: 0,
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
