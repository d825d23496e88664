//! The planner over a table of GPU setups: feasibility, the global batch, the fit, the strategy.

use vla_launch::budget::Strategy;
use vla_launch::gpu::{Gpu, parse_gpus_spec};
use vla_launch::plan::{Pins, Plan, PlanInput, Policy, plan};
use vla_launch::units::GIB;

fn policy(accepts_fsdp: bool, accepts_ckpt: bool) -> Policy {
    Policy {
        script_accepts_fsdp: accepts_fsdp,
        script_accepts_checkpointing: accepts_ckpt,
        ..crate::common::policy()
    }
}

use crate::common::builtin_spec as profile_spec;

fn run(profile_name: &str, gpus: &[Gpu], policy: Policy, pins: Pins) -> Plan {
    let spec = profile_spec(profile_name);
    plan(&PlanInput {
        spec: &spec,
        gpus,
        nnodes: 1,
        policy,
        pins,
        host_ram_bytes: None,
        merge_lora_during_training: false,
        calibration: None,
    })
    .unwrap()
}

/// A GPU with `busy_gib` already used by another process.
fn busy(spec: &str, index: usize, busy_gib: u64) -> Vec<Gpu> {
    let mut gpus = parse_gpus_spec(spec).unwrap();
    gpus[index].free_bytes = gpus[index].free_bytes.saturating_sub(busy_gib * GIB);
    gpus[index].used_bytes += busy_gib * GIB;
    gpus
}

#[derive(Debug)]
enum Expect {
    Infeasible,
    Feasible(Option<Strategy>),
}

struct Case {
    name: &'static str,
    profile: &'static str,
    gpus: Vec<Gpu>,
    fsdp: bool,
    ckpt: bool,
    expect: Expect,
}

