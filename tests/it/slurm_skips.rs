//! Issue 26 item 11: without `VLA_TEST_SLURM=1` the Slurm tests skip themselves, and the test
//! run says so (the harness showed only `ok`, as the skip note went to the captured stderr).

use std::process::Command;

#[test]
fn a_skipped_slurm_test_says_skipped_and_why_in_the_test_output() {
    // This test binary, running one Slurm test the way `cargo test` does (output captured).
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "slurm::a_healthy_two_node_job_completes_with_exit_0",
            "--exact",
            "--test-threads",
            "1",
        ])
        .env_remove("VLA_TEST_SLURM")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(all.contains("1 passed"), "the test ran: {all}");
    assert!(
        all.contains("skipped") && all.contains("VLA_TEST_SLURM=1"),
        "{all}"
    );
}
