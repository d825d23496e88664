//! `vla-launch profiles`: the local, user and built-in profiles.

use std::path::PathBuf;

use crate::app::error::{ExitCode, Result};
use crate::app::settings::user_config_dir;
use crate::println_lossy as println;
use crate::profile;

pub(in crate::app) fn cmd_profiles() -> Result<ExitCode> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut dirs = vec![PathBuf::from("launch-profiles")];
    dirs.extend(user_config_dir());
    // The built-in profiles come before the installed copies of the same files.
    let builtin_at = dirs.len();
    dirs.extend(crate::install::installed_profiles_dir());
    for (i, dir) in dirs.into_iter().enumerate() {
        if i == builtin_at {
            add_builtin(&mut rows, &mut seen);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !seen.insert(name.clone()) {
                continue;
            }
            let desc = match profile::load(&path.display().to_string(), None) {
                Ok(l) => l.profile.description,
                Err(e) => format!("INVALID: {e}"),
            };
            rows.push((name, path.display().to_string(), desc));
        }
    }
    add_builtin(&mut rows, &mut seen);
    let w_name = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let w_from = rows.iter().map(|r| r.1.len()).max().unwrap_or(4).max(4);
    println!("{:w_name$}  {:w_from$}  DESCRIPTION", "NAME", "FROM");
    for (name, from, desc) in rows {
        println!("{name:w_name$}  {from:w_from$}  {desc}");
    }
    Ok(ExitCode::Success)
}

fn add_builtin(
    rows: &mut Vec<(String, String, String)>,
    seen: &mut std::collections::BTreeSet<String>,
) {
    for (name, text) in profile::BUILTIN {
        if seen.insert(name.to_string()) {
            let desc = profile::parse(text, name)
                .map(|p| p.description)
                .unwrap_or_else(|e| format!("INVALID: {e}"));
            rows.push((name.to_string(), "built-in".into(), desc));
        }
    }
}

/// Every profile name `--profile` takes without a path: ./launch-profiles, the user's, built-in.
pub(in crate::app) fn known_names() -> Vec<String> {
    let mut names: Vec<String> = profile::BUILTIN
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let mut dirs = vec![PathBuf::from("launch-profiles")];
    dirs.extend(user_config_dir());
    dirs.extend(crate::install::installed_profiles_dir());
    for dir in dirs {
        names.extend(profile::profile_names_in(&dir));
    }
    names.sort();
    names.dedup();
    names
}
