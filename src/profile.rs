//! Launch profiles (YAML): lookup, `--set` overrides, `${VAR}` placeholders, validation.
//!
//! A profile is what `finetune_aloha.sh` was: the script, its fixed training flags, the model the budget
//! model needs, and the planning policy. The training flags are the single source of truth for what
//! they describe (images, FiLM, proprio, LoRA rank, platform words): the model description only adds
//! what the flags do not say (architecture preset, adapter dtype, prompt length).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::budget::{Allocator, Strategy};
use crate::model::{ActionHead, Dtype, ModelSpec, Platform};

/// Profiles compiled into the binary, so `--profile aloha` works from any directory.
pub const BUILTIN: &[(&str, &str)] = &[
    ("aloha", include_str!("../launch-profiles/aloha.yaml")),
    ("libero", include_str!("../launch-profiles/libero.yaml")),
    ("bridge", include_str!("../launch-profiles/bridge.yaml")),
    (
        "aloha-probe",
        include_str!("../launch-profiles/aloha-probe.yaml"),
    ),
    (
        "libero-probe",
        include_str!("../launch-profiles/libero-probe.yaml"),
    ),
];

/// Training flags the planner owns: a profile may not fix them in `train:`.
pub const PLANNER_FLAGS: &[&str] = &[
    "batch_size",
    "grad_accumulation_steps",
    "use_fsdp",
    "gradient_checkpointing",
];

/// Planner flags a script may or may not accept (upstream finetune.py accepts neither).
pub const OPTIONAL_PLANNER_FLAGS: &[&str] = &["use_fsdp", "gradient_checkpointing"];

pub use crate::model::PRESETS;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// One line shown by `vla-launch profiles`.
    #[serde(default)]
    pub description: String,
    pub script: ScriptSection,
    #[serde(default)]
    pub model: ModelSection,
    /// Fixed training flags, in order, as `--name value` for the script (draccus names).
    pub train: Mapping,
    #[serde(default)]
    pub planning: PlanningSection,
    /// Extra environment variables for the training processes.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScriptSection {
    /// The training script, relative to `workdir`.
    pub path: String,
    /// Where torchrun is started: the OpenVLA-OFT checkout.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    #[serde(default = "default_python")]
    pub python: String,
    #[serde(default = "default_torchrun")]
    pub torchrun: String,
    /// Which optional planner flags (`use_fsdp`, `gradient_checkpointing`) the script takes.
    /// Confirmed with `python SCRIPT --help` before a real launch.
    #[serde(default)]
    pub accepts: Vec<String>,
    /// torchrun --max-restarts on several nodes.
    #[serde(default)]
    pub max_restarts: u32,
}

fn default_workdir() -> String {
    "${OPENVLA_OFT_DIR:-.}".into()
}
fn default_python() -> String {
    "python3".into()
}
fn default_torchrun() -> String {
    "torchrun".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default = "default_preset")]
    pub preset: String,
    /// peft 0.11.1 (pinned by OpenVLA-OFT) keeps adapters bf16; peft >= 0.12 upcasts them to fp32.
    #[serde(default = "default_lora_dtype")]
    pub lora_dtype: Dtype,
    /// Text prompt tokens ("In: What action should the robot take to ...?\nOut:").
    #[serde(default = "default_prompt_tokens")]
    pub prompt_tokens: u32,
    /// Platform whose constants the script will use; derived from the flags when absent.
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            preset: default_preset(),
            lora_dtype: default_lora_dtype(),
            prompt_tokens: default_prompt_tokens(),
            platform: None,
        }
    }
}

