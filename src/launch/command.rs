//! Plan -> the exact torchrun argv and environment. Pure: the inherited environment and the
//! host's CPU count are inputs (`Inherited`), so every case is a table test.
//!
//! The result is executed with an argv (never a shell); `display` only renders a copy-pasteable
//! shell line for humans, with secrets masked.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::budget::Allocator;
use crate::cluster::Topology;

/// The allocator setting the launcher exports when the user chose none: it avoids the
/// fragmentation the budget model would otherwise have to reserve for.
pub const DEFAULT_ALLOC_CONF: &str = "expandable_segments:True";
pub const ENV_ALLOC_CONF: &str = "PYTORCH_CUDA_ALLOC_CONF";
pub const ENV_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
pub const ENV_DEVICE_ORDER: &str = "CUDA_DEVICE_ORDER";
pub const ENV_UNBUFFERED: &str = "PYTHONUNBUFFERED";
pub const ENV_OMP_THREADS: &str = "OMP_NUM_THREADS";
pub const ENV_VRAM_CAP: &str = "VLA_LAUNCH_VRAM_CAP_BYTES";

/// What the plan decided, in the terms torchrun needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub torchrun: PathBuf,
    pub script: PathBuf,
    pub workdir: PathBuf,
    pub nproc_per_node: u32,
    pub topology: Topology,
    pub max_restarts: u32,
    /// ("--name", value), already merged and ordered.
    pub script_flags: Vec<(String, String)>,
    /// Passed through last, unchanged.
    pub extra_args: Vec<String>,
    /// Profile env + planner env; later entries win.
    pub env: Vec<(String, String)>,
    pub cuda_visible_devices: Option<String>,
    pub vram_cap_bytes: Option<u64>,
    /// Show only these local ranks' output on the terminal (torchrun's `--local-ranks-filter`,
    /// with `--tee 3`); torchrun keeps every rank's output in files under `torchrun_log_dir`.
    pub ranks_filter: Option<String>,
    pub torchrun_log_dir: Option<PathBuf>,
}

/// The parts of the launcher's own environment that change the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inherited {
    pub vars: BTreeMap<String, String>,
    /// Logical CPUs of this host, to split between the ranks.
    pub cpus: u32,
}

impl Inherited {
    /// Reads the process environment and CPU count (the only I/O of this module).
    pub fn from_process() -> Self {
        Inherited {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }
}

/// Where the effective `PYTORCH_CUDA_ALLOC_CONF` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocConfSource {
    /// The launcher's default (`DEFAULT_ALLOC_CONF`).
    Launcher,
    /// The user's shell environment.
    User,
    /// The profile's or planner's env entries.
    Profile,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllocConf {
    pub value: String,
    pub source: AllocConfSource,
}

impl AllocConf {
    /// The allocator the budget model must assume for this setting.
    pub fn allocator(&self) -> Allocator {
        allocator_for(&self.value)
    }
}

/// `expandable_segments:True` anywhere in the comma list switches the allocator mode.
pub fn allocator_for(conf: &str) -> Allocator {
    let expandable = conf.split(',').any(|opt| {
        let mut kv = opt.splitn(2, ':');
        kv.next().map(str::trim) == Some("expandable_segments")
            && kv.next().map(|v| v.trim().eq_ignore_ascii_case("true")) == Some(true)
    });
    if expandable {
        Allocator::ExpandableSegments
    } else {
        Allocator::Default
    }
}

/// The allocator setting torchrun's workers will see: profile env, else the user's, else ours.
/// The planner calls this before planning, since the budget depends on it.
pub fn effective_alloc_conf(profile_env: &[(String, String)], inherited: &Inherited) -> AllocConf {
    if let Some((_, v)) = profile_env.iter().rev().find(|(k, _)| k == ENV_ALLOC_CONF) {
        return AllocConf {
            value: v.clone(),
            source: AllocConfSource::Profile,
        };
    }
    if let Some(v) = inherited.vars.get(ENV_ALLOC_CONF) {
        return AllocConf {
            value: v.clone(),
            source: AllocConfSource::User,
        };
    }
    AllocConf {
        value: DEFAULT_ALLOC_CONF.into(),
        source: AllocConfSource::Launcher,
    }
}

/// What the supervisor executes: program + argv + env to set on top of the inherited one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Variables to set (the rest of the launcher's environment is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The allocator setting in `env` and where it came from (the budget model depends on it).
    pub alloc_conf: AllocConf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("nproc_per_node is 0: the plan must use at least one GPU per node")]
    NoProcesses,
    #[error(
        "topology has {nnodes} nodes but no rendezvous endpoint: set one (e.g. --rdzv-endpoint host:29500) or run inside a Slurm job"
    )]
    MissingRendezvous { nnodes: u32 },
    #[error("node rank {node_rank} is out of range for {nnodes} nodes: use a rank in 0..{nnodes}")]
    BadNodeRank { node_rank: u32, nnodes: u32 },
    #[error(
        "environment variable name {} is not valid: a name is letters, digits and `_`, not starting with a digit{}; fix the key in the profile's `env:` (or in `--set env.NAME=VALUE`)",
        excerpt(name),
        if name.contains('=') { " (the `=` belongs between name and value)" } else { "" }
    )]
    BadEnvName { name: String },
    #[error("script flag {name:?} does not start with \"--\": write it as \"--{name}\"")]
    BadFlagName { name: String },
}

