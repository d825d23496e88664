//! `vla-launch replay plan-<stamp>.json`: runs a recorded launch again. A record is a file in a
//! (often shared) run directory, so it never chooses what it is checked against: the profile is
//! `--profile`, else the built-in or installed profile of the record's name (never a path the
//! record names), and what runs is the command that profile and the recorded plan produce
//! (`command::build`, the launch's own function). The record's program, every argument, every
//! variable and the directory must be exactly that command (secrets compared masked); anything
//! else is refused, naming the first difference, unless `--trust-record` runs the record as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::run_files;
use crate::app::settings::{env_var, user_config_dir};
use crate::app::supervised_run::unix_seconds;
use crate::budget::Strategy;
use crate::gpu::{self, Gpu};
use crate::input::excerpt;
use crate::launch::command::{self, CommandSpec, Inherited, LaunchCommand};
use crate::launch::supervisor::{self, SuperviseOptions};
use crate::profile::{self, Loaded, Origin};
use crate::record::{self, PlanRecord};
use crate::script_choice;
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::eprintln_lossy as eprintln;

/// What `replay` was asked, beyond the record.
pub(in crate::app) struct ReplayArgs<'a> {
    pub record: &'a Path,
    pub grace: u64,
    /// The torchrun the record may run (default: the profile's).
    pub torchrun: Option<&'a Path>,
    /// The profile to check the record against (default: the built-in or installed profile of
    /// the record's name).
    pub profile: Option<&'a str>,
    /// Run the record as it is, even where it differs from the profile.
    pub trust: bool,
}

/// Everything besides the record that decides what a replay runs; all of it the replaying
/// user's, none of it the record's.
pub struct ReplayCheck<'a> {
    /// `--profile` (a name or a path the user gave).
    pub profile: Option<&'a str>,
    /// `--torchrun`.
    pub torchrun: Option<&'a Path>,
    /// Where installed profiles live (`VLA_LAUNCH_PROFILE_DIR` or `~/.config/vla-launch/profiles`).
    pub config_dir: Option<&'a Path>,
    /// The replaying process's environment (the profile's `${VAR}`s).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub inherited: &'a Inherited,
    /// The installed FSDP addition, when installed (never a path from the record).
    pub addition: Option<PathBuf>,
}

/// The replay's refusal: the first difference between the record and what its profile and
/// plan produce, as one clause naming the field, the record's value (bounded) and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Variables whose value the launcher derives from the host it runs on (not from the profile
/// or the plan): a record from another host may hold another number there.
const HOST_DERIVED: &[&str] = &[command::ENV_OMP_THREADS];

/// The command a replay of `rec` runs: exactly what the profile and the recorded plan produce,
/// when the record's command, variables and directory are that command; else the refusal.
pub fn replay_command(
    rec: &PlanRecord,
    cx: &ReplayCheck,
) -> std::result::Result<LaunchCommand, Refusal> {
    let loaded = profile_for(rec, cx)?;
    let (expected, missing) = expected_command(rec, &loaded, cx)?;
    let shown = command::mask(
        &expected,
        &command::secret_values(&expected, &cx.inherited.vars),
    );
    let unset = missing.first().map(|(field, var)| {
        format!(
            "profile '{}' leaves {field} unset here: export {var}=... and replay again",
            loaded.name
        )
    });
    match (first_difference(rec, &shown, &loaded.name), unset) {
        (Some(d), Some(u)) => Err(Refusal(format!("{d} ({u})"))),
        (Some(d), None) | (None, Some(d)) => Err(Refusal(d)),
        (None, None) => Ok(expected),
    }
}

