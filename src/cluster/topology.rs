//! Which node am I, how many are there, and where do they meet: from flags, torchrun-style
//! variables (Kubernetes PyTorchJob, hand-set) or Slurm, in that order of precedence, field by
//! field. Pure: the environment comes in as a lookup function.

use serde::{Deserialize, Serialize};

use super::error::ClusterError;
use super::hostlist::parse_hostlist;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendezvous {
    pub backend: String,
    /// "host:port".
    pub endpoint: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub nnodes: u32,
    pub node_rank: u32,
    /// None on a single node (torchrun --standalone).
    pub rendezvous: Option<Rendezvous>,
    /// Where this came from: "single node", "slurm job 1234", "torchrun env", "flags".
    pub source: String,
    pub slurm_job_id: Option<String>,
    /// GPUs Slurm gave this node (`SLURM_GPUS_ON_NODE`), when it says.
    #[serde(default)]
    pub slurm_gpus_on_node: Option<u32>,
    /// Physical GPU indices of this job step (`SLURM_STEP_GPUS`, e.g. "0,1"), when Slurm says.
    #[serde(default)]
    pub slurm_step_gpus: Option<Vec<u32>>,
}

impl Topology {
    pub fn single_node() -> Self {
        Topology {
            nnodes: 1,
            node_rank: 0,
            rendezvous: None,
            source: "single node".into(),
            slurm_job_id: None,
            slurm_gpus_on_node: None,
            slurm_step_gpus: None,
        }
    }

    pub fn is_multi_node(&self) -> bool {
        self.nnodes > 1
    }
}

/// Derived rendezvous ports lie in `PORT_BASE .. PORT_BASE + PORT_SPAN` (20000..=28999): below
/// torchrun's own defaults (29400 c10d, 29500 MASTER_PORT) so a hand-started torchrun on a shared
/// node does not collide, and below Linux's ephemeral range (32768+) so an outgoing connection
/// cannot already hold the port.
pub const PORT_BASE: u16 = 20_000;
pub const PORT_SPAN: u16 = 9_000;
/// torchrun's default c10d port, used when nothing names or derives one.
pub const DEFAULT_C10D_PORT: u16 = 29_400;

/// The variable that carries a job's secret (the peer watch's: `cluster::peers`).
pub const JOB_SECRET_ENV: &str = "VLA_LAUNCH_JOB_SECRET";
/// Shortest secret taken (characters, surrounding space trimmed).
pub const JOB_SECRET_MIN_LEN: usize = 32;

/// A Slurm job's rendezvous port (its peer-watch port is 10000 less). From the job's secret
/// ([`JOB_SECRET_ENV`], which every node of the job has and other users cannot read) when there
/// is one: `PORT_BASE + HMAC-SHA256(secret, "vla-launch rdzv-port", job id) mod PORT_SPAN`, so
/// another user who reads the pending job's id in `squeue` cannot bind the job's ports before it
/// starts (issue 25 item 11). Without a secret: [`port_for_job`], predictable.
pub fn job_port(job_id: &str, secret: Option<&str>) -> u16 {
    use hmac::Mac;
    let Some(key) = secret
        .map(str::trim)
        .filter(|s| s.len() >= JOB_SECRET_MIN_LEN)
    else {
        return port_for_job(job_id);
    };
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(b"vla-launch rdzv-port\0");
    mac.update(job_id.trim().as_bytes());
    let bytes = mac.finalize().into_bytes();
    let n = u64::from_be_bytes(bytes[..8].try_into().expect("32 bytes"));
    PORT_BASE + (n % u64::from(PORT_SPAN)) as u16
}

/// The command-line side: `--nnodes`, `--node-rank`, `--rdzv-endpoint HOST[:PORT]`, `--rdzv-port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyFlags {
    pub nnodes: Option<u32>,
    pub node_rank: Option<u32>,
    pub rdzv_endpoint: Option<String>,
    pub rdzv_port: Option<u16>,
}

/// Rendezvous port for a job: `PORT_BASE + job_id % PORT_SPAN`, so concurrent jobs that share
/// nodes get different ports and every node of one job computes the same one. A non-numeric id
/// is hashed (FNV-1a) into the same range.
pub fn port_for_job(job_id: &str) -> u16 {
    let n = match job_id.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => job_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
    };
    PORT_BASE + (n % u64::from(PORT_SPAN)) as u16
}

/// A value and where it came from ("--nnodes", "SLURM_NNODES"...), for error messages.
#[derive(Debug, Clone)]
struct Sourced<T> {
    value: T,
    from: String,
}

