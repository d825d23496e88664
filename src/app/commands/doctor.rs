//! `vla-launch doctor`: is this machine ready to run the profile?

use std::path::PathBuf;

use crate::app::error::{ExitCode, Result};
use crate::app::settings::{choose_script, env_var, load_profile};
use crate::doctor::{self, DoctorContext, SystemHost};
use crate::gpu::{self, NvmlSource};
use crate::script_caps;
use crate::units::fmt_gib;

pub(in crate::app) fn cmd_doctor(profile_name: &str, sets: &[String]) -> Result<ExitCode> {
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
    };
    let mut checks = doctor::run_checks(&ctx);
    // Which script a launch runs (the profile's, or the FSDP addition around it) and why.
    checks.push(match choose_script(&loaded, &r, false) {
        Ok(choice) => doctor::Check {
            name: "runs".into(),
            ok: true,
            detail: choice.why,
            fix: None,
        },
        Err(e) => doctor::Check {
            name: "runs".into(),
            ok: false,
            detail: e.to_string(),
            fix: Some("see script.fsdp_addition in docs/fsdp.md".into()),
        },
    });
    print!("{}", doctor::render(&checks));
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::Success
    } else {
        ExitCode::Environment
    })
}
