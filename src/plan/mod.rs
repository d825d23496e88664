//! The planner: the fastest configuration that fits every chosen GPU and reaches the global batch.
//! Pure: an exhaustive, deterministic search over GPU subsets x strategy x checkpointing x batch.
//!
//! Rules, in the order they apply:
//! 1. Only strategies and flags the script accepts (FSDP needs `--use_fsdp`, checkpointing needs
//!    `--gradient_checkpointing`); FSDP on a single rank shards nothing and is not considered.
//! 2. Fit: every rank's required memory <= usable = the smallest (free - margin) among the chosen
//!    GPUs, margin = max(fraction x total, minimum) (default 5% or 1 GiB). Required = the predicted
//!    peak less the allocator cache that PyTorch gives back under memory pressure (on a GPU too small
//!    for its cache, the caching allocator frees cached blocks and retries before it raises an OOM):
//!    all of it with expandable_segments, half of it with the default allocator (fragmented segments
//!    cannot all be freed). Measured: 4 H100s capped at 24564 MiB each ran ALOHA FSDP batch 1 and 2
//!    with checkpointing whose uncapped peaks are 27.4 and 30.0 GiB.
//! 3. Global batch = batch x GPUs x nodes x accumulation >= the minimum, with the least overshoot a
//!    world size allows: batch x accumulation = ceil(minimum / world). Never rounded down. A global
//!    batch the user asked for explicitly is honoured exactly when any fitting candidate can.
//!    In a multi-node job each node uses all its visible GPUs unless --nproc is pinned.
//! 4. Among what remains, the lowest predicted time per optimizer step wins: a run is `max_steps`
//!    optimizer steps whatever the global batch, so the step time is its wall-clock (a larger
//!    overshoot makes steps longer and loses). Ties go to DDP, no checkpointing, fewer accumulation
//!    steps, fewer GPUs.

pub mod explain;
mod merge;
pub mod probe;
mod reasons;
pub mod retry;
pub mod room;
mod search;
pub mod speed;
mod types;

pub use crate::budget::strategy_name;
pub use search::{plan, reclaimable_cache};
pub use types::{Alternative, Calibration, Candidate, Pins, Plan, PlanError, PlanInput, Policy};