fn sourced<T>(value: T, from: &str) -> Sourced<T> {
    Sourced {
        value,
        from: from.to_string(),
    }
}

/// Reads variables, treating empty ones as unset (a blank `export NODE_RANK=` is common).
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn first(&self, vars: &[&str]) -> Option<Sourced<String>> {
        vars.iter()
            .find_map(|v| self.get(v).map(|value| sourced(value, v)))
    }

    fn number(&self, vars: &[&str]) -> Result<Option<Sourced<u32>>, ClusterError> {
        self.first(vars).map(|s| parse_count(&s)).transpose()
    }
}

fn parse_count(s: &Sourced<String>) -> Result<Sourced<u32>, ClusterError> {
    let bad = |why: &str| ClusterError::BadValue {
        var: s.from.clone(),
        value: s.value.clone(),
        why: why.to_string(),
    };
    // torchrun accepts an elastic range "MIN:MAX"; a fixed job has MIN == MAX.
    let text = match s.value.split_once(':') {
        Some((lo, hi)) if lo == hi => lo,
        Some(_) => {
            return Err(bad(
                "elastic node ranges (MIN:MAX) are not supported: give one number",
            ));
        }
        None => s.value.as_str(),
    };
    let value = text
        .parse::<u32>()
        .map_err(|_| bad("expected a whole number"))?;
    Ok(sourced(value, &s.from))
}

/// What Slurm says, when inside a Slurm job (SLURM_JOB_ID set).
struct SlurmEnv {
    job_id: String,
    nnodes: Option<Sourced<u32>>,
    node_id: Option<Sourced<u32>>,
    /// (variable, raw list, expanded hosts)
    nodelist: Option<(String, String, Vec<String>)>,
    gpus_on_node: Option<u32>,
    step_gpus: Option<Vec<u32>>,
}

impl SlurmEnv {
    fn read(env: &Env) -> Result<Option<SlurmEnv>, ClusterError> {
        let Some(job_id) = env.get("SLURM_JOB_ID").or_else(|| env.get("SLURM_JOBID")) else {
            return Ok(None);
        };
        // Inside an srun step the step's own values describe the nodes that run vla-launch.
        let nnodes = env.number(&[
            "SLURM_STEP_NUM_NODES",
            "SLURM_NNODES",
            "SLURM_JOB_NUM_NODES",
        ])?;
        let node_id = env.number(&["SLURM_NODEID"])?;
        let nodelist = match env.first(&[
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_NODELIST",
        ]) {
            Some(s) => {
                let hosts = parse_hostlist(&s.value).map_err(|e| ClusterError::BadValue {
                    var: s.from.clone(),
                    value: s.value.clone(),
                    why: e.to_string(),
                })?;
                Some((s.from, s.value, hosts))
            }
            None => None,
        };
        if let Some(tasks) = env.first(&["SLURM_STEP_TASKS_PER_NODE"]) {
            check_one_task_per_node(&tasks)?;
        }
        let gpus_on_node = env.number(&["SLURM_GPUS_ON_NODE"])?.map(|s| s.value);
        let step_gpus = env
            .first(&["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"])
            .map(|s| parse_gpu_indices(&s))
            .transpose()?;
        Ok(Some(SlurmEnv {
            job_id,
            nnodes,
            node_id,
            nodelist,
            gpus_on_node,
            step_gpus,
        }))
    }
}

/// `SLURM_STEP_TASKS_PER_NODE` looks like `1(x4)` or `2,1`; more than one task on a node would
/// start several torchruns that fight over the same GPUs.
fn check_one_task_per_node(s: &Sourced<String>) -> Result<(), ClusterError> {
    for part in s.value.split(',') {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.parse::<u32>().is_ok_and(|n| n > 1) {
            return Err(ClusterError::BadValue {
                var: s.from.clone(),
                value: s.value.clone(),
                why: "vla-launch must run as one task per node (srun --ntasks-per-node=1); torchrun starts one process per GPU itself".into(),
            });
        }
    }
    Ok(())
}

fn parse_gpu_indices(s: &Sourced<String>) -> Result<Vec<u32>, ClusterError> {
    s.value
        .split(',')
        .map(|g| {
            g.trim().parse::<u32>().map_err(|_| ClusterError::BadValue {
                var: s.from.clone(),
                value: s.value.clone(),
                why: format!("{g:?} is not a GPU index; expected a comma list such as 0,1,2,3"),
            })
        })
        .collect()
}

