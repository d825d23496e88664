//! `vla-launch runs` (past runs and how they ended) and `vla-launch logs` (a run's log, or its
//! growth with --follow). Runs are found by reading every JSON run record under the log
//! directories, not by their file names, which may change.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::error::{AppError, ExitCode, Result};
use crate::app::settings::{env_var, load_profile};
use crate::budget::strategy_name;
use crate::record::{self, PlanRecord};
use crate::units::fmt_gib;

/// Where launches put their records: --log-dir, else the profile's run root, $VLA_RUN_ROOT and
/// ./vla-launch-logs (the launch form's defaults).
fn search_dirs(log_dirs: &[PathBuf], profile: Option<&str>) -> Result<Vec<PathBuf>> {
    if !log_dirs.is_empty() {
        return Ok(log_dirs.to_vec());
    }
    let mut dirs = Vec::new();
    if let Some(p) = profile {
        let loaded = load_profile(Some(p), &[])?;
        if let Some(root) = loaded.resolve(&env_var).run_root_dir() {
            dirs.push(root.join("vla-launch"));
        }
    }
    if let Some(root) = env_var("VLA_RUN_ROOT").filter(|r| !r.is_empty()) {
        dirs.push(Path::new(&root).join("vla-launch"));
    }
    dirs.push(PathBuf::from("vla-launch-logs"));
    dirs.dedup();
    Ok(dirs)
}

/// A launch's record and the file it was read from.
struct Run {
    path: PathBuf,
    record: PlanRecord,
}

impl Run {
    fn started(&self) -> u64 {
        self.record.started_unix.unwrap_or(0)
    }

    /// The run log: as the outcome names it, else (a run still going, or killed) the one named
    /// like the record (src/app/run_files.rs: `plan-<stem>.json` beside `run-<stem>.log`).
    fn log(&self) -> Option<PathBuf> {
        if let Some(log) = self.record.outcome.as_ref().and_then(|o| o.log.clone()) {
            return Some(log);
        }
        let stem = self.path.file_stem()?.to_str()?;
        let tail = stem.split_once('-').map_or(stem, |(_, t)| t);
        let log = self.path.parent()?.join(format!("run-{tail}.log"));
        log.is_file().then_some(log)
    }
}

/// Every launch record (a record with a start time) in `dirs` and their subdirectories, oldest
/// first.
fn find_runs(dirs: &[PathBuf]) -> Vec<Run> {
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                if let Ok(sub) = std::fs::read_dir(&path) {
                    files.extend(sub.flatten().map(|e| e.path()));
                }
            } else {
                files.push(path);
            }
        }
    }
    let mut runs: Vec<Run> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.is_symlink())
        .filter_map(|path| {
            let record = record::load(&path).ok()?;
            record.started_unix?;
            Some(Run { path, record })
        })
        .collect();
    runs.sort_by(|a, b| (a.started(), &a.path).cmp(&(b.started(), &b.path)));
    runs
}

/// `2026-11-28 08:21Z` for unix seconds (UTC, proleptic Gregorian calendar).
pub(in crate::app) fn utc(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{unix} s after 1970"),
            |t| t.strftime("%Y-%m-%d %H:%MZ").to_string(),
        )
}

fn plan_text(r: &PlanRecord) -> String {
    match (
        r.strategy,
        r.batch_size,
        r.grad_accumulation_steps,
        r.nproc_per_node,
    ) {
        (Some(s), Some(b), Some(a), Some(n)) => format!(
            "{} b{b} x{n}{} x{a}{}",
            strategy_name(s),
            if r.nnodes > 1 {
                format!(" x{}n", r.nnodes)
            } else {
                String::new()
            },
            if r.gradient_checkpointing == Some(true) {
                " ckpt"
            } else {
                ""
            }
        ),
        _ => "-".into(),
    }
}

/// The pid of torchrun as the run log names it (the supervisor's `torchrun pid N` note).
fn torchrun_pid(log: &Path) -> Option<i32> {
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(log).ok()?.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    let (_, rest) = text.split_once("torchrun pid ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` is, on this host, a process of a vla-launch run (it carries the run marker in
/// its environment, so a pid reused by another program does not count).
fn is_run_process(pid: i32) -> bool {
    let marker = format!("{}=", crate::launch::process_tree::MARKER_VAR);
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|&b| b == 0)
            .any(|kv| kv.starts_with(marker.as_bytes()))
    })
}

