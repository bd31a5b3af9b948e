//! gpuscale-policies: the scaling math shared by the gpuscale scaler and simulator.
//!
//! It owns the signals model ([`Signals`]), the policies ([`tokens`], also `default`, with the
//! step-cost fit it learns capacities from, [`stepcost`]; [`hpa`],
//! [`kpa`], [`queue`], [`slo`], [`gpu`], [`fixed`]), scale-to-zero keep-alive ([`keepalive`]) and the rules that keep users
//! safe, all composed by [`Autoscaler`]. Nothing here does I/O or reads a clock: time is passed
//! in as a [`Duration`] since an arbitrary epoch, so the scaler (wall clock) and the simulator
//! (virtual clock) run the same code, and tests can step time by hand.
//!
//! The pipeline of one [`Autoscaler::decide`]:
//! 1. every policy records the observation (windows, histograms);
//! 2. each policy whose signals are present and fresh recommends a count; the largest wins;
//! 3. **safety**: if no policy could decide, or one could not and the rest would scale down,
//!    the current count is held, with the missing or stale signal as the reason;
//! 4. **keep-alive**: zero only with a fresh demand reading of zero and an expired keep-alive;
//!    a learned idle pattern may pre-warm one replica;
//! 5. **starting capacity**: no further scale-up while replicas are still starting;
//! 6. **bounds**: `[min, max]`.
//!
//! Every [`Decision`] names the policy and the [`Rule`] that decided it.
//!
//! What KEDA is told of a decision (awake or not, or not known) is [`answer::activity`], used by
//! the scaler to answer and by the simulator to model KEDA.

use std::time::Duration;

pub mod answer;
pub mod decision;
pub mod erlang;
pub mod fixed;
pub mod gpu;
pub mod hpa;
pub mod keepalive;
pub mod kpa;
pub mod queue;
pub mod signals;
pub mod slo;
pub mod spec;
pub mod stepcost;
pub mod tokens;

mod band;
mod window;

pub use decision::{Bounds, Decision, Recommendation, Rule};
pub use keepalive::{AdaptiveConfig, KeepAlive, KeepAliveConfig};
pub use signals::{Metric, PodPhase, PodSignals, Reading, SignalFault, SignalKind, Signals};
pub use spec::{SpecError, build};

/// What every policy call gets besides the signals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Context {
    /// Time since an arbitrary epoch; only differences matter.
    pub now: Duration,
    /// Replica bounds (HPA and KPA apply them inside their own rules, as upstream does).
    pub bounds: Bounds,
    /// Signals older than this are stale.
    pub max_signal_age: Duration,
    /// The autoscaler holds scale-ups while replicas are starting ([`Safety`]), so a policy's
    /// window does not remember a recommendation it will not let take effect.
    pub hold_while_starting: bool,
}

/// A scaling policy for one workload. Implementations keep their own history (windows,
/// stabilization) and must be deterministic: the same calls give the same answers.
pub trait Policy: Send {
    /// Short stable name (`hpa`, `kpa`, `queue`, `slo`, `gpu`, `fixed`).
    fn name(&self) -> &'static str;

    /// The signals the policy cannot decide without; if any is missing or stale the
    /// autoscaler does not call [`Policy::recommend`] and holds instead.
    fn needs(&self) -> &[SignalKind];

    /// Record an observation. Called before every [`Policy::recommend`], and may be called
    /// more often than it (the simulator observes each second, decides each tick).
    fn observe(&mut self, _ctx: &Context, _signals: &Signals) {}

    /// The replica count this policy asks for.
    fn recommend(&mut self, ctx: &Context, signals: &Signals) -> Recommendation;

    /// What the policy has learned (or assumes until it learns), for an operator to read and,
    /// once it has settled, to set.
    fn learned(&self) -> Vec<Learned> {
        Vec::new()
    }

    /// How often the system this policy reproduces decides (HPA's 15 s sync, KPA's 2 s tick),
    /// for a caller that runs it as upstream would; `None`: as often as it is asked.
    fn period(&self) -> Option<Duration> {
        None
    }
}

/// One value a policy learned online, named by the trigger key that would set it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Learned {
    /// The trigger key (`tokens.slots`).
    pub key: &'static str,
    /// Its value, in the key's units.
    pub value: f64,
    /// Where it comes from: `set` (the trigger), `fitted` (step costs of busy replicas),
    /// `saturated` (replicas under a sustained backlog), `ratio` (the other capacity over
    /// `prefillDecodeRatio`) or `assumed` (nothing learned yet).
    pub from: &'static str,
}

/// Safety settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Safety {
    /// Signals older than this are stale (default 30 s).
    pub max_signal_age: Duration,
    /// No scale-up while replicas are starting (default true). Set false to replay HPA or KPA
    /// exactly as upstream, cascades included.
    pub hold_while_starting: bool,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            max_signal_age: Duration::from_secs(30),
            hold_while_starting: true,
        }
    }
}

