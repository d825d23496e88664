//! Slurm / torchrun environment -> topology and rendezvous.
//! OWNER: cluster helper. The types below are the agreed interface.

use serde::{Deserialize, Serialize};

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
}

impl Topology {
    pub fn single_node() -> Self {
        Topology {
            nnodes: 1,
            node_rank: 0,
            rendezvous: None,
            source: "single node".into(),
            slurm_job_id: None,
        }
    }
}
