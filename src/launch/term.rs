//! Writing to the launcher's own stdout and stderr without ever panicking: after a terminal
//! closes (EIO) or a `| tee` reader dies (EPIPE), `eprintln!` would panic and take the run's
//! supervision down with it. These writes drop what cannot be written and carry on; the run log
//! and the record still get everything.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};

/// On a node other than node 0 of a multi-node job: `[node N] `, put before every line the
/// launcher writes to stderr (its own lines and its logs, not the training's relayed output), so
/// that the job's one output file says which node said what.
static LINE_PREFIX: OnceLock<String> = OnceLock::new();
/// Whether the next byte written to stderr starts a line.
static AT_LINE_START: Mutex<bool> = Mutex::new(true);

/// Sets the prefix of the launcher's stderr lines, once per process (later calls are ignored).
pub fn set_line_prefix(prefix: String) {
    let _ = LINE_PREFIX.set(prefix);
}

/// What every write of the launcher's own to stderr goes through while a status line is on the
/// terminal (`status::Tracker`): it is called with whether the text ends a line and the write
/// itself, and takes the status line off around it.
pub type Interlude = dyn Fn(bool, &mut dyn FnMut()) + Send + Sync;

static INTERLUDE: Mutex<Option<Arc<Interlude>>> = Mutex::new(None);

/// Sets (or, with `None`, removes) the interlude around the launcher's stderr writes.
pub fn set_interlude(interlude: Option<Arc<Interlude>>) {
    *INTERLUDE.lock().unwrap_or_else(|p| p.into_inner()) = interlude;
}

/// Runs `write` (of `text`) inside the interlude, if one is set.
fn around(text: &[u8], mut write: impl FnMut()) {
    let interlude = INTERLUDE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match interlude {
        Some(f) if !text.is_empty() => f(text.ends_with(b"\n"), &mut write),
        _ => write(),
    }
}

/// Writes `text` to stderr with the line prefix (if any) before each line; errors are ignored.
fn write_prefixed(text: &[u8]) {
    around(text, || write_prefixed_now(text));
}

fn write_prefixed_now(text: &[u8]) {
    let mut err = io::stderr().lock();
    let Some(prefix) = LINE_PREFIX.get() else {
        let _ = err.write_all(text);
        return;
    };
    let mut at_start = AT_LINE_START.lock().unwrap_or_else(|p| p.into_inner());
    for line in text.split_inclusive(|&b| b == b'\n') {
        if *at_start {
            let _ = err.write_all(prefix.as_bytes());
        }
        let _ = err.write_all(line);
        *at_start = line.ends_with(b"\n");
    }
}

/// Writes `args` to stderr; errors (EIO, EPIPE, ...) are ignored.
pub fn stderr_fmt(args: std::fmt::Arguments<'_>) {
    let no_interlude = INTERLUDE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_none();
    if LINE_PREFIX.get().is_none() && no_interlude {
        let _ = io::stderr().lock().write_fmt(args);
        return;
    }
    write_prefixed(std::fmt::format(args).as_bytes());
}

/// Writes `args` to stdout and flushes; errors are ignored.
pub fn stdout_fmt(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

/// `eprintln!` that never panics (see the module comment).
#[macro_export]
macro_rules! eprintln_lossy {
    () => { $crate::launch::term::stderr_fmt(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::launch::term::stderr_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics.
#[macro_export]
macro_rules! eprint_lossy {
    ($($arg:tt)*) => { $crate::launch::term::stderr_fmt(format_args!($($arg)*)) };
}

/// `print!` that never panics.
#[macro_export]
macro_rules! print_lossy {
    ($($arg:tt)*) => { $crate::launch::term::stdout_fmt(format_args!($($arg)*)) };
}

/// `println!` that never panics.
#[macro_export]
macro_rules! println_lossy {
    () => { $crate::launch::term::stdout_fmt(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::launch::term::stdout_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// A `tracing` writer for stderr that reports every write as done, so a dead terminal can
/// neither panic nor stall logging.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_prefixed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_writer_swallows_errors() {
        let mut w = LossyStderr;
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
    }
}
