//! `slo`: the fewest replicas that meet a queue-wait objective `P(wait > t) <= 1 - p`, sized by
//! Erlang C from the measured arrival rate and mean service time. Each replica serves `slots`
//! requests at once (its concurrency), so `n` replicas are an M/M/(n * slots) system.
//!
//! Erlang C assumes Poisson arrivals and exponential service; for fixed-time inference it is a
//! sound sizing rule, for LLM continuous batching it is an approximation (per-request service
//! time grows with the batch). When either rate is unknown or stale the `queue` rule decides,
//! and the reason says so.

use std::time::Duration;

use crate::band::ScaleDownWindow;
use crate::decision::{Recommendation, Rule};
use crate::erlang;
use crate::queue::{QueueConfig, queue_replicas};
use crate::signals::{SignalKind, Signals};
use crate::{Context, Policy};

/// SLO policy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SloConfig {
    /// The wait bound `t` (default 1 s).
    pub wait: Duration,
    /// The share of requests that must wait at most `t` (default 0.95).
    pub quantile: f64,
    /// Requests one replica serves concurrently (default 1).
    pub slots: u32,
    /// The rule used while arrival or service rate is unknown; its window is shared.
    pub fallback: QueueConfig,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            wait: Duration::from_secs(1),
            quantile: 0.95,
            slots: 1,
            fallback: QueueConfig::default(),
        }
    }
}

/// The SLO policy.
#[derive(Clone, Debug)]
pub struct Slo {
    config: SloConfig,
    window: ScaleDownWindow,
}

impl Slo {
    /// An SLO policy with an empty scale-down window.
    pub fn new(config: SloConfig) -> Self {
        Slo {
            window: ScaleDownWindow::new(config.fallback.scale_down_window),
            config,
        }
    }

    /// Replicas Erlang C asks for at arrival rate `lambda` (1/s) and mean service time `s`.
    pub fn erlang_replicas(&self, lambda: f64, service: f64, max_replicas: u32) -> u32 {
        if lambda <= 0.0 || service <= 0.0 {
            return 0;
        }
        let a = lambda * service;
        let t_over_s = self.config.wait.as_secs_f64() / service;
        erlang::smallest_meeting(a, self.config.slots, t_over_s, self.config.quantile, max_replicas)
            .unwrap_or(max_replicas)
    }
}

impl Policy for Slo {
    fn name(&self) -> &'static str {
        "slo"
    }

    fn needs(&self) -> &[SignalKind] {
        self.config.fallback.metric.signals()
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        let rates = (
            s.fresh(SignalKind::ArrivalRate, ctx.max_signal_age),
            s.fresh(SignalKind::ServiceTime, ctx.max_signal_age),
        );
        let (want, rule) = match rates {
            (Ok(lambda), Ok(service)) if service > 0.0 => (
                self.erlang_replicas(lambda, service, ctx.bounds.max),
                Rule::SloErlangC,
            ),
            _ => match s.metric(self.config.fallback.metric, ctx.max_signal_age) {
                Ok(demand) => (
                    queue_replicas(&self.config.fallback, s.current, demand).0,
                    Rule::SloFallbackQueue,
                ),
                Err(f) => return Recommendation::new(s.current, f.into()),
            },
        };
        let (n, rule) = self.window.apply(ctx, s, want, rule);
        Recommendation::new(n, rule)
    }
}
