//! Issue 14 item 10: hostile inputs are refused quickly and with bounded reads — devices, FIFOs,
//! huge files, deeply nested YAML, and profiles with 100k env entries.

use std::path::Path;
use std::time::Duration;

use vla_launch::cluster::Topology;
use vla_launch::launch::command::{CommandSpec, Inherited, build};
use vla_launch::{profile, record};

/// Runs `f` on a thread; fails the test if it used more than `limit` of CPU time (a parser gone
/// quadratic) or blocked (a read that never returns). CPU time, not wall time: the bound must
/// hold on a 2-core machine whose cores are both busy with other work (issue 26 item 2).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    crate::cpu_time::within_cpu(limit, f)
}

fn profile_err(path: &Path) -> String {
    let p = path.to_str().unwrap().to_string();
    within(Duration::from_secs(5), move || {
        profile::load(&p, None).map(|_| ()).unwrap_err().to_string()
    })
}

fn record_err(path: &Path) -> String {
    let p = path.to_path_buf();
    within(Duration::from_secs(5), move || {
        record::load(&p).map(|_| ()).unwrap_err().to_string()
    })
}

#[test]
fn devices_are_refused_without_reading_them() {
    for dev in ["/dev/zero", "/dev/urandom"] {
        let e = profile_err(Path::new(dev));
        assert!(e.contains(dev) && e.contains("not a regular file"), "{e}");
        let e = record_err(Path::new(dev));
        assert!(e.contains(dev) && e.contains("not a regular file"), "{e}");
    }
}

#[test]
fn a_fifo_is_refused_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("p.yaml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let e = profile_err(&fifo);
    assert!(e.contains("FIFO"), "{e}");
    let e = record_err(&fifo);
    assert!(e.contains("FIFO"), "{e}");
}

#[test]
fn files_over_the_size_limit_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(5 << 20)).unwrap();
    let e = profile_err(&big);
    assert!(e.contains("big.yaml") && e.contains("MiB"), "{e}");
    let e = record_err(&big);
    assert!(e.contains("big.yaml") && e.contains("MiB"), "{e}");
}

#[test]
fn deeply_nested_yaml_is_refused_before_parsing() {
    for (open, close) in [("[", ""), ("{a: ", "")] {
        let text = format!("script: {}{}\n", open.repeat(100_000), close);
        let e = within(Duration::from_secs(2), move || {
            profile::parse(&text, "deep.yaml").unwrap_err().to_string()
        });
        assert!(e.contains("deep.yaml") && e.contains("nest"), "{e}");
        assert!(e.len() < 400, "{e}");
    }
    // The shipped profiles are well inside the bound.
    for (name, text) in profile::BUILTIN {
        profile::parse(text, name).unwrap();
    }
}

#[test]
fn a_hundred_thousand_env_entries_build_in_linear_time() {
    let env: Vec<(String, String)> = (0..100_000)
        .map(|i| (format!("V{i}"), i.to_string()))
        .collect();
    let spec = CommandSpec {
        torchrun: "/usr/bin/torchrun".into(),
        script: "finetune.py".into(),
        workdir: "/w".into(),
        nproc_per_node: 1,
        topology: Topology::single_node(),
        max_restarts: 0,
        script_flags: vec![],
        extra_args: vec![],
        env,
        cuda_visible_devices: None,
        vram_cap_bytes: None,
        ranks_filter: None,
        torchrun_log_dir: None,
    };
    // 0.5 s of CPU in a debug build; the quadratic version took 33 s.
    let cmd = within(Duration::from_secs(5), move || {
        build(&spec, &Inherited::default()).unwrap()
    });
    assert!(cmd.env.len() >= 100_000);
    assert_eq!(
        cmd.env.iter().find(|(k, _)| k == "V99999").unwrap().1,
        "99999"
    );
}

/// Found by tests/it/generated_inputs.rs: a record's budget terms are input, and their sum
/// overflowed (a panic in `replay`/calibration, a wrong figure in release).
#[test]
fn a_record_with_huge_budget_terms_does_not_overflow() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/records/main-f32ef0c-run-plan-1795850263.json"),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for term in ["activations", "gradients", "weights"] {
        v["budget"][term] = u64::MAX.into();
    }
    let path = Path::new("/r/plan-1795850263.json");
    let rec = record::parse(&v.to_string(), path).unwrap();
    assert_eq!(rec.model_peak(), Some(u64::MAX));
    let b = rec.budget.as_ref().unwrap();
    assert!(b.allocated() <= b.peak());
    let _ = record::observations(&rec, path, vla_launch::calibration::Source::Run);
}

/// Found by tests/it/generated_inputs.rs: 65,536 hosts of 5,000-character names took seconds
/// and 300 MB; a host name is at most 255 characters (DNS: 253).
#[test]
fn a_hostlist_of_absurdly_long_names_is_refused_quickly() {
    let list = format!("{}[00001-65536]", "a".repeat(5000));
    let e = within(Duration::from_secs(2), move || {
        vla_launch::cluster::parse_hostlist(&list)
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("255") && e.len() < 400, "{e}");
    let ok = vla_launch::cluster::parse_hostlist("gpu[01-04],login1").unwrap();
    assert_eq!(ok.len(), 5);
}
