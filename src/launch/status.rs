//! The training's progress, read from the script's tqdm output: kept for the run record, and
//! (on a terminal) shown as one status line in place of tqdm's own: step / max steps,
//! samples/s, ETA, GPU memory against the prediction. The log keeps every byte either way.
//!
//! The line is an indicatif progress bar (its message only), drawn on stderr at most
//! [`REDRAWS_PER_S`] times a second and never wider than the terminal, as wide as it is now:
//! parts are left out, the least useful first, until the line fits. Everything else that
//! reaches the terminal during the run goes around it: the script's output and the launcher's
//! own messages (`term::set_interlude`) take it off, are written from the start of a line, and
//! put it back. While the script's output ends mid-line (`Loading...` before its `done`) the
//! line stays off, so it neither overwrites nor splits that line. It is gone after the run.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use super::log::Stream;
use super::term;

/// The most times a second the status line is redrawn for progress alone.
pub const REDRAWS_PER_S: u8 = 4;

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
    /// The progress the status line shows now.
    drawn: Option<Progress>,
    /// The terminal's cursor is at the start of a line (after what the script printed).
    at_line_start: bool,
}

/// Shared by the relay (which feeds it every chunk) and the terminal writers.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    /// Some: a terminal that shows the status line.
    terminal: Option<StatusConfig>,
    /// The status line; only with `terminal`.
    bar: Option<ProgressBar>,
    /// Whether the status line may be on the terminal now (see `StatusTerm`).
    visible: Arc<AtomicBool>,
    /// Set while the script's output is written: indicatif redraws the line right after it,
    /// which is left to the next rate-limited redraw instead (see `write_terminal`).
    quiet: Arc<AtomicBool>,
    /// What the status line's terminal holds (shared with `StatusTerm`).
    screen: Arc<Mutex<Screen>>,
}

const MAX_TAIL: usize = 4096;

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Out => 0,
        _ => 1,
    }
}

/// A tqdm update in raw output, or None (most lines have no `|` and are passed over at once).
fn parse_piece(piece: &[u8]) -> Option<Progress> {
    memchr::memchr(b'|', piece)?;
    parse_tqdm(&String::from_utf8_lossy(piece))
}

