//! `--oracle`: a lower bound on the GPU-hours any policy needs on a trace and serving model
//! while meeting a p99 latency target, to read every policy's cost against.
//!
//! Two bounds, each computed from the requests alone, and the larger is reported: work plus
//! idle, and presence.
//! - **Work.** Every request costs a replica at least `W = input * c_p + (output - 1) * H(L /
//!   (output - 1))` replica-seconds, where `c_p` is the least a prefill token can cost in any
//!   step the serving model allows ([`crate::llm::StepCost::least_prefill_cost`]) and `H` the
//!   convex envelope of what a decode token is charged in a step of a given length
//!   ([`crate::llm::StepCost::decode_envelope`]): to meet `L`, a request's decode steps last at
//!   most `L / (output - 1)` on average, and the cheap decode tokens ride in long prefill steps
//!   that a long output cannot afford. For the concurrency model `W = service / slots`. A policy meeting p99 may fail or abandon 1 % of
//!   requests, so only the 99 % with the least work are summed. Preemption, idle time and
//!   imbalance only add to it.
//! - **Idle**, added to the work: between windows `[a, a + L]` that share no time nothing is
//!   served, and some replica idles through the gap or is started again (`min(gap, cold)`),
//!   less a cold start per request allowed to miss (see [`idle`]).
//! - **Presence.** A request that meets the target `L` is served within `[a, a + L]` by a
//!   replica that is up for at least its own time alone `m` (its prefill in budget-sized
//!   chunks, then one decode step per further token). The least total time some replica must be
//!   up is then the smallest set that covers at least `m` of every window, which the greedy
//!   that fills each window's shortfall as late as possible (windows in deadline order) gives
//!   exactly. Where no request's window reaches (between windows that share no time), every
//!   schedule either keeps a replica (the gap) or stops and restarts one, paying a cold start
//!   with perfect foresight (pre-warmed): the lesser is added.
//!   This term assumes every request meets the target (those that cannot even alone are left
//!   out), so for a p99 objective it is an approximation: a policy that gives up 1 % of requests
//!   in the quiet stretches could go below it, and the table would show that as a multiple < 1.
//!
//! Both are bounds, not schedules: no policy is expected to reach them, and the multiple says
//! how much room a better policy could have.

use serde::Serialize;

use crate::serving::{ColdStart, Serving, ServingConfig};
use crate::trace::Trace;

/// The bound, as the JSON and the table report it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Oracle {
    /// The lower bound: the larger of the two below.
    pub gpu_hours: f64,
    /// The latency target it was computed for.
    pub p99_target_s: f64,
    /// Where the target came from.
    pub p99_target_from: String,
    /// Work term.
    pub work_gpu_hours: f64,
    /// Idle term added to the work: the least time outside every request's window that some
    /// replica must idle or start, less a cold start for each request allowed to miss.
    pub idle_gpu_hours: f64,
    /// Presence term (cold starts included).
    pub presence_gpu_hours: f64,
    /// Requests that cannot meet the target even alone on an idle replica (left out).
    pub infeasible_requests: u64,
    /// The method, in one line (docs/simulator.md has the whole of it).
    pub method: String,
}

/// Share of requests the p99 objective must serve.
const QUANTILE: f64 = 0.99;

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// `H(x)` of a decode envelope ([`crate::llm::StepCost::decode_envelope`]); a step budget
/// shorter than any step means the request cannot meet the target, so it is charged the least
/// any decode token costs (it is among those allowed to miss).
pub(crate) fn envelope_at(hull: &[(f64, f64)], x: f64) -> f64 {
    let (Some(first), Some(last)) = (hull.first(), hull.last()) else {
        return 0.0;
    };
    if x < first.0 || x >= last.0 {
        return last.1;
    }
    let i = hull.partition_point(|&(t, _)| t <= x);
    let ((t0, c0), (t1, c1)) = (hull[i - 1], hull[i]);
    c0 + (c1 - c0) * (x - t0) / (t1 - t0)
}

/// Per-request least work (replica-seconds) and least time alone (seconds), for a request
/// that meets `target` seconds.
fn demands(trace: &Trace, serving: &ServingConfig, services: &[f32], target: f64) -> Vec<(f64, f64)> {
    match &serving.serving {
        Serving::Llm(c) => {
            let c_p = c.cost.least_prefill_cost();
            let hull = c.cost.decode_envelope(c_p);
            trace
                .requests
                .iter()
                .map(|r| {
                    let (i, o) = (r.input_tokens.max(1), r.output_tokens.max(1));
                    // Its o - 1 decode steps fit in the target: on average at most L / (o - 1).
                    let decode = match o - 1 {
                        0 => 0.0,
                        k => f64::from(k) * envelope_at(&hull, target / f64::from(k)),
                    };
                    (f64::from(i) * c_p + decode, c.cost.alone_s(i, o))
                })
                .collect()
        }
        Serving::Batching(b) => trace
            .requests
            .iter()
            .map(|r| {
                let o = f64::from(r.output_tokens);
                (
                    f64::from(r.input_tokens) / b.prefill_tps + o / b.max_decode_tps,
                    b.prefill(r.input_tokens) + o / b.decode_tps,
                )
            })
            .collect(),
        Serving::Concurrency { slots } => services
            .iter()
            .map(|&s| (f64::from(s) / f64::from(*slots), f64::from(s)))
            .collect(),
    }
}

