//! The job secret and the MACs made with it.

use hmac::Mac;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::*;

/// Why no usable secret was found; each names the variable or file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{SECRET_ENV} is set but has {len} characters; it needs at least {MIN_SECRET_LEN} (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)` in the sbatch script)"
    )]
    EnvTooShort { len: usize },
    #[error("{path}: {why}; fix: {fix}")]
    File {
        path: PathBuf,
        why: String,
        fix: String,
    },
    #[error(
        "node 0 has not created {path} within {waited_s} s; fix: put the run root on a file system every node shares, or set {SECRET_ENV} in the job's environment (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)` in the sbatch script)"
    )]
    NotCreated { path: PathBuf, waited_s: u64 },
}

/// The secret the nodes of one job share. Its bytes are never printed.
#[derive(Clone)]
pub struct JobSecret(pub(super) Vec<u8>);

impl fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

impl JobSecret {
    /// From the value of [`SECRET_ENV`].
    pub fn from_env_value(value: &str) -> Result<JobSecret, SecretError> {
        let v = value.trim();
        if v.len() < MIN_SECRET_LEN {
            return Err(SecretError::EnvTooShort { len: v.len() });
        }
        Ok(JobSecret(v.as_bytes().to_vec()))
    }

    /// 32 fresh random bytes (hex).
    pub fn generate() -> io::Result<JobSecret> {
        Ok(JobSecret(hex(&random_bytes::<32>()?).into_bytes()))
    }

    /// The secret file of job `job` in `dir` (`<run root>/vla-launch/.secrets`).
    pub fn file_path(dir: &Path, job: &str) -> PathBuf {
        let safe: String = job
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        dir.join(format!("job-{safe}.key"))
    }

    /// Node 0: the job's secret file in `dir`, created (0700 directory, 0600 file, exclusively)
    /// unless it exists already (a requeued job), in which case it is read and checked.
    pub fn create_file(dir: &Path, job: &str) -> Result<JobSecret, SecretError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = JobSecret::file_path(dir, job);
        let file_err = |why: String, fix: &str| SecretError::File {
            path: path.clone(),
            why,
            fix: fix.to_string(),
        };
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) => {
                return Err(file_err(
                    format!("cannot create its directory ({e})"),
                    &format!("make the run root writable, or set {SECRET_ENV}"),
                ));
            }
        }
        check_private(dir, true).map_err(|why| {
            file_err(
                why,
                &format!("`chmod 700 {}` (owned by you)", dir.display()),
            )
        })?;
        if path.exists() {
            return JobSecret::read_file(&path);
        }
        let secret = JobSecret::generate().map_err(|e| {
            file_err(
                format!("no random bytes ({e})"),
                &format!("set {SECRET_ENV}"),
            )
        })?;
        // Written whole under a private temporary name, then linked into place: a reader sees
        // no file or the whole file, and of two writers only one link succeeds.
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            hex(&random_bytes::<4>().unwrap_or_default())
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&secret.0)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(file_err(
                format!("cannot write it ({e})"),
                &format!("make the run root writable, or set {SECRET_ENV}"),
            ));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(secret),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => JobSecret::read_file(&path),
            Err(e) => Err(file_err(
                format!("cannot create it ({e})"),
                &format!("use a file system with hard links for the run root, or set {SECRET_ENV}"),
            )),
        }
    }

    /// Node n: wait (at most `wait`) for node 0 to create the job's secret file in `dir`.
    pub fn wait_for_file(dir: &Path, job: &str, wait: Duration) -> Result<JobSecret, SecretError> {
        let path = JobSecret::file_path(dir, job);
        let until = Instant::now() + wait;
        loop {
            if path.exists() {
                return JobSecret::read_file(&path);
            }
            if Instant::now() >= until {
                return Err(SecretError::NotCreated {
                    path,
                    waited_s: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn read_file(path: &Path) -> Result<JobSecret, SecretError> {
        let file_err = |why: String, fix: String| SecretError::File {
            path: path.to_path_buf(),
            why,
            fix,
        };
        check_private(path, false).map_err(|why| {
            file_err(
                why,
                format!("remove it and let node 0 create it again, or set {SECRET_ENV}"),
            )
        })?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_end(&mut bytes))
            .map_err(|e| file_err(format!("cannot read it ({e})"), format!("set {SECRET_ENV}")))?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if text.len() < MIN_SECRET_LEN {
            return Err(file_err(
                format!(
                    "holds {} characters, fewer than {MIN_SECRET_LEN}",
                    text.len()
                ),
                "remove it and let node 0 create it again".into(),
            ));
        }
        Ok(JobSecret(text.into_bytes()))
    }
}

/// `path` is owned by this user and nobody else may read it (no group/other permission bits).
pub(super) fn check_private(path: &Path, dir: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("cannot inspect it ({e})"))?;
    if dir != m.is_dir() || (!dir && !m.is_file()) {
        return Err(if dir {
            "is not a directory".into()
        } else {
            "is not a plain file".into()
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "is owned by uid {}, not by you (uid {me})",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "has mode {:o}: others may read it",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

pub(super) fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

pub(super) fn mac_of(key: &[u8], parts: &[&str]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m
}

pub(super) fn mac_hex(key: &[u8], parts: &[&str]) -> String {
    hex(&mac_of(key, parts).finalize().into_bytes())
}

/// Constant-time check of a hex MAC.
pub(super) fn mac_ok(key: &[u8], parts: &[&str], given: &str) -> bool {
    match unhex(given) {
        Some(g) => mac_of(key, parts).verify_slice(&g).is_ok(),
        None => false,
    }
}
