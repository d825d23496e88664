//! Calibration store: observed per-GPU peaks of real runs, keyed by what changes the model's error
//! (GPU model, profile, strategy, checkpointing, world size bucket), and the correction fitted
//! from them that the planner applies to its predictions.
//!
//! Pure except `default_path`'s caller-supplied environment lookup and `load`/`save`, the only
//! file I/O. The fitting and safety rule are documented in docs/calibration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::budget::{Allocator, FsdpVersion, Strategy, strategy_name};
use crate::units::fmt_gib;

/// Overrides the directory of the store (default `$XDG_CACHE_HOME/vla-launch` or `~/.cache/vla-launch`).
pub const ENV_CACHE_DIR: &str = "VLA_LAUNCH_CACHE_DIR";
pub const FILE_NAME: &str = "calibration.json";
/// Format version written in the file; a file with another version is refused, not misread.
pub const FORMAT_VERSION: u32 = 1;
/// Observations kept per key (the newest): bounds the file and lets old drivers/scripts age out.
pub const MAX_OBSERVATIONS_PER_KEY: usize = 32;
/// Bounds of the fitted slope: the budget model is within 10% on every measured row, so a slope
/// outside these says the observations are noisy (another tenant, a truncated run), not the model.
pub const SLOPE_MIN: f64 = 0.8;
pub const SLOPE_MAX: f64 = 1.3;
/// A correction never lowers a prediction by more than this fraction: a lower prediction makes
/// plans less safe, and 5% stays inside the planner's default margin (5% of total, >= 1 GiB).
pub const MAX_LOWERING: f64 = 0.05;
/// A correction never raises a prediction above this factor: one polluted observation must not
/// make every plan infeasible. Beyond any error the budget model showed on the measured table.
pub const MAX_RAISING: f64 = 1.5;

/// What an observation applies to. Per-rank memory depends on the world size only through FSDP
/// sharding and NCCL buffers (1 vs more ranks), so world sizes are bucketed by powers of two.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// As NVML reports it ("NVIDIA H100 80GB HBM3").
    pub gpu_name: String,
    pub profile: String,
    pub strategy: Strategy,
    pub checkpointing: bool,
    /// `world_bucket(world_size)`.
    pub world_bucket: u32,
    /// Which FSDP the prediction was for (`with_fsdp`; always FSDP1 under DDP). Stores written
    /// before FSDP2 existed have no such field: their predictions were FSDP1's.
    #[serde(default, skip_serializing_if = "is_fsdp1")]
    pub fsdp: FsdpVersion,
}

fn is_fsdp1(v: &FsdpVersion) -> bool {
    *v == FsdpVersion::Fsdp1
}

impl Key {
    pub fn new(
        gpu_name: &str,
        profile: &str,
        strategy: Strategy,
        checkpointing: bool,
        world_size: u32,
    ) -> Key {
        Key {
            gpu_name: gpu_name.to_string(),
            profile: profile.to_string(),
            strategy,
            checkpointing,
            world_bucket: world_bucket(world_size),
            fsdp: FsdpVersion::Fsdp1,
        }
    }

    /// The key for predictions of `fsdp` (FSDP1 and FSDP2 figures differ ~1.6x, so one's
    /// observations must not correct the other's). Ignored under DDP.
    pub fn with_fsdp(mut self, fsdp: FsdpVersion) -> Key {
        if self.strategy == Strategy::Fsdp {
            self.fsdp = fsdp;
        }
        self
    }

    /// "NVIDIA H100 80GB HBM3, aloha, DDP, no checkpointing, world 2".
    pub fn label(&self) -> String {
        format!(
            "{}, {}, {}, {}, world {}",
            self.gpu_name,
            self.profile,
            match (self.strategy, self.fsdp) {
                (Strategy::Fsdp, FsdpVersion::Fsdp2) => "FSDP2",
                (s, _) => strategy_name(s),
            },
            if self.checkpointing {
                "checkpointing"
            } else {
                "no checkpointing"
            },
            bucket_label(self.world_bucket)
        )
    }
}