/// Builds the torchrun argv and environment for `spec`.
pub fn build(spec: &CommandSpec, inherited: &Inherited) -> Result<LaunchCommand, CommandError> {
    if spec.nproc_per_node == 0 {
        return Err(CommandError::NoProcesses);
    }
    let topo = &spec.topology;
    if topo.nnodes == 0 || topo.node_rank >= topo.nnodes {
        return Err(CommandError::BadNodeRank {
            node_rank: topo.node_rank,
            nnodes: topo.nnodes,
        });
    }
    let mut args = torchrun_topology_args(spec)?;
    if let Some(ranks) = &spec.ranks_filter {
        args.push("--tee".into());
        args.push("3".into());
        args.push("--local-ranks-filter".into());
        args.push(ranks.into());
        if let Some(dir) = &spec.torchrun_log_dir {
            args.push("--log-dir".into());
            args.push(dir.clone().into_os_string());
        }
    }
    args.push(spec.script.clone().into_os_string());
    for (name, value) in &spec.script_flags {
        if !name.starts_with("--") {
            return Err(CommandError::BadFlagName { name: name.clone() });
        }
        args.push(name.into());
        args.push(value.into());
    }
    args.extend(spec.extra_args.iter().map(OsString::from));

    let alloc_conf = effective_alloc_conf(&spec.env, inherited);
    let env = child_env(spec, inherited, &alloc_conf)?;
    Ok(LaunchCommand {
        program: spec.torchrun.clone(),
        args,
        env,
        cwd: spec.workdir.clone(),
        alloc_conf,
    })
}

/// torchrun's own flags for the topology: `--standalone` on one node, the rendezvous on several.
fn torchrun_topology_args(spec: &CommandSpec) -> Result<Vec<OsString>, CommandError> {
    let topo = &spec.topology;
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |s: &str| args.push(s.into());
    if topo.nnodes == 1 {
        // --standalone picks a free local port and a fresh rendezvous id: no collisions
        // between two single-node runs on one host.
        push("--standalone");
        push("--nnodes");
        push("1");
        push("--nproc-per-node");
        push(&spec.nproc_per_node.to_string());
    } else {
        let rdzv = topo
            .rendezvous
            .as_ref()
            .ok_or(CommandError::MissingRendezvous {
                nnodes: topo.nnodes,
            })?;
        push("--nnodes");
        push(&topo.nnodes.to_string());
        push("--nproc-per-node");
        push(&spec.nproc_per_node.to_string());
        push("--node-rank");
        push(&topo.node_rank.to_string());
        push("--rdzv-backend");
        push(&rdzv.backend);
        push("--rdzv-endpoint");
        push(&rdzv.endpoint);
        push("--rdzv-id");
        push(&rdzv.id);
        if topo.slurm_job_id.is_some() && rdzv.backend == "c10d" {
            // Slurm's node 0 hosts the c10d store even where its node name is not its hostname;
            // the others never do, even where node 0's name resolves to one of their addresses
            // (torchrun would otherwise race node 0 for the port: EADDRINUSE).
            push("--rdzv-conf");
            push(if topo.node_rank == 0 {
                "is_host=1"
            } else {
                "is_host=0"
            });
        }
        push("--max-restarts");
        push(&spec.max_restarts.to_string());
    }
    Ok(args)
}

