//! When an idle workload may sleep at zero, and when to wake it before the next request.
//!
//! `Fixed` keeps one replica warm for a grace period after the last request. `Adaptive` is
//! the hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020):
//! it learns the workload's own idle times (time from the end of one busy period to the next
//! request) in 1-minute bins over 4 hours, and when the histogram is representative (coefficient
//! of variation of the bin counts >= 2) it sleeps right away, pre-warms at the 5th percentile
//! (minus 10 %, and minus the model's cold start so the replica is ready in time) and keeps the
//! replica until the 99th percentile (plus 10 %). With too few samples, a flat histogram or too
//! many idle times beyond its range it falls back to the fixed grace; the paper's ARIMA branch
//! for out-of-range idle times is not implemented.

use std::time::Duration;

use crate::decision::Rule;

/// Adaptive keep-alive parameters; defaults are the paper's.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Histogram bin width (1 min).
    pub bin: Duration,
    /// Histogram range (4 h); longer idle times count as out of bounds.
    pub range: Duration,
    /// Pre-warm percentile (0.05).
    pub head: f64,
    /// Keep-alive percentile (0.99).
    pub tail: f64,
    /// Safety margin: head lowered and tail raised by this share (0.10).
    pub margin: f64,
    /// Minimum coefficient of variation of the bin counts for the histogram to be trusted (2).
    pub cv_threshold: f64,
    /// Idle times needed before the histogram is used (10).
    pub min_samples: u32,
    /// Largest share of out-of-range idle times before falling back (0.5).
    pub max_out_of_bounds: f64,
    /// Model cold start: pre-warming begins this much before the predicted request.
    pub cold_start: Duration,
    /// Keep-alive used while the histogram is not trusted.
    pub fallback_grace: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            bin: Duration::from_secs(60),
            range: Duration::from_secs(4 * 3600),
            head: 0.05,
            tail: 0.99,
            margin: 0.10,
            cv_threshold: 2.0,
            min_samples: 10,
            max_out_of_bounds: 0.5,
            cold_start: Duration::ZERO,
            fallback_grace: Duration::from_secs(300),
        }
    }
}

/// The keep-alive rule.
#[derive(Clone, Debug, PartialEq)]
pub enum KeepAliveConfig {
    /// One replica for `grace` after the last request, then zero (0 = sleep at once).
    Fixed(Duration),
    /// The hybrid histogram policy.
    Adaptive(AdaptiveConfig),
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        KeepAliveConfig::Fixed(Duration::from_secs(300))
    }
}

/// The warm interval after an idle period starts: warm from `prewarm` to `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// When (after the idle start) a replica should be ready again; 0 = stay warm throughout.
    pub prewarm: Duration,
    /// When (after the idle start) the replica may go.
    pub until: Duration,
    /// Whether the learned histogram produced these (false: the fixed grace did).
    pub learned: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// No fresh demand reading yet.
    Unknown,
    Busy,
    /// Idle since `since`; `after_busy` when the idle period followed observed demand (only
    /// then is it a complete idle time worth learning from, or predicting).
    Idle {
        since: Duration,
        after_busy: bool,
    },
}

/// Per-workload keep-alive state.
#[derive(Clone, Debug)]
pub struct KeepAlive {
    config: KeepAliveConfig,
    phase: Phase,
    bins: Vec<u32>,
    in_range: u32,
    out_of_bounds: u32,
    cached: Option<Windows>,
}

impl KeepAlive {
    /// Keep-alive state with an empty histogram.
    pub fn new(config: KeepAliveConfig) -> Self {
        let bins = match &config {
            KeepAliveConfig::Adaptive(a) => {
                (a.range.as_millis() / a.bin.as_millis().max(1)).clamp(1, 100_000) as usize
            }
            KeepAliveConfig::Fixed(_) => 0,
        };
        KeepAlive {
            config,
            phase: Phase::Unknown,
            bins: vec![0; bins],
            in_range: 0,
            out_of_bounds: 0,
            cached: None,
        }
    }

