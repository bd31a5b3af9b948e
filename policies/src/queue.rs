//! `queue`: a target of in-flight requests per replica, as a KEDA `AverageValue` trigger on a
//! queue metric gives, but with fast scale-up and a slow scale-down window.

use std::time::Duration;

use crate::band::{ScaleDownWindow, ceil_replicas, within_band};
use crate::decision::{Recommendation, Rule};
use crate::signals::{Metric, SignalKind, Signals};
use crate::{Context, Policy};

/// Queue policy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    /// The demand measured: `load` (waiting + running, default), `waiting` or `running`.
    pub metric: Metric,
    /// Target demand per replica (default 4).
    pub target: f64,
    /// Tolerance band around the target, as HPA's (default 0.1).
    pub tolerance: f64,
    /// A lower count takes effect only once it has been the highest for this long (300 s).
    pub scale_down_window: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            metric: Metric::Load,
            target: 4.0,
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(300),
        }
    }
}

/// Pure proportional sizing on demand: keep `current` inside the tolerance band, else
/// `ceil(demand / target)`. Zero demand asks for zero; keep-alive decides when that may happen.
pub(crate) fn queue_replicas(c: &QueueConfig, current: u32, demand: f64) -> (u32, Rule) {
    if demand <= 0.0 {
        return (0, Rule::QueueTarget);
    }
    if current > 0 && within_band(demand / (c.target * f64::from(current)), c.tolerance) {
        return (current, Rule::QueueWithinTolerance);
    }
    (ceil_replicas(demand / c.target), Rule::QueueTarget)
}

/// The queue policy and its scale-down window.
#[derive(Clone, Debug)]
pub struct Queue {
    config: QueueConfig,
    window: ScaleDownWindow,
}

impl Queue {
    /// A queue policy with an empty window.
    pub fn new(config: QueueConfig) -> Self {
        Queue {
            window: ScaleDownWindow::new(config.scale_down_window),
            config,
        }
    }
}

impl Policy for Queue {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn needs(&self) -> &[SignalKind] {
        self.config.metric.signals()
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        let Ok(demand) = s.metric(self.config.metric, ctx.max_signal_age) else {
            return Recommendation::new(s.current, Rule::SignalMissing(self.config.metric.signals()[0]));
        };
        let (want, rule) = queue_replicas(&self.config, s.current, demand);
        let (n, rule) = self.window.apply(ctx, s, want, rule);
        Recommendation::new(n, rule)
    }
}
