//! What can be wrong with the cluster environment.

/// Everything that can be wrong with the cluster environment; each message names the
/// variable or flag and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot read the Slurm hostlist {}: {why}",
        crate::input::excerpt(list, 60)
    )]
    Hostlist { list: String, why: String },
    #[error("{var}={} is not valid: {why}", crate::input::excerpt(value, 60))]
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
