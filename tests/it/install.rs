//! Installed layouts: the binary finds the files shipped with it (the probe trainer) without any
//! environment variable, says where it looked when they are missing, and `--version` names the
//! commit. Also: the wheel's data directory (packaging/wheel-data) ships every file it must.
//! The real wheel, built, audited and installed without Rust, is scripts/build-wheel.sh and
//! scripts/wheel-check.sh (CI).

use crate::common::Vla;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHARE: &str = "share/vla-launch";

/// A temp dir on the target dir's file system, so the binary can be hard-linked into it.
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Puts the built binary at `<prefix>/bin/vla-launch`, as pip or cargo install would. A hard link,
/// not a copy: a file just written can fail to exec (ETXTBSY) while a parallel test forks with
/// the write descriptor still open.
fn install_binary(prefix: &Path) -> PathBuf {
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("vla-launch");
    std::fs::hard_link(crate::common::BIN, &exe).unwrap();
    exe
}

/// The wheel's data files, copied from the checkout to `<prefix>/share/vla-launch`.
fn install_data(prefix: &Path) -> PathBuf {
    let share = prefix.join(SHARE);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for rel in [
        "scripts/probe_finetune.py",
        "launch-profiles/aloha-probe.yaml",
    ] {
        let to = share.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(rel), to).unwrap();
    }
    share
}

/// Runs the installed binary from an unrelated directory with a clean environment.
fn run(exe: &Path, cwd: &Path, args: &[&str]) -> std::process::Output {
    Vla::at(exe)
        .args(args)
        .current_dir(cwd)
        .env_remove("VLA_LAUNCH_DIR")
        .env_remove("OPENVLA_OFT_DIR")
        .env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env(
            "VLA_LAUNCH_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/it-vla-launch-cache"),
        )
        .env("RUST_LOG", "vla_launch=warn")
        .output()
        .unwrap()
}

/// The `cd DIR && ...` directory and the script argument of a printed torchrun command.
fn workdir_and_script(stdout: &str) -> (String, String) {
    let line = stdout.lines().find(|l| l.contains("torchrun")).unwrap();
    let workdir = line
        .strip_prefix("cd ")
        .and_then(|r| r.split(" && ").next())
        .unwrap()
        .trim_matches('\'')
        .to_string();
    let script = line
        .split_whitespace()
        .find(|w| w.ends_with("probe_finetune.py"))
        .unwrap()
        .trim_matches('\'')
        .to_string();
    (workdir, script)
}

