//! One autoscaler decision per policy: observe + recommend + safety + keep-alive + bounds.
//!
//! Time advances one second per iteration, so KPA records into and averages its 60 s and 6 s
//! bucket windows on every decision, and the queue/slo/gpu scale-down windows slide. Signals
//! cycle through 1024 precomputed workload states with varying load, rates and replica counts.
//! `fixed:1` is the baseline: the pipeline with a policy that does no work.
//!
//! Run: `cargo bench -p gpuscale-policies --bench decide`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gpuscale_policies::{Reading, Signals, build};

fn workload_states() -> Vec<Signals> {
    // A deterministic LCG so every run sees the same inputs.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    (0..1024)
        .map(|i| {
            let phase = (i as f64 / 1024.0 * std::f64::consts::TAU).sin() * 0.5 + 0.5;
            let current = 2 + (phase * 20.0) as u32;
            let load = phase * 120.0 + next() * 20.0;
            Signals {
                current,
                ready: current - (next() * 2.0) as u32 % current.max(1),
                starting: 0,
                waiting: Some(Reading::fresh(load * 0.3)),
                running: Some(Reading::fresh(load * 0.7)),
                kv_cache_usage: Some(Reading::fresh(phase)),
                gpu_utilization: Some(Reading::fresh(0.3 + phase * 0.6)),
                arrival_rate: Some(Reading::fresh(load / 2.0)),
                service_time: Some(Reading::fresh(0.5 + next() * 0.5)),
                prompt_tokens_rate: Some(Reading::fresh(next() * 20_000.0)),
                generation_tokens_rate: Some(Reading::fresh(next() * 4_000.0)),
                pods: Vec::new(),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let states = workload_states();
    let mut group = c.benchmark_group("decide");
    for spec in [
        "fixed:1",
        "hpa",
        "kpa",
        "queue",
        "slo",
        "gpu",
        "tokens",
        "queue+gpu+kpa",
    ] {
        let mut a = match build(spec, &[("maxReplicas", "200"), ("keepAlive", "adaptive")]) {
            Ok(a) => a,
            Err(e) => panic!("{spec}: {e}"),
        };
        let mut t: u64 = 0;
        group.bench_function(spec, |b| {
            b.iter(|| {
                t += 1;
                let s = &states[(t % 1024) as usize];
                black_box(a.decide(Duration::from_secs(t), black_box(s)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
