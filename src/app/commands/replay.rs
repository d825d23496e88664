//! `vla-launch replay plan-<stamp>.json`: runs the recorded command again, once it has been
//! shown and checked against the record's profile: the program must be the profile's torchrun
//! (or `--torchrun`), the variables those the launcher or the profile set, the directory the
//! profile's workdir. A record is a file in a (often shared) run directory: anything else runs
//! only with `--trust-record`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::run_files;
use crate::app::settings::{env_var, user_config_dir};
use crate::app::supervised_run::unix_seconds;
use crate::input::excerpt;
use crate::launch::command::{self, LaunchCommand};
use crate::launch::supervisor::{self, SuperviseOptions};
use crate::profile::{self, Origin};
use crate::record::{self, PlanRecord};
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::eprintln_lossy as eprintln;

/// What `replay` was asked, beyond the record.
pub(in crate::app) struct ReplayArgs<'a> {
    pub record: &'a Path,
    pub grace: u64,
    /// The torchrun the record may run (default: the record's profile's).
    pub torchrun: Option<&'a Path>,
    /// The profile to check the record against (default: the one it names).
    pub profile: Option<&'a str>,
    /// Run the record as it is, even where it differs from the profile.
    pub trust: bool,
}

/// Variables the launcher itself sets (`command::build`); a record may hold these and the
/// profile's own `env:` entries, nothing else (`BASH_ENV`, `LD_PRELOAD`, ... change what runs).
const LAUNCHER_VARS: &[&str] = &[
    command::ENV_UNBUFFERED,
    command::ENV_OMP_THREADS,
    command::ENV_ALLOC_CONF,
    command::ENV_DEVICE_ORDER,
    command::ENV_VISIBLE_DEVICES,
    command::ENV_VRAM_CAP,
];

pub(in crate::app) fn cmd_replay(a: &ReplayArgs) -> Result<ExitCode> {
    let path = a.record;
    let rec = record::load(path)?;
    let argv = rec.argv(path)?;
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| AppError::usage(format!("{}: the record has no command", path.display())))?;
    let cmd = LaunchCommand {
        program: PathBuf::from(program),
        args: rest.iter().map(Into::into).collect(),
        // Redacted values stay `***` until the checks have passed.
        env: rec
            .env
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: rec.cwd.clone().unwrap_or_else(|| PathBuf::from(".")),
        alloc_conf: command::AllocConf {
            value: String::new(),
            source: command::AllocConfSource::Profile,
        },
    };
    eprintln!(
        "vla-launch: {} asks to run: {}",
        path.display(),
        command::display(&cmd)
    );
    let problems = check_against_profile(&rec, &cmd, a);
    if !problems.is_empty() {
        if !a.trust {
            return Err(AppError::usage(format!(
                "not replaying {}: {}; a record is only a file (run directories are often shared): if you wrote it and want exactly that run, pass --trust-record",
                path.display(),
                problems.join("; ")
            )));
        }
        for p in &problems {
            warn!("--trust-record: {p}");
        }
    }
    let env = rec.replay_env(path, &env_var)?;
    let args = restore_secret_args(rest, &env_var)
        .map_err(|e| AppError::usage(format!("not replaying {}: {e}", path.display())))?;
    let cmd = LaunchCommand {
        env,
        args: args.into_iter().map(Into::into).collect(),
        ..cmd
    };
    // The log is claimed only once the record passed its checks: a refused replay leaves nothing.
    let log_dir = path.parent().unwrap_or(Path::new("."));
    let stamp = run_files::local_stamp(unix_seconds() as i64);
    // As private as the record it replays (written with --record-mode), never more open than 0640.
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o640) | 0o600
    };
    let files = run_files::claim(log_dir, "replay", &stamp, None, 0, mode).map_err(|e| {
        AppError::environment(format!(
            "cannot create the replay's log in {}: {e}; replay a record in a writable directory",
            log_dir.display()
        ))
    })?;
    eprintln!("vla-launch: replaying: {}", command::display(&cmd));
    let mut opts = SuperviseOptions::new(&files.log);
    opts.grace = Duration::from_secs(a.grace);
    let outcome = supervisor::run_blocking(&cmd, &opts)?;
    eprintln!("vla-launch: {}", supervisor::summary_line(&outcome));
    Ok(ExitCode::of_run(outcome.process_exit_code()))
}

