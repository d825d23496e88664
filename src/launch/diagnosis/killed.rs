//! torchrun itself killed by SIGKILL. The log cannot say by whom: the kernel's out-of-memory
//! killer (host memory, or a cgroup's limit) or someone or something else (`kill -9`, a
//! scheduler's or container's hard limit). What can be known without dmesg is whether the
//! kernel's OOM killer killed anything on this host while the run ran: its `oom_kill` count
//! (`/proc/vmstat`, Linux 4.13+, memory cgroups' kills included), read by the caller before and
//! after (`process_tree::oom_kill_count`). A SIGKILL is never a CUDA out-of-memory (that is a Python exception with a traceback).

use super::failures::diagnose;
use super::memory::HOST_OOM_HINT;
use super::types::*;

/// [`diagnose`], then, for torchrun killed by SIGKILL with nothing in the log to explain it, its
/// own diagnosis. `oom_kills`: how many processes the kernel's OOM killer killed on this host
/// during the run, when that could be read.
pub fn diagnose_run(
    log_tail: &[u8],
    exit_code: i32,
    signal: Option<i32>,
    oom_kills: Option<u64>,
) -> Option<Diagnosis> {
    diagnose(log_tail, exit_code, signal).or_else(|| {
        (signal == Some(libc::SIGKILL)).then(|| killed_by_sigkill(exit_code, oom_kills))
    })
}

fn killed_by_sigkill(exit_code: i32, oom_kills: Option<u64>) -> Diagnosis {
    let (summary, hint) = match oom_kills {
        Some(0) => (
            "torchrun was killed by SIGKILL, not by the kernel's OOM killer (its oom_kill count in /proc/vmstat did not change during the run): by someone or something else.".to_string(),
            "Find who sends SIGKILL: a `kill -9`, the job scheduler (a time or memory limit: its log, e.g. `scontrol show job` or `sacct`), a container runtime's limit, or a monitoring script; then rerun.".to_string(),
        ),
        Some(n) => (
            format!(
                "torchrun was killed by SIGKILL, and the kernel's OOM killer killed {n} process(es) on this host during the run (oom_kill in /proc/vmstat): most likely host memory (or a memory cgroup's limit) ran out."
            ),
            format!("{HOST_OOM_HINT} `dmesg` names the process the OOM killer chose."),
        ),
        None => (
            "torchrun was killed by SIGKILL: by the kernel's OOM killer (host memory) or by someone or something else (`kill -9`, a scheduler's or container's limit).".to_string(),
            "Check `dmesg | grep -i oom` (or `journalctl -k`) for the OOM killer; if it is not there, find who sends SIGKILL (a `kill -9`, the job scheduler's limits, a container runtime).".to_string(),
        ),
    };
    Diagnosis {
        kind: DiagnosisKind::Killed,
        rank: None,
        summary,
        hint,
        details: Details::Killed {
            exit_code,
            oom_kills_during_run: oom_kills,
        },
        evidence: format!("torchrun ended by signal 9 (exit code {exit_code})"),
    }
}
