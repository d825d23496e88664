//! One-sentence explanations of a failed training run, from the tail of its log and its exit,
//! plus a hang watchdog. Pure: bytes and numbers in, a `Diagnosis` out.
//!
//! torchrun prefixes worker lines with `[rank3]:` (torch >= 2.2) or `[default3]:` (older
//! `--tee`, where the number is the local rank) and ends a failed run with an error summary
//! whose "Root Cause" names the first failing rank and its exit code. Both are used to say
//! which rank failed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisKind {
    CudaOom,
    HostOom,
    NcclTimeout,
    NcclError,
    MissingPath,
    UnknownFlag,
    ImportError,
}

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

/// What a CUDA out-of-memory message says; sizes in bytes as torch printed them (rounded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomDetails {
    pub tried_to_allocate_bytes: Option<u64>,
    /// The CUDA device index inside the worker (not the rank).
    pub gpu_index: Option<u32>,
    pub total_capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    /// torch >= 2.1: "this process has X memory in use" (everything, including non-PyTorch).
    pub process_in_use_bytes: Option<u64>,
    /// torch >= 2.1 "allocated by PyTorch"; torch 2.0 "already allocated".
    pub allocated_by_pytorch_bytes: Option<u64>,
    /// torch >= 2.1 "reserved by PyTorch but unallocated"; torch 2.0 reports only the total
    /// reserved, from which this is computed.
    pub reserved_unallocated_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Details {
    CudaOom(OomDetails),
    HostOom {
        exit_code: i32,
    },
    Nccl {
        op: Option<String>,
        seq: Option<u64>,
        timeout_ms: Option<u64>,
        message: String,
    },
    MissingPath {
        path: String,
    },
    UnknownFlags {
        flags: Vec<String>,
    },
    Import {
        module: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub kind: DiagnosisKind,
    /// Global rank for `[rankN]:` lines and torchrun's summary; local rank for `[defaultN]:`.
    pub rank: Option<u32>,
    /// One sentence: what went wrong.
    pub summary: String,
    /// What to do about it.
    pub hint: String,
    pub details: Details,
    /// The log line the diagnosis rests on (prefix removed).
    pub evidence: String,
}

/// One log line with torchrun's rank prefix split off.
struct Line<'a> {
    rank: Option<u32>,
    text: &'a str,
}

fn split_rank_prefix(line: &str) -> Line<'_> {
    for tag in ["[rank", "[default"] {
        if let Some(rest) = line.strip_prefix(tag)
            && let Some((num, text)) = rest.split_once("]:")
            && let Ok(rank) = num.parse::<u32>()
        {
            return Line {
                rank: Some(rank),
                text: text.strip_prefix(' ').unwrap_or(text),
            };
        }
    }
    Line {
        rank: None,
        text: line,
    }
}

/// torchrun's error summary: the rank and exit code of the "Root Cause" entry.
#[derive(Debug, Default)]
struct RootCause {
    rank: Option<u32>,
    exit_code: Option<i32>,
}

fn root_cause(lines: &[Line]) -> RootCause {
    let Some(start) = lines
        .iter()
        .position(|l| l.text.starts_with("Root Cause (first observed failure)"))
    else {
        return RootCause::default();
    };
    let mut cause = RootCause::default();
    for l in &lines[start..] {
        let t = l.text.trim();
        if let Some(v) = field(t, "rank") {
            cause.rank = leading_int(v).and_then(|n| u32::try_from(n).ok());
        } else if let Some(v) = field(t, "exitcode") {
            cause.exit_code = leading_int(v).and_then(|n| i32::try_from(n).ok());
        }
        if t.starts_with("====") && cause.exit_code.is_some() {
            break;
        }
    }
    cause
}

/// `name      : value` as torchrun aligns it.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    let rest = rest.trim_start().strip_prefix(':')?;
    Some(rest.trim())
}

fn leading_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(s.len(), |(i, _)| i);
    s[..end].parse().ok()
}

