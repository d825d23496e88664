//! The plan record: one serde type for everything the launcher writes about a plan and reads back.
//! `plan --json` and `plan -o` write it without `outcome`; a launch writes it before torchrun
//! starts (`plan-<stamp>.json` in the log directory) and completes it with `outcome`;
//! `--plan-file`, `replay` and the calibration store read it. `load` is the only I/O.
//!
//! Format versions: 0 is the format without a `format_version` key (main up to f32ef0c); 1 adds
//! the key and is otherwise the same object. Newer versions are refused by name. Every field a
//! reader may miss in an older or hand-written record has a serde default, so fields can be
//! added (to `RunOutcome` especially) without breaking records already on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::budget::{Allocator, Budget, FsdpVersion, HostRam, Strategy};
use crate::calibration::{Key, Observation, Source};
use crate::cluster::Topology;
use crate::cluster::peers::PeerStop;
use crate::gpu::Gpu;
use crate::launch::command::AllocConf;
use crate::model::{Component, ModelSpec};
use crate::plan::{Alternative, Pins};
use crate::profile::Origin;

mod write;
pub use crate::atomic_file::write_atomic;
pub use write::{create_dir, dir_mode, write_file};

/// The format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The value written in place of a secret environment variable.
pub const REDACTED: &str = crate::launch::command::MASK;

/// docs/design.md's `plan --json` object, plus what a launch adds. The chosen configuration's fields
/// are flat (`strategy`, `batch_size`, ...) and null when the plan chose nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Absent (0) in records written before the format was versioned.
    #[serde(default)]
    pub format_version: u32,
    #[serde(default)]
    pub profile: String,
    /// Where the profile came from; absent in hand-written records.
    #[serde(default)]
    pub profile_origin: Option<Origin>,
    #[serde(default)]
    pub feasible: bool,
    pub strategy: Option<Strategy>,
    pub gradient_checkpointing: Option<bool>,
    pub batch_size: Option<u32>,
    pub grad_accumulation_steps: Option<u32>,
    pub nproc_per_node: Option<u32>,
    #[serde(default = "one")]
    pub nnodes: u32,
    #[serde(default)]
    pub node_rank: u32,
    pub global_batch: Option<u32>,
    #[serde(default)]
    pub min_global_batch: u32,
    pub gpu_indices: Option<Vec<u32>>,
    /// What nvidia-smi shows at the peak, calibration correction included.
    pub predicted_peak_bytes: Option<u64>,
    pub required_bytes: Option<u64>,
    /// The budget model's own peak, before any calibration correction.
    pub model_peak_bytes: Option<u64>,
    pub correction: Option<String>,
    pub usable_bytes: Option<u64>,
    pub fits: Option<bool>,
    pub step_time_s: Option<f64>,
    pub samples_per_s: Option<f64>,
    /// The run's optimizer steps (the profile's `max_steps`, or the script's `--max_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// `max_steps` x `step_time_s`: the predicted length of the whole run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_run_time_s: Option<f64>,
    /// The uncorrected budget model's terms.
    pub budget: Option<Budget>,
    /// [`crate::budget::MODEL_REVISION`] of the model that made `model_peak_bytes` (absent: 0,
    /// records written before revisions existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_model_revision: u32,
    /// Which FSDP the budget and step time describe, written `fsdp_impl` (`fsdp1`: a fork's own
    /// --use_fsdp, the addition on torch 2.0 to 2.4, or assumed; `fsdp2`: the addition on torch
    /// 2.5 and later); absent for DDP plans and older records (which wrote it `fsdp`).
    #[serde(
        default,
        rename = "fsdp_impl",
        alias = "fsdp",
        skip_serializing_if = "Option::is_none"
    )]
    pub fsdp: Option<FsdpVersion>,
    /// `torch.__version__` of the training environment, when it could be learnt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    /// `torch.version.cuda` of that torch (absent for a CPU build or when not learnt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_cuda: Option<String>,
    pub allocator: Option<Allocator>,
    pub alloc_conf: Option<AllocConf>,
    pub params: Option<Params>,
    pub model: Option<ModelSpec>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    pub topology: Option<Topology>,
    pub pins: Option<Pins>,
    #[serde(default)]
    pub script_accepts: Vec<String>,
    /// Which script torchrun runs and why (issue 16: the FSDP addition around upstream's script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_run: Option<ScriptRunInfo>,
    /// The exact argv, program first; null when the plan has no command.
    pub command: Option<Vec<String>>,
    /// Variables the launcher sets, secrets as `REDACTED`.
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub alternatives: Vec<Alternative>,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub levers: Vec<String>,
    pub host_ram: Option<HostRam>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub evaluated: usize,
    /// The launch's working directory (launch records only, as the four below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_version: Option<String>,
    /// What happened; written once torchrun has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn one() -> u32 {
    1
}

