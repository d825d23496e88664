//! The plan in words: why this configuration, what came close, why nothing fits, and the levers
//! that would make an infeasible plan fit (each checked by re-planning with it).

use crate::budget::{Strategy, strategy_name};
use crate::gpu::Gpu;
use crate::model::ModelSpec;
use crate::units::fmt_gib;

use super::room::{ROOM_WANTED, STEP_TIME_TOLERANCE, room, tight};
use super::types::{Alternative, Candidate, Pins, Plan, PlanError, PlanInput};

pub(super) fn why_chosen(
    best: &Candidate,
    g: u32,
    gpus: &[Gpu],
    preferred_over: Option<&Candidate>,
) -> String {
    let mut s = format!(
        "{}: {} -- {:.2} s per optimizer step, {:.1} samples/s; global batch {} = {} x {} x {} x {}{}",
        if preferred_over.is_some() {
            "fastest configuration with room"
        } else {
            "fastest configuration that fits"
        },
        best.label(),
        best.step_time_s,
        best.samples_per_s,
        best.global_batch,
        best.batch_size,
        best.nproc_per_node,
        best.nnodes,
        best.grad_accumulation_steps,
        if best.global_batch > g {
            format!(" (above {g}: the least the world size allows)")
        } else {
            String::new()
        }
    );
    if let Some(tight) = preferred_over {
        s.push_str(&format!(
            "; it leaves {} of room per GPU where {} is {:.0}% faster by the estimate, within the step-time model's {:.0}% error, but leaves only {} (the memory model is within {:.0}%)",
            fmt_gib(room(best)),
            tight.label(),
            (1.0 - tight.step_time_s / best.step_time_s) * 100.0,
            STEP_TIME_TOLERANCE * 100.0,
            fmt_gib(room(tight)),
            ROOM_WANTED * 100.0
        ));
    }
    if (best.nproc_per_node as usize) < gpus.len() {
        let left: Vec<String> = gpus
            .iter()
            .filter(|gpu| !best.gpu_indices.contains(&gpu.index))
            .map(|gpu| {
                format!(
                    "GPU {} ({}, {} free)",
                    gpu.index,
                    gpu.name,
                    fmt_gib(gpu.free_bytes)
                )
            })
            .collect();
        s.push_str(&format!(
            "; left out {}: using it would be slower or would not fit",
            left.join(", ")
        ));
    }
    s
}

/// The chosen configuration leaves less room than the memory model's error: say so, and what the
/// nearest configuration with room would cost.
pub(super) fn tight_note(best: &Candidate, roomy: Option<&Candidate>) -> String {
    let mut s = format!(
        "little room: it leaves {} per GPU beyond what it is predicted to need, less than the memory model's {:.0}% error",
        fmt_gib(room(best)),
        ROOM_WANTED * 100.0
    );
    match roomy {
        Some(c) => s.push_str(&format!(
            "; the fastest configuration with room, {} (leaves {}), is {:.0}% slower, beyond the step-time model's {:.0}% error: pin it with --strategy {} --batch-size {} --grad-accum {} --checkpointing {} if this one runs out of memory",
            c.label(),
            fmt_gib(room(c)),
            (c.step_time_s / best.step_time_s - 1.0) * 100.0,
            STEP_TIME_TOLERANCE * 100.0,
            strategy_name(c.strategy).to_lowercase(),
            c.batch_size,
            c.grad_accumulation_steps,
            if c.gradient_checkpointing { "on" } else { "off" }
        )),
        None => s.push_str(
            "; no configuration that fits leaves more (--oom-retries re-plans if it runs out of memory)",
        ),
    }
    s
}

