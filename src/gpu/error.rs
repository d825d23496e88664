//! What can go wrong finding the GPUs; each message says what to do.

use thiserror::Error;

use super::spec::SpecError;

/// The sentence the user sees on a machine without the NVIDIA driver (exit 4).
pub const NVML_UNAVAILABLE: &str =
    "NVML not found: no NVIDIA driver on this machine; use --gpus to plan for other GPUs";

#[derive(Debug, Error)]
pub enum GpuError {
    /// The reason (libloading's or NVML's words) is for `--verbose` logs, not the sentence.
    #[error("{NVML_UNAVAILABLE}")]
    NvmlUnavailable { reason: String },
    #[error("NVML could not start: {reason}; check the NVIDIA driver with nvidia-smi")]
    NvmlInit { reason: String },
    #[error(
        "NVML could not read the {what} of GPU {nvml_index} (nvidia-smi numbering): {message}; check the GPU with nvidia-smi"
    )]
    Query {
        what: &'static str,
        nvml_index: u32,
        message: String,
    },
    #[error("NVML sees no GPU on this machine; use --gpus to plan for other GPUs")]
    NoGpus,
    #[error(
        "CUDA_VISIBLE_DEVICES={value} leaves no GPU visible ({why}); unset it, or list GPUs by number (0,1) or UUID (GPU-...)"
    )]
    NoneVisible { value: String, why: String },
    #[error(
        "no visible GPU can train in bf16, which needs compute capability 8.0 (Ampere) or newer: {gpus}; use newer GPUs, or --gpus to plan for them"
    )]
    NoBf16 { gpus: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
}
