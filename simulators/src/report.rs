//! What a replay reports: the summary (stable key names, documented in docs/simulator.md), the
//! printed table, the JSON document and the HTML page with SVG charts.

use std::fmt::Write as _;

use plotters::prelude::*;
use serde::Serialize;

use crate::engine::{Outcome, Point};

/// Per-policy summary. Key names are a contract: scripts read them from `--json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// GPU-hours held (starting, ready and draining replicas).
    pub gpu_hours: f64,
    /// `gpu_hours * price per GPU-hour`.
    pub cost: f64,
    /// Requests that arrived.
    pub requests: u64,
    /// Completed within the timeout.
    pub completed: u64,
    /// Timed out, finished too late, or refused (full queue, or larger than the KV cache).
    pub failed: u64,
    /// Of the failed, refused at arrival as larger than a replica's KV cache.
    pub rejected: u64,
    /// Queued or in service at the end (0 with the default `--drain auto`).
    pub in_flight_at_end: u64,
    /// Median end-to-end latency over every request, failed and in-flight ones counting as
    /// beyond any value; `null` when the percentile falls among those (or nothing arrived).
    pub latency_p50_s: Option<f64>,
    /// 90th percentile.
    pub latency_p90_s: Option<f64>,
    /// 99th percentile.
    pub latency_p99_s: Option<f64>,
    /// Mean queue wait of dispatched requests.
    pub queue_wait_mean_s: Option<f64>,
    /// 99th percentile queue wait.
    pub queue_wait_p99_s: Option<f64>,
    /// Median time to first token (LLM models only), failed requests counting as beyond any value.
    pub ttft_p50_s: Option<f64>,
    /// 99th percentile time to first token (LLM models only).
    pub ttft_p99_s: Option<f64>,
    /// Median time per output token after the first, completed requests (LLM model only).
    pub tpot_p50_s: Option<f64>,
    /// 99th percentile time per output token.
    pub tpot_p99_s: Option<f64>,
    /// Sequences preempted for KV cache and recomputed (LLM model only).
    pub preemptions: u64,
    /// Share of arrived requests completed within `--slo` seconds (with `--slo` only).
    pub slo_attainment: Option<f64>,
    /// Replicas that started and became ready (each paid a cold start).
    pub cold_starts: u64,
    /// Replicas removed while still starting (paid for until then, never ready).
    pub cancelled_starts: u64,
    /// Changes of the desired count.
    pub scale_events: u64,
    /// Time-weighted mean of replicas held.
    pub replicas_mean: f64,
    /// Most replicas held at once.
    pub replicas_max: u32,
}

/// Nearest-rank percentile (the value at rank `ceil(p * n)`), in place, O(n).
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, v, _) = values.select_nth_unstable_by(rank, f64::total_cmp);
    Some(*v)
}

fn round(x: f64) -> f64 {
    // Six significant decimals keep the JSON readable and identical across platforms' printing.
    (x * 1e6).round() / 1e6
}

/// A percentile, `None` when it falls on a failed request (infinity).
fn pct(values: &mut [f64], p: f64) -> Option<f64> {
    percentile(values, p).filter(|v| v.is_finite()).map(round)
}

