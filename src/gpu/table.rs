//! The human table of `vla-launch gpus`.

use super::device::Gpu;
use crate::units::fmt_gib;

fn processes_cell(gpu: &Gpu) -> String {
    if gpu.processes.is_empty() {
        return "-".into();
    }
    gpu.processes
        .iter()
        .map(|p| {
            let name = p.name.as_deref().unwrap_or("?");
            match p.used_bytes {
                Some(b) => format!("{} {name} {}", p.pid, fmt_gib(b)),
                None => format!("{} {name}", p.pid),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One row per GPU; columns padded to the widest cell.
pub fn render_table(gpus: &[Gpu]) -> String {
    let header = [
        "IDX",
        "NAME",
        "UUID",
        "TOTAL",
        "USED",
        "FREE",
        "CC",
        "PROCESSES (pid name memory)",
    ];
    let rows: Vec<[String; 8]> = gpus
        .iter()
        .map(|g| {
            [
                g.index.to_string(),
                g.name.clone(),
                g.uuid.clone(),
                fmt_gib(g.total_bytes),
                fmt_gib(g.used_bytes),
                fmt_gib(g.free_bytes),
                g.compute_capability
                    .map(|(a, b)| format!("{a}.{b}"))
                    .unwrap_or_else(|| "?".into()),
                processes_cell(g),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                // Numbers read best right-aligned.
                let right = matches!(i, 0 | 3 | 4 | 5);
                let pad = " ".repeat(w - cell.chars().count());
                if right {
                    out.push_str(&pad);
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&pad);
                }
                out.push_str("  ");
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
