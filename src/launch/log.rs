//! The run's log file: every byte of torchrun's stdout and stderr, one record per line with a
//! UTC timestamp and the stream (stated once per read: its later lines continue the first).
//!
//! Record format (one file line each; format 2, since issue 27):
//! `2026-11-27T08:50:01.123Z out |payload`  payload ends with `\n`, or with `\r` (a `\n` is
//!                                          added after it so the file stays line-oriented)
//! `+|payload`                              a continuation: the next line of the same read as
//!                                          the record above, so the same time and stream
//!                                          (written for the second and later lines of a read)
//! `2026-11-27T08:50:01.123Z out~|payload`  a piece cut without terminator (long line or end of
//!                                          stream); the `\n` after it is not part of the stream
//! `2026-11-27T08:50:01.123Z --- |message`  the launcher's own notes (signals sent, exit)
//! Concatenating the payloads of one stream gives back its bytes exactly (`parse_stream`).
//!
//! Format 1 (before issue 27) is format 2 without continuations: every line had the full
//! prefix. A record always starts with its timestamp's digit, so `+|` cannot be mistaken for
//! one, and readers of format 2 (`parse_stream`, [`Expand`], `vla-launch logs`) read format 1
//! logs unchanged. The continuation keeps a flood's log near the size of the stream (30 bytes
//! of prefix on every 80-byte line made it 37% larger, and writing it the larger part of the
//! launcher's cost); a script that prints a line now and then gets one read, so one full
//! record, per line, as before.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest piece kept waiting for a terminator before it is written as a cut record.
const MAX_PENDING: usize = 64 * 1024;
const PREFIX_LEN: usize = 24 + 1 + 4 + 1;
/// The start of a continuation record (format 2): same time and stream as the record above.
pub const CONTINUATION: &[u8] = b"+|";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    fn tag(self, cut: bool) -> &'static str {
        match (self, cut) {
            (Stream::Out, false) => "out |",
            (Stream::Out, true) => "out~|",
            (Stream::Err, false) => "err |",
            (Stream::Err, true) => "err~|",
        }
    }
}

/// The log file. The relay tasks hand it each chunk they read and the supervisor its notes, in
/// the order they happen; each is split into timestamped records and written at once, by the
/// caller, with one `write` per chunk. A chunk is one read of the pipe: one line when the
/// script prints a line now and then, up to the relay's read size in a flood, so the writes
/// are as large as the reads and no other thread has to be woken per line (a log thread cost
/// two futex calls and a context switch per line, the larger part of the launcher's own CPU
/// time during a run).
pub struct LogWriter {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Clone)]
pub struct LogSender(Arc<Mutex<Shared>>);

struct Shared {
    records: Records,
    file: File,
    shown: String,
    /// The first write error (a full disk): writing stops, with one warning; see `write_out`.
    result: io::Result<()>,
    /// After `finish`, later output (an aborted relay) is dropped.
    finished: bool,
}

impl Shared {
    /// Writes the assembled records. The first write error stops writing, once, with a warning
    /// on stderr: the terminal keeps getting the output, and the error is returned at the end,
    /// for the outcome; it never fails the run.
    fn write_out(&mut self) {
        if self.result.is_ok() && !self.records.batch.is_empty() {
            self.result = self.file.write_all(&self.records.batch);
            if let Err(e) = &self.result {
                tracing::warn!(
                    "cannot write the run log {}: {e}; the training goes on and its output \
                     still reaches the terminal, but the log is incomplete from here (free space \
                     there, or choose another --log-dir next time)",
                    self.shown
                );
            }
        }
        self.records.batch.clear();
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.records.cut(Stream::Out);
        self.records.cut(Stream::Err);
        self.write_out();
        std::mem::replace(&mut self.result, Ok(())).and_then(|()| self.file.flush())
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogSender {
    /// A chunk of the child's output, in arrival order.
    pub fn chunk(&self, stream: Stream, bytes: &[u8]) {
        let mut shared = lock(&self.0);
        if !shared.finished {
            shared.records.chunk(stream, bytes);
            shared.write_out();
        }
    }
    /// The launcher's own note.
    pub fn note(&self, text: impl AsRef<str>) {
        let mut shared = lock(&self.0);
        if !shared.finished {
            shared.records.note(text.as_ref());
            shared.write_out();
        }
    }
}

impl LogWriter {
    pub fn create(path: &Path) -> io::Result<LogWriter> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // Unbuffered: every write is a whole chunk's records already.
        let file = File::create(path)?;
        Ok(LogWriter {
            shared: Arc::new(Mutex::new(Shared {
                records: Records::new(),
                file,
                shown: path.display().to_string(),
                result: Ok(()),
                finished: false,
            })),
        })
    }

    pub fn sender(&self) -> LogSender {
        LogSender(self.shared.clone())
    }

    /// Writes the pieces still waiting for a terminator (as cut records) and reports the first
    /// write error. Senders still alive (an aborted relay task) can no longer reach the file
    /// afterwards.
    pub fn finish(self) -> io::Result<()> {
        lock(&self.shared).finish()
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Not finished (an error path): write what there is.
        let _ = lock(&self.shared).finish();
    }
}

struct Pending {
    bytes: Vec<u8>,
    stamp: [u8; 24],
}

/// Splits chunks into records, appended to `batch`.
struct Records {
    clock: Clock,
    pending: [Option<Pending>; 2],
    batch: Vec<u8>,
}

impl Records {
    fn new() -> Self {
        Records {
            clock: Clock::default(),
            pending: [None, None],
            batch: Vec::new(),
        }
    }

