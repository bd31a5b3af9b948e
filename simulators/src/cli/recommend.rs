//! `recommend`: the cheapest candidate that meets a p99 objective, written as a trigger.

use anyhow::{Context as _, bail};
use gpuscale_sim::report;
use gpuscale_sim::run::{PolicyRun, replay};

use crate::args::{DEFAULT_POLICIES, RecommendArgs, check};
use crate::replay::{bound_for, derive, describe, parse_params, policy_run};

/// The built-in candidates: the replay defaults set up alike, and queue at three targets in
/// slots, each at three keep-alives.
pub(crate) fn candidates(slots: u32) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = DEFAULT_POLICIES
        .split(',')
        .map(|p| (p.to_string(), Vec::new()))
        .collect();
    for mult in [0.5, 1.0, 2.0] {
        let target = ((f64::from(slots) * mult).round() as u32).max(1);
        for keep in ["60s", "5m", "15m"] {
            out.push((
                "queue".to_string(),
                vec![
                    ("queue.target".to_string(), target.to_string()),
                    ("keepAlive".to_string(), keep.to_string()),
                ],
            ));
        }
    }
    out
}

/// Trigger metadata for a run: the policy and every parameter it was built with.
pub(crate) fn trigger_metadata(run: &PolicyRun, deployment: &str) -> Vec<(String, String)> {
    let mut md = vec![
        ("deployment".to_string(), deployment.to_string()),
        ("policy".to_string(), run.spec.clone()),
    ];
    md.extend(run.params.iter().cloned());
    md
}

/// YAML-quote a scalar.
pub(crate) fn yq(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(crate) fn scaledobject_yaml(a: &RecommendArgs, md: &[(String, String)], why: &str) -> String {
    let mut y = format!(
        "# {why}\n# Written by gpuscale-sim recommend; docs/simulator.md explains it.\n\
         apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n\
         \x20 scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: {name}\n\
         \x20 minReplicaCount: 0\n  pollingInterval: 15\n  cooldownPeriod: 30\n\
         \x20 advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n\
         \x20       scaleUp:\n          stabilizationWindowSeconds: 0\n          selectPolicy: Max\n          policies:\n\
         \x20           - type: Percent\n              value: 1000\n              periodSeconds: 15\n\
         \x20       scaleDown:\n          stabilizationWindowSeconds: 0\n          selectPolicy: Max\n          policies:\n\
         \x20           - type: Percent\n              value: 100\n              periodSeconds: 15\n\
         \x20 triggers:\n    - type: external-push\n      metadata:\n        scalerAddress: {addr}\n",
        name = a.deployment,
        ns = a.namespace,
        addr = yq(&a.scaler_address),
    );
    for (k, v) in md {
        y.push_str(&format!("        {k}: {}\n", yq(v)));
    }
    y
}

pub(crate) fn annotations_yaml(a: &RecommendArgs, md: &[(String, String)], why: &str) -> String {
    let mut y = format!(
        "# {why}\n# A patch for direct mode (no KEDA): kubectl patch deployment {name} -n {ns} --patch-file THIS_FILE\n\
         metadata:\n  annotations:\n",
        name = a.deployment,
        ns = a.namespace
    );
    for (k, v) in md.iter().filter(|(k, _)| k != "deployment") {
        y.push_str(&format!("    gpuscale.io/{k}: {}\n", yq(v)));
    }
    y
}

pub(crate) fn run_recommend(a: &RecommendArgs) -> anyhow::Result<()> {
    let args = &a.replay;
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    let baselines: Vec<&str> = DEFAULT_POLICIES.split(',').collect();
    let (footing, derived) = derive(&serving, &trace, &baselines, &params);
    let given = args.policy != DEFAULT_POLICIES;
    let specs: Vec<(String, Vec<(String, String)>)> = if given {
        args.policy
            .split(',')
            .map(|p| (p.trim().to_string(), Vec::new()))
            .collect()
    } else {
        candidates(footing.slots)
    };
    let mut runs = Vec::new();
    for (spec, extra) in &specs {
        let mut user = params.clone();
        user.extend(extra.iter().cloned());
        let mut run = policy_run(spec, &user, &footing)?;
        if !extra.is_empty() {
            let shown: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            run.label = format!("{spec}[{}]", shown.join(","));
        }
        runs.push(run);
    }
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let mut results = replay(
        &trace,
        &serving,
        &control,
        &runs,
        args.seed,
        args.slo,
        args.threads(),
    )?;
    report::mark_pareto(&mut results);
    let best = results
        .iter()
        .filter_map(|r| r.summary.latency_p99_s)
        .fold(f64::INFINITY, f64::min);
    let (objective, from) = match a.objective_p99 {
        Some(o) => {
            check(o > 0.0, "--objective-p99", o, "seconds > 0")?;
            (o, "--objective-p99".to_string())
        }
        None if best.is_finite() => (
            best * 1.1,
            "10 % above the best p99 among the candidates".to_string(),
        ),
        None => bail!(
            "no candidate has a finite p99 (more than 1 % of requests fail under every one): give the objective with --objective-p99, or more capacity (--max-seqs, --tp)"
        ),
    };
    let o = bound_for(&trace, &serving, args.seed, objective, &from, &mut results);
    print!("\n{}", report::table(&results));
    println!("{}", report::oracle_line(&o));
    let pick = results
        .iter()
        .zip(&runs)
        .filter(|(r, _)| r.summary.latency_p99_s.is_some_and(|p| p <= objective))
        .min_by(|x, y| x.0.summary.gpu_hours.total_cmp(&y.0.summary.gpu_hours));
    let Some((r, run)) = pick else {
        bail!(
            "no candidate meets p99 <= {objective:.3} s (the best reached {best:.3} s): loosen --objective-p99, or give the replicas more capacity"
        );
    };
    let why = format!(
        "{}: {:.2} GPU-h ({}x the lower bound {:.2}), p99 {:.3} s <= {:.3} s, on {} ({} requests)",
        r.policy,
        r.summary.gpu_hours,
        r.gpu_hours_x_oracle
            .map_or("-".to_string(), |x| format!("{x:.2}")),
        o.gpu_hours,
        r.summary.latency_p99_s.unwrap_or(f64::NAN),
        objective,
        trace.path.display(),
        trace.requests.len()
    );
    println!("recommended: {why}");
    let md = trigger_metadata(run, &a.deployment);
    println!(
        "trigger metadata: {}",
        md.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(p) = &a.write_scaledobject {
        std::fs::write(p, scaledobject_yaml(a, &md, &why))
            .with_context(|| format!("--write-scaledobject {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.write_annotations {
        std::fs::write(p, annotations_yaml(a, &md, &why))
            .with_context(|| format!("--write-annotations {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({
            "objective_p99_s": objective,
            "oracle": &o,
            "recommended": {"policy": r.policy, "summary": &r.summary, "gpu_hours_x_oracle": r.gpu_hours_x_oracle,
                            "trigger_metadata": md.iter().cloned().collect::<std::collections::BTreeMap<String, String>>()},
            "candidates": &results,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}
