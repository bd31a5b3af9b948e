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
    let out = Engine::new(&trace, &serving, &control, &services, autoscaler, 7).run();

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

// ---- The iteration-level LLM model against its own calibration table ----

use gpuscale_sim::engine::Outcome;
use gpuscale_sim::llm::{LlmConfig, Router, StepCost};
use gpuscale_sim::perf::PerfTable;
use gpuscale_sim::trace::{Format, Request};

fn llm_trace(requests: Vec<Request>) -> Trace {
    Trace {
        path: "crafted".into(),
        format: Format::Csv,
        requests,
        skipped_rows: 0,
        first_skipped: None,
    }
}

fn burst(n: usize, input: u32, output: u32) -> Vec<Request> {
    (0..n)
        .map(|_| Request {
            arrival: 0.0,
            service: f32::NAN,
            input_tokens: input,
            output_tokens: output,
        })
        .collect()
}

fn llm_serving(table: PerfTable, budget: u32, max_seqs: u32, kv_tokens: u64) -> ServingConfig {
    ServingConfig {
        serving: Serving::Llm(Box::new(LlmConfig {
            cost: StepCost::new(&table, budget, max_seqs),
            table,
            max_batch_tokens: budget,
            max_seqs,
            kv_tokens,
            router: Router::Shared,
        })),
        cold_start: ColdStart::Constant(0.0),
        timeout: 1e9,
        initial_replicas: 1,
        ..ServingConfig::default()
    }
}

fn replay_one_replica(trace: &Trace, serving: &ServingConfig) -> Outcome {
    let control = ControlConfig::default();
    let services = service_times(trace, serving, 1);
    let autoscaler = build("fixed:1", &[("maxReplicas", "1")]).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(trace, serving, &control, &services, autoscaler, 1).run()
}

const BUNDLED: [(&str, &str, u32); 12] = [
    ("llama2-70b", "a100-80gb", 2),
    ("llama2-70b", "a100-80gb", 4),
    ("llama2-70b", "a100-80gb", 8),
    ("llama2-70b", "h100-80gb", 2),
    ("llama2-70b", "h100-80gb", 4),
    ("llama2-70b", "h100-80gb", 8),
    ("llama2-70b", "h100-80gb-pcap", 2),
    ("llama2-70b", "h100-80gb-pcap", 4),
    ("llama2-70b", "h100-80gb-pcap", 8),
    ("bloom-176b", "a100-80gb", 8),
    ("bloom-176b", "h100-80gb", 8),
    ("bloom-176b", "h100-80gb-pcap", 8),
];

#[test]
fn replaying_the_tables_own_configurations_reproduces_its_times_within_10_percent() {
    // Every measured configuration of every bundled (model, hardware, TP): a batch of N prompts
    // of P tokens arriving together on one replica whose step budget holds them all, then 128
    // output tokens each. The batch's TTFT is the table's prompt_time, its time per output
    // token the table's token_time.
    let mut checked = 0;
    let mut worst: (f64, String) = (0.0, String::new());
    for (model, hw, tp) in BUNDLED {
        let table = PerfTable::bundled(model, hw, tp).unwrap_or_else(|e| panic!("{e}"));
        for m in table.measured.clone() {
            if !m.kept {
                continue; // listed as dropped (the batch-64 regime change)
            }
            let budget = m.prompt_size * m.batch_size + m.batch_size;
            let serving = llm_serving(table.clone(), budget, m.batch_size.max(1), 100_000_000);
            let trace = llm_trace(burst(m.batch_size as usize, m.prompt_size, 128));
            let out = replay_one_replica(&trace, &serving);
            assert_eq!(out.completed, u64::from(m.batch_size));
            assert_eq!(out.preemptions, 0);
            let ttft = out.ttfts.iter().copied().fold(0.0, f64::max);
            let tpot = out.tpots.iter().copied().fold(0.0, f64::max);
            for (what, got, want) in [("prefill", ttft, m.prompt_time), ("token", tpot, m.token_time)] {
                let err = (got / want - 1.0).abs();
                let name = format!(
                    "{model}/{hw}/TP{tp} {} x {} {what}: {got:.4} s vs measured {want:.4} s",
                    m.prompt_size, m.batch_size
                );
                if err > worst.0 {
                    worst = (err, name.clone());
                }
                assert!(err <= 0.10, "{name} ({:.1} %)", err * 100.0);
            }
            checked += 1;
        }
    }
    eprintln!(
        "{checked} configurations replayed; worst {:.1} %: {}",
        worst.0 * 100.0,
        worst.1
    );
    assert!(checked > 100, "{checked}");
}

