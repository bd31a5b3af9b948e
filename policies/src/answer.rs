//! What KEDA is told about one workload after a decision: whether it should be awake
//! (`IsActive`), or that this is not known. The scaler publishes it and the simulator's KEDA
//! model acts on it, from this one function, so a replay shows what the scaler would have
//! made KEDA do, not what a simpler rule would.

use crate::decision::{Decision, Rule};
use crate::signals::Metric;

/// The demand a workload's activity is judged on, in requests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Queued at the model servers.
    pub waiting: f64,
    /// In service at the model servers.
    pub running: f64,
    /// Held at an activator while the workload is at zero.
    pub held: f64,
}

/// Why an answer (the metric value, or activity) is not known. KEDA hears it as UNAVAILABLE
/// with this text, which never deactivates a workload; callers act on the variant, never on
/// the text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NotKnown {
    /// Nothing has been decided since the workload was registered.
    #[error(
        "no decision yet: the scaler has not completed a poll of the collectors since this workload was registered"
    )]
    NoDecision,
    /// The signals are not known, and why (which collector or target, how old, what is missing).
    #[error("{0}")]
    Unobserved(String),
    /// The policy held its count on a missing, stale or invalid signal.
    #[error("{0}")]
    Hold(Rule),
}

/// Whether the workload should be awake, given the last decision (or why there is none) and
/// the current replica count.
///
/// - Requests held at an activator above `threshold` wake it, whatever else is known: they are
///   demand no collector can see.
/// - A decision that is a safety hold (signals missing, stale or invalid) is not an answer.
/// - At zero replicas, demand above `threshold` wakes it (KEDA's activation threshold), and so
///   does a pre-warm ([`Rule::Prewarm`]: the next request is predicted soon); a policy asking
///   for a minimum of one replica does not by itself wake an idle workload.
/// - Awake, it stays awake while the policy wants replicas, anything is in service, or demand is
///   above `threshold`.
pub fn activity(
    decision: Result<&Decision, NotKnown>,
    current: u32,
    demand: Demand,
    threshold: f64,
) -> Result<bool, NotKnown> {
    if demand.held > threshold {
        return Ok(true);
    }
    let d = decision?;
    if d.rule.is_safety_hold() {
        return Err(NotKnown::Hold(d.rule));
    }
    let total = demand.waiting + demand.running + demand.held;
    Ok(if current == 0 {
        total > threshold || (d.rule == Rule::Prewarm && d.desired > 0)
    } else {
        d.desired > 0 || demand.running > 0.0 || total > threshold
    })
}

/// What GetMetrics reports for a workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reported {
    /// The policy's desired replica count (KEDA's HPA, with target 1, passes it through).
    Replicas,
    /// The raw signal, for HPA's own formula against a per-replica target.
    Signal(Metric),
}

/// What the collectors measured for a workload, summed or averaged over its replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measured {
    /// Requests queued, in service, and held at an activator.
    pub demand: Demand,
    /// Mean KV-cache usage, 0-1, when every replica reports it.
    pub kv_cache_usage: Option<f64>,
    /// Mean GPU utilization, 0-1, when the pods' GPUs are attributed.
    pub gpu_utilization: Option<f64>,
}

