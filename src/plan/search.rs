//! The exhaustive search (the rules in plan/mod.rs): GPU subsets x strategy x checkpointing x
//! batch, each configuration's budget and step time, and the pinned-configuration path.

use crate::budget::{self, Allocator, Budget, Config, Strategy};
use crate::gpu::Gpu;
use crate::model::{self, ModelSpec};
use crate::units::fmt_gib;

use super::merge::host_ram_and_merge;
use super::reasons::{
    alternatives, best_per_mode, levers, tight_note, why_chosen, why_nothing_fits,
};
use super::room::{STEP_TIME_TOLERANCE, tight};
use super::speed::{self, SpeedInput};
use super::types::{Calibration, Candidate, Pins, Plan, PlanError, PlanInput, Policy, usable};

/// A set of GPUs the search may use, with what limits it.
#[derive(Debug, Clone)]
struct GpuSet {
    indices: Vec<u32>,
    usable_bytes: u64,
    tflops: f64,
    /// The GPU whose memory limits the set; its model drives the per-rank overhead.
    limiting_name: String,
}

fn tflops_of(name: &str) -> f64 {
    crate::gpu::known::lookup_by_name(name)
        .and_then(|k| k.bf16_dense_tflops)
        .unwrap_or(speed::REFERENCE_TFLOPS / 4.0)
}

/// Candidate GPU sets: for every count k, the k GPUs with the most usable memory, and for every
/// GPU model, its k GPUs with the most usable memory (so small or busy GPUs can be left out).
fn gpu_sets(gpus: &[Gpu], policy: &Policy, nproc: Option<u32>) -> Vec<GpuSet> {
    let mut order: Vec<&Gpu> = gpus.iter().collect();
    order.sort_by(|a, b| {
        usable(b, policy)
            .cmp(&usable(a, policy))
            .then(a.index.cmp(&b.index))
    });
    let mut groups: Vec<Vec<&Gpu>> = vec![order.clone()];
    let mut names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
    names.sort();
    names.dedup();
    // Each model's identity is resolved once (the name lookup tokenises and allocates): per
    // GPU of every candidate set it made planning quadratic in the GPU count.
    let model_tflops: Vec<f64> = names.iter().map(|n| tflops_of(n)).collect();
    let tflops = |g: &Gpu| model_tflops[names.binary_search(&g.name.as_str()).expect("listed")];
    if names.len() > 1 {
        for name in &names {
            groups.push(order.iter().copied().filter(|g| g.name == *name).collect());
        }
    }
    let mut sets: Vec<GpuSet> = Vec::new();
    for group in groups {
        // The first k GPUs of the group, grown one at a time: the slowest model and the GPU
        // with the least usable memory (the first such, as `min_by_key` picks) carry over.
        let mut slowest = f64::INFINITY;
        let mut limiting: Option<(&Gpu, u64)> = None;
        let mut indices: Vec<u32> = Vec::with_capacity(group.len());
        for k in 1..=group.len() {
            let added = group[k - 1];
            slowest = slowest.min(tflops(added));
            let room = usable(added, policy);
            if limiting.is_none_or(|(_, least)| room < least) {
                limiting = Some((added, room));
            }
            // Kept sorted as it grows (sorting each set anew was quadratic in the GPUs too).
            let at = indices.partition_point(|&i| i < added.index);
            indices.insert(at, added.index);
            if nproc.is_some_and(|n| n as usize != k) {
                continue;
            }
            let indices = indices.clone();
            if sets.iter().any(|s| s.indices == indices) {
                continue;
            }
            let (limiting, usable_bytes) = limiting.expect("k >= 1");
            sets.push(GpuSet {
                indices,
                usable_bytes,
                tflops: slowest,
                limiting_name: limiting.name.clone(),
            });
        }
    }
    sets
}

struct Evaluator<'a> {
    calibration: Option<Calibration<'a>>,
    spec: &'a ModelSpec,
    policy: &'a Policy,
    nnodes: u32,
    gradient_bytes: u64,
    weight_bytes: u64,
    flops: [f64; 2],
    evaluated: usize,
}

