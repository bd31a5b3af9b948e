//! The Kubernetes HorizontalPodAutoscaler, replica for replica.
//!
//! Follows `pkg/controller/podautoscaler` (replica_calculator.go, horizontal.go) as summarized
//! in shared/research/policies.md section 2: the usage ratio with a tolerance band, the
//! missing-metric and unready-pod rules of `Pods` metrics, `External` `AverageValue` and `Value`
//! targets, multi-metric max, and both normalizations: `behavior` (stabilization windows,
//! Pods/Percent policies with periods, selectPolicy) and the legacy path (5-minute downscale
//! stabilization, scale-up capped at `max(2 * current, 4)`).
//!
//! Metric values go through Kubernetes quantities at milli precision, as KEDA hands them over
//! (`int64(value * 1000)`), so rounding at the edges of the tolerance band matches the cluster.

use std::time::Duration;

use crate::band::ceil_replicas;
use crate::decision::{Bounds, Recommendation, Rule};
use crate::signals::{Metric, PodPhase, SignalKind, Signals};
use crate::window::{Extremes, History};
use crate::{Context, Policy};

/// How the metric is compared with its target (the HPA `MetricTarget` types gpuscale uses).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HpaTarget {
    /// `External` metric with `AverageValue`: `ratio = total / (target * statusReplicas)`.
    /// This is what a KEDA trigger produces.
    AverageValue(f64),
    /// `External`/`Object` metric with `Value`: `ratio = total / target`, times ready pods.
    Value(f64),
    /// `Pods` metric with `AverageValue`: per-pod values, with the missing and unready rules.
    PodAverage(f64),
}

impl HpaTarget {
    fn value(self) -> f64 {
        match self {
            HpaTarget::AverageValue(v) | HpaTarget::Value(v) | HpaTarget::PodAverage(v) => v,
        }
    }
}

/// One entry of `spec.metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HpaMetric {
    /// What is measured.
    pub metric: Metric,
    /// How it is compared.
    pub target: HpaTarget,
}

/// `behavior.scaleUp.selectPolicy` / `scaleDown.selectPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// `HPAScalingPolicy.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalingPolicyKind {
    /// An absolute number of pods per period.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// One `HPAScalingPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    /// Pods or Percent.
    pub kind: ScalingPolicyKind,
    /// How many pods, or what percentage.
    pub value: u32,
    /// The period the change is measured over (1 s to 30 min in the API).
    pub period: Duration,
}

/// `HPAScalingRules` for one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`.
    pub stabilization_window: Duration,
    /// `selectPolicy`.
    pub select_policy: SelectPolicy,
    /// `policies`.
    pub policies: Vec<ScalingPolicy>,
    /// `tolerance` (KEP-4951); 0.1 when unset.
    pub tolerance: f64,
}

impl ScalingRules {
    /// The API server's default `scaleUp` rules: no stabilization, max of 4 pods or 100 % per 15 s.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    kind: ScalingPolicyKind::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
                ScalingPolicy {
                    kind: ScalingPolicyKind::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
            ],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// The API server's default `scaleDown` rules: 300 s stabilization, 100 % per 15 s.
    pub fn default_scale_down() -> Self {
        ScalingRules {
            stabilization_window: Duration::from_secs(300),
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                kind: ScalingPolicyKind::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    fn longest_period(&self) -> Duration {
        self.policies.iter().map(|p| p.period).max().unwrap_or_default()
    }
}

/// `spec.behavior`.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// `scaleUp`.
    pub scale_up: ScalingRules,
    /// `scaleDown`.
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules::default_scale_down(),
        }
    }
}

/// The controller's default `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`, 15 s).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);

