//! The command-line application: `run` dispatches each command to its file in `commands/`.
//! `settings` resolves what commands share (profile, GPUs, topology, plan) once; `torchrun`
//! builds the command and the plan record; `supervised_run` runs torchrun and completes the
//! record; `error` is the one mapping of errors to exit codes (docs/exit-codes.md).

mod commands;
mod error;
mod resume;
mod run_files;
mod script_flags;
mod settings;
mod slurm;
mod supervised_run;
mod torchrun;

pub use commands::replay::{Refusal, ReplayCheck, replay_command};
pub use error::{AppError, ExitCode};

use crate::cli::{Cli, Command};
use commands::{calibrate, doctor, gpus, plan, profiles, replay, runs, train};
use error::Result;

/// `--plan-file PATH`: reads and checks the plan file and pins `args` to it (the launch form's
/// first step; public for the generated-input tests).
pub fn pin_to_plan_file(args: &mut crate::cli::PlanningArgs, path: &std::path::Path) -> Result<()> {
    train::pin_to_plan_file(args, path)
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Plan(mut args)) => {
            // -v adds the memory budget, as it does to a launch's plan (the README says so).
            args.explain |= cli.verbose > 0;
            plan::cmd_plan(*args)
        }
        Some(Command::Gpus { json, gpus }) => gpus::cmd_gpus(json, gpus.as_deref()),
        Some(Command::Profiles) => profiles::cmd_profiles(),
        Some(Command::Doctor {
            profile,
            sets,
            json,
        }) => doctor::cmd_doctor(&profile, &sets, json),
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
        Some(Command::Runs { json, place }) => {
            runs::cmd_runs(&place.log_dir, place.profile.as_deref(), json)
        }
        Some(Command::Logs {
            run,
            follow,
            tail,
            raw,
            place,
        }) => runs::cmd_logs(
            &place.log_dir,
            place.profile.as_deref(),
            run.as_deref(),
            runs::LogView { follow, tail, raw },
        ),
        Some(Command::Completions { shell }) => {
            let mut cmd = with_profile_names(
                <Cli as clap::CommandFactory>::command(),
                &profiles::known_names(),
            );
            // Into a buffer first: clap_complete panics when it cannot write (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vla-launch", &mut script);
            crate::print_lossy!("{}", String::from_utf8_lossy(&script));
            Ok(ExitCode::Success)
        }
        None => {
            if settings::env_var("SLURM_JOB_ID").is_some() {
                slurm::hold_stop_signals();
            }
            train::cmd_launch(
                cli.launch,
                train::Verbosity {
                    quiet: cli.quiet,
                    verbose: cli.verbose,
                },
            )
        }
    }
}

/// `cmd` with every `--profile` offering `names` to shell completion (the names only; a path
/// still parses, since the completion script is generated from this copy and nothing else).
fn with_profile_names(cmd: clap::Command, names: &[String]) -> clap::Command {
    let names: Vec<clap::builder::PossibleValue> = names
        .iter()
        .map(|n| clap::builder::PossibleValue::new(n.clone()))
        .collect();
    fn walk(cmd: clap::Command, names: &[clap::builder::PossibleValue]) -> clap::Command {
        let has_profile = cmd.get_arguments().any(|a| a.get_id() == "profile");
        let mut cmd = if has_profile {
            let values = names.to_vec();
            cmd.mut_arg("profile", move |a| {
                a.value_parser(clap::builder::PossibleValuesParser::new(values))
            })
        } else {
            cmd
        };
        let subs: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        for name in subs {
            let names = names.to_vec();
            cmd = cmd.mut_subcommand(name, move |s| walk(s, &names));
        }
        cmd
    }
    walk(cmd, &names)
}