/// `--profile`, else the record's profile by name: built-in or installed, never a path (a
/// profile is code: its torchrun, env and workdir run).
fn profile_for(rec: &PlanRecord, cx: &ReplayCheck) -> std::result::Result<Loaded, Refusal> {
    if let Some(p) = cx.profile {
        return profile::load(p, cx.config_dir).map_err(|e| {
            Refusal(format!(
                "--profile {} cannot be loaded ({e})",
                excerpt(p, 80)
            ))
        });
    }
    let name = rec.profile.as_str();
    let plain = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with(".yaml")
        && !name.ends_with(".yml");
    // `profile_origin` is ignored: a record names a profile, it never points at one.
    if !plain {
        return Err(Refusal(format!(
            "it names its profile {}, not a built-in or installed profile's name, and a record cannot choose the file it is checked against; pass --profile NAME (or --profile PATH after reading that file)",
            excerpt(name, 80)
        )));
    }
    if let Some(dir) = cx.config_dir {
        let installed = dir.join(format!("{name}.yaml"));
        if installed.is_file() {
            let mut l = profile::load(&installed.to_string_lossy(), None).map_err(|e| {
                Refusal(format!(
                    "its profile {name} cannot be loaded ({e}); pass --profile NAME"
                ))
            })?;
            l.name = name.to_string();
            return Ok(l);
        }
    }
    let Some((_, text)) = profile::BUILTIN.iter().find(|(n, _)| *n == name) else {
        return Err(Refusal(format!(
            "its profile {} is neither built in nor installed{}; pass --profile NAME",
            excerpt(name, 80),
            cx.config_dir
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default()
        )));
    };
    let profile = profile::parse(text, &format!("<built-in {name}>"))
        .map_err(|e| Refusal(format!("the built-in profile {name}: {e}")))?;
    Ok(Loaded {
        name: name.to_string(),
        origin: Origin::BuiltIn,
        profile,
    })
}

/// What `loaded` and the recorded plan produce, built as a launch builds it; also the
/// placeholders it left unset, as (field, variable).
fn expected_command(
    rec: &PlanRecord,
    loaded: &Loaded,
    cx: &ReplayCheck,
) -> std::result::Result<(LaunchCommand, Vec<(String, String)>), Refusal> {
    let field = |f: &str| {
        Refusal(format!(
            "its plan has no `{f}`; launch again from the profile"
        ))
    };
    let strategy = rec.strategy.ok_or_else(|| field("strategy"))?;
    let checkpointing = rec
        .gradient_checkpointing
        .ok_or_else(|| field("gradient_checkpointing"))?;
    let batch = rec.batch_size.ok_or_else(|| field("batch_size"))?;
    let accum = rec
        .grad_accumulation_steps
        .ok_or_else(|| field("grad_accumulation_steps"))?;
    let nproc = rec.nproc_per_node.ok_or_else(|| field("nproc_per_node"))?;
    let topology = rec.topology.clone().ok_or_else(|| field("topology"))?;
    if topology.nnodes != 1 || rec.nnodes != 1 {
        // Its rendezvous endpoint would be the record's: torchrun trusts what that store says.
        return Err(Refusal(format!(
            "it is node {} of a {}-node job, whose rendezvous only the job itself can give; launch again in the job (`vla-launch --plan-file`)",
            rec.node_rank, rec.nnodes
        )));
    }
    let r = loaded.resolve(cx.env);
    let mut missing = r.missing(cx.torchrun.is_none());
    let mut flags = r.flags.flags.clone();
    flags.push(("--batch_size".into(), batch.to_string()));
    flags.push(("--grad_accumulation_steps".into(), accum.to_string()));
    let accepts = |f: &str| rec.script_accepts.iter().any(|a| a == f);
    let py_bool = |b: bool| if b { "True" } else { "False" }.to_string();
    if accepts("use_fsdp") {
        flags.push(("--use_fsdp".into(), py_bool(strategy == Strategy::Fsdp)));
    }
    if accepts("gradient_checkpointing") {
        flags.push(("--gradient_checkpointing".into(), py_bool(checkpointing)));
    }
    // The planner's one extra flag (plan/search.rs), when the plan said it added it.
    const NO_MERGE: &str = "--merge_lora_during_training False";
    if rec.reasons.iter().any(|r| r.starts_with(NO_MERGE)) {
        flags.push(("--merge_lora_during_training".into(), "False".into()));
    }
    leave_out_offline_wandb(&r, cx, &mut missing, &mut flags);
    let mut env: Vec<(String, String)> = r
        .env
        .iter()
        .map(|(k, e)| (k.clone(), e.value.clone()))
        .collect();
    let script = replay_script(rec, &r, cx, &mut env)?;
    let indices = rec
        .gpu_indices
        .clone()
        .ok_or_else(|| field("gpu_indices"))?;
    let chosen: Vec<Gpu> = rec
        .gpus
        .iter()
        .filter(|g| indices.contains(&g.index))
        .cloned()
        .collect();
    let described = chosen.iter().any(|g| g.described);
    let vram_cap_bytes = recorded_vram_cap(rec, &chosen);
    let spec = CommandSpec {
        torchrun: cx
            .torchrun
            .map_or_else(|| PathBuf::from(&r.torchrun.value), Path::to_path_buf),
        script,
        workdir: PathBuf::from(&r.workdir.value),
        nproc_per_node: nproc,
        topology,
        max_restarts: loaded.profile.script.max_restarts,
        script_flags: flags,
        extra_args: Vec::new(),
        env,
        cuda_visible_devices: (!described).then(|| gpu::cuda_visible_devices_value(&chosen)),
        vram_cap_bytes,
        ranks_filter: None,
        torchrun_log_dir: None,
    };
    let cmd = command::build(&spec, cx.inherited).map_err(|e| {
        Refusal(format!(
            "profile '{}' and the plan make no command ({e})",
            loaded.name
        ))
    })?;
    Ok((cmd, missing))
}