impl Tracker {
    pub fn new(terminal: Option<StatusConfig>) -> Arc<Tracker> {
        let visible = Arc::new(AtomicBool::new(false));
        let quiet = Arc::new(AtomicBool::new(false));
        let screen = Arc::new(Mutex::new(Screen::default()));
        let bar = terminal.as_ref().map(|_| {
            let target = ProgressDrawTarget::term_like_with_hz(
                Box::new(StatusTerm {
                    visible: visible.clone(),
                    quiet: quiet.clone(),
                    screen: screen.clone(),
                }),
                REDRAWS_PER_S,
            );
            let bar = ProgressBar::with_draw_target(None, target)
                .with_style(ProgressStyle::with_template("{wide_msg}").expect("a valid template"));
            // Brings the line back after the script's output took it off (at the rate's pace).
            bar.enable_steady_tick(std::time::Duration::from_millis(
                1000 / u64::from(REDRAWS_PER_S),
            ));
            bar
        });
        let tracker = Arc::new(Tracker {
            state: Mutex::new(State {
                at_line_start: true,
                ..State::default()
            }),
            terminal,
            bar,
            visible,
            quiet,
            screen,
        });
        if tracker.bar.is_some() {
            // The launcher's own messages during the run go around the status line.
            let weak: Weak<Tracker> = Arc::downgrade(&tracker);
            term::set_interlude(Some(Arc::new(move |ends_line, write| {
                match weak.upgrade() {
                    Some(t) => t.around(ends_line, write),
                    None => write(),
                }
            })));
        }
        tracker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads tqdm updates out of a chunk of the script's output.
    pub fn feed(&self, stream: Stream, chunk: &[u8]) {
        let mut st = self.lock();
        let mut last = st.last;
        let tail = &mut st.tails[index(stream)];
        // Most output has no `|` at all: then only the unterminated end is kept (one pass over
        // the chunk instead of one per line; this runs on every byte of a flood).
        if memchr::memchr(b'|', chunk).is_none() && memchr::memchr(b'|', tail).is_none() {
            let end = memchr::memrchr2(b'\r', b'\n', chunk).map_or(0, |i| i + 1);
            if end > 0 {
                tail.clear();
            }
            let rest = &chunk[end..];
            if tail.len() + rest.len() > MAX_TAIL {
                tail.clear();
            } else {
                tail.extend_from_slice(rest);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = memchr::memchr2(b'\r', b'\n', rest) {
            let found = if tail.is_empty() {
                parse_piece(&rest[..end])
            } else {
                tail.extend_from_slice(&rest[..end]);
                let found = parse_piece(tail);
                tail.clear();
                found
            };
            last = found.or(last);
            rest = &rest[end + 1..];
        }
        if tail.len() + rest.len() > MAX_TAIL {
            tail.clear();
        } else {
            tail.extend_from_slice(rest);
            // An update not yet ended by the next `\r` is complete once it closes its `]`.
            if tail.ends_with(b"]") {
                last = parse_piece(tail).or(last);
            }
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
    /// out, with the status line taken off around it; then brings the status line up to date.
    pub fn write_terminal(&self, out: &mut dyn Write, chunk: &[u8]) -> std::io::Result<()> {
        let Some(bar) = &self.bar else {
            return out.write_all(chunk).and_then(|()| out.flush());
        };
        let shown = without_tqdm(chunk);
        let mut result = Ok(());
        if !shown.is_empty() {
            // Most lines come while the status line is off the terminal (it is redrawn a few
            // times a second): they are written at once, without indicatif.
            let screen = lock_screen(&self.screen);
            if !screen.on_screen && screen.pending.is_empty() {
                result = out.write_all(&shown).and_then(|()| out.flush());
                let mut st = self.lock();
                st.at_line_start = shown.ends_with(b"\n");
                self.set_visible(&st);
                drop(st);
                drop(screen);
                self.update();
                return result;
            }
            drop(screen);
            // The line is cleared (if it is on the terminal), the output written, and the
            // redraw indicatif makes at once is dropped: a line a script prints 100 times a
            // second then costs one write, and the status line is back within a redraw period.
            bar.suspend(|| {
                self.quiet.store(true, Ordering::Relaxed);
                result = out.write_all(&shown).and_then(|()| out.flush());
                let mut st = self.lock();
                st.at_line_start = shown.ends_with(b"\n");
                self.set_visible(&st);
            });
            self.quiet.store(false, Ordering::Relaxed);
        }
        self.update();
        result
    }

    /// The launcher's own message (`write`), written from the start of a line with the status
    /// line off; `ends_line`: the message ends with a newline.
    fn around(&self, ends_line: bool, write: &mut dyn FnMut()) {
        let Some(bar) = &self.bar else {
            return write();
        };
        bar.suspend(|| {
            let mut st = self.lock();
            if !st.at_line_start {
                let _ = std::io::stderr().write_all(b"\n");
            }
            write();
            st.at_line_start = ends_line;
            self.set_visible(&st);
        });
    }

    fn set_visible(&self, st: &State) {
        self.visible
            .store(st.at_line_start && st.drawn.is_some(), Ordering::Relaxed);
    }

    /// Shows the latest progress (drawn now, or at the next redraw the rate allows).
    fn update(&self) {
        let (Some(bar), Some(cfg)) = (&self.bar, &self.terminal) else {
            return;
        };
        let line = {
            let mut st = self.lock();
            let Some(p) = st.last.filter(|p| st.drawn != Some(*p)) else {
                return;
            };
            st.drawn = Some(p);
            self.set_visible(&st);
            status_line(&p, cfg, status_width(terminal_width()))
        };
        bar.set_message(line);
    }

    /// Takes the status line off the terminal for good (the run is over).
    pub fn clear_terminal(&self) {
        if let Some(bar) = &self.bar {
            term::set_interlude(None);
            bar.finish_and_clear();
        }
    }
}

/// The terminal's width in columns (stderr's; 80 when it has none).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize we pass; nothing else is touched.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// The status line's widest: one column short of the terminal, so that the cursor never stands
/// past the last column (where some terminals wrap at once).
fn status_width(columns: usize) -> usize {
    columns.saturating_sub(1).max(1)
}

/// indicatif's terminal for the status line: stderr, written in one piece per redraw (at
/// `flush`), and nothing at all while the status line must stay off (`visible` false: the
/// script's output ends mid-line, or there is no progress yet), so that neither its drawing
/// nor its clearing touches a line the script has not finished.
/// It also knows whether the line is on the terminal now, so that clearing a line that is not
/// there writes nothing, and so that script output can skip indicatif while it is not.
#[derive(Debug)]
struct StatusTerm {
    visible: Arc<AtomicBool>,
    quiet: Arc<AtomicBool>,
    screen: Arc<Mutex<Screen>>,
}

#[derive(Debug, Default)]
struct Screen {
    /// A redraw being assembled (written at `flush`, under the same lock).
    pending: Vec<u8>,
    on_screen: bool,
}

fn lock_screen(screen: &Mutex<Screen>) -> std::sync::MutexGuard<'_, Screen> {
    screen.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusTerm {
    fn push(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut screen = lock_screen(&self.screen);
        if self.visible.load(Ordering::Relaxed) && !self.quiet.load(Ordering::Relaxed) {
            screen.pending.extend_from_slice(bytes);
            screen.on_screen = true;
        }
        Ok(())
    }
}

impl TermLike for StatusTerm {
    fn width(&self) -> u16 {
        status_width(terminal_width())
            .try_into()
            .unwrap_or(u16::MAX)
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        match n {
            0 => Ok(()),
            n => self.push(format!("\x1b[{n}A").as_bytes()),
        }
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        match n {
            0 => Ok(()),
            n => self.push(format!("\x1b[{n}B").as_bytes()),
        }
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        match n {
            0 => Ok(()),
            n => self.push(format!("\x1b[{n}C").as_bytes()),
        }
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        match n {
            0 => Ok(()),
            n => self.push(format!("\x1b[{n}D").as_bytes()),
        }
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.push(s.as_bytes())?;
        self.push(b"\n")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.push(s.as_bytes())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        let mut screen = lock_screen(&self.screen);
        if screen.on_screen {
            screen.on_screen = false;
            screen.pending.extend_from_slice(b"\r\x1b[2K");
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        // Written under the lock: script output written meanwhile would come between.
        let mut screen = lock_screen(&self.screen);
        if !screen.pending.is_empty() {
            // A closed terminal must not stop anything: the write is dropped.
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&screen.pending).and_then(|()| err.flush());
            screen.pending.clear();
        }
        Ok(())
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

/// `vla-launch: step 40/100 (40%) | 12.8 samples/s | ETA 3m05s | GPU 61.2 of 69.1 GiB predicted`,
/// at most `width` characters: parts are left out until it fits (the GPU memory first, then the
/// rate, then the ETA); the step alone is cut if even it is too wide.
pub fn status_line(p: &Progress, cfg: &StatusConfig, width: usize) -> String {
    let step = format!(
        "step {}/{} ({:.0}%)",
        p.step,
        p.total,
        p.step as f64 * 100.0 / p.total.max(1) as f64
    );
    let rate = p
        .it_per_s
        .map(|r| format!("{:.1} samples/s", r * cfg.samples_per_it));
    let eta = p.eta_s.map(|eta| format!("ETA {}", fmt_eta(eta)));
    let used = cfg.gpu_used_bytes.load(Ordering::Relaxed);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let gpu = Some(if used > 0 {
        format!(
            "GPU {:.1} of {:.1} GiB predicted",
            gib(used),
            gib(cfg.predicted_peak_bytes)
        )
    } else {
        format!("GPU {:.1} GiB predicted", gib(cfg.predicted_peak_bytes))
    });
    // In the order shown; each option is kept while the line fits, from the most useful.
    let mut parts = [Some(step), rate, eta, gpu];
    let line = |parts: &[Option<String>]| {
        let shown: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
        format!("vla-launch: {}", shown.join(" | "))
    };
    for drop in [3, 1, 2] {
        if line(&parts).chars().count() <= width {
            break;
        }
        parts[drop] = None;
    }
    line(&parts).chars().take(width).collect()
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

    #[test]
    fn status_line_fits_the_width_leaving_out_the_least_useful_parts() {
        let p = parse_tqdm(" 0%|  | 92/100005 [00:10<2:46:00,  9.97it/s]").unwrap();
        let cfg = StatusConfig {
            samples_per_it: 16.0,
            predicted_peak_bytes: 69 << 30,
            gpu_used_bytes: Arc::new(AtomicU64::new(61 << 30)),
        };
        let full = "vla-launch: step 92/100005 (0%) | 159.5 samples/s | ETA 2h46m | GPU 61.0 of 69.0 GiB predicted";
        let cases = [
            (200, full),
            (full.len(), full),
            (
                full.len() - 1,
                "vla-launch: step 92/100005 (0%) | 159.5 samples/s | ETA 2h46m",
            ),
            (59, "vla-launch: step 92/100005 (0%) | ETA 2h46m"),
            (42, "vla-launch: step 92/100005 (0%)"),
            (20, "vla-launch: step 92/"),
        ];
        for (width, want) in cases {
            let line = status_line(&p, &cfg, width);
            assert_eq!(line, want, "width {width}");
            assert!(line.chars().count() <= width);
        }
    }
}