/// 1 -> 1, 2 -> 2, 3..=4 -> 4, 5..=8 -> 8, ...: the smallest power of two >= the world size.
pub fn world_bucket(world_size: u32) -> u32 {
    world_size.max(1).next_power_of_two()
}

fn bucket_label(bucket: u32) -> String {
    if bucket <= 2 {
        bucket.to_string()
    } else {
        format!("{}-{}", bucket / 2 + 1, bucket)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `vla-launch calibrate` probe run.
    Calibrate,
    /// A normal training run that completed.
    Run,
}

/// One run's peak: the largest NVML used memory over its ranks, with what the model predicted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub batch_size: u32,
    /// The uncorrected budget-model peak for that configuration.
    pub predicted_peak_bytes: u64,
    /// Max over the run's GPUs of NVML used memory at its peak, less other processes' memory.
    pub observed_peak_bytes: u64,
    pub allocator: Allocator,
    pub timestamp_unix: u64,
    pub source: Source,
    /// The [`crate::budget::MODEL_REVISION`] that predicted it (0 in stores written before
    /// revisions existed). Only observations of the current revision correct a plan.
    #[serde(default)]
    pub model_revision: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Key,
    pub observations: Vec<Observation>,
}

/// The whole store, as written to `calibration.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub version: u32,
    /// Sorted by key, so the file is stable and diffable.
    pub entries: Vec<Entry>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            version: FORMAT_VERSION,
            entries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FitKind {
    /// observed = a x predicted + b, least squares over >= 2 distinct batch sizes.
    Linear,
    /// observed = a x predicted, from one batch size.
    Ratio,
}

/// The correction applied to one prediction, for `plan --explain` and the JSON plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorrectionInfo {
    pub key: Key,
    pub kind: FitKind,
    /// Slope after clamping to [SLOPE_MIN, SLOPE_MAX].
    pub slope: f64,
    pub intercept_bytes: f64,
    /// True when the raw least-squares slope or ratio was outside the allowed range.
    pub slope_clamped: bool,
    pub observations: usize,
    pub distinct_batch_sizes: usize,
    pub predicted_bytes: u64,
    /// a x predicted + b, before the safety bounds.
    pub fitted_bytes: u64,
    /// What the planner uses: the fitted value within [predicted x (1 - MAX_LOWERING),
    /// predicted x MAX_RAISING], and never lower than predicted from a single batch size.
    pub corrected_bytes: u64,
    /// Which safety bound applied, if any.
    pub bounded_by: Option<&'static str>,
}

impl CorrectionInfo {
    /// One line for `plan --explain`.
    pub fn describe(&self) -> String {
        let fit = match self.kind {
            FitKind::Linear => format!(
                "observed = {:.3} x predicted {} {}",
                self.slope,
                if self.intercept_bytes < 0.0 { "-" } else { "+" },
                fmt_gib(self.intercept_bytes.abs() as u64)
            ),
            FitKind::Ratio => format!("observed = {:.3} x predicted", self.slope),
        };
        let mut s = format!(
            "calibrated from {} run{} at {} batch size{} ({}): {fit}{}; {} -> {}",
            self.observations,
            if self.observations == 1 { "" } else { "s" },
            self.distinct_batch_sizes,
            if self.distinct_batch_sizes == 1 {
                ""
            } else {
                "s"
            },
            self.key.label(),
            if self.slope_clamped {
                " (slope clamped)"
            } else {
                ""
            },
            fmt_gib(self.predicted_bytes),
            fmt_gib(self.corrected_bytes),
        );
        if let Some(b) = self.bounded_by {
            s.push_str(&format!(" (fit {}, {b})", fmt_gib(self.fitted_bytes)));
        }
        s
    }
}

/// A fitted line before it is applied to a prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub kind: FitKind,
    pub slope: f64,
    pub intercept_bytes: f64,
    pub slope_clamped: bool,
    pub observations: usize,
    pub distinct_batch_sizes: usize,
}