/// Which script torchrun runs, as the plan record tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRunInfo {
    /// The file torchrun runs, as the command names it: the profile's script, or vla-launch's
    /// `finetune_fsdp.py`.
    pub runs: PathBuf,
    /// True when that is the FSDP addition; it imports `script` (`VLA_FINETUNE_SCRIPT`).
    pub addition: bool,
    /// The profile's script, relative to the working directory.
    pub script: PathBuf,
    /// The optional flags were assumed from the profile (the script was not here to ask).
    pub assumed: bool,
    /// One sentence: which and why.
    pub why: String,
}

/// Parameter counts of the model as planned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub total: u64,
    pub trainable: u64,
    pub components: Vec<Component>,
}

impl Params {
    /// The model's components with their sums: all parameters, and the trainable ones.
    pub fn of(components: Vec<Component>) -> Params {
        let sum = |trainable_only: bool| {
            components
                .iter()
                .filter(|c| c.trainable || !trainable_only)
                .map(|c| c.params)
                .sum()
        };
        Params {
            total: sum(false),
            trainable: sum(true),
            components,
        }
    }
}

/// What a launch observed, as the launcher completed the record. New fields: give them a serde
/// default so that records written before them still read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// torchrun's exit code, or 128+N when signal N ended it.
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    /// The first stop signal the launcher received.
    #[serde(default)]
    pub interrupted_by: Option<i32>,
    /// Why another node's failure stopped this one, when it did.
    #[serde(default)]
    pub stopped_by_peer: Option<String>,
    /// The same, as data: which node, and its exit code or how it was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by_peer_cause: Option<PeerStop>,
    #[serde(default)]
    pub force_killed: bool,
    #[serde(default)]
    pub leftover_processes: usize,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// The GPUs whose peaks follow, in the same order.
    #[serde(default)]
    pub observed_gpu_uuids: Vec<String>,
    /// What the hang watchdog said, each time it spoke.
    #[serde(default)]
    pub hangs: Option<Vec<String>>,
    /// NVML `used` peaks (what nvidia-smi shows).
    #[serde(default)]
    pub observed_peak_used_bytes: Option<Vec<Option<u64>>>,
    /// NVML total - free peaks: the quantity the budget model predicts.
    #[serde(default)]
    pub observed_peak_total_minus_free_bytes: Option<Vec<Option<u64>>>,
    #[serde(default)]
    pub diagnosis: Option<RecordedDiagnosis>,
    /// Why the run log is incomplete (a full disk, say), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    /// The script's last tqdm progress: where the run got to and how fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RecordedProgress>,
}

/// How far the training got, from its last tqdm update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedProgress {
    pub step: u64,
    pub max_steps: u64,
    pub samples_per_s: Option<f64>,
    pub elapsed_s: Option<u64>,
    pub eta_s: Option<u64>,
}

/// The diagnosis of a failed run, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedDiagnosis {
    /// `DiagnosisKind` by name ("CudaOom", ...).
    pub kind: String,
    #[serde(default)]
    pub rank: Option<u32>,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub hint: String,
    #[serde(default)]
    pub evidence: String,
}

