//! Erlang C (M/M/c) through the numerically stable Erlang B recursion.
//!
//! `B(0) = 1`, `B(k) = A B(k-1) / (k + A B(k-1))`, and `C(c, A) = c B / (c - A (1 - B))` for
//! `A < c`. The recursion never forms `A^c / c!`, so it is exact to rounding for thousands of
//! servers, and it is incremental in `c`, which the SLO search uses.

/// Probability that an arrival waits, for `servers` servers and offered load `a = λ/μ` Erlangs.
/// 1 when the system is unstable (`a >= servers`).
pub fn erlang_c(servers: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    let c = f64::from(servers);
    if a >= c {
        return 1.0;
    }
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (f64::from(k) + a * b);
    }
    c_from_b(c, a, b)
}

fn c_from_b(c: f64, a: f64, b: f64) -> f64 {
    c * b / (c - a * (1.0 - b))
}

/// `P(W > t)` for M/M/c: `C(c, A) e^{-(c μ - λ) t}`, with `a = λ/μ` and `t_over_s = t μ`
/// (the wait bound in units of the mean service time).
pub fn wait_exceeds(servers: u32, a: f64, t_over_s: f64) -> f64 {
    let c = f64::from(servers);
    if a >= c {
        return 1.0;
    }
    erlang_c(servers, a) * (-(c - a) * t_over_s).exp()
}

/// Mean wait in queue `W_q = C / (c μ - λ)`, in units of the mean service time.
pub fn mean_wait(servers: u32, a: f64) -> f64 {
    let c = f64::from(servers);
    if a >= c {
        return f64::INFINITY;
    }
    erlang_c(servers, a) / (c - a)
}

/// Smallest replica count `n` in `[1, max_replicas]` such that `n * slots` servers keep
/// `P(W > t) <= 1 - p`; `None` when even `max_replicas` cannot. One pass of the recursion.
pub fn smallest_meeting(a: f64, slots: u32, t_over_s: f64, p: f64, max_replicas: u32) -> Option<u32> {
    let slots = slots.max(1);
    let allowed = 1.0 - p;
    let mut b = 1.0;
    let mut k = 0u32;
    for n in 1..=max_replicas {
        let servers = n.checked_mul(slots)?;
        while k < servers {
            k += 1;
            b = a * b / (f64::from(k) + a * b);
        }
        let c = f64::from(servers);
        if a >= c {
            continue;
        }
        let pw = if a <= 0.0 { 0.0 } else { c_from_b(c, a, b) };
        if pw * (-(c - a) * t_over_s).exp() <= allowed {
            return Some(n);
        }
    }
    None
}
