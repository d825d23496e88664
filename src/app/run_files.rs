//! Where a run's log and record go: readable names that never collide.
//!
//! `run-<local time>[-job<ID>-node<R>-<host>][-retry<N>][-<K>].log` and `plan-<same>.json`, in the
//! log directory. Both files are created exclusively (`O_EXCL`): a name already taken (another
//! launch in the same second, another node of the job on a shared file system, a replay) moves
//! on to the next `-<K>` suffix, so no run overwrites another's log or record. A multi-node job's
//! names carry the job id, the node rank and the host, so its nodes' files sit side by side.
//! `latest.log` / `latest.json` (`latest-node<R>.*` on a node of a multi-node job) are symlinks
//! to the newest run's files, replaced atomically (a new link renamed over the old one).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// How many `-<K>` suffixes are tried before giving up (a directory full of one second's runs).
const MAX_SUFFIX: u32 = 10_000;

/// Which node of which job a run belongs to, in its file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeTag {
    pub(super) job: String,
    pub(super) node_rank: u32,
    pub(super) host: String,
}

impl NodeTag {
    /// `job<ID>-node<R>-<host>`, every part reduced to `[A-Za-z0-9._]` (names from the
    /// environment never make a path or an odd file name).
    fn label(&self) -> String {
        format!(
            "job{}-node{}-{}",
            safe(&self.job),
            self.node_rank,
            safe(&self.host)
        )
    }
}

/// The files claimed for one run.
#[derive(Debug, Clone)]
pub(super) struct RunFiles {
    pub(super) log: PathBuf,
    /// `None` for a replay (it keeps no record of its own).
    pub(super) record: Option<PathBuf>,
}

impl RunFiles {
    /// Removes the claimed files (a launch refused before it began writing them).
    pub(super) fn remove(&self) {
        for f in std::iter::once(&self.log).chain(&self.record) {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn safe(s: &str) -> String {
    let out: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "_".into() } else { out }
}

/// This host's name for file names: Slurm's node name when Slurm runs us, else the hostname.
pub(super) fn host_name(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("SLURMD_NODENAME")
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "host".into())
}

/// Local time as `YYYYmmdd-HHMMSS`.
pub(super) fn local_stamp(unix: i64) -> String {
    let t: libc::time_t = unix as libc::time_t;
    // SAFETY: `tm` is plain old data (all-zero is a valid value); localtime_r (the reentrant
    // form) reads `t` and writes only into `tm`, both ours and alive across the call.
    let (ok, tm) = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let ok = !libc::localtime_r(&t, &mut tm).is_null();
        (ok, tm)
    };
    if !ok {
        return format!("{unix}");
    }
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The stem shared by a run's files, before any `-<K>` suffix.
fn stem(stamp: &str, node: Option<&NodeTag>, attempt: u32) -> String {
    let mut s = stamp.to_string();
    if let Some(n) = node {
        s.push('-');
        s.push_str(&n.label());
    }
    if attempt > 0 {
        s.push_str(&format!("-retry{attempt}"));
    }
    s
}

/// Creates `path`, which must not exist, with `mode` (`--record-mode`: the log holds whatever the
/// script printed, so it is as private as the record).
fn create_new(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have taken bits the mode asks for (0640 under umask 077).
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Claims a launch's log and record (`kind` "run"), or a replay's log (`kind` "replay"), in
/// `dir` (created if missing), both created with `mode`.
pub(super) fn claim(
    dir: &Path,
    kind: &str,
    stamp: &str,
    node: Option<&NodeTag>,
    attempt: u32,
    mode: u32,
) -> io::Result<RunFiles> {
    std::fs::create_dir_all(dir)?;
    let base = stem(stamp, node, attempt);
    let with_record = kind == "run";
    for k in 1..=MAX_SUFFIX {
        let name = if k == 1 {
            base.clone()
        } else {
            format!("{base}-{k}")
        };
        let log = dir.join(format!("{kind}-{name}.log"));
        match create_new(&log, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if !with_record {
            return Ok(RunFiles { log, record: None });
        }
        let record = dir.join(format!("plan-{name}.json"));
        match create_new(&record, mode) {
            Ok(()) => {
                return Ok(RunFiles {
                    log,
                    record: Some(record),
                });
            }
            // Taken by a record without its log (written by hand, or an older launcher):
            // leave both and take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{MAX_SUFFIX} runs named {kind}-{base}-* already in {}",
        dir.display()
    )))
}

/// Points `latest.<ext>` (or `latest-node<R>.<ext>`) in the file's directory at `file`,
/// atomically: a fresh symlink renamed over the old one.
pub(super) fn point_latest(file: &Path, node: Option<&NodeTag>) -> io::Result<()> {
    let (Some(dir), Some(name), Some(ext)) = (file.parent(), file.file_name(), file.extension())
    else {
        return Ok(());
    };
    let ext = ext.to_string_lossy();
    let latest = match node {
        Some(n) => format!("latest-node{}.{ext}", n.node_rank),
        None => format!("latest.{ext}"),
    };
    let tmp = dir.join(format!(
        ".{latest}.{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, dir.join(latest)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> NodeTag {
        NodeTag {
            job: "4242".into(),
            node_rank: 1,
            host: "n2/../x y".into(),
        }
    }

    #[test]
    fn one_second_two_claims_two_names() {
        let d = tempfile::tempdir().unwrap();
        let a = claim(d.path(), "run", "20261128-081723", None, 0, 0o600).unwrap();
        let b = claim(d.path(), "run", "20261128-081723", None, 0, 0o600).unwrap();
        assert_ne!(a.log, b.log);
        assert_ne!(a.record, b.record);
        assert!(b.log.ends_with("run-20261128-081723-2.log"), "{b:?}");
        assert!(
            b.record
                .as_ref()
                .unwrap()
                .ends_with("plan-20261128-081723-2.json")
        );
    }

    #[test]
    fn node_names_carry_job_rank_and_a_safe_host() {
        let d = tempfile::tempdir().unwrap();
        let a = claim(d.path(), "run", "20261128-081723", Some(&tag()), 2, 0o600).unwrap();
        assert!(
            a.log
                .ends_with("run-20261128-081723-job4242-node1-n2_.._x_y-retry2.log"),
            "{a:?}"
        );
    }

    #[test]
    fn a_record_name_taken_alone_moves_both_on() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("plan-s.json"), "{}").unwrap();
        let a = claim(d.path(), "run", "s", None, 0, 0o600).unwrap();
        assert!(a.record.unwrap().ends_with("plan-s-2.json"));
        assert_eq!(std::fs::read(d.path().join("plan-s.json")).unwrap(), b"{}");
    }

    #[test]
    fn latest_is_replaced_not_appended() {
        let d = tempfile::tempdir().unwrap();
        let a = claim(d.path(), "run", "s", None, 0, 0o600).unwrap();
        point_latest(&a.log, None).unwrap();
        let b = claim(d.path(), "run", "s", None, 0, 0o600).unwrap();
        point_latest(&b.log, None).unwrap();
        let target = std::fs::read_link(d.path().join("latest.log")).unwrap();
        assert_eq!(target, Path::new(b.log.file_name().unwrap()));
        point_latest(&b.log, Some(&tag())).unwrap();
        assert!(d.path().join("latest-node1.log").exists());
        let stray: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn local_stamps_are_readable() {
        let s = local_stamp(1_795_846_018);
        assert_eq!(s.len(), 15, "{s}");
        assert_eq!(&s[8..9], "-");
    }
}
