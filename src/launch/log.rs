//! The run's log file: every byte of torchrun's stdout and stderr, one record per line with a
//! UTC timestamp and the stream.
//!
//! Record format (one file line each):
//! `2026-11-27T08:50:01.123Z out |payload`  payload ends with `\n`, or with `\r` (a `\n` is
//!                                          added after it so the file stays line-oriented)
//! `2026-11-27T08:50:01.123Z out~|payload`  a piece cut without terminator (long line or end of
//!                                          stream); the `\n` after it is not part of the stream
//! `2026-11-27T08:50:01.123Z --- |message`  the launcher's own notes (signals sent, exit)
//! Concatenating the payloads of one stream gives back its bytes exactly (`parse_stream`).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest piece kept waiting for a terminator before it is written as a cut record.
const MAX_PENDING: usize = 64 * 1024;
const PREFIX_LEN: usize = 24 + 1 + 4 + 1;

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
        // Every line of one chunk arrived with the same read: one clock reading serves them all.
        let stamp = self.clock.now();
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            let (line, rest) = bytes.split_at(end + 1);
            bytes = rest;
            match self.pending[slot].take() {
                Some(mut p) => {
                    p.bytes.extend_from_slice(line);
                    push_record(&mut self.batch, &p.stamp, stream.tag(false), &p.bytes);
                }
                None => push_record(&mut self.batch, &stamp, stream.tag(false), line),
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

/// Rebuilds the exact bytes of one stream from a log file's contents (for tests and tools).
pub fn parse_stream(log: &[u8], stream: Stream) -> Vec<u8> {
    let (whole, cut) = (stream.tag(false).as_bytes(), stream.tag(true).as_bytes());
    let mut out = Vec::new();
    for line in log.split_inclusive(|&b| b == b'\n') {
        if line.len() < PREFIX_LEN {
            continue;
        }
        let (tag, payload) = line[25..].split_at(5);
        if tag == whole {
            // A `\r` record carries an added `\n`; a `\n` record's `\n` is its own.
            let own_cr = payload.len() >= 2 && payload[payload.len() - 2] == b'\r';
            out.extend_from_slice(if own_cr {
                &payload[..payload.len() - 1]
            } else {
                payload
            });
        } else if tag == cut {
            out.extend_from_slice(&payload[..payload.len() - 1]);
        }
    }
    out
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
                    line.len() >= PREFIX_LEN && line[23] == b'Z',
                    "case {i}: {line:?}"
                );
            }
        }
    }

    #[test]
    fn every_terminator_starts_a_record() {
        let log = render_bytes(&[(Stream::Out, b" 1%\r 2%\r 3%\n")]);
        let text = String::from_utf8(log).unwrap();
        let records: Vec<&str> = text.split_terminator('\n').map(|l| &l[25..]).collect();
        assert_eq!(
            records,
            [
                "out | 1%\r",
                "out | 2%\r",
                "out | 3%",
                "--- |a note",
                "--- |over two lines"
            ]
        );
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
}