/// For each (strategy, checkpointing) mode on the chosen GPUs: the largest batch that fits, or why none.
pub(super) fn best_per_mode(all: &[Candidate], best: &Candidate) -> Vec<String> {
    let mut out = Vec::new();
    for strategy in [Strategy::Ddp, Strategy::Fsdp] {
        for ckpt in [false, true] {
            let same: Vec<&Candidate> = all
                .iter()
                .filter(|c| {
                    c.strategy == strategy
                        && c.gradient_checkpointing == ckpt
                        && c.gpu_indices == best.gpu_indices
                })
                .collect();
            if same.is_empty() {
                continue;
            }
            let mode = format!(
                "{} {} on {} GPU{}",
                strategy_name(strategy),
                if ckpt {
                    "with checkpointing"
                } else {
                    "without checkpointing"
                },
                best.nproc_per_node,
                if best.nproc_per_node == 1 { "" } else { "s" }
            );
            match same.iter().filter(|c| c.fits).max_by_key(|c| c.batch_size) {
                Some(c) => out.push(format!(
                    "{mode}: batch {} fits (needs {} of {})",
                    c.batch_size,
                    fmt_gib(c.required_bytes),
                    fmt_gib(c.usable_bytes)
                )),
                None => {
                    let smallest = same.iter().min_by_key(|c| c.batch_size).expect("non-empty");
                    out.push(format!(
                        "{mode}: does not fit even at batch {} (needs {} > {})",
                        smallest.batch_size,
                        fmt_gib(smallest.required_bytes),
                        fmt_gib(smallest.usable_bytes)
                    ))
                }
            }
        }
    }
    out
}

pub(super) fn alternatives(ranked: &[&Candidate], best: &Candidate) -> Vec<Alternative> {
    let mut out: Vec<Alternative> = Vec::new();
    for c in ranked.iter().skip(1) {
        // One line per distinct shape: skip candidates that differ from one already listed only
        // in which GPUs of the same count they use.
        if out.iter().any(|a| {
            a.candidate.strategy == c.strategy
                && a.candidate.gradient_checkpointing == c.gradient_checkpointing
                && a.candidate.batch_size == c.batch_size
                && a.candidate.nproc_per_node == c.nproc_per_node
        }) {
            continue;
        }
        let slower = (c.step_time_s / best.step_time_s - 1.0) * 100.0;
        let mut why = if c.step_time_s < best.step_time_s && tight(c) {
            format!(
                "{:.0}% faster per optimizer step by the estimate ({:.2} vs {:.2} s, within the step-time model's error) but leaves only {} of room",
                -slower,
                c.step_time_s,
                best.step_time_s,
                fmt_gib(room(c))
            )
        } else {
            format!(
                "{:.0}% slower per optimizer step ({:.2} vs {:.2} s)",
                slower, c.step_time_s, best.step_time_s
            )
        };
        if c.step_time_s < best.step_time_s {
            // Said above; the notes below explain a slower configuration.
        } else if c.strategy == Strategy::Fsdp && best.strategy == Strategy::Ddp {
            why.push_str("; FSDP pays all-gathers and reduce-scatters every micro-batch");
        } else if c.gradient_checkpointing && !best.gradient_checkpointing {
            why.push_str("; checkpointing recomputes the Llama forward");
        } else if c.grad_accumulation_steps > best.grad_accumulation_steps {
            why.push_str("; smaller micro-batches pay the fixed per-micro-batch cost more often");
        }
        out.push(Alternative {
            candidate: (*c).clone(),
            why_not: why,
            predicted_run_time_s: None,
        });
        if out.len() == 3 {
            break;
        }
    }
    out
}

pub(super) fn why_nothing_fits(all: &[Candidate], input: &PlanInput) -> String {
    let over = |c: &&Candidate| c.required_bytes as f64 / c.usable_bytes.max(1) as f64;
    let closest = all.iter().min_by(|a, b| over(a).total_cmp(&over(b)));
    let n = input.gpus.len();
    match closest {
        Some(c) => {
            let mut s = format!(
                "nothing fits: the configuration closest to fitting, {}, needs {} per GPU but only {} is usable (free memory minus the margin) on {}",
                c.label(),
                fmt_gib(c.required_bytes),
                fmt_gib(c.usable_bytes),
                gpus_phrase(n, &input.gpus[0].name)
            );
            // Fewer GPUs can need less each (no FSDP buffers, no NCCL): say so, and the least
            // on all of them (issue 26: a 1-GPU configuration read as if for both).
            if (c.nproc_per_node as usize) < n {
                s.push_str(&format!("; it uses {} of the {n} GPUs", c.nproc_per_node));
                if let Some(all_of_them) = all
                    .iter()
                    .filter(|a| a.nproc_per_node as usize == n)
                    .min_by(|a, b| over(a).total_cmp(&over(b)))
                {
                    s.push_str(&format!(
                        "; on {} the least is {}, {} per GPU",
                        if n == 2 {
                            "both".to_string()
                        } else {
                            format!("all {n}")
                        },
                        all_of_them.label(),
                        fmt_gib(all_of_them.required_bytes)
                    ));
                }
            }
            s
        }
        None => {
            "nothing fits: no strategy is allowed for these GPUs (FSDP needs 2 or more GPUs)".into()
        }
    }
}