impl<'a> Evaluator<'a> {
    fn new(
        spec: &'a ModelSpec,
        policy: &'a Policy,
        nnodes: u32,
        calibration: Option<Calibration<'a>>,
    ) -> Result<Self, PlanError> {
        let components = model::components(spec)?;
        let weight_bytes = components.iter().map(|c| c.params * c.dtype.bytes()).sum();
        let gradient_bytes = components
            .iter()
            .filter(|c| c.trainable)
            .map(|c| c.params * c.dtype.bytes())
            .sum();
        Ok(Evaluator {
            calibration,
            spec,
            policy,
            nnodes,
            gradient_bytes,
            weight_bytes,
            flops: [
                model::train_flops_per_sample(spec, false),
                model::train_flops_per_sample(spec, true),
            ],
            evaluated: 0,
        })
    }

    fn evaluate(
        &mut self,
        set: &GpuSet,
        strategy: Strategy,
        checkpointing: bool,
        batch_size: u32,
        grad_accum: u32,
    ) -> Result<Candidate, PlanError> {
        self.evaluated += 1;
        let nproc = set.indices.len() as u32;
        let world = nproc * self.nnodes;
        let cfg = Config {
            strategy,
            world_size: world,
            nproc_per_node: nproc,
            batch_size,
            checkpointing,
            allocator: self.policy.allocator,
            gpu_name: set.limiting_name.clone(),
            fsdp: self.policy.fsdp,
        };
        let budget = budget::predict(self.spec, &cfg)?;
        let model_peak = budget.peak();
        let (peak, correction) = match self.calibration {
            Some(c) => {
                let key = crate::calibration::Key::new(
                    &cfg.gpu_name,
                    c.profile,
                    strategy,
                    checkpointing,
                    world,
                )
                .with_fsdp(cfg.fsdp);
                let (p, info) = c.store.corrected_peak(&key, model_peak);
                (p, info.map(|i| i.describe()))
            }
            None => (model_peak, None),
        };
        let required = peak.saturating_sub(reclaimable_cache(&budget, self.policy.allocator));
        let step_time = speed::step_time(
            self.spec,
            &SpeedInput {
                strategy,
                checkpointing,
                batch_size,
                grad_accum,
                world_size: world,
                nnodes: self.nnodes,
                gpu_tflops: set.tflops,
                flops_per_sample: self.flops[0],
                recompute_flops_per_sample: if checkpointing {
                    self.flops[1] - self.flops[0]
                } else {
                    0.0
                },
                gradient_bytes: self.gradient_bytes,
                weight_bytes: self.weight_bytes,
                fsdp: self.policy.fsdp,
            },
        );
        // Saturating: pins are range-checked where they are parsed; no product may wrap.
        let global_batch = batch_size.saturating_mul(world).saturating_mul(grad_accum);
        let total = step_time.total();
        Ok(Candidate {
            strategy,
            gradient_checkpointing: checkpointing,
            batch_size,
            grad_accumulation_steps: grad_accum,
            nproc_per_node: nproc,
            nnodes: self.nnodes,
            global_batch,
            gpu_indices: set.indices.clone(),
            predicted_peak_bytes: peak,
            required_bytes: required,
            usable_bytes: set.usable_bytes,
            fits: required <= set.usable_bytes,
            model_peak_bytes: model_peak,
            correction,
            budget,
            step_time,
            step_time_s: total,
            samples_per_s: global_batch as f64 / total,
        })
    }
}

/// The part of the allocator's cache that it frees when memory runs short (see rule 2).
pub fn reclaimable_cache(budget: &Budget, allocator: Allocator) -> u64 {
    match allocator {
        Allocator::ExpandableSegments => budget.allocator_slack,
        Allocator::Default => budget.allocator_slack / 2,
    }
}

fn ceil_div(a: u32, b: u32) -> u32 {
    a.div_ceil(b.max(1))
}

