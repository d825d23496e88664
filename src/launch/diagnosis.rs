//! One-sentence explanations of a failed training run, from the tail of its log and its exit,
//! plus a hang watchdog. Pure: bytes and numbers in, a `Diagnosis` out.
//!
//! torchrun prefixes worker lines with `[rank3]:` (torch >= 2.2) or `[default3]:` (older
//! `--tee`, where the number is the local rank) and ends a failed run with an error summary
//! whose "Root Cause" names the first failing rank and its exit code. Both are used to say
//! which rank failed.

mod failures;
mod killed;
mod lines;
mod memory;
mod types;

pub use failures::diagnose;
pub use killed::diagnose_run;
pub use memory::{fit_oom_hint, oom_evidence};
pub use types::{Details, Diagnosis, DiagnosisKind, OomDetails};
