//! The failures a log names: a rejected flag, a missing import or path, CUDA or host memory,
//! NCCL; the root cause first.

use super::lines::*;
use super::memory::{cuda_oom, host_oom_from_exit, host_oom_from_summary};
use super::types::*;

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
