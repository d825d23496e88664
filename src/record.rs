//! A typed view of the run record the launcher writes (`plan-<stamp>.json`: the `plan --json`
//! object plus `outcome`), for `vla-launch replay` and for feeding observed peaks to the
//! calibration store. `load` is the only I/O; the rest is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::budget::{Allocator, Budget, Strategy};
use crate::calibration::{Key, Observation, Source};

/// The value `plan_json` writes in place of a secret environment variable.
pub const REDACTED: &str = "***";

/// The configuration the plan chose, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub strategy: Strategy,
    pub gradient_checkpointing: bool,
    pub batch_size: u32,
    pub grad_accumulation_steps: u32,
    pub nproc_per_node: u32,
    pub nnodes: u32,
    pub global_batch: u32,
    pub gpu_indices: Vec<u32>,
    /// Uncorrected budget-model peak per GPU.
    pub predicted_peak_bytes: u64,
}

/// One planned GPU as recorded before launch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordedGpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub total_bytes: u64,
    #[serde(default)]
    pub used_bytes: u64,
    /// Memory held by other processes at plan time (sum of their NVML figures).
    #[serde(skip)]
    pub others_bytes: u64,
}

/// What happened, as the launcher completed the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub interrupted_by: Option<i32>,
    pub duration_s: Option<f64>,
    /// Per GPU, in the order of `observed_gpu_uuids`.
    pub observed_peak_used_bytes: Vec<Option<u64>>,
    pub observed_gpu_uuids: Vec<String>,
    /// `DiagnosisKind` as recorded ("CudaOom", ...).
    pub diagnosis_kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub path: PathBuf,
    pub profile: String,
    /// The exact argv: program first.
    pub argv: Vec<String>,
    /// Variables the launcher set, without the redacted ones.
    pub env: BTreeMap<String, String>,
    /// Variables whose values were redacted: `replay` takes them from its own environment.
    pub redacted: Vec<String>,
    /// Working directory of torchrun, when the record has it.
    pub cwd: Option<PathBuf>,
    pub chosen: Option<Chosen>,
    pub allocator: Option<Allocator>,
    pub gpus: Vec<RecordedGpu>,
    /// When the run started (the record's `started_unix`, else the stamp in `plan-<stamp>.json`).
    pub started_unix: Option<u64>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "cannot read the run record {path}: {source}; pass the plan-<stamp>.json a launch wrote"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the run record {path} is not valid JSON: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "the run record {path} has no command: it was written by `plan -o` or for an infeasible plan; replay needs the plan-<stamp>.json of a launch"
    )]
    NoCommand { path: PathBuf },
    #[error(
        "replaying {path} needs {names} from the environment (their values were redacted in the record); export {first}=..."
    )]
    MissingSecrets {
        path: PathBuf,
        names: String,
        first: String,
    },
}

// The record's JSON, only the fields read here; everything else is ignored.
#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    started_unix: Option<u64>,
    #[serde(default)]
    strategy: Option<Strategy>,
    #[serde(default)]
    gradient_checkpointing: Option<bool>,
    #[serde(default)]
    batch_size: Option<u32>,
    #[serde(default)]
    grad_accumulation_steps: Option<u32>,
    #[serde(default)]
    nproc_per_node: Option<u32>,
    #[serde(default)]
    nnodes: Option<u32>,
    #[serde(default)]
    global_batch: Option<u32>,
    #[serde(default)]
    gpu_indices: Option<Vec<u32>>,
    #[serde(default)]
    predicted_peak_bytes: Option<u64>,
    #[serde(default)]
    budget: Option<Budget>,
    #[serde(default)]
    allocator: Option<Allocator>,
    #[serde(default)]
    gpus: Vec<RawGpu>,
    #[serde(default)]
    outcome: Option<RawOutcome>,
}

#[derive(Deserialize)]
struct RawGpu {
    #[serde(flatten)]
    gpu: RecordedGpu,
    #[serde(default)]
    processes: Vec<RawProcess>,
}

#[derive(Deserialize)]
struct RawProcess {
    #[serde(default)]
    used_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct RawOutcome {
    exit_code: i32,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default)]
    interrupted_by: Option<i32>,
    #[serde(default)]
    duration_s: Option<f64>,
    #[serde(default)]
    observed_peak_used_bytes: Option<Vec<Option<u64>>>,
    /// NVML total - free: the quantity the budget model predicts (used + the driver's reserve).
    #[serde(default)]
    observed_peak_total_minus_free_bytes: Option<Vec<Option<u64>>>,
    #[serde(default)]
    observed_gpu_uuids: Vec<String>,
    #[serde(default)]
    diagnosis: Option<RawDiagnosis>,
}

#[derive(Deserialize)]
struct RawDiagnosis {
    kind: String,
}

/// Reads a run record.
pub fn load(path: &Path) -> Result<RunRecord, RecordError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// The record from the JSON value the launcher just wrote (no file read).
pub fn from_value(value: &serde_json::Value, path: &Path) -> Result<RunRecord, RecordError> {
    parse(&value.to_string(), path)
}