/// The number GetMetrics reports, given the last decision (or why there is none).
///
/// A safety hold is not a number, and neither is a signal no collector reported: a missing
/// KV-cache or GPU reading read as 0 would let KEDA's HPA scale the workload down on nothing.
pub fn value(
    decision: Result<&Decision, NotKnown>,
    reported: Reported,
    seen: &Measured,
) -> Result<f64, NotKnown> {
    let d = decision?;
    if d.rule.is_safety_hold() {
        return Err(NotKnown::Hold(d.rule));
    }
    let Demand {
        waiting,
        running,
        held,
    } = seen.demand;
    let unreported = |what: &str| {
        NotKnown::Unobserved(format!(
            "{what} is not reported for this workload (no model server page carries it, or its pods' GPUs are not attributed); report another metric or fix the collector's targets"
        ))
    };
    Ok(match reported {
        Reported::Replicas => f64::from(d.desired),
        Reported::Signal(Metric::Waiting) => waiting + held,
        Reported::Signal(Metric::Running) => running,
        Reported::Signal(Metric::KvCacheUsage) => {
            seen.kv_cache_usage.ok_or_else(|| unreported("kv_cache_usage"))?
        }
        Reported::Signal(Metric::GpuUtilization) => seen
            .gpu_utilization
            .ok_or_else(|| unreported("gpu_utilization"))?,
        // `load`; the trigger refuses `arrival_rate` in signal mode.
        Reported::Signal(Metric::Load | Metric::ArrivalRate) => waiting + running + held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::SignalKind;

    fn decision(desired: u32, rule: Rule) -> Decision {
        Decision {
            desired,
            recommended: desired,
            active: desired > 0,
            policy: "queue",
            rule,
        }
    }

    fn demand(waiting: f64, running: f64, held: f64) -> Demand {
        Demand {
            waiting,
            running,
            held,
        }
    }

    #[test]
    fn held_requests_wake_whatever_else_is_known() {
        let none = || Err(NotKnown::NoDecision);
        assert_eq!(activity(none(), 0, demand(0.0, 0.0, 1.0), 0.0), Ok(true));
        assert_eq!(
            activity(none(), 0, demand(0.0, 0.0, 1.0), 1.0),
            Err(NotKnown::NoDecision)
        );
        let hold = decision(0, Rule::SignalStale(SignalKind::Waiting));
        assert_eq!(activity(Ok(&hold), 0, demand(0.0, 0.0, 3.0), 2.0), Ok(true));
    }

    #[test]
    fn a_safety_hold_is_not_an_answer() {
        let hold = decision(3, Rule::SignalMissing(SignalKind::Waiting));
        assert_eq!(
            activity(Ok(&hold), 3, demand(5.0, 1.0, 0.0), 0.0),
            Err(NotKnown::Hold(Rule::SignalMissing(SignalKind::Waiting)))
        );
    }

    #[test]
    fn at_zero_only_demand_wakes() {
        let min_one = decision(1, Rule::QueueTarget);
        assert_eq!(activity(Ok(&min_one), 0, demand(0.0, 0.0, 0.0), 0.0), Ok(false));
        assert_eq!(activity(Ok(&min_one), 0, demand(1.0, 0.0, 0.0), 0.0), Ok(true));
        assert_eq!(activity(Ok(&min_one), 0, demand(1.0, 0.0, 0.0), 1.0), Ok(false));
        // A predicted request is the one exception: pre-warming must get through KEDA.
        assert_eq!(
            activity(Ok(&decision(1, Rule::Prewarm)), 0, demand(0.0, 0.0, 0.0), 0.0),
            Ok(true)
        );
    }

    #[test]
    fn awake_it_stays_awake_while_anything_runs_or_is_wanted() {
        let zero = decision(0, Rule::QueueTarget);
        assert_eq!(activity(Ok(&zero), 2, demand(0.0, 0.0, 0.0), 0.0), Ok(false));
        assert_eq!(activity(Ok(&zero), 2, demand(0.0, 1.0, 0.0), 5.0), Ok(true));
        assert_eq!(
            activity(Ok(&decision(1, Rule::QueueTarget)), 2, demand(0.0, 0.0, 0.0), 5.0),
            Ok(true)
        );
    }

    #[test]
    fn the_reported_value_is_a_number_only_when_it_is_known() {
        let seen = Measured {
            demand: demand(3.0, 2.0, 1.0),
            kv_cache_usage: None,
            gpu_utilization: Some(0.5),
        };
        let d = decision(4, Rule::QueueTarget);
        assert_eq!(value(Ok(&d), Reported::Replicas, &seen), Ok(4.0));
        assert_eq!(value(Ok(&d), Reported::Signal(Metric::Load), &seen), Ok(6.0));
        assert_eq!(value(Ok(&d), Reported::Signal(Metric::Waiting), &seen), Ok(4.0));
        assert_eq!(value(Ok(&d), Reported::Signal(Metric::Running), &seen), Ok(2.0));
        assert_eq!(
            value(Ok(&d), Reported::Signal(Metric::GpuUtilization), &seen),
            Ok(0.5)
        );
        // An unreported KV-cache reading is unknown, not an idle cache.
        let kv = value(Ok(&d), Reported::Signal(Metric::KvCacheUsage), &seen);
        assert!(
            matches!(&kv, Err(NotKnown::Unobserved(why)) if why.contains("kv_cache_usage")),
            "{kv:?}"
        );
        let hold = decision(4, Rule::SignalStale(SignalKind::Waiting));
        assert_eq!(
            value(Ok(&hold), Reported::Replicas, &seen),
            Err(NotKnown::Hold(Rule::SignalStale(SignalKind::Waiting)))
        );
        assert_eq!(
            value(Err(NotKnown::NoDecision), Reported::Replicas, &seen),
            Err(NotKnown::NoDecision)
        );
    }
}
