//! Terminal renderings of a budget: a table like the seed's section 3.4 and a bar like its
//! section 4 figure. Plain text, no colours, so they survive logs and CI output.

use super::Budget;
use crate::units::gib;

/// One line per non-zero term: label, bytes, GiB, share of the peak; then the total.
pub fn table(b: &Budget) -> String {
    let peak = b.peak().max(1);
    let mut out = format!(
        "{:<22} {:>16} {:>9} {:>7}\n",
        "term", "bytes", "GiB", "share"
    );
    for (_, label, bytes) in b.terms().into_iter().filter(|t| t.2 > 0) {
        let share = bytes as f64 / peak as f64 * 100.0;
        out += &format!(
            "{label:<22} {bytes:>16} {:>9.2} {share:>6.1}%\n",
            gib(bytes)
        );
    }
    out += &format!(
        "{:<22} {:>16} {:>9.2} {:>6.1}%\n",
        "peak (nvidia-smi)",
        b.peak(),
        gib(b.peak()),
        100.0
    );
    out
}

/// Symbols for the terms, in `Budget::terms` order; the legend under the bar names them.
const SYMBOLS: [char; 8] = ['W', 'G', 'O', 'A', 'F', 'T', 's', 'c'];

/// A bar `width` characters wide spanning max(peak, total): one run of a symbol per term
/// (at least one character for any non-zero term), `|` above the bar where the usable budget
/// ends and `#` where the card ends, then a legend with each term's GiB.
/// `required_bytes` is what the run needs (the peak less the allocator cache it gives back under
/// pressure, see plan::reclaimable_cache); the verdict compares that with `usable_bytes`.
pub fn bar(
    b: &Budget,
    required_bytes: u64,
    usable_bytes: u64,
    total_bytes: u64,
    width: usize,
) -> String {
    let width = width.max(10);
    let scale = b.peak().max(total_bytes).max(1) as f64;
    let col = |bytes: u64| ((bytes as f64 / scale) * width as f64).round() as usize;
    let mut cells = String::new();
    let mut legend = Vec::new();
    let mut cum = 0u64;
    for ((_, label, bytes), sym) in b.terms().into_iter().zip(SYMBOLS) {
        if bytes == 0 {
            continue;
        }
        let start = cells.chars().count();
        cum += bytes;
        let end = col(cum).max(start + 1);
        cells.extend(std::iter::repeat_n(sym, end - start));
        legend.push(format!("{sym}={label} {:.2}", gib(bytes)));
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
        " {}\n[{}]\n peak {:.2} GiB{}, usable {:.2} GiB (|), card {:.2} GiB (#){}\n {}\n",
        marks.trim_end(),
        cells,
        gib(b.peak()),
        if required_bytes < b.peak() {
            format!(" (needs {:.2} GiB)", gib(required_bytes))
        } else {
            String::new()
        },
        gib(usable_bytes),
        gib(total_bytes),
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
        let t = table(&sample());
        assert!(t.contains("weights"));
        assert!(!t.contains("FSDP"), "zero terms are left out:\n{t}");
        assert!(t.lines().last().unwrap().contains("36.00"), "{t}");
    }

    #[test]
    fn bar_marks_usable_and_total_and_flags_overflow() {
        let b = sample(); // 36 GiB peak
        let s = bar(&b, b.peak(), 22 * GIB, 24 * GIB, 36);
        let lines: Vec<&str> = s.lines().collect();
        // Scale is 1 GiB per column; the marks sit at columns 22 and 24 (offset 1 for '[').
        assert_eq!(lines[0].find('|'), Some(1 + 22));
        assert_eq!(lines[0].find('#'), Some(1 + 24));
        assert_eq!(lines[1].matches('W').count(), 16);
        assert!(s.contains("DOES NOT FIT"));
        let fits = bar(&b, b.peak(), 70 * GIB, 80 * GIB, 40);
        assert!(!fits.contains("DOES NOT FIT"));
    }
}
