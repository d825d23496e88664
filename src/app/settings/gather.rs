//! Gather: the facts of this machine a plan needs, behind the existing seams (NVML or `--gpus`,
//! the script's flags and the torch of its Python through `script_caps::CommandRunner` with their
//! caches, `/proc/meminfo`, the calibration store). Settled values in, facts out.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::super::error::{AppError, Result};
use super::env::{env_var, script_path, store_path};
use super::resolve::{GpuRequest, HostRamSource, Settings};
use crate::calibration::{self, Store};
use crate::gpu::{self, Gpu, NvmlSource};
use crate::profile::{Loaded, Resolved};
use crate::script_caps;
use crate::script_choice::torch::TorchInfo;
use crate::script_choice::{self, ScriptChoice};
use crate::units::fmt_gib;

/// What this machine says.
#[derive(Debug, Clone)]
pub(in crate::app) struct Facts {
    /// This node's GPUs in CUDA order (`--vram-cap` applied).
    pub gpus: Vec<Gpu>,
    /// Which script runs (the profile's, or the FSDP addition around it) and why.
    pub script_choice: ScriptChoice,
    /// The torch of the training environment, or why it is not known (asked only when the
    /// addition supplies `--use_fsdp`, whose implementation depends on it).
    pub torch: std::result::Result<TorchInfo, String>,
    pub host_ram_bytes: Option<u64>,
    /// Corrections learned from earlier runs; empty when none or unreadable.
    pub store: Store,
    /// What the gathering noticed (GPU notes, flags the script lacks), in order.
    pub warnings: Vec<String>,
}

/// Gathers the facts `settings` need. `ask_script`: a real launch, which needs the script and
/// refuses a flag it does not define.
pub(in crate::app) fn gather(settings: &Settings, ask_script: bool) -> Result<Facts> {
    let (loaded, resolved) = (&settings.loaded, &settings.resolved);
    // Every command asks the script which flags it takes (cached), or says what it assumed; a
    // real launch needs the script.
    let (script_choice, answer) = choose_script(loaded, resolved, ask_script)?;
    let unknown_flags = answer
        .map(|a| unknown_flags(settings, &script_choice, &a))
        .unwrap_or_default();
    if ask_script && !unknown_flags.is_empty() {
        // A flag the script does not define would only fail inside torchrun.
        return Err(AppError::usage(format!(
            "not launching: {}",
            unknown_flags.join("; ")
        )));
    }
    let (gpus, mut warnings) = gpus_for(&settings.gpus)?;
    warnings.extend(unknown_flags);
    // The torch of the training environment decides which FSDP the addition runs, if any; a
    // script with its own --use_fsdp (or none) is not asked.
    let torch = if !script_choice.addition_gives_fsdp() {
        Err("not asked".into())
    } else if missing_script(loaded, resolved).is_none() {
        learn_torch(resolved)
    } else {
        Err(format!(
            "{} is not here to ask",
            crate::input::excerpt(&resolved.python.value, 80)
        ))
    };
    let host_ram_bytes = match settings.host_ram {
        HostRamSource::Given(b) => Some(b),
        HostRamSource::Unknown => None,
        HostRamSource::ThisMachine => std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| crate::doctor::meminfo_field(&m, "MemTotal")),
    };
    Ok(Facts {
        gpus,
        script_choice,
        torch,
        host_ram_bytes,
        store: load_store(),
        warnings,
    })
}

/// The profile's `train:` keys and the words after `--` that the script does not define (none
/// for calibrate's real-code probe, which passes every flag on to the checkout's finetune.py,
/// for which the profile's flags were written: its own --help does not speak for them).
fn unknown_flags(
    settings: &Settings,
    choice: &ScriptChoice,
    answer: &script_choice::FlagsAnswer,
) -> Vec<String> {
    let script = script_path(&settings.resolved);
    let real_probe =
        script_choice::installed(&crate::install::vla_launch_dir(), script_choice::REAL_PROBE)
            .is_some_and(|probe| std::fs::canonicalize(&script).is_ok_and(|s| s == probe));
    if real_probe {
        return Vec::new();
    }
    super::super::script_flags::unknown(
        &settings.loaded,
        &settings.sets,
        &settings.script_args,
        &script,
        &super::super::script_flags::known(choice, &answer.caps.flags),
        answer.from,
    )
}