impl Summary {
    /// Summarize an outcome; `slo` is the latency objective in seconds, if any.
    pub fn from_outcome(o: &mut Outcome, price_per_gpu_hour: f64, slo: Option<f64>) -> Summary {
        let gpu_hours = o.gpu_seconds / 3600.0;
        let slo_attainment = slo.map(|s| {
            let ok = o.latencies.iter().filter(|&&l| l <= s).count() as f64;
            if o.requests == 0 {
                1.0
            } else {
                round(ok / o.requests as f64)
            }
        });
        let dispatched: Vec<f64> = o.waits.iter().copied().filter(|w| w.is_finite()).collect();
        let wait_mean =
            (!dispatched.is_empty()).then(|| dispatched.iter().sum::<f64>() / dispatched.len() as f64);
        Summary {
            gpu_hours: round(gpu_hours),
            cost: round(gpu_hours * price_per_gpu_hour),
            requests: o.requests,
            completed: o.completed,
            failed: o.failed,
            rejected: o.rejected,
            in_flight_at_end: o.in_flight_at_end,
            latency_p50_s: pct(&mut o.latencies, 0.50),
            latency_p90_s: pct(&mut o.latencies, 0.90),
            latency_p99_s: pct(&mut o.latencies, 0.99),
            queue_wait_mean_s: wait_mean.map(round),
            queue_wait_p99_s: pct(&mut o.waits, 0.99),
            ttft_p50_s: pct(&mut o.ttfts, 0.50),
            ttft_p99_s: pct(&mut o.ttfts, 0.99),
            tpot_p50_s: pct(&mut o.tpots, 0.50),
            tpot_p99_s: pct(&mut o.tpots, 0.99),
            preemptions: o.preemptions,
            slo_attainment,
            cold_starts: o.cold_starts,
            cancelled_starts: o.cancelled_starts,
            scale_events: o.scale_events,
            replicas_mean: round(o.replicas_mean),
            replicas_max: o.replicas_max,
        }
    }
}

/// One policy's result.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyResult {
    /// The policy spec and parameters, as given.
    pub policy: String,
    /// The summary.
    pub summary: Summary,
    /// Per-second points (empty unless asked for).
    pub timeline: Vec<Point>,
    /// On the cost / p99-latency Pareto frontier of this run's results (sweeps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pareto: Option<bool>,
    /// GPU-hours as a multiple of the `--oracle` lower bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_hours_x_oracle: Option<f64>,
}

/// What was run, recorded in both outputs so a shared report can be reproduced: running
/// `tool` with `command` from the same directory, on a trace with the same SHA-256, writes the
/// same JSON byte for byte.
#[derive(Clone, Debug, Serialize)]
pub struct RunContext {
    /// `gpuscale-sim` and its version.
    pub tool: String,
    /// The arguments after the program name, exactly as given.
    pub command: Vec<String>,
    /// The trace read.
    pub trace: TraceRecord,
    /// The serving model and the settings derived from it, as the header prints them.
    pub serving: Vec<String>,
    /// Every run: its label, policy spec and the parameters it was built with (given or derived).
    pub runs: Vec<RunRecord>,
}

/// The trace behind a result.
#[derive(Clone, Debug, Serialize)]
pub struct TraceRecord {
    /// As given.
    pub path: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// The format read.
    pub format: String,
    /// Requests read.
    pub requests: usize,
}

/// One run's settings.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// The label in the table.
    pub label: String,
    /// The policy spec.
    pub spec: String,
    /// Parameters as `key=value`.
    pub params: Vec<String>,
}

/// The `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct Document<'a> {
    /// What was run.
    pub run: &'a RunContext,
    /// The `--oracle` lower bound, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle: Option<&'a crate::oracle::Oracle>,
    /// One entry per policy (or sweep point), in the order given.
    pub policies: &'a [PolicyResult],
}

/// The line naming the result to start from: the cheapest on the Pareto frontier whose p99 is
/// within 10 % of the best p99 among them (`None` when nothing completed).
pub fn recommendation(results: &[PolicyResult]) -> Option<String> {
    let on: Vec<&PolicyResult> = results
        .iter()
        .filter(|r| r.pareto == Some(true) && r.summary.latency_p99_s.is_some())
        .collect();
    let best = on
        .iter()
        .filter_map(|r| r.summary.latency_p99_s)
        .fold(f64::INFINITY, f64::min);
    let pick = on
        .iter()
        .filter(|r| r.summary.latency_p99_s.is_some_and(|p| p <= best * 1.1))
        .min_by(|a, b| a.summary.cost.total_cmp(&b.summary.cost))?;
    Some(format!(
        "recommended: {} — the cheapest on the cost / p99 frontier within 10 % of its best p99 ({:.2} GPU-h{}, cost {:.2}, p99 {:.3} s against {:.3} s)",
        pick.policy,
        pick.summary.gpu_hours,
        pick.gpu_hours_x_oracle
            .map_or(String::new(), |x| format!(", {x:.2}x the oracle's bound")),
        pick.summary.cost,
        pick.summary.latency_p99_s.unwrap_or(f64::NAN),
        best
    ))
}