/// `1.96 GiB`, `224.00 MiB`, `512 bytes` -> bytes.
fn parse_size(s: &str) -> Option<u64> {
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
fn size_after(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    parse_size(&text[at..])
}

/// The size written right before `marker` (`1.02 GiB is free`).
fn size_before(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)?;
    let head = text[..at].trim_end();
    // Back up over "<number> <unit>".
    let unit_start = head.rfind(' ')?;
    let num_start = head[..unit_start]
        .rfind([' ', '(', ';'])
        .map_or(0, |i| i + 1);
    parse_size(&head[num_start..])
}

fn parse_oom(text: &str) -> OomDetails {
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
fn torch_size(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.0} MiB", bytes as f64 / 1024f64.powi(2))
    } else {
        format!("{:.2} GiB", bytes as f64 / 1024f64.powi(3))
    }
}

fn rank_phrase(rank: Option<u32>) -> String {
    rank.map_or_else(|| "A rank".to_string(), |r| format!("Rank {r}"))
}

/// The first line containing `needle`, with its rank.
fn find<'a>(lines: &'a [Line<'a>], needle: &str) -> Option<&'a Line<'a>> {
    lines.iter().find(|l| l.text.contains(needle))
}

fn text_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| text[i + marker.len()..].trim())
}

/// Explain a failed run. `exit_code` is torchrun's (or the child's) exit status, `signal` the
/// signal that ended it, if any. Returns None when nothing recognisable is in the log. Do not
/// call it for a run the launcher itself killed: SIGKILL after the grace period would read as
/// the host's OOM killer.
pub fn diagnose(log_tail: &[u8], exit_code: i32, signal: Option<i32>) -> Option<Diagnosis> {
    let text = String::from_utf8_lossy(log_tail);
    // tqdm redraws with '\r'; each redraw is its own line for our purposes.
    let lines: Vec<Line> = text.split(['\n', '\r']).map(split_rank_prefix).collect();
    let cause = root_cause(&lines);
    let rank_of = |l: &Line| l.rank.or(cause.rank);

    // Ordered by how early in a run each failure strikes and how surely it is the root cause:
    // a rank's CUDA OOM makes the other ranks time out in NCCL afterwards, not the reverse.
    unknown_flag(&lines, &rank_of)
        .or_else(|| import_error(&lines, &rank_of))
        .or_else(|| missing_path(&lines, &rank_of))
        .or_else(|| cuda_oom(&lines, &rank_of))
        .or_else(|| host_oom_from_summary(&lines, &cause))
        .or_else(|| nccl_timeout(&lines, &rank_of))
        .or_else(|| nccl_error(&lines, &rank_of))
        .or_else(|| host_oom_from_exit(&lines, exit_code, signal))
}

type RankOf<'a> = dyn Fn(&Line) -> Option<u32> + 'a;

fn unknown_flag(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let (line, list) = lines.iter().find_map(|l| {
        text_after(l.text, "error: unrecognized arguments:")
            .or_else(|| text_after(l.text, "The following arguments are not valid:"))
            .map(|list| (l, list))
    })?;
    let mut flags: Vec<String> = list
        .split([' ', ',', '[', ']', '\''])
        .filter(|t| t.starts_with('-'))
        .map(|t| t.split('=').next().unwrap_or(t).to_string())
        .collect();
    flags.dedup();
    if flags.is_empty() {
        flags.push(list.to_string());
    }
    let shown = flags.join(", ");
    Some(Diagnosis {
        kind: DiagnosisKind::UnknownFlag,
        rank: rank_of(line),
        summary: format!("The training script rejected flags it does not define: {shown}."),
        hint: format!(
            "Remove {shown} from the profile or the pass-through arguments, or declare in the profile's policy that the script lacks them; `vla-launch doctor --profile NAME` lists the flags the script accepts."
        ),
        details: Details::UnknownFlags { flags },
        evidence: line.text.trim().to_string(),
    })
}

