//! Writing to the launcher's own stdout and stderr without ever panicking: after a terminal
//! closes (EIO) or a `| tee` reader dies (EPIPE), `eprintln!` would panic and take the run's
//! supervision down with it. These writes drop what cannot be written and carry on; the run log
//! and the record still get everything.

use std::io::{self, Write};

/// Writes `args` to stderr; errors (EIO, EPIPE, ...) are ignored.
pub fn stderr_fmt(args: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
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
        let _ = io::stderr().write_all(buf);
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
