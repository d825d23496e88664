//! Slurm's compressed hostlist form (`gpu[01-04,07],gpu-b12`) expanded to host names.
//!
//! Grammar (as `scontrol show hostnames` accepts it): entries separated by commas outside
//! brackets; each entry is literal text with zero or more `[ranges]` groups, the groups
//! expanding as a cartesian product (`rack[1-2]-n[1-2]`). A range keeps the zero padding of
//! its lower bound (`[08-10]` -> 08, 09, 10), as Slurm does.

use super::error::ClusterError;

/// Refuse absurd expansions (a typo like `n[1-99999999]`) instead of allocating forever.
pub const MAX_HOSTS: usize = 65_536;

/// The longest host name accepted (DNS allows 253): 65,536 hosts of 5,000-character names
/// would take seconds and hundreds of MB to expand.
pub const MAX_HOST_NAME: usize = 255;

/// Expand a Slurm hostlist into host names, in the order Slurm lists them.
pub fn parse_hostlist(list: &str) -> Result<Vec<String>, ClusterError> {
    let err = |why: String| ClusterError::Hostlist {
        list: list.to_string(),
        why,
    };
    if list.trim().is_empty() {
        return Err(err("it is empty".into()));
    }
    let mut hosts = Vec::new();
    for entry in split_top_level(list).map_err(&err)? {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(err("it has an empty entry (two commas in a row?)".into()));
        }
        expand_entry(entry, &mut hosts).map_err(&err)?;
        if hosts.len() > MAX_HOSTS {
            return Err(err(format!("it expands to more than {MAX_HOSTS} hosts")));
        }
    }
    Ok(hosts)
}

/// Split at commas that are not inside brackets, checking that brackets balance.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err(format!("nested '[' at byte {i}")),
            '[' => depth = 1,
            ']' if depth == 0 => return Err(format!("unmatched ']' at byte {i}")),
            ']' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '[' is never closed".into());
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// One entry such as `node[1-3]-ib` or `rack[1-2]-n[01-02]`.
fn expand_entry(entry: &str, out: &mut Vec<String>) -> Result<(), String> {
    // Prefixes built so far; each bracket group multiplies them.
    let mut partial = vec![String::new()];
    // The longest name among `partial` (checked before each expansion multiplies them).
    let mut longest = 0usize;
    let too_long = || {
        format!(
            "{} would give host names longer than {MAX_HOST_NAME} characters",
            crate::input::excerpt(entry, 40)
        )
    };
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']').map(|c| open + c).ok_or_else(|| {
            format!(
                "'[' without ']' in {entry_x}",
                entry_x = crate::input::excerpt(entry, 40)
            )
        })?;
        let literal = &rest[..open];
        let values = expand_ranges(&rest[open + 1..close], entry)?;
        longest += literal.len() + values.iter().map(String::len).max().unwrap_or(0);
        if longest > MAX_HOST_NAME {
            return Err(too_long());
        }
        if partial.len().saturating_mul(values.len()) > MAX_HOSTS {
            return Err(format!(
                "{entry_x} expands to more than {MAX_HOSTS} hosts",
                entry_x = crate::input::excerpt(entry, 40)
            ));
        }
        partial = partial
            .iter()
            .flat_map(|p| values.iter().map(move |v| format!("{p}{literal}{v}")))
            .collect();
        rest = &rest[close + 1..];
    }
    if partial.len() == 1 && partial[0].is_empty() && rest.is_empty() {
        return Err(format!(
            "{entry_x} has no host name",
            entry_x = crate::input::excerpt(entry, 40)
        ));
    }
    if longest + rest.len() > MAX_HOST_NAME {
        return Err(too_long());
    }
    out.extend(partial.into_iter().map(|p| format!("{p}{rest}")));
    Ok(())
}

/// The inside of one bracket group: `01-04,07`.
fn expand_ranges(inner: &str, entry: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    for range in inner.split(',') {
        let range = range.trim();
        if range.is_empty() {
            return Err(format!(
                "empty range inside the brackets of {entry_x}",
                entry_x = crate::input::excerpt(entry, 40)
            ));
        }
        let (lo, hi) = match range.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (range, range),
        };
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{range_x} in {entry_x} is not a number or a range N-M",
                    entry_x = crate::input::excerpt(entry, 40),
                    range_x = crate::input::excerpt(range, 40)
                ));
            }
            s.parse::<u64>().map_err(|_| {
                format!(
                    "{s_x} in {entry_x} is too large",
                    entry_x = crate::input::excerpt(entry, 40),
                    s_x = crate::input::excerpt(s, 40)
                )
            })
        };
        let (start, end) = (number(lo)?, number(hi)?);
        if start > end {
            return Err(format!(
                "range {range_x} in {entry_x} runs backwards",
                entry_x = crate::input::excerpt(entry, 40),
                range_x = crate::input::excerpt(range, 40)
            ));
        }
        if end - start >= MAX_HOSTS as u64 {
            return Err(format!(
                "range {range_x} in {entry_x} has more than {MAX_HOSTS} hosts",
                entry_x = crate::input::excerpt(entry, 40),
                range_x = crate::input::excerpt(range, 40)
            ));
        }
        // Slurm pads to the width of the lower bound as written (`08-10`, `001-3`).
        let width = lo.len();
        values.extend((start..=end).map(|n| format!("{n:0width$}")));
    }
    Ok(values)
}
