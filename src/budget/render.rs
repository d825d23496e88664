//! Terminal renderings of a budget: a table like the seed's section 3.4 and a bar like its
//! section 4 figure. Plain text, no colours, so they survive logs and CI output.

use super::Budget;
use crate::units::gib;

/// The terms to show, with the allocator's slack less the part it gives back under pressure
/// (`reclaimable`, see plan::reclaimable_cache): what the run needs, term by term.
fn needed_terms(b: &Budget, reclaimable: u64) -> Vec<(&'static str, u64)> {
    b.terms()
        .into_iter()
        .map(|(key, label, bytes)| match key {
            "allocator_slack" if reclaimable > 0 => {
                ("allocator slack (kept)", bytes.saturating_sub(reclaimable))
            }
            _ => (label, bytes),
        })
        .collect()
}

/// One line per non-zero term: label, bytes, GiB, share of what the run needs; then the total
/// it needs. The allocator cache that is given back under pressure (`reclaimable`) follows the
/// total, not in it, with what nvidia-smi may show (at most the `card`, when known).
pub fn table(b: &Budget, reclaimable: u64, card: Option<u64>) -> String {
    let reclaimable = reclaimable.min(b.allocator_slack);
    let needed = b.peak().saturating_sub(reclaimable);
    let share_of = needed.max(1);
    let mut out = format!(
        "{:<30} {:>16} {:>9} {:>7}\n",
        "term", "bytes", "GiB", "share"
    );
    for (label, bytes) in needed_terms(b, reclaimable).into_iter().filter(|t| t.1 > 0) {
        let share = bytes as f64 / share_of as f64 * 100.0;
        out += &format!(
            "{label:<30} {bytes:>16} {:>9.2} {share:>6.1}%\n",
            gib(bytes)
        );
    }
    if reclaimable == 0 {
        out += &format!(
            "{:<30} {needed:>16} {:>9.2} {:>6.1}%\n",
            "peak (nvidia-smi)",
            gib(needed),
            100.0
        );
        return out;
    }
    out += &format!(
        "{:<30} {needed:>16} {:>9.2} {:>6.1}%\n",
        "needed",
        gib(needed),
        100.0
    );
    out += &format!(
        "{:<30} {reclaimable:>16} {:>9.2}\n",
        "+ allocator cache (given back)",
        gib(reclaimable)
    );
    let shown = card.map_or(b.peak(), |c| b.peak().min(c));
    out += &format!(
        "{:<30} {shown:>16} {:>9.2}{}\n",
        "nvidia-smi may show",
        gib(shown),
        if shown < b.peak() {
            " (the whole card)"
        } else {
            ""
        }
    );
    out
}

/// Symbols for the terms, in `Budget::terms` order; the legend under the bar names them.
const SYMBOLS: [char; 8] = ['W', 'G', 'O', 'A', 'F', 'T', 's', 'c'];

/// The allocator cache that is given back under pressure, drawn after what the run needs.
const CACHE: char = '.';