fn default_preset() -> String {
    "openvla-7b".into()
}
fn default_lora_dtype() -> Dtype {
    Dtype::Bf16
}
fn default_prompt_tokens() -> u32 {
    // 23 gives the measured sequence lengths exactly: ALOHA 1144 tokens, LIBERO 594.
    23
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanningSection {
    /// Minimum global batch (batch x GPUs x nodes x accumulation); OpenVLA-OFT asks for >= 16.
    #[serde(default = "default_min_global_batch")]
    pub min_global_batch: u32,
    #[serde(default = "default_strategies")]
    pub strategies: Vec<Strategy>,
    /// Safety margin: the larger of this fraction of the GPU's memory and `margin_min_gib`.
    #[serde(default = "default_margin_fraction")]
    pub margin_fraction: f64,
    #[serde(default = "default_margin_min_gib")]
    pub margin_min_gib: f64,
    /// Largest per-GPU batch the search tries.
    #[serde(default = "default_max_batch")]
    pub max_batch_size: u32,
    /// Allocator the launcher sets unless PYTORCH_CUDA_ALLOC_CONF is already set.
    #[serde(default = "default_allocator")]
    pub allocator: Allocator,
    /// Optional pins (the command line's `--batch-size` etc. win over these).
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub grad_accumulation_steps: Option<u32>,
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
}

impl Default for PlanningSection {
    fn default() -> Self {
        PlanningSection {
            min_global_batch: default_min_global_batch(),
            strategies: default_strategies(),
            margin_fraction: default_margin_fraction(),
            margin_min_gib: default_margin_min_gib(),
            max_batch_size: default_max_batch(),
            allocator: default_allocator(),
            batch_size: None,
            grad_accumulation_steps: None,
            strategy: None,
            gradient_checkpointing: None,
        }
    }
}

fn default_min_global_batch() -> u32 {
    16
}
fn default_strategies() -> Vec<Strategy> {
    vec![Strategy::Ddp, Strategy::Fsdp]
}
fn default_margin_fraction() -> f64 {
    0.05
}
fn default_margin_min_gib() -> f64 {
    1.0
}
fn default_max_batch() -> u32 {
    64
}
fn default_allocator() -> Allocator {
    Allocator::ExpandableSegments
}

/// Where a profile was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Origin {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::BuiltIn => write!(f, "built into vla-launch"),
        }
    }
}

/// A profile after lookup, overrides and validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub name: String,
    pub origin: Origin,
    pub profile: Profile,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "profile '{name}' not found: looked for {searched}; run `vla-launch profiles` to list the known ones, or pass a path to a .yaml file"
    )]
    NotFound { name: String, searched: String },
    #[error("{path}: is a directory, not a profile; pass a .yaml file such as {path}/aloha.yaml")]
    IsDirectory { path: String },
    #[error("{path}: cannot read the profile: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{place}: {message}")]
    Invalid { place: String, message: String },
    #[error("--set {arg}: {message}")]
    BadOverride { arg: String, message: String },
    #[error(
        "{place}: environment variable{s} {vars} not set; export {example} (or `--set {key}=VALUE`) before launching",
        s = if vars.contains(',') { "s" } else { "" }
    )]
    MissingEnv {
        place: String,
        vars: String,
        example: String,
        key: String,
    },
}

impl ProfileError {
    fn invalid(place: impl Into<String>, message: impl Into<String>) -> Self {
        ProfileError::Invalid {
            place: place.into(),
            message: message.into(),
        }
    }
}

/// Finds a profile: a path; else `./launch-profiles/NAME.yaml`; else the user's config dir; else built-in.
pub fn load(name_or_path: &str, config_dir: Option<&Path>) -> Result<Loaded, ProfileError> {
    let as_path = Path::new(name_or_path);
    let looks_like_path = name_or_path.contains('/')
        || name_or_path.ends_with(".yaml")
        || name_or_path.ends_with(".yml");
    if looks_like_path || as_path.exists() {
        if as_path.is_dir() {
            return Err(ProfileError::IsDirectory {
                path: name_or_path.trim_end_matches('/').to_string(),
            });
        }
        return load_file(as_path, name_or_path);
    }
    let mut searched = Vec::new();
    let mut dirs = vec![PathBuf::from("launch-profiles")];
    if let Some(dir) = config_dir {
        dirs.push(dir.to_path_buf());
    }
    for dir in dirs {
        let candidate = dir.join(format!("{name_or_path}.yaml"));
        if candidate.is_file() {
            return load_file(&candidate, name_or_path);
        }
        searched.push(candidate.display().to_string());
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
        let profile = parse(text, &format!("<built-in {name_or_path}>"))?;
        return Ok(Loaded {
            name: name_or_path.to_string(),
            origin: Origin::BuiltIn,
            profile,
        });
    }
    searched.push(format!(
        "the built-in profiles ({})",
        BUILTIN
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Err(ProfileError::NotFound {
        name: name_or_path.to_string(),
        searched: searched.join(", "),
    })
}

fn load_file(path: &Path, display: &str) -> Result<Loaded, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: display.to_string(),
        source,
    })?;
    let profile = parse(&text, display)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| display.to_string());
    Ok(Loaded {
        name,
        origin: Origin::File(path.to_path_buf()),
        profile,
    })
}

