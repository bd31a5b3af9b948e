//! A KEDA trigger's `metadata` map, read into what the scaler needs: which workload, which
//! policy with which parameters, and what to report to KEDA.
//!
//! The same words configure direct mode (as `gpuscale.io/*` annotations), so both paths share
//! [`Trigger::parse`]. Every key is listed in [`TRIGGER_KEYS`] (and docs/configuration.md,
//! checked by a test); a key that is not there is refused rather than silently ignored, since
//! a typo in `minReplicas` would otherwise scale a GPU workload to zero.

use gpuscale_contract::WorkloadKey;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use gpuscale_policies::spec::{self, SpecError};
use gpuscale_policies::{Autoscaler, Metric};
use thiserror::Error;

/// What `GetMetrics` reports to KEDA.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// The policy's desired replica count, with target 1: KEDA's HPA passes it through (the
    /// ScaledObject must set HPA behavior without stabilization; see docs/scaler.md).
    Replicas,
    /// The raw aggregated signal with a per-replica target: HPA's own formula scales.
    Signal {
        /// Which signal.
        metric: Metric,
        /// Its target per replica.
        target: f64,
    },
}

/// One trigger, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// The Deployment scaled.
    pub workload: WorkloadKey,
    /// Policy spec (`queue`, `queue+gpu`, ...).
    pub policy: String,
    /// Policy parameters, as `spec::build` takes them.
    pub params: Vec<(String, String)>,
    /// What to report.
    pub mode: Mode,
    /// Demand (waiting + running + held requests) above which the workload is active.
    pub activation_threshold: f64,
    /// GPUs one replica needs, for the capacity check.
    pub gpus_per_replica: u32,
    /// GPU product one replica needs (`gpuscale_gpu_info`'s `model`), for the capacity check;
    /// empty means any.
    pub gpu_model: String,
    /// Hash of the metadata that matters; a change rebuilds the workload's autoscaler.
    pub fingerprint: u64,
}

/// A key the scaler reads itself (the rest are policy keys, [`spec::KEYS`]).
#[derive(Clone, Copy, Debug)]
pub struct TriggerKey {
    /// The key.
    pub name: &'static str,
    /// Default, as text (`""`: required or none).
    pub default: &'static str,
    /// Meaning.
    pub doc: &'static str,
}

/// The scaler's own trigger keys.
pub const TRIGGER_KEYS: &[TriggerKey] = &[
    TriggerKey {
        name: "deployment",
        default: "",
        doc: "required: the Deployment the ScaledObject scales (for KServe, `<isvc>-predictor`)",
    },
    TriggerKey {
        name: "namespace",
        default: "the ScaledObject's",
        doc: "the Deployment's namespace",
    },
    TriggerKey {
        name: "policy",
        default: "default",
        doc: "policy spec: default (the `tokens` policy), tokens, hpa, kpa, queue, slo, gpu, fixed:N, or several joined by `+`; with no `policy` but `queue.*` keys, `queue` (the default before `default`)",
    },
    TriggerKey {
        name: "mode",
        default: "replicas",
        doc: "`replicas`: report the policy's desired count with target 1; `signal`: report the raw signal with a per-replica target",
    },
    TriggerKey {
        name: "metric",
        default: "load",
        doc: "signal mode: load, waiting, running, kv_cache_usage or gpu_utilization",
    },
    TriggerKey {
        name: "target",
        default: "4 (0.8 for ratios)",
        doc: "signal mode: target value per replica",
    },
    TriggerKey {
        name: "activationThreshold",
        default: "0",
        doc: "active when demand (waiting + running + held requests) is above this",
    },
    TriggerKey {
        name: "gpusPerReplica",
        default: "1",
        doc: "GPUs one replica needs: a scale-up past the cluster's free GPUs is reported in the reason",
    },
    TriggerKey {
        name: "gpuModel",
        default: "any",
        doc: "GPU product one replica needs, as in `gpuscale_gpu_info{model}`",
    },
];

/// Keys KEDA itself puts in the metadata map; they reach the scaler and mean nothing to it.
pub const KEDA_KEYS: &[&str] = &["scalerAddress", "enableTLS", "unsafeSsl"];