    /// Feed the demand reading (`None` when missing or stale: nothing is learned from it).
    pub fn observe(&mut self, now: Duration, demand: Option<f64>) {
        match (demand, self.phase) {
            (None, _) => {}
            (Some(d), Phase::Idle { since, after_busy }) if d > 0.0 => {
                if after_busy {
                    self.learn(now.saturating_sub(since));
                }
                self.phase = Phase::Busy;
            }
            (Some(d), _) if d > 0.0 => self.phase = Phase::Busy,
            (Some(_), Phase::Busy) => {
                self.phase = Phase::Idle {
                    since: now,
                    after_busy: true,
                }
            }
            (Some(_), Phase::Unknown) => {
                self.phase = Phase::Idle {
                    since: now,
                    after_busy: false,
                }
            }
            (Some(_), Phase::Idle { .. }) => {}
        }
    }

    fn learn(&mut self, idle: Duration) {
        let KeepAliveConfig::Adaptive(a) = &self.config else {
            return;
        };
        let bin = (idle.as_millis() / a.bin.as_millis().max(1)) as usize;
        match self.bins.get_mut(bin) {
            Some(c) => {
                *c = c.saturating_add(1);
                self.in_range = self.in_range.saturating_add(1);
            }
            None => self.out_of_bounds = self.out_of_bounds.saturating_add(1),
        }
        self.cached = None;
    }

    /// The current warm interval (learned, or the fallback grace).
    pub fn windows(&mut self) -> Windows {
        if let Some(w) = self.cached {
            return w;
        }
        let w = match &self.config {
            KeepAliveConfig::Fixed(g) => Windows {
                prewarm: Duration::ZERO,
                until: *g,
                learned: false,
            },
            KeepAliveConfig::Adaptive(a) => self.learned(a).unwrap_or(Windows {
                prewarm: Duration::ZERO,
                until: a.fallback_grace,
                learned: false,
            }),
        };
        self.cached = Some(w);
        w
    }

    fn learned(&self, a: &AdaptiveConfig) -> Option<Windows> {
        let n = self.in_range;
        let total = n + self.out_of_bounds;
        if total < a.min_samples || n == 0 {
            return None;
        }
        if f64::from(self.out_of_bounds) / f64::from(total) > a.max_out_of_bounds {
            return None;
        }
        let bins = self.bins.len() as f64;
        let mean = f64::from(n) / bins;
        let var = self
            .bins
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / bins;
        if var.sqrt() / mean < a.cv_threshold {
            return None;
        }
        let mut cum = 0u64;
        let (mut head, mut tail) = (None, None);
        for (i, &c) in self.bins.iter().enumerate() {
            cum += u64::from(c);
            let share = cum as f64 / f64::from(n);
            if head.is_none() && share >= a.head {
                head = Some(i); // lower edge: the last whole bin before the percentile
            }
            if share >= a.tail {
                tail = Some(i + 1); // upper edge
                break;
            }
        }
        let bin = a.bin.as_secs_f64();
        let prewarm = head? as f64 * bin * (1.0 - a.margin);
        let until = tail? as f64 * bin * (1.0 + a.margin);
        Some(Windows {
            prewarm: Duration::from_secs_f64(prewarm),
            until: Duration::from_secs_f64(until),
            learned: true,
        })
    }