/// Parses and validates a profile's text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
    if text.trim().is_empty() || text.lines().all(|l| l.trim_start().starts_with('#')) {
        return Err(ProfileError::invalid(
            file,
            "the profile is empty; it needs at least `script:` and `train:` (see launch-profiles/aloha.yaml)",
        ));
    }
    let profile: Profile = serde_yaml::from_str(text).map_err(|e| {
        let place = match e.location() {
            Some(loc) => format!("{file}:{}:{}", loc.line(), loc.column()),
            None => file.to_string(),
        };
        ProfileError::invalid(place, explain_serde(&e.to_string()))
    })?;
    validate(&profile, &|key: &str| locate(text, file, key))?;
    Ok(profile)
}

/// serde's messages end with " at line L column C"; the place is printed already.
fn explain_serde(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    msg.replace("invalid value: integer `-", "negative value `-")
        .replace("invalid type: integer `-", "negative value `-")
        .replace("expected u32", "expected a positive whole number")
}

/// `file:line:col` of a dotted key such as `train.lora_rank`, found by indentation.
fn locate(text: &str, file: &str, dotted: &str) -> String {
    let mut parts = dotted.split('.').peekable();
    let mut indent_floor: Option<usize> = None;
    let mut found: Option<(usize, usize)> = None;
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    while let Some(part) = parts.next() {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(floor) = indent_floor
                && indent <= floor
                && i > start
            {
                break;
            }
            if trimmed.starts_with(&format!("{part}:")) {
                hit = Some((i, indent));
                break;
            }
        }
        match hit {
            Some((i, indent)) => {
                found = Some((i + 1, indent + 1));
                indent_floor = Some(indent);
                start = i + 1;
            }
            None => break,
        }
        if parts.peek().is_none() {
            break;
        }
    }
    match found {
        Some((line, col)) => format!("{file}:{line}:{col} ({dotted})"),
        None => format!("{file} ({dotted})"),
    }
}

