//! What a policy sees of one workload at one instant.

use std::time::Duration;

use serde::Serialize;

/// One measured value and how old it is.
///
/// The age travels with the value because the scaler polls collectors on an interval and the
/// simulator models a scrape lag: a policy must be able to tell a fresh zero from a stale one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Reading {
    /// The value in base units (requests, ratio 0-1, requests/s, seconds).
    pub value: f64,
    /// Time since the value was measured.
    #[serde(with = "duration_secs")]
    pub age: Duration,
}

impl Reading {
    /// A reading measured just now.
    pub fn fresh(value: f64) -> Self {
        Reading {
            value,
            age: Duration::ZERO,
        }
    }

    /// A reading measured `age` ago.
    pub fn aged(value: f64, age: Duration) -> Self {
        Reading { value, age }
    }
}

/// Lifecycle of one pod, as the HPA groups pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// Scheduled or unscheduled but not running yet (image pull, node provisioning).
    Pending,
    /// Running; for the custom metrics gpuscale reads, HPA counts these as ready.
    Running,
    /// Being deleted or failed: HPA ignores these pods entirely.
    Terminating,
}

/// Per-pod values, for HPA `Pods` metrics whose missing-metric and unready-pod rules need them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PodSignals {
    /// Where the pod is in its life.
    pub phase: PodPhase,
    /// Requests waiting in this pod's queue; `None` when its scrape failed.
    pub waiting: Option<f64>,
    /// Requests being served by this pod.
    pub running: Option<f64>,
    /// KV-cache usage of this pod, 0-1.
    pub kv_cache_usage: Option<f64>,
    /// GPU utilization of this pod's GPUs, 0-1.
    pub gpu_utilization: Option<f64>,
}

impl PodSignals {
    /// This pod's value of `metric`, if it reported it.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Load => Some(self.waiting? + self.running?),
            Metric::Waiting => self.waiting,
            Metric::Running => self.running,
            Metric::KvCacheUsage => self.kv_cache_usage,
            Metric::GpuUtilization => self.gpu_utilization,
            Metric::ArrivalRate => None,
        }
    }
}

/// Everything a policy may read about one workload at one instant.
///
/// Replica counts come from the workload's own status (or the simulator's serving model) and
/// are taken as current; every measured signal carries its age, and `None` means never measured.
/// Queue and request counts are totals over the workload; utilizations are means over its ready
/// replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Signals {
    /// Replicas the workload is asked to run now (`scale.spec.replicas`).
    pub current: u32,
    /// Replicas ready to serve.
    pub ready: u32,
    /// Replicas asked for but not ready yet (pending, pulling, loading a model).
    pub starting: u32,
    /// Requests queued, not yet being served (vLLM `num_requests_waiting`, TGI `queue_size`).
    pub waiting: Option<Reading>,
    /// Requests being served (vLLM `num_requests_running`, batch occupancy).
    pub running: Option<Reading>,
    /// Mean KV-cache usage, 0-1.
    pub kv_cache_usage: Option<Reading>,
    /// Mean GPU utilization, 0-1.
    pub gpu_utilization: Option<Reading>,
    /// Request arrival rate, requests/s.
    pub arrival_rate: Option<Reading>,
    /// Mean service time of one request, seconds.
    pub service_time: Option<Reading>,
    /// Prompt tokens the workload's servers computed per second (vLLM
    /// `rate(prompt_tokens_total)`), summed over its pods.
    pub prompt_tokens_rate: Option<Reading>,
    /// Output tokens the workload's servers generated per second (vLLM
    /// `rate(generation_tokens_total)`), summed over its pods.
    pub generation_tokens_rate: Option<Reading>,
    /// Per-pod breakdown, when the source has one (needed by HPA `Pods` metrics only).
    pub pods: Vec<PodSignals>,
}

impl Signals {
    /// The reading behind one signal kind.
    pub fn reading(&self, kind: SignalKind) -> Option<Reading> {
        match kind {
            SignalKind::Waiting => self.waiting,
            SignalKind::Running => self.running,
            SignalKind::KvCacheUsage => self.kv_cache_usage,
            SignalKind::GpuUtilization => self.gpu_utilization,
            SignalKind::ArrivalRate => self.arrival_rate,
            SignalKind::ServiceTime => self.service_time,
            SignalKind::PromptTokensRate => self.prompt_tokens_rate,
            SignalKind::GenerationTokensRate => self.generation_tokens_rate,
        }
    }

