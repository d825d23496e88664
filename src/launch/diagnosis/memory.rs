//! Memory: a CUDA out-of-memory message taken apart, its hint fitted to the configuration that
//! ran, and the host's out-of-memory killer as torchrun's summary or exit shows it.

use super::lines::*;
use super::types::*;

/// The best evidence of what the failed run needed on its worst GPU: the NVML peak, or what torch
/// said the process held plus the allocation that failed, whichever is larger.
pub fn oom_evidence(nvml_peak_bytes: Option<u64>, oom: Option<&OomDetails>) -> Option<u64> {
    let from_torch = oom.and_then(|d| {
        d.process_in_use_bytes
            .or(d.allocated_by_pytorch_bytes)
            .map(|held| held + d.tried_to_allocate_bytes.unwrap_or(0))
    });
    match (nvml_peak_bytes, from_torch) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `1.96 GiB`, `224.00 MiB`, `512 bytes` -> bytes.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..num_end].parse().ok()?;
    let unit = s[num_end..].trim_start();
    let scale: f64 = if unit.starts_with("TiB") {
        1024f64.powi(4)
    } else if unit.starts_with("GiB") {
        1024f64.powi(3)
    } else if unit.starts_with("MiB") {
        1024f64.powi(2)
    } else if unit.starts_with("KiB") {
        1024.0
    } else if unit.starts_with("bytes") || unit.starts_with('B') {
        1.0
    } else {
        return None;
    };
    Some((value * scale).round() as u64)
}

/// The size written right after `marker` (`Tried to allocate 1.96 GiB`).
pub(super) fn size_after(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    parse_size(&text[at..])
}

/// The size written right before `marker` (`1.02 GiB is free`).
pub(super) fn size_before(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)?;
    let head = text[..at].trim_end();
    // Back up over "<number> <unit>".
    let unit_start = head.rfind(' ')?;
    let num_start = head[..unit_start]
        .rfind([' ', '(', ';'])
        .map_or(0, |i| i + 1);
    parse_size(&head[num_start..])
}

pub(super) fn parse_oom(text: &str) -> OomDetails {
    let mut d = OomDetails {
        tried_to_allocate_bytes: size_after(text, "Tried to allocate "),
        ..Default::default()
    };
    if let Some(at) = text.find("GPU ") {
        d.gpu_index = leading_int(&text[at + 4..]).and_then(|n| u32::try_from(n).ok());
    }
    if text.contains("has a total capacity of") {
        // torch >= 2.1
        d.total_capacity_bytes = size_after(text, "has a total capacity of ");
        d.free_bytes = size_after(text, " of which ");
        d.process_in_use_bytes = size_before(text, "memory in use");
        d.allocated_by_pytorch_bytes = size_before(text, "is allocated by PyTorch");
        d.reserved_unallocated_bytes = size_before(text, "is reserved by PyTorch but unallocated");
    } else {
        // torch 2.0: "(GPU 0; 23.65 GiB total capacity; 22.56 GiB already allocated; 83.06 MiB
        // free; 22.79 GiB reserved in total by PyTorch)"
        d.total_capacity_bytes = size_before(text, "total capacity");
        d.allocated_by_pytorch_bytes = size_before(text, "already allocated");
        d.free_bytes = size_before(text, "free;").or_else(|| size_before(text, "free)"));
        let reserved = size_before(text, "reserved in total by PyTorch");
        d.reserved_unallocated_bytes = reserved
            .zip(d.allocated_by_pytorch_bytes)
            .map(|(r, a)| r.saturating_sub(a));
    }
    d
}

/// Sizes as torch prints them: MiB below 1 GiB, GiB with two decimals above.
pub(super) fn torch_size(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.0} MiB", bytes as f64 / 1024f64.powi(2))
    } else {
        format!("{:.2} GiB", bytes as f64 / 1024f64.powi(3))
    }
}

