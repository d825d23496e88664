//! Where the files shipped with vla-launch (the probe trainer, the launch profiles) are at run time.
//!
//! `pip install vla-launch` puts the binary at `<prefix>/bin/vla-launch` and the wheel's data files
//! at `<prefix>/share/vla-launch/` (pyproject.toml, packaging/wheel-data/). Profiles that run a
//! trainer shipped with vla-launch say `workdir: ${VLA_LAUNCH_DIR:-.}`; `VLA_LAUNCH_DIR` is this
//! directory: the environment variable when set (an override: a checkout, a copy), else the share
//! directory next to the binary when it holds the probe trainer.
//!
//! The decisions are pure ([`locate`]); [`vla_launch_dir`] feeds them the process's environment,
//! executable path and file system.

use std::path::{Path, PathBuf};

/// The environment variable that names the directory holding `scripts/probe_finetune.py`.
pub const ENV_DIR: &str = "VLA_LAUNCH_DIR";

/// A file that is in the data directory exactly when it is a complete install.
pub const MARKER: &str = "scripts/probe_finetune.py";

/// `<prefix>/share/vla-launch` for an executable at `<prefix>/bin/vla-launch` (a virtualenv, conda,
/// `pip install --user` into `~/.local`, `cargo install` into `~/.cargo`).
pub fn share_dir_for(exe: &Path) -> Option<PathBuf> {
    Some(exe.parent()?.parent()?.join("share").join("vla-launch"))
}

/// Where `VLA_LAUNCH_DIR` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// `$VLA_LAUNCH_DIR` is set: used as given.
    FromEnv(String),
    /// The share directory next to the binary holds the probe trainer.
    Installed(PathBuf),
    /// Neither; `looked` is the share directory that was tried (None if the binary's path is unknown).
    NotFound { looked: Option<PathBuf> },
}

impl DataDir {
    /// The value `${VLA_LAUNCH_DIR}` expands to, if any.
    pub fn value(&self) -> Option<String> {
        match self {
            DataDir::FromEnv(s) => Some(s.clone()),
            DataDir::Installed(p) => Some(p.display().to_string()),
            DataDir::NotFound { .. } => None,
        }
    }
}

/// Decides where the shipped files are, from the environment variable, the binary's own path and a
/// file test.
pub fn locate(env: Option<String>, exe: Option<&Path>, is_file: &dyn Fn(&Path) -> bool) -> DataDir {
    if let Some(v) = env {
        return DataDir::FromEnv(v);
    }
    let looked = exe.and_then(share_dir_for);
    match looked {
        Some(dir) if is_file(&dir.join(MARKER)) => DataDir::Installed(dir),
        looked => DataDir::NotFound { looked },
    }
}

/// [`locate`] for this process.
pub fn vla_launch_dir() -> DataDir {
    let exe = std::env::current_exe().ok();
    locate(std::env::var(ENV_DIR).ok(), exe.as_deref(), &|p| {
        p.is_file()
    })
}

/// The `launch-profiles` directory of the shipped files: profiles installed with vla-launch but
/// not compiled into it (`aloha-real`, `libero-real`), found by name after the built-in ones.
pub fn profiles_dir(data: &DataDir) -> Option<PathBuf> {
    data.value()
        .map(|v| PathBuf::from(v).join("launch-profiles"))
}

/// [`profiles_dir`] for this process, when it exists.
pub fn installed_profiles_dir() -> Option<PathBuf> {
    profiles_dir(&vla_launch_dir()).filter(|d| d.is_dir())
}

/// What to tell the user when a profile's training script is not where the profile says.
/// `workdir_raw` is `script.workdir` as written in the profile (before `${...}` expansion).
pub fn missing_script_message(script: &Path, workdir_raw: &str, data_dir: &DataDir) -> String {
    let script = script.display();
    if !workdir_raw.contains(ENV_DIR) {
        return format!(
            "training script {script} not found (script.workdir is {workdir_raw:?}): run from your \
             OpenVLA-OFT checkout, or export OPENVLA_OFT_DIR=/path/to/openvla-oft (or --set script.workdir=...)"
        );
    }
    let why = match data_dir {
        DataDir::FromEnv(v) => format!("{ENV_DIR} is set to {v:?}, which has no {MARKER}"),
        DataDir::Installed(p) => format!("{} has no such file", p.display()),
        DataDir::NotFound {
            looked: Some(looked),
        } => format!(
            "{ENV_DIR} is not set and {} (next to this binary) has no {MARKER}",
            looked.display()
        ),
        DataDir::NotFound { looked: None } => {
            format!("{ENV_DIR} is not set and this binary's own path is unknown")
        }
    };
    format!(
        "training script {script} not found: this profile runs a trainer shipped with vla-launch, \
         and {why}. Fix: install with `pip install vla-launch` (or `pip install .` in the checkout), \
         which puts it in <prefix>/share/vla-launch, or export {ENV_DIR}=/path/to/vla-launch-checkout"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_dir_is_next_to_bin() {
        assert_eq!(
            share_dir_for(Path::new("/opt/venv/bin/vla-launch")),
            Some(PathBuf::from("/opt/venv/share/vla-launch"))
        );
        assert_eq!(share_dir_for(Path::new("vla-launch")), None);
    }

    #[test]
    fn env_wins_over_install() {
        let yes = |_: &Path| true;
        let d = locate(
            Some("/src/vla".into()),
            Some(Path::new("/v/bin/vla-launch")),
            &yes,
        );
        assert_eq!(d, DataDir::FromEnv("/src/vla".into()));
        assert_eq!(d.value().as_deref(), Some("/src/vla"));
    }

    #[test]
    fn installed_only_when_the_trainer_is_there() {
        let exe = Path::new("/v/bin/vla-launch");
        let only_marker =
            |p: &Path| p == Path::new("/v/share/vla-launch/scripts/probe_finetune.py");
        assert_eq!(
            locate(None, Some(exe), &only_marker),
            DataDir::Installed(PathBuf::from("/v/share/vla-launch"))
        );
        let no = |_: &Path| false;
        let d = locate(None, Some(exe), &no);
        assert_eq!(
            d,
            DataDir::NotFound {
                looked: Some(PathBuf::from("/v/share/vla-launch"))
            }
        );
        assert_eq!(d.value(), None);
    }

    #[test]
    fn message_names_where_it_looked_and_the_fix() {
        let d = DataDir::NotFound {
            looked: Some(PathBuf::from("/home/u/.cargo/share/vla-launch")),
        };
        let m = missing_script_message(
            Path::new("./scripts/probe_finetune.py"),
            "${VLA_LAUNCH_DIR:-.}",
            &d,
        );
        assert!(m.contains("/home/u/.cargo/share/vla-launch"), "{m}");
        assert!(m.contains("export VLA_LAUNCH_DIR="), "{m}");
        assert!(m.contains("pip install"), "{m}");
        let m = missing_script_message(
            Path::new("./vla-scripts/finetune.py"),
            "${OPENVLA_OFT_DIR:-.}",
            &d,
        );
        assert!(m.contains("OPENVLA_OFT_DIR"), "{m}");
        assert!(!m.contains("VLA_LAUNCH_DIR="), "{m}");
    }
}