    fn chunk(&mut self, stream: Stream, mut bytes: &[u8]) {
        let slot = stream as usize;
        // Every line of one chunk arrived with the same read: one clock reading serves them all,
        // written once; the chunk's later lines are continuations.
        let stamp = self.clock.now();
        let mut stamped = false;
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            let (line, rest) = bytes.split_at(end + 1);
            bytes = rest;
            match self.pending[slot].take() {
                Some(mut p) => {
                    p.bytes.extend_from_slice(line);
                    push_record(&mut self.batch, &p.stamp, stream.tag(false), &p.bytes);
                }
                None if stamped => push_continuation(&mut self.batch, line),
                None => {
                    push_record(&mut self.batch, &stamp, stream.tag(false), line);
                    stamped = true;
                }
            }
        }
        if !bytes.is_empty() {
            let p = self.pending[slot].get_or_insert_with(|| Pending {
                bytes: Vec::new(),
                stamp,
            });
            p.bytes.extend_from_slice(bytes);
            if p.bytes.len() >= MAX_PENDING {
                let p = self.pending[slot].take().expect("just filled");
                push_record(&mut self.batch, &p.stamp, stream.tag(true), &p.bytes);
            }
        }
    }

    fn cut(&mut self, stream: Stream) {
        if let Some(p) = self.pending[stream as usize].take() {
            push_record(&mut self.batch, &p.stamp, stream.tag(true), &p.bytes);
        }
    }

    fn note(&mut self, text: &str) {
        let stamp = self.clock.now();
        for line in text.lines() {
            push_record(&mut self.batch, &stamp, "--- |", line.as_bytes());
        }
    }
}

/// One `--- |` record for `text` (every line of it), stamped now: for a writer that appends to
/// a log its `LogWriter` no longer writes (the watchdog, after the launcher died).
pub fn note_record(text: &str) -> Vec<u8> {
    let mut r = Records::new();
    r.note(text);
    std::mem::take(&mut r.batch)
}

fn push_record(buf: &mut Vec<u8>, stamp: &[u8; 24], tag: &str, payload: &[u8]) {
    buf.extend_from_slice(stamp);
    buf.push(b' ');
    buf.extend_from_slice(tag.as_bytes());
    push_payload(buf, payload);
}

fn push_continuation(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(CONTINUATION);
    push_payload(buf, payload);
}

fn push_payload(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(payload);
    if payload.last() != Some(&b'\n') {
        buf.push(b'\n');
    }
}

/// Formats the wall clock once per millisecond at most (a log line per tqdm update is common).
#[derive(Default)]
struct Clock {
    last_ms: u128,
    text: [u8; 24],
}

