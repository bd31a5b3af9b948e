//! Simulated requests per wall-clock second.
//!
//! 1. A 10-million-request Poisson replay (1000 req/s for 10,000 s, exponential service with
//!    mean 20 ms, 4 requests per replica, 10 s cold start) under `kpa`, against the same replay
//!    under `fixed:8` in the same process: the engine's own cost with a policy that does nothing.
//! 2. The 11-day Alibaba GenAI trace from ../shared/traces under every policy, one after the
//!    other, and all at once on the machine's cores.
//! 3. The iteration-level LLM model (llama2-70b, H100, TP 4) on the bundled Azure conversation
//!    trace, and on it scaled up: K copies overlaid, each shifted by a random fraction of a
//!    second, so K times the rate over the same hour, under `fixed:N` and `queue`, one thread.
//!
//! Run: `cargo bench -p gpuscale-sim --bench replay_speed`

use std::path::Path;
use std::time::Instant;

use gpuscale_policies::spec::build;
use gpuscale_sim::engine::{ControlConfig, Engine, service_times};
use gpuscale_sim::llm::{LlmConfig, Router, StepCost};
use gpuscale_sim::perf::{self, PerfTable};
use gpuscale_sim::rng::Rng;
use gpuscale_sim::run::{PolicyRun, fair_params, footing, replay};
use gpuscale_sim::serving::{ColdStart, Serving, ServingConfig};
use gpuscale_sim::trace::{self, ReadOptions, Trace};

fn time_one(trace: &Trace, serving: &ServingConfig, spec: &str, params: &[(&str, &str)]) -> (f64, u64) {
    let control = ControlConfig::default();
    let services = service_times(trace, serving, 1);
    let autoscaler = build(spec, params).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let start = Instant::now();
    let out = Engine::new(trace, serving, &control, &services, autoscaler, 1).run();
    (start.elapsed().as_secs_f64(), out.completed)
}

/// `k` copies of `base` overlaid, each shifted by a random fraction of a second.
fn scaled(base: &Trace, k: usize, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let mut requests = Vec::with_capacity(base.requests.len() * k);
    for _ in 0..k {
        let shift = rng.uniform();
        requests.extend(base.requests.iter().map(|r| {
            let mut r = *r;
            r.arrival += shift;
            r
        }));
    }
    requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Trace {
        path: format!("{} x{k}", base.path.display()).into(),
        requests,
        ..base.clone()
    }
}

fn llm_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/traces/AzureLLMInferenceTrace_conv.csv");
    let base = trace::read(&path, &ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let table = PerfTable::bundled("llama2-70b", "h100-80gb", 4).unwrap_or_else(|e| panic!("{e}"));
    let kv = perf::default_kv_tokens("llama2-70b", "h100-80gb", 4).unwrap_or(500_000);
    let serving = ServingConfig {
        serving: Serving::Llm(Box::new(LlmConfig {
            cost: StepCost::new(&table, 8192, 1024),
            table,
            max_batch_tokens: 8192,
            max_seqs: 1024,
            kv_tokens: kv,
            router: Router::Shared,
        })),
        gpus_per_replica: 4,
        ..ServingConfig::default()
    };
    println!("llm model (llama2-70b, h100-80gb, TP 4, shared router), Azure conversation trace, one thread:");
    for k in [1usize, 10, 50] {
        let trace = if k == 1 { base.clone() } else { scaled(&base, k, 7) };
        let foot = footing(&serving, &trace);
        let n = trace.requests.len();
        let fixed = format!("fixed:{}", 3 * k);
        for spec in [fixed.as_str(), "queue"] {
            let mut params = vec![("maxReplicas".to_string(), "1000".to_string())];
            params.extend(fair_params(spec, &foot, &params));
            let run = PolicyRun::new(spec, &params).unwrap_or_else(|e| panic!("{e}"));
            let start = Instant::now();
            let results = replay(&trace, &serving, &ControlConfig::default(), &[run], 1, None, 1)
                .unwrap_or_else(|e| panic!("{e}"));
            let secs = start.elapsed().as_secs_f64();
            let s = &results[0].summary;
            println!(
                "  x{k:<3} {n:>9} requests  {spec:<8} {secs:>6.3} s  {:>6.2} M requests/s  ({} completed, {} failed, {:.1} replicas mean)",
                n as f64 / secs / 1e6,
                s.completed,
                s.failed,
                s.replicas_mean
            );
        }
    }
}

fn main() {
    llm_section();
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
    let foot = footing(&serving, &alibaba);
    let runs: Vec<PolicyRun> = ["hpa", "kpa", "queue", "slo", "gpu", "fixed:2"]
        .iter()
        .map(|p| PolicyRun::new(p, &fair_params(p, &foot, &[])).unwrap_or_else(|e| panic!("{e}")))
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