/// HPA configuration: the metrics, and `behavior` or the legacy controller flags.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaConfig {
    /// `spec.metrics`; the largest proposal wins.
    pub metrics: Vec<HpaMetric>,
    /// `spec.behavior`; `None` takes the legacy path, as the controller does when it is unset.
    pub behavior: Option<Behavior>,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`, legacy path only (default 5 min).
    pub legacy_downscale_window: Duration,
    /// `--horizontal-pod-autoscaler-tolerance`, legacy path only (default 0.1).
    pub legacy_tolerance: f64,
}

impl Default for HpaConfig {
    /// What a KEDA ScaledObject with one `AverageValue` trigger of 4 in-flight requests per
    /// replica gives, with the API server's default behavior.
    fn default() -> Self {
        HpaConfig {
            metrics: vec![HpaMetric {
                metric: Metric::Load,
                target: HpaTarget::AverageValue(4.0),
            }],
            behavior: Some(Behavior::default()),
            legacy_downscale_window: Duration::from_secs(300),
            legacy_tolerance: DEFAULT_TOLERANCE,
        }
    }
}

/// Tolerance band around ratio 1 (`Tolerances.isWithin`).
#[derive(Clone, Copy, Debug)]
struct Tolerances {
    down: f64,
    up: f64,
}

impl Tolerances {
    fn is_within(self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

/// A quantity's `MilliValue()` as KEDA produces it: `int64(v * 1000)`, truncated.
fn milli(v: f64) -> i64 {
    (v * 1000.0) as i64
}

/// The HPA controller for one workload: its recommendation history and scale events.
#[derive(Clone, Debug)]
pub struct Hpa {
    config: HpaConfig,
    needs: Vec<SignalKind>,
    recommendations: Extremes,
    scale_up_events: History,
    scale_down_events: History,
}

impl Hpa {
    /// A controller with no history, as after a kube-controller-manager restart.
    pub fn new(config: HpaConfig) -> Self {
        let mut needs: Vec<SignalKind> = Vec::new();
        for m in &config.metrics {
            for &k in m.metric.signals() {
                if !needs.contains(&k) {
                    needs.push(k);
                }
            }
        }
        Hpa {
            config,
            needs,
            recommendations: Extremes::default(),
            scale_up_events: History::default(),
            scale_down_events: History::default(),
        }
    }

    fn tolerances(&self) -> Tolerances {
        match &self.config.behavior {
            Some(b) => Tolerances {
                down: b.scale_down.tolerance,
                up: b.scale_up.tolerance,
            },
            None => Tolerances {
                down: self.config.legacy_tolerance,
                up: self.config.legacy_tolerance,
            },
        }
    }

    /// One metric's proposal (`computeReplicasForMetric`); `Err` holds the reason it is invalid.
    fn replicas_for_metric(
        &self,
        m: &HpaMetric,
        ctx: &Context,
        s: &Signals,
        value: Option<f64>,
    ) -> Result<(u32, Rule), Rule> {
        let tol = self.tolerances();
        let target_m = milli(m.target.value()).max(1);
        match m.target {
            HpaTarget::AverageValue(_) => {
                // GetExternalPerPodMetricReplicas
                let usage = milli(match value {
                    Some(v) => v,
                    None => s.metric(m.metric, ctx.max_signal_age).map_err(Rule::from)?,
                });
                let status = s.status_replicas();
                let ratio = usage as f64 / (target_m as f64 * status as f64);
                if tol.is_within(ratio) {
                    Ok((status, Rule::HpaWithinTolerance))
                } else {
                    Ok((ceil_replicas(usage as f64 / target_m as f64), Rule::HpaRatio))
                }
            }
            HpaTarget::Value(_) => {
                // GetExternalMetricReplicas -> getUsageRatioReplicaCount
                let usage = milli(match value {
                    Some(v) => v,
                    None => s.metric(m.metric, ctx.max_signal_age).map_err(Rule::from)?,
                });
                let ratio = usage as f64 / target_m as f64;
                if s.current == 0 {
                    Ok((ceil_replicas(ratio), Rule::HpaRatio))
                } else if tol.is_within(ratio) {
                    Ok((s.current, Rule::HpaWithinTolerance))
                } else {
                    Ok((ceil_replicas(ratio * s.ready as f64), Rule::HpaRatio))
                }
            }
            HpaTarget::PodAverage(_) => self.plain_metric_replicas(m.metric, target_m, tol, ctx, s),
        }
    }

    /// `calcPlainMetricReplicas`: per-pod values with the missing-metric and unready-pod rules.
    fn plain_metric_replicas(
        &self,
        metric: Metric,
        target_m: i64,
        tol: Tolerances,
        ctx: &Context,
        s: &Signals,
    ) -> Result<(u32, Rule), Rule> {
        // The per-pod values are as old as the aggregate scrape they came with.
        for &k in metric.signals() {
            if let Some(r) = s.reading(k)
                && r.age > ctx.max_signal_age
            {
                return Err(Rule::SignalStale(k));
            }
        }
        if s.pods.is_empty() {
            return Err(Rule::HpaNoMetrics);
        }
        // groupPods: deleting/failed ignored; Pending unready; no metric missing; else ready.
        // (For non-CPU metrics a Running pod with a value counts as ready.)
        let mut values: Vec<i64> = Vec::with_capacity(s.pods.len());
        let (mut unready, mut missing) = (0usize, 0usize);
        for p in &s.pods {
            match p.phase {
                PodPhase::Terminating => {}
                PodPhase::Pending => unready += 1,
                PodPhase::Running => match p.value(metric) {
                    Some(v) if v.is_finite() => values.push(milli(v)),
                    _ => missing += 1,
                },
            }
        }
        if values.is_empty() {
            return Err(Rule::HpaNoMetrics);
        }
        let ready_count = values.len();
        // GetMetricUsageRatio: integer mean of milli-values over the target.
        let ratio_of = |vals: &[i64], extra: &[i64]| {
            let n = (vals.len() + extra.len()) as i64;
            let total: i64 = vals.iter().chain(extra).sum();
            (total / n) as f64 / target_m as f64
        };
        let usage_ratio = ratio_of(&values, &[]);
        let scale_up_with_unready = unready > 0 && usage_ratio > 1.0;
        if !scale_up_with_unready && missing == 0 {
            if tol.is_within(usage_ratio) {
                return Ok((s.current, Rule::HpaWithinTolerance));
            }
            return Ok((ceil_replicas(usage_ratio * ready_count as f64), Rule::HpaRatio));
        }
        let mut extra: Vec<i64> = Vec::with_capacity(missing + unready);
        // Missing pods count as at target on a scale-down, as 0 on a scale-up.
        let missing_value = if usage_ratio < 1.0 { target_m } else { 0 };
        extra.extend(std::iter::repeat_n(missing_value, missing));
        if scale_up_with_unready {
            extra.extend(std::iter::repeat_n(0, unready));
        }
        let new_ratio = ratio_of(&values, &extra);
        if tol.is_within(new_ratio)
            || (usage_ratio < 1.0 && new_ratio > 1.0)
            || (usage_ratio > 1.0 && new_ratio < 1.0)
        {
            return Ok((s.current, Rule::HpaDirectionFlip));
        }
        let new_replicas = ceil_replicas(new_ratio * (values.len() + extra.len()) as f64);
        if (new_ratio < 1.0 && new_replicas > s.current) || (new_ratio > 1.0 && new_replicas < s.current) {
            return Ok((s.current, Rule::HpaDirectionFlip));
        }
        Ok((new_replicas, Rule::HpaRatio))
    }

    /// `stabilizeRecommendationWithBehaviors`: clamp the current count between the lowest
    /// recommendation of the scale-up window and the highest of the scale-down window.
    fn stabilize(&mut self, now: Duration, current: u32, desired: u32, b: &Behavior) -> u32 {
        let up = self
            .recommendations
            .min_within(now, b.scale_up.stabilization_window);
        let down = self
            .recommendations
            .max_within(now, b.scale_down.stabilization_window);
        self.recommendations.push(now, desired);
        let (up, down) = (
            up.map_or(desired, |u| u.min(desired)),
            down.map_or(desired, |d| d.max(desired)),
        );
        current.max(up).min(down)
    }

    /// `stabilizeRecommendation` (legacy): the highest recommendation of the last window.
    fn stabilize_legacy(&mut self, now: Duration, desired: u32) -> u32 {
        // The legacy path keeps samples at exactly the cutoff (it tests `Before(cutoff)`).
        let window = self.config.legacy_downscale_window + Duration::from_nanos(1);
        let max = self.recommendations.max_within(now, window);
        self.recommendations.push(now, desired);
        max.map_or(desired, |m| m.max(desired))
    }

    /// Replicas added (or removed) within `period` before `now` (`getReplicasChangePerPeriod`).
    fn change_in_period(events: &History, now: Duration, period: Duration) -> i64 {
        events.within(now, period).map(i64::from).sum()
    }

    /// The furthest count the scaling policies allow from `current` in one direction
    /// (`calculateScaleUpLimitWithScalingRules` / `calculateScaleDownLimitWithBehaviors`):
    /// each policy measures from the count at the start of its period, and `selectPolicy`
    /// `Max` takes the largest change, `Min` the smallest.
    fn rate_bound(&self, now: Duration, current: u32, rules: &ScalingRules, up: bool) -> i64 {
        let current = i64::from(current);
        let (largest_change, smallest_change): (Pick, Pick) = if up {
            (i64::max, i64::min)
        } else {
            (i64::min, i64::max)
        };
        let pick = match rules.select_policy {
            SelectPolicy::Disabled => return current,
            SelectPolicy::Max => largest_change,
            SelectPolicy::Min => smallest_change,
        };
        rules
            .policies
            .iter()
            .map(|p| {
                let added = Self::change_in_period(&self.scale_up_events, now, p.period);
                let removed = Self::change_in_period(&self.scale_down_events, now, p.period);
                let start = current - added + removed;
                let (pods, pct) = (i64::from(p.value), f64::from(p.value) / 100.0);
                match (p.kind, up) {
                    (ScalingPolicyKind::Pods, true) => start + pods,
                    (ScalingPolicyKind::Pods, false) => start - pods,
                    // Rounded up so a small percentage still adds a pod.
                    (ScalingPolicyKind::Percent, true) => (start as f64 * (1.0 + pct)).ceil() as i64,
                    // int32(float64(start) * (1 - v/100)): truncation toward zero.
                    (ScalingPolicyKind::Percent, false) => (start as f64 * (1.0 - pct)) as i64,
                }
            })
            .reduce(pick)
            // No policies: no room to move (the caller clamps to `current` anyway).
            .unwrap_or(current)
    }

    /// `convertDesiredReplicasWithBehaviorRate`.
    fn rate_limit(
        &self,
        now: Duration,
        current: u32,
        desired: u32,
        bounds: Bounds,
        b: &Behavior,
    ) -> (u32, Option<Rule>) {
        if desired > current {
            let limit = self
                .rate_bound(now, current, &b.scale_up, true)
                .max(i64::from(current));
            let (allowed, rule) = if i64::from(bounds.max) > limit {
                (limit, Rule::HpaScaleUpLimit)
            } else {
                (i64::from(bounds.max), Rule::MaxBound)
            };
            if i64::from(desired) > allowed {
                return (allowed as u32, Some(rule));
            }
        } else if desired < current {
            let limit = self
                .rate_bound(now, current, &b.scale_down, false)
                .min(i64::from(current));
            let (allowed, rule) = if i64::from(bounds.min) < limit {
                (limit, Rule::HpaScaleDownLimit)
            } else {
                (i64::from(bounds.min), Rule::MinBound)
            };
            if i64::from(desired) < allowed {
                return (allowed.max(0) as u32, Some(rule));
            }
        }
        (desired, None)
    }

    /// `convertDesiredReplicasWithRules` (legacy): `[min, min(max, max(2 * current, 4))]`.
    fn legacy_rules(current: u32, desired: u32, bounds: Bounds) -> (u32, Option<Rule>) {
        let scale_up_limit = (current.saturating_mul(2)).max(4);
        let (max_allowed, rule) = if bounds.max > scale_up_limit {
            (scale_up_limit, Rule::HpaScaleUpLimit)
        } else {
            (bounds.max, Rule::MaxBound)
        };
        if desired < bounds.min {
            (bounds.min, Some(Rule::MinBound))
        } else if desired > max_allowed {
            (max_allowed, Some(rule))
        } else {
            (desired, None)
        }
    }

    fn record_scale_event(&mut self, now: Duration, current: u32, desired: u32) {
        let Some(b) = &self.config.behavior else { return };
        let (up_keep, down_keep) = (b.scale_up.longest_period(), b.scale_down.longest_period());
        self.scale_up_events.prune(now, up_keep);
        self.scale_down_events.prune(now, down_keep);
        if desired > current {
            self.scale_up_events.push(now, desired - current);
        } else if desired < current {
            self.scale_down_events.push(now, current - desired);
        }
    }
}

/// Picks one of two limits: `i64::max` or `i64::min`.
type Pick = fn(i64, i64) -> i64;

impl Policy for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
    }

    fn period(&self) -> Option<Duration> {
        Some(SYNC_PERIOD)
    }

    fn needs(&self) -> &[SignalKind] {
        &self.needs
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        self.decide(ctx, s, None)
    }
}

impl Hpa {
    /// The HPA fed an external metric's value directly instead of reading it from `signals`:
    /// what KEDA's HPA does with the number an external scaler returns from GetMetrics (in
    /// gpuscale's `replicas` mode, the desired count against an `AverageValue` target of 1).
    /// `AverageValue` and `Value` targets use `value`; `Pods` targets still read the pods.
    pub fn recommend_value(&mut self, ctx: &Context, s: &Signals, value: f64) -> Recommendation {
        self.decide(ctx, s, Some(value))
    }

    fn decide(&mut self, ctx: &Context, s: &Signals, value: Option<f64>) -> Recommendation {
        let (now, bounds, current) = (ctx.now, ctx.bounds, s.current);
        // reconcileAutoscaler's guards, in its order.
        if current == 0 && bounds.min != 0 {
            return Recommendation::new(0, Rule::HpaDisabled);
        }
        if current > bounds.max {
            return Recommendation::new(bounds.max, Rule::MaxBound);
        }
        if current < bounds.min {
            return Recommendation::new(bounds.min, Rule::MinBound);
        }
        // computeReplicasForMetrics: max over valid metrics; if all are invalid, or some are and
        // the rest would scale down, the controller errors out and leaves the count alone.
        let mut best: Option<(u32, Rule)> = None;
        let mut invalid: Option<Rule> = None;
        for m in &self.config.metrics {
            match self.replicas_for_metric(m, ctx, s, value) {
                Ok(p) if best.is_none_or(|b| p.0 > b.0) => best = Some(p),
                Ok(_) => {}
                Err(r) => invalid = invalid.or(Some(r)),
            }
        }
        let Some((proposal, mut rule)) = best else {
            return Recommendation::new(current, invalid.unwrap_or(Rule::HpaNoMetrics));
        };
        if let Some(r) = invalid
            && proposal < current
        {
            return Recommendation::new(current, r);
        }
        // Taken out for the call and put back, so the hot path does not clone the policies.
        let behavior = self.config.behavior.take();
        let desired = match &behavior {
            Some(b) => {
                let stabilized = self.stabilize(now, current, proposal, b);
                if stabilized != proposal {
                    rule = Rule::HpaStabilized;
                }
                let (limited, limit_rule) = self.rate_limit(now, current, stabilized, bounds, b);
                if let Some(r) = limit_rule {
                    rule = r;
                }
                limited
            }
            None => {
                let stabilized = self.stabilize_legacy(now, proposal);
                if stabilized != proposal {
                    rule = Rule::HpaStabilized;
                }
                let (limited, limit_rule) = Self::legacy_rules(current, stabilized, bounds);
                if let Some(r) = limit_rule {
                    rule = r;
                }
                limited
            }
        };
        self.config.behavior = behavior;
        self.record_scale_event(now, current, desired);
        Recommendation::new(desired, rule)
    }
}