/// Ranking key: lower is better (time per optimizer step, then the tie-breakers of rule 4).
fn rank_key(c: &Candidate) -> (u64, u8, u8, u32, u32, u32) {
    (
        (c.step_time_s * 1e9) as u64,
        (c.strategy == Strategy::Fsdp) as u8,
        c.gradient_checkpointing as u8,
        c.grad_accumulation_steps,
        c.nproc_per_node,
        c.gpu_indices.iter().sum(),
    )
}

/// Rule 4b: when the fastest fitting configuration is tight, the fastest one with room that is
/// no slower within the step-time model's error goes first. Returns the configuration it beat.
fn prefer_room(ranked: &mut Vec<&Candidate>) -> Option<Candidate> {
    let fastest = *ranked.first()?;
    if !tight(fastest) {
        return None;
    }
    let limit = fastest.step_time_s * (1.0 + STEP_TIME_TOLERANCE);
    let i = ranked
        .iter()
        .position(|c| c.step_time_s <= limit && !tight(c))?;
    let roomy = ranked.remove(i);
    ranked.insert(0, roomy);
    Some(fastest.clone())
}

/// Plans for the given GPUs. Errors only for inputs that make planning meaningless.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    plan_impl(input, true)
}

fn plan_impl(input: &PlanInput, with_levers: bool) -> Result<Plan, PlanError> {
    if input.gpus.is_empty() {
        return Err(PlanError::NoGpus(
            "CUDA_VISIBLE_DEVICES hides every GPU, or none was described; pass --gpus".into(),
        ));
    }
    if let Some(n) = input.pins.nproc
        && n as usize > input.gpus.len()
    {
        return Err(PlanError::TooManyProcs {
            nproc: n,
            available: input.gpus.len(),
        });
    }
    let policy = &input.policy;
    let pins = &input.pins;
    let mut reasons = Vec::new();
    let mut ev = Evaluator::new(input.spec, policy, input.nnodes, input.calibration)?;
    // In a multi-node job every node uses all the GPUs it was given (the scheduler allocated
    // them to this job, and every node must plan the same); pin --nproc to use fewer.
    let nproc = pins
        .nproc
        .or((input.nnodes > 1).then_some(input.gpus.len() as u32));
    let sets = gpu_sets(input.gpus, policy, nproc);
    let g = policy.min_global_batch;

    let (strategies, ckpt_options) = search_axes(policy, pins, &mut reasons);

    // With every axis pinned, evaluate exactly that configuration and say whether it fits.
    if pins.all_pinned() {
        return Ok(pinned_plan(input, &mut ev, &sets, reasons, with_levers));
    }

    let all = enumerate(input, &mut ev, &sets, &strategies, &ckpt_options)?;

    let evaluated = ev.evaluated;
    let mut fitting: Vec<&Candidate> = all
        .iter()
        .filter(|c| c.fits && c.global_batch >= g)
        .collect();
    if policy.exact_global_batch && fitting.iter().any(|c| c.global_batch == g) {
        fitting.retain(|c| c.global_batch == g);
    } else if policy.exact_global_batch && !fitting.is_empty() {
        reasons.push(format!(
            "no fitting configuration gives exactly {g}; the smallest global batch above it is used"
        ));
    }
    // Each key once: it sums the GPU indices, and a comparison sort would redo that per comparison.
    fitting.sort_by_cached_key(|c| rank_key(c));
    // Rule 4b: a configuration with room beats a slightly faster one without.
    let preferred_over = prefer_room(&mut fitting);

    let (host_ram, extra_flags) = host_ram_and_merge(input, fitting.first().copied(), &mut reasons);

    let Some(best) = fitting.first().copied().cloned() else {
        let mut plan = Plan {
            feasible: false,
            chosen: None,
            alternatives: Vec::new(),
            reasons,
            levers: Vec::new(),
            extra_flags,
            host_ram,
            evaluated,
        };
        plan.reasons.push(why_nothing_fits(&all, input));
        if with_levers {
            plan.levers = levers(input, &|i| plan_impl(i, false));
        }
        return Ok(plan);
    };

    reasons.insert(0, why_chosen(&best, g, input.gpus, preferred_over.as_ref()));
    if tight(&best) {
        reasons.insert(
            1,
            tight_note(&best, fitting.iter().find(|c| !tight(c)).copied()),
        );
    }
    if with_levers && input.nnodes > 1 {
        reasons.extend(slower_than_one_node(input, &best));
    }
    reasons.extend(best_per_mode(&all, &best));
    let alternatives = alternatives(&fitting, &best);
    Ok(Plan {
        feasible: true,
        chosen: Some(best),
        alternatives,
        reasons,
        levers: Vec::new(),
        extra_flags,
        host_ram,
        evaluated,
    })
}

