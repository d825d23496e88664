//! `vla-launch replay plan-<stamp>.json`: runs exactly the recorded command again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::run_files;
use crate::app::settings::env_var;
use crate::app::supervised_run::unix_seconds;
use crate::launch::command::{self, LaunchCommand};
use crate::launch::supervisor::{self, SuperviseOptions};
use crate::record;
// On the run path a dead terminal or a vanished `| tee` must never panic the launcher.
use crate::eprintln_lossy as eprintln;

/// `vla-launch replay plan.json`: runs exactly the recorded command again.
pub(in crate::app) fn cmd_replay(path: &Path, grace: u64) -> Result<ExitCode> {
    let rec = record::load(path)?;
    let argv = rec.argv(path)?;
    let env = rec.replay_env(path, &env_var)?;
    let (program, rest) = argv
        .split_first()
        .ok_or_else(|| AppError::usage(format!("{}: the record has no command", path.display())))?;
    let cmd = LaunchCommand {
        program: PathBuf::from(program),
        args: rest.iter().map(Into::into).collect(),
        env,
        cwd: rec.cwd.clone().unwrap_or_else(|| PathBuf::from(".")),
        alloc_conf: command::AllocConf {
            value: String::new(),
            source: command::AllocConfSource::Profile,
        },
    };
    let log_dir = path.parent().unwrap_or(Path::new("."));
    let stamp = run_files::local_stamp(unix_seconds() as i64);
    let files = run_files::claim(log_dir, "replay", &stamp, None, 0).map_err(|e| {
        AppError::environment(format!(
            "cannot create the replay's log in {}: {e}; replay a record in a writable directory",
            log_dir.display()
        ))
    })?;
    eprintln!(
        "vla-launch: replaying {}: {}",
        path.display(),
        command::display(&cmd)
    );
    let mut opts = SuperviseOptions::new(&files.log);
    opts.grace = Duration::from_secs(grace);
    let outcome = supervisor::run_blocking(&cmd, &opts)?;
    eprintln!("vla-launch: {}", supervisor::summary_line(&outcome));
    Ok(ExitCode::of_run(outcome.process_exit_code()))
}
