//! Resuming a run from the newest checkpoint upstream finetune.py wrote (docs/cluster.md,
//! contract 4). finetune.py saves every `--save_freq` steps into
//! `<run_root_dir>/<run id>--<step>_chkpt` and resumes with `--resume True --resume_step <step>
//! --vla_path <that directory>`. Under Slurm the run id is fixed (`--run_id_override`, derived
//! from the profile and the job id) so that a requeued job, which keeps its SLURM_JOB_ID, finds
//! its own checkpoints; a plain relaunch (`--resume on`) takes the run of the newest checkpoint.

use std::path::{Path, PathBuf};

use crate::cli::Toggle;

/// One checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub(super) run_id: String,
    pub(super) step: u64,
    pub(super) dir: PathBuf,
}

/// What a checkpoint directory must hold for upstream finetune.py to resume from it: its
/// `--resume` path loads the merged model from `--vla_path` (`from_pretrained`: `config.json` and
/// the weights), then each component's `<name>--<step>_checkpoint.pt`. A save cut short (a
/// preemption during the minutes a merge takes) leaves a directory without some of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Needs {
    /// Components saved as `<name>--<step>_checkpoint.pt`.
    pub(super) components: Vec<&'static str>,
    /// `--merge_lora_during_training` (and LoRA): the merged model is saved into the directory.
    pub(super) merged_model: bool,
}

impl Needs {
    /// From the script's flags, with upstream finetune.py's defaults for those not given.
    pub(super) fn from_flags(flags: &[(String, String)]) -> Needs {
        let on = |name: &str, default: bool| {
            flags
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map_or(default, |(_, v)| v.trim().eq_ignore_ascii_case("true"))
        };
        let diffusion = on("--use_diffusion", false);
        let mut components = Vec::new();
        if on("--use_l1_regression", true) || diffusion {
            components.push("action_head");
        }
        if diffusion {
            components.push("noisy_action_projector");
        }
        if on("--use_proprio", false) {
            components.push("proprio_projector");
        }
        if on("--use_film", false) {
            components.push("vision_backbone");
        }
        Needs {
            components,
            merged_model: on("--use_lora", true) && on("--merge_lora_during_training", true),
        }
    }
}

/// `<run id>--<step>_chkpt` -> (run id, step).
pub(super) fn parse_name(name: &str) -> Option<(&str, u64)> {
    let (id, rest) = name.rsplit_once("--")?;
    let step = rest.strip_suffix("_chkpt")?.parse().ok()?;
    (!id.is_empty()).then_some((id, step))
}

/// The files of `needs` that `dir` (a checkpoint of `step`) lacks.
pub(super) fn missing(dir: &Path, step: u64, needs: &Needs) -> Vec<String> {
    let mut wanted: Vec<String> = needs
        .components
        .iter()
        .map(|c| format!("{c}--{step}_checkpoint.pt"))
        .collect();
    wanted.push("config.json".into());
    let mut gone: Vec<String> = wanted
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    // The merged weights: one file, or shards named by an index that save_pretrained writes last.
    const WEIGHTS: [&str; 4] = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ];
    if !WEIGHTS.iter().any(|f| dir.join(f).is_file()) {
        gone.push("model.safetensors".into());
    }
    gone
}

/// Checkpoints found, and those passed over because a save was cut short.
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) newest: Option<Checkpoint>,
    /// Newer checkpoints of the same run that lack files, with the first file missing.
    pub(super) incomplete: Vec<(PathBuf, String)>,
}

/// The newest complete checkpoint in `run_root`: of `run_id` when given (the highest step), else
/// of the run whose checkpoint directory changed last.
pub(super) fn newest(run_root: &Path, run_id: Option<&str>, needs: &Needs) -> Found {
    let mut found: Vec<(Checkpoint, std::time::SystemTime)> = Vec::new();
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return Found::default();
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((id, step)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_dir() || run_id.is_some_and(|r| r != id) {
            continue;
        }
        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        found.push((
            Checkpoint {
                run_id: id.to_string(),
                step,
                dir: e.path(),
            },
            modified,
        ));
    }
    let id = match run_id {
        Some(r) => r.to_string(),
        None => match found.iter().max_by_key(|(_, m)| *m) {
            Some((c, _)) => c.run_id.clone(),
            None => return Found::default(),
        },
    };
    let mut ours: Vec<Checkpoint> = found
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| c.run_id == id)
        .collect();
    ours.sort_by_key(|c| std::cmp::Reverse(c.step));
    let mut out = Found::default();
    for c in ours {
        match missing(&c.dir, c.step, needs).into_iter().next() {
            None => {
                out.newest = Some(c);
                break;
            }
            Some(first) => out.incomplete.push((c.dir, first)),
        }
    }
    out
}

