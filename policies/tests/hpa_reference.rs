//! HPA reference cases, worked by hand from kubernetes/pkg/controller/podautoscaler
//! (replica_calculator.go, horizontal.go); each derivation is in the comment above it.

mod common;

use common::{ctx, load, s};
use gpuscale_policies::hpa::{
    Behavior, Hpa, HpaConfig, HpaMetric, HpaTarget, ScalingPolicy, ScalingPolicyKind, SelectPolicy,
};
use gpuscale_policies::{Metric, PodPhase, PodSignals, Policy, Reading, Rule, Signals};

fn external(target: f64) -> Hpa {
    Hpa::new(HpaConfig {
        metrics: vec![HpaMetric {
            metric: Metric::Load,
            target: HpaTarget::AverageValue(target),
        }],
        ..HpaConfig::default()
    })
}

fn pods_metric(target: f64) -> Hpa {
    Hpa::new(HpaConfig {
        metrics: vec![HpaMetric {
            metric: Metric::Running,
            target: HpaTarget::PodAverage(target),
        }],
        ..HpaConfig::default()
    })
}

fn pod(phase: PodPhase, running: Option<f64>) -> PodSignals {
    PodSignals {
        phase,
        waiting: Some(0.0),
        running,
        kv_cache_usage: None,
        gpu_utilization: None,
    }
}

#[test]
fn external_average_value_scales_up_and_is_rate_limited() {
    // 3 replicas, 30 in flight, target 4/replica: ratio = 30 / (4 * 3) = 2.5, outside 0.9..1.1,
    // so the metric asks ceil(30 / 4) = 8. Default scaleUp policies over 15 s: Pods 4 gives
    // 3 + 4 = 7, Percent 100 gives ceil(3 * 2) = 6; selectPolicy Max takes 7.
    let mut h = external(4.0);
    let r = h.recommend(&ctx(0, 1, 100), &load(3, 3, 30.0));
    assert_eq!((r.replicas, r.rule), (7, Rule::HpaScaleUpLimit));

    // 10 s later, at 7 replicas, it still wants more: the 4 pods added 10 s ago are inside both
    // 15 s periods, so the period started at 7 - 4 = 3 and the limit is still 7.
    let r = h.recommend(&ctx(10, 1, 100), &load(7, 7, 80.0));
    assert_eq!((r.replicas, r.rule), (7, Rule::HpaScaleUpLimit));

    // At t = 15 s the event is no longer After(now - 15 s): start = 7, Pods 11, Percent 14 -> 14.
    let r = h.recommend(&ctx(15, 1, 100), &load(7, 7, 80.0));
    assert_eq!((r.replicas, r.rule), (14, Rule::HpaScaleUpLimit));

    // At t = 30 s with 14 replicas and 80 in flight: ceil(80 / 4) = 20, limit 14 + 4 = 18 vs
    // ceil(14 * 2) = 28; Max gives 28, so 20 passes unlimited.
    let r = h.recommend(&ctx(30, 1, 100), &load(14, 14, 80.0));
    assert_eq!((r.replicas, r.rule), (20, Rule::HpaRatio));
}

#[test]
fn tolerance_band_edges_use_milli_quantities() {
    // 3 replicas, target 4: the band is 0.9 * 12 = 10.8 .. 1.1 * 12 = 13.2 in flight.
    // 13.2 -> 13200 milli, ratio exactly 1.1: inside (<=), keep the 3 status replicas.
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(3, 3, 13.2));
    assert_eq!((r.replicas, r.rule), (3, Rule::HpaWithinTolerance));
    // 13.2009 truncates to 13200 milli (KEDA's int64(v * 1000)): still inside.
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(3, 3, 13.2009));
    assert_eq!(r.replicas, 3);
    // 13.201 -> 13201 milli, ratio 1.00008 over: ceil(13201 / 4000) = 4.
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(3, 3, 13.201));
    assert_eq!((r.replicas, r.rule), (4, Rule::HpaRatio));
    // 10.8 is the lower edge: inside. 10.79 is out: ceil(10790 / 4000) = 3 -> same count, but
    // decided by the ratio rule, not the band.
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(3, 3, 10.8));
    assert_eq!((r.replicas, r.rule), (3, Rule::HpaWithinTolerance));
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(3, 3, 10.79));
    assert_eq!((r.replicas, r.rule), (3, Rule::HpaRatio));
}