/// As a launch does (app/torchrun.rs): with W&B offline, unset W&B placeholders are left out,
/// both from what is missing and from the flags.
fn leave_out_offline_wandb(
    r: &profile::Resolved,
    cx: &ReplayCheck,
    missing: &mut Vec<(String, String)>,
    flags: &mut Vec<(String, String)>,
) {
    let wandb_off = matches!(
        r.env
            .iter()
            .find(|(k, _)| k == "WANDB_MODE")
            .map(|(_, e)| e.value.clone())
            .or_else(|| (cx.env)("WANDB_MODE"))
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref(),
        Some("offline" | "disabled" | "dryrun")
    );
    if wandb_off {
        for k in ["wandb_entity", "wandb_project"] {
            let field = format!("train.{k}");
            if missing.iter().any(|(f, _)| *f == field) {
                missing.retain(|(f, _)| *f != field);
                flags.retain(|(f, _)| f.strip_prefix("--") != Some(k));
            }
        }
    }
}

/// The script the run started: the installed FSDP addition (pointed at the profile's script
/// through the environment) where the record says the addition ran, else the profile's script.
fn replay_script(
    rec: &PlanRecord,
    r: &profile::Resolved,
    cx: &ReplayCheck,
    env: &mut Vec<(String, String)>,
) -> std::result::Result<PathBuf, Refusal> {
    Ok(match rec.script_run.as_ref().map(|s| s.addition) {
        Some(true) => {
            let Some(addition) = cx.addition.clone() else {
                return Err(Refusal(
                    "it ran vla-launch's FSDP addition, which is not installed here; reinstall vla-launch or launch again from the profile".into(),
                ));
            };
            let real = PathBuf::from(&r.workdir.value).join(&r.script.value);
            let real = std::path::absolute(&real).unwrap_or(real);
            env.retain(|(k, _)| k != script_choice::ENV_FINETUNE_SCRIPT);
            env.push((
                script_choice::ENV_FINETUNE_SCRIPT.into(),
                real.display().to_string(),
            ));
            addition
        }
        _ => PathBuf::from(&r.script.value),
    })
}

/// `--vram-cap` lowered every GPU's memory to the cap: the plan's largest GPU is that cap.
/// Nothing else is taken from the record's `env`.
fn recorded_vram_cap(rec: &PlanRecord, chosen: &[Gpu]) -> Option<u64> {
    let recorded_env = rec.env.clone().unwrap_or_default();
    let largest = chosen.iter().map(|g| g.total_bytes).max();
    recorded_env
        .get(command::ENV_VRAM_CAP)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|cap| Some(*cap) == largest)
}