/// Metadata that cannot be used. Its message names the key and the accepted values; the gRPC
/// server sends it as INVALID_ARGUMENT.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TriggerError {
    /// `deployment` is missing.
    #[error(
        "missing required key `deployment`: set it to the name of the Deployment the ScaledObject scales"
    )]
    MissingDeployment,
    /// A value is malformed.
    #[error("invalid value `{}` for `{}`: expected {expected}", spec::brief(.value), spec::brief(.key))]
    Invalid {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A key is not known.
    #[error("unknown key `{}`: allowed keys are {allowed}", spec::brief(.key))]
    UnknownKey {
        /// The key.
        key: String,
        /// Everything accepted.
        allowed: String,
    },
    /// The policy or a policy parameter was refused.
    #[error("{0}")]
    Policy(SpecError),
}

/// Every key accepted, for error messages.
pub fn allowed_keys() -> String {
    let mut keys: Vec<String> = TRIGGER_KEYS.iter().map(|k| k.name.to_string()).collect();
    keys.extend(spec::KEYS.iter().map(|k| {
        if k.policy.is_empty() {
            k.name.to_string()
        } else {
            format!("{}.{}", k.policy, k.name)
        }
    }));
    keys.join(", ")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// The metadata's fingerprint: order-independent, KEDA's own keys left out.
pub fn fingerprint(default_namespace: &str, metadata: &HashMap<String, String>) -> u64 {
    let sorted: BTreeMap<&str, &str> = metadata
        .iter()
        .filter(|(k, _)| !KEDA_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut h = DefaultHasher::new();
    default_namespace.hash(&mut h);
    sorted.hash(&mut h);
    h.finish()
}

fn parse_f64(key: &str, v: &str, expected: &str, ok: impl Fn(f64) -> bool) -> Result<f64, TriggerError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && ok(x) => Ok(x),
        _ => Err(TriggerError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: expected.into(),
        }),
    }
}

/// A workload registered by the scaler's own flags rather than by KEDA: `NS/NAME` or
/// `NS/NAME:key=value,key=value` (trigger keys, as in a ScaledObject's metadata). The scaler
/// decides it every poll, so /debug/workloads and /metrics show what it would ask for without
/// KEDA calling.
pub fn parse_static(spec: &str) -> Result<Trigger, String> {
    let spec = spec.trim();
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let Some((ns, deployment)) = name
        .split_once('/')
        .filter(|(n, d)| !n.is_empty() && !d.is_empty())
    else {
        return Err(format!(
            "`{}`: expected NAMESPACE/DEPLOYMENT, optionally followed by :key=value,key=value (e.g. llm/qwen:policy=queue,queue.target=8)",
            crate::policies::spec::brief(spec)
        ));
    };
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("deployment".into(), deployment.trim().to_string());
    for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!(
                "`{}`: expected key=value, found `{}`",
                crate::policies::spec::brief(spec),
                crate::policies::spec::brief(pair)
            ));
        };
        if k.trim() == "deployment" {
            return Err(format!(
                "`{}`: the deployment is the part before `:`",
                crate::policies::spec::brief(spec)
            ));
        }
        md.insert(k.trim().to_string(), v.trim().to_string());
    }
    Trigger::parse(ns.trim(), &md).map_err(|e| format!("`{}`: {e}", crate::policies::spec::brief(spec)))
}

