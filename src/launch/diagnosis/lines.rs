//! A log read as lines: torchrun's rank prefixes split off, its error summary's root cause.

/// One log line with torchrun's rank prefix split off.
pub(super) struct Line<'a> {
    pub(super) rank: Option<u32>,
    pub(super) text: &'a str,
}

pub(super) fn split_rank_prefix(line: &str) -> Line<'_> {
    for tag in ["[rank", "[default"] {
        if let Some(rest) = line.strip_prefix(tag)
            && let Some((num, text)) = rest.split_once("]:")
            && let Ok(rank) = num.parse::<u32>()
        {
            return Line {
                rank: Some(rank),
                text: text.strip_prefix(' ').unwrap_or(text),
            };
        }
    }
    Line {
        rank: None,
        text: line,
    }
}

/// torchrun's error summary: the rank and exit code of the "Root Cause" entry.
#[derive(Debug, Default)]
pub(super) struct RootCause {
    pub(super) rank: Option<u32>,
    pub(super) exit_code: Option<i32>,
}

pub(super) fn root_cause(lines: &[Line]) -> RootCause {
    let Some(start) = lines
        .iter()
        .position(|l| l.text.starts_with("Root Cause (first observed failure)"))
    else {
        return RootCause::default();
    };
    let mut cause = RootCause::default();
    for l in &lines[start..] {
        let t = l.text.trim();
        if let Some(v) = field(t, "rank") {
            cause.rank = leading_int(v).and_then(|n| u32::try_from(n).ok());
        } else if let Some(v) = field(t, "exitcode") {
            cause.exit_code = leading_int(v).and_then(|n| i32::try_from(n).ok());
        }
        if t.starts_with("====") && cause.exit_code.is_some() {
            break;
        }
    }
    cause
}

/// `name      : value` as torchrun aligns it.
pub(super) fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    let rest = rest.trim_start().strip_prefix(':')?;
    Some(rest.trim())
}

pub(super) fn leading_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(s.len(), |(i, _)| i);
    s[..end].parse().ok()
}

pub(super) fn rank_phrase(rank: Option<u32>) -> String {
    rank.map_or_else(|| "A rank".to_string(), |r| format!("Rank {r}"))
}

/// The first line containing `needle`, with its rank.
pub(super) fn find<'a>(lines: &'a [Line<'a>], needle: &str) -> Option<&'a Line<'a>> {
    lines.iter().find(|l| l.text.contains(needle))
}

pub(super) fn text_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| text[i + marker.len()..].trim())
}

/// A line's rank, or the root cause's when the line has none.
pub(super) type RankOf<'a> = dyn Fn(&Line) -> Option<u32> + 'a;
