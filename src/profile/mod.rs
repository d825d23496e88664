//! Launch profiles (YAML): lookup, `--set` overrides, `${VAR}` placeholders, validation.
//!
//! A profile is what `finetune_aloha.sh` was: the script, its fixed training flags, the model the budget
//! model needs, and the planning policy. The training flags are the single source of truth for what
//! they describe (images, FiLM, proprio, LoRA rank, platform words): the model description only adds
//! what the flags do not say (architecture preset, adapter dtype, prompt length).
//!
//! One file per job: `schema` (the YAML's types), `load` (lookup, parsing, validation),
//! `overrides` (`--set`), `derive` (the budget model's view of the training flags), `env`
//! (`${VAR}` placeholders and `Loaded::resolve`), `script_args` (the words after `--`, parsed once).

mod derive;
mod env;
mod error;
mod load;
mod overrides;
mod schema;
mod script_args;

pub use derive::{merges_lora_during_training, model_spec, platform_of, render_value};
pub use env::{
    Expanded, Flag, MissingVars, Resolved, ResolvedFlags, expand, missing_vars, require_env,
    resolved_flags,
};
pub use error::ProfileError;
pub use load::{BUILTIN, load, load_with, parse, profile_names_in};
pub use overrides::apply_overrides;
pub use schema::{
    FsdpAddition, Loaded, ModelSection, OPTIONAL_PLANNER_FLAGS, Origin, PLANNER_FLAGS, PRESETS,
    PlanningSection, Profile, ScriptSection,
};
pub use script_args::ScriptArgs;

#[cfg(test)]
mod tests;