#[test]
fn a_prefill_burst_is_served_one_budget_at_a_time() {
    // 100 prompts of 3,900 tokens together on one replica (budget 8,192): the last first token
    // comes after about all 390,000 prompt tokens have been prefilled at the table's rate,
    // about 50 times what one prompt alone waits; one alone matches the table.
    let table = PerfTable::bundled("llama2-70b", "h100-80gb", 4).unwrap_or_else(|e| panic!("{e}"));
    let serving = llm_serving(table.clone(), 8192, 256, 1_000_000);
    let out = replay_one_replica(&llm_trace(burst(100, 3900, 1)), &serving);
    assert_eq!(out.completed, 100);
    let last = out.ttfts.iter().copied().fold(0.0, f64::max);
    // Each full step holds two or three prompts' chunks: the table's batched prefill rate.
    let batched = table.prefill_batched.as_ref().unwrap_or(&table.prefill);
    let serial = 390_000.0 * batched.at(8192.0) / 8192.0;
    eprintln!("last TTFT {last:.2} s; serial prefill at the table's rate {serial:.2} s");
    assert!(
        (last / serial - 1.0).abs() < 0.10,
        "last TTFT {last} vs serial {serial}"
    );

    let one = replay_one_replica(&llm_trace(burst(1, 4096, 1)), &serving);
    let measured = table
        .measured
        .iter()
        .find(|m| m.prompt_size == 4096 && m.batch_size == 1)
        .map(|m| m.prompt_time)
        .unwrap_or(f64::NAN);
    let ttft = one.ttfts[0];
    eprintln!("one 4,096-token prompt: TTFT {ttft:.4} s vs measured {measured:.4} s");
    assert!((ttft / measured - 1.0).abs() < 0.10);
    assert!(last > 50.0 * ttft);
}

#[test]
fn kv_cache_pressure_preempts_and_still_serves_everything() {
    // 40 requests of 1,000 + 1,000 tokens need 80,000 KV tokens at their peak; the cache holds
    // 20,000. Sequences are preempted (and recomputed), every request still completes, and
    // the same burst with room for all preempts none.
    let table = PerfTable::bundled("llama2-70b", "h100-80gb", 4).unwrap_or_else(|e| panic!("{e}"));
    let trace = llm_trace(burst(40, 1000, 1000));
    let tight = replay_one_replica(&trace, &llm_serving(table.clone(), 8192, 256, 20_000));
    eprintln!(
        "KV 20,000: {} preemptions, last done at {:.1} s",
        tight.preemptions, tight.duration
    );
    assert!(tight.preemptions > 0);
    assert_eq!(tight.completed, 40);
    let roomy = replay_one_replica(&trace, &llm_serving(table, 8192, 256, 200_000));
    assert_eq!(roomy.preemptions, 0);
    assert_eq!(roomy.completed, 40);
    assert!(tight.duration > roomy.duration, "recompute costs time");
}

#[test]
fn decode_slows_as_the_batch_grows_after_admission() {
    // One sequence decodes alone, then 63 more join it: its later tokens come at the 64-batch
    // step time, not at the speed it had when admitted.
    let table = PerfTable::bundled("llama2-70b", "h100-80gb", 4).unwrap_or_else(|e| panic!("{e}"));
    let serving = llm_serving(table.clone(), 8192, 256, 1_000_000);
    let mut reqs = burst(1, 100, 400);
    reqs.extend((0..63).map(|_| Request {
        arrival: 2.0,
        service: f32::NAN,
        input_tokens: 100,
        output_tokens: 400,
    }));
    let out = replay_one_replica(&llm_trace(reqs), &serving);
    assert_eq!(out.completed, 64);
    let alone = table.decode.at(1.0);
    let first_tpot = out.tpots[0];
    eprintln!("first sequence TPOT {first_tpot:.4} s; alone {alone:.4} s");
    assert!(first_tpot > 1.3 * alone, "{first_tpot} vs {alone}");
}
