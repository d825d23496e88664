//! Live VRAM monitor: while training runs, sample each planned GPU's used memory (NVML, what
//! nvidia-smi shows) and keep its peak, for the final summary and the run record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

/// One reading of a GPU's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// What nvidia-smi prints as used.
    pub used: u64,
    /// NVML total - free: `used` plus the driver's reservation; the budget model predicts this.
    pub total_minus_free: u64,
}

/// Reads the memory of a set of GPUs; `None` for a GPU that could not be read this time.
pub trait MemorySampler: Send {
    fn sample(&mut self) -> Vec<Option<Reading>>;
}

/// NVML by UUID (never by index: NVML and CUDA orders can differ).
pub struct NvmlSampler {
    nvml: nvml_wrapper::Nvml,
    uuids: Vec<String>,
}

impl NvmlSampler {
    pub fn new(uuids: Vec<String>) -> Result<Self, nvml_wrapper::error::NvmlError> {
        Ok(NvmlSampler {
            nvml: nvml_wrapper::Nvml::init()?,
            uuids,
        })
    }
}

impl MemorySampler for NvmlSampler {
    fn sample(&mut self) -> Vec<Option<Reading>> {
        self.uuids
            .iter()
            .map(|u| {
                self.nvml
                    .device_by_uuid(u.as_str())
                    .and_then(|d| d.memory_info())
                    .ok()
                    .map(|m| Reading {
                        used: m.used,
                        total_minus_free: m.total.saturating_sub(m.free),
                    })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    /// Peak used bytes per GPU as nvidia-smi shows them, in the order the sampler was given.
    pub peak_used_bytes: Vec<Option<u64>>,
    /// Peak NVML total - free per GPU (what the budget model predicts).
    pub peak_total_minus_free_bytes: Vec<Option<u64>>,
    /// Used bytes per GPU at the first sample (before training had allocated much).
    pub baseline_used_bytes: Vec<Option<u64>>,
    pub samples: u64,
}

fn max_into(peaks: &mut Vec<Option<u64>>, now: impl Iterator<Item = Option<u64>>) {
    for (i, now) in now.enumerate() {
        if i >= peaks.len() {
            peaks.push(now);
            continue;
        }
        peaks[i] = match (peaks[i], now) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

impl Peaks {
    fn update(&mut self, sample: &[Option<Reading>]) {
        if self.samples == 0 {
            self.baseline_used_bytes = sample.iter().map(|r| r.map(|r| r.used)).collect();
        }
        max_into(
            &mut self.peak_used_bytes,
            sample.iter().map(|r| r.map(|r| r.used)),
        );
        max_into(
            &mut self.peak_total_minus_free_bytes,
            sample.iter().map(|r| r.map(|r| r.total_minus_free)),
        );
        self.samples += 1;
    }
}

/// A sampling thread; `stop` ends it and returns the peaks.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Peaks>,
}

impl Monitor {
    pub fn start(mut sampler: Box<dyn MemorySampler>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("vram-monitor".into())
            .spawn(move || {
                let mut peaks = Peaks::default();
                loop {
                    peaks.update(&sampler.sample());
                    if flag.load(Ordering::Relaxed) {
                        return peaks;
                    }
                    std::thread::park_timeout(every);
                }
            })
            .expect("spawn the VRAM monitor thread");
        Monitor { stop, handle }
    }

    pub fn stop(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Vec<Vec<Option<u64>>>, usize);

    fn reading(used: u64) -> Reading {
        Reading {
            used,
            total_minus_free: used + 100,
        }
    }

    impl MemorySampler for Scripted {
        fn sample(&mut self) -> Vec<Option<Reading>> {
            let s = self.0[self.1.min(self.0.len() - 1)].clone();
            self.1 += 1;
            s.into_iter().map(|u| u.map(reading)).collect()
        }
    }

    #[test]
    fn keeps_the_peak_of_each_gpu_and_survives_unreadable_samples() {
        let mut p = Peaks::default();
        for s in [
            vec![Some(1), Some(5)],
            vec![Some(7), None],
            vec![Some(3), Some(6)],
            vec![None, Some(2)],
        ] {
            p.update(&s.into_iter().map(|u| u.map(reading)).collect::<Vec<_>>());
        }
        assert_eq!(p.peak_used_bytes, vec![Some(7), Some(6)]);
        assert_eq!(p.peak_total_minus_free_bytes, vec![Some(107), Some(106)]);
        assert_eq!(p.baseline_used_bytes, vec![Some(1), Some(5)]);
        assert_eq!(p.samples, 4);
    }

    #[test]
    fn thread_samples_until_stopped() {
        let m = Monitor::start(
            Box::new(Scripted(
                vec![vec![Some(1)], vec![Some(9)], vec![Some(4)]],
                0,
            )),
            Duration::from_millis(1),
        );
        std::thread::sleep(Duration::from_millis(50));
        let p = m.stop();
        assert!(p.samples >= 3, "{}", p.samples);
        assert_eq!(p.peak_used_bytes, vec![Some(9)]);
    }
}
