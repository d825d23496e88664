//! The doctor's checks of what a run needs besides the software: its dataset, W&B, the base
//! model (and the Hugging Face cache and offline settings), and disk for its checkpoints.

use std::path::{Path, PathBuf};

use super::check::{Check, Host, gib};

/// The run's inputs and outputs as the caller resolved them from the profile and environment.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// `--data_root_dir` (None while a placeholder is unset) and `--dataset_name`.
    pub data_root_dir: Option<PathBuf>,
    pub dataset_name: Option<String>,
    /// `WANDB_MODE` as set, `WANDB_API_KEY` set, a wandb entry in ~/.netrc, and whether
    /// `--wandb_entity` / `--wandb_project` are set.
    pub wandb_mode: Option<String>,
    pub wandb_api_key: bool,
    pub wandb_netrc: bool,
    pub wandb_names_set: bool,
    /// `--vla_path`: a directory or a Hugging Face repo id.
    pub base_model: Option<String>,
    /// The Hugging Face hub cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).
    pub hf_cache: Option<PathBuf>,
    /// HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is on.
    pub hf_offline: bool,
    /// Checkpoints the run will write (max_steps / save_freq, or 1 with
    /// save_latest_checkpoint_only) and the bytes of each.
    pub checkpoints: Option<(u64, u64)>,
}

/// The profile's dataset under data_root_dir (RLDS: `<data_root_dir>/<dataset_name>/`).
pub(super) fn dataset_check(host: &dyn Host, s: &Setup) -> Check {
    let (Some(root), Some(name)) = (&s.data_root_dir, &s.dataset_name) else {
        return Check::fail(
            "dataset",
            "data_root_dir or dataset_name is not set",
            "export VLA_DATA_ROOT=/path/to/datasets (or --set train.data_root_dir=...)",
        );
    };
    let dir = root.join(name);
    if host.is_dir(&dir) {
        Check::ok("dataset", dir.display().to_string())
    } else if !host.is_dir(root) {
        Check::fail(
            "dataset",
            format!("data_root_dir {} does not exist", root.display()),
            "export VLA_DATA_ROOT=/path/to/the/directory/holding/the/datasets",
        )
    } else {
        Check::fail(
            "dataset",
            format!("{} has no {name}/", root.display()),
            format!(
                "download the RLDS dataset {name} into {} (or --set train.dataset_name=...)",
                root.display()
            ),
        )
    }
}

/// W&B: offline/disabled needs nothing; otherwise a login and an entity and project.
pub(super) fn wandb_check(s: &Setup) -> Check {
    let mode = s.wandb_mode.as_deref().map(str::to_ascii_lowercase);
    if let Some(m @ ("offline" | "disabled" | "dryrun")) = mode.as_deref() {
        return Check::ok("wandb", format!("WANDB_MODE={m}: nothing is sent to W&B"));
    }
    let login = if s.wandb_api_key {
        Some("WANDB_API_KEY")
    } else if s.wandb_netrc {
        Some("~/.netrc")
    } else {
        None
    };
    match (login, s.wandb_names_set) {
        (Some(from), true) => Check::ok("wandb", format!("logged in ({from})")),
        (None, _) => Check::fail(
            "wandb",
            "not logged in: no WANDB_API_KEY and no api.wandb.ai in ~/.netrc",
            "run `wandb login`, or export WANDB_MODE=offline to log locally",
        ),
        (Some(_), false) => Check::fail(
            "wandb",
            "wandb_entity or wandb_project is not set",
            "export WANDB_ENTITY=... WANDB_PROJECT=..., or export WANDB_MODE=offline",
        ),
    }
}

/// The base model: a local directory, or a hub id in the HF cache (needed when offline).
pub(super) fn base_model_check(host: &dyn Host, s: &Setup) -> Check {
    let Some(model) = &s.base_model else {
        return Check::fail(
            "base model",
            "vla_path is not set",
            "--set train.vla_path=openvla/openvla-7b (or a local directory)",
        );
    };
    if host.is_dir(Path::new(model)) {
        return Check::ok("base model", format!("{model} (local directory)"));
    }
    let offline = if s.hf_offline {
        "HF offline"
    } else {
        "HF online"
    };
    let cached = s
        .hf_cache
        .as_ref()
        .map(|c| c.join(format!("models--{}", model.replace('/', "--"))))
        .filter(|d| host.is_dir(d));
    match (cached, s.hf_offline) {
        (Some(d), _) => Check::ok(
            "base model",
            format!("{model} in the HF cache at {} ({offline})", d.display()),
        ),
        (None, false) => Check::ok(
            "base model",
            format!(
                "{model} is not in the HF cache{}: the first run downloads it ({offline})",
                s.hf_cache
                    .as_ref()
                    .map(|c| format!(" ({})", c.display()))
                    .unwrap_or_default()
            ),
        ),
        (None, true) => Check::fail(
            "base model",
            format!("{model} is not in the HF cache and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is on"),
            format!(
                "on a node with network: huggingface-cli download {model} (same HF_HOME), or point --set train.vla_path= at a local copy"
            ),
        ),
    }
}

/// Room for the checkpoints the run will write (every save_freq steps).
pub(super) fn checkpoint_disk_check(
    host: &dyn Host,
    run_root_dir: Option<&Path>,
    s: &Setup,
) -> Check {
    let (Some(dir), Some((saves, each))) = (run_root_dir, s.checkpoints) else {
        return Check::fail(
            "checkpoint disk",
            "run_root_dir, max_steps or save_freq is not set",
            "export VLA_RUN_ROOT=/path/with/space",
        );
    };
    let need = saves.saturating_mul(each);
    let existing = dir
        .ancestors()
        .find(|p| host.free_disk_bytes(p).is_ok())
        .unwrap_or(dir);
    let detail = format!(
        "{saves} checkpoint{} of about {} = {}",
        if saves == 1 { "" } else { "s" },
        gib(each),
        gib(need)
    );
    match host.free_disk_bytes(existing) {
        Ok(free) if free >= need => Check::ok(
            "checkpoint disk",
            format!("{detail}; {} free at {}", gib(free), existing.display()),
        ),
        Ok(free) => Check::fail(
            "checkpoint disk",
            format!(
                "{detail}, but only {} free at {}",
                gib(free),
                existing.display()
            ),
            "free space, point VLA_RUN_ROOT at a larger file system, raise --save_freq, or --set train.save_latest_checkpoint_only=True",
        ),
        Err(why) => Check::fail(
            "checkpoint disk",
            why,
            "make run_root_dir (VLA_RUN_ROOT) a path on a mounted file system",
        ),
    }
}