#[test]
fn scale_down_waits_for_the_stabilization_window() {
    // t=0: 10 replicas, 40 in flight, ratio 1 -> recommendation 10 (recorded).
    // t=15: 8 in flight -> metric asks 2; the 300 s scale-down window still holds the 10 from
    // t=0, so stabilized = min(max(current 10, up 2), down 10) = 10.
    let mut h = external(4.0);
    assert_eq!(h.recommend(&ctx(0, 1, 100), &load(10, 10, 40.0)).replicas, 10);
    let r = h.recommend(&ctx(15, 1, 100), &load(10, 10, 8.0));
    assert_eq!((r.replicas, r.rule), (10, Rule::HpaStabilized));
    // t=300: the t=0 sample is not After(300 - 300 = 0), so the window holds only 2s -> 2.
    // Scale-down policy Percent 100 / 15 s allows floor(10 * 0) = 0, so 2 passes.
    let r = h.recommend(&ctx(300, 1, 100), &load(10, 10, 8.0));
    assert_eq!((r.replicas, r.rule), (2, Rule::HpaRatio));
}

#[test]
fn scale_down_policy_limits_the_step() {
    // Scale-down policy Pods 1 per 60 s, no stabilization: 10 -> wants 2 -> 9; 30 s later the
    // 1 pod removed is within the period: start = 9 + 1 = 10 -> limit 9, stays 9; at 60 s -> 8.
    let behavior = Behavior {
        scale_down: gpuscale_policies::hpa::ScalingRules {
            stabilization_window: s(0),
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                kind: ScalingPolicyKind::Pods,
                value: 1,
                period: s(60),
            }],
            tolerance: 0.1,
        },
        ..Behavior::default()
    };
    let mut h = Hpa::new(HpaConfig {
        metrics: vec![HpaMetric {
            metric: Metric::Load,
            target: HpaTarget::AverageValue(4.0),
        }],
        behavior: Some(behavior),
        ..HpaConfig::default()
    });
    let r = h.recommend(&ctx(0, 1, 100), &load(10, 10, 8.0));
    assert_eq!((r.replicas, r.rule), (9, Rule::HpaScaleDownLimit));
    let r = h.recommend(&ctx(30, 1, 100), &load(9, 9, 8.0));
    assert_eq!((r.replicas, r.rule), (9, Rule::HpaScaleDownLimit));
    let r = h.recommend(&ctx(60, 1, 100), &load(9, 9, 8.0));
    assert_eq!((r.replicas, r.rule), (8, Rule::HpaScaleDownLimit));
}

#[test]
fn select_policy_min_and_disabled() {
    // Min: from 10, Pods 4 -> 14, Percent 100 -> 20; the smallest change is 14.
    let mut b = Behavior::default();
    b.scale_up.select_policy = SelectPolicy::Min;
    let mut h = Hpa::new(HpaConfig {
        behavior: Some(b.clone()),
        ..HpaConfig::default()
    });
    assert_eq!(h.recommend(&ctx(0, 1, 100), &load(10, 10, 200.0)).replicas, 14);
    // Disabled: no scale-up at all.
    b.scale_up.select_policy = SelectPolicy::Disabled;
    let mut h = Hpa::new(HpaConfig {
        behavior: Some(b),
        ..HpaConfig::default()
    });
    assert_eq!(h.recommend(&ctx(0, 1, 100), &load(10, 10, 200.0)).replicas, 10);
}