/// The children's environment: the launcher's defaults, then the profile's `env:`, then the
/// plan's device choice.
fn child_env(
    spec: &CommandSpec,
    inherited: &Inherited,
    conf: &AllocConf,
) -> Result<Vec<(String, String)>, CommandError> {
    if let Some((name, _)) = spec.env.iter().find(|(k, _)| !valid_env_name(k)) {
        return Err(CommandError::BadEnvName { name: name.clone() });
    }
    let mut env = EnvList::default();
    env.set(ENV_UNBUFFERED, "1");
    if !inherited.vars.contains_key(ENV_OMP_THREADS) {
        // torchrun would force 1 with a warning; a fair share of the cores keeps dataloading fast.
        let per_rank = (inherited.cpus / spec.nproc_per_node).max(1);
        env.set(ENV_OMP_THREADS, &per_rank.to_string());
    }
    if conf.source == AllocConfSource::Launcher {
        env.set(ENV_ALLOC_CONF, &conf.value);
    }
    for (k, v) in &spec.env {
        env.set(k, v);
    }
    // The plan's device choice is set last: a profile cannot silently move the run to other GPUs.
    env.set(ENV_DEVICE_ORDER, "PCI_BUS_ID");
    if let Some(devices) = &spec.cuda_visible_devices {
        env.set(ENV_VISIBLE_DEVICES, devices);
    }
    if let Some(cap) = spec.vram_cap_bytes {
        env.set(ENV_VRAM_CAP, &cap.to_string());
    }
    Ok(env.0)
}

/// Ordered variables where setting a name again replaces its value in place (indexed: a
/// profile with 100k entries must not take quadratic time).
#[derive(Default)]
struct EnvList(
    Vec<(String, String)>,
    std::collections::HashMap<String, usize>,
);

