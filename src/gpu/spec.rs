//! `--gpus SPEC`: GPUs described instead of queried (a login node has none).
//!
//! SPEC is a comma list of `COUNTxSIZE` or `COUNTxMODEL`: `4x24GiB`, `2x80GB`, `4xrtx4090`,
//! `1xh100,1xa100-40gb`; `*` and `×` are read as `x` (`4*rtx4090`). SIZE units: GiB and MiB
//! (binary), GB and MB (decimal, 10^9 and 10^6), any letter case; a decimal point is allowed
//! (`1.5GiB`).
//!
//! GPU names as people say them:
//! - A whole number of GB that cards are sold with (`24GB`, `80GB`: known.rs `marketed_gb`) is that
//!   marketed size, not 10^9 bytes: vendors mean GiB, and NVML shows less than that (reserved
//!   memory, ECC on data-centre cards). It is planned with the least capacity NVML shows for a card
//!   sold with it (24GB: 22.49 GiB, an A10 with ECC; an RTX 4090 shows 23.99 GiB), so the plan fits
//!   any of them; a note names the cards and how to be exact (the model, or GiB). Other GB sizes
//!   (`75GB`) stay decimal.
//! - A bare model number (`4x4090`) is refused with "did you mean 4xrtx4090?": without a unit it is
//!   no size. A mistyped model gets the closest known one; another separator (`4-rtx4090`) gets the
//!   spelling with `x`.
//! - A name sold with different memory sizes (`a100`: 40 or 80 GB) is refused with the choices.
//!
//! Described GPUs are taken as idle: free = total minus the driver's reserve that NVML shows
//! on an idle GPU (DRIVER_RESERVE_BYTES), so a plan made with `--gpus 1xh100` matches one made
//! on the real H100. The CUDA context of the training process is the budget's business.

use thiserror::Error;

use super::cuda_visible::echo;
use super::device::Gpu;
use super::known::{self, KnownGpu};
use crate::units::{GIB, MIB, fmt_gib};

/// NVML free memory of an idle GPU is total minus this: measured 480 MiB on every H100 80GB HBM3
/// (total 81559 MiB, free 81079 MiB, driver 580.159.04, 4-GPU host).
pub const DRIVER_RESERVE_BYTES: u64 = 480 * MIB;

/// More GPUs than any single plan could use: a typo (`10000xh100`), not a cluster.
pub const MAX_GPUS: u64 = 1024;
/// The largest capacity accepted for one GPU (a typo guard well above any real card).
pub const MAX_GPU_BYTES: u64 = 16 * 1024 * GIB;
/// Below this a GPU cannot hold anything useful (and would not cover the driver reserve).
pub const MIN_GPU_BYTES: u64 = GIB;

const FORMS: &str = "COUNTxSIZE or COUNTxMODEL, comma-separated, e.g. 4x24GiB, 2x80GB, 4xrtx4090, 1xh100,1xa100-40gb";
const UNITS: &str = "GiB, GB, MiB or MB";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("--gpus is empty; expected {FORMS}")]
    Empty,
    #[error("--gpus has an empty item at position {position} (stray comma?); expected {FORMS}")]
    EmptyItem { position: usize },
    #[error("--gpus item {item} has no COUNTx prefix{hint}; expected {FORMS}")]
    MissingCount { item: String, hint: String },
    #[error("--gpus item {item}: count {count} is not a whole number of GPUs from 1 to {MAX_GPUS}")]
    BadCount { item: String, count: String },
    #[error("--gpus item {item} names no size or model after the x; expected {FORMS}")]
    MissingWhat { item: String },
    #[error("--gpus item {item}: {size} is not a size (a number followed by {UNITS})")]
    BadSize { item: String, size: String },
    #[error("--gpus item {item}: unit {unit} is not one of {UNITS}")]
    BadUnit { item: String, unit: String },
    #[error(
        "--gpus item {item}: {size} per GPU is outside the accepted range (1 GiB to 16384 GiB)"
    )]
    SizeOutOfRange { item: String, size: String },
    #[error(
        "--gpus item {item}: unknown GPU model {model}{hint}; known models: {known}; or give a size such as 24GiB"
    )]
    UnknownModel {
        item: String,
        model: String,
        hint: String,
        known: String,
    },
    #[error(
        "--gpus item {item}: {number} has no unit, so it is no size; it is a model number: did you mean {suggestion}?"
    )]
    ModelNumber {
        item: String,
        number: String,
        suggestion: String,
    },
    #[error("--gpus item {item}: {model} is sold with different memory sizes; write {choices}")]
    AmbiguousModel {
        item: String,
        model: String,
        choices: String,
    },
    #[error(
        "--gpus item {item}: the count and the size or model are joined by x (or *), not {separator}: did you mean {suggestion}?"
    )]
    WrongSeparator {
        item: String,
        separator: String,
        suggestion: String,
    },
    #[error(
        "--gpus item {item}: {name} has compute capability {major}.{minor}, and bf16 training needs 8.0 or newer (Ampere)"
    )]
    NoBf16 {
        item: String,
        name: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("--gpus describes {total} GPUs; at most {MAX_GPUS} are accepted")]
    TooMany { total: u64 },
    #[error(
        "--gpus item {item}: the {name} ({gb} GB) is not among the models vla-launch knows; describe it by its memory, {count}x{gb}GB, or plan on the node itself, where NVML reads it"
    )]
    Unlisted {
        item: String,
        name: &'static str,
        gb: u64,
        count: String,
    },
    #[error("--gpus item {item}: the count comes first: did you mean {suggestion}?")]
    CountLast { item: String, suggestion: String },
}

