//! `vla-launch calibrate`: probe runs at two batch sizes per mode; their observed peaks go into
//! the calibration store that every plan reads.

use std::path::PathBuf;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::settings::{
    Steer, env_var, load_profile, plan_loaded, script_path, store_path, warn_missing,
};
use crate::app::supervised_run::launch_once;
use crate::app::torchrun::command_for;
use crate::calibration::{self, Source, Store};
use crate::cli::CalibrateArgs;
use crate::launch::command;
use crate::plan;
use crate::profile::{FsdpAddition, Loaded, ScriptArgs};
use crate::script_choice;
use crate::units::fmt_gib;
use serde_yaml::Value;
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::{eprintln_lossy as eprintln, print_lossy as print, println_lossy as println};

/// `vla-launch calibrate`: probe runs at two batch sizes per mode, observed peaks into the store.
pub(in crate::app) fn cmd_calibrate(args: CalibrateArgs) -> Result<ExitCode> {
    let CalibrateArgs {
        launch,
        steps,
        show,
        reset,
    } = args;
    let name = launch
        .planning
        .profile
        .clone()
        .ok_or_else(|| AppError::usage("calibrate needs --profile NAME"))?;
    let path = store_path()
        .ok_or_else(|| AppError::environment("no calibration store: set VLA_LAUNCH_CACHE_DIR"))?;
    let profile_name = load_profile(Some(&name), &launch.planning.sets)?.name;
    let store = calibration::load(&path)?;
    if reset || show {
        return show_or_reset(store, &path, &profile_name, reset);
    }
    if steps == 0 {
        return Err(AppError::usage(
            "--steps 0: a probe run needs at least 1 optimizer step",
        ));
    }
    let script_args = ScriptArgs::parse(&launch.extra)?;
    let (loaded, with_real_probe) = probe_profile(&name, &launch.planning.sets, steps)?;
    // A dry run runs nothing; like `plan`, it asks a script that is there for its flags (cached).
    let ctx = plan_loaded(
        &launch.planning,
        script_args,
        loaded,
        !launch.dry_run,
        launch.dry_run,
    )?;
    let runs = plan::probe::probe_runs(&ctx.plan_input(), &ctx.loaded.name)?;
    if runs.is_empty() {
        return Err(AppError::infeasible(if with_real_probe {
            "nothing to calibrate: the real-code probe runs DDP only, and DDP does not fit even \
             batch 1 on these GPUs; FSDP plans cannot be calibrated with it yet, so they use the \
             budget model alone (validated on the real code with the FSDP addition: \
             docs/validation.md sections 16-17, docs/fsdp.md)"
        } else {
            "nothing to calibrate: not even batch 1 fits these GPUs"
        }));
    }
    let log_dir = launch
        .log_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("vla-launch-logs").join("calibrate"));
    eprintln!(
        "vla-launch: {} probe runs of {steps} steps each",
        runs.len()
    );
    let mut failed = 0;
    for (i, run) in runs.iter().enumerate() {
        let ctx = ctx.steered(&Steer {
            pins: run.pins.clone(),
            min_global_batch: 1,
            calibrated: false,
        })?;
        eprintln!(
            "vla-launch: probe {}/{}: {} (predicted {})",
            i + 1,
            runs.len(),
            run.key.label(),
            fmt_gib(run.predicted_peak_bytes)
        );
        if launch.dry_run {
            let (cmd, missing) = command_for(&ctx, launch.torchrun.as_deref(), None)?;
            warn_missing(&missing);
            println!("{}", command::display(&cmd));
            continue;
        }
        let result = launch_once(&ctx, &launch, &log_dir, 0, Source::Calibrate)?;
        if result.outcome.interrupted_by.is_some() {
            return Ok(ExitCode::of_run(result.outcome.process_exit_code()));
        }
        if result.outcome.exit_code != 0 {
            failed += 1;
        }
    }
    if launch.dry_run {
        return Ok(ExitCode::Success);
    }
    let store = calibration::load(&path)?;
    print!("{}", describe_store(&store, &ctx.loaded.name));
    Ok(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::TrainingFailed
    })
}