/// Parses a run record's text; `path` names it in errors and gives the fallback start time.
pub fn parse(text: &str, path: &Path) -> Result<RunRecord, RecordError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| RecordError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let argv = raw
        .command
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RecordError::NoCommand {
            path: path.to_path_buf(),
        })?;
    let mut env = BTreeMap::new();
    let mut redacted = Vec::new();
    for (k, v) in raw.env.unwrap_or_default() {
        if v == REDACTED {
            redacted.push(k);
        } else {
            env.insert(k, v);
        }
    }
    let chosen = match (
        raw.strategy,
        raw.gradient_checkpointing,
        raw.batch_size,
        raw.grad_accumulation_steps,
        raw.nproc_per_node,
    ) {
        (Some(strategy), Some(ckpt), Some(batch), Some(accum), Some(nproc)) => {
            let nnodes = raw.nnodes.unwrap_or(1);
            Some(Chosen {
                strategy,
                gradient_checkpointing: ckpt,
                batch_size: batch,
                grad_accumulation_steps: accum,
                nproc_per_node: nproc,
                nnodes,
                global_batch: raw.global_batch.unwrap_or(batch * accum * nproc * nnodes),
                gpu_indices: raw.gpu_indices.unwrap_or_default(),
                // The budget terms are the uncorrected model even once a calibration correction
                // changes `predicted_peak_bytes`; fitting against a corrected figure would compound.
                predicted_peak_bytes: raw
                    .budget
                    .as_ref()
                    .map(Budget::peak)
                    .or(raw.predicted_peak_bytes)
                    .unwrap_or(0),
            })
        }
        _ => None,
    };
    let gpus = raw
        .gpus
        .into_iter()
        .map(|g| RecordedGpu {
            others_bytes: g.processes.iter().filter_map(|p| p.used_bytes).sum(),
            ..g.gpu
        })
        .collect();
    let outcome = raw.outcome.map(|o| Outcome {
        exit_code: o.exit_code,
        signal: o.signal,
        interrupted_by: o.interrupted_by,
        duration_s: o.duration_s,
        // Prefer total - free, which is what predictions are in; older records have only `used`.
        observed_peak_used_bytes: o
            .observed_peak_total_minus_free_bytes
            .or(o.observed_peak_used_bytes)
            .unwrap_or_default(),
        observed_gpu_uuids: o.observed_gpu_uuids,
        diagnosis_kind: o.diagnosis.map(|d| d.kind),
    });
    Ok(RunRecord {
        path: path.to_path_buf(),
        profile: raw.profile.unwrap_or_default(),
        argv,
        env,
        redacted,
        cwd: raw.cwd,
        chosen,
        allocator: raw.allocator,
        gpus,
        started_unix: raw.started_unix.or_else(|| stamp_of(path)),
        outcome,
    })
}

/// The `<stamp>` of `plan-<stamp>.json`, the launcher's start time in Unix seconds.
fn stamp_of(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("plan-")?
        .parse()
        .ok()
}

impl RunRecord {
    /// The environment `replay` sets: the recorded entries plus the redacted ones taken from
    /// `current` (the replaying process's environment); errors naming any that are unset.
    pub fn replay_env(
        &self,
        current: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, RecordError> {
        let mut out: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut missing = Vec::new();
        for name in &self.redacted {
            match current(name) {
                Some(v) => out.push((name.clone(), v)),
                None => missing.push(name.clone()),
            }
        }
        if let Some(first) = missing.first().cloned() {
            return Err(RecordError::MissingSecrets {
                path: self.path.clone(),
                names: missing.join(", "),
                first,
            });
        }
        out.sort();
        Ok(out)
    }

    /// True when the run finished by itself with exit 0: only then is its peak the peak of a
    /// full training step (a crash or Ctrl-C may end before the first optimizer step).
    pub fn completed(&self) -> bool {
        self.outcome
            .as_ref()
            .is_some_and(|o| o.exit_code == 0 && o.interrupted_by.is_none() && o.signal.is_none())
    }
}

/// The calibration observation of a completed run: one, for the max over its GPUs of the NVML
/// peak less the memory other processes held at plan time; none for a run that did not complete,
/// has no prediction, or has no observed peak. `source` says whether it was a calibration probe.
pub fn observations(record: &RunRecord, source: Source) -> Vec<(Key, Observation)> {
    let (Some(chosen), Some(outcome)) = (&record.chosen, &record.outcome) else {
        return Vec::new();
    };
    if !record.completed() || chosen.predicted_peak_bytes == 0 {
        return Vec::new();
    }
    let mut best: Option<(u64, &RecordedGpu)> = None;
    for (uuid, peak) in outcome
        .observed_gpu_uuids
        .iter()
        .zip(&outcome.observed_peak_used_bytes)
    {
        let (Some(peak), Some(gpu)) = (peak, record.gpus.iter().find(|g| &g.uuid == uuid)) else {
            continue;
        };
        let own = peak.saturating_sub(gpu.others_bytes);
        if best.is_none_or(|(b, _)| own > b) {
            best = Some((own, gpu));
        }
    }
    let Some((observed, gpu)) = best.filter(|(o, _)| *o > 0) else {
        return Vec::new();
    };
    let key = Key::new(
        &gpu.name,
        &record.profile,
        chosen.strategy,
        chosen.gradient_checkpointing,
        chosen.nproc_per_node * chosen.nnodes,
    );
    vec![(
        key,
        Observation {
            batch_size: chosen.batch_size,
            predicted_peak_bytes: chosen.predicted_peak_bytes,
            observed_peak_bytes: observed,
            allocator: record.allocator.unwrap_or(Allocator::Default),
            timestamp_unix: record.started_unix.unwrap_or(0),
            source,
        },
    )]
}
