//! `--gpus SPEC`: GPUs described instead of queried (a login node has none).
//!
//! SPEC is a comma list of `COUNTxSIZE` or `COUNTxMODEL`: `4x24GiB`, `2x80GB`, `4xrtx4090`,
//! `1xh100,1xa100-40gb`. SIZE units: GiB and MiB (binary), GB and MB (decimal, 10^9 and 10^6),
//! any letter case; a decimal point is allowed (`1.5GiB`).
//! Described GPUs are taken as idle: free = total minus the driver's reserve that NVML shows
//! on an idle GPU (DRIVER_RESERVE_BYTES), so a plan made with `--gpus 1xh100` matches one made
//! on the real H100. The CUDA context of the training process is the budget's business.

use thiserror::Error;

use super::cuda_visible::echo;
use super::device::Gpu;
use super::known::{self, KnownGpu};
use crate::units::{GIB, MIB};

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
        "--gpus item {item}: unknown GPU model {model}; known models: {known}; or give a size such as 24GiB"
    )]
    UnknownModel {
        item: String,
        model: String,
        known: String,
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
}

/// What one item describes.
enum Kind {
    Model(&'static KnownGpu),
    Size(u64),
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

fn parse_what(item: &str, what: &str) -> Result<Kind, SpecError> {
    if what.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '+')) {
        return parse_size(item, what).map(Kind::Size);
    }
    let model = known::lookup_alias(what).ok_or_else(|| SpecError::UnknownModel {
        item: echo(item),
        model: echo(what),
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

/// `4x24GiB` -> (4, what).
fn parse_item(item: &str) -> Result<(u64, Kind), SpecError> {
    let Some((count, what)) = item.split_once(['x', 'X']) else {
        let hint = if parse_what(item, item).is_ok() {
            format!(" (did you mean 1x{}?)", item)
        } else {
            String::new()
        };
        return Err(SpecError::MissingCount {
            item: echo(item),
            hint,
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
        // `rtx4090` splits at its own x: say the count is missing rather than "rt" is bad.
        if !count.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
            && parse_what(item, item).is_ok()
        {
            return Err(SpecError::MissingCount {
                item: echo(item),
                hint: format!(" (did you mean 1x{item}?)"),
            });
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
    Ok((n, parse_what(item, what)?))
}

/// Builds the described GPUs, in spec order, indexed 0..n.
pub fn parse_gpus_spec(spec: &str) -> Result<Vec<Gpu>, SpecError> {
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
        items.push((count, kind));
    }
    let mut gpus = Vec::with_capacity(total as usize);
    for (count, kind) in items {
        for _ in 0..count {
            let index = gpus.len() as u32;
            let (name, total_bytes, cc) = match kind {
                Kind::Model(m) => (
                    m.nvml_name().to_string(),
                    m.total_bytes(),
                    Some(m.compute_capability),
                ),
                Kind::Size(bytes) => (
                    format!("GPU with {} (described)", crate::units::fmt_gib(bytes)),
                    bytes,
                    None,
                ),
            };
            gpus.push(Gpu {
                index,
                name,
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
    Ok(gpus)
}
