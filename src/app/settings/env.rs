//! The launcher's own environment variables, and the paths that follow from them.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::calibration;
use crate::profile::Resolved;

pub(in crate::app) fn env_var(name: &str) -> Option<String> {
    if name == crate::install::ENV_DIR {
        // Unset: the files `pip install` put next to the binary (src/install.rs).
        return crate::install::vla_launch_dir().value();
    }
    std::env::var(name).ok()
}

pub(in crate::app) fn user_config_dir() -> Option<PathBuf> {
    if let Some(dir) = env_var(crate::cli::ENV_PROFILE_DIR) {
        return Some(PathBuf::from(dir));
    }
    let base = env_var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env_var("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("vla-launch").join("profiles"))
}

/// The script's path as the launch runs it (workdir joined).
pub(in crate::app) fn script_path(resolved: &Resolved) -> PathBuf {
    PathBuf::from(&resolved.workdir.value).join(&resolved.script.value)
}

pub(in crate::app) fn store_path() -> Option<PathBuf> {
    calibration::default_path(&env_var)
        .map_err(|e| warn!("calibration store off: {e}"))
        .ok()
}
