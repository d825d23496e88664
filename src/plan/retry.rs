//! The OOM re-plan policy: after a run dies of CUDA out-of-memory, plan again with the observed
//! peak as evidence, or stop. Pure.
//!
//! Rules (docs/calibration.md):
//! - never loop: `attempt` retries already made >= `max_retries` stops;
//! - never change the global batch, the GPUs or the node count: only how each rank gets there
//!   (micro-batch x accumulation, checkpointing, DDP/FSDP);
//! - evidence: the run needed at least max(observed peak, the free memory it started with) where
//!   the model predicted `failed.required_bytes` (the memory the fit uses); every candidate's prediction is scaled by that
//!   overshoot (done by shrinking usable memory by the same factor), so the failed configuration
//!   no longer fits and the retry is strictly below its prediction;
//! - the user's strategy/checkpointing pins are kept when something fits with them, released
//!   otherwise; multi-node runs stop (every node would have to agree on the new plan).

use crate::gpu::Gpu;
use crate::units::fmt_gib;

use super::search::plan;
use super::types::{Candidate, Pins, Plan, PlanInput, margin_bytes, usable};

#[derive(Debug, Clone, PartialEq)]
pub enum RetryDecision {
    /// Do not relaunch; `reason` is one sentence for the user.
    Stop { reason: String },
    /// Relaunch with `plan.chosen`; `message` says what changed and why.
    Retry { plan: Box<Plan>, message: String },
}

/// Decides whether and how to relaunch after a CUDA OOM of `failed` (planned from `input`).
/// `attempt` is the number of retries already made (0 after the first launch failed).
pub fn replan_after_oom(
    input: &PlanInput,
    failed: &Candidate,
    observed_peak_bytes: Option<u64>,
    attempt: u32,
    max_retries: u32,
) -> RetryDecision {
    let stop = |reason: String| RetryDecision::Stop { reason };
    if attempt >= max_retries {
        return stop(format!(
            "CUDA out of memory again after {attempt} re-plan{}: not retrying (--oom-retries {max_retries}); lower --batch-size or turn --checkpointing on",
            if attempt == 1 { "" } else { "s" }
        ));
    }
    if failed.nnodes > 1 || input.nnodes > 1 {
        return stop(format!(
            "CUDA out of memory in a {}-node run: not re-planned automatically, every node would have to agree on the new plan; relaunch all nodes with --batch-size {} --grad-accum {} or --checkpointing on",
            failed.nnodes.max(input.nnodes),
            (failed.batch_size / 2).max(1),
            failed.grad_accumulation_steps * 2
        ));
    }
    let gpus: Vec<&Gpu> = input
        .gpus
        .iter()
        .filter(|g| failed.gpu_indices.contains(&g.index))
        .collect();
    if gpus.len() != failed.gpu_indices.len() || failed.required_bytes == 0 {
        return stop(format!(
            "cannot re-plan: the failed run's GPUs {:?} are not all among the GPUs planned for",
            failed.gpu_indices
        ));
    }
    let min_free = gpus.iter().map(|g| g.free_bytes).min().unwrap_or(0);
    let need = observed_peak_bytes.unwrap_or(0).max(min_free);
    let factor = (need as f64 / failed.required_bytes as f64).max(1.0);
    let shrunk = shrunk_gpus(&gpus, input, factor, failed.required_bytes);
    let mut policy = input.policy.clone();
    policy.min_global_batch = failed.global_batch;
    policy.exact_global_batch = true;

    let failure = Failure {
        failed,
        factor,
        evidence: match observed_peak_bytes {
            Some(o) if o >= min_free => format!("observed {}", fmt_gib(o)),
            _ => format!(
                "it needed more than the {} free when it started",
                fmt_gib(min_free)
            ),
        },
        attempt,
        max_retries,
    };
    let mut last_reason = String::new();
    for (pins, released) in pin_tiers(input, failed.nproc_per_node) {
        let inp = PlanInput {
            spec: input.spec,
            gpus: &shrunk,
            nnodes: input.nnodes,
            policy: policy.clone(),
            pins,
            host_ram_bytes: input.host_ram_bytes,
            merge_lora_during_training: input.merge_lora_during_training,
            calibration: input.calibration,
        };
        let p = match plan(&inp) {
            Ok(p) => p,
            Err(e) => return stop(format!("cannot re-plan after CUDA out of memory: {e}")),
        };
        let Some(c) = p.chosen.as_ref().filter(|_| p.feasible) else {
            // The planner's own reason quotes the shrunk usable memory: confusing here.
            continue;
        };
        if let Some(why_not) = not_a_retry(c, failed) {
            last_reason = why_not;
            continue;
        }
        let usable_now = gpus
            .iter()
            .map(|g| usable(g, &input.policy))
            .min()
            .unwrap_or(0);
        let message = failure.retry_message(c, usable_now, released);
        return RetryDecision::Retry {
            plan: Box::new(p),
            message,
        };
    }
    stop(failure.no_fit_message(&last_reason))
}

