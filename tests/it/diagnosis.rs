//! Diagnosis of failed runs from real-looking torch / torchrun / NCCL / draccus logs, and the
//! hang watchdog.

use std::time::Duration;

use vla_launch::launch::diagnosis::{Details, DiagnosisKind, OomDetails, diagnose, diagnose_run};
use vla_launch::launch::hang::HangWatchdog;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

fn bytes(x: f64) -> Option<u64> {
    Some(x.round() as u64)
}

/// (fixture, torchrun exit code, signal, kind, rank, words the summary must contain)
type Case = (
    &'static str,
    i32,
    Option<i32>,
    DiagnosisKind,
    Option<u32>,
    &'static [&'static str],
);

#[test]
fn each_failure_is_named_with_its_rank() {
    let cases: &[Case] = &[
        (
            "cuda_oom_torch24.log",
            1,
            None,
            DiagnosisKind::CudaOom,
            Some(1),
            &[
                "Rank 1",
                "GPU 1",
                "1.96 GiB",
                "1.02 GiB free of 79.19 GiB",
                "74.38 GiB allocated",
            ],
        ),
        (
            "cuda_oom_torch20.log",
            1,
            None,
            DiagnosisKind::CudaOom,
            Some(0),
            &[
                "Rank 0",
                "224 MiB with 83 MiB free of 23.65 GiB",
                "22.56 GiB allocated",
            ],
        ),
        (
            "host_oom_killed.log",
            1,
            None,
            DiagnosisKind::HostOom,
            Some(0),
            &["Rank 0", "SIGKILL", "out-of-memory killer"],
        ),
        (
            "nccl_watchdog_timeout.log",
            1,
            None,
            DiagnosisKind::NcclTimeout,
            Some(0),
            &["Rank 0 waited 600 s", "ALLREDUCE #84023"],
        ),
        (
            "nccl_error.log",
            1,
            None,
            DiagnosisKind::NcclError,
            Some(1),
            &[
                "Rank 1",
                "unhandled system error",
                "Connect to 10.0.0.7<39127> failed",
            ],
        ),
        (
            "file_not_found.log",
            1,
            None,
            DiagnosisKind::MissingPath,
            Some(0),
            &["/data/rlds/dataset_statistics.json"],
        ),
        (
            "tfds_dataset_not_found.log",
            1,
            None,
            DiagnosisKind::MissingPath,
            Some(0),
            &["aloha1_put_x_into_pot_300_demos", "data_root_dir"],
        ),
        (
            "hf_model_missing.log",
            1,
            None,
            DiagnosisKind::MissingPath,
            Some(0),
            &["/models/openvla-7b-ckpt"],
        ),
        (
            "draccus_unknown_flag.log",
            1,
            None,
            DiagnosisKind::UnknownFlag,
            None,
            &["--use_fsdp, --gradient_checkpointing"],
        ),
        (
            "module_not_found.log",
            1,
            None,
            DiagnosisKind::ImportError,
            Some(0),
            &["peft", "No module named 'peft'"],
        ),
        (
            "import_error_name.log",
            1,
            None,
            DiagnosisKind::ImportError,
            None,
            &[
                "transformers",
                "cannot import name 'AutoModelForVision2Seq'",
            ],
        ),
    ];
    for (name, exit, signal, kind, rank, words) in cases {
        let d = diagnose(&fixture(name), *exit, *signal)
            .unwrap_or_else(|| panic!("{name}: no diagnosis"));
        assert_eq!(d.kind, *kind, "{name}: {d:?}");
        assert_eq!(d.rank, *rank, "{name}: {d:?}");
        for w in *words {
            assert!(
                d.summary.contains(w),
                "{name}: summary {:?} lacks {w:?}",
                d.summary
            );
        }
        // One sentence, and a hint to act on.
        assert!(
            d.summary.ends_with('.') && !d.summary.contains('\n'),
            "{name}: {:?}",
            d.summary
        );
        assert!(
            !d.hint.is_empty() && !d.evidence.is_empty(),
            "{name}: {d:?}"
        );
    }
}

