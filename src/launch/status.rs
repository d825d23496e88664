//! The training's progress, read from the script's tqdm output: kept for the run record, and
//! (on a terminal) shown as one status line in place of tqdm's own: step / max steps,
//! samples/s, ETA, GPU memory against the prediction. The log keeps every byte either way.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::log::Stream;

/// One tqdm update, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    /// tqdm's rate (iterations per second), when it has one.
    pub it_per_s: Option<f64>,
    pub elapsed_s: Option<u64>,
    pub eta_s: Option<u64>,
}

/// `MM:SS`, `H:MM:SS` or `D days, H:MM:SS`-less forms tqdm prints; `?` is unknown.
fn parse_clock(s: &str) -> Option<u64> {
    let mut total = 0u64;
    for part in s.trim().split(':') {
        total = total.checked_mul(60)?.checked_add(part.parse().ok()?)?;
    }
    Some(total)
}

/// A tqdm line (`desc:  5%|▌    | 5/100 [00:10<03:10,  2.00it/s, loss=1]`), or None.
pub fn parse_tqdm(line: &str) -> Option<Progress> {
    let bar_end = line.rfind('|')?;
    let rest = line[bar_end + 1..].trim_start();
    let (counts, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (n, total) = counts.split_once('/')?;
    let (step, total) = (n.trim().parse().ok()?, total.trim().parse().ok()?);
    let mut p = Progress {
        step,
        total,
        it_per_s: None,
        elapsed_s: None,
        eta_s: None,
    };
    let inner = rest
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'));
    if let Some(inner) = inner {
        let (times, rate) = inner.split_once(',').unwrap_or((inner, ""));
        if let Some((el, eta)) = times.split_once('<') {
            p.elapsed_s = parse_clock(el);
            p.eta_s = parse_clock(eta);
        }
        let rate = rate.split(',').next().unwrap_or("").trim();
        p.it_per_s = if let Some(v) = rate.strip_suffix("it/s") {
            v.trim().parse().ok()
        } else if let Some(v) = rate.strip_suffix("s/it") {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0)
                .map(|v| 1.0 / v)
        } else {
            None
        };
    } else if !rest.trim().is_empty() {
        return None;
    }
    Some(p)
}

/// What the status line shows besides tqdm's numbers.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Samples one tqdm iteration stands for (the micro-batch x GPUs x nodes).
    pub samples_per_it: f64,
    pub predicted_peak_bytes: u64,
    /// The largest GPU memory in use now (the VRAM monitor's latest sample), 0 when unknown.
    pub gpu_used_bytes: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct State {
    /// The unterminated end of each stream's output.
    tails: [Vec<u8>; 2],
    last: Option<Progress>,
    /// The status line is on the terminal now.
    shown: bool,
    /// The terminal's cursor is at the start of a line (after what the script printed).
    at_line_start: bool,
}

/// Shared by the relay (which feeds it every chunk) and the terminal writers.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    /// Some: a terminal that shows the status line.
    terminal: Option<StatusConfig>,
}

const MAX_TAIL: usize = 4096;

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Out => 0,
        _ => 1,
    }
}