#[test]
fn pip_layout_dry_run_from_any_directory_points_at_the_shipped_trainer() {
    let tmp = tempdir();
    let prefix = tmp.path().join("venv");
    let exe = install_binary(&prefix);
    let share = install_data(&prefix);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = run(
        &exe,
        &elsewhere,
        &["--profile", "aloha-probe", "--dry-run", "--gpus", "1xh100"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let (workdir, script) = workdir_and_script(&stdout);
    assert_eq!(Path::new(&workdir), share, "{stdout}");
    let resolved = elsewhere.join(&workdir).join(&script);
    assert!(
        resolved.is_file(),
        "{} does not exist: {stdout}",
        resolved.display()
    );
    assert!(!stderr.contains("not found"), "{stderr}");
}

#[test]
fn vla_launch_dir_overrides_the_installed_files() {
    let tmp = tempdir();
    let prefix = tmp.path().join("venv");
    let exe = install_binary(&prefix);
    install_data(&prefix);
    let other = tmp.path().join("checkout");
    install_data(&other);
    let out = Vla::at(&exe)
        .args(["--profile", "aloha-probe", "--dry-run", "--gpus", "1xh100"])
        .current_dir(tmp.path())
        .env("VLA_LAUNCH_DIR", other.join(SHARE))
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env(
            "VLA_LAUNCH_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/it-vla-launch-cache"),
        )
        .env_remove("VLA_LAUNCH_GPUS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let (workdir, _) = workdir_and_script(&stdout);
    assert_eq!(Path::new(&workdir), other.join(SHARE));
}

/// `cargo install` puts the binary in ~/.cargo/bin with no data files: the dry run warns and a
/// real launch refuses (exit 4), both naming where it looked, VLA_LAUNCH_DIR and pip.
#[test]
fn cargo_install_layout_says_where_it_looked_and_how_to_fix_it() {
    let tmp = tempdir();
    let prefix = tmp.path().join("cargo");
    let exe = install_binary(&prefix);
    let looked = prefix.join(SHARE);
    let want = |stderr: &str| {
        assert!(
            stderr.contains(&looked.display().to_string()),
            "names {}: {stderr}",
            looked.display()
        );
        assert!(stderr.contains("export VLA_LAUNCH_DIR="), "{stderr}");
        assert!(stderr.contains("pip install"), "{stderr}");
    };
    let dry = run(
        &exe,
        tmp.path(),
        &["--profile", "aloha-probe", "--dry-run", "--gpus", "1xh100"],
    );
    assert!(dry.status.success());
    want(&String::from_utf8_lossy(&dry.stderr));

    let real = run(
        &exe,
        tmp.path(),
        &["--profile", "aloha-probe", "--gpus", "1xh100"],
    );
    assert_eq!(real.status.code(), Some(4));
    want(&String::from_utf8_lossy(&real.stderr));
}

#[test]
fn version_names_the_commit() {
    let out = Vla::new().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        // A checkout: the short hash of HEAD.
        Some(head) => assert!(
            text.contains(&format!("({}", &head[..12])),
            "{text:?} does not name {head}"
        ),
        // No git (an sdist): says so instead of pretending.
        None => assert!(text.contains("commit unknown"), "{text:?}"),
    }
    assert!(
        text.starts_with(concat!("vla-launch ", env!("CARGO_PKG_VERSION"), " (")),
        "{text:?}"
    );
}

/// Every file the probe trainer and the profiles consist of is in the wheel's data directory, as a
/// link to the one copy in the checkout (maturin follows file links, not directory links).
#[test]
fn wheel_data_ships_the_probe_trainer_and_the_profiles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("packaging/wheel-data/data").join(SHARE);
    // The stand-in probe, the real-code probe (calibrate in a checkout) and the FSDP addition
    // (run around upstream's finetune.py), with the modules they import.
    let mut wanted: Vec<PathBuf> = [
        "scripts/probe_finetune.py",
        "scripts/real_probe_finetune.py",
        "scripts/finetune_fsdp.py",
    ]
    .map(PathBuf::from)
    .into();
    for dir in [
        "scripts/probe",
        "scripts/real_probe",
        "scripts/vlalaunch",
        "launch-profiles",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                wanted.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut missing = Vec::new();
    for rel in &wanted {
        let shipped = data.join(rel);
        let same = std::fs::read(&shipped).ok() == std::fs::read(root.join(rel)).ok();
        // A checkout keeps one copy (links); an sdist holds the files themselves.
        let linked = !root.join(".git").exists()
            || shipped
                .symlink_metadata()
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
        if !(same && linked) {
            missing.push(rel.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "not linked from packaging/wheel-data/data/share/vla-launch/: {missing:?} \
         (ln -s with a relative target, as the others)"
    );
}

/// Issue 26 item 11: the installed `aloha-real` / `libero-real` profiles (share/vla-launch/
/// launch-profiles, not compiled in) are reachable by name from any directory, and listed.
#[test]
fn installed_profiles_are_reachable_by_name() {
    let tmp = tempdir();
    let prefix = tmp.path().join("venv");
    let exe = install_binary(&prefix);
    let share = install_data(&prefix);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["aloha-real", "libero-real"] {
        let rel = format!("launch-profiles/{name}.yaml");
        std::fs::copy(root.join(&rel), share.join(&rel)).unwrap();
    }
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    for name in ["aloha-real", "libero-real"] {
        let out = run(
            &exe,
            &elsewhere,
            &["plan", "--profile", name, "--gpus", "1xh100"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("profile '{name}'")),
            "{name}"
        );
    }
    let out = run(&exe, &elsewhere, &["profiles"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("aloha-real") && listed.contains("libero-real"),
        "{listed}"
    );
}
