//! The integration tests, one binary: every file here is a module of it, so the crate and its
//! dependencies are linked once for all of them (16 binaries took most of `cargo test`'s time).
//!
//! A new test file: put it in tests/it/, add `mod its_name;` below, and take shared helpers from
//! `crate::common` (model specs, policies, the fake torchrun) rather than copying them, and run the
//! CLI through `crate::common::Vla` (args, env, cwd, stdin; then `run()` for code/stdout/stderr,
//! or `command()` for a run spawned and signalled), never a `Command` of its own. Only tests that
//! must own their process (e.g. tests/signals.rs, which signals the test process itself) get a
//! binary of their own in tests/.

mod common;
mod supervisor_support;

mod budget;
mod budget_calibration;
mod budget_fsdp2;
mod budget_real;
mod calibration;
mod cli;
mod cluster;
mod cpu_time;
mod diagnosis;
mod firsthour_cli;
mod generated_inputs;
mod gpu_discovery;
mod gpu_names_cli;
mod gpu_nvml;
mod gpu_parsing;
mod hostile_input;
mod install;
mod layers;
mod memtrace;
mod messages;
mod node_output;
mod noloss;
mod noloss_command;
mod noloss_processes;
mod noloss_records;
mod peer_proto;
mod peer_watch;
mod peers;
mod planner;
mod readme;
mod replay_fuzz;
mod replay_trust;
mod resume;
mod retry;
mod run_names;
mod runs_logs;
mod script_choice;
mod secrets;
mod slurm;
mod slurm_skips;
mod speed;
mod status_line;
mod supervisor;
mod torch_aware;
