//! vla-launch: plan and launch OpenVLA-OFT fine-tuning with torchrun.
//!
//! Data flow (docs/design.md): profile + GPUs + topology -> model components -> budget per
//! configuration -> planner -> command -> supervisor -> run record.
//! `model`, `budget` and `plan` are pure (no I/O, no clock).
//! Public: what the binary, the benchmark and the tests use (`app::run` and its error and exit
//! code types, the core, the record, GPUs, cluster, launch); `doctor`, `monitor` and
//! `script_caps` serve only the commands and stay private.

pub mod app;
mod atomic_file;
pub mod budget;
pub mod calibration;
pub mod cli;
pub mod cluster;
mod doctor;
pub mod gpu;
pub mod input;
pub mod install;
pub mod launch;
pub mod model;
mod monitor;
pub mod plan;
pub mod profile;
pub mod record;
mod script_caps;
mod script_choice;
pub mod suggest;
pub mod units;
