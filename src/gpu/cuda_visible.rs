//! CUDA_VISIBLE_DEVICES read the way the CUDA runtime reads it.
//!
//! Rules (CUDA's behaviour as modelled by PyTorch's `torch.cuda._parse_visible_devices`, which
//! the training processes themselves use):
//! - unset: every device; set but empty: no device.
//! - A value starting with `GPU-` or `MIG-` is a list of UUIDs or unique UUID prefixes of that
//!   kind; otherwise a list of ordinals read like `strtoul` (leading blanks skipped, digits up
//!   to the first non-digit: `1gpu2` is 1).
//! - The first invalid entry (not a number, negative, out of range, unknown or ambiguous UUID,
//!   a UUID among ordinals or the other way round) ends the list: what precedes it stays visible.
//! - A device named twice makes the whole list empty (CUDA then reports no device at all).
//!
//! Ordinals count in CUDA_DEVICE_ORDER=PCI_BUS_ID order, which the launcher always sets; they
//! never refer to NVML's own indices.

/// One entry as written, before it is matched against the devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Ordinal(u64),
    /// Full UUID or prefix, with its `GPU-` or `MIG-` head.
    Uuid(String),
}

/// Entries up to the first unreadable one, plus why reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

/// At most this many characters of a user's entry are echoed back in warnings.
const ECHO_MAX: usize = 48;

pub(crate) fn echo(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(ECHO_MAX).collect();
        format!("{head:?}... ({} characters)", s.chars().count())
    }
}

fn stopped_at(position: usize, entry: &str, why: &str) -> String {
    format!(
        "CUDA_VISIBLE_DEVICES entry {} at position {} {why}; CUDA ignores it and every entry after it",
        echo(entry),
        position + 1
    )
}

/// `strtoul` as CUDA applies it to one entry: blanks, an optional `+`, then digits.
fn leading_ordinal(entry: &str) -> Option<u64> {
    let s = entry.trim_start();
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    s[..digits].parse().ok()
}

/// Reads the value; `None` (unset) is handled by the caller as "all devices".
pub fn parse(value: &str) -> Parsed {
    let mut parsed = Parsed::default();
    if value.is_empty() {
        return parsed;
    }
    let uuid_head = ["GPU-", "MIG-"].into_iter().find(|h| value.starts_with(h));
    for (position, raw) in value.split(',').enumerate() {
        let entry = match uuid_head {
            Some(head) if raw.starts_with(head) => Entry::Uuid(raw.to_string()),
            Some(head) => {
                let why = format!("does not start with {head} like the first one");
                parsed.warnings.push(stopped_at(position, raw, &why));
                break;
            }
            None => match leading_ordinal(raw) {
                Some(n) => Entry::Ordinal(n),
                None => {
                    let why = "is not a device number (0, 1, ...) and the list does not start with a GPU- or MIG- UUID";
                    parsed.warnings.push(stopped_at(position, raw, why));
                    break;
                }
            },
        };
        if parsed.entries.contains(&entry) {
            parsed.warnings.push(duplicate_warning(raw));
            parsed.entries.clear();
            return parsed;
        }
        parsed.entries.push(entry);
    }
    parsed
}

fn duplicate_warning(entry: &str) -> String {
    format!(
        "CUDA_VISIBLE_DEVICES names the device {} twice; CUDA then exposes no device at all",
        echo(entry)
    )
}

/// Devices selected by the entries, as positions in `candidates` (the UUIDs in CUDA order, of
/// which the first `ordinals` are the ones ordinals count: the physical GPUs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    pub positions: Vec<usize>,
    pub warnings: Vec<String>,
}

pub fn resolve(parsed: &Parsed, candidates: &[&str], ordinals: usize) -> Resolved {
    let mut out = Resolved {
        positions: Vec::new(),
        warnings: parsed.warnings.clone(),
    };
    for (position, entry) in parsed.entries.iter().enumerate() {
        let found = match entry {
            Entry::Ordinal(n) => usize::try_from(*n)
                .ok()
                .filter(|&i| i < ordinals.min(candidates.len()))
                .ok_or_else(|| {
                    let why = format!(
                        "is out of range: this machine has {ordinals} GPU(s), numbered from 0"
                    );
                    stopped_at(position, &n.to_string(), &why)
                }),
            Entry::Uuid(prefix) => {
                let mut hits = candidates
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| u.starts_with(prefix.as_str()))
                    .map(|(i, _)| i);
                match (hits.next(), hits.next()) {
                    (Some(i), None) => Ok(i),
                    (None, _) => Err(stopped_at(position, prefix, "matches no device UUID")),
                    (Some(_), Some(_)) => Err(stopped_at(
                        position,
                        prefix,
                        "is a prefix of several device UUIDs",
                    )),
                }
            }
        };
        match found {
            Ok(i) if out.positions.contains(&i) => {
                let written = match entry {
                    Entry::Ordinal(n) => n.to_string(),
                    Entry::Uuid(u) => u.clone(),
                };
                out.warnings.push(duplicate_warning(&written));
                out.positions.clear();
                return out;
            }
            Ok(i) => out.positions.push(i),
            Err(warning) => {
                out.warnings.push(warning);
                break;
            }
        }
    }
    out
}