#[test]
fn oom_details_of_both_torch_message_forms() {
    let d = diagnose(&fixture("cuda_oom_torch24.log"), 1, None).unwrap();
    assert_eq!(
        d.details,
        Details::CudaOom(OomDetails {
            tried_to_allocate_bytes: bytes(1.96 * GIB),
            gpu_index: Some(1),
            total_capacity_bytes: bytes(79.19 * GIB),
            free_bytes: bytes(1.02 * GIB),
            process_in_use_bytes: bytes(78.16 * GIB),
            allocated_by_pytorch_bytes: bytes(74.38 * GIB),
            reserved_unallocated_bytes: bytes(2.61 * GIB),
        })
    );
    // 2.61 GiB reserved but unused: the fragmentation hint.
    assert!(d.hint.contains("expandable_segments"), "{}", d.hint);

    let d = diagnose(&fixture("cuda_oom_torch20.log"), 1, None).unwrap();
    assert_eq!(
        d.details,
        Details::CudaOom(OomDetails {
            tried_to_allocate_bytes: bytes(224.0 * MIB),
            gpu_index: Some(0),
            total_capacity_bytes: bytes(23.65 * GIB),
            free_bytes: bytes(83.06 * MIB),
            process_in_use_bytes: None,
            allocated_by_pytorch_bytes: bytes(22.56 * GIB),
            reserved_unallocated_bytes: Some(
                bytes(22.79 * GIB).unwrap() - bytes(22.56 * GIB).unwrap()
            ),
        })
    );
    assert!(
        !d.hint.contains("expandable_segments"),
        "0.23 GiB is no fragmentation: {}",
        d.hint
    );
}

#[test]
fn other_process_oom_form_and_unprefixed_rank_from_torchrun_summary() {
    // torch 2.1+ names another process when it is not the current one; no [rankN] prefix, so
    // the rank comes from torchrun's Root Cause.
    let log = b"Traceback (most recent call last):\n  File \"finetune.py\", line 1, in <module>\n\
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB. GPU 3 has a total capacity of 23.55 GiB of which 301.06 MiB is free. Process 88121 has 23.24 GiB memory in use. Of the allocated memory 22.01 GiB is allocated by PyTorch, and 731.44 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\n\
Root Cause (first observed failure):\n[0]:\n  time      : 2026-11-27_09:02:58\n  host      : box\n  rank      : 3 (local_rank: 3)\n  exitcode  : 1 (pid: 88121)\n";
    let d = diagnose(log, 1, None).unwrap();
    assert_eq!((d.kind, d.rank), (DiagnosisKind::CudaOom, Some(3)));
    let Details::CudaOom(o) = d.details else {
        panic!()
    };
    assert_eq!(o.process_in_use_bytes, bytes(23.24 * GIB));
    assert_eq!(o.free_bytes, bytes(301.06 * MIB));
    assert_eq!(o.reserved_unallocated_bytes, bytes(731.44 * MIB));
}

#[test]
fn the_root_cause_wins_over_its_consequences() {
    // Rank 1 OOMs; rank 0 then times out in NCCL: the OOM is the diagnosis.
    let mut log = fixture("nccl_watchdog_timeout.log");
    log.extend(fixture("cuda_oom_torch24.log"));
    let d = diagnose(&log, 1, None).unwrap();
    assert_eq!((d.kind, d.rank), (DiagnosisKind::CudaOom, Some(1)));

    // Rank 0 killed by the OOM killer, then rank 1's NCCL fails: torchrun's root cause decides.
    let mut log = fixture("nccl_error.log");
    log.extend(fixture("host_oom_killed.log"));
    let d = diagnose(&log, 1, None).unwrap();
    assert_eq!((d.kind, d.rank), (DiagnosisKind::HostOom, Some(0)));
}

#[test]
fn details_of_nccl_and_flags() {
    let d = diagnose(&fixture("nccl_watchdog_timeout.log"), 1, None).unwrap();
    match d.details {
        Details::Nccl {
            op,
            seq,
            timeout_ms,
            ..
        } => {
            assert_eq!(
                (op.as_deref(), seq, timeout_ms),
                (Some("ALLREDUCE"), Some(84023), Some(600_000))
            );
        }
        other => panic!("{other:?}"),
    }
    let d = diagnose(&fixture("draccus_unknown_flag.log"), 1, None).unwrap();
    assert_eq!(
        d.details,
        Details::UnknownFlags {
            flags: vec!["--use_fsdp".into(), "--gradient_checkpointing".into()]
        }
    );
    let d = diagnose(
        b"[rank2]: train.py: error: The following arguments are not valid: ['--lora_rnak']\n",
        2,
        None,
    )
    .unwrap();
    assert_eq!((d.kind, d.rank), (DiagnosisKind::UnknownFlag, Some(2)));
    assert_eq!(
        d.details,
        Details::UnknownFlags {
            flags: vec!["--lora_rnak".into()]
        }
    );
    let d = diagnose(&fixture("module_not_found.log"), 1, None).unwrap();
    assert!(d.hint.contains("pip install peft"), "{}", d.hint);
    let d = diagnose(
        b"ModuleNotFoundError: No module named 'prismatic'\n",
        1,
        None,
    )
    .unwrap();
    assert!(d.hint.contains("pip install -e ."), "{}", d.hint);
    let d = diagnose(
        b"ModuleNotFoundError: No module named 'tensorflow_datasets.core'\n",
        1,
        None,
    )
    .unwrap();
    assert!(
        d.hint.contains("pip install tensorflow-datasets"),
        "{}",
        d.hint
    );
}

