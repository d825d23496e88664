//! One GPU as the launcher sees it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_bytes: Option<u64>,
    pub name: Option<String>,
}

/// One GPU as the training processes will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Position in the CUDA order the launcher will hand to torchrun (0..n).
    pub index: u32,
    pub name: String,
    /// "GPU-..." (or "MIG-..."); described GPUs get a synthetic "described-N".
    pub uuid: String,
    pub pci_bus_id: Option<String>,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub compute_capability: Option<(u32, u32)>,
    pub processes: Vec<GpuProcess>,
    /// True when built from `--gpus`, not queried.
    pub described: bool,
}