fn import_error(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let line = lines.iter().find(|l| {
        let t = l.text.trim_start();
        t.starts_with("ModuleNotFoundError:") || t.starts_with("ImportError:")
    })?;
    let t = line.text.trim();
    let module = if let Some(rest) = text_after(t, "No module named ") {
        rest.trim_matches(['\'', '"']).to_string()
    } else if let Some(rest) = text_after(t, "from '") {
        rest.split('\'').next().unwrap_or(rest).to_string()
    } else {
        t.split_once(':').map_or(t, |(_, m)| m.trim()).to_string()
    };
    let top = module.split('.').next().unwrap_or(&module).to_string();
    let hint = match top.as_str() {
        // The OpenVLA-OFT repository's own packages: installed from the checkout.
        "prismatic" | "experiments" => {
            "Install the OpenVLA-OFT checkout into the Python that torchrun uses: `pip install -e .` in the repository.".to_string()
        }
        _ if t.contains("cannot import name") => format!(
            "The installed {top} is a different version than the script expects: install the version the script's requirements pin (`pip install -e .` in the OpenVLA-OFT checkout), in the Python that torchrun uses."
        ),
        _ => format!(
            "Install {top} into the Python that torchrun uses (`pip install {}`), or point --torchrun or the profile at the environment that has it.",
            top.replace('_', "-")
        ),
    };
    Some(Diagnosis {
        kind: DiagnosisKind::ImportError,
        rank: rank_of(line),
        summary: format!("Python could not import {module}: {t}."),
        hint,
        details: Details::Import { module },
        evidence: t.to_string(),
    })
}

fn missing_path(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let (line, path) = lines.iter().find_map(|l| {
        let t = l.text.trim();
        let path = if t.starts_with("FileNotFoundError:") {
            Some(
                text_after(t, "No such file or directory: ")
                    .unwrap_or(t)
                    .trim_matches(['\'', '"'])
                    .to_string(),
            )
        } else if t.contains("DatasetNotFoundError:") {
            text_after(t, "Dataset ").map(|r| r.trim_end_matches(" not found.").to_string())
        } else if t.starts_with("OSError:")
            && (t.contains("does not appear to have a file named")
                || t.contains("is not a local folder and is not a valid model identifier"))
        {
            text_after(t, "OSError: ")
                .and_then(|r| r.split_whitespace().next())
                .map(|s| s.trim_matches(['\'', '"']).to_string())
        } else if t.contains("NotFoundError: Could not find directory") {
            text_after(t, "Could not find directory ").map(str::to_string)
        } else {
            None
        };
        path.map(|p| (l, p))
    })?;
    let t = line.text.trim();
    let (summary, hint) = if t.contains("DatasetNotFoundError") {
        (
            format!("The dataset {path} was not found under data_root_dir."),
            "Check dataset_name and data_root_dir (${VLA_DATA_ROOT}) in the profile: data_root_dir must hold the RLDS dataset directory under that exact name, on every node.".to_string(),
        )
    } else if t.starts_with("OSError") {
        (
            format!("The model at {path} is missing files or does not exist."),
            "Check vla_path in the profile: a local directory must hold the full checkpoint (config.json, preprocessor_config.json, weights), a Hub id must be spelled correctly and reachable (HF_TOKEN, HF_HUB_OFFLINE).".to_string(),
        )
    } else {
        (
            format!("The script could not find {path}."),
            "Check the paths in the profile (data_root_dir, run_root_dir, vla_path) and the placeholders they use (${VLA_DATA_ROOT}, ${VLA_RUN_ROOT}); every node must see the same paths.".to_string(),
        )
    };
    Some(Diagnosis {
        kind: DiagnosisKind::MissingPath,
        rank: rank_of(line),
        summary,
        hint,
        details: Details::MissingPath { path },
        evidence: t.to_string(),
    })
}

