//! The composed pipeline: composition, safety, keep-alive, starting capacity, bounds.

mod common;

use common::{load, s};
use gpuscale_policies::{Reading, Rule, SignalKind, build};

fn scaler(spec: &str, params: &[(&str, &str)]) -> gpuscale_policies::Autoscaler {
    match build(spec, params) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn stale_demand_holds_and_never_reaches_zero() {
    let mut a = scaler("queue", &[("keepAlive", "0s")]);
    // Fresh: 20 in flight at target 4 -> 5.
    let d = a.decide(s(0), &load(2, 2, 20.0));
    assert_eq!((d.desired, d.rule), (5, Rule::QueueTarget));
    // The same zero load, but 31 s old: hold the current 5, say which signal.
    let mut sig = load(5, 5, 0.0);
    sig.running = Some(Reading::aged(0.0, s(31)));
    let d = a.decide(s(60), &sig);
    assert_eq!((d.desired, d.rule), (5, Rule::SignalStale(SignalKind::Running)));
    assert!(d.active);
    // Missing entirely: hold too.
    sig.running = None;
    let d = a.decide(s(61), &sig);
    assert_eq!((d.desired, d.rule), (5, Rule::SignalMissing(SignalKind::Running)));
    // NaN is invalid, not zero.
    sig.running = Some(Reading::fresh(f64::NAN));
    assert_eq!(
        a.decide(s(62), &sig).rule,
        Rule::SignalInvalid(SignalKind::Running)
    );
}

#[test]
fn zero_needs_fresh_zero_demand_and_an_expired_keep_alive() {
    let mut a = scaler("queue", &[("keepAlive", "120s"), ("queue.scaleDownWindow", "0s")]);
    a.decide(s(0), &load(1, 1, 3.0));
    // Idle from t = 10: one replica stays for 120 s.
    let d = a.decide(s(10), &load(1, 1, 0.0));
    assert_eq!((d.desired, d.recommended, d.rule), (1, 0, Rule::KeepAliveWindow));
    assert_eq!(a.decide(s(129), &load(1, 1, 0.0)).desired, 1);
    let d = a.decide(s(130), &load(1, 1, 0.0));
    assert_eq!((d.desired, d.rule, d.active), (0, Rule::KeepAliveExpired, false));
    // At zero, a request wakes it: ceil(1 / 4) = 1.
    let d = a.decide(s(140), &load(0, 0, 1.0));
    assert_eq!((d.desired, d.rule), (1, Rule::QueueTarget));
}

#[test]
fn a_policy_asking_zero_under_load_keeps_one() {
    // gpu alone sees 0 utilization while requests are queued (e.g. a stuck model): not zero.
    let mut a = scaler("gpu", &[("keepAlive", "0s"), ("gpu.scaleDownWindow", "0s")]);
    let mut sig = load(3, 3, 5.0);
    sig.gpu_utilization = Some(Reading::fresh(0.0));
    let d = a.decide(s(0), &sig);
    assert_eq!((d.desired, d.rule), (1, Rule::DemandPresent));
    // Without any demand reading at all, zero is not allowed either.
    sig.running = None;
    let d = a.decide(s(1), &sig);
    assert_eq!((d.desired, d.rule), (1, Rule::DemandUnknown));
}

#[test]
fn starting_replicas_count_as_capacity() {
    let mut a = scaler("queue", &[]);
    // 1 ready + 3 starting (current 4), queue keeps growing while the model loads: no second
    // scale-up; the reason says why.
    let mut sig = load(4, 1, 60.0);
    sig.starting = 3;
    let d = a.decide(s(0), &sig);
    assert_eq!(
        (d.desired, d.recommended, d.rule),
        (4, 15, Rule::StartingCapacity)
    );
    // Once they are ready the policy decides again.
    let d = a.decide(s(5), &load(4, 4, 60.0));
    assert_eq!((d.desired, d.rule), (15, Rule::QueueTarget));
    // Turned off, as for an exact upstream replay, the cascade happens.
    let mut a = scaler("queue", &[("holdWhileStarting", "false")]);
    assert_eq!(a.decide(s(0), &sig).desired, 15);
}

#[test]
fn composition_takes_the_largest_and_names_it() {
    let mut a = scaler("queue+gpu+fixed:2", &[]);
    let mut sig = load(4, 4, 8.0); // queue: 8 / (4 * 4) = 0.5, outside the band: ceil(8/4) = 2
    sig.gpu_utilization = Some(Reading::fresh(1.4 * 0.7)); // gpu: ratio 1.4 -> ceil(5.6) = 6
    let d = a.decide(s(0), &sig);
    assert_eq!((d.desired, d.policy, d.rule), (6, "gpu", Rule::GpuTarget));
    // A stale GPU reading makes gpu sit out; queue then wants 2 < current 4: hold, not shrink.
    sig.gpu_utilization = Some(Reading::aged(0.1, s(60)));
    let d = a.decide(s(1), &sig);
    assert_eq!(
        (d.desired, d.rule),
        (4, Rule::SignalStale(SignalKind::GpuUtilization))
    );
    // ... but a scale-up on the fresh part goes through.
    sig.running = Some(Reading::fresh(80.0));
    let d = a.decide(s(2), &sig);
    assert_eq!((d.desired, d.policy), (20, "queue"));
}

#[test]
fn bounds_and_their_reasons() {
    let mut a = scaler("queue", &[("minReplicas", "2"), ("maxReplicas", "5")]);
    let d = a.decide(s(0), &load(3, 3, 100.0));
    assert_eq!((d.desired, d.recommended, d.rule), (5, 25, Rule::MaxBound));
    let mut a = scaler(
        "queue",
        &[
            ("minReplicas", "2"),
            ("keepAlive", "0s"),
            ("queue.scaleDownWindow", "0s"),
        ],
    );
    let d = a.decide(s(0), &load(3, 3, 0.0));
    assert_eq!((d.desired, d.rule), (2, Rule::MinBound));
}

#[test]
fn slo_uses_erlang_c_when_rates_are_known_and_queue_otherwise() {
    let mut a = scaler("slo", &[("slo.wait", "20s"), ("slo.quantile", "0.8")]);
    // The call-centre example: 10 Erlangs as lambda = 1/18 per s and S = 180 s: 14 replicas.
    let mut sig = load(10, 10, 10.0);
    sig.arrival_rate = Some(Reading::fresh(1.0 / 18.0));
    sig.service_time = Some(Reading::fresh(180.0));
    let d = a.decide(s(0), &sig);
    assert_eq!((d.desired, d.rule), (14, Rule::SloErlangC));
    // Rates unknown: the queue rule decides. 60 in flight on 14 replicas is 60 / 56 = 1.07 of
    // the target, inside the band: keep 14. 80 is 1.43: ceil(80 / 4) = 20.
    let d = a.decide(s(1), &load(14, 14, 60.0));
    assert_eq!((d.desired, d.rule), (14, Rule::SloFallbackQueue));
    let d = a.decide(s(2), &load(14, 14, 80.0));
    assert_eq!((d.desired, d.rule), (20, Rule::SloFallbackQueue));
}

#[test]
fn decisions_serialize_with_stable_codes() {
    let mut a = scaler("queue", &[]);
    let mut sig = load(2, 2, 0.0);
    sig.waiting = None;
    let d = a.decide(s(0), &sig);
    let json = serde_json::to_value(d).unwrap_or_default();
    assert_eq!(json["rule"]["code"], "safety.signal_missing");
    assert_eq!(json["rule"]["signal"], "waiting");
    assert_eq!(json["desired"], 2);
    assert_eq!(json["policy"], "queue");
}

#[test]
fn hpa_tolerance_applies_to_both_normalization_paths() {
    // 3 replicas, target 4, 14 in flight: ratio 14 / 12 = 1.167. Inside a 0.2 band (keep 3),
    // outside the default 0.1 band (ceil(14 / 4) = 4), with behavior and on the legacy path.
    for behavior in ["default", "legacy"] {
        let mut wide = scaler("hpa", &[("hpa.tolerance", "0.2"), ("hpa.behavior", behavior)]);
        assert_eq!(wide.decide(s(0), &load(3, 3, 14.0)).desired, 3, "{behavior}");
        let mut narrow = scaler("hpa", &[("hpa.behavior", behavior)]);
        assert_eq!(narrow.decide(s(0), &load(3, 3, 14.0)).desired, 4, "{behavior}");
    }
}
