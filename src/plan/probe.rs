//! The probe runs of `vla-launch calibrate`: which configurations to run so that their observed
//! peaks teach the calibration store the most. Pure: it asks the planner, runs nothing.

use crate::budget::Strategy;
use crate::calibration::Key;
use crate::gpu::Gpu;

use super::search::plan;
use super::types::{Candidate, Pins, PlanError, PlanInput};

/// Batch sizes `calibrate` probes stay under this fraction of usable memory, so a model that
/// under-predicts by up to 10% still completes the probe instead of dying of OOM.
pub const PROBE_HEADROOM: f64 = 0.9;

/// One probe run of `vla-launch calibrate`: launch with these pins (grad accumulation 1, the
/// minimum global batch ignored), a few steps, then feed its run record to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRun {
    pub pins: Pins,
    pub key: Key,
    /// Uncorrected prediction for this configuration.
    pub predicted_peak_bytes: u64,
}

/// The probe runs for these GPUs: for every (strategy, checkpointing) mode the planner considers,
/// on the planner's GPU count (pins.nproc, else all), two batch sizes: the largest predicted under
/// `PROBE_HEADROOM` x usable, and a quarter of it (for spread; the fit interpolates between them).
/// One run where both would be batch 1; none for a mode where batch 1 does not fit. Pure.
pub fn probe_runs(input: &PlanInput, profile: &str) -> Result<Vec<ProbeRun>, PlanError> {
    let p = &input.policy;
    let nproc = input.pins.nproc.unwrap_or(input.gpus.len() as u32);
    let mut strategies: Vec<Strategy> = match input.pins.strategy {
        Some(s) => vec![s],
        None => p.strategies.clone(),
    };
    strategies.sort();
    strategies.dedup();
    strategies
        .retain(|s| *s == Strategy::Ddp || (p.script_accepts_fsdp && nproc * input.nnodes > 1));
    let ckpts: Vec<bool> = match input.pins.checkpointing {
        Some(c) => vec![c],
        None if p.script_accepts_checkpointing => vec![false, true],
        None => vec![false],
    };
    let mut policy = p.clone();
    policy.min_global_batch = 1;
    policy.exact_global_batch = false;
    let mut runs = Vec::new();
    for &strategy in &strategies {
        for &ckpt in &ckpts {
            let pins_at = |b: u32| Pins {
                strategy: Some(strategy),
                batch_size: Some(b),
                grad_accum: Some(1),
                checkpointing: Some(ckpt),
                nproc: Some(nproc),
            };
            let mut fitting: Vec<(u32, Candidate)> = Vec::new();
            for b in 1..=p.max_batch_size.max(1) {
                let inp = PlanInput {
                    policy: policy.clone(),
                    pins: pins_at(b),
                    // Probes are chosen on the model's own predictions, not corrected ones.
                    calibration: None,
                    ..input.clone()
                };
                let Some(c) = plan(&inp)?.chosen else { break };
                if c.predicted_peak_bytes as f64 > PROBE_HEADROOM * c.usable_bytes as f64 {
                    break;
                }
                fitting.push((b, c));
            }
            let Some(hi) = fitting.last().map(|(b, _)| *b) else {
                continue;
            };
            let mut batches = vec![(hi / 4).max(1), hi];
            batches.dedup();
            for b in batches {
                let c = &fitting[b as usize - 1].1;
                runs.push(ProbeRun {
                    pins: pins_at(b),
                    key: Key::new(
                        &limiting_gpu_name(input.gpus, &c.gpu_indices),
                        profile,
                        strategy,
                        ckpt,
                        c.world_size(),
                    )
                    .with_fsdp(policy.fsdp),
                    predicted_peak_bytes: c.predicted_peak_bytes,
                });
            }
        }
    }
    Ok(runs)
}

/// The name of the GPU with the least free memory among `indices` (the one the plan fits to).
fn limiting_gpu_name(gpus: &[Gpu], indices: &[u32]) -> String {
    gpus.iter()
        .filter(|g| indices.contains(&g.index))
        .min_by_key(|g| g.free_bytes)
        .map(|g| g.name.clone())
        .unwrap_or_default()
}