/// A run without an outcome: running here (its torchrun is alive on this host), or not known to
/// be (another host of a shared directory, or a launcher killed before it could write one).
fn no_outcome_text(run: &Run) -> String {
    match run.log().as_deref().and_then(torchrun_pid) {
        Some(pid) if is_run_process(pid) => format!("running (pid {pid})"),
        _ => "not running here".into(),
    }
}

fn outcome_text(run: &Run) -> String {
    let Some(o) = &run.record.outcome else {
        return no_outcome_text(run);
    };
    let mut s = match (o.signal, o.interrupted_by) {
        // Its own launcher stopped it because another node failed (issue 25 item 6).
        _ if o.stopped_by_peer_cause.is_some() || o.stopped_by_peer.is_some() => {
            let why = o.stopped_by_peer_cause.as_ref().map(ToString::to_string);
            format!(
                "stopped: {}",
                why.or(o.stopped_by_peer.clone()).unwrap_or_default()
            )
        }
        (_, Some(sig)) => format!("interrupted (signal {sig})"),
        (Some(sig), None) => format!("killed by signal {sig}"),
        (None, None) if o.exit_code == 0 => "ok".into(),
        (None, None) => format!("exit {}", o.exit_code),
    };
    if let Some(d) = &o.diagnosis {
        s += &format!(", {}", d.kind);
        // A launch refused at its start (node 0's port taken): its one reason, there is no other.
        if d.kind == "LaunchRefused" && !d.summary.is_empty() {
            s += &format!(": {}", crate::input::shown(&d.summary, 100));
        }
    }
    s
}

fn peak(r: &PlanRecord) -> Option<u64> {
    r.outcome
        .as_ref()?
        .observed_peak_used_bytes
        .as_ref()?
        .iter()
        .flatten()
        .copied()
        .max()
}

fn peak_text(r: &PlanRecord) -> String {
    let predicted = r.predicted_peak_bytes.map(fmt_gib).unwrap_or("-".into());
    let seen = peak(r).map(fmt_gib).unwrap_or("-".into());
    format!("{seen} / {predicted}")
}

pub(in crate::app) fn cmd_runs(
    log_dirs: &[PathBuf],
    profile: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let dirs = search_dirs(log_dirs, profile)?;
    let runs = find_runs(&dirs);
    if json {
        let list: Vec<serde_json::Value> = runs
            .iter()
            .map(|run| {
                let r = &run.record;
                serde_json::json!({
                    "record": run.path,
                    "started_unix": r.started_unix,
                    "profile": r.profile,
                    "strategy": r.strategy,
                    "batch_size": r.batch_size,
                    "grad_accumulation_steps": r.grad_accumulation_steps,
                    "nproc_per_node": r.nproc_per_node,
                    "nnodes": r.nnodes,
                    "gradient_checkpointing": r.gradient_checkpointing,
                    "outcome": outcome_text(run),
                    "exit_code": r.outcome.as_ref().map(|o| o.exit_code),
                    "duration_s": r.outcome.as_ref().and_then(|o| o.duration_s),
                    "observed_peak_used_bytes": peak(r),
                    "predicted_peak_bytes": r.predicted_peak_bytes,
                    "log": run.log(),
                })
            })
            .collect();
        crate::println_lossy!(
            "{}",
            serde_json::to_string_pretty(&list).expect("plain values")
        );
        // No runs: the same exit code as `logs` (issue 26), after the empty list.
        return Ok(if runs.is_empty() {
            ExitCode::Usage
        } else {
            ExitCode::Success
        });
    }
    if runs.is_empty() {
        let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        crate::eprintln_lossy!(
            "no runs found in {}; pass --log-dir DIR or --profile NAME to look elsewhere",
            looked.join(", ")
        );
        // As `logs` says it: looking in the wrong place is the command line's to fix (exit 2).
        return Ok(ExitCode::Usage);
    }
    crate::println_lossy!(
        "{:<17}  {:<12}  {:<24}  {:<22}  {:<21}  LOG",
        "WHEN (UTC)",
        "PROFILE",
        "PLAN",
        "OUTCOME",
        "PEAK / PREDICTED"
    );
    for run in &runs {
        let r = &run.record;
        crate::println_lossy!(
            "{:<17}  {:<12}  {:<24}  {:<22}  {:<21}  {}",
            utc(run.started()),
            r.profile,
            plan_text(r),
            outcome_text(run),
            peak_text(r),
            run.log()
                .map(|l| l.display().to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(ExitCode::Success)
}

/// The run `which` names: a record or log path, else the newest run whose record or log path
/// contains it; the newest run when None.
fn pick<'a>(runs: &'a [Run], which: Option<&str>) -> Option<&'a Run> {
    let Some(w) = which else {
        return runs.last();
    };
    let p = Path::new(w);
    runs.iter().rev().find(|r| {
        r.path == p
            || r.log().is_some_and(|l| l == p)
            || r.path.to_string_lossy().contains(w)
            || r.log().is_some_and(|l| l.to_string_lossy().contains(w))
    })
}

/// How `logs` shows a log.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::app) struct LogView {
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Bytes as they are, `\r` updates included.
    pub raw: bool,
}