/// Real cards that are not in known.rs but whose names are one edit from one that is (`h20` is
/// not a mistyped `h200`): named as what they are, with their marketed memory, instead of a
/// wrong "did you mean".
const UNLISTED: &[(&str, &str, u64)] = &[
    ("h20", "NVIDIA H20", 96),
    ("h800", "NVIDIA H800", 80),
    ("a800", "NVIDIA A800", 80),
    ("l20", "NVIDIA L20", 48),
    ("a10g", "NVIDIA A10G", 24),
];

fn unlisted(item: &str, count: &str, what: &str) -> Option<SpecError> {
    let wanted = what.trim().to_ascii_lowercase();
    let (_, name, gb) = UNLISTED.iter().find(|(k, _, _)| *k == wanted)?;
    Some(SpecError::Unlisted {
        item: echo(item),
        name,
        gb: *gb,
        count: count.to_string(),
    })
}

/// A count-less item that names a model, a model number or a size: how many? (Issue 26: a bare
/// model is not taken as one card, because the count changes the plan entirely; the message
/// asks, giving one card and several.)
fn bare_hint(item: &str) -> Option<String> {
    let what = match parse_what(item, "1", item) {
        Ok(Kind::Model(m)) => m.key.to_string(),
        Ok(_) => item.trim().to_string(),
        Err(SpecError::ModelNumber { suggestion, .. }) => {
            suggestion.trim_start_matches("1x").into()
        }
        Err(_) => return None,
    };
    Some(format!(
        " (how many? 1x{what} for one card, 8x{what} for eight)"
    ))
}

/// `rtx4090x4`: a model or size, then x and the count.
fn count_last(item: &str) -> Option<SpecError> {
    let (what, count) = item.rsplit_once(SEPARATORS)?;
    let count = count.trim();
    if count.is_empty() || count.len() > 6 || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_what(item, count, what.trim()).ok()?;
    Some(SpecError::CountLast {
        item: echo(item),
        suggestion: format!("{count}x{}", what.trim()),
    })
}