/// GPUs from `--gpus` (described) or NVML (queried), with `--vram-cap` applied.
pub(in crate::app) fn gpus_for(request: &GpuRequest) -> Result<(Vec<Gpu>, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut gpus = match &request.described {
        Some(spec) => {
            let described = gpu::describe_gpus(spec)?;
            warnings.extend(described.notes);
            described.gpus
        }
        None => {
            let d = gpu::discover(
                &NvmlSource::new(),
                env_var("CUDA_VISIBLE_DEVICES").as_deref(),
            )?;
            tracing::debug!(elapsed_ms = d.elapsed_ms, "GPU discovery");
            warnings.extend(d.warnings);
            d.gpus
        }
    };
    if let Some((cap, cap_bytes)) = &request.vram_cap {
        let cap_bytes = *cap_bytes;
        if let Some(largest) = gpus.iter().max_by_key(|g| g.total_bytes)
            && largest.total_bytes <= cap_bytes
        {
            warnings.push(format!(
                "--vram-cap {cap} is not below any GPU's memory (GPU {}: {}): it changes nothing; \
                 give a smaller size to emulate a smaller card, e.g. --vram-cap 24564MiB for an RTX 4090",
                largest.index,
                fmt_gib(largest.total_bytes)
            ));
        } else {
            warnings.push(format!(
                "--vram-cap {cap}: every GPU treated as holding at most {}",
                fmt_gib(cap_bytes)
            ));
        }
        for g in &mut gpus {
            let used = g.total_bytes.saturating_sub(g.free_bytes);
            g.total_bytes = g.total_bytes.min(cap_bytes);
            g.free_bytes = g.total_bytes.saturating_sub(used).min(g.free_bytes);
        }
    }
    Ok((gpus, warnings))
}

/// Why the profile's training script is not where the profile says, if it is not.
pub(in crate::app) fn missing_script(loaded: &Loaded, resolved: &Resolved) -> Option<String> {
    let script = script_path(resolved);
    (!script.is_file()).then(|| {
        crate::install::missing_script_message(
            &script,
            &loaded.profile.script.workdir,
            &crate::install::vla_launch_dir(),
        )
    })
}

/// Which script runs and which optional planner flags it takes: asks the script (`--help`, else
/// its source; cached in the user cache dir), then [`script_choice::choose`]. Without the script
/// (planning away from the checkout) the profile's `script.accepts` is assumed and said so;
/// `need_script` (a real launch) refuses that.
pub(in crate::app) fn choose_script(
    loaded: &Loaded,
    resolved: &Resolved,
    need_script: bool,
) -> Result<(ScriptChoice, Option<script_choice::FlagsAnswer>)> {
    let p = &loaded.profile;
    let missing = missing_script(loaded, resolved);
    if let (true, Some(message)) = (need_script, &missing) {
        return Err(AppError::environment(message.clone()));
    }
    let answer = if missing.is_some() {
        None
    } else {
        ask_flags(resolved)
    };
    let addition =
        script_choice::installed(&crate::install::vla_launch_dir(), script_choice::ADDITION);
    let choice = script_choice::choose(
        p.script.fsdp_addition,
        &p.script.accepts,
        answer.as_ref().map(|a| &a.caps),
        addition.as_deref(),
        &resolved.script.value,
    )
    .map_err(AppError::usage)?;
    let choice = if missing.is_none() && answer.is_none() {
        choice.unanswered(&resolved.script.value)
    } else {
        choice
    };
    Ok((choice, answer))
}

/// The flags the script (which is here) defines, or None (warned) when it cannot say.
fn ask_flags(resolved: &Resolved) -> Option<script_choice::FlagsAnswer> {
    let script = script_path(resolved);
    let python = PathBuf::from(&resolved.python.value);
    let cache = store_path().and_then(|p| Some(p.parent()?.join(script_choice::CACHE_FILE)));
    match script_choice::script_flags(
        &script_caps::SystemRunner,
        &python,
        &script,
        &PathBuf::from(&resolved.workdir.value),
        script_caps::DEFAULT_PROBE_TIMEOUT,
        cache.as_deref(),
    ) {
        Ok(a) => {
            if let Some(e) = &a.help_error {
                warn!(
                    "{e}\nread {}'s flags from its source instead (its dataclass fields)",
                    script.display()
                );
            }
            Some(a)
        }
        Err(e) => {
            warn!(
                "could not ask {} for its flags ({e}); assuming the profile's script.accepts",
                script.display()
            );
            None
        }
    }
}

/// The torch the script's Python imports (asked in the script's working directory; cached
/// next to the calibration store), or why it could not be learnt.
pub(in crate::app) fn learn_torch(resolved: &Resolved) -> std::result::Result<TorchInfo, String> {
    let cache = store_path().and_then(|p| Some(p.parent()?.join(script_choice::torch::CACHE_FILE)));
    let env = script_choice::torch::PythonEnv {
        pythonpath: env_var("PYTHONPATH"),
        virtual_env: env_var("VIRTUAL_ENV"),
    };
    script_choice::torch::learn(
        &script_caps::SystemRunner,
        Path::new(&resolved.python.value),
        &env,
        Path::new(&resolved.workdir.value),
        script_caps::DEFAULT_PROBE_TIMEOUT,
        cache.as_deref(),
    )
}

/// The calibration store, or an empty one (a broken store is reported, never fatal).
pub(in crate::app) fn load_store() -> Store {
    let Some(path) = store_path() else {
        return Store::default();
    };
    calibration::load(&path).unwrap_or_else(|e| {
        warn!("calibration store ignored: {e}");
        Store::default()
    })
}