/// One workload's autoscaler: policies composed by max, then safety, keep-alive and bounds.
pub struct Autoscaler {
    policies: Vec<Box<dyn Policy>>,
    bounds: Bounds,
    safety: Safety,
    demand: Metric,
    keepalive: KeepAlive,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler")
            .field("policies", &self.policy_names())
            .field("bounds", &self.bounds)
            .field("safety", &self.safety)
            .field("demand", &self.demand)
            .finish_non_exhaustive()
    }
}

impl Autoscaler {
    /// An autoscaler over `policies` (at least one), with default safety, `load` as the demand
    /// signal for keep-alive, and the given bounds and keep-alive.
    pub fn new(policies: Vec<Box<dyn Policy>>, bounds: Bounds, keepalive: KeepAliveConfig) -> Self {
        Autoscaler {
            policies,
            bounds,
            safety: Safety::default(),
            demand: Metric::Load,
            keepalive: KeepAlive::new(keepalive),
        }
    }

    /// Replace the safety settings.
    pub fn with_safety(mut self, safety: Safety) -> Self {
        self.safety = safety;
        self
    }

    /// The metric whose zero means "idle" for keep-alive (default `load`).
    pub fn with_demand(mut self, demand: Metric) -> Self {
        self.demand = demand;
        self
    }

    /// The composed policies' names, in order.
    pub fn policy_names(&self) -> Vec<&'static str> {
        self.policies.iter().map(|p| p.name()).collect()
    }

    /// What every policy has learned, in order.
    pub fn learned(&self) -> Vec<Learned> {
        self.policies.iter().flat_map(|p| p.learned()).collect()
    }

    /// The bounds.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The safety settings.
    pub fn safety(&self) -> Safety {
        self.safety
    }

    /// The decision period upstream would use: the policies' common [`Policy::period`] when
    /// every policy has one and they agree (a lone `hpa` or `kpa` baseline), else `None`.
    pub fn period(&self) -> Option<Duration> {
        let mut periods = self.policies.iter().map(|p| p.period());
        let first = periods.next().flatten()?;
        periods.all(|p| p == Some(first)).then_some(first)
    }

    /// Record an observation without deciding (for callers that sample more often).
    pub fn observe(&mut self, now: Duration, signals: &Signals) {
        let ctx = self.context(now);
        let demand = signals.metric(self.demand, ctx.max_signal_age).ok();
        self.keepalive.observe(now, demand);
        for p in &mut self.policies {
            p.observe(&ctx, signals);
        }
    }

    fn context(&self, now: Duration) -> Context {
        Context {
            now,
            bounds: self.bounds,
            max_signal_age: self.safety.max_signal_age,
            hold_while_starting: self.safety.hold_while_starting,
        }
    }

    /// Decide the replica count at `now`.
    pub fn decide(&mut self, now: Duration, signals: &Signals) -> Decision {
        self.observe(now, signals);
        let ctx = self.context(now);
        let current = signals.current;

        let mut best: Option<(Recommendation, &'static str)> = None;
        // The first signal fault and the policy it kept from deciding.
        let mut fault: Option<(Rule, &'static str)> = None;
        'policies: for p in &mut self.policies {
            for &kind in p.needs() {
                if let Err(f) = signals.fresh(kind, ctx.max_signal_age) {
                    fault = fault.or(Some((f.into(), p.name())));
                    continue 'policies;
                }
            }
            let r = p.recommend(&ctx, signals);
            if r.rule.is_safety_hold() {
                fault = fault.or(Some((r.rule, p.name())));
            }
            if best.is_none_or(|(b, _)| r.replicas > b.replicas) {
                best = Some((r, p.name()));
            }
        }

        let (recommended, policy, mut rule) = match (best, fault) {
            (Some((r, name)), None) => (r.replicas, name, r.rule),
            (Some((r, name)), Some(_)) if r.replicas >= current => (r.replicas, name, r.rule),
            // Safety: never scale down (or to zero) on a partial or stale view.
            (_, Some((f, name))) => (current, name, f),
            // Unreachable with at least one policy; holding is the safe answer regardless.
            (None, None) => (current, "none", Rule::SignalMissing(self.demand.signals()[0])),
        };
        let mut desired = recommended;

        if desired == 0 && !rule.is_safety_hold() {
            (desired, rule) = match signals.metric(self.demand, ctx.max_signal_age) {
                Err(_) => (current.min(1), Rule::DemandUnknown),
                Ok(d) if d > 0.0 => (1, Rule::DemandPresent),
                Ok(_) => self.keepalive.gate(now, current),
            };
        }
        if self.safety.hold_while_starting && signals.starting > 0 && desired > current {
            (desired, rule) = (current, Rule::StartingCapacity);
        }
        let bounded = self.bounds.clamp(desired);
        if bounded > desired {
            rule = Rule::MinBound;
        } else if bounded < desired {
            rule = Rule::MaxBound;
        }
        Decision {
            desired: bounded,
            recommended,
            active: bounded > 0,
            policy,
            rule,
        }
    }
}