fn validate(p: &Profile, place: &dyn Fn(&str) -> String) -> Result<(), ProfileError> {
    if p.script.path.trim().is_empty() {
        return Err(ProfileError::invalid(
            place("script.path"),
            "the training script path is empty; set it to vla-scripts/finetune.py",
        ));
    }
    for flag in &p.script.accepts {
        if !OPTIONAL_PLANNER_FLAGS.contains(&flag.as_str()) {
            return Err(ProfileError::invalid(
                place("script.accepts"),
                format!(
                    "unknown planner flag '{flag}'; valid: {}",
                    OPTIONAL_PLANNER_FLAGS.join(", ")
                ),
            ));
        }
    }
    if !PRESETS.contains(&p.model.preset.as_str()) {
        return Err(ProfileError::invalid(
            place("model.preset"),
            format!(
                "unknown architecture preset '{}'; valid: {}",
                p.model.preset,
                PRESETS.join(", ")
            ),
        ));
    }
    if p.model.prompt_tokens == 0 || p.model.prompt_tokens > 512 {
        return Err(ProfileError::invalid(
            place("model.prompt_tokens"),
            format!(
                "{} prompt tokens is not plausible; OpenVLA-OFT prompts are about 20-30 tokens",
                p.model.prompt_tokens
            ),
        ));
    }
    let pl = &p.planning;
    if pl.min_global_batch == 0 {
        return Err(ProfileError::invalid(
            place("planning.min_global_batch"),
            "must be at least 1 (OpenVLA-OFT recommends 16)",
        ));
    }
    if pl.strategies.is_empty() {
        return Err(ProfileError::invalid(
            place("planning.strategies"),
            "no strategy allowed; list at least one of: ddp, fsdp",
        ));
    }
    if !(0.0..0.5).contains(&pl.margin_fraction) {
        return Err(ProfileError::invalid(
            place("planning.margin_fraction"),
            format!(
                "{} is outside 0.0..0.5; the default is 0.05",
                pl.margin_fraction
            ),
        ));
    }
    if !(0.0..64.0).contains(&pl.margin_min_gib) {
        return Err(ProfileError::invalid(
            place("planning.margin_min_gib"),
            format!(
                "{} is outside 0..64 GiB; the default is 1",
                pl.margin_min_gib
            ),
        ));
    }
    if pl.max_batch_size == 0 || pl.max_batch_size > 1024 {
        return Err(ProfileError::invalid(
            place("planning.max_batch_size"),
            "must be between 1 and 1024",
        ));
    }
    for (key, pin) in [
        ("planning.batch_size", pl.batch_size),
        (
            "planning.grad_accumulation_steps",
            pl.grad_accumulation_steps,
        ),
    ] {
        if pin == Some(0) {
            return Err(ProfileError::invalid(place(key), "must be at least 1"));
        }
    }
    for (key, value) in &p.train {
        let Some(key) = key.as_str() else {
            return Err(ProfileError::invalid(
                place("train"),
                format!("flag names must be strings, found {key:?}"),
            ));
        };
        let at = format!("train.{key}");
        if PLANNER_FLAGS.contains(&key) {
            return Err(ProfileError::invalid(
                place(&at),
                format!(
                    "'{key}' is chosen by the planner; remove it, or pin it with planning.{key} or --{}",
                    key.replace('_', "-")
                        .replace("grad-accumulation-steps", "grad-accum")
                ),
            ));
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ProfileError::invalid(
                place(&at),
                format!("'{key}' is not a flag name (letters, digits and '_' only)"),
            ));
        }
        check_flag_type(key, value).map_err(|m| ProfileError::invalid(place(&at), m))?;
    }
    if flag_bool(&p.train, "use_lora") == Some(false) {
        return Err(ProfileError::invalid(
            place("train.use_lora"),
            "full fine-tuning (use_lora False) is not modelled by the budget model; use LoRA",
        ));
    }
    let l1 = flag_bool(&p.train, "use_l1_regression").unwrap_or(true);
    let diffusion = flag_bool(&p.train, "use_diffusion").unwrap_or(false);
    if l1 == diffusion {
        return Err(ProfileError::invalid(
            place("train.use_diffusion"),
            "exactly one of use_l1_regression and use_diffusion must be True",
        ));
    }
    if let Some(explicit) = p.model.platform {
        let (derived, _) = platform_of(p, &[]);
        if derived != explicit {
            return Err(ProfileError::invalid(
                place("model.platform"),
                format!(
                    "says {explicit:?} but the script will pick {derived:?} constants from the words in its arguments; put the platform word in dataset_name or run_id_note"
                ),
            ));
        }
    }
    Ok(())
}

/// Types of the upstream flags whose values the budget model reads or users commonly get wrong.
fn check_flag_type(key: &str, value: &Value) -> Result<(), String> {
    const BOOLS: &[&str] = &[
        "use_l1_regression",
        "use_diffusion",
        "use_film",
        "use_proprio",
        "use_val_set",
        "save_latest_checkpoint_only",
        "resume",
        "image_aug",
        "use_lora",
        "merge_lora_during_training",
    ];
    const POSITIVE_INTS: &[&str] = &[
        "num_images_in_input",
        "max_steps",
        "lora_rank",
        "num_diffusion_steps_train",
        "shuffle_buffer_size",
        "num_steps_before_decay",
        "save_freq",
        "val_freq",
        "wandb_log_freq",
        "diffusion_sample_freq",
    ];
    if BOOLS.contains(&key) && !value.is_bool() {
        return Err(format!(
            "'{key}' must be true or false, found {}",
            show_value(value)
        ));
    }
    if POSITIVE_INTS.contains(&key) {
        match value.as_i64() {
            Some(n) if n >= 1 => {}
            _ => {
                return Err(format!(
                    "'{key}' must be a positive whole number, found {}",
                    show_value(value)
                ));
            }
        }
    }
    if key == "num_images_in_input" && value.as_i64().is_some_and(|n| n > 3) {
        return Err(format!(
            "OpenVLA-OFT takes 1 to 3 images (third-person + 2 wrist), found {}",
            show_value(value)
        ));
    }
    if key == "learning_rate" && !value.as_f64().is_some_and(|x| x > 0.0 && x < 1.0) {
        return Err(format!(
            "'learning_rate' must be a number in (0, 1), found {}",
            show_value(value)
        ));
    }
    if value.is_mapping() || value.is_sequence() {
        return Err(format!(
            "'{key}' must be a single value (string, number or boolean), found a list or mapping"
        ));
    }
    Ok(())
}

fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::String(s) => format!("\"{s}\""),
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