    /// `ready + starting`: what the workload's status reports as its replica count.
    pub fn status_replicas(&self) -> u32 {
        self.ready.saturating_add(self.starting)
    }

    /// The value of `metric` if every signal behind it is present and no older than `max_age`;
    /// otherwise which signal failed and how.
    pub fn metric(&self, metric: Metric, max_age: Duration) -> Result<f64, SignalFault> {
        let mut total = 0.0;
        for &kind in metric.signals() {
            total += self.fresh(kind, max_age)?;
        }
        Ok(total)
    }

    /// One signal's value if present, finite and fresh.
    pub fn fresh(&self, kind: SignalKind, max_age: Duration) -> Result<f64, SignalFault> {
        match self.reading(kind) {
            None => Err(SignalFault::Missing(kind)),
            Some(r) if !r.value.is_finite() || r.value < 0.0 => Err(SignalFault::Invalid(kind)),
            Some(r) if r.age > max_age => Err(SignalFault::Stale(kind)),
            Some(r) => Ok(r.value),
        }
    }
}

/// The measured signals, one per field of [`Signals`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// [`Signals::waiting`]
    Waiting,
    /// [`Signals::running`]
    Running,
    /// [`Signals::kv_cache_usage`]
    KvCacheUsage,
    /// [`Signals::gpu_utilization`]
    GpuUtilization,
    /// [`Signals::arrival_rate`]
    ArrivalRate,
    /// [`Signals::service_time`]
    ServiceTime,
    /// [`Signals::prompt_tokens_rate`]
    PromptTokensRate,
    /// [`Signals::generation_tokens_rate`]
    GenerationTokensRate,
}

impl SignalKind {
    /// Stable snake_case name, as used in reasons and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Waiting => "waiting",
            SignalKind::Running => "running",
            SignalKind::KvCacheUsage => "kv_cache_usage",
            SignalKind::GpuUtilization => "gpu_utilization",
            SignalKind::ArrivalRate => "arrival_rate",
            SignalKind::ServiceTime => "service_time",
            SignalKind::PromptTokensRate => "prompt_tokens_rate",
            SignalKind::GenerationTokensRate => "generation_tokens_rate",
        }
    }
}

/// Why a signal could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", content = "signal", rename_all = "snake_case")]
pub enum SignalFault {
    /// Never measured.
    Missing(SignalKind),
    /// Older than the allowed age.
    Stale(SignalKind),
    /// NaN, infinite or negative.
    Invalid(SignalKind),
}

impl SignalFault {
    /// The signal at fault.
    pub fn signal(self) -> SignalKind {
        match self {
            SignalFault::Missing(k) | SignalFault::Stale(k) | SignalFault::Invalid(k) => k,
        }
    }
}

/// A quantity a policy scales on, built from one or more signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `waiting + running`: the in-flight demand, what Knative calls concurrency.
    Load,
    /// Queued requests only (for servers that report no running count).
    Waiting,
    /// Requests in service only.
    Running,
    /// Mean KV-cache usage, 0-1.
    KvCacheUsage,
    /// Mean GPU utilization, 0-1.
    GpuUtilization,
    /// Requests per second.
    ArrivalRate,
}

impl Metric {
    /// The signals this metric is made of.
    pub fn signals(self) -> &'static [SignalKind] {
        match self {
            Metric::Load => &[SignalKind::Waiting, SignalKind::Running],
            Metric::Waiting => &[SignalKind::Waiting],
            Metric::Running => &[SignalKind::Running],
            Metric::KvCacheUsage => &[SignalKind::KvCacheUsage],
            Metric::GpuUtilization => &[SignalKind::GpuUtilization],
            Metric::ArrivalRate => &[SignalKind::ArrivalRate],
        }
    }

    /// Stable name, as accepted in policy parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Load => "load",
            Metric::Waiting => "waiting",
            Metric::Running => "running",
            Metric::KvCacheUsage => "kv_cache_usage",
            Metric::GpuUtilization => "gpu_utilization",
            Metric::ArrivalRate => "arrival_rate",
        }
    }

    /// Every metric, in documentation order.
    pub const ALL: [Metric; 6] = [
        Metric::Load,
        Metric::Waiting,
        Metric::Running,
        Metric::KvCacheUsage,
        Metric::GpuUtilization,
        Metric::ArrivalRate,
    ];

    /// Parse a name produced by [`Metric::as_str`].
    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

pub(crate) mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