/// Fits observed = a x predicted + b. With >= 2 distinct batch sizes (and distinct predictions):
/// least squares, then a clamped to [SLOPE_MIN, SLOPE_MAX] with b refitted so the line still goes
/// through the observations' mean. Otherwise a ratio sum(observed) / sum(predicted), clamped the
/// same way. `None` without observations.
pub fn fit(observations: &[Observation]) -> Option<Fit> {
    let usable: Vec<&Observation> = observations
        .iter()
        .filter(|o| o.predicted_peak_bytes > 0 && o.observed_peak_bytes > 0)
        .collect();
    if usable.is_empty() {
        return None;
    }
    let n = usable.len() as f64;
    let mut batches: Vec<u32> = usable.iter().map(|o| o.batch_size).collect();
    batches.sort();
    batches.dedup();
    let xs: Vec<f64> = usable
        .iter()
        .map(|o| o.predicted_peak_bytes as f64)
        .collect();
    let ys: Vec<f64> = usable
        .iter()
        .map(|o| o.observed_peak_bytes as f64)
        .collect();
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    // Predictions differing by less than 1 MiB RMS carry no slope information.
    let spread_ok = sxx / n > (1u64 << 20) as f64 * (1u64 << 20) as f64;
    let (kind, raw) = if batches.len() >= 2 && spread_ok {
        (FitKind::Linear, sxy / sxx)
    } else {
        (FitKind::Ratio, my / mx)
    };
    let slope = raw.clamp(SLOPE_MIN, SLOPE_MAX);
    let intercept_bytes = match kind {
        FitKind::Linear => my - slope * mx,
        FitKind::Ratio => 0.0,
    };
    Some(Fit {
        kind,
        slope,
        intercept_bytes,
        slope_clamped: slope != raw,
        observations: usable.len(),
        distinct_batch_sizes: batches.len(),
    })
}

/// Applies a fit to one prediction with the safety bounds of docs/calibration.md.
pub fn apply(fit: &Fit, key: &Key, predicted: u64) -> CorrectionInfo {
    let p = predicted as f64;
    let fitted = (fit.slope * p + fit.intercept_bytes).max(0.0);
    // One batch size cannot separate a fixed offset from a proportional one: only raise.
    let floor_factor = match fit.kind {
        FitKind::Ratio => 1.0,
        FitKind::Linear => 1.0 - MAX_LOWERING,
    };
    let floor = p * floor_factor;
    let ceil = p * MAX_RAISING;
    let (corrected, bounded_by) = if fitted < floor {
        (
            floor,
            Some(match fit.kind {
                FitKind::Ratio => "one batch size only raises predictions",
                FitKind::Linear => "never more than 5% below the model",
            }),
        )
    } else if fitted > ceil {
        (ceil, Some("never more than 1.5x the model"))
    } else {
        (fitted, None)
    };
    CorrectionInfo {
        key: key.clone(),
        kind: fit.kind,
        slope: fit.slope,
        intercept_bytes: fit.intercept_bytes,
        slope_clamped: fit.slope_clamped,
        observations: fit.observations,
        distinct_batch_sizes: fit.distinct_batch_sizes,
        predicted_bytes: predicted,
        fitted_bytes: fitted.round() as u64,
        corrected_bytes: corrected.round() as u64,
        bounded_by,
    }
}

impl Store {
    pub fn observations(&self, key: &Key) -> &[Observation] {
        self.entries
            .iter()
            .find(|e| &e.key == key)
            .map_or(&[], |e| e.observations.as_slice())
    }

