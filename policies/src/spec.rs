//! Policies by name and parameters: the one parser behind the scaler's trigger metadata and
//! annotations and the simulator's `--policy` / `--param` flags, so the two accept exactly the
//! same words and reject the same mistakes with the same messages.
//!
//! A policy spec is one name (`default`, `tokens`, `hpa`, `kpa`, `queue`, `slo`, `gpu`,
//! `fixed:N`) or several joined by `+` (`queue+gpu`: the largest recommendation wins).
//! `default` is what a trigger or annotation without a `policy` key gets: the `tokens` policy
//! (its keys are `tokens.*`), chosen by replaying every bundled and shared trace
//! (`cargo bench -p gpuscale-sim --bench scorecard`, docs/policies.md quotes it). Parameters are `key=value` pairs:
//! autoscaler-wide keys (`minReplicas`, `keepAlive`, ...) and policy keys prefixed by the
//! policy name (`queue.target`). [`KEYS`] lists every key with its default and meaning;
//! docs/policies.md is checked against it.

use std::time::Duration;

use thiserror::Error;

use crate::fixed::Fixed;
use crate::gpu::{Gpu, GpuConfig};
use crate::hpa::{
    Behavior, Hpa, HpaConfig, HpaMetric, HpaTarget, ScalingPolicy, ScalingPolicyKind, SelectPolicy,
};
use crate::keepalive::{AdaptiveConfig, KeepAliveConfig};
use crate::kpa::{Kpa, KpaConfig};
use crate::queue::{Queue, QueueConfig};
use crate::signals::Metric;
use crate::slo::{Slo, SloConfig};
use crate::tokens::{Tokens, TokensConfig};
use crate::{Autoscaler, Bounds, Policy, Safety};

/// A spec or parameter that cannot be used, naming the input and what would be accepted.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SpecError {
    /// The policy name is not known.
    #[error(
        "unknown policy `{}`: expected one of default, tokens, hpa, kpa, queue, slo, gpu, fixed:N, or several joined by `+`", brief(.name)
    )]
    UnknownPolicy {
        /// What was given.
        name: String,
    },
    /// The key is not known (or belongs to a policy that is not in the spec).
    #[error("unknown parameter `{}`: allowed keys are {allowed}", brief(.key))]
    UnknownKey {
        /// What was given.
        key: String,
        /// The keys that would be accepted here.
        allowed: String,
    },
    /// The key belongs to a policy the spec does not include.
    #[error(
        "`{}` is a parameter of policy `{policy}`, which `{}` does not include: add `{policy}` to the policy (e.g. `{}+{policy}`) or remove the key",
        brief(.key), brief(.spec), brief(.spec)
    )]
    NotInSpec {
        /// What was given.
        key: String,
        /// The policy it belongs to.
        policy: String,
        /// The spec it was given with.
        spec: String,
    },
    /// The value does not parse or is out of range.
    #[error("invalid value `{}` for `{}`: expected {expected}", brief(.value), brief(.key))]
    Invalid {
        /// The key.
        key: String,
        /// What was given.
        value: String,
        /// What would be accepted.
        expected: String,
    },
}

/// Longest input echoed whole in an error message.
pub const ECHO_BYTES: usize = 120;

/// An input as error messages echo it: whole when short, else a prefix and its length, so a
/// megabyte of metadata is never sent back (gRPC clients refuse large error messages).
pub fn brief(s: &str) -> std::borrow::Cow<'_, str> {
    brief_to(s, ECHO_BYTES)
}

/// [`brief`] with another bound, `max` bytes.
pub fn brief_to(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len()).into()
}

/// Why `key` cannot be used with `spec` (whose policies are `names`): it belongs to a known
/// policy the spec leaves out, or it is not a key at all.
fn unused_key(key: &str, spec: &str, names: &[&str]) -> SpecError {
    let owner = key
        .split_once('.')
        .map(|(p, _)| p)
        .filter(|p| KEYS.iter().any(|k| k.policy == *p));
    match owner {
        Some(policy) => SpecError::NotInSpec {
            key: key.into(),
            policy: policy.into(),
            spec: spec.into(),
        },
        None => SpecError::UnknownKey {
            key: key.into(),
            allowed: allowed_keys(names),
        },
    }
}

