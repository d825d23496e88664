//! The hang watchdog: a run that prints nothing while its GPUs stay idle is stuck (a dead NCCL
//! peer, a deadlocked data loader). Pure: the VRAM monitor feeds it samples and the clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A detected hang: no output and idle GPUs for at least the watchdog's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hang {
    /// Time since the last output line of any rank.
    pub silent_for: Duration,
    /// The rank whose last output is oldest (the likeliest to be stuck), when lines carry ranks.
    pub quietest_rank: Option<u32>,
    /// Ranks (local, = index into the sampled GPUs) whose GPUs were idle.
    pub idle_ranks: Vec<u32>,
    pub summary: String,
}

/// Hang detection as a pure state machine: the supervisor feeds it output and GPU-utilisation
/// samples with the time since start, and asks `check` now and then. A hang is reported once,
/// when no rank has printed and every sampled GPU stayed at or below `idle_percent` for
/// `threshold`; any output or GPU activity re-arms it. Both conditions are required: a long
/// step or checkpoint save is silent but keeps GPUs busy. The RLDS shuffle-buffer fill at start
/// is silent and idle too, so the threshold must exceed it (or feed samples only after the
/// first progress line).
#[derive(Debug, Clone)]
pub struct HangWatchdog {
    threshold: Duration,
    idle_percent: u32,
    last_output: Duration,
    /// Last time each rank (index) printed.
    rank_output: Vec<Option<Duration>>,
    /// Start of the current streak of all-idle samples.
    idle_since: Option<Duration>,
    last_idle_ranks: Vec<u32>,
    reported: bool,
}

impl HangWatchdog {
    /// `threshold` e.g. 10 minutes; `idle_percent` e.g. 2 (NVML utilisation).
    pub fn new(threshold: Duration, idle_percent: u32) -> Self {
        HangWatchdog {
            threshold,
            idle_percent,
            last_output: Duration::ZERO,
            rank_output: Vec::new(),
            idle_since: None,
            last_idle_ranks: Vec::new(),
            reported: false,
        }
    }

    /// A line of output arrived at `now`, from `rank` when its prefix said so.
    pub fn on_output(&mut self, now: Duration, rank: Option<u32>) {
        self.last_output = self.last_output.max(now);
        if let Some(r) = rank {
            let r = r as usize;
            if self.rank_output.len() <= r {
                self.rank_output.resize(r + 1, None);
            }
            self.rank_output[r] = Some(now);
        }
        self.reported = false;
    }

    /// Utilisation (percent) of each planned GPU, index = local rank, sampled at `now`.
    pub fn on_gpu_sample(&mut self, now: Duration, utilisation: &[u32]) {
        let idle: Vec<u32> = (0u32..)
            .zip(utilisation)
            .filter(|&(_, &u)| u <= self.idle_percent)
            .map(|(i, _)| i)
            .collect();
        if !utilisation.is_empty() && idle.len() == utilisation.len() {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
            self.reported = false;
        }
        self.last_idle_ranks = idle;
    }

    /// Some(hang) the first time the conditions hold; None otherwise (and after reporting,
    /// until output or GPU activity resumes).
    pub fn check(&mut self, now: Duration) -> Option<Hang> {
        let idle_since = self.idle_since?;
        let quiet_since = idle_since.max(self.last_output);
        if self.reported || now.saturating_sub(quiet_since) < self.threshold {
            return None;
        }
        self.reported = true;
        let quietest_rank = (0u32..)
            .zip(&self.rank_output)
            .min_by_key(|&(_, t)| t.unwrap_or(Duration::ZERO))
            .map(|(r, _)| r);
        let silent_for = now.saturating_sub(self.last_output);
        let minutes = silent_for.as_secs() / 60;
        let summary = match quietest_rank {
            Some(r) => format!(
                "The training looks hung: no output for {minutes} min and every GPU idle; rank {r} has been silent longest."
            ),
            None => {
                format!("The training looks hung: no output for {minutes} min and every GPU idle.")
            }
        };
        Some(Hang {
            silent_for,
            quietest_rank,
            idle_ranks: self.last_idle_ranks.clone(),
            summary,
        })
    }
}
