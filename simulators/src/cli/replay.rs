//! `replay`: every policy on one trace, the table, the lower bound and the outputs.

use anyhow::{Context as _, bail};
use gpuscale_policies::spec;
use gpuscale_sim::llm::Router;
use gpuscale_sim::report::{self, Document, PolicyResult};
use gpuscale_sim::run::{Footing, PolicyRun, fair_params, footing, replay};
use gpuscale_sim::serving::{ColdStart, Serving, ServingConfig};
use gpuscale_sim::trace::Trace;

use crate::args::{ReplayArgs, check};

pub(crate) fn describe(trace: &Trace, serving: &ServingConfig, derived: &[String]) -> String {
    let model = match &serving.serving {
        Serving::Concurrency { slots } => format!("concurrency {slots} per replica"),
        Serving::Batching(b) => format!(
            "continuous batching, ESTIMATED speeds (prefill {} tok/s, decode {} tok/s per sequence, {} tok/s per batch, {} KV tokens, {} seqs)",
            b.prefill_tps, b.decode_tps, b.max_decode_tps, b.max_batch_tokens, b.max_batch_seqs
        ),
        Serving::Llm(c) => {
            let t = &c.table;
            format!(
                "LLM steps of {} tokens, {} seqs, {} KV tokens, router {}; step times MEASURED: {} on {} TP {} from the {} ({} configurations{}; prefill {:.0} ms per {} tokens, decode step {:.1} ms at 1 seq, {:.1} ms at {})",
                c.max_batch_tokens,
                c.max_seqs,
                c.kv_tokens,
                match c.router {
                    Router::Shared => "shared",
                    Router::LeastLoaded => "least-loaded",
                },
                t.model,
                t.hardware,
                t.tp,
                t.source,
                t.measured.len(),
                if t.dropped.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} left out as non-monotone: {}",
                        t.dropped.len(),
                        t.dropped.join(", ")
                    )
                },
                t.prefill.at(f64::from(c.max_batch_tokens)) * 1000.0,
                c.max_batch_tokens,
                t.decode.at(1.0) * 1000.0,
                t.decode.at(f64::from(c.max_seqs)) * 1000.0,
                c.max_seqs
            )
        }
    };
    let cold = match &serving.cold_start {
        ColdStart::Constant(s) => format!("{s} s"),
        ColdStart::Empirical(v) => format!("drawn from {} recorded values", v.len()),
    };
    let mut s = format!(
        "trace {} ({}): {} requests over {:.1} h\nserving: {model}; cold start {cold}; {} GPU/replica at {}/GPU-h; timeout {} s\n",
        trace.path.display(),
        trace.format,
        trace.requests.len(),
        trace.span() / 3600.0,
        serving.gpus_per_replica,
        serving.price_per_gpu_hour,
        serving.timeout,
    );
    for line in derived {
        s.push_str(line);
        s.push('\n');
    }
    if trace.skipped_rows > 0 {
        s.push_str(&format!(
            "skipped {} bad rows; the first: {}\n",
            trace.skipped_rows,
            trace.first_skipped.as_deref().unwrap_or("")
        ));
    }
    s
}

