//! Credentials in free text: which names hold one ([`is_secret`], a rule on the name's words),
//! and the masking of values that are credentials whatever they are called: passwords in URLs
//! (`scheme://user:PASSWORD@host`), tokens of a well-known shape (`ghp_...`, `hf_...`, `sk-...`),
//! and the values of the process's own secret-named variables. Used by `command::mask` for every
//! command and record, and on every message the launcher prints (`redact_text`,
//! [`RedactingWriter`]), so that an error never quotes a secret back.

use std::borrow::Cow;
use std::io::{self, Write};

pub const MASK: &str = "***";

/// Secrets shorter than this are masked only where they are a whole value: a 3-character
/// "secret" would otherwise turn every occurrence of, say, "abc" into `***`.
pub const MIN_MASKED_SUBSTRING: usize = 6;

/// Shortest value masked by value (names mask shorter ones where they appear).
pub const MIN_MASKED_VALUE: usize = 4;

pub(super) fn maskable_value(v: &str) -> bool {
    const SWITCHES: &[&str] = &["true", "false", "yes", "no", "on", "off", "none", "null"];
    v.chars().count() >= MIN_MASKED_VALUE
        && !SWITCHES.iter().any(|w| v.eq_ignore_ascii_case(w))
        // Ports, counts and sizes; a long number may well be a key.
        && !(v.len() < 8 && v.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn mask_bytes(value: &[u8], secrets: &[String]) -> Vec<u8> {
    if secrets.iter().any(|s| s.as_bytes() == value) {
        return MASK.as_bytes().to_vec();
    }
    let mut out = value.to_vec();
    for s in secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_MASKED_SUBSTRING)
    {
        let needle = s.as_bytes();
        let mut masked = Vec::with_capacity(out.len());
        let mut rest = &out[..];
        while let Some(at) = memchr::memmem::find(rest, needle) {
            masked.extend_from_slice(&rest[..at]);
            masked.extend_from_slice(MASK.as_bytes());
            rest = &rest[at + needle.len()..];
        }
        masked.extend_from_slice(rest);
        out = masked;
    }
    out
}

/// Words that make a name a secret wherever they stand (`GITHUB_PAT`, `MY_AUTH`, `X_API_KEY`).
const SECRET_WORDS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "SECRETS",
    "KEY",
    "APIKEY",
    "PASS",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "PAT",
    "AUTH",
    "AUTHORIZATION",
    "BEARER",
    "COOKIE",
    "COOKIES",
    "CREDENTIAL",
    "CREDENTIALS",
    "CREDS",
    "DSN",
    "SIGNATURE",
    "WEBHOOK",
    "PRIVATE",
];

/// Stems that make a name a secret even inside a longer word (`MYSECRETVALUE`, `DBPASSWORD`).
const SECRET_STEMS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "APIKEY",
    "CREDENTIAL",
    "ACCESSKEY",
];

/// Word pairs that name a connection string, which carries its password (`DATABASE_URL`,
/// `AZURE_STORAGE_CONNECTION_STRING`, `REDIS_URI`).
const SECRET_PAIRS: &[(&str, &str)] = &[
    ("CONNECTION", "STRING"),
    ("CONN", "STR"),
    ("DATABASE", "URL"),
    ("DATABASE", "URI"),
    ("DB", "URL"),
    ("DB", "URI"),
    ("REDIS", "URL"),
    ("REDIS", "URI"),
    ("MONGO", "URL"),
    ("MONGO", "URI"),
    ("MONGODB", "URI"),
    ("AMQP", "URL"),
    ("BROKER", "URL"),
];

/// Whether a variable (or a `--flag` name) holds a credential that must never be printed or
/// recorded: a rule on its words (split at `_`, `-`, `.` and lower-to-upper case changes), so
/// that it errs towards masking. `TOKENIZERS_PARALLELISM`, `KEYBOARD`, `AUTHOR`, `PWD` are not.
pub fn is_secret(name: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_uppercase());
    }
    words.extend((!word.is_empty()).then_some(word));
    let joined: String = words.concat();
    words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
        || SECRET_STEMS.iter().any(|s| joined.contains(s))
        || words
            .windows(2)
            .any(|p| SECRET_PAIRS.contains(&(p[0].as_str(), p[1].as_str())))
}

