//! What the profile's training flags say to the budget model: platform, images, LoRA, ...

use serde_yaml::{Mapping, Value};

use crate::model::{ActionHead, ModelSpec, Platform};

use super::schema::Profile;
use super::script_args::ScriptArgs;

pub(super) fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::String(s) => crate::input::excerpt(s, 40),
        other => render_value(other),
    }
}

/// A flag value as draccus expects it on the command line (`True`/`False` for booleans).
pub fn render_value(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

pub(super) fn flag(train: &Mapping, key: &str) -> Option<Value> {
    train.get(key).cloned()
}

pub(super) fn flag_bool(train: &Mapping, key: &str) -> Option<bool> {
    flag(train, key).and_then(|v| v.as_bool())
}

pub(super) fn flag_u32(train: &Mapping, key: &str) -> Option<u32> {
    flag(train, key)
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
}

/// The platform whose constants the script will use, by the same word search it does, and the word.
pub fn platform_of(p: &Profile, extra_args: &ScriptArgs) -> (Platform, Option<String>) {
    let mut words: Vec<String> = p.train.values().map(render_value).collect();
    words.extend(extra_args.raw().iter().cloned());
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    match Platform::detect(&refs) {
        Some((platform, word)) => (platform, Some(word.to_string())),
        None => (Platform::DEFAULT, None),
    }
}

/// The budget model's view of this profile (upstream defaults where a flag is absent).
pub fn model_spec(p: &Profile, extra_args: &ScriptArgs) -> ModelSpec {
    let (platform, _) = platform_of(p, extra_args);
    let t = &p.train;
    let diffusion = flag_bool(t, "use_diffusion").unwrap_or(false);
    ModelSpec {
        preset: p.model.preset.clone(),
        num_images: flag_u32(t, "num_images_in_input").unwrap_or(1),
        use_film: flag_bool(t, "use_film").unwrap_or(false),
        use_proprio: flag_bool(t, "use_proprio").unwrap_or(false),
        action_head: if diffusion {
            ActionHead::Diffusion
        } else {
            ActionHead::L1Regression
        },
        num_diffusion_steps_train: flag_u32(t, "num_diffusion_steps_train").unwrap_or(50),
        action_chunk: platform.action_chunk(),
        action_dim: platform.action_dim(),
        proprio_dim: platform.proprio_dim(),
        lora_rank: flag_u32(t, "lora_rank").unwrap_or(32),
        lora_dtype: p.model.lora_dtype,
        prompt_tokens: p.model.prompt_tokens,
        padded_batches: p.model.padded_batches,
    }
}

/// `merge_lora_during_training` as the script will see it (upstream default True).
pub fn merges_lora_during_training(p: &Profile) -> bool {
    flag_bool(&p.train, "merge_lora_during_training").unwrap_or(true)
}