/// Where the record differs from what its profile (resolved now) would launch: each problem as
/// one clause naming the field, the record's value (bounded) and the fix.
fn check_against_profile(rec: &PlanRecord, cmd: &LaunchCommand, a: &ReplayArgs) -> Vec<String> {
    let name = match (a.profile, &rec.profile_origin) {
        (Some(p), _) => p.to_string(),
        (None, Some(Origin::File(p))) => p.display().to_string(),
        (None, _) => rec.profile.clone(),
    };
    let loaded = match profile::load(&name, user_config_dir().as_deref()) {
        Ok(l) => l,
        Err(e) => {
            return vec![format!(
                "its profile {} cannot be loaded to check it against ({e}); pass --profile NAME",
                excerpt(&name, 80)
            )];
        }
    };
    let resolved = loaded.resolve(&env_var);
    let mut problems = Vec::new();
    let expected = match a.torchrun {
        Some(t) => t.to_path_buf(),
        None => PathBuf::from(&resolved.torchrun.value),
    };
    if !same_program(&cmd.program, &expected) {
        problems.push(format!(
            "its program {} is not torchrun as profile '{}' gives it ({}); pass --torchrun PATH if the run used another torchrun",
            excerpt(&cmd.program.to_string_lossy(), 80),
            loaded.name,
            excerpt(&expected.to_string_lossy(), 80)
        ));
    }
    let foreign: Vec<String> = cmd
        .env
        .iter()
        .map(|(k, _)| k)
        .filter(|k| {
            !LAUNCHER_VARS.contains(&k.as_str()) && !resolved.env.iter().any(|(n, _)| n == *k)
        })
        .map(|k| excerpt(k, 40))
        .take(8)
        .collect();
    if !foreign.is_empty() {
        problems.push(format!(
            "it sets {} which neither vla-launch nor profile '{}' sets",
            foreign.join(", "),
            loaded.name
        ));
    }
    let workdir = PathBuf::from(&resolved.workdir.value);
    if !same_dir(&cmd.cwd, &workdir) {
        problems.push(format!(
            "its directory {} is not profile '{}''s workdir {} (as resolved now)",
            excerpt(&cmd.cwd.to_string_lossy(), 80),
            loaded.name,
            excerpt(&workdir.to_string_lossy(), 80)
        ));
    }
    problems
}

fn same_program(recorded: &Path, expected: &Path) -> bool {
    recorded == expected
        || resolve_program(recorded).is_some_and(|r| resolve_program(expected) == Some(r))
}

/// A program as exec would find it (PATH for a bare name), canonicalized.
fn resolve_program(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.canonicalize().ok();
    }
    std::env::split_paths(&env_var("PATH")?)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .and_then(|c| c.canonicalize().ok())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// The recorded script arguments with masked secrets (`--hf_token ***`, `--hf-token=***`) put
/// back from the variable named after the flag (`HF_TOKEN`); errors naming what is unset, or an
/// argument with a secret masked inside it (which cannot be put back).
fn restore_secret_args(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Vec<String>, String> {
    let var_of = |flag: &str| {
        flag.trim_start_matches('-')
            .replace('-', "_")
            .to_ascii_uppercase()
    };
    let mut out = Vec::with_capacity(args.len());
    let mut missing = Vec::new();
    let mut prev_secret: Option<&str> = None;
    for (i, arg) in args.iter().enumerate() {
        let flag = prev_secret.take();
        if arg.starts_with("--") && command::is_secret(arg) && !arg.contains('=') {
            prev_secret = Some(arg);
        }
        if !arg.contains(command::MASK) {
            out.push(arg.clone());
            continue;
        }
        let (var, rebuild): (String, Box<dyn Fn(String) -> String>) = match (
            flag,
            arg.split_once('='),
        ) {
            (Some(f), _) if arg == command::MASK => (var_of(f), Box::new(|v| v)),
            (None, Some((f, v)))
                if f.starts_with("--") && command::is_secret(f) && v == command::MASK =>
            {
                let f = f.to_string();
                (var_of(&f), Box::new(move |v| format!("{f}={v}")))
            }
            _ => {
                return Err(format!(
                    "argument {} of the record ({}) had a secret masked inside it, which cannot be put back; launch again from the profile",
                    i + 1,
                    excerpt(arg, 40)
                ));
            }
        };
        match env(&var) {
            Some(v) => out.push(rebuild(v)),
            None => {
                missing.push(var);
                out.push(arg.clone());
            }
        }
    }
    if let Some(first) = missing.first() {
        return Err(format!(
            "the record's script arguments had secrets masked: export {} (export {first}=...)",
            missing.join(", ")
        ));
    }
    Ok(out)
}