#[test]
fn legacy_path_caps_scale_up_at_twice_or_four() {
    // No behavior: scale-up limit max(2 * 1, 4) = 4 for 1 replica wanting ceil(40/4) = 10.
    let mut h = Hpa::new(HpaConfig {
        behavior: None,
        ..HpaConfig::default()
    });
    let r = h.recommend(&ctx(0, 1, 100), &load(1, 1, 40.0));
    assert_eq!((r.replicas, r.rule), (4, Rule::HpaScaleUpLimit));
    // From 4: max(8, 4) = 8.
    assert_eq!(h.recommend(&ctx(15, 1, 100), &load(4, 4, 40.0)).replicas, 8);
    // Scale-down takes the max recommendation of the last 5 min (10 at t=15 is still there).
    let r = h.recommend(&ctx(30, 1, 100), &load(8, 8, 4.0));
    assert_eq!((r.replicas, r.rule), (10, Rule::HpaStabilized));
    // Legacy keeps a sample exactly at the cutoff (Before, not After): t=315 still sees t=15.
    let r = h.recommend(&ctx(315, 1, 100), &load(8, 8, 4.0));
    assert_eq!(r.replicas, 10);
    let r = h.recommend(&ctx(316, 1, 100), &load(8, 8, 4.0));
    assert_eq!(r.replicas, 1);
}

#[test]
fn pods_metric_unready_and_missing_pods_on_scale_up() {
    // 4 pods: two Running with 10 in flight each, one Running without a metric (missing), one
    // Pending (unready). Target 4: usage ratio over the pods with metrics = (10000 + 10000)/2
    // / 4000 = 2.5 > 1, so unready count: missing and unready pods count as 0:
    // (10000 + 10000 + 0 + 0) / 4 = 5000 -> 1.25, not within tolerance and not a flip:
    // ceil(1.25 * 4) = 5.
    let mut sig = load(4, 3, 20.0);
    sig.pods = vec![
        pod(PodPhase::Running, Some(10.0)),
        pod(PodPhase::Running, Some(10.0)),
        pod(PodPhase::Running, None),
        pod(PodPhase::Pending, None),
    ];
    let r = pods_metric(4.0).recommend(&ctx(0, 1, 100), &sig);
    assert_eq!((r.replicas, r.rule), (5, Rule::HpaRatio));
}

#[test]
fn pods_metric_missing_pods_count_as_target_on_scale_down() {
    // Values [1, 1] and one missing, target 4: ratio 1000/4000 = 0.25 < 1, so the missing pod
    // counts as using the target: (1000 + 1000 + 4000) / 3 = 2000 -> 0.5 -> ceil(0.5 * 3) = 2.
    let mut sig = load(3, 3, 2.0);
    sig.pods = vec![
        pod(PodPhase::Running, Some(1.0)),
        pod(PodPhase::Running, Some(1.0)),
        pod(PodPhase::Running, None),
    ];
    let r = pods_metric(4.0).recommend(&ctx(0, 1, 100), &sig);
    assert_eq!((r.replicas, r.rule), (2, Rule::HpaRatio));
}

#[test]
fn pods_metric_direction_flip_keeps_current() {
    // One pod at 5 (ratio 1.25, scale up) and three missing: as 0 on a scale-up,
    // 5000 / 4 = 1250 -> 0.3125 < 1: the direction flips, so keep the current 4.
    let mut sig = load(4, 4, 5.0);
    sig.pods = vec![
        pod(PodPhase::Running, Some(5.0)),
        pod(PodPhase::Running, None),
        pod(PodPhase::Running, None),
        pod(PodPhase::Running, None),
    ];
    let r = pods_metric(4.0).recommend(&ctx(0, 1, 100), &sig);
    assert_eq!((r.replicas, r.rule), (4, Rule::HpaDirectionFlip));
    // Terminating pods are ignored entirely; with no pod reporting there are no metrics.
    sig.pods = vec![
        pod(PodPhase::Terminating, Some(50.0)),
        pod(PodPhase::Pending, None),
    ];
    let r = pods_metric(4.0).recommend(&ctx(0, 1, 100), &sig);
    assert_eq!((r.replicas, r.rule), (4, Rule::HpaNoMetrics));
}

