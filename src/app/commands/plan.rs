//! `vla-launch plan`: the plan for a profile and GPUs, as text or as the plan record.

use tracing::{info, warn};

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::settings::{resolve_plan, warn_missing};
use crate::app::torchrun::{command_for, plan_record};
use crate::cli::PlanArgs;
use crate::launch::command;
use crate::record;
use crate::{print_lossy as print, println_lossy as println};

pub(in crate::app) fn cmd_plan(args: PlanArgs) -> Result<ExitCode> {
    let ctx = resolve_plan(&args.planning, &args.extra, false, true)?;
    for w in &ctx.warnings {
        warn!("{w}");
    }
    let mut missing = Vec::new();
    let command = match &ctx.plan.chosen {
        Some(_) if ctx.plan.feasible => match command_for(&ctx, None, None) {
            Ok((cmd, unset)) => {
                warn_missing(&unset);
                missing = unset;
                Some(cmd)
            }
            // A plan for a job that is not running yet (no rendezvous known) has no command.
            Err(e) if ctx.topology.rendezvous.is_none() && ctx.topology.nnodes > 1 => {
                warn!("no command: {e:#}");
                None
            }
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let record = plan_record(&ctx, command.as_ref()).to_json_pretty();
    if let Some(path) = &args.output {
        record::write_file(path, &record, args.planning.record_mode).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENXIO) {
                return AppError::usage(format!(
                    "-o {}: it is a FIFO with no reader; start its reader first, or write to a file",
                    path.display()
                ));
            }
            AppError::usage(format!("-o {}: cannot write the plan: {e}", path.display()))
        })?;
        info!("plan written to {}", path.display());
    }
    if args.json {
        print!("{record}");
    } else {
        print!("{}", ctx.render(args.explain));
        if let Some(cmd) = &command {
            println!(
                "\nCommand:\n  {}",
                command::display_with_unset(cmd, &missing)
            );
        }
    }
    Ok(if ctx.plan.feasible {
        ExitCode::Success
    } else {
        ExitCode::Infeasible
    })
}
