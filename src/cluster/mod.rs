//! Slurm / torchrun environment -> topology and rendezvous.
//! OWNER: cluster helper. The types below are the agreed interface.

use serde::{Deserialize, Serialize};

mod hostlist;
pub mod peers;
mod topology;

pub use hostlist::{MAX_HOSTS, parse_hostlist};
pub use topology::{
    DEFAULT_C10D_PORT, PORT_BASE, PORT_SPAN, TopologyFlags, port_for_job, topology_from_env,
    topology_from_process_env,
};

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

/// Everything that can be wrong with the cluster environment; each message names the
/// variable or flag and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the Slurm hostlist {list:?}: {why}")]
    Hostlist { list: String, why: String },
    #[error("{var}={value:?} is not valid: {why}")]
    BadValue {
        var: String,
        value: String,
        why: String,
    },
    #[error(
        "node rank {node_rank} (from {rank_source}) is not below the node count {nnodes} (from {nnodes_source}); node ranks run 0..{nnodes}"
    )]
    RankOutOfRange {
        node_rank: u32,
        rank_source: String,
        nnodes: u32,
        nnodes_source: String,
    },
    #[error(
        "{nnodes} nodes (from {nnodes_source}) but {var} lists {listed} hosts ({list}); run one vla-launch per node of the job step (srun --ntasks-per-node=1)"
    )]
    NodeListMismatch {
        nnodes: u32,
        nnodes_source: String,
        var: String,
        listed: usize,
        list: String,
    },
    #[error(
        "{nnodes} nodes but this node's rank is unknown: pass --node-rank, or set NODE_RANK (torchrun style) or run under srun (SLURM_NODEID)"
    )]
    MissingNodeRank { nnodes: u32 },
    #[error(
        "{nnodes} nodes but no rendezvous host is known: pass --rdzv-endpoint HOST[:PORT], or set MASTER_ADDR, or run inside a Slurm job"
    )]
    MissingEndpoint { nnodes: u32 },
    #[error(
        "vla-launch is running inside a torchrun worker (LOCAL_RANK={local_rank:?} is set): start it once per node, outside torchrun, and it starts torchrun itself"
    )]
    InsideTorchrunWorker { local_rank: String },
}
