//! Finding a profile (built-in, local directory, user directory, path), parsing and validating it.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::derive::{flag_bool, platform_of, show_value};
use super::error::ProfileError;
use super::schema::{Loaded, OPTIONAL_PLANNER_FLAGS, Origin, PLANNER_FLAGS, PRESETS, Profile};

/// Profiles compiled into the binary, so `--profile aloha` works from any directory.
/// Profiles compiled into the binary, so `--profile aloha` works from any directory.
pub const BUILTIN: &[(&str, &str)] = &[
    ("aloha", include_str!("../../launch-profiles/aloha.yaml")),
    ("libero", include_str!("../../launch-profiles/libero.yaml")),
    ("bridge", include_str!("../../launch-profiles/bridge.yaml")),
    (
        "aloha-probe",
        include_str!("../../launch-profiles/aloha-probe.yaml"),
    ),
    (
        "libero-probe",
        include_str!("../../launch-profiles/libero-probe.yaml"),
    ),
];

/// Finds a profile: a path; else `./launch-profiles/NAME.yaml`; else the user's config dir; else built-in.
pub fn load(name_or_path: &str, config_dir: Option<&Path>) -> Result<Loaded, ProfileError> {
    load_with(name_or_path, config_dir, None)
}

/// [`load`], with `installed`: a directory searched by name after the built-in profiles (the
/// profiles shipped with vla-launch that are not compiled in, src/install.rs).
pub fn load_with(
    name_or_path: &str,
    config_dir: Option<&Path>,
    installed: Option<&Path>,
) -> Result<Loaded, ProfileError> {
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
    // No file name is longer than 255 bytes (NAME_MAX): say so rather than list paths built
    // from it.
    if name_or_path.len() > 250 {
        return Err(ProfileError::NotFound {
            name: name_or_path.to_string(),
            searched: format!(
                "nothing (a name of {} bytes cannot be a file name)",
                name_or_path.len()
            ),
            hint: String::new(),
        });
    }
    let mut searched = Vec::new();
    let mut dirs = vec![PathBuf::from("launch-profiles")];
    if let Some(dir) = config_dir {
        dirs.push(dir.to_path_buf());
    }
    for dir in &dirs {
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
    if let Some(dir) = installed {
        let candidate = dir.join(format!("{name_or_path}.yaml"));
        if candidate.is_file() {
            return load_file(&candidate, name_or_path);
        }
        searched.push(candidate.display().to_string());
        dirs.push(dir.to_path_buf());
    }
    let mut known: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
    for dir in &dirs {
        known.extend(profile_names_in(dir));
    }
    let hint = crate::suggest::closest(name_or_path, known.iter().map(String::as_str))
        .map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default();
    Err(ProfileError::NotFound {
        name: name_or_path.to_string(),
        searched: searched.join(", "),
        hint,
    })
}

/// The names of the `NAME.yaml` files in `dir` (none when it cannot be read), sorted.
pub fn profile_names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(name.strip_suffix(".yaml")?.to_string())
        })
        .collect();
    names.sort();
    names
}