/// The stream a log line came from: what lies between its time stamp and the `|`
/// (`err `, `out `, `--- `, a rank prefix).
fn stream_of(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
    let end = line[start..]
        .iter()
        .position(|&b| b == b'|')
        .map_or(start, |i| start + i);
    &line[start..end]
}

/// A line the writer ended with `\r` (a progress bar's update; the log adds the newline).
fn is_update(line: &[u8]) -> bool {
    line.ends_with(b"\r\n") || line.ends_with(b"\r")
}

/// Log lines as a terminal leaves them: an update is dropped once the next line of its stream
/// arrives (which a terminal would have drawn over it); the `\r` of one kept is left out.
#[derive(Default)]
struct Collapse {
    partial: Vec<u8>,
    pending: Option<Vec<u8>>,
    expand: crate::launch::log::Expand,
}

impl Collapse {
    fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(Vec<u8>)) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.line(line, emit);
        }
    }

    fn line(&mut self, line: Vec<u8>, emit: &mut dyn FnMut(Vec<u8>)) {
        // A continuation (log format 2) is shown with its record's time and stream.
        let line = self.expand.line(line);
        if let Some(p) = self.pending.take()
            && stream_of(&p) != stream_of(&line)
        {
            emit(without_cr(p));
        }
        if is_update(&line) {
            self.pending = Some(line);
        } else {
            emit(line);
        }
    }

    /// What is held back: the last update, a line without its newline yet.
    fn flush(&mut self, emit: &mut dyn FnMut(Vec<u8>)) {
        if let Some(p) = self.pending.take() {
            emit(without_cr(p));
        }
        if !self.partial.is_empty() {
            let rest = self.expand.line(std::mem::take(&mut self.partial));
            if is_update(&rest) {
                emit(without_cr(rest));
            } else {
                emit(rest);
            }
        }
    }
}

fn without_cr(mut line: Vec<u8>) -> Vec<u8> {
    let nl = line.ends_with(b"\n");
    if nl {
        line.pop();
    }
    while line.last() == Some(&b'\r') {
        line.pop();
    }
    line.push(b'\n');
    line
}

/// Where `logs` writes: stdout, or (with --tail, until the log's end is first reached) the last
/// N lines held back.
struct Sink<'a> {
    out: std::io::StdoutLock<'a>,
    held: Option<std::collections::VecDeque<Vec<u8>>>,
    tail: usize,
    /// stdout was closed (`| head`): nothing more to write.
    closed: bool,
}

impl Sink<'_> {
    fn emit(&mut self, line: Vec<u8>) {
        match &mut self.held {
            Some(h) => {
                h.push_back(line);
                if h.len() > self.tail {
                    h.pop_front();
                }
            }
            None => self.write(&line),
        }
    }

    fn release(&mut self) {
        for line in self.held.take().unwrap_or_default() {
            self.write(&line);
        }
    }

    fn write(&mut self, line: &[u8]) {
        if !self.closed
            && self
                .out
                .write_all(line)
                .and_then(|()| self.out.flush())
                .is_err()
        {
            self.closed = true;
        }
    }
}

