//! Issue 13 item 5: a multi-node job's one output file stays readable. The plan is printed once
//! (node 0); every other node's launcher lines carry its rank.

use std::path::Path;
use std::process::Command;

fn node(rank: u32) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_vla-launch"));
    c.args(["--profile", "aloha", "--gpus", "1xh100", "--dry-run"])
        .args(["--nnodes", "2", "--node-rank", &rank.to_string()])
        .args(["--rdzv-endpoint", "127.0.0.1:23456"])
        .arg("--torchrun")
        .arg(crate::common::fake_torchrun())
        .env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_NNODES")
        .env_remove("MASTER_ADDR")
        .env_remove("NNODES")
        .env_remove("NODE_RANK")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env("VLA_LAUNCH_CACHE_DIR", "/nonexistent-vla-launch-cache")
        .env("OPENVLA_OFT_DIR", root.join("tests/fixtures/openvla-oft"))
        .env("VLA_DATA_ROOT", "/data")
        .env("VLA_RUN_ROOT", "/tmp")
        .env("WANDB_ENTITY", "e")
        .env("WANDB_PROJECT", "p")
        .env("RUST_LOG", "vla_launch=info")
        .env("NO_COLOR", "1")
        .current_dir(root);
    c
}

#[test]
fn the_plan_is_printed_by_node_0_only_and_other_nodes_lines_carry_their_rank() {
    let n0 = node(0).output().unwrap();
    let n1 = node(1).output().unwrap();
    let (e0, e1) = (
        String::from_utf8_lossy(&n0.stderr),
        String::from_utf8_lossy(&n1.stderr),
    );
    assert_eq!(n0.status.code(), Some(0), "{e0}");
    assert_eq!(n1.status.code(), Some(0), "{e1}");
    assert_eq!(e0.matches("Plan for profile").count(), 1, "{e0}");
    assert!(
        !e0.contains("[node "),
        "node 0's lines are not prefixed: {e0}"
    );
    assert_eq!(e1.matches("Plan for profile").count(), 0, "{e1}");
    for line in e1.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("[node 1] "),
            "unprefixed line on node 1: {line:?}\n{e1}"
        );
    }
    assert!(!e1.trim().is_empty(), "node 1 says something: {e1}");
}
