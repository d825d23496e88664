//! vla-launch: plan and launch OpenVLA-OFT fine-tuning with torchrun.
//!
//! Data flow (design.md): profile + GPUs + topology -> model components -> budget per
//! configuration -> planner -> command -> supervisor -> run record.
//! `model`, `budget` and `plan` are pure (no I/O, no clock).

pub mod app;
pub mod budget;
pub mod calibration;
pub mod cli;
pub mod cluster;
pub mod doctor;
pub mod gpu;
pub mod install;
pub mod launch;
pub mod model;
pub mod monitor;
pub mod plan;
pub mod profile;
pub mod record;
pub mod script_caps;
pub mod units;
