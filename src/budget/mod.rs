//! Bytes per named term for one configuration. Pure.
//! OWNER: budget helper. The types below are the agreed interface.

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
