//! What every command resolves once, in three stages (docs/design.md, "The run path"):
//! 1. settle ([`resolve`], pure): the command line, the profile and the environment into
//!    [`Settings`] -- the profile's placeholders expanded, the words after `--` parsed, the pins,
//!    the topology, the model;
//! 2. gather ([`gather`]): this machine's facts -- the GPUs, the script's flags and its torch,
//!    the RAM, the calibration store -- behind the fakeable seams;
//! 3. plan ([`planned::plan`], pure): both into the immutable [`Planned`] commands take.

mod env;
mod gather;
mod planned;
mod resolve;

use tracing::warn;

use super::error::{AppError, Result};
use crate::cli::PlanningArgs;
use crate::launch::command::Inherited;
use crate::profile::{self, Loaded, ScriptArgs};

pub(super) use env::{env_var, script_path, store_path, user_config_dir};
pub(super) use gather::{choose_script, gather, learn_torch, missing_script};
pub(super) use planned::{Planned, Steer};
pub(super) use resolve::{fsdp_forced, resolve};

pub(super) fn load_profile(name: Option<&str>, sets: &[String]) -> Result<Loaded> {
    let name = name.ok_or_else(|| {
        AppError::usage("no profile given: pass --profile NAME (see `vla-launch profiles`) or --profile PATH.yaml",
        )
    })?;
    let installed = crate::install::installed_profiles_dir();
    let mut loaded = profile::load_with(name, user_config_dir().as_deref(), installed.as_deref())?;
    profile::apply_overrides(&mut loaded, sets)?;
    Ok(loaded)
}

/// Settles, gathers and plans what a command shares. `ask_script`: a real launch (it needs the
/// script and refuses flags it lacks). `plan_only`: a plan for a job that is not running (a
/// multi-node plan from a login node).
pub(super) fn resolve_plan(
    args: &PlanningArgs,
    extra: &[String],
    ask_script: bool,
    plan_only: bool,
) -> Result<Planned> {
    let script_args = ScriptArgs::parse(extra)?;
    let loaded = load_profile(args.profile.as_deref(), &args.sets)?;
    plan_loaded(args, script_args, loaded, ask_script, plan_only)
}

/// [`resolve_plan`] for a profile already loaded (calibrate changes it for its probe runs).
pub(super) fn plan_loaded(
    args: &PlanningArgs,
    script_args: ScriptArgs,
    loaded: Loaded,
    ask_script: bool,
    plan_only: bool,
) -> Result<Planned> {
    let inherited = Inherited::from_process();
    let settings = resolve(args, script_args, loaded, &env_var, &inherited, plan_only)?;
    let facts = gather(&settings, ask_script)?;
    planned::plan(settings, facts)
}

/// One warning for every unset placeholder (issue 26: four lines on every plan away from the
/// checkout were noise).
pub(super) fn warn_missing(missing: &[(String, String)]) {
    if missing.is_empty() {
        return;
    }
    let m = crate::profile::missing_vars(missing);
    warn!(
        "{} {} not set (used by {}): fine for a plan, a real launch refuses it; {}",
        m.vars, m.verb, m.fields, m.fix
    );
}

#[cfg(test)]
mod tests;
