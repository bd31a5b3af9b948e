//! `gpu`: a target for GPU utilization or KV-cache usage, averaged over ready replicas.
//!
//! Neither is a good load signal for LLM servers on its own (vLLM pre-allocates the KV cache
//! and keeps the GPU busy); it is here for classic inference servers and to compose with
//! `queue` (`queue+gpu`). It cannot wake a workload from zero: there is nothing to measure.

use std::time::Duration;

use crate::band::{ScaleDownWindow, ceil_replicas, within_band};
use crate::decision::{Recommendation, Rule};
use crate::signals::{Metric, SignalKind, Signals};
use crate::{Context, Policy};

/// GPU policy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuConfig {
    /// `gpu_utilization` (default) or `kv_cache_usage`.
    pub metric: Metric,
    /// Target mean, 0-1 (default 0.7).
    pub target: f64,
    /// Tolerance band (default 0.1).
    pub tolerance: f64,
    /// Scale-down window (default 300 s).
    pub scale_down_window: Duration,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            metric: Metric::GpuUtilization,
            target: 0.7,
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(300),
        }
    }
}

/// The GPU policy.
#[derive(Clone, Debug)]
pub struct Gpu {
    config: GpuConfig,
    window: ScaleDownWindow,
}

impl Gpu {
    /// A GPU policy with an empty window.
    pub fn new(config: GpuConfig) -> Self {
        Gpu {
            window: ScaleDownWindow::new(config.scale_down_window),
            config,
        }
    }
}

impl Policy for Gpu {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn needs(&self) -> &[SignalKind] {
        self.config.metric.signals()
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        if s.ready == 0 {
            return Recommendation::new(s.current, Rule::GpuNoReadyReplicas);
        }
        let usage = match s.metric(self.config.metric, ctx.max_signal_age) {
            Ok(u) => u,
            Err(f) => return Recommendation::new(s.current, f.into()),
        };
        let ratio = usage / self.config.target;
        let (want, rule) = if within_band(ratio, self.config.tolerance) {
            (s.current, Rule::GpuWithinTolerance)
        } else {
            // Like HPA's unready rule: starting replicas carry no load, so the ratio is over
            // the ready ones only.
            (ceil_replicas(ratio * f64::from(s.ready)), Rule::GpuTarget)
        };
        let (n, rule) = self.window.apply(ctx, s, want, rule);
        Recommendation::new(n, rule)
    }
}
