//! Command-line types only (clap); no logic. The names here are a contract (docs/design.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const ENV_GPUS: &str = "VLA_LAUNCH_GPUS";
pub const ENV_PROFILE_DIR: &str = "VLA_LAUNCH_PROFILE_DIR";

const LAUNCH_EXAMPLES: &str = "\
Examples:
  vla-launch --profile aloha                         plan for this machine's GPUs and launch
  vla-launch --profile aloha --dry-run --gpus 8xh100 print the exact torchrun command
  vla-launch plan --profile aloha --gpus 4xrtx4090   plan for GPUs you do not have here
  vla-launch --profile libero --set train.max_steps=1000 -- --run_id_note test
";

#[derive(Debug, Parser)]
#[command(
    name = "vla-launch",
    version = env!("VLA_LAUNCH_VERSION"),
    about = "Plan and launch OpenVLA-OFT fine-tuning with torchrun, fitted to the GPUs at hand",
    long_about = "Plan and launch OpenVLA-OFT fine-tuning with torchrun.\n\n\
        vla-launch asks NVML which GPUs exist and how much memory is free, predicts the peak memory \
        of every candidate configuration, picks DDP or FSDP, the per-GPU batch size, gradient \
        accumulation and gradient checkpointing so that the global batch reaches the profile's \
        minimum (16) as fast as possible, then runs `torchrun vla-scripts/finetune.py` with exactly \
        those flags and supervises it.",
    after_help = LAUNCH_EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub launch: LaunchArgs,

    /// More log output (-v debug, -vv trace; RUST_LOG overrides), and the plan's memory budget
    /// as `plan --explain` shows it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan only: print the chosen configuration, its memory budget and the alternatives.
    #[command(after_help = "\
Examples:
  vla-launch plan --profile aloha --gpus 4xrtx4090
  vla-launch plan --profile aloha --gpus 1xh100 --strategy ddp --batch-size 2 \\
      --grad-accum 8 --checkpointing off --json
  vla-launch plan --profile aloha --gpus 8xh100 --nnodes 4 -o plan.json
