//! KPA reference cases, worked by hand from knative/serving pkg/autoscaler/scaling/autoscaler.go,
//! aggregation/bucketing.go and reconciler/autoscaling/kpa/scaler.go. The defaults: target
//! 100 * 0.7 = 70 concurrent per pod, stable window 60 s, panic window 6 s, threshold 2.0.

mod common;

use common::{ctx, load};
use gpuscale_policies::kpa::{Kpa, KpaConfig};
use gpuscale_policies::{Policy, Recommendation, Rule, Signals};

/// Observe then decide at second `t`, as the autoscaler does each tick.
fn tick(k: &mut Kpa, t: u64, sig: &Signals) -> Recommendation {
    let c = ctx(t, 0, 1000);
    k.observe(&c, sig);
    k.recommend(&c, sig)
}

#[test]
fn steady_load_gives_ceil_of_stable_over_target() {
    // 2 ready pods, 140 concurrent: dspc = ceil(140 / 70) = 2, dppc = 2, 2 / 2 = 1 < 2.
    // A decider created with 2 ready pods starts in panic (panicTime = 0) and leaves it at the
    // first tick with panicTime + 60 s < now, t = 61; the answer is 2 throughout.
    let mut k = Kpa::new(KpaConfig::default());
    let sig = load(2, 2, 140.0);
    for t in 0..=60 {
        assert_eq!(tick(&mut k, t, &sig).replicas, 2);
        assert!(k.in_panic());
    }
    let r = tick(&mut k, 61, &sig);
    assert_eq!((r.replicas, r.rule), (2, Rule::KpaStable));
    assert!(!k.in_panic());
}

#[test]
fn new_decider_starts_in_panic_and_holds_the_scale() {
    // A decider created while 5 pods are ready starts in panic with maxPanicPods = 5, so a low
    // reading right after a restart does not scale down: desired = max(..., 5) = 5.
    let mut k = Kpa::new(KpaConfig::default());
    let r = tick(&mut k, 0, &load(5, 5, 10.0));
    assert_eq!((r.replicas, r.rule), (5, Rule::KpaPanic));
    // It leaves panic once panicTime + 60 s < now with no new trigger: at t = 61.
    for t in 1..=60 {
        assert_eq!(tick(&mut k, t, &load(5, 5, 10.0)).replicas, 5, "t={t}");
    }
    // t=61: stable average 10 -> dspc 1, but maxScaleDown = floor(5 / 2) = 2.
    let r = tick(&mut k, 61, &load(5, 5, 10.0));
    assert_eq!((r.replicas, r.rule), (2, Rule::KpaStable));
}

#[test]
fn burst_enters_panic_never_scales_down_inside_and_exits_after_a_calm_window() {
    let mut k = Kpa::new(KpaConfig::default());
    // 60 s at 140 with 2 pods. The first tick has 1 pod at 70 (dppc 1, 1/1 < 2), so the decider
    // neither starts in panic nor enters it.
    tick(&mut k, 0, &load(1, 1, 70.0));
    for t in 1..60 {
        tick(&mut k, t, &load(2, 2, 140.0));
    }
    // Burst of 420 for 6 s (t = 60..65). At t = 65 the panic window (60..65) averages 420:
    // dppc = ceil(420 / 70) = 6, 6 / 2 = 3 >= 2 -> panic. The stable window (6..65) holds
    // 54 s at 140 and 6 s at 420: (7560 + 2520) / 60 = 168 -> dspc = ceil(2.4) = 3.
    // In panic desired = max(3, 6) = 6. (Panic started earlier: at t = 60 the panic window is
    // (140 * 5 + 420) / 6 = 186.67 -> dppc 3, 3 / 2 = 1.5, not yet; at t = 61 (140*4 + 840)/6 =
    // 233.3 -> dppc 4, 4 / 2 = 2 >= 2 -> panic, desired 4.)
    let mut r = None;
    for t in 60..66 {
        r = Some(tick(&mut k, t, &load(2, 2, 420.0)));
        if t == 60 {
            assert!(!k.in_panic());
        }
        if t == 61 {
            assert!(k.in_panic());
            assert_eq!(r.map(|r| r.replicas), Some(4));
        }
    }
    assert_eq!(r.map(|r| (r.replicas, r.rule)), Some((6, Rule::KpaPanic)));
    // The load falls back to 70 with 6 ready pods: dppc = 1, 1/6 < 2, but in panic the count
    // never goes down: it stays 6 until panicTime (t = 65, the last tick over threshold) + 60 s
    // < now, i.e. the first tick at t = 126.
    for t in 66..=125 {
        let r = tick(&mut k, t, &load(6, 6, 70.0));
        assert_eq!((r.replicas, r.rule), (6, Rule::KpaPanic), "t={t}");
    }
    // t = 126: out of panic. The stable window (67..126) is all 70 -> dspc 1, maxScaleDown =
    // floor(6 / 2) = 3 -> 3.
    let r = tick(&mut k, 126, &load(6, 6, 70.0));
    assert_eq!((r.replicas, r.rule), (3, Rule::KpaStable));
    assert!(!k.in_panic());
}

