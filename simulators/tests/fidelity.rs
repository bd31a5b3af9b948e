//! The engine against queueing theory: Poisson arrivals and exponential service at a fixed
//! replica count with concurrency 1 is M/M/c, whose waiting behaviour Erlang C gives exactly.

use gpuscale_policies::build;
use gpuscale_policies::erlang::{erlang_c, mean_wait};
use gpuscale_sim::engine::{ControlConfig, Engine, service_times};
use gpuscale_sim::serving::{ColdStart, ServiceDist, Serving, ServingConfig};
use gpuscale_sim::trace::Trace;

#[test]
fn mmc_queue_wait_matches_erlang_c_within_5_percent() {
    // c = 10 replicas, lambda = 8/s, mean service 1 s: A = 8 Erlangs, rho = 0.8.
    // Erlang C: P(wait > 0) = C(10, 8) = 0.4092; W_q = C / (c mu - lambda) = 0.2046 s.
    // One million requests (125,000 s simulated) keep the estimate's error well inside 5 %.
    let (c, lambda, service) = (10u32, 8.0, 1.0);
    let trace = Trace::poisson(lambda, 1_000_000, 42);
    let serving = ServingConfig {
        serving: Serving::Concurrency { slots: 1 },
        service_time: service,
        service_dist: ServiceDist::Exp,
        cold_start: ColdStart::Constant(0.0),
        timeout: 1e9,
        initial_replicas: c,
        ..ServingConfig::default()
    };
    let control = ControlConfig::default();
    let services = service_times(&trace, &serving, 7);
    let autoscaler = build(&format!("fixed:{c}"), &[("maxReplicas", "10")]).unwrap_or_else(|e| panic!("{e}"));
    let out = Engine::new(&trace, &serving, &control, &services, "fixed", autoscaler, 7).run();

    let a = lambda * service;
    let expected_pw = erlang_c(c, a);
    let expected_wq = mean_wait(c, a) * service;
    let n = out.waits.len() as f64;
    let pw = out.waits.iter().filter(|&&w| w > 0.0).count() as f64 / n;
    let wq = out.waits.iter().sum::<f64>() / n;
    eprintln!("P(wait>0) sim {pw:.4} vs Erlang C {expected_pw:.4}; W_q sim {wq:.4} s vs {expected_wq:.4} s");
    assert!(
        (expected_pw - 0.4092).abs() < 1e-3,
        "Erlang C itself: {expected_pw}"
    );
    assert!(
        (pw / expected_pw - 1.0).abs() < 0.05,
        "P(wait>0) {pw} vs {expected_pw}"
    );
    assert!((wq / expected_wq - 1.0).abs() < 0.05, "W_q {wq} vs {expected_wq}");
    assert_eq!(out.requests, out.completed + out.failed + out.in_flight_at_end);
    assert_eq!(out.cold_starts, 0, "fixed:10 from 10 ready replicas starts none");
}