/// What one item describes.
enum Kind {
    Model(&'static KnownGpu),
    Size(u64),
    /// A size cards are sold with (`24GB`): the cards, the smallest NVML capacity first.
    Sold {
        gb: u64,
        cards: Vec<&'static KnownGpu>,
    },
}

/// Characters read as the `x` between count and size or model.
const SEPARATORS: [char; 4] = ['x', 'X', '*', '×'];

/// `24GB` -> Some(24) when cards are sold with 24 GB.
fn marketed_gb(what: &str) -> Option<u64> {
    let lower = what.to_ascii_lowercase();
    let digits = lower.strip_suffix("gb")?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let gb: u64 = digits.parse().ok()?;
    (!known::sold_with(gb).is_empty()).then_some(gb)
}

/// Parses a size such as `24GiB`, `80GB`, `1.5GiB`, `40960MiB` into bytes.
pub fn parse_size(item: &str, s: &str) -> Result<u64, SpecError> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad_size = || SpecError::BadSize {
        item: echo(item),
        size: echo(s),
    };
    let unit_bytes: u128 = match unit.to_ascii_lowercase().as_str() {
        "gib" => u128::from(GIB),
        "mib" => u128::from(MIB),
        "gb" => 1_000_000_000,
        "mb" => 1_000_000,
        "" => return Err(bad_size()),
        _ => {
            return Err(SpecError::BadUnit {
                item: echo(item),
                unit: echo(unit),
            });
        }
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    // Long digit strings are rejected before arithmetic so nothing can overflow.
    if whole.is_empty()
        || whole.len() > 12
        || frac.len() > 6
        || !digits_ok(whole)
        || !digits_ok(frac)
    {
        return Err(bad_size());
    }
    let whole: u128 = whole.parse().map_err(|_| bad_size())?;
    let frac_scaled: u128 = format!("{frac:0<6}").parse().map_err(|_| bad_size())?;
    let bytes = whole * unit_bytes + frac_scaled * unit_bytes / 1_000_000;
    match u64::try_from(bytes) {
        Ok(b) if (MIN_GPU_BYTES..=MAX_GPU_BYTES).contains(&b) => Ok(b),
        _ => Err(SpecError::SizeOutOfRange {
            item: echo(item),
            size: echo(s),
        }),
    }
}

/// `what` of an item whose count is `count` (used in suggestions).
fn parse_what(item: &str, count: &str, what: &str) -> Result<Kind, SpecError> {
    if what.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '+')) {
        if what.bytes().all(|b| b.is_ascii_digit())
            && let Some(model) = known::lookup_alias(what)
        {
            return Err(SpecError::ModelNumber {
                item: echo(item),
                number: echo(what),
                suggestion: format!("{count}x{}", model.key),
            });
        }
        if let Some(gb) = marketed_gb(what) {
            let mut cards = known::sold_with(gb);
            cards.sort_by_key(|g| g.total_mib);
            return Ok(Kind::Sold { gb, cards });
        }
        return parse_size(item, what).map(Kind::Size);
    }
    if let Some(cards) = known::ambiguous(what) {
        let choices: Vec<String> = cards
            .iter()
            .map(|g| format!("{count}x{} ({})", g.key, fmt_gib(g.total_bytes())))
            .collect();
        return Err(SpecError::AmbiguousModel {
            item: echo(item),
            model: echo(what),
            choices: choices.join(" or "),
        });
    }
    if let Some(e) = unlisted(item, count, what) {
        return Err(e);
    }
    let model = known::lookup_alias(what).ok_or_else(|| SpecError::UnknownModel {
        item: echo(item),
        model: echo(what),
        hint: known::suggest(what)
            .map(|k| format!(" (did you mean {count}x{k}?)"))
            .unwrap_or_default(),
        known: known::known_keys().join(", "),
    })?;
    if !model.supports_bf16() {
        let (major, minor) = model.compute_capability;
        return Err(SpecError::NoBf16 {
            item: echo(item),
            name: model.nvml_name(),
            major,
            minor,
        });
    }
    Ok(Kind::Model(model))
}

/// `4-rtx4090`, `4:h100`: a count, another separator, then a valid size or model.
fn wrong_separator(item: &str) -> Option<SpecError> {
    let digits = item.len() - item.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 6 {
        return None;
    }
    let (count, spaced) = item.split_at(digits);
    let rest = spaced.trim_start();
    let first = rest.chars().next()?;
    let (separator, what) = if first.is_ascii_alphanumeric() && rest.len() < spaced.len() {
        // `4 rtx4090`: a space where the x goes.
        (' ', rest.trim())
    } else if first.is_ascii_alphanumeric() || SEPARATORS.contains(&first) || first == '.' {
        return None;
    } else {
        (first, rest[first.len_utf8()..].trim())
    };
    if what.is_empty() || parse_what(item, count, what).is_err() {
        return None;
    }
    Some(SpecError::WrongSeparator {
        item: echo(item),
        separator: echo(&separator.to_string()),
        suggestion: format!("{count}x{what}"),
    })
}

