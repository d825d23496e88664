//! `vla-launch doctor`: is this machine ready to run the profile?

use std::path::{Path, PathBuf};

use crate::app::error::{ExitCode, Result};
use crate::app::settings::{choose_script, env_var, fsdp_forced, learn_torch, load_profile};
use crate::doctor::{self, DoctorContext, Setup, SystemHost};
use crate::gpu::{self, NvmlSource};
use crate::launch::command;
use crate::model;
use crate::profile::{self, Loaded, Resolved};
use crate::record::Params;
use crate::script_caps;
use crate::script_choice::{self, ScriptChoice};
use crate::units::fmt_gib;
use crate::{print_lossy as print, println_lossy as println};

pub(in crate::app) fn cmd_doctor(
    profile_name: &str,
    sets: &[String],
    json: bool,
) -> Result<ExitCode> {
    let loaded = load_profile(Some(profile_name), sets)?;
    let p = &loaded.profile;
    let r = loaded.resolve(&env_var);
    let nvml = gpu::discover(
        &NvmlSource::new(),
        env_var("CUDA_VISIBLE_DEVICES").as_deref(),
    )
    .map(|d| {
        d.gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU {} {} ({} free)",
                    g.index,
                    g.name,
                    fmt_gib(g.free_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .map_err(|e| e.to_string());
    let (torchrun, python) = (&r.torchrun, &r.python);
    let mut planner_flags: Vec<String> =
        vec!["batch_size".into(), "grad_accumulation_steps".into()];
    planner_flags.extend(p.script.accepts.iter().cloned());
    let ctx = DoctorContext {
        torchrun: (torchrun.value.contains('/')).then(|| PathBuf::from(&torchrun.value)),
        python: (python.value.contains('/')).then(|| PathBuf::from(&python.value)),
        path_env: std::env::var_os("PATH"),
        script: PathBuf::from(&r.script.value),
        workdir: PathBuf::from(&r.workdir.value),
        planner_flags,
        nvml,
        run_root_dir: r.run_root_dir(),
        min_free_disk_bytes: doctor::DEFAULT_MIN_FREE_DISK_BYTES,
        min_host_ram_bytes: doctor::DEFAULT_MIN_HOST_RAM_BYTES,
        timeout: script_caps::DEFAULT_PROBE_TIMEOUT,
        runner: &script_caps::SystemRunner,
        host: &SystemHost,
        setup: Some(setup(&loaded, &r)),
    };
    let mut checks = doctor::run_checks(&ctx);
    // Which script a launch runs (the profile's, or the FSDP addition around it) and why.
    checks.push(match choose_script(&loaded, &r, false) {
        Ok((choice, _)) => doctor::Check {
            name: "runs".into(),
            ok: true,
            detail: with_torch(&choice, &r),
            fix: None,
        },
        Err(e) => doctor::Check {
            name: "runs".into(),
            ok: false,
            detail: e.to_string(),
            fix: Some("see script.fsdp_addition in docs/fsdp.md".into()),
        },
    });
    let all_ok = checks.iter().all(|c| c.ok);
    if json {
        let v = serde_json::json!({
            "profile": loaded.name,
            "ok": all_ok,
            "checks": checks,
        });
        // Details quote the profile's values (a model URL with its password): masked.
        println!(
            "{}",
            command::redact_text(&serde_json::to_string_pretty(&v).expect("JSON of plain values"))
        );
    } else {
        print!("{}", command::redact_text(&doctor::render(&checks)));
    }
    Ok(if all_ok {
        ExitCode::Success
    } else {
        ExitCode::Environment
    })
}

/// Why this script runs and, when the addition gives it `--use_fsdp`, which FSDP the training
/// environment's torch lets it run.
fn with_torch(choice: &ScriptChoice, r: &Resolved) -> String {
    if !choice.addition_gives_fsdp() {
        return choice.why.clone();
    }
    let torch = learn_torch(r);
    // VLA_FSDP_IMPL (the profile's, else this environment's) forces the addition's choice.
    let forced = fsdp_forced(r, &env_var).ok().flatten();
    let fsdp = choice.fsdp_on(torch.as_ref().ok(), forced);
    format!(
        "{}; {}",
        choice.why,
        script_choice::torch::describe(torch.as_ref().ok(), &fsdp)
    )
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The run's data, W&B, base model and checkpoints, from the resolved profile and environment.
fn setup(loaded: &Loaded, r: &Resolved) -> Setup {
    let flag = |name: &str| {
        let unset = r
            .flags
            .missing
            .iter()
            .any(|(f, _)| f == &format!("train.{name}"));
        let key = format!("--{name}");
        r.flags
            .flags
            .iter()
            .find(|(k, _)| *k == key)
            .filter(|_| !unset)
            .map(|(_, v)| v.clone())
    };
    let wandb_mode = r
        .env
        .iter()
        .find(|(k, _)| k == "WANDB_MODE")
        .map(|(_, e)| e.value.clone())
        .or_else(|| env_var("WANDB_MODE"))
        .filter(|m| !m.is_empty());
    let home = env_var("HOME").map(PathBuf::from);
    let netrc = env_var("NETRC")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".netrc")));
    let wandb_netrc = netrc
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|t| t.contains("api.wandb.ai"));
    let hf_cache = env_var("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| env_var("HF_HOME").map(|h| Path::new(&h).join("hub")))
        .or_else(|| {
            env_var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .map(|c| c.join("huggingface").join("hub"))
        });
    let p = &loaded.profile;
    let number = |name: &str| {
        let v = p.train.get(name)?;
        v.as_u64().or_else(|| v.as_str()?.parse().ok())
    };
    let latest_only = p
        .train
        .get("save_latest_checkpoint_only")
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("True"));
    let checkpoints = match (number("max_steps"), number("save_freq")) {
        (Some(steps), Some(freq)) if freq > 0 => {
            let saves = if latest_only {
                1
            } else {
                (steps / freq).max(1)
            };
            Some((saves, checkpoint_bytes(loaded)))
        }
        _ => None,
    };
    Setup {
        data_root_dir: flag("data_root_dir").map(PathBuf::from),
        dataset_name: flag("dataset_name"),
        wandb_mode,
        wandb_api_key: env_var("WANDB_API_KEY").is_some_and(|k| !k.is_empty()),
        wandb_netrc,
        wandb_names_set: flag("wandb_entity").is_some() && flag("wandb_project").is_some(),
        base_model: flag("vla_path"),
        hf_cache,
        hf_offline: truthy(env_var("HF_HUB_OFFLINE")) || truthy(env_var("TRANSFORMERS_OFFLINE")),
        checkpoints,
    }
}

/// One checkpoint: the trainable weights (LoRA adapter and heads, at most 4 bytes each) and,
/// when the script merges LoRA while training, the whole merged model in bf16.
fn checkpoint_bytes(loaded: &Loaded) -> u64 {
    let spec = profile::model_spec(&loaded.profile, &profile::ScriptArgs::default());
    let params = Params::of(model::components(&spec).unwrap_or_default());
    let merged = if profile::merges_lora_during_training(&loaded.profile) {
        params.total * 2
    } else {
        0
    };
    params.trainable * 4 + merged
}
