//! Peer watch: the launchers of one multi-node job stop together.
//!
//! torchrun's c10d rendezvous forms the job, but once training runs nothing tells the other
//! nodes that one node's launcher is gone (killed, crashed, its node lost): their workers wait in
//! an NCCL collective for ranks that will never answer until NCCL's timeout, ten minutes or more
//! of every GPU of the job. So the launchers keep a small side channel of their own, beside
//! torchrun's (which they do not touch): node 0's launcher listens on the watch port, every other
//! node's launcher holds one TCP connection to it.
//!
//! # The job secret
//!
//! The port is open to anyone who can reach node 0, so every connection is authenticated with a
//! secret that only the job's own nodes know ([`JobSecret`]):
//! - `VLA_LAUNCH_JOB_SECRET` in the job's environment (at least 32 characters; the shipped sbatch
//!   recipe creates one per job; Slurm hands the batch environment to every task, and
//!   `/proc/PID/environ` is readable by the job's owner only), or else
//! - a file `<run root>/vla-launch/.secrets/job-<JOB_ID>.key` on the shared file system: node 0
//!   creates it once (exclusively, mode 0600, in a 0700 directory it owns), the other nodes wait
//!   for it (bounded, [`SECRET_WAIT`]) and refuse it unless it is theirs and private.
//!
//! Without a secret the watch does not run, and the launcher says so loudly with the fix.
//!
//! # Protocol (ASCII lines of at most [`MAX_LINE`] bytes)
//!
//! 1. node 0 -> node n: `challenge NONCE_0` (16 fresh random bytes, hex).
//! 2. node n -> node 0: `hello JOB_ID n NONCE_N MAC` with
//!    `MAC = HMAC-SHA256(secret, "hello", job, n, NONCE_0, NONCE_N)`. Node 0 checks the job, that
//!    `0 < n < nnodes`, the MAC, and that node n has no authenticated connection already (one is
//!    never replaced by another).
//! 3. node 0 -> node n: `welcome MAC'` with `MAC' = HMAC-SHA256(secret, "welcome", ...)`: node n
//!    knows it talks to its own node 0 (both directions authenticated).
//! 4. From then on both sides use `key = HMAC-SHA256(secret, "session", ...)` and send
//!    `SEQ BODY MAC` with `MAC = HMAC-SHA256(key, direction, SEQ, BODY)`, SEQ counting from 0 in
//!    each direction: a replayed, reordered or injected line fails and is dropped.
//!
//! Bodies: `ping` (on its own timer, every [`Timing::ping_every`], whatever is read), `exit CODE`
//! (this node's torchrun ended), and from node 0 `stop NODE failed CODE` / `stop NODE gone` /
//! `stop NODE lost SECONDS` (another node failed; the cause travels as data, never as text).
//!
//! A node stops its own run (as if it had received SIGTERM: torchrun gets it, then the grace
//! period) when: a peer reports a non-zero exit, a peer's authenticated connection ends without
//! an `exit` line (SIGKILL, crash), nothing authenticated arrives for [`Timing::silence_limit`]
//! (a lost node), or node 0 says `stop`. The stop carries a [`PeerStop`]: which node, and its exit
//! code or how it was lost. Nothing unauthenticated can stop a node: a connection that fails the
//! handshake is closed and, on node n, retried.
//!
//! # Bounds
//!
//! At most [`MAX_PENDING`] connections are in their handshake at once, and at most
//! [`MAX_PENDING_PER_ADDRESS`] from one address (more are closed at once), each for at most
//! [`Timing::auth_deadline`] by the clock; lines are read with a limit; one thread per handshake
//! or authenticated node, plus the accept and heartbeat threads. Errors from `accept` (EMFILE...)
//! are retried with backoff. Peer text is never printed raw ([`printable`]); refused connections
//! are logged for the first few only.

mod config;
mod hub;
mod node;
mod notes;
mod ports;
mod secret;
mod shared;
mod start;
mod stop;
mod watch;
mod wire;

pub use config::{
    AUTH_DEADLINE, MAX_LINE, MAX_PENDING, MAX_PENDING_PER_ADDRESS, MIN_SECRET_LEN, NodeWatch,
    PING_EVERY, SECRET_ENV, SECRET_WAIT, SILENCE_LIMIT, Timing,
};
pub use notes::{note_path, read_start_failure, write_start_failure};
pub use ports::{
    PortTaken, check_port_free, check_rendezvous_port, rendezvous_host_warning, watch_port,
};
pub use secret::{JobSecret, SecretError};
pub use start::{job_secret, start_node_watch};
pub use stop::{OnStop, PeerFailure, PeerStop};
pub use watch::{PeerWatch, WatchJob};
pub use wire::printable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_ports_stay_clear_of_rendezvous_ports() {
        assert_eq!(watch_port(20_000), 10_000);
        assert_eq!(watch_port(28_999), 18_999);
        assert_eq!(watch_port(29_400), 19_400);
        assert_eq!(watch_port(5_000), 15_000);
        assert_eq!(watch_port(65_535), 55_535);
    }

    /// Issue 25 item 11: with the job's secret the port is not the one its id predicts, every
    /// node computes the same, and it stays in the derived range.
    #[test]
    fn job_ports_come_from_the_secret_when_there_is_one() {
        use crate::cluster::job_port;
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let (a, b) = (Some(a.as_str()), Some(b.as_str()));
        let mut differ = 0;
        for id in ["1", "4646", "123456", "99999"] {
            let p = job_port(id, a);
            assert_eq!(p, job_port(id, a));
            assert!((20_000..29_000).contains(&p), "{p}");
            differ += usize::from(p != crate::cluster::port_for_job(id));
            differ += usize::from(p != job_port(id, b));
            assert_eq!(job_port(id, None), crate::cluster::port_for_job(id));
            // Too short to be a secret: the id's port, as without one.
            assert_eq!(
                job_port(id, Some("short")),
                crate::cluster::port_for_job(id)
            );
        }
        assert!(differ >= 7, "{differ}");
    }

    #[test]
    fn stop_causes_survive_the_wire() {
        for failure in [
            PeerFailure::Failed { exit_code: -3 },
            PeerFailure::Gone,
            PeerFailure::Lost { silent_s: 31 },
        ] {
            let s = PeerStop {
                node: 3,
                failure,
                torchrun_exit: None,
            };
            let wire = s.wire();
            let words: Vec<&str> = wire.split(' ').collect();
            assert_eq!(PeerStop::parse_wire(&words[1..]), Some(s));
        }
        let s = PeerStop {
            node: 2,
            failure: PeerFailure::Failed { exit_code: 1 },
            torchrun_exit: Some(3),
        };
        let wire = s.wire();
        let words: Vec<&str> = wire.split(' ').collect();
        assert_eq!(PeerStop::parse_wire(&words[1..]), Some(s));
    }

    #[test]
    fn printable_escapes_control_bytes_and_bounds_length() {
        assert_eq!(printable(b"a\x1b[31mb\n", 100), "a\\x1b[31mb\\n");
        assert_eq!(printable(&[b'x'; 10], 4), "xxxx...");
    }
}
