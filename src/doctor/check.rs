//! What every doctor check shares: the report line and the machine's files, disk and memory.

use std::path::Path;

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub(super) fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub(super) fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Files, disk and memory of this machine.
pub trait Host {
    /// A regular file with an execute bit.
    fn is_executable(&self, path: &Path) -> bool;
    fn is_file(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    /// The first line of a file (for a console script's `#!` line).
    fn first_line(&self, path: &Path) -> Option<String>;
    /// Bytes available to an unprivileged user on the file system holding `path`.
    fn free_disk_bytes(&self, path: &Path) -> Result<u64, String>;
    /// The text of /proc/meminfo.
    fn meminfo(&self) -> Result<String, String>;
}

pub(super) fn gib(bytes: u64) -> String {
    crate::units::fmt_gib_digits(bytes, 1)
}
