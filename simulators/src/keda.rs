//! KEDA driving an HPA on gpuscale's number (`replicas` mode), as a pure model the engine steps
//! once a second: IsActive every `pollingInterval` (answered by the scaler's own rule,
//! `gpuscale_policies::answer::activity`), activation 0 -> 1 and back to 0 after `cooldownPeriod`
//! inactive, and the HPA's own algorithm (tolerance, and the behavior the ScaledObject sets:
//! deploy/'s pass-through or the API server's default) on GetMetrics every sync.

use std::time::Duration;

use gpuscale_policies::answer::{Demand, Measured, Reported, activity, value};
use gpuscale_policies::hpa::{
    Behavior, Hpa, HpaConfig, HpaMetric, HpaTarget, ScalingPolicy, ScalingPolicyKind, ScalingRules,
};
use gpuscale_policies::{Bounds, Context, Decision, Metric, Signals};

/// KEDA's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KedaConfig {
    /// `pollingInterval`, seconds (30).
    pub polling: u64,
    /// The HPA's sync period, seconds (15).
    pub hpa_sync: u64,
    /// `cooldownPeriod`, seconds (KEDA's default 300; deploy/ sets 30).
    pub cooldown: u64,
    /// The behavior the ScaledObject gives its HPA.
    pub behavior: HpaBehavior,
}

/// `advanced.horizontalPodAutoscalerConfig.behavior` of the modelled ScaledObject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpaBehavior {
    /// What deploy/'s examples and `gpuscale-sim recommend` write: no stabilization either way
    /// (gpuscale's policies have their own windows, and HPA's would add to them), scale-up by
    /// the larger of 1,000 % or 16 pods and scale-down by 100 % per 15 s, so the HPA passes
    /// gpuscale's count through within one sync.
    Passthrough,
    /// The API server's default (a ScaledObject without `advanced`): scale-up by the larger of
    /// 4 pods or 100 % per 15 s, scale-down only after 300 s of stabilization.
    Default,
}

impl HpaBehavior {
    fn behavior(self) -> Behavior {
        let per_15s = |kind, value| ScalingPolicy {
            kind,
            value,
            period: Duration::from_secs(15),
        };
        match self {
            HpaBehavior::Default => Behavior::default(),
            HpaBehavior::Passthrough => Behavior {
                scale_up: ScalingRules {
                    stabilization_window: Duration::ZERO,
                    policies: vec![
                        per_15s(ScalingPolicyKind::Percent, 1000),
                        per_15s(ScalingPolicyKind::Pods, 16),
                    ],
                    ..ScalingRules::default_scale_up()
                },
                scale_down: ScalingRules {
                    stabilization_window: Duration::ZERO,
                    policies: vec![per_15s(ScalingPolicyKind::Percent, 100)],
                    ..ScalingRules::default_scale_down()
                },
            },
        }
    }
}

/// KEDA's state for one ScaledObject.
pub struct Keda {
    config: KedaConfig,
    hpa: Hpa,
    last_active: Option<u64>,
}

/// What KEDA sets in one second, in order (activation or deactivation, then the HPA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// IsActive's effect: 1 on activation from zero, 0 after the cooldown.
    pub activation: Option<u32>,
    /// The HPA's replica count on its sync.
    pub hpa: Option<u32>,
}

impl Keda {
    /// A ScaledObject created at t = 0.
    pub fn new(config: KedaConfig) -> Self {
        Keda {
            config,
            hpa: Hpa::new(HpaConfig {
                metrics: vec![HpaMetric {
                    metric: Metric::Load,
                    target: HpaTarget::AverageValue(1.0),
                }],
                behavior: Some(config.behavior.behavior()),
                ..HpaConfig::default()
            }),
            last_active: None,
        }
    }

    /// Whether KEDA reads the scaler in second `sec` with `current` replicas (so whether the
    /// scaler must have decided).
    pub fn reads(&self, sec: u64, current: u32) -> bool {
        self.polls(sec) || (self.syncs(sec) && current > 0)
    }

    fn polls(&self, sec: u64) -> bool {
        sec.is_multiple_of(self.config.polling.max(1))
    }

    fn syncs(&self, sec: u64) -> bool {
        sec.is_multiple_of(self.config.hpa_sync.max(1))
    }

