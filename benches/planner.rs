//! Planning time: the exhaustive search over every candidate (goals: < 10 ms for 8 GPUs, and
//! linear in the GPU count: 512 GPUs on one node < 20 ms).
//! Run: cargo bench --features bench --bench planner (scripts/bench-plan.sh: against a base commit)

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use vla_launch::budget::{Allocator, FsdpVersion, Strategy};
use vla_launch::gpu::parse_gpus_spec;
use vla_launch::plan::{Pins, PlanInput, Policy, plan};
use vla_launch::profile::{self, BUILTIN};
use vla_launch::units::GIB;

fn bench(c: &mut Criterion) {
    let text = BUILTIN.iter().find(|(n, _)| *n == "aloha").unwrap().1;
    let spec = profile::model_spec(&profile::parse(text, "aloha").unwrap(), &[]);
    let policy = Policy {
        min_global_batch: 16,
        exact_global_batch: false,
        strategies: vec![Strategy::Ddp, Strategy::Fsdp],
        script_accepts_fsdp: true,
        script_accepts_checkpointing: true,
        margin_fraction: 0.05,
        margin_min_bytes: GIB,
        max_batch_size: 64,
        allocator: Allocator::ExpandableSegments,
        fsdp: FsdpVersion::Fsdp1,
    };
    let specs = [
        "8xh100",
        "8xrtx4090",
        "4xh100,4xa100-40gb",
        "1xrtx4090",
        "64xh100",
        "512xh100",
        "256xh100,256xa100-80gb",
    ];
    for spec_str in specs {
        let gpus = parse_gpus_spec(spec_str).unwrap();
        c.bench_function(&format!("plan aloha {spec_str}"), |b| {
            b.iter(|| {
                plan(black_box(&PlanInput {
                    spec: &spec,
                    gpus: &gpus,
                    nnodes: 1,
                    policy: policy.clone(),
                    pins: Pins::default(),
                    host_ram_bytes: Some(512 * GIB),
                    merge_lora_during_training: true,
                    calibration: None,
                }))
                .unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
