//! What a policy answers, and why.

use std::fmt;

use serde::Serialize;

use crate::signals::{SignalFault, SignalKind};

/// Replica bounds, inclusive. `min = 0` allows scale-to-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bounds {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
}

impl Bounds {
    /// Bounds `[min, max]`; fails when `min > max` or `max == 0`.
    pub fn new(min: u32, max: u32) -> Result<Self, crate::SpecError> {
        if max == 0 {
            return Err(crate::SpecError::Invalid {
                key: "maxReplicas".into(),
                value: max.to_string(),
                expected: "an integer >= 1 (a workload that may never run needs no autoscaler)".into(),
            });
        }
        if min > max {
            return Err(crate::SpecError::Invalid {
                key: "minReplicas".into(),
                value: min.to_string(),
                expected: format!("an integer <= maxReplicas ({max})"),
            });
        }
        Ok(Bounds { min, max })
    }

    /// `n` clamped into the bounds.
    pub fn clamp(self, n: u32) -> u32 {
        n.clamp(self.min, self.max)
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { min: 0, max: 100 }
    }
}

/// One policy's answer before the autoscaler applies keep-alive, safety and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// Replicas the policy asks for.
    pub replicas: u32,
    /// The rule that produced it.
    pub rule: Rule,
}

impl Recommendation {
    /// Shorthand constructor.
    pub fn new(replicas: u32, rule: Rule) -> Self {
        Recommendation { replicas, rule }
    }
}

/// The autoscaler's answer for one workload at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Replicas to run.
    pub desired: u32,
    /// What the policies asked for, before keep-alive, safety and bounds.
    pub recommended: u32,
    /// Whether the workload should be awake (`desired > 0`); what KEDA's IsActive reports.
    pub active: bool,
    /// The policy whose recommendation won the composition.
    pub policy: &'static str,
    /// The rule or bound that decided `desired`.
    pub rule: Rule,
}

/// Which rule or bound decided a replica count: the machine-readable reason of a decision.
///
/// [`Rule::code`] is stable (`family.rule`) and is what the scaler exports and the simulator
/// writes; [`fmt::Display`] is for people.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// A signal the policy needs was never measured: hold the current count.
    SignalMissing(SignalKind),
    /// A signal the policy needs is older than the allowed age: hold the current count.
    SignalStale(SignalKind),
    /// A signal was NaN, infinite or negative: hold the current count.
    SignalInvalid(SignalKind),
    /// Replicas are still starting; a further scale-up waits until they are ready.
    StartingCapacity,
    /// Raised to the minimum replica bound.
    MinBound,
    /// Lowered to the maximum replica bound.
    MaxBound,
    /// Idle, but inside the keep-alive window: one replica stays warm.
    KeepAliveWindow,
    /// Idle past the keep-alive window: scale to zero.
    KeepAliveExpired,
    /// Idle and predicted to stay idle for a while (adaptive keep-alive's head): zero until
    /// the pre-warm time.
    PrewarmWait,
    /// At zero, but the next request is predicted soon: one replica is pre-warmed.
    Prewarm,
    /// Zero would need a fresh demand signal of zero; there is none, so one replica stays.
    DemandUnknown,
    /// A policy asked for zero while requests are in flight: one replica stays.
    DemandPresent,
    /// At zero with no demand and nothing predicted: stay asleep.
    Asleep,
    /// A fixed count (`fixed:N`).
    Fixed,
    /// HPA: usage ratio inside the tolerance band, keep the current count.
    HpaWithinTolerance,
    /// HPA: `ceil(ratio * replicas)`.
    HpaRatio,
    /// HPA: missing or unready pods would flip the scaling direction; keep the current count.
    HpaDirectionFlip,
    /// HPA: no pod reported the metric.
    HpaNoMetrics,
    /// HPA: spec.replicas is 0 while minReplicas > 0, so the HPA is disabled.
    HpaDisabled,
    /// HPA: held by the stabilization window.
    HpaStabilized,
    /// HPA: limited by a scale-up policy (or the legacy `max(2x, 4)` cap).
    HpaScaleUpLimit,
    /// HPA: limited by a scale-down policy.
    HpaScaleDownLimit,
    /// KPA: stable-window decision.
    KpaStable,
    /// KPA: in panic mode, never scaling down.
    KpaPanic,
    /// KPA: no metric data in the stable window; no scaling.
    KpaNoData,
    /// KPA: held up by `scale-down-delay`.
    KpaScaleDownDelay,
    /// KPA: one replica kept until the scale-to-zero grace (and stable window) passed.
    KpaScaleToZeroGrace,
    /// Queue: `ceil(demand / target)`.
    QueueTarget,
    /// Queue: inside the tolerance band, keep the current count.
    QueueWithinTolerance,
    /// Held up by the scale-down window (highest recent recommendation).
    ScaleDownWindow,
    /// SLO: smallest count meeting the wait quantile under Erlang C.
    SloErlangC,
    /// SLO: arrival or service rate unknown, so the queue rule decided.
    SloFallbackQueue,
    /// GPU: `ceil(ready * usage / target)`.
    GpuTarget,
    /// GPU: inside the tolerance band, keep the current count.
    GpuWithinTolerance,
    /// GPU: no ready replica to measure, keep the current count.
    GpuNoReadyReplicas,
    /// Tokens: `ceil((prompt rate / C_p + output rate / C_d) / utilization)`.
    TokensCapacity,
    /// Tokens: the need is inside the tolerance band, keep the current count.
    TokensWithinTolerance,
    /// Tokens: the KV cache needs more replicas than the token rates.
    TokensKvCache,
    /// Tokens: more requests in flight than `saturation` times the slots of every replica.
    TokensInFlight,
    /// Tokens: requests have waited through the backlog window; the backstop added replicas.
    TokensBacklog,
    /// Tokens: a capacity or a token rate is unknown, so the queue rule decided on slots.
    TokensFallbackQueue,
}

