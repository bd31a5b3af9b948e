//! What KEDA is told about one workload after a decision: whether it should be awake
//! (`IsActive`), or that this is not known. The scaler publishes it and the simulator's KEDA
//! model acts on it, from this one function, so a replay shows what the scaler would have
//! made KEDA do, not what a simpler rule would.

use crate::decision::{Decision, Rule};

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
}