/// What was run, for both outputs.
pub(crate) fn run_context(
    trace: &Trace,
    header: &str,
    runs: &[PolicyRun],
) -> anyhow::Result<report::RunContext> {
    let bytes = std::fs::read(&trace.path).with_context(|| format!("--trace {}", trace.path.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(report::RunContext {
        tool: format!("gpuscale-sim {}", env!("CARGO_PKG_VERSION")),
        command: std::env::args().skip(1).collect(),
        trace: report::TraceRecord {
            path: trace.path.display().to_string(),
            sha256,
            format: trace.format.to_string(),
            requests: trace.requests.len(),
        },
        serving: header.lines().skip(1).map(String::from).collect(),
        runs: runs
            .iter()
            .map(|r| report::RunRecord {
                label: r.label.clone(),
                spec: r.spec.clone(),
                params: r.params.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            })
            .collect(),
    })
}

/// The settings each run gets from the serving model, and the header lines that say so.
pub(crate) fn derive(
    serving: &ServingConfig,
    trace: &Trace,
    policies: &[&str],
    user: &[(String, String)],
) -> (Footing, Vec<String>) {
    let f = footing(serving, trace);
    let mut lines = vec![format!("per-replica slots {}: {}", f.slots, f.how)];
    let per: Vec<String> = policies
        .iter()
        .filter_map(|p| {
            let fair = fair_params(p, &f, user);
            (!fair.is_empty()).then(|| {
                let kv: Vec<String> = fair.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{p}: {}", kv.join(" "))
            })
        })
        .collect();
    if !per.is_empty() {
        lines.push(format!(
            "derived (set any with --param to override): {}",
            per.join("; ")
        ));
    }
    (f, lines)
}

/// A run of `policy` with the user's parameters and the serving model's fair settings.
pub(crate) fn policy_run(
    policy: &str,
    user: &[(String, String)],
    footing: &Footing,
) -> anyhow::Result<PolicyRun> {
    let mut params = user.to_vec();
    params.extend(fair_params(policy, footing, user));
    PolicyRun::new(policy, &params).map_err(|e| anyhow::anyhow!("--policy {policy}: {e}"))
}

/// The `--oracle` bound, with every result's multiple of it.
pub(crate) fn oracle(
    args: &ReplayArgs,
    trace: &Trace,
    serving: &ServingConfig,
    results: &mut [PolicyResult],
) -> anyhow::Result<Option<gpuscale_sim::oracle::Oracle>> {
    if !args.oracle {
        return Ok(None);
    }
    let (target, from) = match args.oracle_p99 {
        Some(t) => {
            check(t > 0.0, "--oracle-p99", t, "seconds > 0")?;
            (t, "--oracle-p99".to_string())
        }
        None => {
            let best = results
                .iter()
                .filter_map(|r| r.summary.latency_p99_s.map(|p| (p, r.policy.clone())))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((p, name)) => (p, format!("the best p99 replayed, {name}")),
                None => bail!(
                    "--oracle: no policy has a finite p99 latency to take as the target (more than 1 % of requests failed under every one); give the target with --oracle-p99 SECONDS"
                ),
            }
        }
    };
    Ok(Some(bound_for(trace, serving, args.seed, target, &from, results)))
}

/// The bound at `target`, with every result's multiple of it.
pub(crate) fn bound_for(
    trace: &Trace,
    serving: &ServingConfig,
    seed: u64,
    target: f64,
    from: &str,
    results: &mut [PolicyResult],
) -> gpuscale_sim::oracle::Oracle {
    let services = gpuscale_sim::engine::service_times(trace, serving, seed);
    let o = gpuscale_sim::oracle::bound(trace, serving, &services, target, from);
    for r in results.iter_mut() {
        r.gpu_hours_x_oracle =
            (o.gpu_hours > 0.0).then(|| (r.summary.gpu_hours / o.gpu_hours * 100.0).round() / 100.0);
    }
    o
}

pub(crate) fn write_outputs(
    args: &ReplayArgs,
    title: &str,
    run: &report::RunContext,
    oracle: Option<&gpuscale_sim::oracle::Oracle>,
    results: &[PolicyResult],
) -> anyhow::Result<()> {
    if let Some(o) = oracle {
        println!("{}", report::oracle_line(o));
    }
    if let Some(r) = report::recommendation(results) {
        println!("{r}");
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&Document {
            run,
            oracle,
            policies: results,
        })?;
        std::fs::write(p, text + "\n").with_context(|| format!("--json {}", p.display()))?;
    }
    if let Some(p) = &args.report {
        let page = report::html(title, run, oracle, results).map_err(anyhow::Error::msg)?;
        std::fs::write(p, page).with_context(|| format!("--report {}", p.display()))?;
    }
    Ok(())
}

/// Every `--param` must be used by one of the `--policy` specs: a key no policy reads would
/// change nothing, silently.
pub(crate) fn check_params_used(policy: &str, params: &[(String, String)]) -> anyhow::Result<()> {
    let specs: Vec<&str> = policy.split(',').map(str::trim).collect();
    for (k, v) in params {
        spec::check_used(k, &specs).map_err(|e| anyhow::anyhow!("--param {k}={}: {e}", spec::brief(v)))?;
    }
    Ok(())
}

pub(crate) fn parse_params(words: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    Ok(spec::parse_params(words.iter().map(String::as_str))?)
}

pub(crate) fn run_replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    check_params_used(&args.policy, &params)?;
    for (k, v) in &params {
        if v.contains(',') {
            bail!("--param {k}={v}: replay takes one value per key; use `gpuscale-sim sweep` for a list");
        }
    }
    let policies: Vec<&str> = args.policy.split(',').map(str::trim).collect();
    let (footing, derived) = derive(&serving, &trace, &policies, &params);
    let runs = policies
        .iter()
        .map(|p| policy_run(p, &params, &footing))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let run = run_context(&trace, &header, &runs)?;
    let results = replay(
        &trace,
        &serving,
        &control,
        &runs,
        args.seed,
        args.slo,
        args.threads(),
    )?;
    conclude(args, &trace, &serving, &run, results, "replay")
}

/// Mark the Pareto frontier, add the lower bound, print the table and write `--json` and
/// `--report`: how `replay` and `sweep` end.
pub(crate) fn conclude(
    args: &ReplayArgs,
    trace: &Trace,
    serving: &ServingConfig,
    run: &report::RunContext,
    mut results: Vec<PolicyResult>,
    command: &str,
) -> anyhow::Result<()> {
    report::mark_pareto(&mut results);
    let oracle = oracle(args, trace, serving, &mut results)?;
    print!("\n{}", report::table(&results));
    println!("* on the cost / p99-latency Pareto frontier");
    write_outputs(
        args,
        &format!("gpuscale-sim {command}: {}", trace.path.display()),
        run,
        oracle.as_ref(),
        &results,
    )
}
