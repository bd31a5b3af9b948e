//! `sweep`: one policy over a grid of parameters, with the cost / p99 Pareto frontier.

use anyhow::bail;
use gpuscale_policies::spec;
use gpuscale_sim::run::{PolicyRun, replay};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{MAX_SWEEP_POINTS, ReplayArgs};
use crate::replay::{check_params_used, conclude, derive, describe, parse_params, policy_run, run_context};

/// Every combination of the swept values, keys in the order given.
pub(crate) fn grid(params: &[(String, String)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, v) in params {
        let values: Vec<&str> = v.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
        out = out
            .into_iter()
            .flat_map(|base| {
                values.iter().map(move |val| {
                    let mut b = base.clone();
                    b.push((k.clone(), val.to_string()));
                    b
                })
            })
            .collect();
    }
    out
}

pub(crate) fn run_sweep(args: &ReplayArgs) -> anyhow::Result<()> {
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    check_params_used(&args.policy, &params)?;
    for (k, v) in &params {
        if v.split(',').any(|x| x.trim().is_empty()) {
            bail!(
                "--param {k}={}: an empty value in the list; give values separated by commas, e.g. {k}=2,4,8",
                spec::brief(v)
            );
        }
    }
    let policies: Vec<&str> = args.policy.split(',').map(str::trim).collect();
    let (footing, derived) = derive(&serving, &trace, &policies, &params);
    // Counted before the grid is built: a grid of 10^12 points is refused, not allocated.
    let size = params.iter().fold(1usize, |n, (_, v)| {
        n.saturating_mul(v.split(',').filter(|x| !x.trim().is_empty()).count())
    });
    if size > MAX_SWEEP_POINTS {
        bail!("the sweep has {size} points; at most {MAX_SWEEP_POINTS} (narrow the --param lists)");
    }
    let points = grid(&params);
    let mut runs = Vec::new();
    for &policy in &policies {
        for point in &points {
            let mut run = policy_run(policy, point, &footing)?;
            let swept: Vec<String> = point
                .iter()
                .filter(|(k, _)| run.params.iter().any(|(rk, _)| rk == k))
                .filter(|(k, _)| params.iter().any(|(pk, pv)| pk == k && pv.contains(',')))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !swept.is_empty() {
                run.label = format!("{policy}[{}]", swept.join(","));
            }
            if !runs.iter().any(|r: &PolicyRun| r.label == run.label) {
                runs.push(run);
            }
        }
    }
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let run = run_context(&trace, &header, &runs)?;
    let bar = ProgressBar::new(runs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} replays {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(args.threads().max(1)) {
        results.extend(replay(
            &trace,
            &serving,
            &control,
            chunk,
            args.seed,
            args.slo,
            args.threads(),
        )?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    conclude(args, &trace, &serving, &run, results, "sweep")
}
