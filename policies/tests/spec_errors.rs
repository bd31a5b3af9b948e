//! The spec parser names the bad input and what would be accepted.

use gpuscale_policies::{SpecError, build};

fn err(spec: &str, params: &[(&str, &str)]) -> SpecError {
    match build(spec, params) {
        Ok(a) => panic!("expected an error, got {a:?}"),
        Err(e) => e,
    }
}

#[test]
fn unknown_policy() {
    let e = err("kpa+magic", &[]);
    assert_eq!(e, SpecError::UnknownPolicy { name: "magic".into() });
    assert!(
        e.to_string()
            .contains("expected one of default, tokens, hpa, kpa, queue, slo, gpu, fixed:N")
    );
    assert!(matches!(err("fixed:x", &[]), SpecError::Invalid { .. }));
    assert!(matches!(err("queue+queue", &[]), SpecError::Invalid { .. }));
}

#[test]
fn unknown_key_lists_the_allowed_ones() {
    let e = err("queue", &[("queue.targett", "4")]);
    let msg = e.to_string();
    assert!(msg.contains("`queue.targett`"), "{msg}");
    assert!(msg.contains("queue.target,"), "{msg}");
    assert!(msg.contains("minReplicas"), "{msg}");
    // A key of a policy that is not in the spec is unknown here too.
    let msg = err("queue", &[("kpa.stableWindow", "60s")]).to_string();
    assert!(
        msg.contains("`kpa.stableWindow`") && !msg.contains("kpa.target"),
        "{msg}"
    );
}

#[test]
fn bad_values_say_what_is_expected() {
    let msg = err("queue", &[("queue.target", "-1")]).to_string();
    assert_eq!(
        msg,
        "invalid value `-1` for `queue.target`: expected a number > 0"
    );
    let msg = err("kpa", &[("kpa.stableWindow", "5s")]).to_string();
    assert!(msg.contains("whole seconds from 6s to 1h"), "{msg}");
    let msg = err("queue", &[("keepAlive", "5 parsecs")]).to_string();
    assert!(msg.contains("a duration such as 250ms, 30s, 5m or 1h"), "{msg}");
    let msg = err("queue", &[("minReplicas", "5"), ("maxReplicas", "2")]).to_string();
    assert!(
        msg.contains("`minReplicas`") && msg.contains("<= maxReplicas (2)"),
        "{msg}"
    );
    let msg = err("hpa", &[("hpa.scaleUpPolicies", "pods:4")]).to_string();
    assert!(msg.contains("pods:4/15s+percent:100/15s"), "{msg}");
    let msg = err("gpu", &[("gpu.metric", "load")]).to_string();
    assert!(msg.contains("gpu_utilization, kv_cache_usage"), "{msg}");
}

#[test]
fn every_documented_key_is_accepted_with_its_default() {
    for k in gpuscale_policies::spec::KEYS {
        let spec = if k.policy.is_empty() { "queue" } else { k.policy };
        let key = if k.policy.is_empty() {
            k.name.to_string()
        } else {
            format!("{}.{}", k.policy, k.name)
        };
        if let Err(e) = build(spec, &[(key.as_str(), k.default)]) {
            panic!("{key}={} (its documented default) is rejected: {e}", k.default);
        }
    }
}