#[test]
fn sigkill_without_traceback_is_host_oom_but_with_one_is_not() {
    let progress =
        b"  3%|3         | 3001/100005 [31:02<16:43:10,  1.61it/s]\r  3%|3         | 3002/100005";
    for (exit, signal) in [(137, None), (-9, None)] {
        let d = diagnose(progress, exit, signal).unwrap_or_else(|| panic!("{exit} {signal:?}"));
        assert_eq!((d.kind, d.rank), (DiagnosisKind::HostOom, None));
    }
    // Issue 25 item 14: torchrun itself killed by SIGKILL (`kill -9`, a job or cgroup limit) is
    // not surely the OOM killer's work (it picks the largest process: a training rank, whose
    // loss torchrun reports as exitcode -9): no out-of-memory diagnosis from the log alone
    // (`diagnose_run` names it, see torchrun_killed_by_sigkill_gets_its_own_diagnosis).
    for exit in [137, 0] {
        assert_eq!(diagnose(progress, exit, Some(9)), None);
    }
    let with_traceback =
        b"Traceback (most recent call last):\n  File \"x.py\", line 3\nKeyboardInterrupt\n";
    assert_eq!(diagnose(with_traceback, 137, Some(9)), None);
}

/// Issue 25 item 14: a `kill -9` of torchrun got the out-of-memory hint. torchrun killed by
/// SIGKILL gets its own diagnosis, which says what is known: whether the kernel's OOM killer
/// killed anything on this host during the run (its `oom_kill` count, /proc/vmstat), and
/// otherwise that it was the OOM killer or someone else; never a CUDA out-of-memory.
#[test]
fn torchrun_killed_by_sigkill_gets_its_own_diagnosis() {
    let progress = b"  3%|3         | 3001/100005 [31:02<16:43:10,  1.61it/s]\r";
    let cases: [(Option<u64>, &[&str], &[&str]); 3] = [
        (
            None,
            &[
                "torchrun was killed by SIGKILL",
                "OOM killer",
                "someone or something else",
            ],
            &["dmesg"],
        ),
        (
            Some(2),
            &[
                "torchrun was killed by SIGKILL",
                "OOM killer killed 2 process",
            ],
            &["dmesg", "Host RAM"],
        ),
        (
            Some(0),
            &[
                "torchrun was killed by SIGKILL",
                "not by the kernel's OOM killer",
            ],
            &["scheduler"],
        ),
    ];
    for (kills, summary, hint) in cases {
        let d = diagnose_run(progress, 137, Some(9), kills).expect("a diagnosis");
        assert_eq!(d.kind, DiagnosisKind::Killed, "{kills:?}");
        assert_eq!(d.rank, None);
        for w in summary {
            assert!(
                d.summary.contains(w),
                "{kills:?}: {w:?} not in {}",
                d.summary
            );
        }
        for w in hint {
            assert!(d.hint.contains(w), "{kills:?}: {w:?} not in {}", d.hint);
        }
        assert!(
            !d.summary.contains("GPU memory") && !d.hint.contains("batch_size"),
            "{d:?}"
        );
    }
    // What the log shows still wins: a rank's CUDA OOM, then torchrun killed, is the CUDA OOM.
    let oom = fixture("cuda_oom_torch24.log");
    let d = diagnose_run(&oom, 137, Some(9), Some(0)).unwrap();
    assert_eq!(d.kind, DiagnosisKind::CudaOom);
    // Any other signal, or a plain exit: nothing new.
    assert_eq!(diagnose_run(progress, 143, Some(15), Some(0)), None);
    assert_eq!(diagnose_run(b"", 1, None, Some(1)), None);
}