/// The first way the record's command, variables or directory differ from `expected` (masked
/// as a record is), or None.
fn first_difference(rec: &PlanRecord, expected: &LaunchCommand, profile: &str) -> Option<String> {
    let by = format!("profile '{profile}' and the recorded plan");
    let argv: &[String] = rec.command.as_deref().unwrap_or_default();
    let Some((program, args)) = argv.split_first() else {
        return Some("it has no command".into());
    };
    if !same_program(Path::new(program), &expected.program) {
        return Some(format!(
            "its program {} is not torchrun as {by} give it ({}); pass --torchrun PATH if the run used another torchrun",
            excerpt(program, 80),
            excerpt(&expected.program.to_string_lossy(), 80)
        ));
    }
    let want: Vec<String> = expected
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for i in 0..args.len().max(want.len()) {
        match (args.get(i), want.get(i)) {
            (Some(a), Some(w)) if a == w => {}
            (Some(a), Some(w)) => {
                return Some(format!(
                    "its argument {} is {} where {by} give {}",
                    i + 1,
                    excerpt(a, 60),
                    excerpt(w, 60)
                ));
            }
            (Some(a), None) => {
                return Some(format!(
                    "its argument {} ({}) and those after it are not what {by} give (they end at argument {})",
                    i + 1,
                    excerpt(a, 60),
                    want.len()
                ));
            }
            (None, Some(w)) => {
                return Some(format!(
                    "it lacks argument {} ({}) that {by} give",
                    i + 1,
                    excerpt(w, 60)
                ));
            }
            (None, None) => unreachable!("i < max(len)"),
        }
    }
    let recorded: BTreeMap<&str, &str> = rec
        .env
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let wanted: BTreeMap<&str, &str> = expected
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in &recorded {
        match wanted.get(k) {
            None => {
                return Some(format!(
                    "it sets {} which neither vla-launch nor {by} set",
                    excerpt(k, 40)
                ));
            }
            Some(w) if w == v => {}
            Some(w)
                if HOST_DERIVED.contains(k)
                    && [v, w].iter().all(|x| x.parse::<u32>().is_ok_and(|n| n > 0)) => {}
            Some(w) => {
                return Some(format!(
                    "its {}={} is not what {by} set ({})",
                    excerpt(k, 40),
                    excerpt(v, 60),
                    excerpt(w, 60)
                ));
            }
        }
    }
    if let Some(k) = wanted.keys().find(|k| !recorded.contains_key(*k)) {
        return Some(format!("it lacks {} which {by} set", excerpt(k, 40)));
    }
    let cwd = rec.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
    if !same_dir(&cwd, &expected.cwd) {
        return Some(format!(
            "its directory {} is not the workdir {} of {by} (as resolved now)",
            excerpt(&cwd.to_string_lossy(), 80),
            excerpt(&expected.cwd.to_string_lossy(), 80)
        ));
    }
    None
}

pub(in crate::app) fn cmd_replay(a: &ReplayArgs) -> Result<ExitCode> {
    let path = a.record;
    let rec = record::load(path)?;
    let argv = rec.argv(path)?;
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| AppError::usage(format!("{}: the record has no command", path.display())))?;
    let recorded = LaunchCommand {
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
        command::display(&recorded)
    );
    let config_dir = user_config_dir();
    let inherited = Inherited::from_process();
    let check = ReplayCheck {
        profile: a.profile,
        torchrun: a.torchrun,
        config_dir: config_dir.as_deref(),
        env: &env_var,
        inherited: &inherited,
        addition: script_choice::installed(
            &crate::install::vla_launch_dir(),
            script_choice::ADDITION,
        ),
    };
    let cmd = match replay_command(&rec, &check) {
        // Built from the profile and the plan, not copied from the record.
        Ok(cmd) => cmd,
        Err(Refusal(why)) if !a.trust => {
            return Err(AppError::usage(format!(
                "not replaying {}: {why}; a record is only a file (run directories are often shared): if you wrote it and want exactly that run, pass --trust-record",
                path.display()
            )));
        }
        Err(Refusal(why)) => {
            warn!("--trust-record: {why}");
            let env = rec.replay_env(path, &env_var)?;
            let args = restore_secret_args(rest, &env_var)
                .map_err(|e| AppError::usage(format!("not replaying {}: {e}", path.display())))?;
            LaunchCommand {
                env,
                args: args.into_iter().map(Into::into).collect(),
                ..recorded
            }
        }
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
