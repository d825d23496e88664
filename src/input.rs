//! Reading what a user hands the launcher (profiles, plan files, run records) without trusting
//! it: only regular files, at most `MAX_INPUT_BYTES`, never blocking on a FIFO, and YAML whose
//! nesting is bounded before any parser sees it. Also `excerpt`, the one way errors quote input.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest profile, plan file or record read (the shipped ones are under 64 KiB; a record
/// with 8 GPUs' processes and every alternative is about 100 KiB).
pub const MAX_INPUT_BYTES: u64 = 4 << 20;

/// The deepest flow nesting (`[`/`{`) and block nesting accepted in a YAML profile (they use 3).
pub const MAX_YAML_DEPTH: usize = 32;

/// Reads a user's input file as UTF-8 text, refusing what is not a regular file (`/dev/zero`, a
/// FIFO, a socket, a directory) or is larger than `MAX_INPUT_BYTES`. The error is an
/// `io::Error` whose message says what was wrong and what to pass instead; callers wrap it
/// with the path and the kind of file.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    // O_NONBLOCK: opening a FIFO with no writer must not block (its type is refused below).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file; pass a file"),
        ));
    }
    let too_large = |size: u64| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "it is {size} bytes, more than the {} MiB this reads; pass the file vla-launch wrote, not something else",
                MAX_INPUT_BYTES >> 20
            ),
        )
    };
    if meta.len() > MAX_INPUT_BYTES {
        return Err(too_large(meta.len()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while it is read.
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_INPUT_BYTES {
        return Err(too_large(buf.len() as u64));
    }
    String::from_utf8(buf).map_err(|e| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "it is not UTF-8 text (invalid byte at offset {}); pass a text file",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Where YAML nests deeper than `max`: `Some((line, depth))` for the first place, else `None`.
/// Counts flow brackets outside quotes and comments, and block indentation levels, in one linear
/// pass: the YAML parser's time grows faster than linearly with nesting, so deep input is refused
/// before it is parsed.
pub fn yaml_too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    let mut indents: Vec<usize> = Vec::new();
    for (n, line) in text.split(['\n', '\r']).enumerate() {
        let trimmed = line.trim_start_matches([' ', '\t', '-']);
        if flow == 0 && quote.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            let indent = line.len() - trimmed.len();
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            if indents.len() > max {
                return Some((n + 1, indents.len()));
            }
        }
        let mut prev = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some('"'), '\\') if prev == '\\' => {
                    prev = ' ';
                    continue;
                }
                (Some(q), c) if c == q && !(q == '"' && prev == '\\') => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') if prev.is_whitespace() || "[{,:".contains(prev) => {
                    quote = Some(c)
                }
                (None, '#') if prev.is_whitespace() => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > max {
                        return Some((n + 1, flow));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    None
}

/// At most `max` characters of user input, debug-quoted, with the length when cut: the one way
/// an error quotes input (a 10k-character value or a line of /etc/shadow is not echoed whole).
pub fn excerpt(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

/// `text` with every line longer than `max` characters cut to `max` and the length said: for
/// messages built by code this crate does not own (clap's echo the offending argument whole).
pub fn bound_lines(text: &str, max: usize) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let body = line.trim_end_matches('\n');
            if body.chars().count() <= max {
                return line.to_string();
            }
            let head: String = body.chars().take(max).collect();
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            format!("{head}... ({} bytes){nl}", body.len())
        })
        .collect()
}

/// `s` as it is when short and printable, else [`excerpt`]: for messages that name a value
/// the user typed, unchanged in the usual case.
pub fn shown(s: &str, max: usize) -> String {
    if s.chars().count() <= max && !s.chars().any(char::is_control) {
        s.to_string()
    } else {
        excerpt(s, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_flow_and_block_nesting_but_not_quoted_brackets() {
        assert_eq!(yaml_too_deep("a: [[[1]]]\n", 3), None);
        assert_eq!(yaml_too_deep("a: [[[[1]]]]\n", 3), Some((1, 4)));
        assert_eq!(yaml_too_deep("a: '[[[[[['\nb: \"{{{{\"\n", 3), None);
        assert_eq!(yaml_too_deep("a: 1 # [[[[[[\n", 3), None);
        assert_eq!(yaml_too_deep("a:\n b:\n  c:\n   d: 1\n", 3), Some((4, 4)));
        assert_eq!(yaml_too_deep("a:\n b:\n  c: 1\nd:\n e: 2\n", 3), None);
    }

    #[test]
    fn long_lines_are_cut_and_short_ones_kept() {
        let text = format!("error: '{}'\n\nUsage: x\n", "a".repeat(1000));
        let b = bound_lines(&text, 100);
        assert!(
            b.len() < 200 && b.contains("(1009 bytes)\n\nUsage: x\n"),
            "{b}"
        );
        assert_eq!(bound_lines("a\nb", 10), "a\nb");
    }

    #[test]
    fn shown_keeps_short_values_and_cuts_long_ones() {
        assert_eq!(shown("0,7", 40), "0,7");
        assert_eq!(shown("a\x1b[2J", 40), "\"a\\u{1b}[2J\"");
        assert!(shown(&"x".repeat(100), 40).contains("(100 bytes)"));
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = "x".repeat(10_000);
        let e = excerpt(&long, 40);
        assert!(e.len() < 70 && e.contains("10000 bytes"), "{e}");
        assert_eq!(excerpt("ab", 40), "\"ab\"");
    }
}