/// The strategies and checkpointing choices to search: the pinned one, or what the policy and
/// the script allow (each left out with a reason).
fn search_axes(
    policy: &Policy,
    pins: &Pins,
    reasons: &mut Vec<String>,
) -> (Vec<Strategy>, Vec<bool>) {
    let mut strategies: Vec<Strategy> = match pins.strategy {
        Some(s) => vec![s],
        None => policy.strategies.clone(),
    };
    strategies.sort();
    strategies.dedup();
    let ckpt_options: Vec<bool> = match pins.checkpointing {
        Some(c) => vec![c],
        None if policy.script_accepts_checkpointing => vec![false, true],
        None => {
            reasons.push(
                "gradient checkpointing not considered: the script does not take --gradient_checkpointing"
                    .into(),
            );
            vec![false]
        }
    };
    if pins.strategy.is_none()
        && !policy.script_accepts_fsdp
        && strategies.contains(&Strategy::Fsdp)
    {
        strategies.retain(|s| *s != Strategy::Fsdp);
        reasons.push(
            policy.fsdp_unavailable.clone().unwrap_or_else(|| {
                "FSDP not considered: the script does not take --use_fsdp".into()
            }),
        );
    }
    (strategies, ckpt_options)
}

/// Every configuration on every GPU set, batch by batch until one does not fit (memory grows
/// with the batch); the accumulation is the least that reaches the global batch.
fn enumerate(
    input: &PlanInput,
    ev: &mut Evaluator,
    sets: &[GpuSet],
    strategies: &[Strategy],
    ckpt_options: &[bool],
) -> Result<Vec<Candidate>, PlanError> {
    let (policy, pins, g) = (&input.policy, &input.pins, input.policy.min_global_batch);
    let mut all: Vec<Candidate> = Vec::new();
    for set in sets {
        let world = set.indices.len() as u32 * input.nnodes;
        for &strategy in strategies {
            if strategy == Strategy::Fsdp && world == 1 {
                continue;
            }
            for &ckpt in ckpt_options {
                let per_rank = ceil_div(g, world);
                let batches: Vec<u32> = match pins.batch_size {
                    Some(b) => vec![b],
                    None => (1..=policy.max_batch_size).collect(),
                };
                for b in batches {
                    let accum = match pins.grad_accum {
                        Some(a) => a,
                        None => {
                            // Least overshoot for this world: batch x accumulation = ceil(G / world).
                            if pins.batch_size.is_none() && per_rank % b != 0 {
                                if b > per_rank {
                                    break;
                                }
                                continue;
                            }
                            ceil_div(per_rank, b)
                        }
                    };
                    let c = ev.evaluate(set, strategy, ckpt, b, accum)?;
                    let fits = c.fits;
                    all.push(c);
                    // Memory grows with the batch: nothing larger fits either.
                    if !fits {
                        break;
                    }
                }
            }
        }
    }
    Ok(all)
}