/// The failed run's GPUs with their usable memory divided by `factor` (the same test as the
/// planner's with every prediction scaled: peak x factor <= usable <=> peak <= usable / factor),
/// and strictly below the failed run's requirement.
fn shrunk_gpus(gpus: &[&Gpu], input: &PlanInput, factor: f64, failed_required: u64) -> Vec<Gpu> {
    gpus.iter()
        .map(|g| {
            let u = ((usable(g, &input.policy) as f64 / factor).floor() as u64)
                .min(failed_required.saturating_sub(1));
            Gpu {
                free_bytes: margin_bytes(g, &input.policy) + u,
                ..(*g).clone()
            }
        })
        .collect()
}

/// The pins to try in order, each with whether it released the user's: first the user's
/// strategy/checkpointing choice, then none; the process count always stays.
fn pin_tiers(input: &PlanInput, nproc_per_node: u32) -> Vec<(Pins, bool)> {
    let nproc = Some(nproc_per_node);
    let keep_user = Pins {
        strategy: input.pins.strategy,
        checkpointing: input.pins.checkpointing,
        nproc,
        ..Pins::default()
    };
    let release = Pins {
        nproc,
        ..Pins::default()
    };
    let mut tiers = vec![(keep_user.clone(), false)];
    if keep_user != release {
        tiers.push((release, true));
    }
    tiers
}

/// Why the re-planned candidate `c` is no retry of `failed` (another global batch or process
/// count, or no smaller), or `None` when it is one.
fn not_a_retry(c: &Candidate, failed: &Candidate) -> Option<String> {
    if c.global_batch != failed.global_batch {
        Some(format!(
            "the closest, {}, would change the global batch to {}",
            c.label(),
            c.global_batch
        ))
    } else if c.nproc_per_node != failed.nproc_per_node || c.required_bytes >= failed.required_bytes
    {
        Some(format!("the closest, {}, is not smaller", c.label()))
    } else {
        None
    }
}

/// The failed run and what it showed, for the messages.
struct Failure<'a> {
    failed: &'a Candidate,
    /// How far the run went above its prediction (1.0: not above).
    factor: f64,
    /// What showed it, in words ("observed 71.2 GiB").
    evidence: String,
    attempt: u32,
    max_retries: u32,
}

impl Failure<'_> {
    fn overshoot(&self) -> bool {
        self.factor > 1.0005
    }

    /// What the retry with `c` changes and why.
    fn retry_message(&self, c: &Candidate, usable_now: u64, released: bool) -> String {
        let (failed, factor, evidence) = (self.failed, self.factor, &self.evidence);
        let why = if self.overshoot() {
            format!(
                "{evidence}: {:.0}% above the prediction",
                (factor - 1.0) * 100.0
            )
        } else {
            "the prediction already exceeded the usable memory".to_string()
        };
        let scaled = if self.overshoot() {
            format!(
                " ({} with the same overshoot)",
                fmt_gib((c.predicted_peak_bytes as f64 * factor) as u64)
            )
        } else {
            String::new()
        };
        format!(
            "CUDA out of memory with {} (predicted {}; {why}): retry {} of {} with {}, predicted {}{scaled} of {} usable{}; global batch {} unchanged",
            failed.label(),
            fmt_gib(failed.predicted_peak_bytes),
            self.attempt + 1,
            self.max_retries,
            c.label(),
            fmt_gib(c.predicted_peak_bytes),
            fmt_gib(usable_now),
            if released {
                "; your --strategy/--checkpointing choice was released, nothing safer fits with it"
            } else {
                ""
            },
            failed.global_batch
        )
    }

    /// Why nothing fits; `last_reason` is why the closest candidate was no retry, if one was.
    fn no_fit_message(&self, last_reason: &str) -> String {
        let (failed, evidence) = (self.failed, &self.evidence);
        let (why, fits) = if self.overshoot() {
            (
                format!(
                    "{evidence}, {:.0}% above the prediction",
                    (self.factor - 1.0) * 100.0
                ),
                "fits with that overshoot",
            )
        } else {
            (
                format!(
                    "{evidence}; the prediction, {}, already exceeded the usable memory",
                    fmt_gib(failed.predicted_peak_bytes)
                ),
                "fits",
            )
        };
        format!(
            "CUDA out of memory with {} ({why}) and no configuration of global batch {} on {} {fits}{}; use more GPUs or lower --global-batch",
            failed.label(),
            failed.global_batch,
            if failed.nproc_per_node == 1 {
                "this GPU".to_string()
            } else {
                format!("these {} GPUs", failed.nproc_per_node)
            },
            if last_reason.is_empty() {
                String::new()
            } else {
                format!(" ({last_reason})")
            }
        )
    }
}
