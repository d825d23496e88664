//! Merging LoRA into the base model at each checkpoint: which ranks do it for the chosen
//! configuration, the host RAM that takes, and turning it off where the node has too little.

use crate::budget::{self, FsdpVersion, HostRam, Strategy};
use crate::units::fmt_gib;

use super::types::{Candidate, PlanInput};

/// The host RAM the plan needs with `best` (when the node's RAM is known), and the script flags
/// that turn the checkpoint merge off where it would not fit, each with its reason.
pub(super) fn host_ram_and_merge(
    input: &PlanInput,
    best: Option<&Candidate>,
    reasons: &mut Vec<String>,
) -> (Option<HostRam>, Vec<(String, String)>) {
    let policy = &input.policy;
    // Who merges LoRA at a checkpoint depends on the chosen configuration: the FSDP addition
    // (FSDP2, or FSDP1 on an older torch) merges on the saving rank, upstream's save (DDP, a
    // fork's FSDP) on every rank.
    let merge_on = match best {
        _ if !input.merge_lora_during_training => budget::MergeOn::Nowhere,
        Some(c)
            if c.strategy == Strategy::Fsdp
                && (policy.fsdp == FsdpVersion::Fsdp2 || policy.fsdp_by_addition) =>
        {
            budget::MergeOn::RankZero
        }
        _ => budget::MergeOn::EveryRank,
    };
    let host_ram = input.host_ram_bytes.map(|_| {
        let nproc = best.map(|c| c.nproc_per_node).unwrap_or(1);
        budget::host_ram(input.spec, nproc, merge_on)
    });
    let merging_ranks = match merge_on {
        budget::MergeOn::RankZero => "on the saving rank",
        _ => "on every rank",
    };
    let mut extra_flags = Vec::new();
    if let (Some(ram), Some(h)) = (input.host_ram_bytes, &host_ram)
        && input.merge_lora_during_training
        && h.checkpoint_peak_bytes > ram
    {
        extra_flags.push(("--merge_lora_during_training".into(), "False".into()));
        reasons.push(format!(
            "--merge_lora_during_training False: merging LoRA at each checkpoint loads a full bf16 base model {merging_ranks}, {} of host RAM at save time, more than this node's {}; merge offline after training with OpenVLA-OFT's vla-scripts/merge_lora_weights_and_save.py",
            fmt_gib(h.checkpoint_peak_bytes),
            fmt_gib(ram)
        ));
    }
    (host_ram, extra_flags)
}
