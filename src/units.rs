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

/// A duration for people: "45 s", "12 min", "5.3 h", "11.9 days".
pub fn fmt_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else if secs < 90.0 * 60.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 36.0 * 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86400.0)
    }
}

/// GiB with `digits` decimals: "12.3 GiB" for 1 (doctor's coarse host figures).
pub fn fmt_gib_digits(bytes: u64, digits: usize) -> String {
    format!("{:.digits$} GiB", gib(bytes))
}