/// The least cold start the serving model can draw.
fn least_cold_start(c: &ColdStart) -> f64 {
    match c {
        ColdStart::Constant(s) => *s,
        ColdStart::Empirical(v) => v.iter().copied().fold(f64::INFINITY, f64::min).min(1e12),
    }
}

/// Least replica-seconds up so that every window `[a, a + l]` holds at least `m` of them
/// (windows in arrival order, so in deadline order), plus the cheaper of idling or restarting
/// through every stretch no window covers.
fn presence(windows: &[(f64, f64)], l: f64, cold: f64, initial_replicas: u32) -> f64 {
    // Covered stretches, disjoint and in time order; each window's shortfall is filled from its
    // deadline backwards, which merges stretches as it goes.
    let mut cover: Vec<(f64, f64)> = Vec::new();
    for &(a, m) in windows {
        let (lo, hi) = (a, a + l);
        let mut have = 0.0;
        for &(s, e) in cover.iter().rev() {
            if e <= lo {
                break;
            }
            have += e.min(hi) - s.max(lo);
        }
        let mut need = m - have;
        if need <= 1e-12 {
            continue;
        }
        // Fill uncovered time from `hi` leftwards.
        let mut right = hi;
        let mut new_start = hi;
        while need > 1e-12 {
            let last_end = cover.last().map_or(f64::NEG_INFINITY, |&(_, e)| e);
            if last_end >= right {
                // `right` sits inside the last stretch: absorb it and continue left of it.
                let Some((s, _)) = cover.pop() else { break };
                right = s;
                new_start = new_start.min(s);
                continue;
            }
            let gap = right - last_end.max(lo);
            if gap >= need {
                new_start = new_start.min(right - need);
                need = 0.0;
            } else {
                need -= gap;
                new_start = new_start.min(last_end);
                right = last_end;
                if last_end <= lo {
                    break; // cannot happen: the window holds enough room for m <= l
                }
            }
        }
        // Everything from new_start to hi is now covered (absorbed stretches included).
        while cover.last().is_some_and(|&(_, e)| e >= new_start) {
            if let Some((s, _)) = cover.pop() {
                new_start = new_start.min(s);
            }
        }
        cover.push((new_start, hi));
    }
    let covered: f64 = cover.iter().map(|(s, e)| e - s).sum();
    covered + idle(windows, l, cold, initial_replicas)
}

/// Replica-seconds every schedule spends not serving: between windows that share no time,
/// nothing can be served, and a replica is needed on both sides, so it is kept (the gap) or
/// started again (a cold start); with no replica at the start, the first is started. Inside
/// overlapping windows a schedule may still idle or restart, which costs at least nothing.
///
/// Leaving one window out changes this by at most one cold start downwards (a lone window
/// between two gaps merges them into one at least as long as either; any other window only
/// shrinks a group of windows or splits it), which is what lets [`bound`] add it to the work
/// of a p99 objective that lets some requests miss.
fn idle(windows: &[(f64, f64)], l: f64, cold: f64, initial_replicas: u32) -> f64 {
    let mut total = 0.0;
    let mut reach: Option<f64> = None;
    for &(a, _) in windows {
        match reach {
            Some(r) if a > r => total += (a - r).min(cold),
            None if initial_replicas == 0 => total += cold,
            _ => {}
        }
        reach = Some(reach.map_or(a + l, |r: f64| r.max(a + l)));
    }
    total
}