/// The real launcher: `kill -9` of its torchrun is said and recorded as such.
#[test]
fn a_kill_9_of_torchrun_is_reported_as_sigkill_not_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::noloss::launcher(dir.path(), "5", &[("FAKE_SLEEP", "120")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pids = crate::noloss::wait_ready(dir.path(), &mut child);
    let torchrun = pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(torchrun),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{err}");
    assert!(err.contains("torchrun was killed by SIGKILL"), "{err}");
    assert!(!err.contains("out of GPU memory"), "{err}");
    let outcome = crate::noloss::record_outcome(dir.path());
    assert_eq!(outcome["diagnosis"]["kind"], "Killed", "{outcome}");
}

#[test]
fn unrecognised_or_clean_logs_give_nothing() {
    assert_eq!(diagnose(&fixture("clean_exit.log"), 0, None), None);
    assert_eq!(diagnose(&fixture("clean_exit.log"), 1, None), None);
    assert_eq!(diagnose(b"", 1, None), None);
    assert_eq!(diagnose(&[0xff, 0xfe, b'\n', 0x80], 1, None), None);
    // A process that exited on SIGTERM is not host OOM.
    assert_eq!(diagnose(b"", 143, Some(15)), None);
}

const MIN: Duration = Duration::from_secs(60);

#[test]
fn hang_watchdog_needs_silence_and_idle_gpus_for_the_threshold() {
    let mut w = HangWatchdog::new(10 * MIN, 2);
    let at = |m: u64| Duration::from_secs(m * 60);
    w.on_output(at(0), Some(0));
    w.on_output(at(1), Some(1));
    // Silent but busy GPUs (a long step): no hang.
    for m in 1..=20 {
        w.on_gpu_sample(at(m), &[97, 95]);
        assert_eq!(w.check(at(m)), None, "busy at minute {m}");
    }
    // GPUs go idle at minute 21: a hang only 10 minutes after that.
    for m in 21..31 {
        w.on_gpu_sample(at(m), &[0, 1]);
        assert_eq!(
            w.check(at(m)),
            None,
            "idle only {} min at minute {m}",
            m - 21
        );
    }
    w.on_gpu_sample(at(31), &[0, 1]);
    let hang = w.check(at(31)).expect("hang after 10 idle silent minutes");
    assert_eq!(hang.silent_for, at(30));
    assert_eq!(hang.quietest_rank, Some(0));
    assert_eq!(hang.idle_ranks, vec![0, 1]);
    assert!(
        hang.summary.contains("30 min") && hang.summary.contains("rank 0"),
        "{}",
        hang.summary
    );
    // Reported once.
    w.on_gpu_sample(at(32), &[0, 0]);
    assert_eq!(w.check(at(32)), None);
    // Output re-arms; it must then be quiet for the full threshold again.
    w.on_output(at(33), Some(1));
    w.on_gpu_sample(at(40), &[0, 0]);
    assert_eq!(w.check(at(42)), None);
    assert!(w.check(at(43)).is_some());
}

#[test]
fn hang_watchdog_one_busy_gpu_or_no_samples_is_not_a_hang() {
    let at = |m: u64| Duration::from_secs(m * 60);
    let mut w = HangWatchdog::new(5 * MIN, 2);
    for m in 0..30 {
        w.on_gpu_sample(at(m), &[0, 100]);
    }
    assert_eq!(w.check(at(30)), None, "a GPU spinning in NCCL is busy");
    let mut w = HangWatchdog::new(5 * MIN, 2);
    assert_eq!(w.check(at(60)), None, "no utilisation evidence");
    // Idle streak broken by one busy sample restarts the clock.
    let mut w = HangWatchdog::new(5 * MIN, 2);
    w.on_gpu_sample(at(0), &[0]);
    w.on_gpu_sample(at(4), &[50]);
    w.on_gpu_sample(at(5), &[0]);
    assert_eq!(w.check(at(9)), None);
    assert!(w.check(at(10)).is_some());
}

/// Through the real launcher: the diagnosis reads the run's log, whose lines carry the log's own
/// prefix (a timestamp and the stream, or `+|` for a read's later lines), so torchrun's
/// `[rankN]:` prefixes and its "Root Cause" summary only count once that prefix is taken off. The
/// CUDA OOM of rank 1 is named as rank 1's, in the message and the record.
#[test]
fn a_logged_oom_is_attributed_to_its_rank() {
    let dir = tempfile::tempdir().unwrap();
    let log = String::from_utf8(fixture("cuda_oom_torch24.log")).unwrap();
    let out = crate::noloss::launcher(
        dir.path(),
        "5",
        &[("FAKE_STDERR", log.as_str()), ("FAKE_EXIT", "1")],
    )
    .args(["--oom-retries", "0"])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let outcome = crate::noloss::record_outcome(dir.path());
    let d = &outcome["diagnosis"];
    assert_eq!(d["kind"], "CudaOom", "{d}");
    assert_eq!(d["rank"], 1, "{d}");
    assert!(err.contains("Rank 1"), "{err}");
}