#[test]
fn time_to_zero_is_stable_window_plus_grace() {
    // 1 pod at 70 concurrent for t = 0..59, then 0. The stable average stays > 0 while any of
    // seconds 0..59 is in the window (t - 59 <= 59, t <= 118), so dspc = 0 first at t = 119.
    // The revision has been active since t = 0 (>= 60 s), so at 119 it is marked inactive and 1
    // replica stays; scale-to-zero-grace 30 s later, at t = 149, the answer is 0.
    let mut k = Kpa::new(KpaConfig::default());
    for t in 0..60 {
        assert_eq!(tick(&mut k, t, &load(1, 1, 70.0)).replicas, 1);
    }
    for t in 60..149 {
        let r = tick(&mut k, t, &load(1, 1, 0.0));
        assert_eq!(r.replicas, 1, "t={t}");
        if t >= 119 {
            assert_eq!(r.rule, Rule::KpaScaleToZeroGrace, "t={t}");
        }
    }
    let r = tick(&mut k, 149, &load(1, 1, 0.0));
    assert_eq!(r.replicas, 0);
}

#[test]
fn no_data_means_no_scaling() {
    // Nothing recorded (stale signal): the decider returns an invalid scale; we hold current.
    let mut k = Kpa::new(KpaConfig::default());
    let mut sig = load(3, 3, 50.0);
    sig.running = None;
    let r = tick(&mut k, 0, &sig);
    assert_eq!((r.replicas, r.rule), (3, Rule::KpaNoData));
}

#[test]
fn activation_scale_and_scale_down_delay() {
    // activation-scale 3: any non-zero demand asks at least 3 pods.
    let mut k = Kpa::new(KpaConfig {
        activation_scale: 3,
        ..KpaConfig::default()
    });
    assert_eq!(tick(&mut k, 0, &load(1, 1, 1.0)).replicas, 3);

    // scale-down-delay 10 s = 5 slots of 2 s, stable window 6 s (panic window round(0.6) -> 1 s).
    // 4 pods at 280 for t = 0..59 (dspc 4; the decider starts in panic, harmless here, and
    // leaves it at t = 61), then 0. Stable averages: t=60 (5*280)/6 = 233 -> 4; t=61 186.7 -> 3;
    // t=62 140 -> 2; later below 2 but maxScaleDown = floor(4/2) = 2. The delay window holds
    // the 4 recorded at t = 60 (slot 30) until slot 35 is recorded at t = 70.
    let mut k = Kpa::new(KpaConfig {
        scale_down_delay: common::s(10),
        stable_window: common::s(6),
        ..KpaConfig::default()
    });
    for t in 0..60 {
        tick(&mut k, t, &load(4, 4, 280.0));
    }
    assert_eq!(tick(&mut k, 60, &load(4, 4, 0.0)).replicas, 4);
    for t in 61..70 {
        let r = tick(&mut k, t, &load(4, 4, 0.0));
        assert_eq!((r.replicas, r.rule), (4, Rule::KpaScaleDownDelay), "t={t}");
    }
    let r = tick(&mut k, 70, &load(4, 4, 0.0));
    assert_eq!((r.replicas, r.rule), (2, Rule::KpaStable));
}
