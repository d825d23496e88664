//! Issue 13 item 5: a multi-node job's one output file stays readable. The plan is printed once
//! (node 0); every other node's launcher lines carry its rank.

use crate::common::{Vla, WithoutAmbient};
use std::path::Path;

fn node(rank: u32) -> Vla {
    let mut c = launcher(rank, "127.0.0.1:23456");
    c.arg("--dry-run");
    c
}

fn launcher(rank: u32, endpoint: &str) -> Vla {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Vla::new();
    c.args(["--profile", "aloha", "--gpus", "1xh100"])
        .args(["--nnodes", "2", "--node-rank", &rank.to_string()])
        .args(["--rdzv-endpoint", endpoint])
        .arg("--torchrun")
        .arg(crate::common::fake_torchrun())
        .without_ambient_topology()
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

/// Issue 13 item 4, end to end: a node 0 name that does not resolve is said loudly at start,
/// with the fix, before training (not 40 s later, not never).
#[test]
fn an_unresolvable_node_0_name_is_warned_about_at_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = launcher(1, "no-such-node.invalid:23457")
        .arg("--log-dir")
        .arg(dir.path())
        .env("VLA_RUN_ROOT", dir.path())
        .env("FAKE_SLEEP", "0")
        .env_remove("VLA_LAUNCH_JOB_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{stderr}"
    );
    let warning = stderr
        .lines()
        .position(|l| l.contains("does not resolve") && l.contains("--rdzv-endpoint"))
        .unwrap_or_else(|| panic!("no warning about the name: {stderr}"));
    let launched = stderr
        .lines()
        .position(|l| l.contains("fake_torchrun"))
        .unwrap_or(usize::MAX);
    assert!(warning < launched, "the warning comes at start: {stderr}");
}
