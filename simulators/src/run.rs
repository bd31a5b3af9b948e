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

/// Parameters that describe the serving system rather than the policy, defaulted from the
/// serving model when the user did not set them: `kpa.target` is Knative's
/// `containerConcurrency` (the replica's concurrency; Knative's own default of 100 assumes an
/// unlimited container), and `slo.slots` is how many requests one replica serves at once (its
/// concurrency, or for batching the batch size where decode starts to slow). Returns what was
/// added, for the report header.
pub fn serving_defaults(serving: &ServingConfig, params: &mut Vec<(String, String)>) -> Vec<String> {
    let slots = match &serving.serving {
        Serving::Concurrency { slots } => Some(*slots),
        Serving::Batching(_) => None,
    };
    let knee = match &serving.serving {
        Serving::Concurrency { slots } => *slots,
        Serving::Batching(b) => ((b.max_decode_tps / b.decode_tps).floor() as u32).clamp(1, b.max_batch_seqs),
    };
    let mut added = Vec::new();
    let mut add = |k: &str, v: String| {
        if !params.iter().any(|(pk, _)| pk == k) {
            added.push(format!("{k}={v}"));
            params.push((k.to_string(), v));
        }
    };
    if let Some(s) = slots {
        add("kpa.target", s.to_string());
    }
    add("slo.slots", knee.to_string());
    added
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
        let mut out = Engine::new(trace, serving, control, &services, &run.spec, autoscaler, seed).run();
        let summary = Summary::from_outcome(&mut out, serving.price_per_gpu_hour, slo);
        Ok(PolicyResult {
            policy: run.label.clone(),
            summary,
            timeline: std::mem::take(&mut out.timeline),
            pareto: None,
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
