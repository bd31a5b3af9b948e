//! Knative's KPA: the decider of serving `pkg/autoscaler/scaling/autoscaler.go` over 1 s
//! buckets, plus the scale-to-zero handling of `pkg/reconciler/autoscaling/kpa/scaler.go`.
//!
//! Exact where the inputs allow: stable (60 s) and panic (6 s) window averages with Knative's
//! partial-window rule and 6-digit floor; `ready = max(1, readyPods)`; scale-up capped at
//! `ceil(1000 * ready)`, scale-down at `floor(ready / 2)`; panic entered when
//! `ceil(panic / target) / ready >= 2`, extended while over, left after a calm stable window, and
//! never scaling down while in it; a new decider starts in panic when more than one pod is ready;
//! `activation-scale`; `scale-down-delay` as a max over 2 s slots. Scale-to-zero: only after the
//! revision has been active for a stable window and then inactive for the grace period (30 s);
//! one replica is kept until then. The activator probe (SKS proxy mode) is I/O and not modelled.

use std::time::Duration;

use crate::decision::{Recommendation, Rule};
use crate::signals::{Metric, SignalKind, Signals};
use crate::window::{BucketAverage, SlidingMax};
use crate::{Context, Policy};

/// The decider's tick (`tickInterval`), which is also the granularity of the delay window.
pub const TICK: Duration = Duration::from_secs(2);

/// KPA configuration; defaults are Knative's `config-autoscaler` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct KpaConfig {
    /// `concurrency` (Load) or `rps` (ArrivalRate).
    pub metric: Metric,
    /// Per-pod target before utilization: `containerConcurrency`, the `target` annotation, or
    /// the default (100 concurrent, 200 rps).
    pub target: f64,
    /// `container-concurrency-target-percentage` as a fraction (0.7).
    pub target_utilization: f64,
    /// `stable-window` (60 s, whole seconds, 6 s to 1 h).
    pub stable_window: Duration,
    /// `panic-window-percentage` (10).
    pub panic_window_percentage: f64,
    /// `panic-threshold-percentage` (200) as a factor (2.0).
    pub panic_threshold: f64,
    /// `max-scale-up-rate` (1000).
    pub max_scale_up_rate: f64,
    /// `max-scale-down-rate` (2).
    pub max_scale_down_rate: f64,
    /// `scale-to-zero-grace-period` (30 s).
    pub scale_to_zero_grace: Duration,
    /// `scale-down-delay` (0).
    pub scale_down_delay: Duration,
    /// `activation-scale` (1).
    pub activation_scale: u32,
}

impl Default for KpaConfig {
    fn default() -> Self {
        KpaConfig {
            metric: Metric::Load,
            target: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace: Duration::from_secs(30),
            scale_down_delay: Duration::ZERO,
            activation_scale: 1,
        }
    }
}

impl KpaConfig {
    /// `max(0.01, target * utilization)` (`ResolveMetricTarget`).
    pub fn target_value(&self) -> f64 {
        (self.target * self.target_utilization).max(0.01)
    }

    /// Stable window in whole seconds.
    pub fn stable_secs(&self) -> u64 {
        self.stable_window.as_secs().max(1)
    }

    /// `panicWindow = round(stable * pct / 100)`, at least one bucket.
    pub fn panic_secs(&self) -> u64 {
        ((self.stable_secs() as f64 * self.panic_window_percentage / 100.0).round() as u64).max(1)
    }
}

/// Where the revision is in Knative's active/inactive life (the PA's `Active` condition).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Activity {
    Active { since: Duration },
    Inactive { since: Duration },
}

/// One revision's KPA state.
#[derive(Clone, Debug)]
pub struct Kpa {
    config: KpaConfig,
    needs: [SignalKind; 2],
    needs_len: usize,
    stable: BucketAverage,
    panic: BucketAverage,
    delay: Option<SlidingMax>,
    started: bool,
    panic_since: Option<Duration>,
    max_panic_pods: u32,
    activity: Activity,
    was_zero: bool,
}

impl Kpa {
    /// A fresh decider, as after the autoscaler pod restarts.
    pub fn new(config: KpaConfig) -> Self {
        let sig = config.metric.signals();
        let mut needs = [SignalKind::Waiting; 2];
        needs[..sig.len()].copy_from_slice(sig);
        Kpa {
            needs,
            needs_len: sig.len(),
            stable: BucketAverage::new(config.stable_secs()),
            panic: BucketAverage::new(config.panic_secs()),
            delay: (config.scale_down_delay > Duration::ZERO)
                .then(|| SlidingMax::new(config.scale_down_delay, TICK)),
            started: false,
            panic_since: None,
            max_panic_pods: 0,
            activity: Activity::Active {
                since: Duration::ZERO,
            },
            was_zero: false,
            config,
        }
    }