fn flag(train: &Mapping, key: &str) -> Option<Value> {
    train.get(key).cloned()
}

fn flag_bool(train: &Mapping, key: &str) -> Option<bool> {
    flag(train, key).and_then(|v| v.as_bool())
}

fn flag_u32(train: &Mapping, key: &str) -> Option<u32> {
    flag(train, key)
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
}

/// The platform whose constants the script will use, by the same word search it does, and the word.
pub fn platform_of(p: &Profile, extra_args: &[String]) -> (Platform, Option<String>) {
    let mut words: Vec<String> = p.train.values().map(render_value).collect();
    words.extend(extra_args.iter().cloned());
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    match Platform::detect(&refs) {
        Some((platform, word)) => (platform, Some(word.to_string())),
        None => (Platform::DEFAULT, None),
    }
}

/// The budget model's view of this profile (upstream defaults where a flag is absent).
pub fn model_spec(p: &Profile, extra_args: &[String]) -> ModelSpec {
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
    }
}

/// `merge_lora_during_training` as the script will see it (upstream default True).
pub fn merges_lora_during_training(p: &Profile) -> bool {
    flag_bool(&p.train, "merge_lora_during_training").unwrap_or(true)
}

/// Applies `--set key=value` (dotted path, YAML scalar value) to the profile, re-validating.
pub fn apply_overrides(loaded: &mut Loaded, sets: &[String]) -> Result<(), ProfileError> {
    if sets.is_empty() {
        return Ok(());
    }
    let mut tree =
        serde_yaml::to_value(&loaded.profile).map_err(|e| ProfileError::BadOverride {
            arg: String::new(),
            message: e.to_string(),
        })?;
    for arg in sets {
        let bad = |message: String| ProfileError::BadOverride {
            arg: arg.clone(),
            message,
        };
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected key=value, e.g. --set train.max_steps=1000".into()))?;
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(bad(format!(
                "'{key}' is not a dotted field path such as train.max_steps"
            )));
        }
        let value: Value = if raw.is_empty() {
            Value::String(String::new())
        } else {
            serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        set_path(&mut tree, &path, value).map_err(bad)?;
    }
    let profile: Profile = serde_yaml::from_value(tree).map_err(|e| ProfileError::BadOverride {
        arg: sets.join(" "),
        message: explain_serde(&e.to_string()),
    })?;
    let where_ = format!("{} after --set", loaded.origin);
    validate(&profile, &|k: &str| format!("{where_} ({k})"))?;
    loaded.profile = profile;
    Ok(())
}

fn set_path(tree: &mut Value, path: &[&str], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("non-empty path");
    let Value::Mapping(map) = tree else {
        return Err(format!(
            "cannot set '{first}' inside a value that is not a mapping"
        ));
    };
    if rest.is_empty() {
        map.insert(Value::String(first.to_string()), value);
        return Ok(());
    }
    let entry = map
        .entry(Value::String(first.to_string()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    set_path(entry, rest, value)
}

/// Result of expanding `${VAR}` / `${VAR:-default}` in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub value: String,
    /// Variables that were unset (and had no default); those stay as written.
    pub missing: Vec<String>,
}

/// Expands `${VAR}` and `${VAR:-default}`; unset variables without a default stay as written.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Expanded {
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                out.push_str(&rest[start..start + 2 + end + 1]);
                missing.push(name.to_string());
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Expanded {
        value: out,
        missing,
    }
}

/// A `--name value` pair for the script.
pub type Flag = (String, String);

/// The profile's fixed flags, placeholders expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFlags {
    pub flags: Vec<Flag>,
    /// Placeholders left unset, as (field, variable).
    pub missing: Vec<(String, String)>,
}

/// The profile's fixed flags as (`--name`, value) pairs with placeholders expanded, plus the
/// placeholders left unset.
pub fn resolved_flags(p: &Profile, env: &dyn Fn(&str) -> Option<String>) -> ResolvedFlags {
    let mut flags = Vec::new();
    let mut missing = Vec::new();
    for (k, v) in &p.train {
        let key = k.as_str().unwrap_or_default();
        let e = expand(&render_value(v), env);
        for var in e.missing {
            missing.push((format!("train.{key}"), var));
        }
        flags.push((format!("--{key}"), e.value));
    }
    ResolvedFlags { flags, missing }
}

