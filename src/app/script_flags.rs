//! The check that every flag the launcher passes through is one the training script defines: a
//! typo in `--set train.x=` or after `--` is refused before the launch (warned in `plan` and
//! `--dry-run`) with the closest real flag. The script's flags come from `script_choice` (its
//! `--help`, else its source; cached in `script-flags.json`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::profile::{Loaded, ScriptArgs};
use crate::script_choice::{ADDITION_FLAGS, FlagsFrom, ScriptChoice, ScriptRun};

/// Flags the launcher itself passes for `--resume` (src/app/resume.rs): never refused, even when
/// a profile or `--` names them for a script whose flags were read some other way.
const LAUNCHER_FLAGS: &[&str] = &["resume", "resume_step", "vla_path", "run_id_override"];

/// The flags a launch may pass: the script's own, plus the FSDP addition's when it may run (the
/// addition's `--help` lists them and passes every other flag on to the script).
pub(super) fn known(choice: &ScriptChoice, script_flags: &BTreeSet<String>) -> BTreeSet<String> {
    let mut known = script_flags.clone();
    if let ScriptRun::Addition { .. } = choice.run {
        known.extend(ADDITION_FLAGS.iter().map(|f| f.to_string()));
    }
    known.extend(LAUNCHER_FLAGS.iter().map(|f| f.to_string()));
    known
}

/// One message per flag the script does not define: the profile's `train:` keys (after `--set`)
/// and the `--name` words passed through after `--`. Empty when all are known.
pub(super) fn unknown(
    loaded: &Loaded,
    sets: &[String],
    extra: &ScriptArgs,
    script: &Path,
    flags: &BTreeSet<String>,
    from: FlagsFrom,
) -> Vec<String> {
    let how = match from {
        FlagsFrom::Help => "its --help does not list it",
        FlagsFrom::Source => "its source defines no such field",
    };
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
            // The flag's name only: its value may be a secret (`--set train.hf_token=...`).
            .map(|_| format!("--set train.{key}=..."))
            .unwrap_or_else(|| format!("train.{key} in profile '{}'", loaded.name));
        out.push(format!(
            "{from}: {script_name} has no --{key} ({how}); {}fix the name or remove it",
            hint(key)
        ));
    }
    for name in extra.flag_names() {
        if name.is_empty() || flags.contains(name) || name == "help" {
            continue;
        }
        out.push(format!(
            "-- --{name}: {script_name} has no --{name} ({how}); {}fix the name or remove it",
            hint(name)
        ));
    }
    out
}
