//! Command construction and supervision of torchrun.
//! `command` is pure (plan -> argv + env); `supervisor` spawns, relays output and handles signals,
//! with the Linux process-tree details in `process_tree`; `diagnosis` reads a failed run's log; `hang` tells a stuck run from a slow one.

pub mod command;
pub mod diagnosis;
pub mod hang;
pub mod log;
pub(crate) mod process_tree;
pub(crate) mod spawn;
pub mod status;
pub mod supervisor;
pub mod term;
pub mod watchdog;