/// Split `host`, `host:port` or `[v6addr]:port`.
fn split_endpoint(endpoint: &str) -> Result<(String, Option<u16>), ClusterError> {
    let bad = |why: &str| ClusterError::BadValue {
        var: "--rdzv-endpoint".into(),
        value: endpoint.to_string(),
        why: why.to_string(),
    };
    let e = endpoint.trim();
    let (host, port) = if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("'[' without ']' around an IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(p) => (format!("[{host}]"), Some(p)),
            None if after.is_empty() => (format!("[{host}]"), None),
            None => return Err(bad("expected [IPv6]:PORT")),
        }
    } else {
        match e.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("write an IPv6 address in brackets: [addr]:port"));
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (e.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("the host is empty; expected HOST[:PORT]"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))
        })
        .transpose()?;
    Ok((host, port))
}

fn parse_port(s: &Sourced<String>) -> Result<u16, ClusterError> {
    s.value
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| ClusterError::BadValue {
            var: s.from.clone(),
            value: s.value.clone(),
            why: "a port is a number from 1 to 65535".into(),
        })
}

/// Topology from the process environment (`std::env`), for the binary.
pub fn topology_from_process_env(flags: &TopologyFlags) -> Result<Topology, ClusterError> {
    topology_from_env(&|k| std::env::var(k).ok(), flags)
}

/// Resolve the topology. Precedence per field: flags > torchrun-style variables > Slurm >
/// single node. In a Slurm job `WORLD_SIZE`/`RANK` are ignored: sbatch scripts often export
/// them counting processes, whereas a Kubernetes PyTorchJob (no Slurm) sets them counting pods,
/// i.e. nodes, which is how they are read there.
pub fn topology_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    flags: &TopologyFlags,
) -> Result<Topology, ClusterError> {
    let env = Env(env);
    if let (Some(local_rank), Some(_)) = (env.get("LOCAL_RANK"), env.get("TORCHELASTIC_RUN_ID")) {
        return Err(ClusterError::InsideTorchrunWorker { local_rank });
    }
    let slurm = SlurmEnv::read(&env)?;

    // torchrun-style variables.
    let pet_nproc = env.get("PET_NPROC_PER_NODE");
    let mut torch_nnodes = env.number(&["NNODES", "PET_NNODES"])?;
    let mut torch_rank = env.number(&["NODE_RANK", "PET_NODE_RANK"])?;
    if torch_nnodes.is_none() && slurm.is_none() && pet_nproc.is_none() {
        // PyTorchJob without nprocPerNode: one pod per node, WORLD_SIZE pods, RANK = pod index.
        torch_nnodes = env.number(&["WORLD_SIZE"])?;
        if torch_nnodes.is_some() && torch_rank.is_none() {
            torch_rank = env.number(&["RANK"])?;
        }
    }
    let master_addr = env.first(&["MASTER_ADDR"]);
    let master_port = env
        .first(&["MASTER_PORT"])
        .map(|p| parse_port(&p))
        .transpose()?;

    let flag_nnodes = flags.nnodes.map(|n| sourced(n, "--nnodes"));
    let flag_rank = flags.node_rank.map(|n| sourced(n, "--node-rank"));
    let flag_endpoint = flags
        .rdzv_endpoint
        .as_deref()
        .map(split_endpoint)
        .transpose()?;

    let slurm_nnodes = slurm.as_ref().and_then(|s| s.nnodes.clone());
    let nnodes = flag_nnodes
        .clone()
        .or(torch_nnodes.clone())
        .or(slurm_nnodes.clone())
        .unwrap_or_else(|| sourced(1, "default"));
    if nnodes.value == 0 {
        return Err(ClusterError::BadValue {
            var: nnodes.from,
            value: "0".into(),
            why: "at least one node is needed".into(),
        });
    }
    let node_rank = flag_rank
        .clone()
        .or(torch_rank.clone())
        .or(slurm.as_ref().and_then(|s| s.node_id.clone()));
    let node_rank = checked_node_rank(node_rank, &nnodes)?;
    check_node_list(slurm.as_ref(), slurm_nnodes.as_ref(), &nnodes)?;

    let source = source_label(
        flag_nnodes.is_some() || flag_rank.is_some() || flag_endpoint.is_some(),
        torch_nnodes.is_some() || torch_rank.is_some(),
        master_addr.is_some(),
        slurm.as_ref(),
    );

    let mut topology = Topology {
        nnodes: nnodes.value,
        node_rank: node_rank.value,
        rendezvous: None,
        source,
        slurm_job_id: slurm.as_ref().map(|s| s.job_id.clone()),
        slurm_gpus_on_node: slurm.as_ref().and_then(|s| s.gpus_on_node),
        slurm_step_gpus: slurm.as_ref().and_then(|s| s.step_gpus.clone()),
    };
    if nnodes.value == 1 {
        // One node: torchrun --standalone picks its own free port; no rendezvous to agree on.
        return Ok(topology);
    }

    topology.rendezvous = Some(rendezvous(
        &env,
        flags,
        slurm.as_ref(),
        flag_endpoint.as_ref(),
        master_addr,
        master_port,
        nnodes.value,
    )?);
    Ok(topology)
}