/// What the launch does about resuming, and the script flags that say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Decision {
    /// Flags to set on the training script (replacing a flag of the same name).
    pub(super) flags: Vec<(String, String)>,
    /// One line for the user: what it resumes from, or why not.
    pub(super) message: Option<String>,
}

/// What the environment and the command line say, for [`decide`].
pub(super) struct Situation<'a> {
    pub(super) mode: Toggle,
    pub(super) profile: &'a str,
    pub(super) run_root: Option<&'a Path>,
    /// `--run_id_override` already given (profile or script arguments).
    pub(super) run_id_given: Option<&'a str>,
    pub(super) slurm_job: Option<&'a str>,
    pub(super) restart_count: u32,
    /// What a checkpoint must hold to be resumed from.
    pub(super) needs: Needs,
}

/// The run id fixed for a Slurm job: stable across its restarts.
pub(super) fn job_run_id(profile: &str, job: &str) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let profile = Path::new(profile)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(profile);
    format!("{}-job{}", safe(profile), safe(job))
}

pub(super) fn decide(s: &Situation) -> Decision {
    let mut flags = Vec::new();
    // Under Slurm the run id is fixed from the first run on, so a requeue can find its
    // checkpoints.
    // upstream finetune.py has taken --resume, --resume_step and --run_id_override from its
    // first release; forks keep them.
    let fixed = match (s.run_id_given, s.slurm_job) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(job)) => {
            let id = job_run_id(s.profile, job);
            flags.push(("--run_id_override".to_string(), id.clone()));
            Some(id)
        }
        _ => None,
    };
    let wanted = match s.mode {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => s.slurm_job.is_some() && s.restart_count > 0,
    };
    if !wanted {
        return Decision {
            flags,
            message: None,
        };
    }
    let why = if s.mode == Toggle::Auto {
        format!(
            " (Slurm restart {} of job {})",
            s.restart_count,
            s.slurm_job.unwrap_or("?")
        )
    } else {
        String::new()
    };
    if !s.needs.merged_model {
        return Decision {
            flags,
            message: Some(format!(
                "resume{why}: this run saves no merged model (merge_lora_during_training or use_lora is False), and upstream finetune.py resumes only from one (it loads --vla_path with from_pretrained): starting from scratch"
            )),
        };
    }
    let Some(root) = s.run_root else {
        return Decision {
            flags,
            message: Some(format!(
                "resume{why}: no run_root_dir in the profile to look for checkpoints in: starting from scratch"
            )),
        };
    };
    let found = newest(root, fixed.as_deref(), &s.needs);
    let skipped = if found.incomplete.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = found
            .incomplete
            .iter()
            .map(|(dir, file)| format!("{} (no {file})", dir.display()))
            .collect();
        format!("; passed over, its save was cut short: {}", list.join(", "))
    };
    match found.newest {
        Some(c) => {
            if fixed.is_none() {
                flags.push(("--run_id_override".to_string(), c.run_id.clone()));
            }
            flags.push(("--resume".into(), "True".into()));
            flags.push(("--resume_step".into(), c.step.to_string()));
            flags.push(("--vla_path".into(), c.dir.to_string_lossy().into_owned()));
            Decision {
                flags,
                message: Some(format!(
                    "resume{why}: from step {} of run {} ({}); the steps after it are trained again{skipped}",
                    c.step,
                    c.run_id,
                    c.dir.display()
                )),
            }
        }
        None => Decision {
            flags,
            message: Some(format!(
                "resume{why}: no complete checkpoint{} in {}: starting from scratch{skipped}",
                fixed
                    .as_deref()
                    .map(|id| format!(" of run {id}"))
                    .unwrap_or_default(),
                root.display()
            )),
        },
    }
}

