//! Human-readable plan output (`vla-launch plan`, and before a launch). Pure string building.

use std::fmt::Write as _;

use super::types::{Candidate, Plan};
use crate::budget::render;
use crate::budget::strategy_name;
use crate::gpu::Gpu;
use crate::units::{fmt_duration, fmt_gib};

/// Text for a terminal: the choice, the global batch equation, the budget, the next alternatives.
/// `explain` adds the budget table and one bar per chosen GPU; `max_steps` (the profile's, when
/// known) gives the total run time of the choice and of each alternative; `padded_batches` (the
/// profile's `model.padded_batches`) is what the memory figures assumed of the batches.
pub fn render_plan(
    profile: &str,
    plan: &Plan,
    gpus: &[Gpu],
    min_global: u32,
    max_steps: Option<u64>,
    explain: bool,
    padded_batches: bool,
) -> String {
    let mut out = String::new();
    let Some(c) = &plan.chosen else {
        let _ = writeln!(out, "No feasible plan for profile '{profile}'.");
        write_reasons(&mut out, plan);
        write_levers(&mut out, plan);
        return out;
    };
    let verdict = if plan.feasible {
        "Plan"
    } else {
        "Does not work"
    };
    let _ = writeln!(out, "{verdict} for profile '{profile}': {}", c.label());
    let _ = writeln!(
        out,
        "  global batch   {} = {} per GPU x {} GPU{} x {} node{} x {} accumulation (minimum {})",
        c.global_batch,
        c.batch_size,
        c.nproc_per_node,
        plural(c.nproc_per_node),
        c.nnodes,
        plural(c.nnodes),
        c.grad_accumulation_steps,
        min_global
    );
    let chosen = chosen_gpus(c, gpus);
    // What must fit leads; the nvidia-smi peak (which may exceed the card) comes after, explained.
    let card = chosen.iter().map(|g| g.total_bytes).min();
    write_memory(&mut out, c, &chosen, card);
    write_memory_assumptions(&mut out, padded_batches);
    let _ = writeln!(
        out,
        "  speed          {:.2} s per optimizer step, {:.1} samples/s (estimate)",
        c.step_time_s, c.samples_per_s
    );
    if let Some(steps) = max_steps {
        write_run_time(&mut out, c, steps);
    }
    let names: Vec<String> = chosen
        .iter()
        .map(|g| format!("{} {}", g.index, g.name))
        .collect();
    let _ = writeln!(out, "  GPUs           {}", names.join(", "));
    if explain {
        write_explanation(&mut out, plan, c, &chosen, card);
    }
    write_alternatives(&mut out, plan, max_steps);
    write_reasons(&mut out, plan);
    write_levers(&mut out, plan);
    out
}

/// The plan's GPUs, in its order.
fn chosen_gpus<'a>(c: &Candidate, gpus: &'a [Gpu]) -> Vec<&'a Gpu> {
    c.gpu_indices
        .iter()
        .filter_map(|i| gpus.iter().find(|g| g.index == *i))
        .collect()
}

