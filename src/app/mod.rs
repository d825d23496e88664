//! The command-line application: `run` dispatches each command to its file in `commands/`.
//! `settings` resolves what commands share (profile, GPUs, topology, plan) once; `torchrun`
//! builds the command and the plan record; `supervised_run` runs torchrun and completes the
//! record; `error` is the one mapping of errors to exit codes (docs/exit-codes.md).

mod commands;
mod error;
mod resume;
mod run_files;
mod settings;
mod slurm;
mod supervised_run;
mod torchrun;

pub use error::{AppError, ExitCode};

use crate::cli::{Cli, Command};
use commands::{calibrate, doctor, gpus, plan, profiles, replay, train};
use error::Result;

/// `--plan-file PATH`: reads and checks the plan file and pins `args` to it (the launch form's
/// first step; public for the generated-input tests).
pub fn pin_to_plan_file(args: &mut crate::cli::PlanningArgs, path: &std::path::Path) -> Result<()> {
    train::pin_to_plan_file(args, path)
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Plan(args)) => plan::cmd_plan(*args),
        Some(Command::Gpus { json }) => gpus::cmd_gpus(json),
        Some(Command::Profiles) => profiles::cmd_profiles(),
        Some(Command::Doctor { profile, sets }) => doctor::cmd_doctor(&profile, &sets),
        Some(Command::Replay {
            record,
            grace,
            torchrun,
            profile,
            trust_record,
        }) => replay::cmd_replay(&replay::ReplayArgs {
            record: &record,
            grace,
            torchrun: torchrun.as_deref(),
            profile: profile.as_deref(),
            trust: trust_record,
        }),
        Some(Command::Calibrate(args)) => calibrate::cmd_calibrate(*args),
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vla-launch", &mut std::io::stdout());
            Ok(ExitCode::Success)
        }
        None => train::cmd_launch(cli.launch),
    }
}