/// Tokens recognised by their shape: (prefix, shortest tail). The tail is letters, digits,
/// `_` and `-`.
const TOKEN_SHAPES: &[(&str, usize)] = &[
    ("github_pat_", 20),
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("glpat-", 16),
    ("hf_", 24),
    ("sk-", 20),
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("xoxb-", 16),
    ("xoxp-", 16),
    ("xoxa-", 16),
    ("xapp-", 16),
    ("AKIA", 16),
    ("ASIA", 16),
    ("AIza", 30),
    ("npm_", 30),
    ("pypi-", 30),
    ("eyJ", 30),
    ("wandb_v1_", 20),
];

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// `text` with every token of a known shape replaced by `***`.
fn mask_token_shapes(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !token_byte(bytes[i - 1]);
        let hit = starts_word
            .then(|| {
                TOKEN_SHAPES.iter().find_map(|(prefix, min_tail)| {
                    let p = prefix.as_bytes();
                    if !bytes[i..].starts_with(p) {
                        return None;
                    }
                    let tail = bytes[i + p.len()..]
                        .iter()
                        .take_while(|b| token_byte(**b))
                        .count();
                    // A token has digits or mixed case: `sk-learn-...` words are not one.
                    let t = &bytes[i + p.len()..i + p.len() + tail];
                    let mixed = t.iter().any(u8::is_ascii_digit)
                        || (t.iter().any(u8::is_ascii_uppercase)
                            && t.iter().any(u8::is_ascii_lowercase));
                    (tail >= *min_tail && mixed).then_some(p.len() + tail)
                })
            })
            .flatten();
        match hit {
            Some(len) => {
                let o = out.get_or_insert_with(String::new);
                o.push_str(&text[copied..i]);
                o.push_str(MASK);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// `text` with the password of every URL (`scheme://user:PASSWORD@host`) replaced by `***`;
/// also a bare `user:PASSWORD@host` after a space, `=`, a quote or at the start.
pub fn mask_url_passwords(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    // Characters of a URL's userinfo (RFC 3986 unreserved, sub-delims, `%`, `:`).
    let userinfo = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&()*+,;%:".contains(&b);
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'@', &bytes[i..]).map(|a| a + i) {
        // The userinfo: back from `@` to `//`, a space, a quote or the start.
        let mut start = at;
        while start > 0 && userinfo(bytes[start - 1]) {
            start -= 1;
        }
        let after_scheme = start >= 2 && &bytes[start - 2..start] == b"//";
        let bare = start == 0 || b" \t\"'=<([{,".contains(&bytes[start - 1]);
        let host_follows = bytes
            .get(at + 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'[');
        if (after_scheme || bare) && host_follows {
            if let Some(colon) = memchr::memchr(b':', &bytes[start..at]).map(|c| c + start) {
                if colon + 1 < at {
                    let o = out.get_or_insert_with(String::new);
                    o.push_str(&text[copied..=colon]);
                    o.push_str(MASK);
                    copied = at;
                }
            }
        }
        i = at + 1;
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// A value (one argument or variable) with its credentials of a known kind masked: URL
/// passwords and tokens of a known shape.
pub fn mask_credentials(value: &str) -> Cow<'_, str> {
    match mask_url_passwords(value) {
        Cow::Borrowed(v) => mask_token_shapes(v),
        Cow::Owned(v) => Cow::Owned(mask_token_shapes(&v).into_owned()),
    }
}

/// `text` (a message, a record) with every credential masked: those of a known kind
/// ([`mask_credentials`]) and the values of this process's secret-named variables.
pub fn redact_text(text: &str) -> String {
    let secrets = process_secret_values();
    let masked = mask_credentials(text);
    let bytes = mask_bytes(masked.as_bytes(), &secrets);
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The values of the process's secret-named variables long enough to be found by value.
fn process_secret_values() -> Vec<String> {
    let mut out: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, v)| is_secret(k) && v.chars().count() >= MIN_MASKED_SUBSTRING)
        .map(|(_, v)| v)
        .filter(|v| maskable_value(v))
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    out.dedup();
    out
}

/// A writer that masks credentials in each write (one write is one log event for tracing's
/// formatter) before passing it on.
pub struct RedactingWriter<W: Write>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact_text(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