/// `4x24GiB` -> (4, what).
fn parse_item(item: &str) -> Result<(u64, Kind), SpecError> {
    let Some((count, what)) = item.split_once(SEPARATORS) else {
        if let Some(e) = wrong_separator(item) {
            return Err(e);
        }
        if let Some(e) = unlisted(item, "1", item) {
            return Err(e);
        }
        return Err(SpecError::MissingCount {
            item: echo(item),
            hint: bare_hint(item).unwrap_or_default(),
        });
    };
    let count = count.trim();
    if count.is_empty() {
        return Err(SpecError::MissingCount {
            item: echo(item),
            hint: String::new(),
        });
    }
    let bad_count = || SpecError::BadCount {
        item: echo(item),
        count: echo(count),
    };
    if !count.bytes().all(|b| b.is_ascii_digit()) || count.len() > 6 {
        if let Some(e) = wrong_separator(item) {
            return Err(e);
        }
        // `rtx4090` splits at its own x: say the count is missing rather than "rt" is bad.
        if !count.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
            if let Some(hint) = bare_hint(item) {
                return Err(SpecError::MissingCount {
                    item: echo(item),
                    hint,
                });
            }
            if let Some(e) = count_last(item) {
                return Err(e);
            }
        }
        return Err(bad_count());
    }
    let n: u64 = count.parse().map_err(|_| bad_count())?;
    if n == 0 || n > MAX_GPUS {
        return Err(bad_count());
    }
    let what = what.trim();
    if what.is_empty() {
        return Err(SpecError::MissingWhat { item: echo(item) });
    }
    Ok((n, parse_what(item, count, what)?))
}

/// Described GPUs and what the description left to interpretation (marketed sizes).
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub gpus: Vec<Gpu>,
    /// One line per interpreted item, for the plan's warnings.
    pub notes: Vec<String>,
}

/// Builds the described GPUs, in spec order, indexed 0..n.
pub fn parse_gpus_spec(spec: &str) -> Result<Vec<Gpu>, SpecError> {
    describe_gpus(spec).map(|d| d.gpus)
}

/// [`parse_gpus_spec`] with the notes that say how a marketed size was read.
pub fn describe_gpus(spec: &str) -> Result<Described, SpecError> {
    if spec.trim().is_empty() {
        return Err(SpecError::Empty);
    }
    let mut items = Vec::new();
    let mut total: u64 = 0;
    for (position, item) in spec.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            return Err(SpecError::EmptyItem {
                position: position + 1,
            });
        }
        let (count, kind) = parse_item(item)?;
        total += count;
        if total > MAX_GPUS {
            return Err(SpecError::TooMany { total });
        }
        items.push((item, count, kind));
    }
    let mut gpus = Vec::with_capacity(total as usize);
    let mut notes = Vec::new();
    for (item, count, kind) in items {
        let (name, total_bytes, cc) = match &kind {
            Kind::Model(m) => (
                m.nvml_name().to_string(),
                m.total_bytes(),
                Some(m.compute_capability),
            ),
            Kind::Size(bytes) => (
                format!("GPU with {} (described)", fmt_gib(*bytes)),
                *bytes,
                None,
            ),
            Kind::Sold { gb, cards } => {
                notes.push(sold_note(item, count, *gb, cards));
                let least = cards[0];
                (
                    format!("GPU sold as {gb} GB (described)"),
                    least.total_bytes(),
                    None,
                )
            }
        };
        for _ in 0..count {
            let index = gpus.len() as u32;
            gpus.push(Gpu {
                index,
                name: name.clone(),
                uuid: format!("described-{index}"),
                pci_bus_id: None,
                total_bytes,
                free_bytes: total_bytes.saturating_sub(DRIVER_RESERVE_BYTES),
                used_bytes: 0,
                compute_capability: cc,
                processes: Vec::new(),
                described: true,
            });
        }
    }
    Ok(Described { gpus, notes })
}

/// Why `4x24GB` is planned with 22.49 GiB, and how to be exact.
fn sold_note(item: &str, count: u64, gb: u64, cards: &[&'static KnownGpu]) -> String {
    let least = cards[0];
    let listed: Vec<String> = cards
        .iter()
        .map(|g| format!("{} ({})", g.key, fmt_gib(g.total_bytes())))
        .collect();
    let models: Vec<String> = cards.iter().map(|g| format!("{count}x{}", g.key)).collect();
    format!(
        "--gpus {item}: {gb} GB is the memory {} sold with, and NVML shows less (reserved memory, ECC): \
         planning with {}, the least of them ({}); for one card's own figure name it ({}), \
         or write {count}x{gb}GiB for exactly {gb} GiB",
        if cards.len() == 1 {
            format!("{} is", listed[0])
        } else {
            format!("{} are", listed.join(", "))
        },
        fmt_gib(least.total_bytes()),
        least.key,
        models.join(", "),
        item = echo(item),
    )
}
