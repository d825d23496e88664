//! Start-failure notes: a node that fails before its peer watch could tell anyone (its
//! rendezvous or watch port taken) leaves its exit code and why in the job's private directory
//! on the shared run root (`<run root>/vla-launch/.secrets`, 0700, the job secret's), before it
//! exits. srun then stops the other nodes (`--kill-on-bad-exit`) with a SIGTERM that carries no
//! cause; a node stopped by a signal looks for its peers' notes and, finding one, takes that
//! node's code and cause as its own (issue 25 item 6: the job read 143:0, node 1 "interrupted").
//!
//! A note names the job and its Slurm restart, so a requeued job never reads its previous start's
//! notes. It is read only from a private directory and a private file owned by this user, so no
//! other user can make a node take a code; its text is shown escaped and bounded.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::secret::{JobSecret, check_private};
use super::stop::{PeerFailure, PeerStop};
use super::wire::printable;

/// Most bytes of a note's reason that are kept.
const MAX_WHY: usize = 400;

/// The note of node `node` for start `restart` of job `job` in `dir`.
pub fn note_path(dir: &Path, job: &str, restart: u32, node: u32) -> PathBuf {
    let key = JobSecret::file_path(dir, job);
    let stem = key.file_stem().map(|s| s.to_string_lossy().to_string());
    dir.join(format!(
        "{}.start{restart}.node{node}.failed",
        stem.unwrap_or_default()
    ))
}

/// Leaves this node's start failure (exit code and why) for the other nodes of the job.
pub fn write_start_failure(
    dir: &Path,
    job: &str,
    restart: u32,
    node: u32,
    exit_code: i32,
    why: &str,
) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    check_private(dir, true)
        .map_err(|why| io::Error::other(format!("{}: {why}", dir.display())))?;
    let path = note_path(dir, job, restart, node);
    let text = format!("{exit_code}\n{}\n", printable(why.as_bytes(), MAX_WHY));
    crate::atomic_file::write_atomic(&path, &text, 0o600)?;
    Ok(path)
}

/// The first start failure another node (of `nnodes`, not `me`) left for this start of the job,
/// as the stop it causes here.
pub fn read_start_failure(
    dir: &Path,
    job: &str,
    restart: u32,
    nnodes: u32,
    me: u32,
) -> Option<PeerStop> {
    check_private(dir, true).ok()?;
    (0..nnodes).filter(|&n| n != me).find_map(|node| {
        let path = note_path(dir, job, restart, node);
        check_private(&path, false).ok()?;
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_WHY as u64 * 4 + 32).read_to_end(&mut bytes))
            .ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let (code, why) = text.split_once('\n')?;
        let exit_code: i32 = code.trim().parse().ok().filter(|&c| c != 0)?;
        Some(PeerStop {
            node,
            failure: PeerFailure::Refused {
                exit_code,
                why: printable(why.trim_end().as_bytes(), MAX_WHY),
            },
            torchrun_exit: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reaches_the_other_nodes_of_the_same_start_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(".secrets");
        let why = "port 20176 (--rdzv-port) is already in use on node 0\x1b[31m";
        write_start_failure(&dir, "176", 0, 0, 4, why).unwrap();
        let got = read_start_failure(&dir, "176", 0, 2, 1).expect("node 1 reads node 0's note");
        assert_eq!(got.node, 0);
        assert_eq!(got.exit_code(), Some(4));
        let shown = got.to_string();
        assert!(shown.contains("node 0 could not start (exit 4)"), "{shown}");
        assert!(
            shown.contains("already in use") && !shown.contains('\x1b'),
            "{shown}"
        );
        // Not its own, not another start's (a requeue), not another job's.
        assert_eq!(read_start_failure(&dir, "176", 0, 2, 0), None);
        assert_eq!(read_start_failure(&dir, "176", 1, 2, 1), None);
        assert_eq!(read_start_failure(&dir, "177", 0, 2, 1), None);
    }

    #[test]
    fn a_note_others_could_have_written_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(".secrets");
        let path = write_start_failure(&dir, "9", 0, 0, 4, "port taken").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_start_failure(&dir, "9", 0, 2, 1), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(read_start_failure(&dir, "9", 0, 2, 1), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(read_start_failure(&dir, "9", 0, 2, 1).is_some());
        // A code of 0 or no code is no failure.
        std::fs::write(&path, "0\nfine\n").unwrap();
        assert_eq!(read_start_failure(&dir, "9", 0, 2, 1), None);
    }
}