/// The memory line (what the run needs of what is usable, and where usable comes from), what
/// nvidia-smi may show beyond it, and the calibration's correction.
fn write_memory(out: &mut String, c: &Candidate, chosen: &[&Gpu], card: Option<u64>) {
    // Usable is the limiting GPU's free memory less the safety margin: say the margin.
    let limiting = chosen
        .iter()
        .min_by_key(|g| g.free_bytes.saturating_sub(c.usable_bytes));
    let usable_from = match (card, limiting) {
        (Some(total), Some(g)) => {
            let margin = fmt_gib(g.free_bytes.saturating_sub(c.usable_bytes));
            if g.free_bytes == total {
                format!(" (card {} less a {margin} safety margin)", fmt_gib(total))
            } else {
                format!(
                    " ({} free of the {} card, less a {margin} safety margin)",
                    fmt_gib(g.free_bytes),
                    fmt_gib(total)
                )
            }
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  memory         needs {} of {} usable per GPU{usable_from} -> {}",
        fmt_gib(c.required_bytes),
        fmt_gib(c.usable_bytes),
        if c.fits { "fits" } else { "DOES NOT FIT" }
    );
    if c.required_bytes < c.predicted_peak_bytes {
        let cache = fmt_gib(c.predicted_peak_bytes - c.required_bytes);
        // nvidia-smi cannot show more than the card: past it the allocator caches less.
        let _ = match card {
            Some(total) if c.predicted_peak_bytes > total => writeln!(
                out,
                "                 nvidia-smi may show the whole card ({}): PyTorch's allocator caches up to {cache} beyond what the run needs where there is room, and hands it back when memory runs short",
                fmt_gib(total)
            ),
            _ => writeln!(
                out,
                "                 nvidia-smi may show up to {}: {cache} of that is PyTorch's allocator cache, handed back when memory runs short",
                fmt_gib(c.predicted_peak_bytes)
            ),
        };
    }
    if let Some(corr) = &c.correction {
        let _ = writeln!(
            out,
            "  calibration    {corr} (the budget model alone: {})",
            fmt_gib(c.model_peak_bytes)
        );
    }
}

/// What the memory figures assume that the launcher cannot see: the batches' padding and the
/// attention kernel (docs/budget-model.md, "Padded batches and the attention kernel").
fn write_memory_assumptions(out: &mut String, padded_batches: bool) {
    let batches = if padded_batches {
        "padded batches"
    } else {
        "unpadded batches (model.padded_batches: false)"
    };
    let _ = writeln!(
        out,
        "                 assumes {batches} and a fused attention kernel (flash or cuDNN SDPA)"
    );
}

/// The total run time of `steps` optimizer steps, with how sure the estimate is.
fn write_run_time(out: &mut String, c: &Candidate, steps: u64) {
    let total = c.step_time_s * steps as f64;
    let sure = match super::speed::relative_error(c.strategy, c.world_size(), c.nnodes) {
        Some(e) => format!(
            "estimate, \u{b1}{:.0}%: {} to {}",
            e * 100.0,
            fmt_duration(total * (1.0 - e)),
            fmt_duration(total * (1.0 + e))
        ),
        None => "estimate; the speed between nodes is not measured: it may be far off".into(),
    };
    let _ = writeln!(
        out,
        "  run time       about {} for {steps} steps ({sure})",
        fmt_duration(total)
    );
}

/// `--explain`: the budget table, one bar per distinct GPU, the step time's parts, host RAM.
fn write_explanation(
    out: &mut String,
    plan: &Plan,
    c: &Candidate,
    chosen: &[&Gpu],
    card: Option<u64>,
) {
    let _ = writeln!(out, "\nMemory budget per GPU ({}):", mode(c));
    // What the run needs is the total; the cache the allocator gives back comes after it.
    let reclaimable = c.predicted_peak_bytes.saturating_sub(c.required_bytes);
    out.push_str(&render::table(&c.budget, reclaimable, card));
    let _ = writeln!(out);
    // One bar per distinct GPU (model, capacity): the budget is the same on every rank.
    let mut shown: Vec<(&str, u64)> = Vec::new();
    for g in chosen {
        if shown.contains(&(g.name.as_str(), g.total_bytes)) {
            continue;
        }
        shown.push((g.name.as_str(), g.total_bytes));
        let same: Vec<String> = chosen
            .iter()
            .filter(|o| o.name == g.name && o.total_bytes == g.total_bytes)
            .map(|o| o.index.to_string())
            .collect();
        let _ = writeln!(
            out,
            "GPU{} {} {} ({} total{}):",
            if same.len() == 1 { "" } else { "s" },
            same.join(","),
            g.name,
            fmt_gib(g.total_bytes),
            if same.len() == 1 { "" } else { " each" }
        );
        out.push_str(&render::bar(
            &c.budget,
            c.required_bytes,
            reclaimable,
            c.usable_bytes,
            g.total_bytes,
            60,
        ));
        let _ = writeln!(out);
    }
    let t = &c.step_time;
    let _ = writeln!(
        out,
        "Step time: compute {:.2} s + fixed per micro-batch {:.2} s + communication {:.2} s + optimizer {:.2} s",
        t.compute_s, t.fixed_s, t.communication_s, t.optimizer_s
    );
    if let Some(h) = &plan.host_ram {
        let _ = writeln!(
            out,
            "Host RAM per node: {} steady, {} at checkpoint time",
            fmt_gib(h.steady_bytes),
            fmt_gib(h.checkpoint_peak_bytes)
        );
    }
}

/// The next best candidates, each with why it was not chosen.
fn write_alternatives(out: &mut String, plan: &Plan, max_steps: Option<u64>) {
    if !plan.alternatives.is_empty() {
        let _ = writeln!(out, "\nNext best:");
        for a in &plan.alternatives {
            let _ = writeln!(
                out,
                "  - {} (needs {}{}): {}",
                a.candidate.label(),
                fmt_gib(a.candidate.required_bytes),
                max_steps
                    .map(|n| format!(
                        ", about {}",
                        fmt_duration(a.candidate.step_time_s * n as f64)
                    ))
                    .unwrap_or_default(),
                a.why_not
            );
        }
    }
}

fn mode(c: &Candidate) -> String {
    format!(
        "{}, batch {}, {}",
        strategy_name(c.strategy),
        c.batch_size,
        if c.gradient_checkpointing {
            "checkpointing"
        } else {
            "no checkpointing"
        }
    )
}

fn write_reasons(out: &mut String, plan: &Plan) {
    if plan.reasons.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nWhy:");
    for r in &plan.reasons {
        let _ = writeln!(out, "  - {r}");
    }
}

fn write_levers(out: &mut String, plan: &Plan) {
    if plan.levers.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nWhat would make it fit:");
    for l in &plan.levers {
        let _ = writeln!(out, "  - {l}");
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}