/// A bar `width` characters wide spanning max(needed, total): one run of a symbol per term of
/// what the run needs (at least one character for any non-zero term), then the reclaimable
/// allocator cache as `.` up to the card at most (nvidia-smi cannot show more), `|` above the bar
/// where the usable budget ends and `#` where the card ends, then a legend with each term's GiB.
/// `required_bytes` is what the run needs (the peak, calibrated, less `reclaimable`, the allocator
/// cache it gives back under pressure, see plan::reclaimable_cache); the verdict compares that
/// with `usable_bytes`.
pub fn bar(
    b: &Budget,
    required_bytes: u64,
    reclaimable: u64,
    usable_bytes: u64,
    total_bytes: u64,
    width: usize,
) -> String {
    let width = width.max(10);
    let reclaimable = reclaimable.min(b.allocator_slack);
    let needed = b.peak().saturating_sub(reclaimable);
    let scale = needed.max(total_bytes).max(1) as f64;
    let col = |bytes: u64| ((bytes as f64 / scale) * width as f64).round() as usize;
    let mut cells = String::new();
    let mut legend = Vec::new();
    let mut cum = 0u64;
    for ((label, bytes), sym) in needed_terms(b, reclaimable).into_iter().zip(SYMBOLS) {
        if bytes == 0 {
            continue;
        }
        let start = cells.chars().count();
        cum += bytes;
        let end = col(cum).max(start + 1);
        cells.extend(std::iter::repeat_n(sym, end - start));
        legend.push(format!("{sym}={label} {:.2}", gib(bytes)));
    }
    if reclaimable > 0 {
        let start = cells.chars().count();
        let end = col(b.peak().min(total_bytes.max(needed))).max(start);
        cells.extend(std::iter::repeat_n(CACHE, end - start));
        legend.push(format!(
            "{CACHE}=allocator cache {:.2} (given back when memory runs short{})",
            gib(reclaimable),
            if b.peak() > total_bytes {
                "; drawn up to the card"
            } else {
                ""
            }
        ));
    }
    let filled = cells.chars().count();
    let total_cols = filled.max(col(total_bytes)).max(width);
    cells.extend(std::iter::repeat_n(' ', total_cols - filled));
    let mut marks: Vec<char> = vec![' '; total_cols + 1];
    let total_at = col(total_bytes).min(total_cols);
    // Keep the usable mark visible when it rounds onto the card's column.
    let usable_at = col(usable_bytes).min(total_cols);
    let usable_at = if usable_at == total_at {
        usable_at.saturating_sub(1)
    } else {
        usable_at
    };
    marks[usable_at] = '|';
    marks[total_at] = '#';
    let marks: String = marks.into_iter().collect();
    format!(
        " {}\n[{}]\n needs {:.2} GiB, usable {:.2} GiB (|), card {:.2} GiB (#){}{}\n {}\n",
        marks.trim_end(),
        cells,
        gib(required_bytes),
        gib(usable_bytes),
        gib(total_bytes),
        if reclaimable > 0 {
            format!(
                "; nvidia-smi may show {:.2} GiB",
                gib(b.peak().min(total_bytes))
            )
        } else {
            String::new()
        },
        if required_bytes > usable_bytes {
            ": DOES NOT FIT"
        } else {
            ""
        },
        legend.join("  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;

    fn sample() -> Budget {
        Budget {
            weights: 16 * GIB,
            gradients: 2 * GIB,
            optimizer: 5 * GIB,
            activations: 9 * GIB,
            fsdp_working: 0,
            transients: GIB,
            allocator_slack: GIB,
            overhead: 2 * GIB,
        }
    }

    #[test]
    fn table_lists_nonzero_terms_and_the_peak() {
        let t = table(&sample(), 0, None);
        assert!(t.contains("weights"));
        assert!(!t.contains("FSDP"), "zero terms are left out:\n{t}");
        assert!(t.lines().last().unwrap().contains("36.00"), "{t}");
    }

    #[test]
    fn bar_marks_usable_and_total_and_flags_overflow() {
        let b = sample(); // 36 GiB peak
        let s = bar(&b, b.peak(), 0, 22 * GIB, 24 * GIB, 36);
        let lines: Vec<&str> = s.lines().collect();
        // Scale is 1 GiB per column; the marks sit at columns 22 and 24 (offset 1 for '[').
        assert_eq!(lines[0].find('|'), Some(1 + 22));
        assert_eq!(lines[0].find('#'), Some(1 + 24));
        assert_eq!(lines[1].matches('W').count(), 16);
        assert!(s.contains("DOES NOT FIT"));
        let fits = bar(&b, b.peak(), 0, 70 * GIB, 80 * GIB, 40);
        assert!(!fits.contains("DOES NOT FIT"));
    }

    /// Issue 26 item 5: 4x RTX 4090, FSDP batch 2: the peak with the allocator's cache (30 GiB)
    /// is past the card (24 GiB) while what the run needs (21 GiB) fits. Neither the table nor
    /// the bar may draw the cache as needed.
    #[test]
    fn a_reclaimable_cache_is_not_drawn_as_needed() {
        let b = Budget {
            weights: 4 * GIB,
            gradients: 4 * GIB,
            optimizer: GIB,
            activations: 5 * GIB,
            fsdp_working: 4 * GIB,
            transients: GIB,
            allocator_slack: 9 * GIB,
            overhead: 2 * GIB,
        };
        let needed = 21 * GIB;
        let t = table(&b, 9 * GIB, Some(24 * GIB));
        let total = t.lines().find(|l| l.starts_with("needed")).unwrap();
        assert!(total.contains("21.00") && total.contains("100.0%"), "{t}");
        assert!(
            t.contains("given back") && t.contains("24.00 (the whole card)"),
            "{t}"
        );
        assert!(
            !t.contains("30.00"),
            "the peak past the card is not a total:\n{t}"
        );
        let s = bar(&b, needed, 9 * GIB, 22 * GIB, 24 * GIB, 48);
        let lines: Vec<&str> = s.lines().collect();
        let card_at = lines[0].find('#').unwrap();
        // Past the card: nothing (nvidia-smi cannot show more than the card).
        assert!(
            lines[1][card_at..].trim_end_matches(']').trim().is_empty(),
            "{s}"
        );
        // The needed terms end where the needed bytes end (21 of 24 GiB: column 42 of 48).
        let solid = lines[1].chars().filter(|c| c.is_ascii_alphabetic()).count();
        assert_eq!(solid, 42, "{s}");
        assert!(
            s.contains("needs 21.00 GiB") && !s.contains("DOES NOT FIT"),
            "{s}"
        );
    }
}