/// `--reset` (the profile's entries removed from the store) or `--show` (them printed).
fn show_or_reset(
    mut store: Store,
    path: &std::path::Path,
    profile_name: &str,
    reset: bool,
) -> Result<ExitCode> {
    if reset {
        let n = store.remove_where(|k| k.profile == profile_name);
        calibration::save(&store, path)?;
        println!(
            "removed {n} calibration entries of profile '{profile_name}' from {}",
            path.display()
        );
    } else {
        print!("{}", describe_store(&store, profile_name));
    }
    Ok(ExitCode::Success)
}

/// The profile the probe runs train: `max_steps` = `steps`, and in an OpenVLA-OFT checkout the
/// real code itself, through the shipped real-code probe (said on stderr); true for the latter.
fn probe_profile(name: &str, sets: &[String], steps: u32) -> Result<(Loaded, bool)> {
    let mut loaded = load_profile(Some(name), sets)?;
    set_train(&mut loaded, "max_steps", Value::from(steps));
    let Some(probe) = real_probe(&loaded) else {
        return Ok((loaded, false));
    };
    let dir = PathBuf::from(loaded.resolve(&env_var).workdir.value);
    eprintln!(
        "vla-launch: calibrating with the real-code probe {} against the checkout {} \
         (upstream's own model and training step, random weights, synthetic batches: no weights \
         or data needed; DDP only)",
        probe.display(),
        std::path::absolute(&dir).unwrap_or(dir).display()
    );
    run_real_probe(&mut loaded, &probe);
    Ok((loaded, true))
}

/// When the profile trains with a checkout's `finetune.py` (it exists where the profile says) and
/// vla-launch's real-code probe is installed: the probe's path.
fn real_probe(loaded: &Loaded) -> Option<PathBuf> {
    let resolved = loaded.resolve(&env_var);
    let script = script_path(&resolved);
    let is_finetune = script.file_name().is_some_and(|n| n == "finetune.py");
    if !is_finetune || !script.is_file() {
        return None;
    }
    script_choice::installed(&crate::install::vla_launch_dir(), script_choice::REAL_PROBE)
}

/// The profile changed to run the real-code probe instead of its script, in the checkout (its
/// working directory, from which it imports finetune.py). The probe takes upstream's flags plus
/// `--gradient_checkpointing`, not `--use_fsdp` (so no FSDP addition around it), and reads no
/// data, weights, run directory or wandb: those flags get harmless values so that no `${VAR}`
/// of the profile has to be set.
fn run_real_probe(loaded: &mut Loaded, probe: &std::path::Path) {
    let script = &mut loaded.profile.script;
    script.path = probe.display().to_string();
    script.accepts.retain(|f| f == "gradient_checkpointing");
    script.fsdp_addition = FsdpAddition::Off;
    for (key, value) in [
        ("data_root_dir", "unused-by-the-real-code-probe"),
        ("run_root_dir", "${VLA_RUN_ROOT:-/tmp/vla-probe-runs}"),
        ("wandb_entity", "none"),
        ("wandb_project", "none"),
    ] {
        if loaded.profile.train.contains_key(key) {
            set_train(loaded, key, Value::from(value));
        }
    }
}

/// Sets the training flag `key` (in its place when the profile has it, else last).
fn set_train(loaded: &mut Loaded, key: &str, value: Value) {
    loaded.profile.train.insert(Value::from(key), value);
}

pub(in crate::app) fn describe_store(store: &Store, profile: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for entry in store.entries.iter().filter(|e| e.key.profile == profile) {
        let key = &entry.key;
        let _ = writeln!(out, "{}:", key.label());
        for o in &entry.observations {
            let _ = writeln!(
                out,
                "  batch {:>3}: predicted {}, observed {} ({:+.1}%)",
                o.batch_size,
                fmt_gib(o.predicted_peak_bytes),
                fmt_gib(o.observed_peak_bytes),
                (o.observed_peak_bytes as f64 / o.predicted_peak_bytes.max(1) as f64 - 1.0) * 100.0
            );
        }
        let sample = entry
            .observations
            .last()
            .map(|o| o.predicted_peak_bytes)
            .unwrap_or(0);
        if let (_, Some(info)) = store.corrected_peak(key, sample) {
            let _ = writeln!(out, "  correction: {}", info.describe());
        }
    }
    if out.is_empty() {
        let _ = writeln!(out, "no calibration for profile '{profile}' yet");
    }
    out
}