fn cuda_oom(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
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

const HOST_OOM_HINT: &str = "Host RAM ran out: check `dmesg | grep -i oom` (or `journalctl -k`); lower --shuffle_buffer_size (each rank holds that many RLDS samples in RAM), run fewer ranks per node, or ask Slurm for more memory (--mem).";

fn host_oom_from_summary(lines: &[Line], cause: &RootCause) -> Option<Diagnosis> {
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

fn host_oom_from_exit(lines: &[Line], exit_code: i32, signal: Option<i32>) -> Option<Diagnosis> {
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

/// `key=value` inside `WorkNCCL(SeqNum=.., OpType=.., Timeout(ms)=..)`.
fn work_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = text_after(text, key)?;
    Some(rest.split([',', ')']).next().unwrap_or(rest).trim())
}

/// `[Rank 3]` inside NCCL's own messages, when torchrun did not prefix the line.
fn nccl_rank(text: &str) -> Option<u32> {
    text_after(text, "[Rank ")
        .and_then(leading_int)
        .and_then(|n| u32::try_from(n).ok())
}

fn nccl_timeout(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let line = find(lines, "Watchdog caught collective operation timeout")?;
    let t = line.text;
    let op = work_field(t, "OpType=").map(str::to_string);
    let seq = work_field(t, "SeqNum=").and_then(|s| s.parse().ok());
    let timeout_ms: Option<u64> = work_field(t, "Timeout(ms)=").and_then(|s| s.parse().ok());
    let rank = line.rank.or_else(|| nccl_rank(t)).or_else(|| rank_of(line));
    let mut summary = format!("{} waited", rank_phrase(rank));
    if let Some(ms) = timeout_ms {
        summary += &format!(" {} s", ms / 1000);
    }
    summary += &format!(
        " for a collective{}{} that the other ranks never joined (NCCL watchdog timeout).",
        op.as_ref().map_or(String::new(), |o| format!(" {o}")),
        seq.map_or(String::new(), |s| format!(" #{s}"))
    );
    Some(Diagnosis {
        kind: DiagnosisKind::NcclTimeout,
        rank,
        summary,
        hint: "Another rank stalled or died first: look above for its error (a rank stuck loading data or saving a checkpoint stalls the rest); across nodes, rerun with NCCL_DEBUG=INFO and check the network between them.".into(),
        details: Details::Nccl {
            op,
            seq,
            timeout_ms,
            message: t.trim().to_string(),
        },
        evidence: t.trim().to_string(),
    })
}

/// `s` up to the first of `stops`.
fn cut_at_first<'a>(s: &'a str, stops: &[&str]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|p| s.find(p))
        .min()
        .unwrap_or(s.len());
    &s[..end]
}

fn nccl_error(lines: &[Line], rank_of: &RankOf) -> Option<Diagnosis> {
    let idx = lines.iter().position(|l| {
        l.text.contains("NCCL error")
            || l.text.contains("ncclSystemError")
            || l.text.contains("ncclInternalError")
            || l.text.contains("ncclUnhandledCudaError")
    })?;
    let line = &lines[idx];
    let t = line.text.trim();
    // "NCCL error in: FILE:LINE, unhandled system error (run with ...), NCCL version X"
    let what = text_after(t, "NCCL error in:")
        .and_then(|r| r.split_once(", ").map(|(_, w)| w))
        .map(|w| cut_at_first(w, &[" (", ", NCCL version"]))
        .unwrap_or(t)
        .to_string();
    // NCCL prints the cause a few lines later as "Last error:" then the message.
    let last_error = lines[idx..]
        .iter()
        .take(8)
        .position(|l| l.text.trim() == "Last error:")
        .and_then(|p| lines.get(idx + p + 1))
        .map(|l| l.text.trim().to_string())
        .filter(|s| !s.is_empty());
    let rank = line.rank.or_else(|| nccl_rank(t)).or_else(|| rank_of(line));
    let summary = match &last_error {
        Some(e) => format!("{} hit an NCCL error: {what} ({e}).", rank_phrase(rank)),
        None => format!("{} hit an NCCL error: {what}.", rank_phrase(rank)),
    };
    Some(Diagnosis {
        kind: DiagnosisKind::NcclError,
        rank,
        summary,
        hint: "Rerun with NCCL_DEBUG=INFO; across nodes check that they reach each other on the interface NCCL picks (NCCL_SOCKET_IFNAME) and that no firewall blocks it; on one node check `nvidia-smi topo -m` and try NCCL_P2P_DISABLE=1.".into(),
        details: Details::Nccl {
            op: None,
            seq: None,
            timeout_ms: None,
            message: last_error.map_or_else(|| t.to_string(), |e| format!("{t} / {e}")),
        },
        evidence: t.to_string(),
    })
}
