//! Slurm / torchrun environment -> topology and rendezvous.

mod error;
mod hostlist;
pub mod peers;
mod topology;

pub use error::ClusterError;
pub use hostlist::{MAX_HOSTS, parse_hostlist};
pub use topology::{
    DEFAULT_C10D_PORT, JOB_SECRET_ENV, JOB_SECRET_MIN_LEN, PORT_BASE, PORT_SPAN, Rendezvous,
    Topology, TopologyFlags, job_port, port_for_job, topology_from_env, topology_from_process_env,
};