/// The bound in one line, as printed and in the report.
pub fn oracle_line(o: &crate::oracle::Oracle) -> String {
    format!(
        "oracle: at least {:.2} GPU-h to meet p99 <= {:.3} s ({}): work {:.2} + idle {:.2} GPU-h, presence {:.2} GPU-h{}",
        o.gpu_hours,
        o.p99_target_s,
        o.p99_target_from,
        o.work_gpu_hours,
        o.idle_gpu_hours,
        o.presence_gpu_hours,
        if o.infeasible_requests > 0 {
            format!("; {} requests cannot meet it even alone", o.infeasible_requests)
        } else {
            String::new()
        }
    )
}

/// Mark the results on the cost / p99-latency Pareto frontier: no other result is at least as
/// cheap and at least as fast with one of the two strictly better. Results without a p99 (no
/// completed request) are never on it.
pub fn mark_pareto(results: &mut [PolicyResult]) {
    let points: Vec<Option<(f64, f64)>> = results
        .iter()
        .map(|r| r.summary.latency_p99_s.map(|p| (r.summary.cost, p)))
        .collect();
    for (i, r) in results.iter_mut().enumerate() {
        r.pareto = Some(points[i].is_some_and(|(c, p)| {
            !points
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && q.is_some_and(|(c2, p2)| c2 <= c && p2 <= p && (c2 < c || p2 < p)))
        }));
    }
}

fn opt(v: Option<f64>, width: usize) -> String {
    match v {
        Some(x) => format!("{x:>width$.3}"),
        None => format!("{:>width$}", "-"),
    }
}

/// A latency percentile: `>timeout` where it falls among failed requests.
fn lat(v: Option<f64>, m: &Summary, width: usize) -> String {
    match v {
        None if m.failed + m.in_flight_at_end > 0 => format!("{:>width$}", "failed"),
        v => opt(v, width),
    }
}

/// The printed table.
pub fn table(results: &[PolicyResult]) -> String {
    let w = results.iter().map(|r| r.policy.len()).max().unwrap_or(6).max(6);
    let pareto = results.iter().any(|r| r.pareto.is_some());
    let oracle = results.iter().any(|r| r.gpu_hours_x_oracle.is_some());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w$} {:>9}{} {:>9} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>6} {:>7} {:>5}{}",
        "policy",
        "gpu_h",
        if oracle {
            format!(" {:>7}", "x_bound")
        } else {
            String::new()
        },
        "cost",
        "completed",
        "failed",
        "flight",
        "p50_s",
        "p99_s",
        "wait_p99",
        "ttft_p99",
        "tpot_p99",
        "slo",
        "cold",
        "cancel",
        "preempt",
        "scale",
        "mean",
        "max",
        if pareto { "  pareto" } else { "" }
    );
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "{:<w$} {:>9.2}{} {:>9.2} {:>9} {:>7} {:>6} {} {} {} {} {} {} {:>6} {:>6} {:>7} {:>6} {:>7.2} {:>5}{}",
            r.policy,
            m.gpu_hours,
            match r.gpu_hours_x_oracle {
                Some(x) => format!(" {x:>6.2}x"),
                None if oracle => format!(" {:>7}", "-"),
                None => String::new(),
            },
            m.cost,
            m.completed,
            m.failed,
            m.in_flight_at_end,
            lat(m.latency_p50_s, m, 8),
            lat(m.latency_p99_s, m, 8),
            lat(m.queue_wait_p99_s, m, 8),
            if m.ttft_p50_s.is_none() && m.tpot_p50_s.is_none() && m.completed > 0 {
                opt(None, 8) // not an LLM model
            } else {
                lat(m.ttft_p99_s, m, 8)
            },
            opt(m.tpot_p99_s, 8),
            opt(m.slo_attainment, 8),
            m.cold_starts,
            m.cancelled_starts,
            m.preemptions,
            m.scale_events,
            m.replicas_mean,
            m.replicas_max,
            match r.pareto {
                Some(true) => "  *",
                _ => "",
            }
        );
    }
    s
}

