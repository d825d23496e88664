//! "Did you mean": the closest of a few known words to a mistyped one.

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each count 1 (`alhoa` is 1 from `aloha`).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The known word closest to `word`, if it is close: at most 2 edits and at most a third of the
/// word (at least 1). Ties go to the first in `known`.
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let n = word.chars().count();
    if n > 64 {
        return None;
    }
    let limit = (n / 3).clamp(1, 2);
    known
        .into_iter()
        .map(|k| (distance(word, k), k))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_count_once_and_far_words_are_not_suggested() {
        assert_eq!(distance("alhoa", "aloha"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(
            closest("alhoa", ["libero", "aloha", "bridge"]),
            Some("aloha")
        );
        assert_eq!(closest("librro", ["libero", "aloha"]), Some("libero"));
        assert_eq!(closest("xyz", ["libero", "aloha"]), None);
        assert_eq!(
            closest("max_step", ["max_steps", "save_freq"]),
            Some("max_steps")
        );
    }
}