    /// Second `sec`: the scaler's decision `d`, the replica count `current`, the demand the
    /// scaler sees, and the signals and limits the HPA reads. `current` after activation is
    /// what the HPA syncs from.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        sec: u64,
        now: Duration,
        d: &Decision,
        current: u32,
        demand: Demand,
        signals: &Signals,
        bounds: Bounds,
        max_signal_age: Duration,
    ) -> Actions {
        let mut out = Actions::default();
        let mut current = current;
        if self.polls(sec) {
            match activity(Ok(d), current, demand, 0.0) {
                Ok(true) => {
                    self.last_active = Some(sec);
                    if current == 0 {
                        // Activation: 0 -> max(minReplicaCount, 1).
                        out.activation = Some(1);
                        current = 1;
                    }
                }
                // Before any activity KEDA counts the cooldown from the ScaledObject's creation
                // (t = 0 here), not from nothing.
                Ok(false)
                    if current > 0
                        && sec.saturating_sub(self.last_active.unwrap_or(0)) >= self.config.cooldown =>
                {
                    out.activation = Some(0);
                    current = 0;
                }
                // Not known (a safety hold): KEDA hears an error and changes nothing.
                Ok(false) | Err(_) => {}
            }
        }
        if self.syncs(sec) && current > 0 {
            let ctx = Context {
                now,
                bounds: Bounds {
                    min: bounds.min.max(1),
                    max: bounds.max,
                },
                max_signal_age,
                // The HPA has no such hold; its own behavior limits the rate.
                hold_while_starting: false,
            };
            // GetMetrics reports what the scaler publishes; an error (a safety hold) leaves the
            // HPA where it is, as a failed external-metric fetch does.
            if let Ok(v) = value(Ok(d), Reported::Replicas, &Measured::default()) {
                let mut s = signals.clone();
                s.current = current;
                out.hpa = Some(self.hpa.recommend_value(&ctx, &s, v).replicas);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gpuscale_policies::decision::Rule;
    use gpuscale_policies::signals::SignalKind;

    fn decision(desired: u32, rule: Rule) -> Decision {
        Decision {
            desired,
            recommended: desired,
            active: desired > 0,
            policy: "queue",
            rule,
        }
    }

    fn keda() -> Keda {
        Keda::new(KedaConfig {
            polling: 30,
            hpa_sync: 15,
            cooldown: 300,
            behavior: HpaBehavior::Default,
        })
    }

    fn step(k: &mut Keda, sec: u64, d: &Decision, current: u32, held: f64) -> Actions {
        let demand = Demand {
            held,
            ..Demand::default()
        };
        let bounds = Bounds { min: 0, max: 10 };
        k.step(
            sec,
            Duration::from_secs(sec),
            d,
            current,
            demand,
            &Signals::default(),
            bounds,
            Duration::from_secs(30),
        )
    }

    #[test]
    fn held_demand_activates_at_the_poll_and_the_hpa_syncs_from_one() {
        let mut k = keda();
        let asleep = decision(0, Rule::Asleep);
        assert_eq!(
            step(&mut k, 29, &asleep, 0, 3.0),
            Actions::default(),
            "between polls"
        );
        let a = step(&mut k, 30, &decision(2, Rule::QueueTarget), 0, 3.0);
        assert_eq!(a.activation, Some(1));
        // 30 is also a sync: the HPA moves 1 toward the desired 2 in the same second.
        assert_eq!(a.hpa, Some(2));
    }

    #[test]
    fn cooldown_counts_from_creation_and_a_hold_changes_nothing() {
        let mut k = keda();
        let idle = decision(0, Rule::KeepAliveExpired);
        assert_eq!(
            step(&mut k, 270, &idle, 1, 0.0).activation,
            None,
            "270 s < cooldown"
        );
        assert_eq!(step(&mut k, 300, &idle, 1, 0.0).activation, Some(0));
        let hold = decision(1, Rule::SignalStale(SignalKind::Waiting));
        let mut k = keda();
        assert_eq!(
            step(&mut k, 600, &hold, 1, 0.0),
            Actions::default(),
            "unknown is not inactive, and GetMetrics' error leaves the HPA where it is"
        );
    }

    #[test]
    fn the_shipped_behavior_passes_the_count_through_and_the_default_holds_it() {
        let run = |behavior| {
            let mut k = Keda::new(KedaConfig {
                behavior,
                ..keda().config
            });
            let mut current = 1;
            let mut counts = Vec::new();
            // Up to 8 at t = 15, then the scaler asks for 1 from t = 30 on.
            for sec in (15..=360).step_by(15) {
                let d = decision(if sec == 15 { 8 } else { 1 }, Rule::QueueTarget);
                if let Some(n) = step(&mut k, sec, &d, current, 0.0).hpa {
                    current = n;
                }
                counts.push((sec, current));
            }
            counts
        };
        let through = run(HpaBehavior::Passthrough);
        assert_eq!(through[0], (15, 8), "1 -> 8 in one sync");
        assert_eq!(
            through[1],
            (30, 1),
            "and back at the next: gpuscale's own window decided"
        );
        let default = run(HpaBehavior::Default);
        assert_eq!(default[0], (15, 5), "4 pods or 100 % per 15 s: 1 -> 5");
        assert_eq!(
            default[1],
            (30, 5),
            "stabilization holds 5, never raises it to the old 8"
        );
        let low = default.iter().find(|&&(_, n)| n == 1).map(|&(t, _)| t);
        assert_eq!(low, Some(315), "300 s of stabilization after the 8 at t = 15");
    }
}