    /// With demand fresh and zero and the policies asking for zero: the count and rule.
    pub fn gate(&mut self, now: Duration, current: u32) -> (u32, Rule) {
        let Phase::Idle { since, after_busy } = self.phase else {
            // Busy or unknown: zero is not safe.
            return (current.min(1), Rule::DemandUnknown);
        };
        let idle_for = now.saturating_sub(since);
        let w = self.windows();
        let cold_start = match &self.config {
            KeepAliveConfig::Adaptive(a) => a.cold_start,
            KeepAliveConfig::Fixed(_) => Duration::ZERO,
        };
        let wake_at = w.prewarm.saturating_sub(cold_start);
        if idle_for >= w.until {
            return (0, Rule::KeepAliveExpired);
        }
        if current == 0 {
            // Asleep: only a learned pre-warm wakes it, and only for an idle period that
            // followed real traffic (not the quiet a process starts into).
            if w.learned && w.prewarm > Duration::ZERO && after_busy && idle_for >= wake_at {
                return (1, Rule::Prewarm);
            }
            return (0, Rule::Asleep);
        }
        if w.prewarm > Duration::ZERO && idle_for < wake_at {
            return (0, Rule::PrewarmWait);
        }
        (1, Rule::KeepAliveWindow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn fixed_grace_counts_from_the_last_request() {
        let mut k = KeepAlive::new(KeepAliveConfig::Fixed(s(300)));
        k.observe(s(0), Some(3.0));
        k.observe(s(10), Some(0.0));
        assert_eq!(k.gate(s(10), 2), (1, Rule::KeepAliveWindow));
        assert_eq!(k.gate(s(309), 1), (1, Rule::KeepAliveWindow));
        assert_eq!(k.gate(s(310), 1), (0, Rule::KeepAliveExpired));
    }

    #[test]
    fn stale_demand_learns_nothing_and_never_allows_zero() {
        let mut k = KeepAlive::new(KeepAliveConfig::Fixed(s(0)));
        k.observe(s(0), Some(1.0));
        k.observe(s(5), None);
        assert_eq!(k.gate(s(1000), 1), (1, Rule::DemandUnknown));
    }

    #[test]
    fn adaptive_learns_a_periodic_workload_and_prewarms() {
        // A job that arrives every 30 minutes (idle time 29-30 min, bin 29): head and tail are
        // both bin 29, so sleep at once, pre-warm at 29 min * 0.9, keep until 30 min * 1.1.
        let cfg = AdaptiveConfig {
            cold_start: s(120),
            ..AdaptiveConfig::default()
        };
        let mut k = KeepAlive::new(KeepAliveConfig::Adaptive(cfg));
        let mut t = 0;
        for _ in 0..12 {
            k.observe(s(t), Some(1.0));
            k.observe(s(t + 60), Some(0.0));
            t += 60 + 29 * 60 + 30;
        }
        let w = k.windows();
        assert!(w.learned);
        assert_eq!(w.prewarm, Duration::from_secs_f64(29.0 * 60.0 * 0.9));
        assert_eq!(w.until, Duration::from_secs_f64(30.0 * 60.0 * 1.1));
        // Busy until t, idle from t+60: sleep at once, wake 2 min (cold start) before 26.1 min.
        k.observe(s(t), Some(1.0));
        k.observe(s(t + 60), Some(0.0));
        let idle0 = t + 60;
        assert_eq!(k.gate(s(idle0 + 1), 1), (0, Rule::PrewarmWait));
        assert_eq!(k.gate(s(idle0 + 1400), 0), (0, Rule::Asleep));
        // 26.1 min - 2 min = 1446 s
        assert_eq!(k.gate(s(idle0 + 1446), 0), (1, Rule::Prewarm));
        assert_eq!(k.gate(s(idle0 + 1979), 1), (1, Rule::KeepAliveWindow));
        assert_eq!(k.gate(s(idle0 + 1980), 1), (0, Rule::KeepAliveExpired));
    }

    #[test]
    fn adaptive_falls_back_on_a_flat_histogram() {
        let cfg = AdaptiveConfig {
            fallback_grace: s(600),
            ..AdaptiveConfig::default()
        };
        let mut k = KeepAlive::new(KeepAliveConfig::Adaptive(cfg));
        let mut t = 0;
        // Idle times spread evenly over 0..240 min: CV of the bin counts is low.
        for i in 0..240u64 {
            k.observe(s(t), Some(1.0));
            k.observe(s(t + 1), Some(0.0));
            t += 1 + i * 60 + 30;
        }
        let w = k.windows();
        assert!(!w.learned);
        assert_eq!(
            w,
            Windows {
                prewarm: Duration::ZERO,
                until: s(600),
                learned: false
            }
        );
    }

    #[test]
    fn asleep_at_start_is_not_woken() {
        let mut k = KeepAlive::new(KeepAliveConfig::Fixed(s(300)));
        k.observe(s(0), Some(0.0));
        assert_eq!(k.gate(s(1), 0), (0, Rule::Asleep));
    }
}
