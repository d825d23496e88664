//! `--gpus` with GPU names as people say them, through the real binary (issue 17, item 2).

use crate::common::Vla;

fn plan(gpus: &str) -> (Option<i32>, String, String) {
    let r = Vla::new()
        .args(["plan", "--profile", "aloha", "--gpus", gpus])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("VLA_LAUNCH_GPUS")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env("VLA_LAUNCH_PROFILE_DIR", "/nonexistent-vla-launch-profiles")
        .env(
            "VLA_LAUNCH_CACHE_DIR",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/it-vla-launch-cache"),
        )
        .env("RUST_LOG", "vla_launch=warn")
        .run();
    (r.code, r.stdout, r.stderr)
}

/// A marketed size is planned with what NVML shows for such a card, and the plan says so.
#[test]
fn marketed_size_is_planned_as_the_card_and_explained() {
    let (_, stdout, stderr) = plan("4x24GB");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("24 GB is the memory"), "{all}");
    assert!(all.contains("planning with 22.49 GiB"), "{all}");
    assert!(all.contains("4xrtx4090"), "{all}");
    let (code, stdout, stderr) = plan("4x80GB");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("planning with 79.65 GiB"), "{stderr}");
}

#[test]
fn model_number_without_prefix_gets_did_you_mean() {
    let (code, _, stderr) = plan("4x4090");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("did you mean 4xrtx4090?"), "{stderr}");
}

#[test]
fn star_is_read_as_the_separator() {
    let (code, stdout, stderr) = plan("4*rtx4090");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stderr.contains("count"), "{stderr}");
    assert!(stdout.contains("--nproc-per-node 4"), "{stdout}");
}

#[test]
fn ambiguous_model_is_refused_with_the_choices() {
    let (code, _, stderr) = plan("2xa100");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("2xa100-40gb (40.00 GiB) or 2xa100-80gb (80.00 GiB)"),
        "{stderr}"
    );
}

/// Issue 26 item 10: GPU names as a new user typed them.
#[test]
fn names_a_new_user_typed_get_the_right_answer() {
    // The H20 is a 96 GB card of its own, not a mistyped H200 (141 GB).
    let (code, _, stderr) = plan("1xH20");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("h200"), "{stderr}");
    assert!(
        stderr.contains("96 GB") && stderr.contains("1x96GB"),
        "{stderr}"
    );
    // Model and count the other way round.
    let (code, _, stderr) = plan("rtx4090x4");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("did you mean 4xrtx4090?"), "{stderr}");
    assert!(!stderr.contains("\"rt\""), "{stderr}");
    // A bare model, number or name: how many? The message asks, with one and several.
    for (bare, key) in [
        ("3090", "rtx3090"),
        ("h100", "h100"),
        ("RTX4090", "rtx4090"),
    ] {
        let (code, _, stderr) = plan(bare);
        assert_eq!(code, Some(2), "{bare}: {stderr}");
        assert!(
            stderr.contains(&format!("1x{key}")) && stderr.contains("how many"),
            "{bare}: {stderr}"
        );
    }
    let (code, _, stderr) = plan("H20");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("1x96GB") && !stderr.contains("h200"),
        "{stderr}"
    );
}

/// Issue 26 item 11: `gpus` without a driver suggests --gpus; `gpus --gpus SPEC` shows the GPUs
/// a description stands for (instead of being refused), with the notes on how it was read.
#[test]
fn gpus_takes_a_description_too() {
    let out = Vla::new()
        .args(["gpus", "--gpus", "2xh100,1x24GB"])
        .env("RUST_LOG", "vla_launch=warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.matches("H100 80GB HBM3").count(), 2, "{stdout}");
    assert!(stdout.contains("sold as 24 GB"), "{stdout}");
    assert!(stderr.contains("planning with 22.49 GiB"), "{stderr}");
}
