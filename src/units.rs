//! Byte-size units shared by parsing and printing.

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Bytes as GiB with two decimals, the unit every table in this project uses.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// "12.34 GiB".
pub fn fmt_gib(bytes: u64) -> String {
    fmt_gib_digits(bytes, 2)
}

/// GiB with `digits` decimals: "12.3 GiB" for 1 (doctor's coarse host figures).
pub fn fmt_gib_digits(bytes: u64, digits: usize) -> String {
    format!("{:.digits$} GiB", gib(bytes))
}
