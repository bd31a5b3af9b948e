//! One replay of one trace under several policies (or one sweep point): building each
//! autoscaler from its spec, running the engines in parallel, summarizing in the given order.

use std::thread;

use gpuscale_policies::spec;

use crate::engine::{ControlConfig, Engine, service_times};
use crate::report::{PolicyResult, Summary};
use crate::serving::{Serving, ServingConfig};
use crate::trace::Trace;

/// One policy to replay: its spec and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRun {
    /// Label in tables and JSON.
    pub label: String,
    /// The spec (`queue`, `kpa+queue`, `fixed:4`).
    pub spec: String,
    /// `key=value` parameters (only those that apply to this spec).
    pub params: Vec<(String, String)>,
}

impl PolicyRun {
    /// A run of `spec` with those of `params` that belong to it: autoscaler-wide keys, and
    /// policy keys whose prefix names a policy of the spec.
    pub fn new(spec: &str, params: &[(String, String)]) -> Result<Self, spec::SpecError> {
        let names = spec::policy_names(spec)?;
        let own: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k.split_once('.').is_none_or(|(p, _)| names.contains(&p)))
            .cloned()
            .collect();
        // Validate now, so a typo fails before any replay starts.
        spec::build(spec, &own)?;
        Ok(PolicyRun {
            label: spec.to_string(),
            spec: spec.to_string(),
            params: own,
        })
    }
}

/// What one replica of the serving model can do, which every policy's per-replica settings
/// are derived from so the policies are compared on the same footing.
#[derive(Clone, Debug, PartialEq)]
pub struct Footing {
    /// Requests one replica serves at once: concurrency, its limit; the estimated batching
    /// model, the batch where decode starts to slow; the measured LLM model, the fewest of
    /// `max_seqs`, the batch whose decode step takes twice a single sequence's (beyond it, time
    /// per token more than doubles), and the KV cache over the trace's mean prompt + output
    /// tokens.
    pub slots: u32,
    /// How `slots` was derived, for the run's header.
    pub how: String,
    /// The measured LLM model's `(prompt, output)` tokens/s of one replica at full load: a
    /// whole token budget of prefill per step, and the `slots` batch's decode steps.
    pub tokens: Option<(f64, f64)>,
}

/// The [`Footing`] of `serving` on `trace`.
pub fn footing(serving: &ServingConfig, trace: &Trace) -> Footing {
    match &serving.serving {
        Serving::Concurrency { slots } => Footing {
            slots: *slots,
            how: format!("--concurrency {slots}"),
            tokens: None,
        },
        Serving::Batching(b) => {
            let knee = ((b.max_decode_tps / b.decode_tps).floor() as u32).clamp(1, b.max_batch_seqs);
            Footing {
                slots: knee,
                how: format!("max_decode_tps / decode_tps = {knee}"),
                tokens: None,
            }
        }
        Serving::Llm(c) => {
            let single = c.table.decode.at(1.0);
            let knee = (1..=c.max_seqs)
                .take_while(|&d| c.table.decode.at(f64::from(d)) <= 2.0 * single)
                .last()
                .unwrap_or(1);
            let n = trace.requests.len().max(1) as f64;
            let mean = trace
                .requests
                .iter()
                .map(|r| f64::from(r.input_tokens.max(1)) + f64::from(r.output_tokens.max(1)))
                .sum::<f64>()
                / n;
            let by_kv = ((c.kv_tokens as f64 / mean.max(1.0)).floor() as u32).max(1);
            let slots = c.max_seqs.min(knee).min(by_kv);
            let secs = |us: u64| us as f64 / 1e6;
            let prefill = f64::from(c.max_batch_tokens) / secs(c.cost.step_us(c.max_batch_tokens, 1, 0));
            let decode = f64::from(slots) / secs(c.cost.step_us(0, 0, slots));
            Footing {
                slots,
                how: format!(
                    "min(max_seqs {}, 2x-step batch {knee}, KV {} / {:.0} mean tokens = {by_kv}); \
                     per replica {prefill:.0} prompt tokens/s ({}-token steps), {decode:.0} output tokens/s ({slots} sequences)",
                    c.max_seqs, c.kv_tokens, mean, c.max_batch_tokens
                ),
                tokens: Some((prefill, decode)),
            }
        }
    }
}

/// The settings a run of `spec` gets from the serving model where the user set none:
/// per-replica targets in slots (`hpa.target`, `queue.target`, `kpa.target` as Knative's
/// `containerConcurrency`, `slo.slots` and its fallback `slo.target`, `tokens.slots`), the
/// `tokens` policy's capacities (`default` is that policy), and for the `kpa` baseline alone
/// `keepAlive=0s`, so Knative's own scale-to-zero grace (30 s) decides rather than gpuscale's
/// keep-alive. `user` holds the keys given (a sweep's swept keys included).
pub fn fair_params(spec: &str, footing: &Footing, user: &[(String, String)]) -> Vec<(String, String)> {
    let names = spec::policy_names(spec).unwrap_or_default();
    let given = |k: &str| user.iter().any(|(uk, _)| uk == k);
    let value = |k: &str| user.iter().find(|(uk, _)| uk == k).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    let mut add = |k: &str, v: String| {
        if !given(k) {
            out.push((k.to_string(), v));
        }
    };
    let s = footing.slots.to_string();
    for n in &names {
        match *n {
            "hpa" if value("hpa.metric").is_none_or(|m| matches!(m, "load" | "waiting" | "running")) => {
                add("hpa.target", s.clone())
            }
            "queue" => add("queue.target", s.clone()),
            "kpa" if value("kpa.metric").is_none_or(|m| m == "concurrency") => add("kpa.target", s.clone()),
            "slo" => {
                add("slo.slots", s.clone());
                add("slo.target", s.clone());
            }
            "tokens" => {
                add("tokens.slots", s.clone());
                if let Some((p, d)) = footing.tokens {
                    add("tokens.prefillCapacity", format!("{p:.0}"));
                    add("tokens.decodeCapacity", format!("{d:.0}"));
                }
            }
            _ => {}
        }
    }
    if names == ["kpa"] {
        add("keepAlive", "0s".to_string());
    }
    out
}

/// Replay `trace` under every run, up to `threads` at once; results in the order of `runs`.
pub fn replay(
    trace: &Trace,
    serving: &ServingConfig,
    control: &ControlConfig,
    runs: &[PolicyRun],
    seed: u64,
    slo: Option<f64>,
    threads: usize,
) -> Result<Vec<PolicyResult>, spec::SpecError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let services = service_times(trace, serving, seed);
    let one = |run: &PolicyRun| -> Result<PolicyResult, spec::SpecError> {
        let autoscaler = spec::build(&run.spec, &run.params)?;
        let mut out = Engine::new(trace, serving, control, &services, autoscaler, seed).run();
        let summary = Summary::from_outcome(&mut out, serving.price_per_gpu_hour, slo);
        Ok(PolicyResult {
            policy: run.label.clone(),
            summary,
            timeline: std::mem::take(&mut out.timeline),
            pareto: None,
            gpu_hours_x_oracle: None,
        })
    };
    let threads = threads.clamp(1, runs.len());
    let chunk = runs.len().div_ceil(threads);
    let one = &one;
    // Each thread replays a contiguous chunk; joining in order keeps the results in run order.
    thread::scope(|s| {
        let handles: Vec<_> = runs
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}
