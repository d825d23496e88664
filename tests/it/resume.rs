//! Issue 13 item 7 (the launcher side): a crashed run is relaunched with `--resume` and goes on
//! from the newest checkpoint upstream finetune.py wrote (`<run_root_dir>/<run id>--<step>_chkpt`);
//! `--resume off` never resumes; without a checkpoint it starts from scratch and says so.

use crate::common::{Vla, WithoutAmbient};
use std::path::Path;
use std::process::Output;

fn dry_run(run_root: &Path, resume: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Vla::new()
        .args(["--profile", "aloha", "--gpus", "1xh100", "--dry-run"])
        .args(resume)
        .arg("--torchrun")
        .arg(crate::common::fake_torchrun())
        .without_ambient_topology()
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", run_root)
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=info")
        .current_dir(root)
        .output()
        .unwrap()
}

/// Complete checkpoints of the aloha profile (L1 head, proprio, FiLM, merged model), as
/// upstream's save leaves them.
fn checkpoints(root: &Path, names: &[&str]) {
    for n in names {
        let dir = root.join(n);
        std::fs::create_dir_all(&dir).unwrap();
        let step = n.rsplit_once("--").unwrap().1.trim_end_matches("_chkpt");
        for part in ["action_head", "proprio_projector", "vision_backbone"] {
            std::fs::write(dir.join(format!("{part}--{step}_checkpoint.pt")), b"x").unwrap();
        }
        for f in ["config.json", "model.safetensors"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
    }
}

#[test]
fn a_plain_relaunch_with_resume_goes_on_from_the_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    checkpoints(
        root,
        &[
            "old-run--5_chkpt",
            "my-run--5_chkpt",
            "my-run--20_chkpt",
            "my-run--10_chkpt",
        ],
    );
    // The newest run is the one whose checkpoint was written last.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let now = std::time::SystemTime::now();
    for n in ["my-run--5_chkpt", "my-run--20_chkpt", "my-run--10_chkpt"] {
        std::fs::File::open(root.join(n))
            .unwrap()
            .set_modified(now)
            .unwrap();
    }
    let out = dry_run(root, &["--resume"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let want = root.join("my-run--20_chkpt");
    assert!(stdout.contains("--resume True"), "{stdout}");
    assert!(stdout.contains("--resume_step 20"), "{stdout}");
    assert!(
        stdout.contains(&format!("--vla_path {}", want.display())),
        "{stdout}"
    );
    assert!(stdout.contains("--run_id_override my-run"), "{stdout}");
    assert!(
        !stdout.contains("openvla/openvla-7b"),
        "the base model's --vla_path is replaced: {stdout}"
    );
    assert!(stderr.contains("resume: from step 20"), "{stderr}");

    let off = dry_run(root, &["--resume", "off"]);
    let stdout = String::from_utf8_lossy(&off.stdout);
    assert_eq!(off.status.code(), Some(0));
    assert!(!stdout.contains("--resume"), "{stdout}");
}

#[test]
fn resume_without_a_checkpoint_starts_from_scratch_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dry_run(dir.path(), &["--resume", "on"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("--resume True"), "{stdout}");
    assert!(stderr.contains("no checkpoint"), "{stderr}");
}