impl Tracker {
    pub fn new(terminal: Option<StatusConfig>) -> Arc<Tracker> {
        Arc::new(Tracker {
            state: Mutex::new(State {
                at_line_start: true,
                ..State::default()
            }),
            terminal,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads tqdm updates out of a chunk of the script's output.
    pub fn feed(&self, stream: Stream, chunk: &[u8]) {
        let mut st = self.lock();
        let mut last = st.last;
        let tail = &mut st.tails[index(stream)];
        tail.extend_from_slice(chunk);
        let mut start = 0;
        for (i, &b) in tail.iter().enumerate() {
            if b == b'\r' || b == b'\n' {
                if let Some(p) = parse_tqdm(&String::from_utf8_lossy(&tail[start..i])) {
                    last = Some(p);
                }
                start = i + 1;
            }
        }
        tail.drain(..start);
        // An update not yet ended by the next `\r` is complete once it closes its `]`.
        if tail.ends_with(b"]")
            && let Some(p) = parse_tqdm(&String::from_utf8_lossy(tail))
        {
            last = Some(p);
        }
        if tail.len() > MAX_TAIL {
            tail.clear();
        }
        st.last = last;
    }

    /// The last tqdm update seen.
    pub fn last(&self) -> Option<Progress> {
        self.lock().last
    }

    pub fn shows_status(&self) -> bool {
        self.terminal.is_some()
    }

    /// Writes a chunk of the script's output to the terminal (`out`), tqdm's own updates left
    /// out, then redraws the status line on stderr below it.
    pub fn write_terminal(&self, out: &mut dyn Write, chunk: &[u8]) -> std::io::Result<()> {
        let Some(cfg) = &self.terminal else {
            return out.write_all(chunk).and_then(|()| out.flush());
        };
        let shown = without_tqdm(chunk);
        let mut st = self.lock();
        let mut err = std::io::stderr().lock();
        if !shown.is_empty() {
            if st.shown {
                err.write_all(b"\r\x1b[2K")?;
                err.flush()?;
                st.shown = false;
            }
            out.write_all(&shown)?;
            out.flush()?;
            st.at_line_start = shown.ends_with(b"\n");
        }
        if st.at_line_start
            && let Some(p) = st.last
        {
            let line = status_line(&p, cfg);
            err.write_all(format!("\r\x1b[2K{line}").as_bytes())?;
            err.flush()?;
            st.shown = true;
        }
        Ok(())
    }

    /// Takes the status line off the terminal (the run is over).
    pub fn clear_terminal(&self) {
        let mut st = self.lock();
        if st.shown {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K").and_then(|()| err.flush());
            st.shown = false;
        }
    }
}

/// `chunk` without the tqdm updates in it: each update (a tqdm line) goes, with the `\r` that
/// introduced it and the `\n` that ended the last one; everything else stays byte for byte.
fn without_tqdm(chunk: &[u8]) -> Vec<u8> {
    // (text, the `\r` or `\n` after it if any)
    let mut pieces: Vec<(&[u8], Option<u8>)> = Vec::new();
    let mut start = 0;
    for (i, &b) in chunk.iter().enumerate() {
        if b == b'\r' || b == b'\n' {
            pieces.push((&chunk[start..i], Some(b)));
            start = i + 1;
        }
    }
    if start < chunk.len() {
        pieces.push((&chunk[start..], None));
    }
    let is_tqdm = |t: &[u8]| parse_tqdm(&String::from_utf8_lossy(t)).is_some();
    let mut out = Vec::with_capacity(chunk.len());
    for (k, (text, delim)) in pieces.iter().enumerate() {
        if is_tqdm(text) {
            continue;
        }
        let next_is_tqdm = pieces.get(k + 1).is_some_and(|(t, _)| is_tqdm(t));
        out.extend_from_slice(text);
        match delim {
            Some(b'\r') if text.is_empty() && next_is_tqdm => {}
            Some(d) => out.push(*d),
            None => {}
        }
    }
    out
}

fn fmt_eta(s: u64) -> String {
    if s >= 86400 {
        format!("{}d{:02}h", s / 86400, s % 86400 / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `vla-launch: step 40/100 (40%) | 12.8 samples/s | ETA 3m05s | GPU 61.2 of 69.1 GiB predicted`
pub fn status_line(p: &Progress, cfg: &StatusConfig) -> String {
    let mut parts = vec![format!(
        "step {}/{} ({:.0}%)",
        p.step,
        p.total,
        p.step as f64 * 100.0 / p.total.max(1) as f64
    )];
    if let Some(r) = p.it_per_s {
        parts.push(format!("{:.1} samples/s", r * cfg.samples_per_it));
    }
    if let Some(eta) = p.eta_s {
        parts.push(format!("ETA {}", fmt_eta(eta)));
    }
    let used = cfg.gpu_used_bytes.load(Ordering::Relaxed);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    parts.push(if used > 0 {
        format!(
            "GPU {:.1} of {:.1} GiB predicted",
            gib(used),
            gib(cfg.predicted_peak_bytes)
        )
    } else {
        format!("GPU {:.1} GiB predicted", gib(cfg.predicted_peak_bytes))
    });
    format!("vla-launch: {}", parts.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tqdm_lines() {
        let p = parse_tqdm(" 40%|████      | 40/100 [00:10<00:15,  3.98it/s, loss=0.1]").unwrap();
        assert_eq!(
            (p.step, p.total, p.elapsed_s, p.eta_s),
            (40, 100, Some(10), Some(15))
        );
        assert!((p.it_per_s.unwrap() - 3.98).abs() < 1e-9);
        let slow = parse_tqdm("Train:  1%|| 5/500 [1:00:00<99:00:00, 12.50s/it]").unwrap();
        assert_eq!(slow.eta_s, Some(99 * 3600));
        assert!((slow.it_per_s.unwrap() - 0.08).abs() < 1e-9);
        let start = parse_tqdm("  0%|          | 0/100 [00:00<?, ?it/s]").unwrap();
        assert_eq!((start.eta_s, start.it_per_s), (None, None));
        assert_eq!(parse_tqdm("loss | 0.5"), None);
        assert_eq!(parse_tqdm("a | 3/4 words"), None);
    }

    #[test]
    fn feeds_across_chunks_and_leaves_tqdm_out_of_the_terminal() {
        let t = Tracker::new(None);
        t.feed(Stream::Err, b"hello\n\r 10%|#| 10/100 [00:01<00:09, 10.0");
        assert_eq!(t.last(), None);
        t.feed(
            Stream::Err,
            b"0it/s]\r 20%|#| 20/100 [00:02<00:08, 10.00it/s]",
        );
        assert_eq!(t.last().unwrap().step, 20);
        assert_eq!(
            without_tqdm(b"hello\n\r 10%|#| 10/100 [00:01<00:09, 10.00it/s]\r 20%|#| 20/100 [00:02<00:08, 10.00it/s]\nbye\n"),
            b"hello\nbye\n"
        );
        assert_eq!(without_tqdm(b"plain\rprogress\n"), b"plain\rprogress\n");
    }
}
