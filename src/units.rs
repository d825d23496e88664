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
    format!("{:.2} GiB", gib(bytes))
}