fn load_file(path: &Path, display: &str) -> Result<Loaded, ProfileError> {
    let text = crate::input::read_text(path).map_err(|cause| ProfileError::Read {
        path: display.to_string(),
        cause,
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

/// The largest LoRA rank accepted (the budget model reads it; OpenVLA-OFT uses 32).
pub const MAX_LORA_RANK: i64 = 1024;

/// A NUL byte cannot reach a child process (argv and environment are C strings): refuse it at
/// load, naming the field, instead of failing the launch later.
fn check_no_nul(p: &Profile, place: &dyn Fn(&str) -> String) -> Result<(), ProfileError> {
    fn walk(v: &Value, at: &mut Vec<String>) -> Option<String> {
        match v {
            Value::String(s) if s.contains('\0') => Some(at.join(".")),
            Value::Sequence(items) => items.iter().enumerate().find_map(|(i, item)| {
                at.push(i.to_string());
                let r = walk(item, at);
                at.pop();
                r
            }),
            Value::Mapping(m) => m.iter().find_map(|(k, item)| {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => super::derive::render_value(other),
                };
                if name.contains('\0') {
                    return Some(
                        at.iter()
                            .chain([&name.replace('\0', "\\0")])
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("."),
                    );
                }
                at.push(name);
                let r = walk(item, at);
                at.pop();
                r
            }),
            Value::Tagged(t) => walk(&t.value, at),
            _ => None,
        }
    }
    let Ok(tree) = serde_yaml::to_value(p) else {
        return Ok(());
    };
    match walk(&tree, &mut Vec::new()) {
        Some(field) => Err(ProfileError::invalid(
            place(&field),
            "holds a NUL byte (\\0), which no command line or environment can carry; remove it",
        )),
        None => Ok(()),
    }
}

/// Parses and validates a profile's text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
    // CR-only (old Mac) and CRLF line endings read like LF ones (YAML takes all three as line
    // breaks; the emptiness check and `locate` below count lines).
    let normalized;
    let text = if text.contains('\r') {
        normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        text
    };
    if text.trim().is_empty() || text.lines().all(|l| l.trim_start().starts_with('#')) {
        return Err(ProfileError::invalid(
            file,
            "the profile is empty; it needs at least `script:` and `train:` (see launch-profiles/aloha.yaml)",
        ));
    }
    // The YAML parser slows down faster than linearly with nesting: bound it first.
    if let Some((line, depth)) = crate::input::yaml_too_deep(text, crate::input::MAX_YAML_DEPTH) {
        return Err(ProfileError::invalid(
            format!("{file}:{line}"),
            format!(
                "nested {depth} levels deep or more (a profile nests 3; at most {} are read); this is not a launch profile",
                crate::input::MAX_YAML_DEPTH
            ),
        ));
    }
    // Something that is not a profile at all (a password file, a script) is said to be so
    // without quoting it.
    if let Ok(tree) = serde_yaml::from_str::<Value>(text) {
        let known = ["script", "train", "model", "planning", "env", "description"];
        let is_profile = tree.as_mapping().is_some_and(|m| {
            m.keys()
                .any(|k| k.as_str().is_some_and(|k| known.contains(&k)))
        });
        if !is_profile {
            return Err(ProfileError::invalid(
                file,
                "this is not a launch profile: it has none of the keys script, train, model, planning, env (see launch-profiles/aloha.yaml)",
            ));
        }
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
pub(super) fn explain_serde(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    // What serde quotes (`...`) is input: at most a short excerpt of it.
    let msg: String = msg
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && part.chars().count() > 40 {
                let head: String = part.chars().take(40).collect();
                format!("{head}... ({} bytes)", part.len())
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("`");
    msg.replace("invalid value: integer `-", "negative value `-")
        .replace("invalid type: integer `-", "negative value `-")
        .replace("expected u32", "expected a positive whole number")
}

/// `file:line:col` of a dotted key such as `train.lora_rank`, found by indentation.
pub(super) fn locate(text: &str, file: &str, dotted: &str) -> String {
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

pub(super) fn validate(p: &Profile, place: &dyn Fn(&str) -> String) -> Result<(), ProfileError> {
    validate_script_and_model(p, place)?;
    validate_planning(p, place)?;
    validate_train(p, place)
}

/// `script:` and `model:`, and no NUL byte anywhere.
fn validate_script_and_model(
    p: &Profile,
    place: &dyn Fn(&str) -> String,
) -> Result<(), ProfileError> {
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
    check_no_nul(p, place)?;
    Ok(())
}

/// `planning:`.
fn validate_planning(p: &Profile, place: &dyn Fn(&str) -> String) -> Result<(), ProfileError> {
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
    Ok(())
}

/// `train:`: flag names and types, what the budget model can describe, the platform words.
fn validate_train(p: &Profile, place: &dyn Fn(&str) -> String) -> Result<(), ProfileError> {
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
                format!(
                    "{} is not a flag name (letters, digits and '_' only)",
                    crate::input::excerpt(key, 40)
                ),
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
        let (derived, _) = platform_of(p, &super::script_args::ScriptArgs::default());
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
    if key == "lora_rank" && value.as_i64().is_some_and(|n| n > MAX_LORA_RANK) {
        return Err(format!(
            "'lora_rank' must be from 1 to {MAX_LORA_RANK} (OpenVLA-OFT uses 32), found {}",
            show_value(value)
        ));
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