")]
    Plan(Box<PlanArgs>),
    /// List the GPUs NVML sees, in the order torchrun will get them.
    #[command(
        after_help = "Examples:\n  vla-launch gpus\n  CUDA_VISIBLE_DEVICES=1 vla-launch gpus --json\n"
    )]
    Gpus {
        /// Print the records as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Show the GPUs a description stands for, as `plan --gpus` reads it, instead of
        /// querying NVML (e.g. 4xrtx4090, 2x80GB).
        #[arg(long, value_name = "SPEC")]
        gpus: Option<String>,
    },
    /// List the known launch profiles and where each comes from.
    #[command(after_help = "Example:\n  vla-launch profiles\n")]
    Profiles,
    /// Check the environment: torchrun, python, torch, the script and its flags, NVML, disk, RAM,
    /// the dataset, W&B, the base model and room for the checkpoints.
    #[command(
        after_help = "Examples:\n  vla-launch doctor --profile aloha\n  vla-launch doctor --profile aloha --json\n"
    )]
    Doctor {
        /// Profile name or path to a .yaml file.
        #[arg(long, short = 'p')]
        profile: String,
        /// Override a profile field: --set train.max_steps=1000 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Print the checks as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Learn how far the budget model is off on these GPUs: run the script a few steps at two
    /// batch sizes per strategy the planner considers, record the observed peaks, fit a correction.
    #[command(after_help = "\
Examples:
  vla-launch calibrate --profile aloha-probe            probe runs, then fit (minutes per run)
  vla-launch calibrate --profile aloha --show           what was learned for this profile
  vla-launch calibrate --profile aloha --reset          forget it
")]
    Calibrate(Box<CalibrateArgs>),
    /// Run a recorded launch again (the plan-*.json a launch leaves in its log directory): shows
    /// the command, and runs it only if its program, variables and directory are what the
    /// record's profile launches (else --trust-record). Masked secret flags come from the
    /// environment (`--hf_token` from HF_TOKEN).
    #[command(after_help = "Example:\n  vla-launch replay runs/vla-launch/plan-1764230400.json\n")]
    Replay {
        /// The run record.
        record: PathBuf,
        /// Seconds to wait after forwarding SIGTERM before killing the whole process tree.
        #[arg(long, value_name = "SECONDS", default_value_t = 40,
          allow_negative_numbers = true, value_parser = parse_grace)]
        grace: u64,
        /// The torchrun the record may run, when the launch used --torchrun (default: the profile's).
        #[arg(long, value_name = "PATH")]
        torchrun: Option<PathBuf>,
        /// The profile to check the record against (default: the built-in or installed profile
        /// of the record's name; never a file the record names).
        #[arg(long, short = 'p')]
        profile: Option<String>,
        /// Run the record's program, variables and directory even where they are not what the
        /// profile launches (a record you wrote or edited yourself).
        #[arg(long)]
        trust_record: bool,
    },
    /// List past runs: when, the plan, how each ended, GPU peak vs prediction, the log.
    #[command(
        after_help = "Examples:\n  vla-launch runs\n  vla-launch runs --profile aloha --json\n  vla-launch runs --log-dir /scratch/runs/vla-launch\n"
    )]
    Runs {
        /// Print the runs as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: RunsPlace,
    },
    /// Print a run's log (the newest run's by default); --follow keeps printing as it grows.
    #[command(
        after_help = "Examples:\n  vla-launch logs --follow\n  vla-launch logs --tail 20 1795846018\n"
    )]
    Logs {
        /// A record or log path, or part of one (e.g. its time stamp); default: the newest run.
        run: Option<String>,
        /// Keep printing what the run writes until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines (then, with --follow, what comes after).
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
        /// The log as it is: every `\r` update of a progress bar on a line of its own (by
        /// default a bar shows as its last state).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        place: RunsPlace,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  vla-launch completions bash > ~/.local/share/bash-completion/completions/vla-launch\n"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where `runs` and `logs` look for run records.
#[derive(Debug, Args, Clone, Default)]
pub struct RunsPlace {
    /// Log directory to search (repeatable; default: the profile's run root, $VLA_RUN_ROOT,
    /// ./vla-launch-logs).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Vec<PathBuf>,
    /// Look in this profile's run_root_dir.
    #[arg(long, short = 'p')]
    pub profile: Option<String>,
}

/// Options shared by `plan` and the launch form.
#[derive(Debug, Args, Clone, Default)]
pub struct PlanningArgs {
    /// Profile name (aloha, libero, bridge, ...) or path to a .yaml file.
    #[arg(long, short = 'p')]
    pub profile: Option<String>,

    /// Plan for GPUs described instead of queried: 4x24GiB, 2x80GB, 4xrtx4090, 1xh100,1xa100-40gb.
    #[arg(long, env = ENV_GPUS, value_name = "SPEC")]
    pub gpus: Option<String>,

    /// Minimum global batch (batch x GPUs x nodes x accumulation); the profile's default is 16.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_global_batch)]
    pub global_batch: Option<u32>,

    /// Pin the strategy.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,

    /// Pin the per-GPU batch size.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_batch_size)]
    pub batch_size: Option<u32>,

    /// Pin the gradient accumulation steps.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_grad_accum)]
    pub grad_accum: Option<u32>,

    /// Pin gradient checkpointing.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub checkpointing: Toggle,

    /// Pin the number of GPUs (processes) per node.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_nproc)]
    pub nproc: Option<u32>,

    /// Treat every GPU as holding at most SIZE (e.g. 24GiB); exported to the script as
    /// VLA_LAUNCH_VRAM_CAP_BYTES so it can cap its allocator.
    #[arg(long, value_name = "SIZE")]
    pub vram_cap: Option<String>,

    /// Number of nodes (default: 1, or from Slurm / torchrun variables).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_nnodes)]
    pub nnodes: Option<u32>,

    /// This node's rank among the nodes (default: from Slurm / torchrun variables).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_node_rank)]
    pub node_rank: Option<u32>,

    /// Rendezvous endpoint host[:port] for several nodes (default: first host of the Slurm job).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub rdzv_endpoint: Option<String>,

    /// Rendezvous port (default: derived from the Slurm job id, so jobs sharing nodes differ).
    #[arg(long, value_name = "PORT")]
    pub rdzv_port: Option<u16>,

    /// Override a profile field: --set train.max_steps=1000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,

    /// Host RAM of this node for the checkpoint-time check (default: /proc/meminfo; e.g. 256GiB).
    #[arg(long, value_name = "SIZE")]
    pub host_ram: Option<String>,

    /// Permissions of the run records and `plan -o` files written (octal; directories the
    /// launcher creates get the matching x bits). Default 0600: records may name tokens' holders,
    /// paths and hosts; 0640 shares them with the group.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_record_mode)]
    pub record_mode: u32,
}

/// `--record-mode`: octal, owner read and write, nothing executable or special.
pub fn parse_record_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| digits.len() <= 4)
        .ok_or_else(|| "not an octal file mode; write e.g. 0600 or 0640".to_string())?;
    if mode & !0o666 != 0 || mode & 0o600 != 0o600 {
        return Err(format!(
            "{mode:04o}: a record must be readable and writable by you and executable by no one; e.g. 0600 (private) or 0640 (group)"
        ));
    }
    Ok(mode)
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub planning: PlanningArgs,

    /// Print one JSON object on stdout (logs stay on stderr).
    #[arg(long)]
    pub json: bool,

    /// Show the memory budget term by term and a bar per GPU.
    #[arg(long)]
    pub explain: bool,

    /// Also write the plan as JSON to FILE (for --plan-file on every node).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Extra arguments for the training script (after `--`). Like finetune.py, the plan takes the
    /// robot platform's constants (action chunk, proprio size) from the platform words: the first
    /// of libero, aloha or bridge found in the script's arguments, these included.
    #[arg(last = true, value_name = "SCRIPT_ARGS")]
    pub extra: Vec<String>,
}