    /// Adds an observation; keeps the newest `MAX_OBSERVATIONS_PER_KEY` of its key.
    pub fn add(&mut self, key: Key, observation: Observation) {
        let pos = match self.entries.binary_search_by(|e| e.key.cmp(&key)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(
                    i,
                    Entry {
                        key,
                        observations: Vec::new(),
                    },
                );
                i
            }
        };
        let obs = &mut self.entries[pos].observations;
        obs.push(observation);
        obs.sort_by_key(|o| o.timestamp_unix);
        if obs.len() > MAX_OBSERVATIONS_PER_KEY {
            let extra = obs.len() - MAX_OBSERVATIONS_PER_KEY;
            obs.drain(..extra);
        }
    }

    /// The fitted correction of a key, if it has observations made under the current budget
    /// model (older ones stay in the store, for `calibrate --show`, but correct nothing).
    pub fn fit(&self, key: &Key) -> Option<Fit> {
        let current: Vec<Observation> = self
            .observations(key)
            .iter()
            .filter(|o| o.model_revision == crate::budget::MODEL_REVISION)
            .cloned()
            .collect();
        fit(&current)
    }

    /// The prediction the planner should use, and how it was corrected (None: no observations).
    pub fn corrected_peak(&self, key: &Key, predicted: u64) -> (u64, Option<CorrectionInfo>) {
        match self.fit(key) {
            Some(f) => {
                let info = apply(&f, key, predicted);
                (info.corrected_bytes, Some(info))
            }
            None => (predicted, None),
        }
    }

    /// Removes one key; returns the number of observations removed.
    pub fn remove(&mut self, key: &Key) -> usize {
        self.remove_where(|k| k == key)
    }

    /// Removes every key the predicate selects (e.g. all of one profile); returns observations removed.
    pub fn remove_where(&mut self, mut select: impl FnMut(&Key) -> bool) -> usize {
        let mut removed = 0;
        self.entries.retain(|e| {
            let drop = select(&e.key);
            if drop {
                removed += e.observations.len();
            }
            !drop
        });
        removed
    }

    /// Removes everything; returns the number of observations removed.
    pub fn clear(&mut self) -> usize {
        self.remove_where(|_| true)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the store serialises") + "\n"
    }

    pub fn from_json(text: &str, origin: &Path) -> Result<Store, CalibrationError> {
        let store: Store = serde_json::from_str(text).map_err(|e| CalibrationError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        if store.version != FORMAT_VERSION {
            return Err(CalibrationError::Version {
                path: origin.to_path_buf(),
                found: store.version,
            });
        }
        Ok(store)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(
        "no cache directory: neither {ENV_CACHE_DIR}, XDG_CACHE_HOME nor HOME is set; set {ENV_CACHE_DIR}=DIR"
    )]
    NoCacheDir,
    #[error(
        "cannot read the calibration store {path}: {source}; fix its permissions or set {ENV_CACHE_DIR}"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the calibration store {path}: {source}; fix its permissions or set {ENV_CACHE_DIR}"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the calibration store {path} is not valid JSON ({message}); delete it (`vla-launch calibrate --remove`) or fix it"
    )]
    Parse { path: PathBuf, message: String },
    #[error(
        "the calibration store {path} has format version {found}, this vla-launch reads {FORMAT_VERSION}; delete it or use the matching vla-launch"
    )]
    Version { path: PathBuf, found: u32 },
}

/// Where the store lives, from an environment lookup (no I/O): `$VLA_LAUNCH_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vla-launch`, else `$HOME/.cache/vla-launch`, with `calibration.json` in it.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, CalibrationError> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    let dir = if let Some(d) = non_empty(ENV_CACHE_DIR) {
        PathBuf::from(d)
    } else if let Some(d) = non_empty("XDG_CACHE_HOME") {
        Path::new(&d).join("vla-launch")
    } else if let Some(h) = non_empty("HOME") {
        Path::new(&h).join(".cache").join("vla-launch")
    } else {
        return Err(CalibrationError::NoCacheDir);
    };
    Ok(dir.join(FILE_NAME))
}

/// Reads the store; a missing file is an empty store.
pub fn load(path: &Path) -> Result<Store, CalibrationError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Store::from_json(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
        Err(source) => Err(CalibrationError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates the cache directory and its missing parents 0700: it names the user's scripts,
/// Python and runs (issue 25 item 16). A directory that exists keeps its mode.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a new cache file 0600 (a temporary file, renamed into place by the caller).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// Writes the store atomically (temporary file + rename), creating its directory.
pub fn save(store: &Store, path: &Path) -> Result<(), CalibrationError> {
    let err = |source| CalibrationError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    write_private(&tmp, store.to_json().as_bytes()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}