#[test]
fn guards_disabled_and_value_target_from_zero() {
    // spec.replicas = 0 with minReplicas 1: the HPA disables itself and proposes nothing.
    let r = external(4.0).recommend(&ctx(0, 1, 100), &load(0, 0, 9.0));
    assert_eq!((r.replicas, r.rule), (0, Rule::HpaDisabled));
    // minReplicas 0 (HPAScaleToZero): AverageValue from 0 status replicas: ratio is +inf,
    // outside the band -> ceil(9000 / 4000) = 3, then the Pods-4 limit from 0 allows 4.
    let r = external(4.0).recommend(&ctx(0, 0, 100), &load(0, 0, 9.0));
    assert_eq!(r.replicas, 3);
    // A Value target from zero replicas: ceil(ratio) = ceil(9 / 4) = 3.
    let mut h = Hpa::new(HpaConfig {
        metrics: vec![HpaMetric {
            metric: Metric::Load,
            target: HpaTarget::Value(4.0),
        }],
        ..HpaConfig::default()
    });
    assert_eq!(h.recommend(&ctx(0, 0, 100), &load(0, 0, 9.0)).replicas, 3);
    // Current above max: straight to max.
    let r = external(4.0).recommend(&ctx(0, 1, 5), &load(8, 8, 100.0));
    assert_eq!((r.replicas, r.rule), (5, Rule::MaxBound));
}

#[test]
fn invalid_metric_blocks_scale_down_but_not_scale_up() {
    // Two metrics: load (fresh) and KV cache (missing). Load asks 2 from 5: the HPA refuses to
    // scale down on a partial view and keeps 5. Load asking 10 scales up (limited to 9).
    let cfg = HpaConfig {
        metrics: vec![
            HpaMetric {
                metric: Metric::Load,
                target: HpaTarget::AverageValue(4.0),
            },
            HpaMetric {
                metric: Metric::KvCacheUsage,
                target: HpaTarget::AverageValue(0.8),
            },
        ],
        ..HpaConfig::default()
    };
    let mut h = Hpa::new(cfg.clone());
    let r = h.recommend(&ctx(0, 1, 100), &load(5, 5, 8.0));
    assert_eq!(
        (r.replicas, r.rule),
        (
            5,
            Rule::SignalMissing(gpuscale_policies::SignalKind::KvCacheUsage)
        )
    );
    let mut h = Hpa::new(cfg);
    assert_eq!(h.recommend(&ctx(0, 1, 100), &load(5, 5, 40.0)).replicas, 10);
    // A stale metric behaves like a missing one.
    let mut sig = load(5, 5, 8.0);
    sig.running = Some(Reading::aged(8.0, s(31)));
    let r = external(4.0).recommend(&ctx(0, 1, 100), &sig);
    assert_eq!(r.replicas, 5);
    assert!(r.rule.is_safety_hold());
    let _unused: Signals = sig;
}

#[test]
fn keda_replicas_mode_passes_the_value_through() {
    // KEDA's HPA with an AverageValue target of 1 on the number gpuscale returns: 3 status
    // replicas, value 7 -> ratio 7 / 3 = 2.33 -> ceil(7000 / 1000) = 7, within the Pods-4 limit
    // (3 + 4 = 7). Value 3 on 3 replicas is ratio 1: keep.
    let mut h = external(1.0);
    let r = h.recommend_value(&ctx(0, 1, 100), &load(3, 3, 0.0), 7.0);
    assert_eq!((r.replicas, r.rule), (7, Rule::HpaRatio));
    let r = h.recommend_value(&ctx(15, 1, 100), &load(7, 7, 0.0), 7.0);
    assert_eq!((r.replicas, r.rule), (7, Rule::HpaWithinTolerance));
}