/// The node rank given (or 0 on a single node), checked against the node count.
fn checked_node_rank(
    candidate: Option<Sourced<u32>>,
    nnodes: &Sourced<u32>,
) -> Result<Sourced<u32>, ClusterError> {
    let node_rank = match candidate {
        Some(r) => r,
        None if nnodes.value == 1 => sourced(0, "default"),
        None => {
            return Err(ClusterError::MissingNodeRank {
                nnodes: nnodes.value,
            });
        }
    };
    if node_rank.value >= nnodes.value {
        return Err(ClusterError::RankOutOfRange {
            node_rank: node_rank.value,
            rank_source: node_rank.from,
            nnodes: nnodes.value,
            nnodes_source: nnodes.from.clone(),
        });
    }
    Ok(node_rank)
}

/// Slurm's node count and its node list must agree when the count is Slurm's own.
fn check_node_list(
    slurm: Option<&SlurmEnv>,
    slurm_nnodes: Option<&Sourced<u32>>,
    nnodes: &Sourced<u32>,
) -> Result<(), ClusterError> {
    if let Some(s) = slurm
        && let Some((var, list, hosts)) = &s.nodelist
        && slurm_nnodes.is_some_and(|n| n.from == nnodes.from)
        && hosts.len() != nnodes.value as usize
    {
        return Err(ClusterError::NodeListMismatch {
            nnodes: nnodes.value,
            nnodes_source: nnodes.from.clone(),
            var: var.clone(),
            listed: hosts.len(),
            list: list.clone(),
        });
    }
    Ok(())
}

/// Where the topology came from. An sbatch script that only exports MASTER_ADDR is still a
/// Slurm topology.
fn source_label(
    flags_given: bool,
    torch_given: bool,
    master_addr_set: bool,
    slurm: Option<&SlurmEnv>,
) -> String {
    if flags_given {
        "flags".to_string()
    } else if torch_given || (master_addr_set && slurm.is_none()) {
        "torchrun env".to_string()
    } else if let Some(s) = slurm {
        format!("slurm job {}", s.job_id)
    } else {
        "single node".to_string()
    }
}

/// The rendezvous every node agrees on: the host from `--rdzv-endpoint`, `MASTER_ADDR` or
/// Slurm's first node; the port from the flags, `MASTER_PORT` or the job; the id from the job.
fn rendezvous(
    env: &Env,
    flags: &TopologyFlags,
    slurm: Option<&SlurmEnv>,
    flag_endpoint: Option<&(String, Option<u16>)>,
    master_addr: Option<Sourced<String>>,
    master_port: Option<u16>,
    nnodes: u32,
) -> Result<Rendezvous, ClusterError> {
    let slurm_first_host = slurm
        .and_then(|s| s.nodelist.as_ref())
        .and_then(|(_, _, hosts)| hosts.first().cloned());
    let host = flag_endpoint
        .map(|(h, _)| h.clone())
        .or(master_addr.map(|a| a.value))
        .or(slurm_first_host)
        .ok_or(ClusterError::MissingEndpoint { nnodes })?;

    let endpoint_port = flag_endpoint.and_then(|(_, p)| *p);
    if let (Some(in_endpoint), Some(flag_port)) = (endpoint_port, flags.rdzv_port)
        && in_endpoint != flag_port
    {
        return Err(ClusterError::BadValue {
            var: "--rdzv-port".into(),
            value: flag_port.to_string(),
            why: format!("--rdzv-endpoint already names port {in_endpoint}; give the port once"),
        });
    }
    let port = endpoint_port
        .or(flags.rdzv_port)
        .or(master_port)
        // Derived from the job's secret where it has one: not guessable (issue 25 item 11).
        .or(slurm.map(|s| job_port(&s.job_id, env.get(JOB_SECRET_ENV).as_deref())))
        .unwrap_or(DEFAULT_C10D_PORT);

    // Every node must present the same id; the Slurm job id is shared by all of them, and
    // elsewhere the agreed endpoint is.
    let id = match slurm {
        Some(s) => s.job_id.clone(),
        None => format!(
            "vla-launch-{}-{port}",
            host.trim_matches(['[', ']']).replace(':', "-")
        ),
    };
    Ok(Rendezvous {
        backend: "c10d".into(),
        endpoint: format!("{host}:{port}"),
        id,
    })
}
