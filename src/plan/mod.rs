//! The planner: the fastest configuration that fits every chosen GPU and reaches the global batch.
//! Pure: an exhaustive, deterministic search over GPU subsets x strategy x checkpointing x batch.
//!
//! Rules, in the order they apply:
//! 1. Only strategies and flags the script accepts (FSDP needs `--use_fsdp`, checkpointing needs
//!    `--gradient_checkpointing`); FSDP on a single rank shards nothing and is not considered.
//! 2. Fit: every rank's required memory <= usable = the smallest (free - margin) among the chosen
//!    GPUs, margin = max(fraction x total, minimum) (default 5% or 1 GiB). Required = the predicted
//!    peak less the allocator cache that PyTorch gives back under memory pressure (on a GPU too small
//!    for its cache, the caching allocator frees cached blocks and retries before it raises an OOM):
//!    all of it with expandable_segments, half of it with the default allocator (fragmented segments
//!    cannot all be freed). Measured: 4 H100s capped at 24564 MiB each ran ALOHA FSDP batch 1 and 2
//!    with checkpointing whose uncapped peaks are 27.4 and 30.0 GiB.
//! 3. Global batch = batch x GPUs x nodes x accumulation >= the minimum, with the least overshoot a
//!    world size allows: batch x accumulation = ceil(minimum / world). Never rounded down. A global
//!    batch the user asked for explicitly is honoured exactly when any fitting candidate can.
//!    In a multi-node job each node uses all its visible GPUs unless --nproc is pinned.
//! 4. Among what remains, the lowest predicted time per optimizer step wins: a run is `max_steps`
//!    optimizer steps whatever the global batch, so the step time is its wall-clock (a larger
//!    overshoot makes steps longer and loses). Ties go to DDP, no checkpointing, fewer accumulation
//!    steps, fewer GPUs.

pub mod explain;
pub mod probe;
pub mod retry;
pub mod speed;

use serde::{Deserialize, Serialize};

use crate::budget::{self, Allocator, Budget, Config, Strategy};
use crate::gpu::Gpu;
use crate::model::{self, ModelSpec};
use crate::units::{GIB, fmt_gib};
use speed::{SpeedInput, StepTime};

/// What the search may choose from, fixed by the profile and the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min_global_batch: u32,
    /// The global batch was given explicitly (`--global-batch`): honour it exactly when possible.
    pub exact_global_batch: bool,
    pub strategies: Vec<Strategy>,
    pub script_accepts_fsdp: bool,
    pub script_accepts_checkpointing: bool,
    pub margin_fraction: f64,
    pub margin_min_bytes: u64,
    pub max_batch_size: u32,
    pub allocator: Allocator,
}

/// Axes pinned by the user (`--batch-size` etc.); `None` lets the search choose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    pub strategy: Option<Strategy>,
    pub batch_size: Option<u32>,
    pub grad_accum: Option<u32>,
    pub checkpointing: Option<bool>,
    pub nproc: Option<u32>,
}

impl Pins {
    pub fn all_pinned(&self) -> bool {
        self.strategy.is_some()
            && self.batch_size.is_some()
            && self.grad_accum.is_some()
            && self.checkpointing.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub spec: &'a ModelSpec,
    /// This node's GPUs in CUDA order.
    pub gpus: &'a [Gpu],
    pub nnodes: u32,
    pub policy: Policy,
    pub pins: Pins,
    /// This node's physical RAM, when known.
    pub host_ram_bytes: Option<u64>,
    pub merge_lora_during_training: bool,
    /// Corrections learned from earlier runs on these GPUs (`vla-launch calibrate`, and every run).
    pub calibration: Option<Calibration<'a>>,
}

/// The calibration store and the profile whose observations apply.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    pub store: &'a crate::calibration::Store,
    pub profile: &'a str,
}

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub strategy: Strategy,
    pub gradient_checkpointing: bool,
    pub batch_size: u32,
    pub grad_accumulation_steps: u32,
    pub nproc_per_node: u32,
    pub nnodes: u32,
    pub global_batch: u32,
    /// CUDA indices of the GPUs used on this node.
    pub gpu_indices: Vec<u32>,
    /// What nvidia-smi shows at the peak on a GPU with room for the allocator's cache.
    pub predicted_peak_bytes: u64,
    /// The least memory it runs in: the peak less the cache the allocator gives back under pressure.
    pub required_bytes: u64,
    pub usable_bytes: u64,
    pub fits: bool,
    /// The budget model's own peak; `predicted_peak_bytes` differs when a calibration applies.
    pub model_peak_bytes: u64,
    /// The calibration applied to the prediction, in words (`plan --explain`).
    pub correction: Option<String>,
    pub budget: Budget,
    pub step_time: StepTime,
    pub step_time_s: f64,
    pub samples_per_s: f64,
}