impl RunOutcome {
    /// Per GPU (in `observed_gpu_uuids` order), the peak in the budget model's terms: total -
    /// free, or `used` in records that have only that.
    pub fn observed_peaks(&self) -> &[Option<u64>] {
        self.observed_peak_total_minus_free_bytes
            .as_deref()
            .or(self.observed_peak_used_bytes.as_deref())
            .unwrap_or_default()
    }
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
        "the record {path} has format version {found}, newer than this vla-launch reads (up to {FORMAT_VERSION}); use the vla-launch that wrote it, or a newer one"
    )]
    TooNew { path: PathBuf, found: u32 },
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

/// Writes a launch's run record: once when it starts ([`Recorder::begin`], no outcome yet) and
/// once when it ends ([`Recorder::complete`]), each time atomically ([`write_atomic`]), so the
/// record on disk is always one of the two, whole.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    mode: u32,
    record: PlanRecord,
}

impl Recorder {
    /// Writes `record` (without an outcome) into `path`, a file just created for it and empty
    /// (`app::run_files::claim`): written in place, so the window in which a reader sees it
    /// empty stays as short as one write; a failure (a full disk) is the caller's to clean up.
    pub fn begin(path: &Path, mode: u32, record: PlanRecord) -> std::io::Result<Recorder> {
        write_file(path, &record.to_json_pretty(), mode)?;
        std::fs::File::open(path)?.sync_all()?;
        Ok(Recorder {
            path: path.to_path_buf(),
            mode,
            record,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds `outcome` and rewrites the record. When that fails (a full disk) the record written
    /// by `begin` is still there, whole, and the error says so.
    pub fn complete(mut self, outcome: RunOutcome) -> (PlanRecord, std::io::Result<()>) {
        self.record.outcome = Some(outcome);
        let written =
            write_atomic(&self.path, &self.record.to_json_pretty(), self.mode).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the record written at the start is still there, without an outcome"
                    ),
                )
            });
        (self.record, written)
    }
}

/// Gives the record at `path` an outcome if it has none yet, atomically, keeping its mode (the
/// watchdog's last word on a launcher killed outright). `Ok(false)` when it had one already.
pub fn complete_if_open(path: &Path, outcome: RunOutcome) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mut record = load(path).map_err(|e| std::io::Error::other(e.to_string()))?;
    if record.outcome.is_some() {
        return Ok(false);
    }
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    record.outcome = Some(outcome);
    write_atomic(path, &record.to_json_pretty(), mode)?;
    Ok(true)
}