/// Sets `flags` on the script's flags: a flag already there gets the new value, others are added.
pub(super) fn set_flags(existing: &mut Vec<(String, String)>, flags: &[(String, String)]) {
    for (k, v) in flags {
        match existing.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => existing.push((k.clone(), v.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation<'a>(root: &'a Path, mode: Toggle) -> Situation<'a> {
        Situation {
            mode,
            profile: "aloha",
            run_root: Some(root),
            run_id_given: None,
            slurm_job: Some("113"),
            restart_count: 1,
            needs: aloha_needs(),
        }
    }

    /// The ALOHA profile's flags: L1 head, FiLM, proprio, merged checkpoints.
    fn aloha_needs() -> Needs {
        Needs::from_flags(&[
            ("--use_film".into(), "True".into()),
            ("--use_proprio".into(), "True".into()),
        ])
    }

    /// A checkpoint directory as upstream's save leaves it; `upto` files of it (all by default).
    fn checkpoint(root: &Path, name: &str, upto: Option<usize>) {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        let (_, step) = parse_name(name).unwrap();
        let mut files = vec!["dataset_statistics.json".to_string()];
        for c in ["proprio_projector", "action_head", "vision_backbone"] {
            files.push(format!("{c}--{step}_checkpoint.pt"));
        }
        // save_pretrained of the merged model comes last.
        files.push("config.json".into());
        files.push("model.safetensors".into());
        for f in files.iter().take(upto.unwrap_or(usize::MAX)) {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }

    #[test]
    fn a_save_cut_short_is_skipped_for_the_newest_complete_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        checkpoint(d.path(), "aloha-job113--5_chkpt", None);
        // Preempted while merging: the components are there, the merged model is not.
        checkpoint(d.path(), "aloha-job113--15_chkpt", Some(4));
        let got = decide(&situation(d.path(), Toggle::Auto));
        let dir = d.path().join("aloha-job113--5_chkpt");
        assert!(
            got.flags
                .contains(&("--vla_path".into(), dir.to_string_lossy().into_owned())),
            "{:?}",
            got.flags
        );
        assert!(got.flags.contains(&("--resume_step".into(), "5".into())));
        let message = got.message.unwrap();
        assert!(
            message.contains("aloha-job113--15_chkpt") && message.contains("config.json"),
            "{message}"
        );
    }

    #[test]
    fn checkpoints_without_the_merged_model_cannot_be_resumed_and_it_says_why() {
        let d = tempfile::tempdir().unwrap();
        checkpoint(d.path(), "aloha-job113--5_chkpt", Some(4));
        let mut s = situation(d.path(), Toggle::Auto);
        s.needs = Needs::from_flags(&[
            ("--use_film".into(), "True".into()),
            ("--use_proprio".into(), "True".into()),
            ("--merge_lora_during_training".into(), "False".into()),
        ]);
        let got = decide(&s);
        assert!(
            !got.flags.iter().any(|(k, _)| k == "--resume"),
            "{:?}",
            got.flags
        );
        let message = got.message.unwrap();
        assert!(
            message.contains("merge_lora_during_training") && message.contains("from scratch"),
            "{message}"
        );
    }

    #[test]
    fn the_components_needed_follow_the_flags_and_upstreams_defaults() {
        let bare = Needs::from_flags(&[]);
        assert_eq!(bare.components, vec!["action_head"]);
        assert!(bare.merged_model);
        let aloha = aloha_needs();
        assert_eq!(
            aloha.components,
            vec!["action_head", "proprio_projector", "vision_backbone"]
        );
        let diffusion = Needs::from_flags(&[
            ("--use_l1_regression".into(), "False".into()),
            ("--use_diffusion".into(), "true".into()),
        ]);
        assert_eq!(
            diffusion.components,
            vec!["action_head", "noisy_action_projector"]
        );
    }

    #[test]
    fn checkpoint_names_are_upstreams() {
        assert_eq!(parse_name("aloha-job1--15_chkpt"), Some(("aloha-job1", 15)));
        assert_eq!(parse_name("a--b--7_chkpt"), Some(("a--b", 7)));
        assert_eq!(parse_name("a--x_chkpt"), None);
        assert_eq!(parse_name("--7_chkpt"), None);
        assert_eq!(parse_name("a--7"), None);
    }

    #[test]
    fn a_requeued_job_resumes_its_own_runs_newest_step() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "aloha-job113--5_chkpt",
            "aloha-job113--15_chkpt",
            "aloha-job9--99_chkpt",
        ] {
            checkpoint(d.path(), n, None);
        }
        let got = decide(&situation(d.path(), Toggle::Auto));
        let dir = d.path().join("aloha-job113--15_chkpt");
        assert_eq!(
            got.flags,
            vec![
                ("--run_id_override".into(), "aloha-job113".into()),
                ("--resume".into(), "True".into()),
                ("--resume_step".into(), "15".into()),
                ("--vla_path".into(), dir.to_string_lossy().into_owned()),
            ]
        );
        assert!(got.message.unwrap().contains("Slurm restart 1 of job 113"));
    }

    #[test]
    fn a_first_slurm_run_fixes_its_run_id_and_does_not_resume() {
        let d = tempfile::tempdir().unwrap();
        checkpoint(d.path(), "aloha-job113--5_chkpt", None);
        let mut s = situation(d.path(), Toggle::Auto);
        s.restart_count = 0;
        let got = decide(&s);
        assert_eq!(
            got.flags,
            vec![("--run_id_override".into(), "aloha-job113".into())]
        );
        assert_eq!(got.message, None);
        s.mode = Toggle::Off;
        s.restart_count = 3;
        assert_eq!(decide(&s).flags.len(), 1);
    }

    #[test]
    fn set_flags_replaces_the_base_model_path() {
        let mut f = vec![("--vla_path".to_string(), "openvla/openvla-7b".to_string())];
        set_flags(
            &mut f,
            &[
                ("--vla_path".into(), "/r/x--5_chkpt".into()),
                ("--resume".into(), "True".into()),
            ],
        );
        assert_eq!(f[0].1, "/r/x--5_chkpt");
        assert_eq!(f.len(), 2);
    }
}