/// A parameter given for several specs at once (the simulator's `--policy hpa,kpa`) must be
/// used by at least one of them; autoscaler-wide keys always are.
pub fn check_used(key: &str, specs: &[&str]) -> Result<(), SpecError> {
    let Some((policy, _)) = key.split_once('.') else {
        return Ok(());
    };
    let mut all: Vec<&str> = Vec::new();
    for s in specs {
        for n in policy_names(s)? {
            if !all.contains(&n) {
                all.push(n);
            }
        }
    }
    if all.contains(&policy) {
        return Ok(());
    }
    Err(unused_key(key, &specs.join(","), &all))
}

/// One documented parameter.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// `""` for autoscaler-wide keys, else the policy name.
    pub policy: &'static str,
    /// The key as written after the policy prefix.
    pub name: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

const fn key(policy: &'static str, name: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        policy,
        name,
        default,
        doc,
    }
}

/// Every parameter accepted, with its default and meaning.
pub const KEYS: &[Key] = &[
    key("", "minReplicas", "0", "fewest replicas; 0 allows scale-to-zero"),
    key("", "maxReplicas", "100", "most replicas"),
    key(
        "",
        "keepAlive",
        "300s",
        "idle time before zero: a duration (0 = at once) or `adaptive`",
    ),
    key(
        "",
        "coldStart",
        "0s",
        "adaptive keep-alive: model cold start, pre-warming starts this much early",
    ),
    key(
        "",
        "maxSignalAge",
        "30s",
        "signals older than this are stale and hold the current count",
    ),
    key(
        "",
        "holdWhileStarting",
        "true",
        "no further scale-up while replicas are starting",
    ),
    key(
        "",
        "demand",
        "load",
        "metric whose zero means idle: load, waiting or running",
    ),
    key(
        "queue",
        "metric",
        "load",
        "demand per replica: load (waiting+running), waiting or running",
    ),
    key("queue", "target", "4", "target demand per replica"),
    key(
        "queue",
        "tolerance",
        "0.1",
        "no change while demand/target is within 1 +- tolerance",
    ),
    key(
        "queue",
        "scaleDownWindow",
        "300s",
        "a lower count waits until it has been the highest this long",
    ),
    key(
        "slo",
        "wait",
        "1s",
        "queue-wait bound t of the objective P(wait > t) <= 1 - quantile",
    ),
    key(
        "slo",
        "quantile",
        "0.95",
        "share of requests that must wait at most `wait`",
    ),
    key("slo", "slots", "1", "requests one replica serves at once"),
    key(
        "slo",
        "metric",
        "load",
        "fallback queue rule (rates unknown): demand metric",
    ),
    key(
        "slo",
        "target",
        "4",
        "fallback queue rule: target demand per replica",
    ),
    key("slo", "tolerance", "0.1", "fallback queue rule: tolerance"),
    key("slo", "scaleDownWindow", "300s", "scale-down window"),
    key(
        "tokens",
        "prefillCapacity",
        "learn",
        "prompt tokens/s one replica computes at full load, or `learn`",
    ),
    key(
        "tokens",
        "decodeCapacity",
        "learn",
        "output tokens/s one replica generates at full load, or `learn`",
    ),
    key(
        "tokens",
        "prefillDecodeRatio",
        "6.5",
        "prefillCapacity / decodeCapacity assumed where only one of them is set or learned",
    ),
    key(
        "tokens",
        "utilization",
        "1.0",
        "share of capacity to plan for (below 1: headroom for bursts)",
    ),
    key(
        "tokens",
        "saturation",
        "1.5",
        "in-flight requests per replica, in slots, that mean overload whatever the rates say",
    ),
    key(
        "tokens",
        "window",
        "60s",
        "token rates are averaged over this window before sizing",
    ),
    key("tokens", "kvTarget", "0.9", "KV-cache usage to plan for, 0-1"),
    key(
        "tokens",
        "slots",
        "learn",
        "requests one replica serves at once (queue rule, backlog, in-flight floor), or `learn` (until learned: 32 on a server that reports token rates, else 4)",
    ),
    key(
        "tokens",
        "backlogWindow",
        "30s",
        "requests waiting this long add replicas and mark replicas saturated",
    ),
    key(
        "tokens",
        "tolerance",
        "0.1",
        "no change while need/current is within 1 +- tolerance",
    ),
    key("tokens", "scaleDownWindow", "300s", "scale-down window"),
    key(
        "tokens",
        "queueScaleDownWindow",
        "180s",
        "scale-down window of a server without token counters (the queue rule decides)",
    ),
    key(
        "gpu",
        "metric",
        "gpu_utilization",
        "gpu_utilization or kv_cache_usage",
    ),
    key("gpu", "target", "0.7", "target mean over ready replicas, 0-1"),
    key(
        "gpu",
        "tolerance",
        "0.1",
        "no change while usage/target is within 1 +- tolerance",
    ),
    key("gpu", "scaleDownWindow", "300s", "scale-down window"),
    key(
        "hpa",
        "metric",
        "load",
        "load, waiting, running, kv_cache_usage, gpu_utilization or arrival_rate",
    ),
    key("hpa", "target", "4", "the metric target"),
    key(
        "hpa",
        "targetType",
        "averageValue",
        "averageValue (External, KEDA), value, or podAverage (Pods metric)",
    ),
    key(
        "hpa",
        "behavior",
        "default",
        "default (API-server defaults) or legacy (no behavior: 5 min max, 2x/4 cap)",
    ),
    key("hpa", "tolerance", "0.1", "tolerance in both directions"),
    key(
        "hpa",
        "scaleUpWindow",
        "0s",
        "behavior.scaleUp.stabilizationWindowSeconds",
    ),
    key(
        "hpa",
        "scaleDownWindow",
        "300s",
        "behavior.scaleDown.stabilizationWindowSeconds",
    ),
    key(
        "hpa",
        "scaleUpPolicies",
        "pods:4/15s+percent:100/15s",
        "behavior.scaleUp.policies",
    ),
    key(
        "hpa",
        "scaleDownPolicies",
        "percent:100/15s",
        "behavior.scaleDown.policies",
    ),
    key(
        "hpa",
        "scaleUpSelect",
        "max",
        "behavior.scaleUp.selectPolicy: max, min or disabled",
    ),
    key(
        "hpa",
        "scaleDownSelect",
        "max",
        "behavior.scaleDown.selectPolicy: max, min or disabled",
    ),
    key(
        "kpa",
        "metric",
        "concurrency",
        "concurrency (waiting+running) or rps (arrival_rate)",
    ),
    key(
        "kpa",
        "target",
        "100",
        "per-pod target before utilization (200 for rps)",
    ),
    key(
        "kpa",
        "targetUtilization",
        "0.7",
        "container-concurrency-target-percentage as a fraction",
    ),
    key(
        "kpa",
        "stableWindow",
        "60s",
        "stable-window, whole seconds, 6s to 1h",
    ),
    key(
        "kpa",
        "panicWindowPercentage",
        "10",
        "panic-window-percentage, 1 to 100",
    ),
    key(
        "kpa",
        "panicThresholdPercentage",
        "200",
        "panic-threshold-percentage, 110 to 1000",
    ),
    key("kpa", "maxScaleUpRate", "1000", "max-scale-up-rate, > 1"),
    key("kpa", "maxScaleDownRate", "2", "max-scale-down-rate, > 1"),
    key("kpa", "scaleToZeroGrace", "30s", "scale-to-zero-grace-period"),
    key("kpa", "scaleDownDelay", "0s", "scale-down-delay"),
    key(
        "kpa",
        "activationScale",
        "1",
        "activation-scale: replicas when waking from zero",
    ),
];