impl Trigger {
    /// Read a trigger's metadata; `default_namespace` is the ScaledObject's namespace.
    pub fn parse(
        default_namespace: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<Trigger, TriggerError> {
        let get = |k: &str| metadata.get(k).map(|v| v.trim());
        let name = get("deployment").ok_or(TriggerError::MissingDeployment)?;
        let invalid = |key: &str, value: &str, expected: &str| TriggerError::Invalid {
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        };
        if !is_dns_label(name) {
            return Err(invalid(
                "deployment",
                name,
                "a Deployment name (lower-case letters, digits, `-` and `.`)",
            ));
        }
        let namespace = get("namespace").unwrap_or(default_namespace);
        if !is_dns_label(namespace) {
            return Err(invalid(
                "namespace",
                namespace,
                "a namespace name (lower-case letters, digits and `-`)",
            ));
        }
        // Without a `policy` key: `default`, except that a trigger written before `default`
        // existed, when `queue` was the default, keeps its meaning: `queue.*` keys and no policy
        // still mean the queue policy.
        let policy = match get("policy") {
            Some(p) => p.to_string(),
            None if metadata.keys().any(|k| k.starts_with("queue.")) => "queue".to_string(),
            None => spec::DEFAULT_POLICY.to_string(),
        };
        spec::policy_names(&policy).map_err(TriggerError::Policy)?;

        let metric = match get("metric") {
            None => Metric::Load,
            Some(m) => match Metric::parse(m) {
                Some(x) if x != Metric::ArrivalRate => x,
                _ => {
                    return Err(invalid(
                        "metric",
                        m,
                        "one of load, waiting, running, kv_cache_usage, gpu_utilization",
                    ));
                }
            },
        };
        let ratio = matches!(metric, Metric::KvCacheUsage | Metric::GpuUtilization);
        let target = match get("target") {
            None if ratio => 0.8,
            None => 4.0,
            Some(v) if ratio => parse_f64("target", v, "a number in (0, 1]", |x| x > 0.0 && x <= 1.0)?,
            Some(v) => parse_f64("target", v, "a number above 0", |x| x > 0.0)?,
        };
        let mode = match get("mode") {
            None | Some("replicas") => {
                for k in ["metric", "target"] {
                    if metadata.contains_key(k) {
                        return Err(invalid(
                            k,
                            &metadata[k],
                            "nothing in replicas mode: set `mode: signal` to use it",
                        ));
                    }
                }
                Mode::Replicas
            }
            Some("signal") => Mode::Signal { metric, target },
            Some(m) => return Err(invalid("mode", m, "`replicas` or `signal`")),
        };
        let activation_threshold = match get("activationThreshold") {
            None => 0.0,
            Some(v) => parse_f64("activationThreshold", v, "a number of requests, 0 or more", |x| {
                x >= 0.0
            })?,
        };
        let gpus_per_replica = match get("gpusPerReplica") {
            None => 1,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 64)
                .ok_or_else(|| invalid("gpusPerReplica", v, "a whole number from 0 to 64"))?,
        };
        let gpu_model = get("gpuModel").unwrap_or("").to_string();

        let own: Vec<&str> = TRIGGER_KEYS.iter().map(|k| k.name).collect();
        let mut params: Vec<(String, String)> = metadata
            .iter()
            .filter(|(k, _)| !own.contains(&k.as_str()) && !KEDA_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.trim().to_string()))
            .collect();
        // HashMap order is random; the autoscaler must not depend on it.
        params.sort();
        let trigger = Trigger {
            workload: WorkloadKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            policy,
            params,
            mode,
            activation_threshold,
            gpus_per_replica,
            gpu_model,
            fingerprint: fingerprint(default_namespace, metadata),
        };
        trigger.autoscaler()?;
        Ok(trigger)
    }

    /// A fresh autoscaler for this trigger.
    pub fn autoscaler(&self) -> Result<Autoscaler, TriggerError> {
        spec::build(&self.policy, &self.params).map_err(|e| match e {
            // The policy's own keys (as the spec lists them for this policy) and the scaler's.
            SpecError::UnknownKey { key, allowed } => TriggerError::UnknownKey {
                key,
                allowed: TRIGGER_KEYS
                    .iter()
                    .map(|k| k.name)
                    .chain(std::iter::once(allowed.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            e => TriggerError::Policy(e),
        })
    }

    /// The metric name given to KEDA (KEDA prefixes it with `sN-`). Stable for a workload and
    /// mode, and a valid Kubernetes external metric name.
    pub fn metric_name(&self) -> String {
        match self.mode {
            Mode::Replicas => format!(
                "gpuscale-replicas-{}-{}",
                self.workload.namespace, self.workload.name
            ),
            Mode::Signal { metric, .. } => format!(
                "gpuscale-{}-{}-{}",
                metric.as_str().replace('_', "-"),
                self.workload.namespace,
                self.workload.name
            ),
        }
    }

    /// The target given to KEDA.
    pub fn target(&self) -> f64 {
        match self.mode {
            Mode::Replicas => 1.0,
            Mode::Signal { target, .. } => target,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_keda_keys() {
        let t = Trigger::parse(
            "llm",
            &md(&[
                ("deployment", "qwen-predictor"),
                ("scalerAddress", "gpuscale:9090"),
            ]),
        )
        .unwrap();
        assert_eq!(t.workload.to_string(), "llm/qwen-predictor");
        assert_eq!((t.policy.as_str(), t.mode), ("default", Mode::Replicas));
        assert_eq!(t.metric_name(), "gpuscale-replicas-llm-qwen-predictor");
        assert_eq!(t.target(), 1.0);
        assert!(t.params.is_empty());
    }

    #[test]
    fn no_policy_means_default_unless_queue_keys_say_queue() {
        let parse = |pairs: &[(&str, &str)]| Trigger::parse("ns", &md(pairs)).unwrap();
        let t = parse(&[("deployment", "d"), ("tokens.decodeCapacity", "1300")]);
        assert_eq!(t.policy, "default");
        // Written when `queue` was the default: it keeps meaning queue.
        let t = parse(&[("deployment", "d"), ("queue.target", "8")]);
        assert_eq!(t.policy, "queue");
        let t = parse(&[("deployment", "d"), ("policy", "hpa")]);
        assert_eq!(t.policy, "hpa");
        let e = Trigger::parse(
            "ns",
            &md(&[("deployment", "d"), ("policy", "default"), ("queue.target", "8")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("queue.target"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = |pairs: &[(&str, &str)]| Trigger::parse("ns", &md(pairs)).unwrap_err().to_string();
        assert!(e(&[]).contains("`deployment`"));
        assert!(e(&[("deployment", "Bad_Name")]).contains("`deployment`"));
        let m = e(&[("deployment", "d"), ("minReplica", "1")]);
        assert!(
            m.contains("unknown key `minReplica`") && m.contains("minReplicas"),
            "{m}"
        );
        assert!(e(&[("deployment", "d"), ("mode", "fast")]).contains("`replicas` or `signal`"));
        assert!(e(&[("deployment", "d"), ("policy", "hap")]).contains("unknown policy `hap`"));
        assert!(e(&[("deployment", "d"), ("maxReplicas", "-1")]).contains("maxReplicas"));
        assert!(e(&[("deployment", "d"), ("target", "3")]).contains("replicas mode"));
        let m = e(&[
            ("deployment", "d"),
            ("mode", "signal"),
            ("metric", "kv_cache_usage"),
            ("target", "5"),
        ]);
        assert!(m.contains("(0, 1]"), "{m}");
        assert!(e(&[("deployment", "d"), ("activationThreshold", "x")]).contains("activationThreshold"));
    }

    #[test]
    fn a_key_of_another_policy_is_named_as_such_not_as_unknown() {
        let e = |pairs: &[(&str, &str)]| Trigger::parse("ns", &md(pairs)).unwrap_err().to_string();
        let m = e(&[("deployment", "d"), ("policy", "queue"), ("slo.wait", "2s")]);
        assert!(
            m.contains("`slo.wait` is a parameter of policy `slo`, which `queue` does not include")
                && m.contains("queue+slo"),
            "{m}"
        );
        // A real typo lists what this policy takes, and not what it does not.
        let m = e(&[("deployment", "d"), ("policy", "queue"), ("queue.targt", "2")]);
        assert!(
            m.contains("unknown") && m.contains("queue.target") && !m.contains("slo.wait"),
            "{m}"
        );
    }

    #[test]
    fn errors_echo_inputs_briefly() {
        let huge = "9".repeat(1 << 20);
        for (k, v) in [
            ("maxReplicas", huge.as_str()),
            ("activationThreshold", huge.as_str()),
            (huge.as_str(), "1"),
        ] {
            let e = Trigger::parse("ns", &md(&[("deployment", "d"), (k, v)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.len() < 2000 && e.contains("(1048576 bytes)"),
                "{} bytes: {}",
                e.len(),
                &e[..200]
            );
        }
    }

    #[test]
    fn signal_mode_and_fingerprint() {
        let a = md(&[
            ("deployment", "d"),
            ("mode", "signal"),
            ("metric", "waiting"),
            ("queue.target", "2"),
            ("scalerAddress", "a:1"),
        ]);
        let t = Trigger::parse("ns", &a).unwrap();
        assert_eq!(
            t.mode,
            Mode::Signal {
                metric: Metric::Waiting,
                target: 4.0
            }
        );
        assert_eq!(t.metric_name(), "gpuscale-waiting-ns-d");
        assert_eq!(t.params, vec![("queue.target".to_string(), "2".to_string())]);
        let mut b = a.clone();
        b.insert("scalerAddress".into(), "b:2".into());
        assert_eq!(fingerprint("ns", &a), fingerprint("ns", &b));
        b.insert("queue.target".into(), "3".into());
        assert_ne!(fingerprint("ns", &a), fingerprint("ns", &b));
    }
}