impl EnvList {
    fn set(&mut self, name: &str, value: &str) {
        match self.1.get(name) {
            Some(&i) => self.0[i].1 = value.to_string(),
            None => {
                self.1.insert(name.to_string(), self.0.len());
                self.0.push((name.to_string(), value.to_string()));
            }
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name every shell and `env` take as a variable name.
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// At most 40 characters of `s`, debug-quoted (for messages about user input).
fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

/// Every value that must not be printed or recorded: those of secret-named variables of the
/// command and of `inherited` (the user's environment, where `${HF_TOKEN}` in a profile comes
/// from), and those of secret-named flags (`--hf_token V`, `--hf-token=V`). Longest first.
pub fn secret_values(cmd: &LaunchCommand, inherited: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(inherited.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .filter(|(k, _)| is_secret(k))
        .map(|(_, v)| v.to_string())
        .collect();
    let mut secret_flag = false;
    for arg in &cmd.args {
        let arg = arg.to_string_lossy();
        if std::mem::take(&mut secret_flag) {
            out.push(arg.into_owned());
            continue;
        }
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") && is_secret(flag) => {
                out.push(value.to_string());
            }
            _ => secret_flag = arg.starts_with("--") && is_secret(&arg),
        }
    }
    // A value like `1` or `true` under a secret-looking name (`USE_SECRET_MANAGER=1`) is a
    // switch, not a credential: masking it by value would hide every `--nnodes 1`.
    out.retain(|v| maskable_value(v));
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    out.dedup();
    out
}

/// A copy of `cmd` with secrets masked: secret-named variables and flag values by name, and
/// every value in `secrets` (from [`secret_values`]) wherever it appears, as a whole value or,
/// from [`MIN_MASKED_SUBSTRING`] characters on, inside one. Use it before printing or recording.
pub fn mask(cmd: &LaunchCommand, secrets: &[String]) -> LaunchCommand {
    let env = cmd
        .env
        .iter()
        .map(|(k, v)| {
            let shown = if is_secret(k) {
                MASK.to_string()
            } else {
                let v = String::from_utf8_lossy(&mask_bytes(v.as_bytes(), secrets)).into_owned();
                mask_credentials(&v).into_owned()
            };
            (k.clone(), shown)
        })
        .collect();
    let mut args = Vec::with_capacity(cmd.args.len());
    let mut secret_flag = false;
    for arg in &cmd.args {
        if std::mem::take(&mut secret_flag) {
            args.push(OsString::from(MASK));
            continue;
        }
        let text = arg.to_string_lossy();
        match text.split_once('=') {
            Some((flag, _)) if flag.starts_with("--") && is_secret(flag) => {
                args.push(OsString::from(format!("{flag}={MASK}")));
            }
            _ => {
                secret_flag = text.starts_with("--") && is_secret(&text);
                let masked = mask_bytes(arg.as_bytes(), secrets);
                args.push(match std::str::from_utf8(&masked) {
                    Ok(t) => OsString::from(mask_credentials(t).into_owned()),
                    Err(_) => OsString::from_vec(masked),
                });
            }
        }
    }
    LaunchCommand {
        env,
        args,
        ..cmd.clone()
    }
}

/// The launcher's own environment's variables (for [`secret_values`]).
fn process_vars() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A copy-pasteable shell line (`cd DIR && VAR=... torchrun ...`) for humans and logs, with
/// every secret masked by name and by value (see [`mask`]; the values of the launcher's own
/// secret-named variables included). Never executed.
///
/// Unlike [`render`], it is for pasting: no `cd` when the directory is the current one; every
/// byte is quoted exactly as `render` quotes it, so a pasted `${NAME}` or `$(...)` in a value
/// stays literal (issue 25 item 15: a `${HF_TOKEN}` would pass the pasting shell's token).
pub fn display(cmd: &LaunchCommand) -> String {
    render_with(&masked(cmd), true, &|_| false)
}

/// [`display`] for a plan that left profile placeholders unset (`missing`: (field, variable), as
/// `Resolved::missing` gives them): a `${NAME}` of one of those variables is printed
/// double-quoted (`"${NAME}"`) so that the pasting shell expands it; any other `${...}` stays
/// literal.
pub fn display_with_unset(cmd: &LaunchCommand, missing: &[(String, String)]) -> String {
    render_with(&masked(cmd), true, &|name| {
        missing.iter().any(|(_, var)| var == name)
    })
}

/// `cmd` with every secret masked, by name and by value, the launcher's own secret-named
/// variables' values included: what may be printed, logged or recorded (`plan-*.json`).
pub fn masked(cmd: &LaunchCommand) -> LaunchCommand {
    mask(cmd, &secret_values(cmd, &process_vars()))
}

/// `cmd` as one bash line, exactly, nothing masked: run by bash it executes the same program
/// with the same argv, the same variables set and in the same directory, whatever bytes they
/// hold (env names included), and it holds no control character. Variable names that are not
/// shell names (only a record can hold them: `build` refuses them) are passed through `env`.
pub fn render(cmd: &LaunchCommand) -> String {
    render_with(cmd, false, &|_| false)
}

/// `expand`: the variables whose `${NAME}` the pasting shell is to expand.
fn render_with(cmd: &LaunchCommand, for_paste: bool, expand: &dyn Fn(&str) -> bool) -> String {
    let quote_value = |b: &[u8]| {
        if for_paste {
            quote_expanding(b, expand)
        } else {
            quote_bytes(b)
        }
    };
    let mut cwd = cmd.cwd.as_os_str().as_bytes().to_vec();
    if cwd.is_empty() {
        cwd = b".".to_vec();
    } else if cwd.starts_with(b"-") {
        // `cd -` means "the previous directory", `cd -x` an option.
        cwd.splice(0..0, *b"./");
    }
    let mut words: Vec<String> = if for_paste && cwd == b"." {
        Vec::new()
    } else {
        vec!["cd".into(), quote_bytes(&cwd), "&&".into()]
    };
    let plain_names = cmd.env.iter().all(|(k, _)| valid_env_name(k));
    if !plain_names {
        // `--`: a name starting with `-` is not an option of env.
        words.push("env".into());
        words.push("--".into());
    }
    for (k, v) in &cmd.env {
        if plain_names {
            words.push(format!("{k}={}", quote_value(v.as_bytes())));
        } else {
            words.push(quote_bytes(format!("{k}={v}").as_bytes()));
        }
    }
    let program = cmd.program.as_os_str().as_bytes();
    // A bare `A=b` in command position would be an assignment: quote it.
    words.push(if program.contains(&b'=') {
        quote_forced(program)
    } else {
        quote_bytes(program)
    });
    for arg in &cmd.args {
        words.push(quote_arg(arg.as_bytes(), &quote_value));
    }
    words.join(" ")
}

mod quote;
mod redact;
use quote::{quote_arg, quote_forced};
pub use quote::{quote_bytes, quote_expanding, shell_quote};
pub use redact::{
    MASK, MIN_MASKED_SUBSTRING, MIN_MASKED_VALUE, RedactingWriter, is_secret, mask_credentials,
    mask_url_passwords, redact_text,
};
use redact::{mask_bytes, maskable_value};

#[cfg(test)]
mod tests;
