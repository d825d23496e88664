//! Why a node stops: the cause of a stop caused by a peer, as data.

use std::fmt;
use std::sync::Arc;

/// How a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerFailure {
    /// Its torchrun ended with this non-zero exit code.
    Failed { exit_code: i32 },
    /// Its connection ended without an `exit` line (launcher killed, crashed).
    Gone,
    /// Nothing heard from it for this many seconds.
    Lost { silent_s: u64 },
    /// It failed before training started (its port taken...), with this exit code and reason;
    /// learnt from its start-failure note (`notes`), not from the wire.
    Refused { exit_code: i32, why: String },
}

/// A stop caused by a peer: which node, and how it failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStop {
    pub node: u32,
    #[serde(flatten)]
    pub failure: PeerFailure,
    /// Its torchrun's own exit code, where its launcher's differs (1 for "training failed"
    /// when torchrun exited 3): what the message names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torchrun_exit: Option<i32>,
}

impl PeerStop {
    /// The failing node's exit code, when it reported one.
    pub fn exit_code(&self) -> Option<i32> {
        match self.failure {
            PeerFailure::Failed { exit_code } | PeerFailure::Refused { exit_code, .. } => {
                Some(exit_code)
            }
            _ => None,
        }
    }

    pub(super) fn wire(&self) -> String {
        match self.failure {
            // The reason stays in the note: the wire carries causes as data only.
            PeerFailure::Refused { exit_code, .. } => {
                format!("stop {} failed {exit_code}", self.node)
            }
            PeerFailure::Failed { exit_code } => match self.torchrun_exit {
                Some(t) => format!("stop {} failed {exit_code} {t}", self.node),
                None => format!("stop {} failed {exit_code}", self.node),
            },
            PeerFailure::Gone => format!("stop {} gone", self.node),
            PeerFailure::Lost { silent_s } => format!("stop {} lost {silent_s}", self.node),
        }
    }

    pub(super) fn parse_wire(words: &[&str]) -> Option<PeerStop> {
        let node = words.first()?.parse().ok()?;
        let mut torchrun_exit = None;
        let failure = match words[1..] {
            ["failed", code] => PeerFailure::Failed {
                exit_code: code.parse().ok()?,
            },
            ["failed", code, torchrun] => {
                torchrun_exit = Some(torchrun.parse().ok()?);
                PeerFailure::Failed {
                    exit_code: code.parse().ok()?,
                }
            }
            ["gone"] => PeerFailure::Gone,
            ["lost", s] => PeerFailure::Lost {
                silent_s: s.parse().ok()?,
            },
            _ => return None,
        };
        Some(PeerStop {
            node,
            failure,
            torchrun_exit,
        })
    }
}

impl fmt::Display for PeerStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.node;
        match &self.failure {
            PeerFailure::Refused { exit_code, why } => {
                write!(f, "node {n} could not start (exit {exit_code}): {why}")
            }
            &PeerFailure::Failed { exit_code } => match self.torchrun_exit {
                Some(t) if t != exit_code => write!(
                    f,
                    "node {n}'s training failed: its torchrun exited with {t} (its launcher with {exit_code})"
                ),
                _ => write!(f, "node {n}'s training ended with exit {exit_code}"),
            },
            PeerFailure::Gone => write!(f, "node {n}'s launcher is gone without reporting an exit"),
            PeerFailure::Lost { silent_s } => write!(
                f,
                "node {n}'s launcher has not been heard from for {silent_s} s (node lost?)"
            ),
        }
    }
}

/// Called once, with the cause, when this node's run must stop.
pub type OnStop = Arc<dyn Fn(PeerStop) + Send + Sync>;
