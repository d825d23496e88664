//! Live VRAM monitor: while training runs, sample each planned GPU's used memory (NVML, what
//! nvidia-smi shows) and keep its peak, for the final summary and the run record. The same thread
//! runs the hang watchdog: the run log growing is "output", NVML utilisation is "GPU activity".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::launch::hang::HangWatchdog;

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
    /// GPU utilisation in percent, one per GPU; empty when unknown.
    fn utilisation(&mut self) -> Vec<u32> {
        Vec::new()
    }
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

    fn utilisation(&mut self) -> Vec<u32> {
        let rates: Option<Vec<u32>> = self
            .uuids
            .iter()
            .map(|u| {
                self.nvml
                    .device_by_uuid(u.as_str())
                    .and_then(|d| d.utilization_rates())
                    .ok()
                    .map(|r| r.gpu)
            })
            .collect();
        rates.unwrap_or_default()
    }
}

/// The hang watchdog's inputs: the run log (its growth is output) and when to speak up.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub log_path: std::path::PathBuf,
    pub threshold: Duration,
    /// NVML utilisation at or below this is idle.
    pub idle_percent: u32,
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
    /// What the hang watchdog said, each time it spoke.
    pub hangs: Vec<String>,
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
    current: Arc<std::sync::atomic::AtomicU64>,
}

impl Monitor {
    pub fn start(
        mut sampler: Box<dyn MemorySampler>,
        every: Duration,
        watchdog: Option<WatchdogConfig>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let current = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let now_used = current.clone();
        let handle = std::thread::Builder::new()
            .name("vram-monitor".into())
            .spawn(move || {
                let mut peaks = Peaks::default();
                let started = std::time::Instant::now();
                let mut dog = watchdog
                    .as_ref()
                    .map(|w| HangWatchdog::new(w.threshold, w.idle_percent));
                let mut log_len = 0;
                loop {
                    let sample = sampler.sample();
                    let used = sample.iter().flatten().map(|r| r.used).max().unwrap_or(0);
                    now_used.store(used, Ordering::Relaxed);
                    peaks.update(&sample);
                    if let (Some(dog), Some(w)) = (dog.as_mut(), watchdog.as_ref()) {
                        let now = started.elapsed();
                        let len = std::fs::metadata(&w.log_path).map(|m| m.len()).unwrap_or(0);
                        if len != log_len {
                            log_len = len;
                            dog.on_output(now, None);
                        }
                        dog.on_gpu_sample(now, &sampler.utilisation());
                        if let Some(hang) = dog.check(now) {
                            tracing::warn!("{} Check the log ({}); py-spy dump --pid <worker> shows where it waits.", hang.summary, w.log_path.display());
                            peaks.hangs.push(hang.summary);
                        }
                    }
                    if flag.load(Ordering::Relaxed) {
                        return peaks;
                    }
                    std::thread::park_timeout(every);
                }
            })
            .expect("spawn the VRAM monitor thread");
        Monitor {
            stop,
            handle,
            current,
        }
    }

    /// The largest memory in use on one of the GPUs at the latest sample (0 before the first).
    pub fn current(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.current.clone()
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

    /// A sampler that tells the test when it has been called `n` times: the tests wait on that
    /// event, not on the clock (a busy machine may not run the thread for a while).
    struct Counted<S>(S, u64, u64, Option<std::sync::mpsc::Sender<()>>);

    impl<S: MemorySampler> MemorySampler for Counted<S> {
        fn sample(&mut self) -> Vec<Option<Reading>> {
            self.1 += 1;
            if self.1 >= self.2
                && let Some(tx) = self.3.take()
            {
                let _ = tx.send(());
            }
            self.0.sample()
        }
        fn utilisation(&mut self) -> Vec<u32> {
            self.0.utilisation()
        }
    }

    #[test]
    fn thread_samples_until_stopped() {
        let (tx, rx) = std::sync::mpsc::channel();
        let m = Monitor::start(
            Box::new(Counted(
                Scripted(vec![vec![Some(1)], vec![Some(9)], vec![Some(4)]], 0),
                0,
                3,
                Some(tx),
            )),
            Duration::from_millis(1),
            None,
        );
        rx.recv_timeout(Duration::from_secs(120))
            .expect("three samples");
        let p = m.stop();
        assert!(p.samples >= 3, "{}", p.samples);
        assert_eq!(p.peak_used_bytes, vec![Some(9)]);
        assert!(p.hangs.is_empty());
    }

    /// GPUs at `util` percent; with `grow`, the log grows before every sample (output that flows
    /// however the threads are scheduled); `until` is told once `after` has passed since the start.
    struct Idle {
        util: u32,
        grow: Option<std::path::PathBuf>,
        started: std::time::Instant,
        after: Duration,
        until: Option<std::sync::mpsc::Sender<()>>,
    }

    impl MemorySampler for Idle {
        fn sample(&mut self) -> Vec<Option<Reading>> {
            if let Some(log) = &self.grow {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                f.write_all(b"x").unwrap();
            }
            if self.started.elapsed() >= self.after
                && let Some(tx) = self.until.take()
            {
                let _ = tx.send(());
            }
            vec![Some(reading(1))]
        }
        fn utilisation(&mut self) -> Vec<u32> {
            vec![self.util]
        }
    }

    /// Runs the watchdog until its sampler has run 4 thresholds past the start (one threshold
    /// to speak up, three more in which it must not speak again).
    fn watch(util: u32, log: &std::path::Path, grow: bool) -> Peaks {
        let threshold = Duration::from_millis(150);
        let (tx, rx) = std::sync::mpsc::channel();
        let m = Monitor::start(
            Box::new(Idle {
                util,
                grow: grow.then(|| log.to_path_buf()),
                started: std::time::Instant::now(),
                after: threshold * 4,
                until: Some(tx),
            }),
            Duration::from_millis(2),
            Some(WatchdogConfig {
                log_path: log.to_path_buf(),
                threshold,
                idle_percent: 2,
            }),
        );
        rx.recv_timeout(Duration::from_secs(120))
            .expect("the sampler ran past 4 thresholds");
        m.stop()
    }

    #[test]
    fn watchdog_reports_a_silent_run_on_idle_gpus_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, "started\n").unwrap();
        let p = watch(0, &log, false);
        assert_eq!(p.hangs.len(), 1, "{:?}", p.hangs);
        assert!(p.hangs[0].contains("looks hung"), "{:?}", p.hangs);
    }

    #[test]
    fn watchdog_is_quiet_while_output_flows_or_gpus_work() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        std::fs::write(&log, "").unwrap();
        assert!(watch(0, &log, true).hangs.is_empty(), "output flowing");
        assert!(watch(95, &log, false).hangs.is_empty(), "GPUs busy");
    }
}