impl Candidate {
    pub fn world_size(&self) -> u32 {
        self.nproc_per_node * self.nnodes
    }

    /// "DDP, batch 4 x 2 GPUs x 2 accumulation, checkpointing".
    pub fn label(&self) -> String {
        format!(
            "{}, batch {} x {} GPU{}{} x {} accumulation, {}",
            strategy_name(self.strategy),
            self.batch_size,
            self.nproc_per_node,
            if self.nproc_per_node == 1 { "" } else { "s" },
            if self.nnodes > 1 {
                format!(" x {} nodes", self.nnodes)
            } else {
                String::new()
            },
            self.grad_accumulation_steps,
            if self.gradient_checkpointing {
                "checkpointing"
            } else {
                "no checkpointing"
            }
        )
    }
}

pub use crate::budget::strategy_name;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    #[serde(flatten)]
    pub candidate: Candidate,
    pub why_not: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub feasible: bool,
    /// The chosen configuration; with every axis pinned, that configuration even when it does not fit.
    pub chosen: Option<Candidate>,
    pub alternatives: Vec<Alternative>,
    /// Why the chosen configuration, what was left out, and for an infeasible plan why nothing fits.
    pub reasons: Vec<String>,
    /// For an infeasible plan: what would make it fit, each with what it would need.
    pub levers: Vec<String>,
    /// Training flags the planner adds beyond its own four (e.g. merge_lora_during_training False).
    pub extra_flags: Vec<(String, String)>,
    pub host_ram: Option<budget::HostRam>,
    /// Number of configurations evaluated.
    pub evaluated: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no GPUs to plan for: {0}")]
    NoGpus(String),
    #[error("--nproc {nproc} asks for more GPUs than the {available} visible here")]
    TooManyProcs { nproc: u32, available: usize },
    #[error("{0}")]
    Model(#[from] model::ModelError),
}

/// A set of GPUs the search may use, with what limits it.
#[derive(Debug, Clone)]
struct GpuSet {
    indices: Vec<u32>,
    usable_bytes: u64,
    tflops: f64,
    /// The GPU whose memory limits the set; its model drives the per-rank overhead.
    limiting_name: String,
}

fn margin_bytes(gpu: &Gpu, policy: &Policy) -> u64 {
    ((gpu.total_bytes as f64 * policy.margin_fraction) as u64).max(policy.margin_min_bytes)
}

fn usable(gpu: &Gpu, policy: &Policy) -> u64 {
    gpu.free_bytes.saturating_sub(margin_bytes(gpu, policy))
}

fn tflops_of(gpu: &Gpu) -> f64 {
    crate::gpu::known::lookup_by_name(&gpu.name)
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
    if names.len() > 1 {
        for name in names {
            groups.push(order.iter().copied().filter(|g| g.name == name).collect());
        }
    }
    let mut sets: Vec<GpuSet> = Vec::new();
    for group in groups {
        for k in 1..=group.len() {
            if nproc.is_some_and(|n| n as usize != k) {
                continue;
            }
            let chosen = &group[..k];
            let mut indices: Vec<u32> = chosen.iter().map(|g| g.index).collect();
            indices.sort();
            if sets.iter().any(|s| s.indices == indices) {
                continue;
            }
            let limiting = chosen
                .iter()
                .min_by_key(|g| usable(g, policy))
                .expect("k >= 1");
            sets.push(GpuSet {
                indices,
                usable_bytes: usable(limiting, policy),
                tflops: chosen
                    .iter()
                    .map(|g| tflops_of(g))
                    .fold(f64::INFINITY, f64::min),
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
                );
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
                flops_per_sample: self.flops[checkpointing as usize],
                gradient_bytes: self.gradient_bytes,
                weight_bytes: self.weight_bytes,
            },
        );
        let global_batch = batch_size * world * grad_accum;
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
        reasons.push("FSDP not considered: the script does not take --use_fsdp".into());
    }

    // With every axis pinned, evaluate exactly that configuration and say whether it fits.
    if pins.all_pinned() {
        return Ok(pinned_plan(input, &mut ev, &sets, reasons, with_levers));
    }

    let mut all: Vec<Candidate> = Vec::new();
    for set in &sets {
        let world = set.indices.len() as u32 * input.nnodes;
        for &strategy in &strategies {
            if strategy == Strategy::Fsdp && world == 1 {
                continue;
            }
            for &ckpt in &ckpt_options {
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
    fitting.sort_by_key(|c| rank_key(c));

    let host_ram = input.host_ram_bytes.map(|_| {
        let nproc = fitting.first().map(|c| c.nproc_per_node).unwrap_or(1);
        budget::host_ram(input.spec, nproc, input.merge_lora_during_training)
    });
    let mut extra_flags = Vec::new();
    if let (Some(ram), Some(h)) = (input.host_ram_bytes, &host_ram)
        && input.merge_lora_during_training
        && h.checkpoint_peak_bytes > ram
    {
        extra_flags.push(("--merge_lora_during_training".into(), "False".into()));
        reasons.push(format!(
            "--merge_lora_during_training False: merging LoRA at each checkpoint loads a full bf16 base model on every rank, {} of host RAM at save time, more than this node's {}; merge offline after training with OpenVLA-OFT's vla-scripts/merge_lora_weights_and_save.py",
            fmt_gib(h.checkpoint_peak_bytes),
            fmt_gib(ram)
        ));
    }

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
            plan.levers = levers(input);
        }
        return Ok(plan);
    };

    reasons.insert(0, why_chosen(&best, g, input.gpus));
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
        reasons.push("needs --use_fsdp, which the script does not take".into());
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
            levers(input)
        },
        extra_flags: Vec::new(),
        host_ram: None,
        evaluated: ev.evaluated,
    }
}

