//! Shell quoting for any bytes: what makes every printed command valid shell for every byte.

/// `--flag=value` as `--flag=` + the quoted value, when the flag part needs no quoting (one
/// shell word either way; this one reads better).
pub(super) fn quote_arg(arg: &[u8], quote_value: &dyn Fn(&[u8]) -> String) -> String {
    match memchr::memchr(b'=', arg) {
        Some(at) if at > 0 && arg[..at].iter().all(|&b| inert(b)) => {
            let (flag, value) = arg.split_at(at + 1);
            format!("{}{}", String::from_utf8_lossy(flag), quote_value(value))
        }
        _ => quote_value(arg),
    }
}

/// Like [`quote_bytes`], except that each `${NAME}` (NAME a shell variable name for which
/// `expand` says yes) becomes `"${NAME}"`, so the shell expands it; the text around it is quoted
/// by `quote_bytes`, and the pieces are joined into one word.
pub fn quote_expanding(b: &[u8], expand: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::new();
    let mut literal_start = 0;
    let mut i = 0;
    let mut any = false;
    while i + 1 < b.len() {
        if b[i] == b'$' && b[i + 1] == b'{' {
            let name_start = i + 2;
            let name_len = b[name_start..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                .count();
            let end = name_start + name_len;
            if name_len > 0
                && !b[name_start].is_ascii_digit()
                && b.get(end) == Some(&b'}')
                && expand(std::str::from_utf8(&b[name_start..end]).expect("ASCII"))
            {
                if literal_start < i {
                    out.push_str(&quote_bytes(&b[literal_start..i]));
                }
                out.push('"');
                out.push_str(std::str::from_utf8(&b[i..=end]).expect("ASCII"));
                out.push('"');
                any = true;
                i = end + 1;
                literal_start = i;
                continue;
            }
        }
        i += 1;
    }
    if !any {
        return quote_bytes(b);
    }
    if literal_start < b.len() {
        out.push_str(&quote_bytes(&b[literal_start..]));
    }
    out
}

fn inert(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b)
}

/// POSIX single-quote quoting; bare when every character is shell-inert.
pub fn shell_quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// Shell quoting for any bytes: bare when every byte is inert; `'...'` for printable UTF-8;
/// bash's `$'...'` with `\xHH` escapes when there are control characters or bytes that are not
/// UTF-8 (so the line is exact and cannot move the terminal's cursor).
pub fn quote_bytes(b: &[u8]) -> String {
    if !b.is_empty() && b.iter().all(|&c| inert(c)) {
        return String::from_utf8_lossy(b).into_owned();
    }
    quote_forced(b)
}

pub(super) fn quote_forced(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
        _ => {
            let mut out = String::from("$'");
            for &c in b {
                match c {
                    b'\\' => out.push_str(r"\\"),
                    b'\'' => out.push_str(r"\'"),
                    0x20..=0x7e => out.push(c as char),
                    _ => out.push_str(&format!("\\x{c:02x}")),
                }
            }
            out.push('\'');
            out
        }
    }
}
