//! The small JSON caches in the user cache directory (the script's flags, the torch of a
//! Python): `{"version": N, "entries": [...]}`, read whole, bounded, written atomically. A file
//! that is too large, unreadable or of another version reads as empty.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A cache file larger than this is ignored (they are a few KiB).
const MAX_BYTES: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
struct CacheFile<E> {
    version: u32,
    entries: Vec<E>,
}

/// The entries of the cache at `path` written with `version`; none when absent or unusable.
pub(super) fn read<E: DeserializeOwned>(path: &Path, version: u32) -> Vec<E> {
    let ok = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_BYTES);
    ok.then(|| std::fs::read_to_string(path).ok())
        .flatten()
        .and_then(|t| serde_json::from_str::<CacheFile<E>>(&t).ok())
        .filter(|c| c.version == version)
        .map(|c| c.entries)
        .unwrap_or_default()
}

/// Adds `entry`, replacing those `same` says it supersedes and keeping the newest `max`.
pub(super) fn put<E: Serialize + DeserializeOwned>(
    path: &Path,
    version: u32,
    max: usize,
    entry: E,
    same: impl Fn(&E, &E) -> bool,
) -> std::io::Result<()> {
    let mut entries: Vec<E> = read(path, version);
    entries.retain(|e| !same(e, &entry));
    entries.push(entry);
    let over = entries.len().saturating_sub(max);
    entries.drain(..over);
    // Private (issue 25 item 16): 0700 directory, 0600 file, like the calibration store.
    if let Some(dir) = path.parent() {
        crate::calibration::create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let file = CacheFile { version, entries };
    crate::calibration::write_private(&tmp, &serde_json::to_vec_pretty(&file)?)?;
    std::fs::rename(&tmp, path)
}

/// A file's modification time (ns since the epoch, negative before it) and size: what tells
/// that it changed.
pub(super) fn stamp(file: &Path) -> Option<(i128, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    let mtime = meta.modified().ok()?;
    let ns = match mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some((ns, meta.len()))
}
