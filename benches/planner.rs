//! Planning time: the exhaustive search over every candidate (goals: < 10 ms for 8 GPUs, and
//! linear in the GPU count: 512 GPUs on one node < 20 ms).
//! Run: cargo bench --features bench --bench planner (scripts/bench-plan.sh: against a base commit)

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

use vla_launch::budget::{Allocator, FsdpVersion, Strategy};
use vla_launch::gpu::parse_gpus_spec;
use vla_launch::plan::{Pins, PlanInput, Policy, plan};
use vla_launch::profile::{self, BUILTIN};
use vla_launch::units::GIB;

fn bench(c: &mut Criterion) {
    let text = BUILTIN.iter().find(|(n, _)| *n == "aloha").unwrap().1;
    let spec = profile::model_spec(
        &profile::parse(text, "aloha").unwrap(),
        &profile::ScriptArgs::default(),
    );
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
        fsdp_unavailable: None,
        fsdp_by_addition: false,
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
        let input = PlanInput {
            spec: &spec,
            gpus: &gpus,
            nnodes: 1,
            policy: policy.clone(),
            pins: Pins::default(),
            host_ram_bytes: Some(512 * GIB),
            merge_lora_during_training: true,
            calibration: None,
        };
        c.bench_function(&format!("plan aloha {spec_str}"), |b| {
            b.iter(|| plan(black_box(&input)).unwrap())
        });
        // The same, timed by this thread's CPU clock: on a machine shared with other work the
        // wall clock also counts the time the benchmark waited for a core.
        c.bench_function(&format!("plan aloha {spec_str} cpu"), |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu_time();
                for _ in 0..iters {
                    black_box(plan(black_box(&input)).unwrap());
                }
                thread_cpu_time() - start
            })
        });
    }
}

/// CPU time of the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, bench);
criterion_main!(benches);