/// A multi-node plan that one node of the same GPUs beats at the same global batch: says so,
/// and what would help (one node, or the smallest larger global batch at which the nodes pay off,
/// each checked by planning again).
fn slower_than_one_node(input: &PlanInput, best: &Candidate) -> Option<String> {
    let at = |nnodes: u32, global: u32| {
        let mut inp = input.clone();
        inp.nnodes = nnodes;
        inp.policy.min_global_batch = global;
        plan_impl(&inp, false)
            .ok()
            .and_then(|p| p.chosen.filter(|_| p.feasible))
    };
    let g = input.policy.min_global_batch;
    let one = at(1, g)?;
    if one.step_time_s >= best.step_time_s {
        return None;
    }
    let n = input.nnodes;
    let mut s = format!(
        "slower than one node: one node of {} takes {:.2} s per optimizer step ({}) against {:.2} s on {n} nodes for the same global batch of {g}: crossing nodes costs more than the extra GPUs save. Use one node (--nnodes 1)",
        super::reasons::gpus_phrase(input.gpus.len(), &input.gpus[0].name),
        one.step_time_s,
        one.label(),
        best.step_time_s,
    );
    // The same steps at a larger global batch see more samples: compare samples per second.
    let larger = (1..=4).map(|k| g.saturating_mul(1 << k)).find_map(|big| {
        let (multi, single) = (at(n, big)?, at(1, big)?);
        (multi.samples_per_s > single.samples_per_s).then_some((big, multi, single))
    });
    match larger {
        Some((big, multi, single)) => s.push_str(&format!(
            ", or a larger global batch (--global-batch {big}: {:.1} samples/s on {n} nodes against {:.1} on one; it changes the training recipe)",
            multi.samples_per_s, single.samples_per_s
        )),
        None => s.push_str(&format!(
            "; a larger global batch (--global-batch up to {}) does not make {n} nodes pay off either",
            g.saturating_mul(16)
        )),
    }
    Some(s)
}

fn pinned_plan(
    input: &PlanInput,
    ev: &mut Evaluator,
    sets: &[GpuSet],
    mut reasons: Vec<String>,
    with_levers: bool,
) -> Plan {
    let pins = &input.pins;
    let policy = &input.policy;
    let strategy = pins.strategy.expect("pinned");
    let ckpt = pins.checkpointing.expect("pinned");
    let nproc = pins.nproc.unwrap_or(input.gpus.len() as u32) as usize;
    let set = sets
        .iter()
        .find(|s| s.indices.len() == nproc)
        .expect("a set of every size up to the GPU count");
    let c = match ev.evaluate(
        set,
        strategy,
        ckpt,
        pins.batch_size.expect("pinned"),
        pins.grad_accum.expect("pinned"),
    ) {
        Ok(c) => c,
        Err(e) => {
            reasons.push(e.to_string());
            return Plan {
                feasible: false,
                chosen: None,
                alternatives: Vec::new(),
                reasons,
                levers: Vec::new(),
                extra_flags: Vec::new(),
                host_ram: None,
                evaluated: ev.evaluated,
            };
        }
    };
    let mut ok = true;
    if !c.fits {
        ok = false;
        reasons.push(format!(
            "does not fit: needs {} per GPU (peak {} less the allocator cache it can give back) > usable {} (free memory of GPU {} minus the margin)",
            fmt_gib(c.required_bytes),
            fmt_gib(c.predicted_peak_bytes),
            fmt_gib(c.usable_bytes),
            set.indices[0]
        ));
    }
    if strategy == Strategy::Fsdp && !policy.script_accepts_fsdp {
        ok = false;
        reasons.push(
            policy
                .fsdp_unavailable
                .clone()
                .unwrap_or_else(|| "needs --use_fsdp, which the script does not take".into()),
        );
    }
    if ckpt && !policy.script_accepts_checkpointing {
        ok = false;
        reasons.push("needs --gradient_checkpointing, which the script does not take".into());
    }
    if c.global_batch < policy.min_global_batch {
        ok = false;
        reasons.push(format!(
            "global batch {} = {} x {} x {} x {} is below the minimum {} (raise --grad-accum or --batch-size, or lower --global-batch)",
            c.global_batch,
            c.batch_size,
            c.nproc_per_node,
            c.nnodes,
            c.grad_accumulation_steps,
            policy.min_global_batch
        ));
    }
    if ok {
        reasons.insert(0, format!("pinned configuration fits: {}", c.label()));
    }
    Plan {
        feasible: ok,
        chosen: Some(c),
        alternatives: Vec::new(),
        reasons,
        levers: if ok || !with_levers {
            Vec::new()
        } else {
            levers(input, &|i| plan_impl(i, false))
        },
        extra_flags: Vec::new(),
        host_ram: None,
        evaluated: ev.evaluated,
    }
}