impl Clock {
    fn now(&mut self) -> [u8; 24] {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if ms != self.last_ms || self.text[0] == 0 {
            self.last_ms = ms;
            self.text = format_utc_millis(ms);
        }
        self.text
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch (proleptic Gregorian).
fn format_utc_millis(ms: u128) -> [u8; 24] {
    let s = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    let mut out = [b'?'; 24];
    let n = s.len().min(24);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Rebuilds the exact bytes of one stream from a log file's contents (format 1 or 2; for tests
/// and tools).
pub fn parse_stream(log: &[u8], stream: Stream) -> Vec<u8> {
    let (whole, cut) = (stream.tag(false).as_bytes(), stream.tag(true).as_bytes());
    let mut out = Vec::new();
    // Whether the record above belongs to `stream` (a continuation's stream is its).
    let mut ours = false;
    for line in log.split_inclusive(|&b| b == b'\n') {
        let payload = if let Some(payload) = line.strip_prefix(CONTINUATION) {
            if !ours {
                continue;
            }
            payload
        } else if line.len() < PREFIX_LEN {
            ours = false;
            continue;
        } else {
            let (tag, payload) = line[25..].split_at(5);
            ours = tag == whole;
            if tag == cut {
                out.extend_from_slice(&payload[..payload.len() - 1]);
            }
            if !ours {
                continue;
            }
            payload
        };
        // A `\r` record carries an added `\n`; a `\n` record's `\n` is its own.
        let own_cr = payload.len() >= 2 && payload[payload.len() - 2] == b'\r';
        out.extend_from_slice(if own_cr {
            &payload[..payload.len() - 1]
        } else {
            payload
        });
    }
    out
}

/// The training's output in a log (format 1 or 2), both streams in the order they were logged, each
/// line without the log's own prefix (timestamp and stream, or the continuation mark), the
/// launcher's notes left out: what the training printed, as the diagnosis reads it (torchrun's
/// `[rankN]:` prefixes and "Root Cause" summary start its lines). `log` may start mid-record (a
/// tail): a first line that is not a record is skipped.
pub fn training_output(log: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len());
    // Whether the record above is the training's (a continuation belongs to it).
    let mut training = false;
    for line in log.split_inclusive(|&b| b == b'\n') {
        if let Some(payload) = line.strip_prefix(CONTINUATION) {
            if training {
                out.extend_from_slice(payload);
            }
        } else if is_record(line) {
            training = &line[25..28] != b"---";
            if training {
                out.extend_from_slice(&line[PREFIX_LEN..]);
            }
        } else {
            training = false;
        }
    }
    out
}

/// Whether `line` starts with a record's full prefix (timestamp, stream, `|`).
fn is_record(line: &[u8]) -> bool {
    line.len() >= PREFIX_LEN && line[23] == b'Z' && line[29] == b'|'
}

/// Gives every continuation line of a log (format 2) the prefix of the record it continues,
/// line by line, so that it reads as format 1 (`vla-launch logs` shows records this way).
#[derive(Debug, Default)]
pub struct Expand {
    prefix: Vec<u8>,
}

impl Expand {
    /// One line of the log (its `\n` included, or the unterminated end), with its full prefix.
    pub fn line(&mut self, line: Vec<u8>) -> Vec<u8> {
        match line.strip_prefix(CONTINUATION) {
            Some(payload) if !self.prefix.is_empty() => {
                let mut full = Vec::with_capacity(self.prefix.len() + payload.len());
                full.extend_from_slice(&self.prefix);
                full.extend_from_slice(payload);
                full
            }
            Some(_) => line,
            None => {
                self.prefix.clear();
                // A record of the stream (whole): a continuation may follow it.
                if is_record(&line) {
                    self.prefix.extend_from_slice(&line[..PREFIX_LEN]);
                }
                line
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_bytes(chunks: &[(Stream, &[u8])]) -> Vec<u8> {
        let mut r = Records::new();
        for (s, c) in chunks {
            r.chunk(*s, c);
        }
        r.note("a note\nover two lines");
        r.cut(Stream::Out);
        r.cut(Stream::Err);
        r.batch
    }

    #[test]
    fn streams_round_trip_exactly() {
        let long = vec![b'x'; MAX_PENDING + 10];
        let cases: Vec<Vec<(Stream, &[u8])>> = vec![
            vec![(Stream::Out, b"hello\nworld\n")],
            vec![
                (Stream::Out, b" 10%|#\r 20%|##\r"),
                (Stream::Out, b"\r\n done\n"),
            ],
            vec![
                (Stream::Out, b"par"),
                (Stream::Err, b"error line\n"),
                (Stream::Out, b"tial\n"),
            ],
            vec![(Stream::Err, b"no terminator at the end")],
            vec![(Stream::Out, &long), (Stream::Out, b"end\n")],
            vec![(Stream::Out, b"\n\n\r\r"), (Stream::Err, b"\r")],
            vec![(Stream::Out, b"bin\x00\xff\xfe\n")],
        ];
        for (i, chunks) in cases.iter().enumerate() {
            let log = render_bytes(chunks);
            for stream in [Stream::Out, Stream::Err] {
                let want: Vec<u8> = chunks
                    .iter()
                    .filter(|(s, _)| *s == stream)
                    .flat_map(|(_, c)| c.iter().copied())
                    .collect();
                assert_eq!(parse_stream(&log, stream), want, "case {i} {stream:?}");
            }
            for line in log.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                assert!(
                    line.starts_with(CONTINUATION)
                        || (line.len() >= PREFIX_LEN && line[23] == b'Z'),
                    "case {i}: {line:?}"
                );
            }
        }
    }

    #[test]
    fn every_terminator_starts_a_record_and_a_reads_later_ones_continue_its_first() {
        let log = render_bytes(&[(Stream::Out, b" 1%\r 2%\r 3%\n"), (Stream::Err, b"warn\n")]);
        let text = String::from_utf8(log).unwrap();
        let records: Vec<&str> = text
            .split_terminator('\n')
            .map(|l| if l.starts_with("+|") { l } else { &l[25..] })
            .collect();
        assert_eq!(
            records,
            [
                "out | 1%\r",
                "+| 2%\r",
                "+| 3%",
                "err |warn",
                "--- |a note",
                "--- |over two lines"
            ]
        );
    }

    /// Issue 27: 30 bytes of prefix on every 80-byte line of a flood made the log 37% larger
    /// than the stream, and writing it the larger part of the relay's cost.
    #[test]
    fn a_flood_of_short_lines_costs_little_more_than_its_bytes() {
        let chunk: Vec<u8> = (0..3276)
            .flat_map(|i| format!("{i:08} {}\n", "x".repeat(70)).into_bytes())
            .collect();
        let mut r = Records::new();
        for _ in 0..4 {
            r.chunk(Stream::Out, &chunk);
        }
        let log = std::mem::take(&mut r.batch);
        assert!(
            log.len() * 100 <= 4 * chunk.len() * 103,
            "log {} bytes for {} bytes of stream",
            log.len(),
            4 * chunk.len()
        );
        assert_eq!(parse_stream(&log, Stream::Out), chunk.repeat(4));
    }

    /// A log written before continuations (format 1) reads as it always did.
    #[test]
    fn format_1_logs_read_the_same() {
        let v1 = b"2026-11-27T08:50:01.123Z out | 1%\r\n2026-11-27T08:50:01.123Z out | 2%\n\
2026-11-27T08:50:01.124Z err |e\n2026-11-27T08:50:01.125Z --- |note\n\
2026-11-27T08:50:01.126Z out~|cut\n";
        assert_eq!(parse_stream(v1, Stream::Out), b" 1%\r 2%\ncut");
        assert_eq!(parse_stream(v1, Stream::Err), b"e\n");
        let mut e = Expand::default();
        for line in v1.split_inclusive(|&b| b == b'\n') {
            assert_eq!(e.line(line.to_vec()), line);
        }
    }

    #[test]
    fn expand_gives_a_continuation_the_prefix_of_its_record() {
        let log = render_bytes(&[(Stream::Out, b"a\nb\rc\n"), (Stream::Err, b"d\ne\n")]);
        let mut e = Expand::default();
        let lines: Vec<Vec<u8>> = log
            .split_inclusive(|&b| b == b'\n')
            .map(|l| e.line(l.to_vec()))
            .collect();
        let tails: Vec<&[u8]> = lines.iter().map(|l| &l[25..]).collect();
        assert_eq!(
            tails,
            [
                &b"out |a\n"[..],
                b"out |b\r\n",
                b"out |c\n",
                b"err |d\n",
                b"err |e\n",
                b"--- |a note\n",
                b"--- |over two lines\n"
            ]
        );
        assert!(lines.iter().all(|l| l[23] == b'Z'));
        // What the expanded lines hold is format 1: the streams read the same from them.
        let v1 = lines.concat();
        for s in [Stream::Out, Stream::Err] {
            assert_eq!(parse_stream(&v1, s), parse_stream(&log, s));
        }
    }

    #[test]
    fn civil_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_768_201_999, "2026-11-27T08:30:01.999Z"),
            (4_107_542_399_000, "2100-02-28T23:59:59.000Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(std::str::from_utf8(&format_utc_millis(ms)).unwrap(), want);
        }
    }

    #[test]
    fn training_output_takes_off_the_logs_prefixes_and_leaves_out_its_notes() {
        let log = concat!(
            "ial line of a tail\n",
            "2026-11-27T08:50:01.123Z err |[rank1]: Traceback\n",
            "+|[rank1]:   File x\n",
            "2026-11-27T08:50:01.200Z --- |torchrun exited with code 1\n",
            "+|a note's next line\n",
            "2026-11-27T08:50:01.300Z out | 40%|####  | 4/10\r\n",
            "2026-11-27T08:50:01.400Z out~|cut",
        );
        assert_eq!(
            String::from_utf8(training_output(log.as_bytes())).unwrap(),
            "[rank1]: Traceback\n[rank1]:   File x\n 40%|####  | 4/10\r\ncut"
        );
    }
}