#[derive(Debug, Args, Default)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub planning: PlanningArgs,

    /// Print the exact command and environment, run nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// torchrun binary (default: the profile's, then PATH).
    #[arg(long, value_name = "PATH")]
    pub torchrun: Option<PathBuf>,

    /// Use this plan (written by `vla-launch plan -o`) instead of planning; every node checks it fits.
    #[arg(long, value_name = "FILE")]
    pub plan_file: Option<PathBuf>,

    /// Seconds to wait after forwarding SIGTERM before killing the whole process tree.
    #[arg(long, value_name = "SECONDS", default_value_t = 40,
          allow_negative_numbers = true, value_parser = parse_grace)]
    pub grace: u64,

    /// Show only these local ranks' output on the terminal, e.g. 0 or 0,1 (torchrun's
    /// --local-ranks-filter); every rank's output stays in torchrun's logs beside the run log.
    #[arg(long, value_name = "RANKS")]
    pub ranks: Option<String>,

    /// Directory for the run log (default: the run_root_dir, else ./vla-launch-logs).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Say so when the run prints nothing and every GPU is idle for this many minutes (0: never).
    /// Longer than the silent, GPU-idle fill of the RLDS shuffle buffer at start.
    #[arg(long, value_name = "MINUTES", default_value_t = 15, allow_negative_numbers = true, value_parser = parse_minutes)]
    pub hang_minutes: u64,

    /// Several nodes: the launchers watch each other over this TCP port (node 0 listens) so that
    /// one node failing or being killed stops every node instead of leaving them in NCCL until
    /// its timeout. Default: the rendezvous port - 10000; "off" disables the watch.
    #[arg(long, value_name = "PORT|off")]
    pub peer_watch_port: Option<String>,

    /// After a CUDA out-of-memory, re-plan with the observed peak and relaunch at most N times
    /// (the global batch never changes).
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true, value_parser = parse_retries)]
    pub oom_retries: u32,

    /// Launch a fully pinned configuration even though the plan says it does not fit (to see
    /// the failure for yourself); needs --strategy, --batch-size, --grad-accum and --checkpointing.
    #[arg(long)]
    pub force: bool,

    /// Resume from the newest checkpoint the training script wrote in its run_root_dir
    /// (`<run id>--<step>_chkpt`): `--resume True --resume_step N --vla_path <that directory>`.
    /// auto: when Slurm restarts a requeued job (SLURM_RESTART_COUNT > 0); on (or a bare
    /// --resume): always, e.g. to relaunch a crashed run; off: never.
    #[arg(long, value_enum, value_name = "auto|on|off", default_value_t = Toggle::Auto,
          num_args = 0..=1, default_missing_value = "on")]
    pub resume: Toggle,

    /// Extra arguments passed to the training script, last.
    #[arg(last = true, value_name = "SCRIPT_ARGS")]
    pub extra: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub launch: LaunchArgs,

    /// Optimizer steps per probe run.
    #[arg(long, value_name = "N", default_value_t = 8, allow_negative_numbers = true, value_parser = parse_steps)]
    pub steps: u32,

    /// Print what the store holds for this profile and exit.
    #[arg(long)]
    pub show: bool,

    /// Remove what the store holds for this profile and exit.
    #[arg(long, conflicts_with = "show")]
    pub reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum StrategyArg {
    #[default]
    Auto,
    Ddp,
    Fsdp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Toggle {
    #[default]
    Auto,
    On,
    Off,
}

/// Largest values the numeric flags take: far beyond any real job, small enough that their
/// product (the global batch: batch x GPUs x nodes x accumulation) cannot wrap.
pub const MAX_BATCH_SIZE: u32 = 4096;
pub const MAX_GRAD_ACCUM: u32 = 65_536;
pub const MAX_NPROC: u32 = 1024;
pub const MAX_NNODES: u32 = 4096;
pub const MAX_GLOBAL_BATCH: u32 = 1 << 20;

/// A whole number in `min..=max`, with a message that says what was wrong (a negative number,
/// a fraction, too large) rather than clap's "unexpected argument '-1'".
pub fn parse_whole(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let shown = crate::input::excerpt(t, 24);
    if t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit()) && t.len() > 1 {
        return Err(format!(
            "{shown} is negative; give a whole number from {min} to {max}"
        ));
    }
    match t.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!(
            "{shown} is out of range; give a whole number from {min} to {max}"
        )),
        Err(_) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "{shown} is out of range; give a whole number from {min} to {max}"
        )),
        Err(_) => Err(format!(
            "{shown} is not a whole number; give one from {min} to {max}"
        )),
    }
}

fn parse_u32(s: &str, min: u32, max: u32) -> Result<u32, String> {
    parse_whole(s, min.into(), max.into()).map(|n| n as u32)
}

fn parse_batch_size(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, MAX_BATCH_SIZE)
}
fn parse_grad_accum(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, MAX_GRAD_ACCUM)
}
fn parse_nproc(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, MAX_NPROC)
}
fn parse_nnodes(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, MAX_NNODES)
}
fn parse_node_rank(s: &str) -> Result<u32, String> {
    parse_u32(s, 0, MAX_NNODES - 1)
}
fn parse_global_batch(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, MAX_GLOBAL_BATCH)
}
fn parse_retries(s: &str) -> Result<u32, String> {
    parse_u32(s, 0, 100)
}
fn parse_steps(s: &str) -> Result<u32, String> {
    parse_u32(s, 1, 1_000_000)
}
fn parse_minutes(s: &str) -> Result<u64, String> {
    parse_whole(s, 0, 7 * 24 * 60)
}
fn parse_grace(s: &str) -> Result<u64, String> {
    parse_whole(s, 0, crate::launch::supervisor::MAX_GRACE_SECS)
}