impl Rule {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rule::SignalMissing(_) => "safety.signal_missing",
            Rule::SignalStale(_) => "safety.signal_stale",
            Rule::SignalInvalid(_) => "safety.signal_invalid",
            Rule::StartingCapacity => "safety.starting_capacity",
            Rule::MinBound => "bound.min",
            Rule::MaxBound => "bound.max",
            Rule::KeepAliveWindow => "keepalive.window",
            Rule::KeepAliveExpired => "keepalive.expired",
            Rule::PrewarmWait => "keepalive.prewarm_wait",
            Rule::Prewarm => "keepalive.prewarm",
            Rule::DemandUnknown => "keepalive.demand_unknown",
            Rule::DemandPresent => "keepalive.demand_present",
            Rule::Asleep => "keepalive.asleep",
            Rule::Fixed => "fixed",
            Rule::HpaWithinTolerance => "hpa.within_tolerance",
            Rule::HpaRatio => "hpa.ratio",
            Rule::HpaDirectionFlip => "hpa.direction_flip",
            Rule::HpaNoMetrics => "hpa.no_metrics",
            Rule::HpaDisabled => "hpa.disabled",
            Rule::HpaStabilized => "hpa.stabilized",
            Rule::HpaScaleUpLimit => "hpa.scale_up_limit",
            Rule::HpaScaleDownLimit => "hpa.scale_down_limit",
            Rule::KpaStable => "kpa.stable",
            Rule::KpaPanic => "kpa.panic",
            Rule::KpaNoData => "kpa.no_data",
            Rule::KpaScaleDownDelay => "kpa.scale_down_delay",
            Rule::KpaScaleToZeroGrace => "kpa.scale_to_zero_grace",
            Rule::QueueTarget => "queue.target",
            Rule::QueueWithinTolerance => "queue.within_tolerance",
            Rule::ScaleDownWindow => "scale_down_window",
            Rule::SloErlangC => "slo.erlang_c",
            Rule::SloFallbackQueue => "slo.fallback_queue",
            Rule::GpuTarget => "gpu.target",
            Rule::GpuWithinTolerance => "gpu.within_tolerance",
            Rule::GpuNoReadyReplicas => "gpu.no_ready_replicas",
            Rule::TokensCapacity => "tokens.capacity",
            Rule::TokensWithinTolerance => "tokens.within_tolerance",
            Rule::TokensKvCache => "tokens.kv_cache",
            Rule::TokensInFlight => "tokens.in_flight",
            Rule::TokensBacklog => "tokens.backlog",
            Rule::TokensFallbackQueue => "tokens.fallback_queue",
        }
    }

    /// The signal a safety rule is about.
    pub fn signal(&self) -> Option<SignalKind> {
        match self {
            Rule::SignalMissing(k) | Rule::SignalStale(k) | Rule::SignalInvalid(k) => Some(*k),
            _ => None,
        }
    }

    /// Whether this rule holds the count because data was missing or stale.
    pub fn is_safety_hold(&self) -> bool {
        matches!(
            self,
            Rule::SignalMissing(_) | Rule::SignalStale(_) | Rule::SignalInvalid(_)
        )
    }
}

impl From<SignalFault> for Rule {
    fn from(f: SignalFault) -> Self {
        match f {
            SignalFault::Missing(k) => Rule::SignalMissing(k),
            SignalFault::Stale(k) => Rule::SignalStale(k),
            SignalFault::Invalid(k) => Rule::SignalInvalid(k),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal() {
            Some(k) => write!(f, "{} ({}): holding the current count", self.code(), k.as_str()),
            None => f.write_str(self.code()),
        }
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", self.code())?;
        if let Some(k) = self.signal() {
            m.serialize_entry("signal", k.as_str())?;
        }
        m.end()
    }
}