/// The bound for `target` seconds of p99 latency.
pub fn bound(
    trace: &Trace,
    serving: &ServingConfig,
    services: &[f32],
    target: f64,
    target_from: &str,
) -> Oracle {
    let d = demands(trace, serving, services, target);
    let n = d.len();
    let mut work: Vec<f64> = d.iter().map(|&(w, _)| w).collect();
    work.sort_by(f64::total_cmp);
    let keep = ((QUANTILE * n as f64).ceil() as usize).min(n);
    let work_s: f64 = work[..keep].iter().sum();
    let mut infeasible = 0u64;
    let windows: Vec<(f64, f64)> = trace
        .requests
        .iter()
        .zip(&d)
        .filter_map(|(r, &(_, m))| {
            if m > target {
                infeasible += 1;
                None
            } else {
                Some((r.arrival, m))
            }
        })
        .collect();
    let cold = least_cold_start(&serving.cold_start);
    let presence_s = presence(&windows, target, cold, serving.initial_replicas);
    // Work is served inside the windows of the requests that meet the target, so the time
    // some replica idles or starts outside them adds to it. The windows are those of every
    // request that could meet it; up to `n - keep` of them may miss, each lowering the idle
    // time by at most a cold start.
    let missable = (n - keep) as f64;
    let idle_s = (idle(&windows, target, cold, serving.initial_replicas) - missable * cold).max(0.0);
    let work_idle_s = work_s + idle_s;
    let g = f64::from(serving.gpus_per_replica) / 3600.0;
    Oracle {
        gpu_hours: round(work_idle_s.max(presence_s) * g),
        p99_target_s: round(target),
        p99_target_from: target_from.to_string(),
        work_gpu_hours: round(work_s * g),
        idle_gpu_hours: round(idle_s * g),
        presence_gpu_hours: round(presence_s * g),
        infeasible_requests: infeasible,
        method: "max(work + idle: least replica-seconds of the 99% least-work requests, decode steps short enough to meet the target, plus the gaps between request windows idled or restarted, less a cold start per request allowed to miss; presence: least up-time covering each request's own time within [arrival, arrival + target], gaps idled or restarted at the least cold start) x GPUs per replica".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{envelope_at, idle, presence};
    use crate::rng::Rng;

    #[test]
    fn idle_charges_each_gap_the_cheaper_of_keeping_and_restarting() {
        // Windows [0, 10], [5, 15] overlap; then a 25 s gap (kept), a 185 s gap (restarted).
        let w = [(0.0, 1.0), (5.0, 1.0), (40.0, 1.0), (235.0, 1.0)];
        assert!((idle(&w, 10.0, 60.0, 1) - (25.0 + 60.0)).abs() < 1e-9);
        // No replica at the start: the first is started too.
        assert!((idle(&w, 10.0, 60.0, 0) - (60.0 + 25.0 + 60.0)).abs() < 1e-9);
    }

    /// What `bound` relies on to subtract one cold start per request allowed to miss.
    #[test]
    fn leaving_out_one_window_lowers_idle_by_at_most_a_cold_start() {
        let mut rng = Rng::new(7);
        for case in 0..300 {
            let mut t = 0.0;
            let w: Vec<(f64, f64)> = (0..12)
                .map(|_| {
                    t += rng.exp(20.0);
                    (t, 1.0)
                })
                .collect();
            let (l, cold) = (5.0 + rng.uniform() * 30.0, rng.uniform() * 90.0);
            for init in [0, 1] {
                let all = idle(&w, l, cold, init);
                for i in 0..w.len() {
                    let mut less = w.clone();
                    less.remove(i);
                    let fewer = idle(&less, l, cold, init);
                    assert!(
                        fewer >= all - cold - 1e-9,
                        "case {case}: without window {i} idle {fewer} < {all} - {cold}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_envelope_is_read_between_its_vertices() {
        let hull = [(0.1, 5.0), (0.2, 2.0), (1.0, 1.0)];
        assert_eq!(envelope_at(&hull, 0.2), 2.0);
        assert!((envelope_at(&hull, 0.15) - 3.5).abs() < 1e-12);
        assert!((envelope_at(&hull, 0.6) - 1.5).abs() < 1e-12);
        assert_eq!(envelope_at(&hull, 5.0), 1.0);
        // Shorter than any step: the request cannot meet the target and pays the least.
        assert_eq!(envelope_at(&hull, 0.01), 1.0);
    }

    #[test]
    fn presence_shares_overlapping_windows_and_charges_gaps() {
        // Two requests of 2 s with a 10 s target, 1 s apart: one stretch of 2 s covers both
        // if placed in the overlap of their windows ([1, 10]).
        let p = presence(&[(0.0, 2.0), (1.0, 2.0)], 10.0, 60.0, 1);
        assert!((p - 2.0).abs() < 1e-9, "{p}");
        // Far apart: two stretches and, between the windows [0, 10] and [100, 110], a 90 s
        // gap, restarted (a 60 s cold start is cheaper); no replica at the start: one start.
        let p = presence(&[(0.0, 2.0), (100.0, 2.0)], 10.0, 60.0, 0);
        assert!((p - (60.0 + 2.0 + 60.0 + 2.0)).abs() < 1e-9, "{p}");
        // A 30 s gap is idled instead.
        let p = presence(&[(0.0, 2.0), (40.0, 2.0)], 10.0, 60.0, 1);
        assert!((p - (2.0 + 30.0 + 2.0)).abs() < 1e-9, "{p}");
        // [1, 4] holds 3 s of both [0, 4] and [1, 5].
        let p = presence(&[(0.0, 3.0), (1.0, 3.0)], 4.0, 0.0, 0);
        assert!((p - 3.0).abs() < 1e-9, "{p}");
        // 3 s in both [0, 4] and [2, 6]: at most 2 s are shared, so 4 s in all.
        let p = presence(&[(0.0, 3.0), (2.0, 3.0)], 4.0, 0.0, 0);
        assert!((p - 4.0).abs() < 1e-9, "{p}");
    }
}