/// Parse a duration: `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, SpecError> {
    let bad = || SpecError::Invalid {
        key: key.into(),
        value: v.into(),
        expected: "a duration such as 250ms, 30s, 5m or 1h (bare numbers are seconds)".into(),
    };
    let t = v.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=366.0 * 86400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`parse_duration`] as seconds, for a binary's duration flags (clap's `value_parser`): the
/// one syntax and message of every gpuscale flag.
pub fn duration_secs(v: &str) -> Result<f64, String> {
    parse_duration("duration", v).map(|d| d.as_secs_f64()).map_err(|_| {
        format!(
            "`{}`: expected a duration such as 500ms, 30s, 5m or 1h (a bare number is seconds), 0 or more",
            brief(v)
        )
    })
}

fn parse_f64(key: &str, v: &str, lo: f64, hi: f64, what: &str) -> Result<f64, SpecError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        _ => Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: what.into(),
        }),
    }
}

fn parse_u32(key: &str, v: &str, lo: u32, hi: u32) -> Result<u32, SpecError> {
    match v.trim().parse::<u32>() {
        Ok(x) if (lo..=hi).contains(&x) => Ok(x),
        _ => Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: format!("an integer from {lo} to {hi}"),
        }),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, SpecError> {
    match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: "true or false".into(),
        }),
    }
}

