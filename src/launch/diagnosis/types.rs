//! What a diagnosis is: its kind, its details, its sentence and hint.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisKind {
    CudaOom,
    HostOom,
    NcclTimeout,
    NcclError,
    MissingPath,
    UnknownFlag,
    ImportError,
    /// torchrun itself killed by SIGKILL, nothing in the log to say why.
    Killed,
}

/// What a CUDA out-of-memory message says; sizes in bytes as torch printed them (rounded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomDetails {
    pub tried_to_allocate_bytes: Option<u64>,
    /// The CUDA device index inside the worker (not the rank).
    pub gpu_index: Option<u32>,
    pub total_capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// torch >= 2.1: "this process has X memory in use" (everything, including non-PyTorch).
    pub process_in_use_bytes: Option<u64>,
    /// torch >= 2.1 "allocated by PyTorch"; torch 2.0 "already allocated".
    pub allocated_by_pytorch_bytes: Option<u64>,
    /// torch >= 2.1 "reserved by PyTorch but unallocated"; torch 2.0 reports only the total
    /// reserved, from which this is computed.
    pub reserved_unallocated_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Details {
    CudaOom(OomDetails),
    HostOom {
        exit_code: i32,
    },
    Nccl {
        op: Option<String>,
        seq: Option<u64>,
        timeout_ms: Option<u64>,
        message: String,
    },
    MissingPath {
        path: String,
    },
    UnknownFlags {
        flags: Vec<String>,
    },
    Import {
        module: String,
    },
    Killed {
        exit_code: i32,
        /// Processes the kernel's OOM killer killed on this host during the run, if known.
        oom_kills_during_run: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub kind: DiagnosisKind,
    /// Global rank for `[rankN]:` lines and torchrun's summary; local rank for `[defaultN]:`.
    pub rank: Option<u32>,
    /// One sentence: what went wrong.
    pub summary: String,
    /// What to do about it.
    pub hint: String,
    pub details: Details,
    /// The log line the diagnosis rests on (prefix removed).
    pub evidence: String,
}
