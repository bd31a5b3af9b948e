//! What one step of a continuous-batching server costs, fitted from what its replicas did, so
//! the `tokens` policy learns `slots` and the capacities without ever saturating a replica.
//!
//! A replica with requests running steps without a pause. A step decoding `b` sequences and
//! prefilling `q` prompt tokens takes `a + c_d * b + c_p * q` seconds (a fixed cost, mostly
//! reading the weights, plus the per-sequence and per-token work), so each second it is busy
//! holds `n` steps (`n ~= g / b`, one output token per running sequence per step) and
//! `1 = a * n + c_d * g + c_p * p` with `g` and `p` its output and prompt tokens/s. Every
//! reading of a busy fleet is one such equation; least squares over many, at different
//! batches, gives `a`, `c_d` and `c_p`. From them: `slots`, the batch whose step takes twice a
//! single sequence's (`a + c_d * b = 2 (a + c_d)`); the decode capacity at that batch,
//! `slots / step(slots)`; and the prefill capacity `1 / c_p`.
//!
//! The fit is linear where measured step times are convex (flat while memory-bound, then
//! climbing): readings over the whole curve put the knee low (more replicas), readings from
//! the flat part only put it high, and the cap below bounds that (docs/policies.md). A fit it cannot trust (too few readings, one batch only, a cost that comes out
//! negative, as on prompt-heavy traffic where running counts are mostly prefilling sequences)
//! yields only what it can: the prefill cost alone, or nothing. Extrapolation is bounded: the
//! knee is never put beyond twice the largest batch seen, so the policy that acts on it keeps
//! the batches it then sees within the range it can check.

/// Readings weigh `1 - 1/FIT_MEMORY` less at each new one: an hour of readings at one a second.
/// A step's cost is the hardware's and the model's; it changes on a redeploy, not with load.
const FIT_MEMORY: f64 = 3600.0;
/// Readings (by weight) needed before the fit is used: two minutes' at one a second.
const FIT_MIN_WEIGHT: f64 = 120.0;
/// Least coefficient of variation of the batch over the readings: one batch size cannot tell
/// the fixed cost from the per-sequence one.
const FIT_MIN_SPREAD: f64 = 0.2;
/// Running sequences per replica below which a replica may idle part of a second: a reading
/// at a batch of 2-4 (a fleet the queue rule sizes at a few requests a replica) takes its
/// idle time for work and puts the capacities far below the measured ones.
const FIT_MIN_BATCH: f64 = 8.0;
/// How far past the largest batch seen the knee may be put.
const FIT_MAX_EXTRAPOLATION: f64 = 2.0;

/// Exponentially weighted least squares of `1 = a * n + c_d * g + c_p * p`.
#[derive(Clone, Debug, Default)]
pub struct StepCostFit {
    xtx: [[f64; 3]; 3],
    xty: [f64; 3],
    weight: f64,
    batch_sum: f64,
    batch_sq: f64,
    batch_max: f64,
    /// The costs as of the last reading: solved once per reading, not per question.
    costs: Option<StepCosts>,
}

/// What a fit yields: the prefill capacity whenever `c_p` is positive, the knee and the decode
/// capacity only where `a` and `c_d` are too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCosts {
    /// Prompt tokens/s of one replica prefilling only (`1 / c_p`).
    pub prefill_capacity: f64,
    /// `(slots, output tokens/s at that batch)`, where the decode costs are known.
    pub decode: Option<(f64, f64)>,
}

impl StepCostFit {
    /// Record one busy reading, per replica: running sequences, output and prompt tokens/s.
    /// Readings below [`FIT_MIN_BATCH`] or without output are not busy seconds and are ignored.
    pub fn record(&mut self, batch: f64, generated: f64, prompt: f64) {
        if !(batch >= FIT_MIN_BATCH && generated > 0.0 && prompt >= 0.0 && batch.is_finite()) {
            return;
        }
        let x = [generated / batch, generated, prompt];
        if x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let keep = 1.0 - 1.0 / FIT_MEMORY;
        for (i, row) in self.xtx.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = *v * keep + x[i] * x[j];
            }
            self.xty[i] = self.xty[i] * keep + x[i];
        }
        self.weight = self.weight * keep + 1.0;
        self.batch_sum = self.batch_sum * keep + batch;
        self.batch_sq = self.batch_sq * keep + batch * batch;
        self.batch_max = self.batch_max.max(batch);
        self.costs = self.solve();
    }

    /// The costs, once enough readings at different batches agree with the model.
    pub fn costs(&self) -> Option<StepCosts> {
        self.costs
    }

    fn solve(&self) -> Option<StepCosts> {
        if self.weight < FIT_MIN_WEIGHT {
            return None;
        }
        let mean = self.batch_sum / self.weight;
        let var = (self.batch_sq / self.weight - mean * mean).max(0.0);
        if var.sqrt() < FIT_MIN_SPREAD * mean {
            return None;
        }
        let [a, c_d, c_p] = solve3(self.xtx, self.xty)?;
        if c_p <= 0.0 {
            return None;
        }
        let decode = (a > 0.0 && c_d > 0.0).then(|| {
            let knee = (a / c_d + 2.0).min(FIT_MAX_EXTRAPOLATION * self.batch_max);
            (knee, knee / (a + c_d * knee))
        });
        Some(StepCosts {
            prefill_capacity: 1.0 / c_p,
            decode,
        })
    }
}

