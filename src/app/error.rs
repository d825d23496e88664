//! The launcher's exit codes (docs/exit-codes.md) and the one place every error maps to one.
//! Library modules keep their own thiserror types; `AppError` gathers them for the commands, and
//! `AppError::exit_code` is the exhaustive mapping (like nextest's `process_exit_code`): a new
//! error variant does not compile until it is given a code.

use crate::calibration::CalibrationError;
use crate::cluster::ClusterError;
use crate::gpu::{GpuError, SpecError};
use crate::launch::command::CommandError;
use crate::launch::supervisor::LaunchError;
use crate::plan::PlanError;
use crate::profile::ProfileError;
use crate::record::RecordError;

/// What every command returns.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// How the process ends (docs/exit-codes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// 0: done (a plan printed, a run that finished with exit 0).
    Success,
    /// 1: training ran and failed.
    TrainingFailed,
    /// 2: the command line or the profile is wrong.
    Usage,
    /// 3: nothing fits the GPUs.
    Infeasible,
    /// 4: the machine is not ready (no driver, no script, unwritable directory, ...).
    Environment,
    /// 128+N: the run ended by signal N (or the launcher was stopped by it).
    Signal(i32),
}

impl ExitCode {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::TrainingFailed => 1,
            ExitCode::Usage => 2,
            ExitCode::Infeasible => 3,
            ExitCode::Environment => 4,
            ExitCode::Signal(n) => 128 + n,
        }
    }

    /// From a supervised run's status (`supervisor::Outcome::process_exit_code`: 0, 1 or 128+N).
    pub fn of_run(status: i32) -> ExitCode {
        match status {
            0 => ExitCode::Success,
            n if n > 128 => ExitCode::Signal(n - 128),
            _ => ExitCode::TrainingFailed,
        }
    }
}

/// Every error a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A bad flag or value; the message names it and the fix.
    #[error("{0}")]
    Usage(String),
    /// Nothing fits; the message says why.
    #[error("{0}")]
    Infeasible(String),
    /// The machine is not ready; the message says what to do.
    #[error("{0}")]
    Environment(String),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    // The three below print their own sentence only: it already quotes the cause.
    #[error("{0}")]
    Command(CommandError),
    #[error("{0}")]
    Record(RecordError),
    #[error("{0}")]
    Calibration(CalibrationError),
}

impl From<CommandError> for AppError {
    fn from(e: CommandError) -> Self {
        AppError::Command(e)
    }
}

impl From<RecordError> for AppError {
    fn from(e: RecordError) -> Self {
        AppError::Record(e)
    }
}

impl From<CalibrationError> for AppError {
    fn from(e: CalibrationError) -> Self {
        AppError::Calibration(e)
    }
}

impl AppError {
    pub fn usage(message: impl Into<String>) -> Self {
        AppError::Usage(message.into())
    }

    pub fn infeasible(message: impl Into<String>) -> Self {
        AppError::Infeasible(message.into())
    }

    pub fn environment(message: impl Into<String>) -> Self {
        AppError::Environment(message.into())
    }

    /// The exit code of each error, in one exhaustive place.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AppError::Usage(_) => ExitCode::Usage,
            AppError::Infeasible(_) => ExitCode::Infeasible,
            AppError::Environment(_) => ExitCode::Environment,
            AppError::Profile(_) => ExitCode::Usage,
            AppError::Gpu(e) => match e {
                GpuError::Spec(_) => ExitCode::Usage,
                GpuError::NvmlUnavailable { .. }
                | GpuError::NvmlInit { .. }
                | GpuError::Query { .. }
                | GpuError::NoGpus
                | GpuError::NoneVisible { .. }
                | GpuError::NoBf16 { .. } => ExitCode::Environment,
            },
            AppError::Spec(_) => ExitCode::Usage,
            AppError::Cluster(_) => ExitCode::Usage,
            AppError::Plan(_) => ExitCode::Usage,
            AppError::Launch(_) => ExitCode::Environment,
            AppError::Command(_) => ExitCode::Usage,
            AppError::Record(_) => ExitCode::Usage,
            AppError::Calibration(_) => ExitCode::Environment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/exit-codes.md's numbers, and a run's status read back without loss.
    #[test]
    fn codes_are_the_documented_numbers() {
        let table = [
            (ExitCode::Success, 0),
            (ExitCode::TrainingFailed, 1),
            (ExitCode::Usage, 2),
            (ExitCode::Infeasible, 3),
            (ExitCode::Environment, 4),
            (ExitCode::Signal(15), 143),
        ];
        for (code, n) in table {
            assert_eq!(code.code(), n, "{code:?}");
        }
        for status in [0, 1, 130, 137, 143] {
            assert_eq!(ExitCode::of_run(status).code(), status);
        }
    }
}
