//! Property tests: bounds, staleness, determinism, monotonicity.

mod common;

use std::time::Duration;

use gpuscale_policies::{Autoscaler, Reading, Signals, build};
use proptest::prelude::*;

const SPECS: &[&str] = &[
    "hpa",
    "kpa",
    "queue",
    "slo",
    "gpu",
    "fixed:3",
    "fixed:0",
    "queue+gpu",
    "slo+kpa",
    "hpa+queue",
    "gpu+fixed:0",
    "tokens",
    "default",
    "tokens+kpa",
];

fn autoscaler(spec: &str, min: u32, max: u32, keep_alive: &str) -> Autoscaler {
    let (min, max) = (min.to_string(), max.to_string());
    match build(
        spec,
        &[
            ("minReplicas", min.as_str()),
            ("maxReplicas", max.as_str()),
            ("keepAlive", keep_alive),
        ],
    ) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

#[derive(Clone, Debug)]
struct Step {
    dt: u64,
    current: u32,
    ready_frac: f64,
    waiting: Option<(f64, u64)>,
    running: Option<(f64, u64)>,
    gpu: Option<(f64, u64)>,
    rate: Option<(f64, u64)>,
    service: Option<(f64, u64)>,
}

fn reading() -> impl Strategy<Value = Option<(f64, u64)>> {
    prop_oneof![
        1 => Just(None),
        2 => Just(Some((0.0, 0))),
        6 => (0.0f64..200.0, 0u64..5).prop_map(Some),
        2 => (0.0f64..200.0, 25u64..120).prop_map(Some),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        1u64..20,
        0u32..40,
        0.0f64..=1.0,
        reading(),
        reading(),
        prop_oneof![
            Just(None),
            Just(Some((0.0, 0))),
            (0.0f64..1.0, 0u64..60).prop_map(Some)
        ],
        reading(),
        prop_oneof![Just(None), (0.01f64..20.0, 0u64..60).prop_map(Some)],
    )
        .prop_map(
            |(dt, current, ready_frac, waiting, running, gpu, rate, service)| Step {
                dt,
                current,
                ready_frac,
                waiting,
                running,
                gpu,
                rate,
                service,
            },
        )
}

fn to_reading(r: Option<(f64, u64)>) -> Option<Reading> {
    r.map(|(v, age)| Reading::aged(v, Duration::from_secs(age)))
}

fn signals(st: &Step) -> Signals {
    let ready = (f64::from(st.current) * st.ready_frac).floor() as u32;
    Signals {
        current: st.current,
        ready,
        starting: st.current - ready,
        waiting: to_reading(st.waiting),
        running: to_reading(st.running),
        gpu_utilization: to_reading(st.gpu),
        kv_cache_usage: None,
        arrival_rate: to_reading(st.rate),
        service_time: to_reading(st.service),
        // Token rates move with the request rate, about as a chat workload's do.
        prompt_tokens_rate: to_reading(st.rate.map(|(v, age)| (v * 800.0, age))),
        generation_tokens_rate: to_reading(st.rate.map(|(v, age)| (v * 200.0, age))),
        pods: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn bounds_always_hold(spec in prop::sample::select(SPECS), min in 0u32..5, extra in 0u32..30,
                          steps in prop::collection::vec(step(), 1..60)) {
        let max = min + extra + 1;
        let mut a = autoscaler(spec, min, max, "60s");
        let mut t = 0;
        for st in &steps {
            t += st.dt;
            let d = a.decide(Duration::from_secs(t), &signals(st));
            prop_assert!(d.desired >= min && d.desired <= max, "{spec}: {d:?} outside [{min}, {max}]");
            prop_assert_eq!(d.active, d.desired > 0);
        }
    }

    #[test]
    fn stale_or_missing_demand_never_leads_to_zero(spec in prop::sample::select(SPECS),
                          steps in prop::collection::vec(step(), 1..60)) {
        let mut a = autoscaler(spec, 0, 50, "0s");
        let mut t = 0;
        for st in &steps {
            t += st.dt;
            let sig = signals(st);
            let d = a.decide(Duration::from_secs(t), &sig);
            let demand_fresh = matches!(st.waiting, Some((_, age)) if age <= 30)
                && matches!(st.running, Some((_, age)) if age <= 30);
            if !demand_fresh && sig.current > 0 {
                prop_assert!(d.desired > 0, "{spec}: went to zero on stale/missing demand: {d:?} {sig:?}");
            }
        }
    }

    #[test]
    fn same_inputs_same_decisions(spec in prop::sample::select(SPECS),
                                  steps in prop::collection::vec(step(), 1..80)) {
        let mut a = autoscaler(spec, 0, 50, "adaptive");
        let mut b = autoscaler(spec, 0, 50, "adaptive");
        let mut t = 0;
        for st in &steps {
            t += st.dt;
            let sig = signals(st);
            prop_assert_eq!(a.decide(Duration::from_secs(t), &sig), b.decide(Duration::from_secs(t), &sig));
        }
    }

    #[test]
    fn queue_and_slo_never_ask_fewer_under_more_load(
        spec in prop::sample::select(&["queue", "slo"][..]),
        history in prop::collection::vec(step(), 0..30),
        current in 0u32..40,
        l1 in 0.0f64..500.0, dl in 0.0f64..500.0,
        lambda in 0.01f64..50.0, dlambda in 0.0f64..50.0,
        service in 0.01f64..5.0, rates_known in any::<bool>(),
    ) {
        // Two autoscalers with the same history; the last step differs only in load (and in
        // arrival rate for slo): the one under more load never gets fewer replicas.
        let mut a = autoscaler(spec, 0, 1000, "60s");
        let mut b = autoscaler(spec, 0, 1000, "60s");
        let mut t = 0;
        for st in &history {
            t += st.dt;
            let sig = signals(st);
            a.decide(Duration::from_secs(t), &sig);
            b.decide(Duration::from_secs(t), &sig);
        }
        let mk = |l: f64, lam: f64| {
            let mut s = common::load(current, current, l);
            if rates_known {
                s.arrival_rate = Some(Reading::fresh(lam));
                s.service_time = Some(Reading::fresh(service));
            }
            s
        };
        let now = Duration::from_secs(t + 1);
        let lo = a.decide(now, &mk(l1, lambda));
        let hi = b.decide(now, &mk(l1 + dl, lambda + dlambda));
        prop_assert!(hi.recommended >= lo.recommended, "{spec}: {lo:?} vs {hi:?}");
        prop_assert!(hi.desired >= lo.desired, "{spec}: {lo:?} vs {hi:?}");
    }
}