fn why_chosen(best: &Candidate, g: u32, gpus: &[Gpu]) -> String {
    let mut s = format!(
        "fastest configuration that fits: {} -- {:.2} s per optimizer step, {:.1} samples/s; global batch {} = {} x {} x {} x {}{}",
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

/// For each (strategy, checkpointing) mode on the chosen GPUs: the largest batch that fits, or why none.
fn best_per_mode(all: &[Candidate], best: &Candidate) -> Vec<String> {
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

fn alternatives(ranked: &[&Candidate], best: &Candidate) -> Vec<Alternative> {
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
        let mut why = format!(
            "{:.0}% slower per optimizer step ({:.2} vs {:.2} s)",
            slower, c.step_time_s, best.step_time_s
        );
        if c.strategy == Strategy::Fsdp && best.strategy == Strategy::Ddp {
            why.push_str("; FSDP pays all-gathers and reduce-scatters every micro-batch");
        } else if c.gradient_checkpointing && !best.gradient_checkpointing {
            why.push_str("; checkpointing recomputes the Llama forward");
        } else if c.grad_accumulation_steps > best.grad_accumulation_steps {
            why.push_str("; smaller micro-batches pay the fixed per-micro-batch cost more often");
        }
        out.push(Alternative {
            candidate: (*c).clone(),
            why_not: why,
        });
        if out.len() == 3 {
            break;
        }
    }
    out
}

fn why_nothing_fits(all: &[Candidate], input: &PlanInput) -> String {
    let closest = all.iter().min_by(|a, b| {
        let over = |c: &Candidate| c.required_bytes as f64 / c.usable_bytes.max(1) as f64;
        over(a).total_cmp(&over(b))
    });
    match closest {
        Some(c) => format!(
            "nothing fits: the smallest configuration, {}, needs {} per GPU but only {} is usable (free memory minus the margin); {} GPU{} of {}",
            c.label(),
            fmt_gib(c.required_bytes),
            fmt_gib(c.usable_bytes),
            input.gpus.len(),
            if input.gpus.len() == 1 { "" } else { "s" },
            input.gpus[0].name
        ),
        None => {
            "nothing fits: no strategy is allowed for these GPUs (FSDP needs 2 or more GPUs)".into()
        }
    }
}

/// What would make an infeasible plan fit, each checked by planning again with that change.
fn levers(input: &PlanInput) -> Vec<String> {
    let mut out = Vec::new();
    let mut try_with = |what: String, f: &dyn Fn(&mut PlanInput, &mut ModelSpec, &mut Vec<Gpu>)| {
        let mut spec = input.spec.clone();
        let mut gpus = input.gpus.to_vec();
        let mut inp = input.clone();
        inp.pins = Pins::default();
        f(&mut inp, &mut spec, &mut gpus);
        inp.spec = &spec;
        inp.gpus = &gpus;
        let verdict = match plan_impl(&inp, false) {
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
            "{}{n} GPUs like GPU 0 ({})",
            if needs_flags {
                "with --use_fsdp and --gradient_checkpointing in the script and "
            } else {
                "with "
            },
            input.gpus[0].name
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
        try_with("with --use_fsdp in the script".into(), &|inp, _, _| {
            add_script_flags(inp)
        });
    }
    out
}

/// GiB with two decimals, for messages.
pub fn gib_str(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / GIB as f64)
}