/// What would make an infeasible plan fit, each checked by planning again with that change.
pub(super) fn levers(
    input: &PlanInput,
    replan: &dyn Fn(&PlanInput) -> Result<Plan, PlanError>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut try_with = |what: String, f: &dyn Fn(&mut PlanInput, &mut ModelSpec, &mut Vec<Gpu>)| {
        let mut spec = input.spec.clone();
        let mut gpus = input.gpus.to_vec();
        let mut inp = input.clone();
        inp.pins = Pins::default();
        f(&mut inp, &mut spec, &mut gpus);
        inp.spec = &spec;
        inp.gpus = &gpus;
        let verdict = match replan(&inp) {
            Ok(p) if p.feasible => {
                let c = p.chosen.expect("feasible plan has a choice");
                format!(
                    "fits: {} (needs {} of {} per GPU)",
                    c.label(),
                    fmt_gib(c.required_bytes),
                    fmt_gib(c.usable_bytes)
                )
            }
            _ => "still does not fit".into(),
        };
        out.push(format!("{what}: {verdict}"));
    };
    let p = &input.policy;
    let add_script_flags = |inp: &mut PlanInput| {
        inp.policy.script_accepts_fsdp = true;
        inp.policy.script_accepts_checkpointing = true;
        if !inp.policy.strategies.contains(&Strategy::Fsdp) {
            inp.policy.strategies.push(Strategy::Fsdp);
        }
    };
    if !p.script_accepts_checkpointing {
        try_with(
            "with --gradient_checkpointing in the script".into(),
            &|inp, _, _| inp.policy.script_accepts_checkpointing = true,
        );
    }
    for n in [2usize, 4, 8] {
        if n <= input.gpus.len() {
            continue;
        }
        let needs_flags = !p.script_accepts_fsdp || !p.script_accepts_checkpointing;
        let what = format!(
            "{}{}",
            if p.fsdp_unavailable.is_some() {
                "with a torch that runs FSDP and "
            } else if needs_flags {
                "with --use_fsdp and --gradient_checkpointing in the script and "
            } else {
                "with "
            },
            gpus_phrase(n, &input.gpus[0].name)
        );
        try_with(what, &|inp, _, gpus| {
            add_script_flags(inp);
            let template = gpus[0].clone();
            *gpus = (0..n as u32)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("described-{i}"),
                    processes: Vec::new(),
                    ..template.clone()
                })
                .collect();
        });
    }
    if input.spec.lora_rank > 8 {
        try_with(
            "with LoRA rank 8 (--set train.lora_rank=8)".into(),
            &|_, spec, _| spec.lora_rank = 8,
        );
    }
    if input.spec.num_images > 1 {
        let n = input.spec.num_images - 1;
        try_with(
            format!(
                "with {n} image{} (--set train.num_images_in_input={n})",
                if n == 1 { "" } else { "s" }
            ),
            &|_, spec, _| spec.num_images = n,
        );
    }
    if input.gpus.len() > 1 && !p.script_accepts_fsdp {
        // Computed with both flags (FSDP alone rarely fits where DDP does not), so named with
        // both when the script lacks both (issue 16: "with --use_fsdp: fits" was not true).
        let what = if p.fsdp_unavailable.is_some() {
            "with a torch that runs FSDP (see the reasons)"
        } else if p.script_accepts_checkpointing {
            "with --use_fsdp in the script"
        } else {
            "with --use_fsdp and --gradient_checkpointing in the script"
        };
        try_with(what.into(), &|inp, _, _| add_script_flags(inp));
    }
    out
}

/// `n` GPUs named `name`, as a phrase: "4 GPUs with 10.00 GiB each (described)" for a
/// described size ("GPU with 10.00 GiB (described)"), "4 x NVIDIA H100 80GB HBM3" for a model.
pub(super) fn gpus_phrase(n: usize, name: &str) -> String {
    let plural = if n == 1 { "" } else { "s" };
    match name.strip_prefix("GPU ") {
        Some(rest) => {
            let rest = match rest.strip_suffix(" (described)") {
                Some(r) if n > 1 && r.starts_with("with ") => format!("{r} each (described)"),
                _ => rest.to_string(),
            };
            format!("{n} GPU{plural} {rest}")
        }
        None => format!("{n} x {name}"),
    }
}