    /// The stable and panic window averages at `now` (for reports and tests).
    pub fn observed(&self, now: Duration) -> (f64, f64) {
        let sec = now.as_secs();
        (self.stable.average(sec), self.panic.average(sec))
    }

    /// Whether the decider is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_since.is_some()
    }

    /// The decider proper (`autoscaler.Scale`); `None` when there is no data (invalid scale).
    fn scale(&mut self, now: Duration, ready_pods: u32) -> Option<(u32, Rule)> {
        let sec = now.as_secs();
        if !self.started {
            // newAutoscaler: start in panic when more than one pod is ready, so a restart
            // holds the current scale until the windows refill.
            self.started = true;
            if ready_pods > 1 {
                self.panic_since = Some(now);
                self.max_panic_pods = ready_pods;
            }
        }
        if self.stable.is_empty(sec) {
            return None;
        }
        let c = &self.config;
        let ready = f64::from(ready_pods.max(1));
        let target = c.target_value();
        let (stable, panic) = (self.stable.average(sec), self.panic.average(sec));
        let max_up = (c.max_scale_up_rate * ready).ceil();
        let max_down = (ready / c.max_scale_down_rate).floor(); // reachable revision
        let dspc = (stable / target).ceil();
        let dppc = (panic / target).ceil();
        let mut desired_stable = dspc.max(max_down).min(max_up) as u32;
        let mut desired_panic = dppc.max(max_down).min(max_up) as u32;
        if c.activation_scale > 1 {
            if dspc > 0.0 && c.activation_scale > desired_stable {
                desired_stable = c.activation_scale;
            }
            if dppc > 0.0 && c.activation_scale > desired_panic {
                desired_panic = c.activation_scale;
            }
        }
        let over_panic = dppc / ready >= c.panic_threshold;
        match self.panic_since {
            _ if over_panic => self.panic_since = Some(now),
            Some(t) if t + c.stable_window < now => {
                self.panic_since = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }
        let (mut desired, mut rule) = (desired_stable, Rule::KpaStable);
        if self.panic_since.is_some() {
            desired = desired.max(desired_panic);
            if desired > self.max_panic_pods {
                self.max_panic_pods = desired;
            }
            desired = self.max_panic_pods;
            rule = Rule::KpaPanic;
        }
        if let Some(delay) = &mut self.delay {
            let delayed = delay.record(now, desired);
            if delayed != desired {
                desired = delayed;
                rule = Rule::KpaScaleDownDelay;
            }
        }
        Some((desired, rule))
    }

    /// `handleScaleToZero`: 0 only after a stable window active and a grace period inactive.
    fn scale_to_zero(&mut self, now: Duration, desired: u32, rule: Rule) -> (u32, Rule) {
        if desired > 0 {
            if let Activity::Inactive { .. } = self.activity {
                self.activity = Activity::Active { since: now };
            }
            return (desired, rule);
        }
        match self.activity {
            Activity::Active { since } => {
                if now.saturating_sub(since) >= self.config.stable_window {
                    self.activity = Activity::Inactive { since: now };
                }
                (1, Rule::KpaScaleToZeroGrace)
            }
            Activity::Inactive { since } => {
                if now.saturating_sub(since) >= self.config.scale_to_zero_grace {
                    (0, rule)
                } else {
                    (1, Rule::KpaScaleToZeroGrace)
                }
            }
        }
    }
}

impl Policy for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn period(&self) -> Option<Duration> {
        Some(TICK)
    }

    fn needs(&self) -> &[SignalKind] {
        &self.needs[..self.needs_len]
    }

    fn observe(&mut self, ctx: &Context, s: &Signals) {
        // Only fresh data is new data: re-recording a stale value would invent measurements.
        if let Ok(v) = s.metric(self.config.metric, ctx.max_signal_age) {
            let sec = ctx.now.as_secs();
            self.stable.record(sec, v);
            self.panic.record(sec, v);
        }
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        if self.was_zero && s.current > 0 {
            // Woken from zero from outside (activator, another policy): active again.
            self.activity = Activity::Active { since: ctx.now };
        }
        self.was_zero = s.current == 0;
        match self.scale(ctx.now, s.ready) {
            None => Recommendation::new(s.current, Rule::KpaNoData),
            Some((desired, rule)) => {
                if s.current == 0 && desired == 0 {
                    return Recommendation::new(0, rule);
                }
                let (d, r) = self.scale_to_zero(ctx.now, desired, rule);
                Recommendation::new(d, r)
            }
        }
    }
}
