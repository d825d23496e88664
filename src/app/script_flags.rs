//! The training script's own flags (from its `--help`), kept between runs, and the check that
//! every flag the launcher passes is one of them: a typo in `--set train.x=` or after `--` is
//! refused before the launch (warned in `plan`) with the closest real flag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::profile::Loaded;

const FILE_NAME: &str = "script-flags.json";

/// What `--help` listed for one script file, and which version of the file said it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    flags: BTreeSet<String>,
}

/// Looks up an environment variable (the app's `settings::env_var`).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn cache_path(env: Env) -> Option<PathBuf> {
    crate::calibration::default_path(env)
        .ok()?
        .parent()
        .map(|d| d.join(FILE_NAME))
}

fn stamp(script: &Path) -> Option<(PathBuf, u64, u128)> {
    let canonical = std::fs::canonicalize(script).ok()?;
    let meta = std::fs::metadata(&canonical).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((canonical, meta.len(), mtime.as_nanos()))
}

fn read_all(path: &Path) -> BTreeMap<PathBuf, Entry> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The flags the script's `--help` listed the last time it was asked, if the file is unchanged.
pub(super) fn cached(script: &Path, env: Env) -> Option<BTreeSet<String>> {
    let (canonical, size, mtime_ns) = stamp(script)?;
    let e = read_all(&cache_path(env)?).remove(&canonical)?;
    (e.size == size && e.mtime_ns == mtime_ns).then_some(e.flags)
}

/// Remembers what the script's `--help` listed (best effort: a cache, never an error).
pub(super) fn remember(script: &Path, flags: &BTreeSet<String>, env: Env) {
    let (Some(path), Some((canonical, size, mtime_ns))) = (cache_path(env), stamp(script)) else {
        return;
    };
    let dir = path.parent().expect("a file in a directory");
    // An explicit VLA_LAUNCH_CACHE_DIR that does not exist means "no cache" (tests use one).
    if env(crate::calibration::ENV_CACHE_DIR).is_some_and(|d| !d.is_empty()) && !dir.is_dir() {
        return;
    }
    let mut all = read_all(&path);
    all.insert(
        canonical,
        Entry {
            size,
            mtime_ns,
            flags: flags.clone(),
        },
    );
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&all).expect("plain values"))?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::debug!("script flags not cached in {}: {e}", path.display());
    }
}

/// One message per flag the script does not define: the profile's `train:` keys (after `--set`)
/// and the `--name` words passed through after `--`. Empty when all are known.
pub(super) fn unknown(
    loaded: &Loaded,
    sets: &[String],
    extra: &[String],
    script: &Path,
    flags: &BTreeSet<String>,
) -> Vec<String> {
    let script_name = script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| script.display().to_string());
    let hint = |name: &str| {
        crate::suggest::closest(name, flags.iter().map(String::as_str))
            .map(|k| format!("did you mean --{k}? "))
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for key in loaded.profile.train.keys().filter_map(|k| k.as_str()) {
        if flags.contains(key) {
            continue;
        }
        let from = sets
            .iter()
            .find(|s| s.split_once('=').map(|(k, _)| k.trim()) == Some(&format!("train.{key}")))
            .map(|s| format!("--set {s}"))
            .unwrap_or_else(|| format!("train.{key} in profile '{}'", loaded.name));
        out.push(format!(
            "{from}: {script_name} has no --{key} (its --help does not list it); {}fix the name or remove it",
            hint(key)
        ));
    }
    for word in extra {
        let Some(name) = word.strip_prefix("--") else {
            continue;
        };
        let name = name.split_once('=').map_or(name, |(n, _)| n);
        if name.is_empty() || flags.contains(name) || name == "help" {
            continue;
        }
        out.push(format!(
            "-- {word}: {script_name} has no --{name} (its --help does not list it); {}fix the name or remove it",
            hint(name)
        ));
    }
    out
}