fn case(name: &'static str, profile: &'static str, spec: &str, expect: Expect) -> Case {
    Case {
        name,
        profile,
        gpus: parse_gpus_spec(spec).unwrap(),
        fsdp: true,
        ckpt: true,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let ddp = Some(Strategy::Ddp);
    let mut v = vec![
        case("1x4090 aloha", "aloha", "1xrtx4090", Infeasible),
        case(
            "8x4090 aloha",
            "aloha",
            "8xrtx4090",
            Feasible(Some(Strategy::Fsdp)),
        ),
        case("1xA100-40 aloha", "aloha", "1xa100-40gb", Feasible(ddp)),
        case("2xA100-40 aloha", "aloha", "2xa100-40gb", Feasible(ddp)),
        case("4xA100-40 aloha", "aloha", "4xa100-40gb", Feasible(ddp)),
        case("8xA100-40 aloha", "aloha", "8xa100-40gb", Feasible(ddp)),
        case("1xA100-80 aloha", "aloha", "1xa100-80gb", Feasible(ddp)),
        case("2xA100-80 aloha", "aloha", "2xa100-80gb", Feasible(ddp)),
        case("4xA100-80 aloha", "aloha", "4xa100-80gb", Feasible(ddp)),
        case("8xA100-80 aloha", "aloha", "8xa100-80gb", Feasible(ddp)),
        case("1xH100 aloha", "aloha", "1xh100", Feasible(ddp)),
        case("2xH100 aloha", "aloha", "2xh100", Feasible(ddp)),
        case("4xH100 aloha", "aloha", "4xh100", Feasible(ddp)),
        case("8xH100 aloha", "aloha", "8xh100", Feasible(ddp)),
        case("1xH200 aloha", "aloha", "1xh200", Feasible(ddp)),
        case("8xH200 aloha", "aloha", "8xh200", Feasible(ddp)),
        case("1xL40S aloha", "aloha", "1xl40s", Feasible(ddp)),
        case("2xL40S aloha", "aloha", "2xl40s", Feasible(ddp)),
        case("4xL40S libero", "libero", "4xl40s", Feasible(ddp)),
        case("1x4090 libero", "libero", "1xrtx4090", Feasible(ddp)),
        case("1xH100 libero", "libero", "1xh100", Feasible(ddp)),
        case("1xH100 bridge", "bridge", "1xh100", Feasible(ddp)),
        case(
            "mixed H100 + A100-40",
            "aloha",
            "1xh100,1xa100-40gb",
            Feasible(ddp),
        ),
        case(
            "mixed H100 + 4090",
            "aloha",
            "1xh100,1xrtx4090",
            Feasible(ddp),
        ),
        case("2x24GiB aloha", "aloha", "2x24GiB", Infeasible),
    ];
    v.push(Case {
        name: "H100 half used by another process",
        profile: "aloha",
        gpus: busy("2xh100", 1, 40),
        fsdp: true,
        ckpt: true,
        expect: Feasible(ddp),
    });
    v.push(Case {
        name: "4x4090, script without --use_fsdp",
        profile: "aloha",
        gpus: parse_gpus_spec("4xrtx4090").unwrap(),
        fsdp: false,
        ckpt: true,
        expect: Infeasible,
    });
    v.push(Case {
        name: "1xA100-40, upstream script (no fsdp, no ckpt)",
        profile: "aloha",
        gpus: parse_gpus_spec("1xa100-40gb").unwrap(),
        fsdp: false,
        ckpt: false,
        expect: Feasible(ddp),
    });
    v
}

#[test]
fn planner_table() {
    let mut failures = Vec::new();
    for c in cases() {
        let p = run(c.profile, &c.gpus, policy(c.fsdp, c.ckpt), Pins::default());
        let chosen = p.chosen.as_ref();
        let line = format!(
            "{:45} feasible={} {}",
            c.name,
            p.feasible,
            chosen.map(|c| c.label()).unwrap_or_default()
        );
        println!("{line}");
        match (&c.expect, p.feasible) {
            (Expect::Infeasible, false) => {
                assert!(chosen.is_none(), "{}: infeasible but chose", c.name);
                assert!(
                    !p.levers.is_empty(),
                    "{}: infeasible without levers",
                    c.name
                );
            }
            (Expect::Feasible(strategy), true) => {
                let ch = chosen.unwrap();
                assert!(
                    ch.global_batch >= 16,
                    "{}: global {}",
                    c.name,
                    ch.global_batch
                );
                assert_eq!(
                    ch.global_batch,
                    ch.batch_size * ch.nproc_per_node * ch.nnodes * ch.grad_accumulation_steps
                );
                assert!(
                    ch.fits && ch.required_bytes <= ch.usable_bytes,
                    "{}",
                    c.name
                );
                assert!(ch.required_bytes <= ch.predicted_peak_bytes, "{}", c.name);
                if !c.ckpt {
                    assert!(!ch.gradient_checkpointing, "{}: ckpt not accepted", c.name);
                }
                if !c.fsdp {
                    assert_eq!(ch.strategy, Strategy::Ddp, "{}", c.name);
                }
                if let Some(s) = strategy
                    && ch.strategy != *s
                {
                    failures.push(format!("{line}: expected {s:?}"));
                }
                // Every GPU used must itself have room for the peak.
                for i in &ch.gpu_indices {
                    let g = c.gpus.iter().find(|g| g.index == *i).unwrap();
                    assert!(ch.required_bytes <= g.free_bytes, "{}: GPU {i}", c.name);
                }
            }
            _ => failures.push(format!("{line}: expected {:?}", c.expect)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn busy_gpu_is_left_out_or_limits_the_plan() {
    let gpus = busy("2xh100", 1, 70);
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    let c = p.chosen.unwrap();
    assert_eq!(
        c.gpu_indices,
        vec![0],
        "the nearly full GPU 1 must be left out"
    );
    assert!(p.reasons[0].contains("left out GPU 1"), "{}", p.reasons[0]);
}

#[test]
fn explicit_global_batch_is_honoured_exactly() {
    let gpus = parse_gpus_spec("3xh100").unwrap();
    let mut pol = policy(true, true);
    pol.min_global_batch = 48;
    pol.exact_global_batch = true;
    let p = run("aloha", &gpus, pol, Pins::default());
    assert_eq!(p.chosen.unwrap().global_batch, 48);
    // 16 on 3 GPUs cannot be exact on all three; the minimum is never rounded down.
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    assert!(p.chosen.unwrap().global_batch >= 16);
}

#[test]
fn fully_pinned_configuration_is_evaluated_even_when_it_does_not_fit() {
    let gpus = parse_gpus_spec("1xrtx4090").unwrap();
    let pins = Pins {
        strategy: Some(Strategy::Ddp),
        batch_size: Some(2),
        grad_accum: Some(8),
        checkpointing: Some(false),
        nproc: None,
    };
    let p = run("aloha", &gpus, policy(true, true), pins);
    assert!(!p.feasible);
    let c = p.chosen.unwrap();
    assert!(
        c.predicted_peak_bytes > 40 * GIB,
        "{}",
        c.predicted_peak_bytes
    );
    assert!(p.reasons.iter().any(|r| r.contains("does not fit")));
}

#[test]
fn pinned_flag_the_script_lacks_is_infeasible_with_reason() {
    let gpus = parse_gpus_spec("2xh100").unwrap();
    let pins = Pins {
        strategy: Some(Strategy::Fsdp),
        batch_size: Some(2),
        grad_accum: Some(4),
        checkpointing: Some(true),
        nproc: None,
    };
    let p = run("aloha", &gpus, policy(false, true), pins);
    assert!(!p.feasible);
    assert!(
        p.reasons.iter().any(|r| r.contains("--use_fsdp")),
        "{:?}",
        p.reasons
    );
    assert!(p.chosen.unwrap().predicted_peak_bytes > 0);
}

#[test]
fn levers_name_what_would_fit() {
    let gpus = parse_gpus_spec("1xrtx4090").unwrap();
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    assert!(!p.feasible);
    assert!(
        p.levers
            .iter()
            .any(|l| l.contains("8 GPUs") && l.contains("fits")),
        "{:#?}",
        p.levers
    );
}

#[test]
fn planning_is_deterministic() {
    let gpus = parse_gpus_spec("1xh100,2xa100-40gb,1xl40s").unwrap();
    let a = run("aloha", &gpus, policy(true, true), Pins::default());
    let b = run("aloha", &gpus, policy(true, true), Pins::default());
    assert_eq!(a, b);
}

#[test]
fn more_gpus_never_plan_slower() {
    // Every plan for n GPUs is also open to 2n GPUs (the planner may leave GPUs out).
    let mut last = f64::INFINITY;
    for n in [1, 2, 4, 8] {
        let gpus = parse_gpus_spec(&format!("{n}xh100")).unwrap();
        let p = run("aloha", &gpus, policy(true, true), Pins::default());
        let t = p.chosen.unwrap().step_time_s;
        assert!(t <= last, "{n} GPUs: {t} s per step > {last}");
        last = t;
    }
}

#[test]
fn all_gpus_used_when_the_batch_divides() {
    for n in [2, 4, 8] {
        let gpus = parse_gpus_spec(&format!("{n}xh100")).unwrap();
        let c = run("aloha", &gpus, policy(true, true), Pins::default())
            .chosen
            .unwrap();
        assert_eq!((c.nproc_per_node, c.global_batch), (n, 16), "{}", c.label());
    }
}

#[test]
fn four_rtx4090_with_fsdp_in_the_script_shards_with_checkpointing() {
    // Issue 4, acceptance 3: the seed's recommended setup for 24 GB cards.
    let gpus = parse_gpus_spec("4xrtx4090").unwrap();
    let c = run("aloha", &gpus, policy(true, true), Pins::default())
        .chosen
        .unwrap();
    assert_eq!(c.strategy, Strategy::Fsdp, "{}", c.label());
    assert!(c.gradient_checkpointing, "{}", c.label());
    assert_eq!((c.nproc_per_node, c.global_batch), (4, 16), "{}", c.label());
}

#[test]
fn multi_node_uses_every_gpu_of_each_node_with_the_fewest_accumulation_steps() {
    let spec = profile_spec("aloha");
    let gpus = parse_gpus_spec("8xh100").unwrap();
    let p = plan(&PlanInput {
        spec: &spec,
        gpus: &gpus,
        nnodes: 4,
        policy: policy(true, true),
        pins: Pins::default(),
        host_ram_bytes: None,
        merge_lora_during_training: false,
        calibration: None,
    })
    .unwrap();
    let c = p.chosen.unwrap();
    assert_eq!((c.nproc_per_node, c.nnodes), (8, 4), "{}", c.label());
    assert_eq!(c.grad_accumulation_steps, 1, "{}", c.label());
    assert_eq!(c.global_batch, 32, "1 per GPU on 32 GPUs: {}", c.label());
}

/// Issue 16: a lever names every flag it was computed with, and its verdict is computed. On 4x
/// RTX 4090 ALOHA needs FSDP *and* checkpointing (FSDP alone does not fit): for upstream's script
/// (neither flag) the FSDP lever must name both; for a script that already takes checkpointing,
/// naming --use_fsdp alone is honest.
#[test]
fn levers_name_every_flag_they_assume() {
    let gpus = parse_gpus_spec("4xrtx4090").unwrap();
    let p = run("aloha", &gpus, policy(false, false), Pins::default());
    assert!(!p.feasible);
    for l in &p.levers {
        if l.contains("--use_fsdp") && l.contains("fits: FSDP") {
            assert!(l.contains("--gradient_checkpointing"), "{l}");
        }
    }
    assert!(
        p.levers.iter().any(|l| l
            .starts_with("with --use_fsdp and --gradient_checkpointing in the script:")
            && l.contains("fits: FSDP, batch 2 x 4 GPUs")),
        "{:#?}",
        p.levers
    );
    // FSDP without checkpointing, pinned: computed, and it does not fit 24 GB cards.
    let pinned = run(
        "aloha",
        &gpus,
        policy(true, false),
        Pins {
            strategy: Some(Strategy::Fsdp),
            ..Pins::default()
        },
    );
    assert!(!pinned.feasible, "{:?}", pinned.chosen.map(|c| c.label()));
    // The script takes checkpointing: the FSDP lever adds only --use_fsdp.
    let p = run("aloha", &gpus, policy(false, true), Pins::default());
    assert!(
        p.levers
            .iter()
            .any(|l| l.starts_with("with --use_fsdp in the script:") && l.contains("fits: FSDP")),
        "{:#?}",
        p.levers
    );
}

/// Merging LoRA at a checkpoint: upstream's save (DDP, or the addition without FSDP) loads a bf16
/// base model on every rank; the FSDP addition (FSDP2) on rank 0 only. With host RAM for one base
/// model but not for four, the FSDP2 plan keeps merging and the DDP plan turns it off.
#[test]
fn merge_host_ram_counts_the_merging_ranks() {
    use vla_launch::budget::FsdpVersion;
    let spec = profile_spec("aloha");
    // Four training processes with their RLDS shuffle buffers plus one 15 GB base model fit in
    // 96 GiB; plus four base models (111 GiB) do not.
    let ram = 96 * GIB;
    let plan_on = |gpus: &str, fsdp: FsdpVersion, strategy: Option<Strategy>| {
        let gpus = parse_gpus_spec(gpus).unwrap();
        plan(&PlanInput {
            spec: &spec,
            gpus: &gpus,
            nnodes: 1,
            policy: Policy {
                fsdp,
                ..policy(true, true)
            },
            pins: Pins {
                strategy,
                ..Pins::default()
            },
            host_ram_bytes: Some(ram),
            merge_lora_during_training: true,
            calibration: None,
        })
        .unwrap()
    };
    let merges = |p: &Plan| {
        !p.extra_flags
            .iter()
            .any(|(k, v)| k == "--merge_lora_during_training" && v == "False")
    };
    let strategy = |p: &Plan| p.chosen.as_ref().unwrap().strategy;
    let fsdp2 = plan_on("4xrtx4090", FsdpVersion::Fsdp2, None);
    assert_eq!(strategy(&fsdp2), Strategy::Fsdp, "{:?}", fsdp2.reasons);
    assert!(
        merges(&fsdp2),
        "FSDP2 merges on rank 0 only: {:?}",
        fsdp2.reasons
    );
    let fsdp1 = plan_on("4xrtx4090", FsdpVersion::Fsdp1, None);
    assert!(
        !merges(&fsdp1),
        "a fork's FSDP: every rank, as upstream: {:?}",
        fsdp1.reasons
    );
    let ddp = plan_on("4xh100", FsdpVersion::Fsdp2, Some(Strategy::Ddp));
    assert_eq!(strategy(&ddp), Strategy::Ddp);
    assert!(
        !merges(&ddp),
        "DDP runs upstream's save on every rank: {:?}",
        ddp.reasons
    );
}

/// Issue 26 item 6: within the step-time model's own error, the configuration with room wins.
/// 1x A6000 picked DDP b2 x a8 without checkpointing with 0.68 GiB left over b4 x a4 with
/// checkpointing, "0% slower" with 8 GiB left (since the real-code step-time refit, b4 x a4 with
/// checkpointing is the fastest there outright); a 71 GiB card has the same kind of near tie
/// (b4 x a4 without checkpointing, 6% faster by the estimate with 0.90 GiB left, against b8 x a2
/// with it, 19 GiB left; on an H100 the real code ran b8 x a2 the faster). Where nothing with room
/// is that fast (A100 40GB left 0.85 GiB, RTX 5090 0.62 GiB), the plan says how little room it
/// leaves and what has more.
#[test]
fn within_the_step_time_error_the_configuration_with_room_wins() {
    let room = |c: &vla_launch::plan::Candidate| (c.usable_bytes - c.required_bytes) as f64;
    let gpus = parse_gpus_spec("1x71GiB").unwrap();
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    let c = p.chosen.as_ref().unwrap();
    assert!(
        room(c) >= 0.05 * c.required_bytes as f64,
        "{} leaves {:.2} GiB; {:?}",
        c.label(),
        room(c) / GIB as f64,
        p.reasons
    );
    let faster = &p.alternatives[0];
    assert!(
        faster.candidate.step_time_s < c.step_time_s
            && faster.candidate.step_time_s
                >= c.step_time_s * (1.0 - vla_launch::plan::room::STEP_TIME_TOLERANCE),
        "{faster:?}"
    );
    assert!(faster.why_not.contains("leaves only"), "{}", faster.why_not);
    assert!(
        p.reasons[0].contains("with room") && p.reasons[0].contains("leaves only"),
        "{:?}",
        p.reasons
    );
    for (spec, roomy_alternative) in [("1xa100-40gb", true), ("1xrtx5090", false)] {
        let gpus = parse_gpus_spec(spec).unwrap();
        let p = run("aloha", &gpus, policy(true, true), Pins::default());
        let note = p.reasons.iter().find(|r| r.starts_with("little room"));
        let note = note.unwrap_or_else(|| panic!("{spec}: {:?}", p.reasons));
        assert_eq!(note.contains("--batch-size"), roomy_alternative, "{note}");
    }
}

/// Issue 26 item 6: the safety margin inside "usable" is printed.
#[test]
fn the_plan_says_the_safety_margin_in_usable() {
    let gpus = parse_gpus_spec("1xa6000").unwrap();
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    let text = vla_launch::plan::explain::render_plan("aloha", &p, &gpus, 16, None, false, true);
    let line = text.lines().find(|l| l.contains("usable per GPU")).unwrap();
    assert!(
        line.contains("47.52 GiB free of the 47.99 GiB card, less a 2.40 GiB safety margin"),
        "{line}"
    );
}

/// Issue 26 item 7: 2 x 8 H100 was planned at 1.73 s/step where one node of 8 takes 0.95 s/step
/// for the same global batch, and the plan said nothing. It says so, and what would help.
#[test]
fn a_multi_node_plan_slower_than_one_node_says_so_and_what_would_help() {
    let spec = profile_spec("aloha");
    let gpus = parse_gpus_spec("8xh100").unwrap();
    let at = |nnodes: u32| {
        plan(&PlanInput {
            spec: &spec,
            gpus: &gpus,
            nnodes,
            policy: policy(true, true),
            pins: Pins::default(),
            host_ram_bytes: None,
            merge_lora_during_training: false,
            calibration: None,
        })
        .unwrap()
    };
    let one = at(1);
    let two = at(2);
    let (t1, t2) = (
        one.chosen.as_ref().unwrap().step_time_s,
        two.chosen.as_ref().unwrap().step_time_s,
    );
    assert!(t2 > t1, "{t2} vs {t1}");
    let note = two
        .reasons
        .iter()
        .find(|r| r.starts_with("slower than one node"))
        .unwrap_or_else(|| panic!("{:?}", two.reasons));
    assert!(note.contains(&format!("{t1:.2} s")), "{note}");
    assert!(
        note.contains("--nnodes 1") && note.contains("--global-batch"),
        "{note}"
    );
    // One node says nothing of the kind; neither do 2 nodes where they are faster.
    assert!(!one.reasons.iter().any(|r| r.contains("one node")));
}

/// Issue 26 item 11: on 2 GPUs, "the smallest configuration" was a 1-GPU one, said as if it were
/// for both. The reason says it uses 1 of the 2, and what the least is on both.
#[test]
fn nothing_fits_names_how_many_of_the_gpus_its_closest_configuration_uses() {
    let gpus = parse_gpus_spec("2xrtx3090").unwrap();
    let p = run("aloha", &gpus, policy(true, true), Pins::default());
    assert!(!p.feasible);
    let why = p
        .reasons
        .iter()
        .find(|r| r.starts_with("nothing fits"))
        .unwrap();
    assert!(why.contains("1 GPU x"), "{why}");
    assert!(why.contains("uses 1 of the 2 GPUs"), "{why}");
    assert!(
        why.contains("on both the least is DDP, batch 1 x 2 GPUs"),
        "{why}"
    );
}