/// `m x = y` by Gaussian elimination with partial pivoting; `None` when `m` is (nearly)
/// singular, i.e. the readings cannot tell two of the costs apart.
fn solve3(mut m: [[f64; 3]; 3], mut y: [f64; 3]) -> Option<[f64; 3]> {
    // Scale each unknown to unit diagonal first: steps/s, output and prompt tokens/s differ by
    // orders of magnitude, and a pivot test must not read that as singularity.
    let scale: [f64; 3] = std::array::from_fn(|i| m[i][i].sqrt());
    if scale.iter().any(|s| !(*s > 0.0 && s.is_finite())) {
        return None;
    }
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] /= scale[i] * scale[j];
        }
        y[i] /= scale[i];
    }
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        // Unit diagonal: a pivot this small is readings that are all but collinear.
        if m[pivot][col].abs() < 1e-6 {
            return None;
        }
        m.swap(col, pivot);
        y.swap(col, pivot);
        for row in col + 1..3 {
            let f = m[row][col] / m[col][col];
            let pivot_row = m[col];
            for (v, p) in m[row].iter_mut().zip(pivot_row).skip(col) {
                *v -= f * p;
            }
            y[row] -= f * y[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let rest: f64 = (row + 1..3).map(|k| m[row][k] * x[k]).sum();
        x[row] = (y[row] - rest) / m[row][row];
    }
    Some(std::array::from_fn(|i| x[i] / scale[i]))
}

/// A replica whose steps cost `a + c_d * b + c_p * q`: at batch `b` with `p` prompt tokens a
/// second, the output rate that fills the second exactly (`1 = a * g / b + c_d * g + c_p * p`).
#[cfg(test)]
pub(crate) fn busy_output_rate((a, c_d, c_p): (f64, f64, f64), b: f64, p: f64) -> f64 {
    (1.0 - c_p * p) / (a / b + c_d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` busy readings of steps costing `costs`, at the `i`th reading's batch and prompt rate.
    fn fill(
        fit: &mut StepCostFit,
        costs: (f64, f64, f64),
        n: u32,
        batch: impl Fn(u32) -> f64,
        prompt: impl Fn(u32) -> f64,
    ) {
        for i in 0..n {
            let (b, p) = (batch(i), prompt(i));
            fit.record(b, busy_output_rate(costs, b, p), p);
        }
    }

    #[test]
    fn recovers_the_costs_and_the_knee_of_a_linear_step() {
        let (a, c_d, c_p) = (0.03, 0.0004, 0.000_12);
        let mut fit = StepCostFit::default();
        fill(
            &mut fit,
            (a, c_d, c_p),
            600,
            |i| 8.0 + f64::from(i % 50) * 2.0,
            |i| 500.0 + f64::from((i * 37) % 29) * 100.0,
        );
        let Some(c) = fit.costs() else {
            panic!("600 readings over batches 8-106")
        };
        assert!(
            (c.prefill_capacity - 1.0 / c_p).abs() < 1e-3 * c.prefill_capacity,
            "{c:?}"
        );
        let Some((knee, decode)) = c.decode else {
            panic!("positive costs")
        };
        // a + c_d * b = 2 (a + c_d): b = a / c_d + 2 = 77.
        assert!((knee - 77.0).abs() < 0.01, "{knee}");
        assert!((decode - 77.0 / (a + c_d * 77.0)).abs() < 0.1, "{decode}");
    }

    #[test]
    fn one_batch_size_or_few_readings_yield_nothing() {
        let costs = (0.03, 0.0004, 0.000_12);
        let mut same = StepCostFit::default();
        fill(
            &mut same,
            costs,
            600,
            |_| 30.0,
            |i| 500.0 + f64::from(i % 29) * 100.0,
        );
        assert_eq!(same.costs(), None, "a single batch cannot separate a from c_d");
        let mut few = StepCostFit::default();
        fill(
            &mut few,
            costs,
            100,
            |i| 8.0 + f64::from(i % 50),
            |i| 1000.0 + f64::from(i) * 10.0,
        );
        assert_eq!(few.costs(), None, "100 readings are under the 120 needed");
    }

    #[test]
    fn the_knee_is_not_put_past_twice_the_largest_batch_seen() {
        // Nearly flat steps over batches 8-16: the line's knee is far out (a / c_d = 300).
        let mut fit = StepCostFit::default();
        fill(
            &mut fit,
            (0.03, 0.0001, 0.000_12),
            600,
            |i| 8.0 + f64::from(i % 9),
            |i| 200.0 + f64::from((i * 13) % 17) * 50.0,
        );
        let Some((knee, _)) = fit.costs().and_then(|c| c.decode) else {
            panic!("costs")
        };
        assert!((knee - 32.0).abs() < 1e-9, "{knee}");
    }

    #[test]
    fn idle_seconds_and_a_negative_decode_cost_are_not_a_knee() {
        let mut fit = StepCostFit::default();
        // Below eight running sequences a replica may idle: ignored.
        for _ in 0..1000 {
            fit.record(7.0, 10.0, 100.0);
        }
        assert_eq!(fit.weight, 0.0);
        // Readings where more sequences make a second hold *more* output per unit of work than
        // the steps can explain (c_d comes out negative): only the prefill cost is kept.
        let c_p = 0.000_12;
        fill(
            &mut fit,
            (0.03, -0.0002, c_p),
            600,
            |i| 8.0 + f64::from(i % 40),
            |i| 500.0 + f64::from((i * 37) % 29) * 100.0,
        );
        let Some(c) = fit.costs() else {
            panic!("the prefill cost is positive")
        };
        assert_eq!(c.decode, None);
        assert!((c.prefill_capacity - 1.0 / c_p).abs() < 1e-3 * c.prefill_capacity);
    }
}