/// Refuses unset placeholders (a real launch), naming the field and the variable.
pub fn require_env(missing: &[(String, String)], origin: &Origin) -> Result<(), ProfileError> {
    if missing.is_empty() {
        return Ok(());
    }
    let vars: Vec<&str> = missing.iter().map(|(_, v)| v.as_str()).collect();
    let example = missing
        .iter()
        .map(|(_, v)| format!("{v}=..."))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ProfileError::MissingEnv {
        place: format!(
            "{origin} ({})",
            missing
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        vars: vars.join(", "),
        example,
        key: missing[0].0.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn builtin_profiles_parse_and_validate() {
        for (name, text) in BUILTIN {
            let p = parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!p.description.is_empty(), "{name} has no description");
        }
    }

    #[test]
    fn expand_table() {
        let env = env_of(&[("A", "x"), ("EMPTY", "")]);
        let cases = [
            ("${A}/b", "x/b", vec![]),
            ("${B}/b", "${B}/b", vec!["B"]),
            ("${B:-def}", "def", vec![]),
            ("${EMPTY:-d}", "d", vec![]),
            ("no vars", "no vars", vec![]),
            ("${A}${B}", "x${B}", vec!["B"]),
            ("${unterminated", "${unterminated", vec![]),
        ];
        for (input, value, missing) in cases {
            let e = expand(input, &env);
            assert_eq!(e.value, value, "{input}");
            assert_eq!(e.missing, missing, "{input}");
        }
    }

    #[test]
    fn aloha_model_spec_follows_flags() {
        let p = parse(BUILTIN[0].1, "aloha").unwrap();
        let spec = model_spec(&p, &[]);
        assert_eq!(spec.num_images, 3);
        assert!(spec.use_film && spec.use_proprio);
        assert_eq!((spec.action_chunk, spec.action_dim), (25, 14));
        assert_eq!(spec.lora_rank, 32);
    }

    #[test]
    fn overrides_change_fields_and_revalidate() {
        let mut l = load("aloha", None).unwrap();
        apply_overrides(
            &mut l,
            &[
                "train.max_steps=1000".into(),
                "train.lora_rank=8".into(),
                "planning.min_global_batch=32".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            l.profile.train.get("max_steps").unwrap().as_u64(),
            Some(1000)
        );
        assert_eq!(model_spec(&l.profile, &[]).lora_rank, 8);
        assert_eq!(l.profile.planning.min_global_batch, 32);
        let err = apply_overrides(&mut l, &["train.lora_rank=-1".into()]).unwrap_err();
        assert!(err.to_string().contains("lora_rank"), "{err}");
        let err = apply_overrides(&mut l, &["nonsense".into()]).unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");
        let err = apply_overrides(&mut l, &["planning.bogus=1".into()]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn locate_finds_nested_keys() {
        let text = "script:\n  path: x\ntrain:\n  lora_rank: 3\n  max_steps: 5\n";
        assert_eq!(
            locate(text, "f.yaml", "train.max_steps"),
            "f.yaml:5:3 (train.max_steps)"
        );
        assert_eq!(
            locate(text, "f.yaml", "script.path"),
            "f.yaml:2:3 (script.path)"
        );
        assert_eq!(locate(text, "f.yaml", "planning.x"), "f.yaml (planning.x)");
    }

    #[test]
    fn missing_env_names_field_and_variable() {
        let p = parse(BUILTIN[0].1, "aloha").unwrap();
        let missing = resolved_flags(&p, &|_| None).missing;
        let vars: Vec<&str> = missing.iter().map(|(_, v)| v.as_str()).collect();
        assert!(vars.contains(&"VLA_DATA_ROOT") && vars.contains(&"VLA_RUN_ROOT"));
        let err = require_env(&missing, &Origin::BuiltIn)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train.data_root_dir") && err.contains("export VLA_DATA_ROOT="),
            "{err}"
        );
        let env = env_of(&[
            ("VLA_DATA_ROOT", "/d"),
            ("VLA_RUN_ROOT", "/r"),
            ("WANDB_ENTITY", "e"),
            ("WANDB_PROJECT", "p"),
        ]);
        let ResolvedFlags { flags, missing } = resolved_flags(&p, &env);
        assert!(missing.is_empty(), "{missing:?}");
        assert!(flags.contains(&("--data_root_dir".into(), "/d".into())));
        assert!(flags.contains(&("--use_film".into(), "True".into())));
    }
}
