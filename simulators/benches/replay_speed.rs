//! Simulated requests per wall-clock second.
//!
//! 1. A 10-million-request Poisson replay (1000 req/s for 10,000 s, exponential service with
//!    mean 20 ms, 4 requests per replica, 10 s cold start) under `kpa`, against the same replay
//!    under `fixed:8` in the same process: the engine's own cost with a policy that does nothing.
//! 2. The 11-day Alibaba GenAI trace from ../shared/traces under every policy, one after the
//!    other, and all at once on the machine's cores.
//!
//! Run: `cargo bench -p gpuscale-sim --bench replay_speed`

use std::path::Path;
use std::time::Instant;

use gpuscale_policies::spec::build;
use gpuscale_sim::engine::{ControlConfig, Engine, service_times};
use gpuscale_sim::run::{PolicyRun, replay, serving_defaults};
use gpuscale_sim::serving::{ColdStart, Serving, ServingConfig};
use gpuscale_sim::trace::{self, ReadOptions, Trace};

fn time_one(trace: &Trace, serving: &ServingConfig, spec: &str, params: &[(&str, &str)]) -> (f64, u64) {
    let control = ControlConfig::default();
    let services = service_times(trace, serving, 1);
    let autoscaler = build(spec, params).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let start = Instant::now();
    let out = Engine::new(trace, serving, &control, &services, spec, autoscaler, 1).run();
    (start.elapsed().as_secs_f64(), out.completed)
}

fn main() {
    let n = 10_000_000;
    let trace = Trace::poisson(1000.0, n, 1);
    let serving = ServingConfig {
        serving: Serving::Concurrency { slots: 4 },
        service_time: 0.02,
        cold_start: ColdStart::Constant(10.0),
        ..ServingConfig::default()
    };
    println!("poisson replay: {n} requests, 1000 req/s, S = 20 ms exp, 4 per replica, 10 s cold start");
    for (spec, params) in [
        ("fixed:8", vec![("maxReplicas", "100")]),
        ("kpa", vec![("maxReplicas", "100"), ("kpa.target", "4")]),
    ] {
        let (secs, completed) = time_one(&trace, &serving, spec, &params);
        println!(
            "  {spec:<8} {secs:>6.2} s  {:>6.2} M requests/s  ({completed} completed)",
            n as f64 / secs / 1e6
        );
    }

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/traces/alibaba_genai_lora_request_trace_2024-11-15_to_11-26.csv");
    let Ok(alibaba) = trace::read(&path, &ReadOptions::default()) else {
        println!("SKIPPED the Alibaba replay: {} not found", path.display());
        return;
    };
    let serving = ServingConfig::default();
    let mut params = Vec::new();
    serving_defaults(&serving, &mut params);
    let runs: Vec<PolicyRun> = ["hpa", "kpa", "queue", "slo", "gpu", "fixed:2"]
        .iter()
        .map(|p| PolicyRun::new(p, &params).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    println!(
        "alibaba genai trace: {} requests over {:.1} days, 6 policies",
        alibaba.requests.len(),
        alibaba.span() / 86_400.0
    );
    let control = ControlConfig::default();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    for threads in [1, cores] {
        let start = Instant::now();
        let results =
            replay(&alibaba, &serving, &control, &runs, 1, None, threads).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "  {threads} thread(s): {:.2} s for all {} policies",
            start.elapsed().as_secs_f64(),
            results.len()
        );
    }
}
