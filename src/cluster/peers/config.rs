//! The watch's constants and clocks.

use hmac::Hmac;
use sha2::Sha256;
use std::path::PathBuf;
use std::time::Duration;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// How often each side writes `ping` (and checks for silence), in a real job.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// No authenticated line for this long: the other side is taken for lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// A connection must finish its handshake this soon after it is accepted.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Longest line read; longer ones close an unauthenticated connection and are dropped otherwise.
pub const MAX_LINE: usize = 256;
/// Connections in their handshake at once on node 0; more are closed as soon as accepted.
pub const MAX_PENDING: usize = 16;
/// Of those, at most this many from one address.
pub const MAX_PENDING_PER_ADDRESS: usize = 4;
/// How long a node waits for node 0 to create the job's secret file.
pub const SECRET_WAIT: Duration = Duration::from_secs(120);
/// The environment variable that carries the job's secret.
pub const SECRET_ENV: &str = crate::cluster::JOB_SECRET_ENV;
/// Shortest secret taken (characters of the variable, or of the file).
pub const MIN_SECRET_LEN: usize = crate::cluster::JOB_SECRET_MIN_LEN;

/// The watch's clocks. [`Timing::default`] is what a job uses; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ping_every: Duration,
    pub silence_limit: Duration,
    pub auth_deadline: Duration,
    /// Node 0 warns when a node has not connected after this long; a node warns when node 0
    /// has not answered after this long.
    pub connect_warn_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_every: PING_EVERY,
            silence_limit: SILENCE_LIMIT,
            auth_deadline: AUTH_DEADLINE,
            connect_warn_after: Duration::from_secs(120),
        }
    }
}

/// What one node needs to start its watch.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    pub job_id: String,
    pub nnodes: u32,
    pub node_rank: u32,
    /// Node 0's name or address (from the rendezvous endpoint).
    pub host: String,
    pub port: u16,
    /// The value of [`SECRET_ENV`], if set.
    pub env_secret: Option<String>,
    /// Where node 0 creates the secret file when there is no [`SECRET_ENV`]: a directory on
    /// the file system every node shares (`<run root>/vla-launch/.secrets`).
    pub secrets_dir: PathBuf,
    pub secret_wait: Duration,
    pub timing: Timing,
}