fn parse_metric(key: &str, v: &str, allowed: &[Metric]) -> Result<Metric, SpecError> {
    Metric::parse(v.trim())
        .filter(|m| allowed.contains(m))
        .ok_or_else(|| SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: format!(
                "one of {}",
                allowed.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
}

fn positive(key: &str, v: &str) -> Result<f64, SpecError> {
    match v.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: "a number > 0".into(),
        }),
    }
}

fn window(key: &str, v: &str) -> Result<Duration, SpecError> {
    let d = parse_duration(key, v)?;
    if d > Duration::from_secs(3600) {
        return Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: "a duration of at most 1h".into(),
        });
    }
    Ok(d)
}

/// `pods:4/15s+percent:100/15s`.
fn parse_scaling_policies(key: &str, v: &str) -> Result<Vec<ScalingPolicy>, SpecError> {
    let bad = || SpecError::Invalid {
        key: key.into(),
        value: v.into(),
        expected: "policies like pods:4/15s+percent:100/15s (type:value/period, joined by +)".into(),
    };
    let mut out = Vec::new();
    for part in v.split('+') {
        let (kind, rest) = part.trim().split_once(':').ok_or_else(bad)?;
        let (value, period) = rest.split_once('/').ok_or_else(bad)?;
        let kind = match kind {
            "pods" => ScalingPolicyKind::Pods,
            "percent" => ScalingPolicyKind::Percent,
            _ => return Err(bad()),
        };
        let value: u32 = value.parse().map_err(|_| bad())?;
        let period = parse_duration(key, period)?;
        if value == 0 || period.is_zero() || period > Duration::from_secs(1800) {
            return Err(bad());
        }
        out.push(ScalingPolicy { kind, value, period });
    }
    if out.len() > 10 {
        return Err(bad());
    }
    Ok(out)
}

fn parse_select(key: &str, v: &str) -> Result<SelectPolicy, SpecError> {
    match v.trim() {
        "max" => Ok(SelectPolicy::Max),
        "min" => Ok(SelectPolicy::Min),
        "disabled" => Ok(SelectPolicy::Disabled),
        _ => Err(SpecError::Invalid {
            key: key.into(),
            value: v.into(),
            expected: "max, min or disabled".into(),
        }),
    }
}

