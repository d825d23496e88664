//! `--set key=value` overrides, re-validated like the file itself.

use serde_yaml::{Mapping, Value};

use super::error::ProfileError;
use super::load::{explain_serde, validate};
use super::schema::{Loaded, Profile};

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