/// Reads a record from a file.
pub fn load(path: &Path) -> Result<PlanRecord, RecordError> {
    let text = crate::input::read_text(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses a record's text; `path` names it in errors. Refuses a newer format by its version.
pub fn parse(text: &str, path: &Path) -> Result<PlanRecord, RecordError> {
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        format_version: u32,
    }
    let parse_error = |e: serde_json::Error| RecordError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(parse_error)?;
    let Some(object) = value.as_object() else {
        return Err(RecordError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "it is not a JSON object but {}; a record is the object `plan -o` or a launch writes",
                json_kind(&value)
            ),
        });
    };
    if !object.contains_key("feasible") && !object.contains_key("profile") {
        return Err(RecordError::Parse {
            path: path.to_path_buf(),
            message: "it has no `feasible` and no `profile`: it is not a plan record".into(),
        });
    }
    // The version first: a newer format may not parse as this one at all.
    let version: Version = serde_json::from_value(value.clone()).map_err(parse_error)?;
    if version.format_version > FORMAT_VERSION {
        return Err(RecordError::TooNew {
            path: path.to_path_buf(),
            found: version.format_version,
        });
    }
    serde_json::from_value(value.clone()).map_err(|e| RecordError::Parse {
        path: path.to_path_buf(),
        message: match field_at_fault(object) {
            Some(field) => format!("`{field}`: {e}"),
            None => e.to_string(),
        },
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The first top-level field that does not parse on its own (serde_json's message names the
/// type, not the field): every field of a record has a default, so one field alone must parse.
fn field_at_fault(object: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    object.iter().find_map(|(k, v)| {
        let mut one = serde_json::Map::new();
        one.insert(k.clone(), v.clone());
        serde_json::from_value::<PlanRecord>(serde_json::Value::Object(one))
            .is_err()
            .then(|| crate::input::excerpt(k, 40).trim_matches('"').to_string())
    })
}

impl PlanRecord {
    /// The record as pretty JSON with keys in alphabetical order (as every earlier version wrote
    /// it), newline-terminated.
    pub fn to_json_pretty(&self) -> String {
        let value = serde_json::to_value(self).expect("a plan record always serializes");
        let text = serde_json::to_string_pretty(&value).expect("a JSON value always serializes");
        // Warnings and the topology quote values as given (an endpoint with a password).
        crate::launch::command::redact_text(&text) + "\n"
    }

    /// The argv to replay, or the error naming the record.
    pub fn argv(&self, path: &Path) -> Result<&[String], RecordError> {
        self.command
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| RecordError::NoCommand {
                path: path.to_path_buf(),
            })
    }

    /// Recorded variables whose values were redacted.
    pub fn redacted(&self) -> Vec<String> {
        self.env
            .iter()
            .flatten()
            .filter(|(_, v)| *v == REDACTED)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The environment `replay` sets: the recorded entries plus the redacted ones taken from
    /// `current` (the replaying process's environment); errors naming any that are unset.
    pub fn replay_env(
        &self,
        path: &Path,
        current: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, RecordError> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for (name, value) in self.env.iter().flatten() {
            if value != REDACTED {
                out.push((name.clone(), value.clone()));
            } else {
                match current(name) {
                    Some(v) => out.push((name.clone(), v)),
                    None => missing.push(name.clone()),
                }
            }
        }
        if let Some(first) = missing.first().cloned() {
            return Err(RecordError::MissingSecrets {
                path: path.to_path_buf(),
                names: missing.join(", "),
                first,
            });
        }
        out.sort();
        Ok(out)
    }

    /// When the run started: `started_unix`, else the stamp in `plan-<stamp>.json`.
    pub fn started_unix(&self, path: &Path) -> Option<u64> {
        self.started_unix.or_else(|| stamp_of(path))
    }

    /// True when the run finished by itself with exit 0: only then is its peak the peak of a
    /// full training step (a crash or Ctrl-C may end before the first optimizer step).
    pub fn completed(&self) -> bool {
        self.outcome
            .as_ref()
            .is_some_and(|o| o.exit_code == 0 && o.interrupted_by.is_none() && o.signal.is_none())
    }

    /// The uncorrected budget-model peak per GPU: the budget terms even once a calibration
    /// correction changed `predicted_peak_bytes` (fitting against a corrected figure would
    /// compound), else the recorded prediction.
    pub fn model_peak(&self) -> Option<u64> {
        self.budget
            .as_ref()
            .map(Budget::peak)
            .or(self.predicted_peak_bytes)
    }
}

/// The `<stamp>` of `plan-<stamp>.json`, the launcher's start time in Unix seconds.
fn stamp_of(path: &Path) -> Option<u64> {
    path.file_stem()?
        .to_str()?
        .strip_prefix("plan-")?
        .parse()
        .ok()
}

/// The calibration observation of a completed run: one, for the max over its GPUs of the NVML
/// peak less the memory other processes held at plan time; none for a run that did not complete,
/// has no prediction, or has no observed peak. `source` says whether it was a calibration probe;
/// `path` gives the start time of records without `started_unix`.
pub fn observations(record: &PlanRecord, path: &Path, source: Source) -> Vec<(Key, Observation)> {
    let (
        Some(outcome),
        Some(strategy),
        Some(checkpointing),
        Some(batch_size),
        Some(_),
        Some(nproc),
    ) = (
        &record.outcome,
        record.strategy,
        record.gradient_checkpointing,
        record.batch_size,
        record.grad_accumulation_steps,
        record.nproc_per_node,
    )
    else {
        return Vec::new();
    };
    let predicted = record.model_peak().unwrap_or(0);
    if !record.completed() || predicted == 0 {
        return Vec::new();
    }
    let mut best: Option<(u64, &Gpu)> = None;
    for (uuid, peak) in outcome
        .observed_gpu_uuids
        .iter()
        .zip(outcome.observed_peaks())
    {
        let (Some(peak), Some(gpu)) = (peak, record.gpus.iter().find(|g| &g.uuid == uuid)) else {
            continue;
        };
        let others: u64 = gpu.processes.iter().filter_map(|p| p.used_bytes).sum();
        let own = peak.saturating_sub(others);
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
        strategy,
        checkpointing,
        nproc * record.nnodes,
    )
    .with_fsdp(record.fsdp.unwrap_or_default());
    vec![(
        key,
        Observation {
            batch_size,
            predicted_peak_bytes: predicted,
            observed_peak_bytes: observed,
            allocator: record.allocator.unwrap_or(Allocator::Default),
            timestamp_unix: record.started_unix(path).unwrap_or(0),
            source,
            model_revision: record.budget_model_revision,
        },
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN_RUN: &str =
        include_str!("../tests/fixtures/records/main-f32ef0c-run-plan-1795850263.json");
    const MAIN_PLAN_O: &str = include_str!("../tests/fixtures/records/main-f32ef0c-plan-o.json");

    /// A record written by main before versioning reads as version 0, and writing it back gives
    /// the same JSON (plus the version): the typed record drops nothing of the old format.
    #[test]
    fn records_written_by_main_before_versioning_read_losslessly() {
        for (name, text) in [("run", MAIN_RUN), ("plan -o", MAIN_PLAN_O)] {
            let rec = parse(text, Path::new("plan-1795850263.json")).unwrap();
            assert_eq!(rec.format_version, 0, "{name}");
            let mut original: serde_json::Value = serde_json::from_str(text).unwrap();
            original["format_version"] = 0.into();
            let again: serde_json::Value = serde_json::from_str(&rec.to_json_pretty()).unwrap();
            assert_eq!(again, original, "{name}");
        }
    }

    #[test]
    fn a_launch_record_of_main_gives_replay_and_calibration_what_they_need() {
        let path = Path::new("/logs/plan-1795850263.json");
        let rec = parse(MAIN_RUN, path).unwrap();
        let argv = rec.argv(path).unwrap();
        assert!(argv[0].ends_with("fake_torchrun"), "{argv:?}");
        assert_eq!(argv.last().map(String::as_str), Some("x"));
        assert_eq!(rec.started_unix(path), Some(1795850263));
        assert!(rec.completed());
        let outcome = rec.outcome.as_ref().unwrap();
        assert_eq!(outcome.observed_peaks(), &[Some(42949672960)]);
        let obs = observations(&rec, path, Source::Run);
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].1.observed_peak_bytes, 42949672960);
        assert_eq!(obs[0].1.batch_size, 8);
        assert_eq!(obs[0].0.profile, "aloha");
    }

    #[test]
    fn a_plan_o_record_of_main_pins_but_teaches_calibration_nothing() {
        let path = Path::new("/plans/plan.json");
        let rec = parse(MAIN_PLAN_O, path).unwrap();
        assert!(rec.feasible);
        assert_eq!(
            (rec.batch_size, rec.nproc_per_node, rec.min_global_batch),
            (Some(8), Some(2), 16)
        );
        assert!(!rec.completed());
        assert!(observations(&rec, path, Source::Run).is_empty());
    }

    #[test]
    fn a_newer_format_is_refused_naming_its_version() {
        let mut v: serde_json::Value = serde_json::from_str(MAIN_RUN).unwrap();
        v["format_version"] = (FORMAT_VERSION + 1).into();
        // Even when the rest would not parse as this format.
        v["gpus"] = "changed".into();
        let e = parse(&v.to_string(), Path::new("/r/plan-2.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("format version {}", FORMAT_VERSION + 1))
                && e.contains("/r/plan-2.json"),
            "{e}"
        );
    }

    /// The record format as this build writes it (plan -o of main's fixture, re-versioned).
    #[test]
    fn record_format_snapshot() {
        let mut rec = parse(MAIN_RUN, Path::new("plan-1795850263.json")).unwrap();
        rec.format_version = FORMAT_VERSION;
        insta::assert_snapshot!(rec.to_json_pretty());
    }
}