/// An argument as a POSIX shell would take it back.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The strip above a chart's plot that holds its legend, so the legend never covers data.
const LEGEND_STRIP: u32 = 26;

/// Draw a legend of `(label, colour, filled)` entries into `area`, left to right.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(&str, RGBColor, bool)],
) -> Result<(), String> {
    let mut x = 60i32;
    for (label, color, filled) in entries {
        let y = (LEGEND_STRIP / 2) as i32;
        if *filled {
            area.draw(&Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.filled()))
                .map_err(|e| e.to_string())?;
        } else {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 18, y)],
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        }
        area.draw(&Text::new(
            label.to_string(),
            (x + 24, y - 7),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(|e| e.to_string())?;
        x += 40 + 7 * label.len() as i32;
    }
    Ok(())
}

/// Replicas and demand over time for one policy, as an SVG string: replicas on the left axis,
/// requests on the right, the legend in its own strip above the plot.
fn timeline_svg(title: &str, points: &[Point]) -> Result<String, String> {
    let step = points.len().div_ceil(1500).max(1);
    let sampled: Vec<&Point> = points.iter().step_by(step).collect();
    let xmax = sampled.last().map_or(1.0, |p| p.t as f64).max(1.0);
    let rmax = sampled
        .iter()
        .map(|p| f64::from((p.ready + p.starting).max(p.desired)))
        .fold(1.0, f64::max)
        * 1.15;
    let dmax = sampled
        .iter()
        .map(|p| f64::from(p.queued + p.running))
        .fold(1.0, f64::max)
        * 1.15;
    let held = RGBColor(150, 185, 240);
    let desired = RGBColor(10, 40, 130);
    let demand = RGBColor(210, 110, 30);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, body) = root.split_vertically(LEGEND_STRIP);
        legend(
            &top,
            &[
                ("replicas held (ready + starting)", held, true),
                ("desired replicas", desired, false),
                ("requests queued + running (right axis)", demand, false),
            ],
        )?;
        let mut chart = ChartBuilder::on(&body)
            .caption(title, ("sans-serif", 16))
            .margin_top(4)
            .margin_left(8)
            // Room for the last tick's label ("3600") at the right edge.
            .margin_right(24)
            .margin_bottom(6)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .right_y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, 0f64..rmax)
            .map_err(|e| e.to_string())?
            .set_secondary_coord(0f64..xmax, 0f64..dmax);
        chart
            .configure_mesh()
            .x_desc("time since the first arrival (s)")
            .y_desc("replicas")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .configure_secondary_axes()
            .y_desc("requests")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(AreaSeries::new(
                sampled
                    .iter()
                    .map(|p| (p.t as f64, f64::from(p.ready + p.starting))),
                0.0,
                held.mix(0.6),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(DashedLineSeries::new(
                sampled.iter().map(|p| (p.t as f64, f64::from(p.desired))),
                6,
                4,
                desired.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_secondary_series(LineSeries::new(
                sampled
                    .iter()
                    .map(|p| (p.t as f64, f64::from(p.queued + p.running))),
                demand.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Cost against p99 latency across results, Pareto points filled.
fn tradeoff_svg(results: &[PolicyResult]) -> Result<String, String> {
    // Replays carry no frontier in their JSON; the chart still shows it.
    let mut marked = results.to_vec();
    if marked.iter().any(|r| r.pareto.is_none()) {
        mark_pareto(&mut marked);
    }
    // Results at the same point share one label ("kpa, slo"; past two, "kpa (+3 more)"), so
    // names never overprint.
    let mut pts: Vec<(Vec<String>, f64, f64, bool)> = Vec::new();
    for r in &marked {
        let Some(p) = r.summary.latency_p99_s else {
            continue;
        };
        let c = r.summary.cost;
        match pts.iter_mut().find(|q| q.1 == c && q.2 == p) {
            Some(q) => q.0.push(r.policy.clone()),
            None => pts.push((vec![r.policy.clone()], c, p, r.pareto.unwrap_or(false))),
        }
    }
    let pts: Vec<(String, f64, f64, bool)> = pts
        .into_iter()
        .map(|(names, c, p, on)| {
            let name = match names.len() {
                1 | 2 => names.join(", "),
                n => format!("{} (+{} more)", names[0], n - 1),
            };
            (name, c, p, on)
        })
        .collect();
    // A sweep has too many points to name: only the frontier is labelled (the table has all).
    let label_all = pts.len() <= 6;
    let cmax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.2;
    let lmax = pts.iter().map(|p| p.2).fold(0.0, f64::max).max(1e-9) * 1.2;
    let color = RGBColor(30, 90, 200);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, body) = root.split_vertically(LEGEND_STRIP);
        legend(
            &top,
            &[
                ("on the cost / p99 Pareto frontier (filled)", color, true),
                (
                    "dominated: another result is cheaper and as fast, or faster and as cheap",
                    color,
                    false,
                ),
            ],
        )?;
        let mut chart = ChartBuilder::on(&body)
            .caption("cost against p99 latency", ("sans-serif", 16))
            .margin_top(4)
            .margin_left(8)
            .margin_right(24)
            .margin_bottom(6)
            .x_label_area_size(36)
            .y_label_area_size(54)
            .build_cartesian_2d(0f64..cmax, 0f64..lmax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("cost (USD: GPU-hours x --price-per-gpu-hour)")
            .y_desc("p99 latency (s)")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|(name, c, l, on)| {
                let style = if *on {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                // The name sits beside its marker, never on it.
                let text = if *on || label_all {
                    name.clone()
                } else {
                    String::new()
                };
                EmptyElement::at((*c, *l))
                    + Circle::new((0, 0), 5, style)
                    + Text::new(text, (9, -16), ("sans-serif", 12).into_font())
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The results as an HTML table, the Pareto mark first so no scrolling hides it.
fn html_table(results: &[PolicyResult]) -> String {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let mut h = String::from(
        "<table id=\"results\"><tr><th title=\"on the cost / p99 Pareto frontier\">pareto</th><th>policy</th>\
         <th>GPU-h</th><th>x bound</th><th>cost</th><th>completed</th><th>failed</th><th>in flight</th><th>p50 s</th><th>p99 s</th>\
         <th>wait p99 s</th><th>TTFT p99 s</th><th>TPOT p99 s</th><th>SLO</th><th>cold starts</th><th>cancelled starts</th><th>preemptions</th><th>mean replicas</th><th>max</th></tr>\n",
    );
    for r in results {
        let m = &r.summary;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"policy\">{}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            if r.pareto == Some(true) { "*" } else { "" },
            escape(&r.policy),
            m.gpu_hours,
            r.gpu_hours_x_oracle
                .map_or("-".to_string(), |x| format!("{x:.2}x")),
            m.cost,
            m.completed,
            m.failed,
            m.in_flight_at_end,
            cell(m.latency_p50_s),
            cell(m.latency_p99_s),
            cell(m.queue_wait_p99_s),
            cell(m.ttft_p99_s),
            cell(m.tpot_p99_s),
            cell(m.slo_attainment),
            m.cold_starts,
            m.cancelled_starts,
            m.preemptions,
            m.replicas_mean,
            m.replicas_max,
        );
    }
    h.push_str("</table>\n");
    h
}

/// A self-contained HTML page: the summary table, a timeline chart per policy (when the
/// timeline was recorded) and the cost / latency trade-off.
pub fn html(
    title: &str,
    run: &RunContext,
    oracle: Option<&crate::oracle::Oracle>,
    results: &[PolicyResult],
) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:24px;max-width:1000px}}pre{{font-size:12px;\
         overflow-x:auto}}svg{{display:block;margin:12px 0}}table{{border-collapse:collapse;\
         font-size:12px}}td,th{{border:1px solid #ccc;padding:2px 5px;text-align:right}}\
         td.policy{{text-align:left;word-break:break-all;max-width:260px}}#run{{white-space:pre-wrap;\
         word-break:break-all}}</style></head><body>\n\
         <h1>{t}</h1>\n{table}",
        t = escape(title),
        table = html_table(results)
    );
    if let Some(o) = oracle {
        let _ = writeln!(h, "<p id=\"oracle\">{}</p>", escape(&oracle_line(o)));
    }
    if let Some(r) = recommendation(results) {
        let _ = writeln!(h, "<p><strong>{}</strong></p>", escape(&r));
    }
    let quoted: Vec<String> = run.command.iter().map(|a| shell_quote(a)).collect();
    let _ = write!(
        h,
        "<h2>What was run</h2>\n<pre id=\"run\">{tool}\nreproduce (from the same directory): gpuscale-sim {cmd}\n\
         trace: {path} ({format}, {n} requests), sha256 {sha}\n{serving}\n{runs}</pre>\n",
        tool = escape(&run.tool),
        cmd = escape(&quoted.join(" ")),
        path = escape(&run.trace.path),
        format = escape(&run.trace.format),
        n = run.trace.requests,
        sha = escape(&run.trace.sha256),
        serving = escape(&run.serving.join("\n")),
        runs = escape(
            &run.runs
                .iter()
                .map(|r| format!("{}: {} {}", r.label, r.spec, r.params.join(" ")))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    );
    h.push_str(&tradeoff_svg(results)?);
    for r in results.iter().filter(|r| !r.timeline.is_empty()) {
        h.push_str(&timeline_svg(&r.policy, &r.timeline)?);
    }
    h.push_str("\n</body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, cost: f64, p99: Option<f64>) -> PolicyResult {
        let mut o = Outcome {
            latencies: p99.into_iter().collect(),
            ..Outcome::default()
        };
        let mut s = Summary::from_outcome(&mut o, 1.0, None);
        s.cost = cost;
        s.latency_p99_s = p99;
        PolicyResult {
            policy: name.into(),
            summary: s,
            timeline: Vec::new(),
            pareto: None,
            gpu_hours_x_oracle: None,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut v, 1.0), Some(100.0));
        assert_eq!(percentile(&mut [], 0.5), None);
        assert_eq!(percentile(&mut [7.0], 0.01), Some(7.0));
    }

    #[test]
    fn pareto_frontier() {
        let mut r = vec![
            result("cheap-slow", 1.0, Some(9.0)),
            result("dear-fast", 5.0, Some(1.0)),
            result("dominated", 5.0, Some(9.0)),
            result("middle", 3.0, Some(3.0)),
            result("no-data", 0.5, None),
        ];
        mark_pareto(&mut r);
        let on: Vec<bool> = r.iter().map(|x| x.pareto == Some(true)).collect();
        assert_eq!(on, [true, true, false, true, false]);
    }

    #[test]
    fn html_is_self_contained_with_svg() {
        let mut r = vec![result("queue", 2.0, Some(1.5)), result("a<b", 1.0, Some(3.0))];
        r[0].timeline = (0..10)
            .map(|t| Point {
                t,
                arrivals: 1,
                queued: 0,
                ready: 1,
                starting: 0,
                desired: 1,
                running: 1,
            })
            .collect();
        mark_pareto(&mut r);
        let run = RunContext {
            tool: "gpuscale-sim test".into(),
            command: vec!["replay".into(), "--trace".into(), "it's.csv".into()],
            trace: TraceRecord {
                path: "it's.csv".into(),
                sha256: "ab".repeat(32),
                format: "csv".into(),
                requests: 3,
            },
            serving: vec!["serving: concurrency 1 per replica".into()],
            runs: Vec::new(),
        };
        let page = html("replay", &run, None, &r).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            page.contains("gpuscale-sim replay --trace 'it'\\''s.csv'"),
            "the command, shell-quoted"
        );
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("a&lt;b") && !page.contains("<script"));
        assert!(!page.contains("http://") || page.matches("http://www.w3.org/2000/svg").count() >= 1);
    }

    /// The `y` of the `<text>` element whose content is `label`, in an SVG.
    fn text_y(svg: &str, label: &str) -> Option<f64> {
        let end = svg.find(&format!(">{label}</text>"))?;
        let start = svg[..end].rfind("<text")?;
        let tag = &svg[start..end];
        let y = tag.split(" y=\"").nth(1)?.split('"').next()?;
        y.parse().ok()
    }

    #[test]
    fn every_chart_has_axis_titles_with_units_and_a_legend_off_the_plot() {
        let mut r: Vec<PolicyResult> = (0..20)
            .map(|i| {
                result(
                    &format!("queue[queue.target={i}]"),
                    1.0 + f64::from(i),
                    Some(10.0 - 0.3 * f64::from(i % 7)),
                )
            })
            .collect();
        r[0].timeline = (0..3600)
            .map(|t| Point {
                t,
                arrivals: 1,
                queued: (t % 20) as u32,
                ready: 1 + (t / 900) as u32,
                starting: 0,
                desired: 1 + (t / 900) as u32,
                running: 2,
            })
            .collect();
        mark_pareto(&mut r);
        // Plotters writes a text's content on a line of its own.
        let flat = |svg: String| svg.replace(">\n", ">").replace("\n</text>", "</text>");
        let timeline = flat(timeline_svg("queue", &r[0].timeline).unwrap_or_else(|e| panic!("{e}")));
        let tradeoff = flat(tradeoff_svg(&r).unwrap_or_else(|e| panic!("{e}")));
        // Axis titles, each with its unit.
        for t in ["time since the first arrival (s)", "replicas", "requests"] {
            assert!(timeline.contains(&format!(">{t}</text>")), "timeline lacks `{t}`");
        }
        for t in ["cost (USD: GPU-hours x --price-per-gpu-hour)", "p99 latency (s)"] {
            assert!(
                tradeoff.contains(&format!(">{t}</text>")),
                "trade-off lacks `{t}`"
            );
        }
        // Legends sit in their strip above the plot; the plot (its caption first) below it.
        for (svg, entries, caption) in [
            (
                &timeline,
                &[
                    "replicas held (ready + starting)",
                    "desired replicas",
                    "requests queued + running (right axis)",
                ][..],
                "queue",
            ),
            (
                &tradeoff,
                &["on the cost / p99 Pareto frontier (filled)"][..],
                "cost against p99 latency",
            ),
        ] {
            for e in entries {
                let y = text_y(svg, e).unwrap_or_else(|| panic!("legend entry `{e}` missing"));
                assert!(
                    y < f64::from(LEGEND_STRIP),
                    "legend `{e}` at y={y}, inside the plot"
                );
            }
            let c = text_y(svg, caption).unwrap_or_else(|| panic!("caption `{caption}` missing"));
            assert!(c >= f64::from(LEGEND_STRIP), "caption at y={c}, over the legend");
        }
        // The last tick of a one-hour timeline is drawn whole.
        assert!(timeline.contains(">3500.0</text>"), "last x tick clipped");
        // Twenty points: only the frontier is named, dominated points are not.
        let named = r
            .iter()
            .filter(|x| tradeoff.contains(&format!(">{}</text>", escape(&x.policy))))
            .count();
        let on = r.iter().filter(|x| x.pareto == Some(true)).count();
        assert_eq!(named, on, "only frontier points are labelled in a crowded chart");
    }
}
