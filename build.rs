//! Names the commit in `vla-launch --version` (VLA_LAUNCH_VERSION).
//!
//! From a git checkout: the short commit hash and its date, read with `git`. Without git or `.git`
//! (an sdist, a tarball): `$VLA_LAUNCH_COMMIT` if the packager set it, else "commit unknown".

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest);
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    println!("cargo:rerun-if-env-changed=VLA_LAUNCH_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");

    // Only a checkout of this crate counts: not a repository that happens to contain the sdist.
    let top = git(dir, &["rev-parse", "--show-toplevel"]);
    let ours = top
        .as_deref()
        .and_then(|t| Path::new(t).canonicalize().ok())
        .zip(dir.canonicalize().ok())
        .is_some_and(|(t, d)| t == d);
    let commit = if ours {
        // Rebuild when HEAD moves: HEAD, its reflog, the branch it names, packed refs. Only
        // paths that exist: cargo reruns a build script on every build while one is missing.
        let mut watched = vec!["HEAD".to_string(), "logs/HEAD".into(), "packed-refs".into()];
        watched.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
        for rel in &watched {
            if let Some(p) = git(dir, &["rev-parse", "--git-path", rel]) {
                let p = dir.join(p);
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
        }
        git(
            dir,
            &["log", "-1", "--format=%h %cs", "--abbrev=12", "HEAD"],
        )
    } else {
        None
    };
    let commit = commit
        .or_else(|| {
            std::env::var("VLA_LAUNCH_COMMIT")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "commit unknown: built without git".to_string());
    println!("cargo:rustc-env=VLA_LAUNCH_VERSION={version} ({commit})");
}