pub(super) fn cuda_oom(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let line =
        find(lines, "CUDA out of memory").or_else(|| find(lines, "CUDA error: out of memory"))?;
    let d = parse_oom(line.text);
    let rank = rank_of(line);
    let mut summary = format!("{} ran out of GPU memory", rank_phrase(rank));
    if let Some(g) = d.gpu_index {
        summary += &format!(" on its GPU {g}");
    }
    if let Some(t) = d.tried_to_allocate_bytes {
        summary += &format!(": it tried to allocate {}", torch_size(t));
        if let (Some(free), Some(total)) = (d.free_bytes, d.total_capacity_bytes) {
            summary += &format!(" with {} free of {}", torch_size(free), torch_size(total));
        }
        if let Some(a) = d.allocated_by_pytorch_bytes {
            summary += &format!(" ({} allocated by PyTorch)", torch_size(a));
        }
    }
    summary.push('.');
    let mut hint = OOM_HINT.to_string();
    // Over 1 GiB (or 5% of the card) reserved but unused is fragmentation, which expandable
    // segments largely remove.
    if let (Some(r), Some(total)) = (d.reserved_unallocated_bytes, d.total_capacity_bytes)
        && (r > 1 << 30 || r > total / 20)
    {
        hint += &format!(
            " {} was reserved but unallocated: set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True if the profile overrides it.",
            torch_size(r)
        );
    }
    Some(Diagnosis {
        kind: DiagnosisKind::CudaOom,
        rank,
        summary,
        hint,
        details: Details::CudaOom(d),
        evidence: line.text.trim().to_string(),
    })
}

const OOM_HINT: &str = "Lower --batch_size and raise --grad_accumulation_steps to keep the global batch, or turn on gradient checkpointing or FSDP; vla-launch re-plans with the observed peak when --oom-retries allows.";

/// The CUDA OOM hint for the configuration that ran: it only suggests turning on gradient
/// checkpointing or FSDP when they were off.
pub fn fit_oom_hint(d: &mut Diagnosis, checkpointing: bool, fsdp: bool) {
    if d.kind != DiagnosisKind::CudaOom {
        return;
    }
    let lever = match (checkpointing, fsdp) {
        (false, false) => return,
        (true, false) => "or turn on FSDP (gradient checkpointing is already on)".to_string(),
        (false, true) => "or turn on gradient checkpointing (FSDP is already on)".to_string(),
        (true, true) => {
            "gradient checkpointing and FSDP are already on, so what is left is a smaller batch (down to 1) or more GPUs".to_string()
        }
    };
    d.hint = d
        .hint
        .replacen("or turn on gradient checkpointing or FSDP", &lever, 1);
}

pub(super) const HOST_OOM_HINT: &str = "Host RAM ran out: check `dmesg | grep -i oom` (or `journalctl -k`); lower --shuffle_buffer_size (each rank holds that many RLDS samples in RAM), run fewer ranks per node, or ask Slurm for more memory (--mem).";

pub(super) fn host_oom_from_summary(lines: &[Line], cause: &RootCause) -> Option<Diagnosis> {
    if cause.exit_code != Some(-9) {
        return None;
    }
    let evidence = find(lines, "Signal 9 (SIGKILL)")
        .or_else(|| find(lines, "exitcode"))
        .map_or_else(String::new, |l| l.text.trim().to_string());
    Some(Diagnosis {
        kind: DiagnosisKind::HostOom,
        rank: cause.rank,
        summary: format!(
            "{} was killed by SIGKILL (exitcode -9) without a Python traceback, which is how the kernel's out-of-memory killer ends a process.",
            rank_phrase(cause.rank)
        ),
        hint: HOST_OOM_HINT.into(),
        details: Details::HostOom { exit_code: -9 },
        evidence,
    })
}

pub(super) fn host_oom_from_exit(
    lines: &[Line],
    exit_code: i32,
    signal: Option<i32>,
) -> Option<Diagnosis> {
    // Not a signal to torchrun itself (`kill -9`, a job limit): the OOM killer picks the largest
    // process, a training rank, which torchrun reports as exitcode -9 (issue 25 item 14).
    let killed = signal.is_none() && (exit_code == 137 || exit_code == -9);
    let traceback = lines
        .iter()
        .any(|l| l.text.contains("Traceback (most recent call last)"));
    if !killed || traceback {
        return None;
    }
    Some(Diagnosis {
        kind: DiagnosisKind::HostOom,
        rank: None,
        summary: "The training was killed by SIGKILL without a Python traceback, which is how the kernel's out-of-memory killer ends a process.".into(),
        hint: HOST_OOM_HINT.into(),
        details: Details::HostOom { exit_code },
        evidence: format!("exit code {exit_code}, signal {signal:?}"),
    })
}