pub(in crate::app) fn cmd_logs(
    log_dirs: &[PathBuf],
    profile: Option<&str>,
    which: Option<&str>,
    view: LogView,
) -> Result<ExitCode> {
    let dirs = search_dirs(log_dirs, profile)?;
    let runs = find_runs(&dirs);
    let run = pick(&runs, which).ok_or_else(|| {
        let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        AppError::usage(match which {
            Some(w) => format!(
                "no run matches {w:?} in {}; `vla-launch runs` lists them",
                looked.join(", ")
            ),
            None => format!(
                "no runs found in {}; pass --log-dir DIR or --profile NAME",
                looked.join(", ")
            ),
        })
    })?;
    let log = run.log().ok_or_else(|| {
        AppError::usage(format!(
            "{}: the record names no log and none was found beside it",
            run.path.display()
        ))
    })?;
    let mut file = std::fs::File::open(&log)
        .map_err(|e| AppError::usage(format!("{}: cannot read the log: {e}", log.display())))?;
    let mut sink = Sink {
        out: std::io::stdout().lock(),
        held: view
            .tail
            .map(|n| std::collections::VecDeque::with_capacity(n.min(4096))),
        tail: view.tail.unwrap_or(0),
        closed: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut quiet_polls = 0u32;
    let mut collapse = Collapse::default();
    let mut raw_partial: Vec<u8> = Vec::new();
    let mut expand = crate::launch::log::Expand::default();
    loop {
        let n = file.read(&mut buf).unwrap_or(0);
        if n > 0 {
            quiet_polls = 0;
            if view.raw {
                // Whole lines, so that --tail counts them.
                raw_partial.extend_from_slice(&buf[..n]);
                while let Some(nl) = raw_partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = raw_partial.drain(..=nl).collect();
                    sink.emit(expand.line(line));
                }
            } else {
                collapse.push(&buf[..n], &mut |l| sink.emit(l));
            }
            if sink.closed {
                return Ok(ExitCode::Success); // stdout closed (`| head`)
            }
            continue;
        }
        // The end of what is there: a held tail goes out now.
        sink.release();
        let over = !view.follow
            || (quiet_polls >= 4
                && record::load(&run.path)
                    .ok()
                    .is_some_and(|r| r.outcome.is_some()));
        if over {
            if !raw_partial.is_empty() {
                sink.emit(expand.line(std::mem::take(&mut raw_partial)));
            }
            collapse.flush(&mut |l| sink.emit(l));
            return Ok(ExitCode::Success);
        }
        // Following: the run is over once its record has an outcome and the log stopped growing.
        quiet_polls += 1;
        if quiet_polls == 4 {
            // Quiet for a second: show a bar's latest state rather than nothing.
            collapse.flush(&mut |l| sink.emit(l));
        }
        if sink.closed {
            return Ok(ExitCode::Success);
        }
        // A log rotated or truncated under us: start again from its beginning.
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let pos = file.stream_position().unwrap_or(0);
        if len < pos {
            let _ = file.seek(SeekFrom::Start(0));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::{Run, outcome_text, utc};
    use std::path::PathBuf;

    /// Issue 25 item 6: a node its peer stopped (SIGTERM from its own launcher after another
    /// node failed) is not "interrupted (signal 15)" as if someone had stopped it.
    #[test]
    fn a_node_stopped_by_its_peer_says_which_node_failed() {
        let run = |outcome: serde_json::Value| Run {
            path: PathBuf::from("/nonexistent/plan-x.json"),
            record: serde_json::from_value(
                serde_json::json!({"started_unix": 1, "outcome": outcome}),
            )
            .unwrap(),
        };
        let stopped = run(serde_json::json!({
            "exit_code": 143, "interrupted_by": 15,
            "stopped_by_peer": "node 1's training ended with exit 1",
            "stopped_by_peer_cause": {"node": 1, "kind": "failed", "exit_code": 1},
        }));
        let text = outcome_text(&stopped);
        assert_eq!(
            text, "stopped: node 1's training ended with exit 1",
            "{text}"
        );
        let interrupted = run(serde_json::json!({"exit_code": 130, "interrupted_by": 2}));
        assert_eq!(outcome_text(&interrupted), "interrupted (signal 2)");
        // The node that failed at its start says why (the other node's line says "node 0").
        let refused = run(serde_json::json!({"exit_code": 4, "diagnosis": {
            "kind": "LaunchRefused", "summary": "port 20183 (--rdzv-port) is already in use on node 0",
            "hint": "h", "evidence": "", "rank": null}}));
        let text = outcome_text(&refused);
        assert!(
            text.starts_with("exit 4, LaunchRefused: port 20183 (--rdzv-port) is already in use"),
            "{text}"
        );
    }

    fn running(path: PathBuf) -> Run {
        Run {
            path,
            record: serde_json::from_value(serde_json::json!({"started_unix": 1})).unwrap(),
        }
    }

    /// A launch still going (no outcome yet) finds its log by the run file names of
    /// src/app/run_files.rs (`plan-<stem>.json` beside `run-<stem>.log`), not a replay's log of
    /// the same second, a `latest*` link or the log of a longer stem.
    #[test]
    fn a_running_launch_finds_its_own_log_by_name() {
        let dir = std::env::temp_dir().join(format!("vla-runs-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stems = [
            "2026-11-28_08-21-05",
            "2026-11-28_08-21-05-1",
            "2026-11-28_08-21-05-job7-node1-host",
            "2026-11-28_08-21-05-job7-node1-host-retry1",
        ];
        for stem in stems {
            for name in [format!("run-{stem}.log"), format!("replay-{stem}.log")] {
                std::fs::write(dir.join(name), b"x").unwrap();
            }
            std::fs::write(dir.join(format!("plan-{stem}.json")), b"{}").unwrap();
        }
        std::os::unix::fs::symlink("run-2026-11-28_08-21-05.log", dir.join("latest.log")).unwrap();
        for stem in stems {
            let run = running(dir.join(format!("plan-{stem}.json")));
            assert_eq!(
                run.log(),
                Some(dir.join(format!("run-{stem}.log"))),
                "{stem}"
            );
        }
        // A record whose log is gone has none (not another run's).
        std::fs::remove_file(dir.join("run-2026-11-28_08-21-05-1.log")).unwrap();
        let run = running(dir.join("plan-2026-11-28_08-21-05-1.json"));
        assert_eq!(run.log(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A bar's updates collapse to the last one of their stream; another stream's line in
    /// between keeps the update it followed (as a terminal shows it); the `\r` is left out.
    #[test]
    fn updates_collapse_per_stream() {
        let log = "T1 err |\r\nT2 err | 10%\r\nT3 err | 20%\r\nT4 out |hello\nT5 err | 30%\r\nT6 err |100%\nT7 err | 5%\r\n";
        let mut c = super::Collapse::default();
        let mut out = Vec::new();
        // Fed in pieces that split lines.
        for piece in log.as_bytes().chunks(7) {
            c.push(piece, &mut |l| out.push(String::from_utf8(l).unwrap()));
        }
        c.flush(&mut |l| out.push(String::from_utf8(l).unwrap()));
        assert_eq!(
            out,
            [
                "T3 err | 20%\n",
                "T4 out |hello\n",
                "T6 err |100%\n",
                "T7 err | 5%\n"
            ]
        );
    }

    /// A continuation (log format 2) collapses with its record's stream and shows its prefix.
    #[test]
    fn continuations_show_and_collapse_as_their_records() {
        let z = "2026-11-27T08:50:01.123Z";
        let log = format!("{z} err | 1%\r\n+| 2%\r\n{z} out |a\n+|b\n{z} err | 3%\r\n+| 4%\r\n");
        let mut c = super::Collapse::default();
        let mut out = Vec::new();
        c.push(log.as_bytes(), &mut |l| {
            out.push(String::from_utf8(l).unwrap())
        });
        c.flush(&mut |l| out.push(String::from_utf8(l).unwrap()));
        let want = [
            format!("{z} err | 2%\n"),
            format!("{z} out |a\n"),
            format!("{z} out |b\n"),
            format!("{z} err | 4%\n"),
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00Z");
        assert_eq!(utc(1_795_846_018), "2026-11-28 06:06Z");
    }
}