fn allowed_keys(policies: &[&str]) -> String {
    KEYS.iter()
        .filter(|k| k.policy.is_empty() || policies.contains(&k.policy))
        .map(|k| {
            if k.policy.is_empty() {
                k.name.to_string()
            } else {
                format!("{}.{}", k.policy, k.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The spec a trigger or annotation without a `policy` key gets.
pub const DEFAULT_POLICY: &str = "default";

/// A capacity given as a number > 0, or `learn`.
fn capacity(key: &str, v: &str) -> Result<Option<f64>, SpecError> {
    if v.trim() == "learn" {
        return Ok(None);
    }
    positive(key, v).map(Some).map_err(|_| SpecError::Invalid {
        key: key.into(),
        value: v.into(),
        expected: "a number > 0 or `learn`".into(),
    })
}

/// The policy names of a spec, validated (`fixed:3` gives `fixed`).
pub fn policy_names(spec: &str) -> Result<Vec<&str>, SpecError> {
    let mut names = Vec::new();
    for part in spec.split('+') {
        let part = part.trim();
        let name = match part {
            "hpa" | "kpa" | "queue" | "slo" | "gpu" | "tokens" => part,
            // `default` is the tokens policy; its keys are `tokens.*`.
            DEFAULT_POLICY => "tokens",
            p if p.starts_with("fixed:") => {
                parse_u32("fixed", &p[6..], 0, 100_000).map_err(|_| SpecError::Invalid {
                    key: "policy".into(),
                    value: p.into(),
                    expected: "fixed:N with N a replica count from 0 to 100000".into(),
                })?;
                "fixed"
            }
            _ => return Err(SpecError::UnknownPolicy { name: part.into() }),
        };
        if names.contains(&name) {
            return Err(SpecError::Invalid {
                key: "policy".into(),
                value: spec.into(),
                expected: "each policy at most once".into(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// How a `hpa` target's value is read (`hpa.targetType`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum TargetType {
    AverageValue,
    Value,
    PodAverage,
}

/// Every parameter while a spec is read: the defaults, each `key=value` set over them. The
/// defaults are the policies' `Config::default()`s; a test holds [`KEYS`] (what the docs
/// print) to them.
#[derive(Clone, Debug)]
struct Params {
    min: u32,
    max: u32,
    keep_alive: KeepAliveConfig,
    cold_start: Duration,
    safety: Safety,
    demand: Metric,
    queue: QueueConfig,
    slo: SloConfig,
    gpu: GpuConfig,
    tokens: TokensConfig,
    kpa: KpaConfig,
    /// `kpa.target` when given; else it follows `kpa.metric` (100 concurrent, 200 rps).
    kpa_target: Option<f64>,
    hpa_metric: Metric,
    hpa_target: f64,
    hpa_target_type: TargetType,
    hpa_legacy: bool,
    hpa_tolerance: f64,
    behavior: Behavior,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min: 0,
            max: 100,
            keep_alive: KeepAliveConfig::default(),
            cold_start: Duration::ZERO,
            safety: Safety::default(),
            demand: Metric::Load,
            queue: QueueConfig::default(),
            slo: SloConfig::default(),
            gpu: GpuConfig::default(),
            tokens: TokensConfig::default(),
            kpa: KpaConfig::default(),
            kpa_target: None,
            hpa_metric: Metric::Load,
            hpa_target: 4.0,
            hpa_target_type: TargetType::AverageValue,
            hpa_legacy: false,
            hpa_tolerance: crate::hpa::DEFAULT_TOLERANCE,
            behavior: Behavior::default(),
        }
    }
}

/// What the parameters come to, per policy.
#[derive(Debug, PartialEq)]
struct Resolved {
    bounds: Bounds,
    keep_alive: KeepAliveConfig,
    safety: Safety,
    demand: Metric,
    queue: QueueConfig,
    slo: SloConfig,
    gpu: GpuConfig,
    tokens: TokensConfig,
    kpa: KpaConfig,
    hpa: HpaConfig,
}

impl Params {
    /// Set `k` (`policy.name`, or `name` for the common keys) to `v`. An unknown key comes
    /// back as [`SpecError::UnknownKey`] without the allowed list, which the caller knows.
    fn set(&mut self, policy: &str, name: &str, k: &str, v: &str) -> Result<(), SpecError> {
        match (policy, name) {
            ("", "minReplicas") => self.min = parse_u32(k, v, 0, 100_000)?,
            ("", "maxReplicas") => self.max = parse_u32(k, v, 1, 100_000)?,
            ("", "keepAlive") if v.trim() == "adaptive" => {
                self.keep_alive = KeepAliveConfig::Adaptive(AdaptiveConfig::default());
            }
            ("", "keepAlive") => self.keep_alive = KeepAliveConfig::Fixed(parse_duration(k, v)?),
            ("", "coldStart") => self.cold_start = window(k, v)?,
            ("", "maxSignalAge") => self.safety.max_signal_age = parse_duration(k, v)?,
            ("", "holdWhileStarting") => self.safety.hold_while_starting = parse_bool(k, v)?,
            ("", "demand") => {
                self.demand = parse_metric(k, v, &[Metric::Load, Metric::Waiting, Metric::Running])?
            }
            ("queue", "metric") => {
                self.queue.metric = parse_metric(k, v, &[Metric::Load, Metric::Waiting, Metric::Running])?
            }
            ("queue", "target") => self.queue.target = positive(k, v)?,
            ("queue", "tolerance") => {
                self.queue.tolerance = parse_f64(k, v, 0.0, 0.99, "a number from 0 to 0.99")?
            }
            ("queue", "scaleDownWindow") => self.queue.scale_down_window = window(k, v)?,
            ("slo", "wait") => self.slo.wait = parse_duration(k, v)?,
            ("slo", "quantile") => {
                self.slo.quantile =
                    parse_f64(k, v, 0.5, 0.9999, "a probability from 0.5 to 0.9999, e.g. 0.95")?
            }
            ("slo", "slots") => self.slo.slots = parse_u32(k, v, 1, 4096)?,
            ("slo", "metric") => {
                self.slo.fallback.metric =
                    parse_metric(k, v, &[Metric::Load, Metric::Waiting, Metric::Running])?
            }
            ("slo", "target") => self.slo.fallback.target = positive(k, v)?,
            ("slo", "tolerance") => {
                self.slo.fallback.tolerance = parse_f64(k, v, 0.0, 0.99, "a number from 0 to 0.99")?
            }
            ("slo", "scaleDownWindow") => self.slo.fallback.scale_down_window = window(k, v)?,
            ("tokens", "prefillCapacity") => self.tokens.prefill_capacity = capacity(k, v)?,
            ("tokens", "decodeCapacity") => self.tokens.decode_capacity = capacity(k, v)?,
            ("tokens", "prefillDecodeRatio") => self.tokens.prefill_decode_ratio = positive(k, v)?,
            ("tokens", "utilization") => {
                self.tokens.utilization = parse_f64(k, v, 0.05, 1.0, "a fraction from 0.05 to 1")?
            }
            ("tokens", "saturation") => {
                self.tokens.saturation = parse_f64(k, v, 1.0, 100.0, "a multiple of the slots from 1 to 100")?
            }
            ("tokens", "window") => {
                self.tokens.window = window(k, v)?;
                if self.tokens.window < Duration::from_secs(1) {
                    return Err(SpecError::Invalid {
                        key: k.into(),
                        value: v.into(),
                        expected: "a duration from 1s to 1h".into(),
                    });
                }
            }
            ("tokens", "kvTarget") => {
                self.tokens.kv_target = parse_f64(k, v, 0.05, 1.0, "a fraction from 0.05 to 1")?
            }
            ("tokens", "slots") => self.tokens.slots = capacity(k, v)?,
            ("tokens", "backlogWindow") => self.tokens.backlog_window = window(k, v)?,
            ("tokens", "tolerance") => {
                self.tokens.tolerance = parse_f64(k, v, 0.0, 0.99, "a number from 0 to 0.99")?
            }
            ("tokens", "scaleDownWindow") => self.tokens.scale_down_window = window(k, v)?,
            ("tokens", "queueScaleDownWindow") => self.tokens.queue_scale_down_window = window(k, v)?,
            ("gpu", "metric") => {
                self.gpu.metric = parse_metric(k, v, &[Metric::GpuUtilization, Metric::KvCacheUsage])?
            }
            ("gpu", "target") => self.gpu.target = parse_f64(k, v, 0.01, 1.0, "a ratio from 0.01 to 1")?,
            ("gpu", "tolerance") => {
                self.gpu.tolerance = parse_f64(k, v, 0.0, 0.99, "a number from 0 to 0.99")?
            }
            ("gpu", "scaleDownWindow") => self.gpu.scale_down_window = window(k, v)?,
            ("hpa", "metric") => self.hpa_metric = parse_metric(k, v, &Metric::ALL)?,
            ("hpa", "target") => self.hpa_target = positive(k, v)?,
            ("hpa", "targetType") => {
                self.hpa_target_type = match v.trim() {
                    "averageValue" => TargetType::AverageValue,
                    "value" => TargetType::Value,
                    "podAverage" => TargetType::PodAverage,
                    _ => {
                        return Err(SpecError::Invalid {
                            key: k.into(),
                            value: v.into(),
                            expected: "averageValue, value or podAverage".into(),
                        });
                    }
                }
            }
            ("hpa", "behavior") => {
                self.hpa_legacy = match v.trim() {
                    "default" => false,
                    "legacy" => true,
                    _ => {
                        return Err(SpecError::Invalid {
                            key: k.into(),
                            value: v.into(),
                            expected: "default or legacy".into(),
                        });
                    }
                }
            }
            ("hpa", "tolerance") => {
                self.hpa_tolerance = parse_f64(k, v, 0.0, 0.99, "a number from 0 to 0.99")?;
                self.behavior.scale_up.tolerance = self.hpa_tolerance;
                self.behavior.scale_down.tolerance = self.hpa_tolerance;
            }
            ("hpa", "scaleUpWindow") => self.behavior.scale_up.stabilization_window = window(k, v)?,
            ("hpa", "scaleDownWindow") => self.behavior.scale_down.stabilization_window = window(k, v)?,
            ("hpa", "scaleUpPolicies") => self.behavior.scale_up.policies = parse_scaling_policies(k, v)?,
            ("hpa", "scaleDownPolicies") => self.behavior.scale_down.policies = parse_scaling_policies(k, v)?,
            ("hpa", "scaleUpSelect") => self.behavior.scale_up.select_policy = parse_select(k, v)?,
            ("hpa", "scaleDownSelect") => self.behavior.scale_down.select_policy = parse_select(k, v)?,
            ("kpa", "metric") => {
                self.kpa.metric = match v.trim() {
                    "concurrency" => Metric::Load,
                    "rps" => Metric::ArrivalRate,
                    _ => {
                        return Err(SpecError::Invalid {
                            key: k.into(),
                            value: v.into(),
                            expected: "concurrency or rps".into(),
                        });
                    }
                }
            }
            ("kpa", "target") => {
                self.kpa_target = Some(positive(k, v)?);
            }
            ("kpa", "targetUtilization") => {
                self.kpa.target_utilization = parse_f64(k, v, 0.01, 1.0, "a fraction from 0.01 to 1")?
            }
            ("kpa", "stableWindow") => {
                let d = parse_duration(k, v)?;
                if d < Duration::from_secs(6) || d > Duration::from_secs(3600) || d.subsec_nanos() != 0 {
                    return Err(SpecError::Invalid {
                        key: k.into(),
                        value: v.into(),
                        expected: "whole seconds from 6s to 1h".into(),
                    });
                }
                self.kpa.stable_window = d;
            }
            ("kpa", "panicWindowPercentage") => {
                self.kpa.panic_window_percentage = parse_f64(k, v, 1.0, 100.0, "a percentage from 1 to 100")?
            }
            ("kpa", "panicThresholdPercentage") => {
                self.kpa.panic_threshold =
                    parse_f64(k, v, 110.0, 1000.0, "a percentage from 110 to 1000")? / 100.0
            }
            ("kpa", "maxScaleUpRate") => {
                self.kpa.max_scale_up_rate = parse_f64(k, v, 1.000_001, 1e9, "a number > 1")?
            }
            ("kpa", "maxScaleDownRate") => {
                self.kpa.max_scale_down_rate = parse_f64(k, v, 1.000_001, 1e9, "a number > 1")?
            }
            ("kpa", "scaleToZeroGrace") => {
                self.kpa.scale_to_zero_grace = window(k, v)?;
                if self.kpa.scale_to_zero_grace.is_zero() {
                    return Err(SpecError::Invalid {
                        key: k.into(),
                        value: v.into(),
                        expected: "a duration > 0".into(),
                    });
                }
            }
            ("kpa", "scaleDownDelay") => self.kpa.scale_down_delay = window(k, v)?,
            ("kpa", "activationScale") => self.kpa.activation_scale = parse_u32(k, v, 1, 100_000)?,
            _ => {
                return Err(SpecError::UnknownKey {
                    key: k.into(),
                    allowed: String::new(),
                });
            }
        }
        Ok(())
    }

    /// The settings each policy gets, with the rules between keys applied.
    fn resolve(mut self) -> Result<Resolved, SpecError> {
        if let KeepAliveConfig::Adaptive(a) = &mut self.keep_alive {
            a.cold_start = self.cold_start;
        }
        let metric_default = if self.kpa.metric == Metric::ArrivalRate {
            200.0
        } else {
            self.kpa.target
        };
        self.kpa.target = self.kpa_target.unwrap_or(metric_default);
        let target = match self.hpa_target_type {
            TargetType::AverageValue => HpaTarget::AverageValue(self.hpa_target),
            TargetType::Value => HpaTarget::Value(self.hpa_target),
            TargetType::PodAverage => HpaTarget::PodAverage(self.hpa_target),
        };
        Ok(Resolved {
            bounds: Bounds::new(self.min, self.max)?,
            keep_alive: self.keep_alive,
            safety: self.safety,
            demand: self.demand,
            queue: self.queue,
            slo: self.slo,
            gpu: self.gpu,
            tokens: self.tokens,
            kpa: self.kpa,
            hpa: HpaConfig {
                metrics: vec![HpaMetric {
                    metric: self.hpa_metric,
                    target,
                }],
                behavior: (!self.hpa_legacy).then_some(self.behavior),
                legacy_tolerance: self.hpa_tolerance,
                ..HpaConfig::default()
            },
        })
    }
}

/// Build an autoscaler from a policy spec and `key=value` parameters.
pub fn build<K: AsRef<str>, V: AsRef<str>>(spec: &str, params: &[(K, V)]) -> Result<Autoscaler, SpecError> {
    let names = policy_names(spec)?;
    let mut p = Params::default();
    for (k, v) in params {
        let (k, v) = (k.as_ref(), v.as_ref());
        let (policy, name) = k.split_once('.').unwrap_or(("", k));
        if !policy.is_empty() && !names.contains(&policy) {
            return Err(unused_key(k, spec, &names));
        }
        p.set(policy, name, k, v).map_err(|e| match e {
            SpecError::UnknownKey { key, .. } => SpecError::UnknownKey {
                key,
                allowed: allowed_keys(&names),
            },
            e => e,
        })?;
    }
    let r = p.resolve()?;
    let mut policies: Vec<Box<dyn Policy>> = Vec::with_capacity(names.len());
    for part in spec.split('+') {
        let p: Box<dyn Policy> = match part.trim() {
            "hpa" => Box::new(Hpa::new(r.hpa.clone())),
            "kpa" => Box::new(Kpa::new(r.kpa.clone())),
            "queue" => Box::new(Queue::new(r.queue.clone())),
            "slo" => Box::new(Slo::new(r.slo.clone())),
            "gpu" => Box::new(Gpu::new(r.gpu.clone())),
            "tokens" | DEFAULT_POLICY => Box::new(Tokens::new(r.tokens.clone())),
            p => Box::new(Fixed(parse_u32("fixed", &p[6..], 0, 100_000)?)),
        };
        policies.push(p);
    }
    Ok(Autoscaler::new(policies, r.bounds, r.keep_alive)
        .with_safety(r.safety)
        .with_demand(r.demand))
}

/// Parse `key=value` words (as given on a command line) into pairs.
pub fn parse_params<'a>(
    words: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, SpecError> {
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| SpecError::Invalid {
                    key: w.into(),
                    value: String::new(),
                    expected: "key=value, e.g. queue.target=4".into(),
                })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every documented default (what docs/configuration.md and docs/policies.md print), given
    /// explicitly, reads the same as leaving the key out: the table cannot drift from the code.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let mut explicit = Params::default();
        for k in KEYS {
            explicit
                .set(k.policy, k.name, k.name, k.default)
                .unwrap_or_else(|e| panic!("{}.{} = {}: {e}", k.policy, k.name, k.default));
        }
        assert_eq!(explicit.resolve().unwrap(), Params::default().resolve().unwrap());
        // The comparison sees a changed value.
        let mut changed = Params::default();
        changed.set("queue", "target", "queue.target", "5").unwrap();
        assert_ne!(changed.resolve().unwrap(), Params::default().resolve().unwrap());
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(brief_to("abc", 10), "abc");
        let long = "é".repeat(1000);
        let q = brief_to(&long, 11);
        assert!(q.len() < 40 && q.ends_with("(2000 bytes)"), "{q}");
    }
}
