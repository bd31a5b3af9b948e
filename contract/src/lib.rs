//! gpuscale-contract, the collector-to-scaler contract: the series a gpuscale collector exports for the scaler,
//! their labels and units, and the rules both sides apply. The collector writes these names
//! (`gpuscale_collector::exposition`) and the scaler reads them (`gpuscale_scaler::aggregate`) from this
//! one module, so neither side can drift by editing a string literal.
//!
//! | series | labels | unit / value | meaning |
//! |---|---|---|---|
//! | `gpuscale_collector_info` | `node`, `version`, `contract` | 1 | identity: a page without it is not a gpuscale collector |
//! | `gpuscale_collector_last_tick_timestamp_seconds` | `node` | Unix seconds, collector's clock | when the page was rendered |
//! | `gpuscale_scrape_up` | `namespace`, `workload`, `pod`, `target`, `node` | 0/1 | the last scrape of the target answered a page that parsed |
//! | `gpuscale_scrape_reading_valid` | same, plus `reason` when 0 | 0/1 | the page held a plausible queue reading ([`Fault`] codes) |
//! | `gpuscale_scrape_timestamp_seconds` | same as `scrape_up` | Unix seconds, collector's clock | when that target's reading was measured |
//! | `gpuscale_workload_requests_waiting` | `namespace`, `workload`, `pod`, `server`, `target`, `node` | requests | queued, not yet served |
//! | `gpuscale_workload_requests_running` | same | requests | in service |
//! | `gpuscale_workload_kv_cache_usage_ratio` | same | 0-1 | KV-cache usage |
//! | `gpuscale_workload_prompt_tokens_per_second` | same | tokens/s | prompt tokens computed, over the last [`TOKEN_RATE_WINDOW_SECS`] |
//! | `gpuscale_workload_generation_tokens_per_second` | same | tokens/s | output tokens generated, same window |
//! | `gpuscale_gpu_info` | `gpu`, `uuid`, `model`, `node`, and `namespace`, `pod`, `container` when held | 1 | one per GPU and holder: capacity |
//! | `gpuscale_gpu_utilization_ratio` | as `gpu_info` | 0-1 | SM utilization, attributed to the pod holding the GPU |
//!
//! Rules:
//! - The scaler asks for OpenMetrics and refuses a page without `# EOF` (truncated). It asks
//!   for `series=contract`, the families of [`SCALER_FAMILIES`] only; a collector that does
//!   not know the parameter serves the whole page, which reads the same.
//! - A target's queue is known only when `scrape_up` and `reading_valid` are 1 and at least one
//!   of its waiting/running series is on the page; the reading's age is measured from
//!   `scrape_timestamp_seconds`, never from when the scaler received the page.
//! - Token rates come from the server's counters over consecutive reads; a target has none until
//!   two reads span time, and none across a counter reset. A workload's rate is known only when
//!   every target with a valid reading has one: a partial sum is not the workload's rate.
//! - A target without a namespace belongs to [`DEFAULT_NAMESPACE`], as `kubectl` assumes; the
//!   collector writes the namespace out, and the scaler applies the same rule to a series that
//!   lacks the label.
//!
//! Also here, as both sides and the activator name them: [`WorkloadKey`] (what is scaled) and
//! [`Clock`] (the process clock the policies take as `now`). This crate depends on nothing but
//! `serde`, so every other gpuscale crate can use it.

use std::fmt;
use std::time::{Duration, Instant};

/// Set on a collector's `/metrics` answer to `stream=1&wait=W`: the answer is a stream of
/// OpenMetrics pages, each whole and ending in `# EOF`: the current page at once, then every
/// page whose readings changed, or the current one after `W` without a change (the heartbeat,
/// so silence on the stream always means a fault). An answer without it is one page, as from
/// a collector that does not stream (the reader then holds reads instead).
pub const STREAM_HEADER: &str = "x-gpuscale-stream";

/// Identity series; value 1.
pub const COLLECTOR_INFO: &str = "gpuscale_collector_info";
/// The contract's version, a label on [`COLLECTOR_INFO`]; the scaler refuses other versions.
pub const CONTRACT_VERSION: &str = "1";
/// When the page was rendered, Unix seconds on the collector's clock.
pub const LAST_TICK: &str = "gpuscale_collector_last_tick_timestamp_seconds";
/// Whether the last scrape of a target answered a page that parsed.
pub const SCRAPE_UP: &str = "gpuscale_scrape_up";
/// Whether that page held a plausible queue reading; `reason` says why not.
pub const READING_VALID: &str = "gpuscale_scrape_reading_valid";
/// When a target's reading was measured, Unix seconds on the collector's clock.
pub const SCRAPE_TIMESTAMP: &str = "gpuscale_scrape_timestamp_seconds";
/// Requests queued at a model server.
pub const WAITING: &str = "gpuscale_workload_requests_waiting";
/// Requests in service at a model server.
pub const RUNNING: &str = "gpuscale_workload_requests_running";
/// KV-cache usage of a model server, 0-1.
pub const KV_CACHE: &str = "gpuscale_workload_kv_cache_usage_ratio";
/// Prompt tokens a model server computed per second.
pub const PROMPT_TOKENS_RATE: &str = "gpuscale_workload_prompt_tokens_per_second";
/// Output tokens a model server generated per second.
pub const GENERATION_TOKENS_RATE: &str = "gpuscale_workload_generation_tokens_per_second";
/// Seconds of counter history behind a token rate.
pub const TOKEN_RATE_WINDOW_SECS: f64 = 10.0;
/// More tokens per second than this from one server is not a real rate.
pub const MAX_TOKENS_PER_SECOND: f64 = 1e8;

/// The families the scaler reads: what a collector serves for `/metrics?series=contract`, a
/// page a third the size of the whole one (GPU memory, power, clocks, errors and the
/// collector's own timings left out), so a scaler holding thousands of nodes parses a third.
pub const SCALER_FAMILIES: [&str; 12] = [
    COLLECTOR_INFO,
    LAST_TICK,
    SCRAPE_UP,
    READING_VALID,
    SCRAPE_TIMESTAMP,
    WAITING,
    RUNNING,
    KV_CACHE,
    PROMPT_TOKENS_RATE,
    GENERATION_TOKENS_RATE,
    GPU_INFO,
    GPU_UTILIZATION,
];

/// Whether a token rate can be real: finite, not negative, not beyond [`MAX_TOKENS_PER_SECOND`].
pub fn plausible_tokens_rate(v: f64) -> bool {
    v.is_finite() && (0.0..=MAX_TOKENS_PER_SECOND).contains(&v)
}

/// One per GPU and container holding it.
pub const GPU_INFO: &str = "gpuscale_gpu_info";
/// SM utilization, 0-1.
pub const GPU_UTILIZATION: &str = "gpuscale_gpu_utilization_ratio";

/// Label names.
pub mod label {
    /// Namespace of the workload (or of the pod holding a GPU).
    pub const NAMESPACE: &str = "namespace";
    /// The Deployment a target serves.
    pub const WORKLOAD: &str = "workload";
    /// The pod a target runs in, or the pod holding a GPU.
    pub const POD: &str = "pod";
    /// The target's URL, with secrets redacted.
    pub const TARGET: &str = "target";
    /// The node.
    pub const NODE: &str = "node";
    /// GPU product.
    pub const MODEL: &str = "model";
    /// A [`super::Fault`] code.
    pub const REASON: &str = "reason";
    /// The collector's version, on [`super::COLLECTOR_INFO`].
    pub const VERSION: &str = "version";
    /// The contract's version, on [`super::COLLECTOR_INFO`].
    pub const CONTRACT: &str = "contract";
}

/// The namespace of a target given without one, on both sides.
pub const DEFAULT_NAMESPACE: &str = "default";

/// More requests than this waiting or running on one server is not a real reading.
pub const MAX_REQUESTS: f64 = 1e6;

/// Why a target has no valid reading: the `reason` label of [`READING_VALID`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Not scraped yet.
    Pending,
    /// Connection refused, HTTP error status, body not UTF-8.
    Http,
    /// No complete answer within the scrape timeout.
    Timeout,
    /// The page is over the size limit.
    TooLarge,
    /// The page does not parse (or repeats a series).
    Parse,
    /// The page parsed but holds no queue metric the preset (or custom names) knows.
    NoQueueMetrics,
    /// A queue value is NaN or infinite.
    NotFinite,
    /// A queue value is negative.
    Negative,
    /// A queue value is beyond [`MAX_REQUESTS`], or a ratio beyond 0-1.
    Implausible,
}

impl Fault {
    /// Every code, for parsing and docs.
    pub const ALL: [Fault; 9] = [
        Fault::Pending,
        Fault::Http,
        Fault::Timeout,
        Fault::TooLarge,
        Fault::Parse,
        Fault::NoQueueMetrics,
        Fault::NotFinite,
        Fault::Negative,
        Fault::Implausible,
    ];

    /// The label value.
    pub fn code(self) -> &'static str {
        match self {
            Fault::Pending => "pending",
            Fault::Http => "http",
            Fault::Timeout => "timeout",
            Fault::TooLarge => "too_large",
            Fault::Parse => "parse",
            Fault::NoQueueMetrics => "no_queue_metrics",
            Fault::NotFinite => "not_finite",
            Fault::Negative => "negative",
            Fault::Implausible => "implausible",
        }
    }

    /// From a label value.
    pub fn from_code(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.code() == s)
    }

    /// What it means and what to do, for the scaler's reasons.
    pub fn explain(self) -> &'static str {
        match self {
            Fault::Pending => "not scraped yet",
            Fault::Http => "the scrape failed (connection or HTTP error)",
            Fault::Timeout => "the scrape timed out",
            Fault::TooLarge => "the page is over the collector's --max-page-bytes",
            Fault::Parse => "the page does not parse",
            Fault::NoQueueMetrics => {
                "the page holds no queue metric: is it the model server's metrics port? set the collector's --preset or --waiting-metric"
            }
            Fault::NotFinite => "a queue value is NaN or infinite",
            Fault::Negative => "a queue value is negative",
            Fault::Implausible => "a queue value is implausibly large (or a ratio outside 0-1)",
        }
    }
}

/// Check a reading at the source: `None` when plausible.
pub fn check_reading(waiting: Option<f64>, running: Option<f64>, kv_cache: Option<f64>) -> Option<Fault> {
    if waiting.is_none() && running.is_none() {
        return Some(Fault::NoQueueMetrics);
    }
    for v in [waiting, running, kv_cache].into_iter().flatten() {
        if !v.is_finite() {
            return Some(Fault::NotFinite);
        }
        if v < 0.0 {
            return Some(Fault::Negative);
        }
    }
    if [waiting, running].into_iter().flatten().any(|v| v > MAX_REQUESTS)
        || kv_cache.is_some_and(|k| k > 1.0 + 1e-9)
    {
        return Some(Fault::Implausible);
    }
    None
}

/// The query parameters of the collector-to-scaler protocol: never secrets, and what an error
/// about a collector's answer needs to show (`series=contract&wait=5&stream=1`).
pub const PROTOCOL_PARAMS: [&str; 4] = ["series", "wait", "after", "stream"];

/// A URL with its secrets hidden: userinfo becomes `***@` and every query value `***` but
/// those of [`PROTOCOL_PARAMS`], for logs, labels, debug pages and error messages.
pub fn redact_url(url: &str) -> String {
    let (before_fragment, _) = url.split_once('#').unwrap_or((url, ""));
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let (scheme, rest) = match base.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), base),
    };
    let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut out = match auth.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}{path}"),
        None => base.to_string(),
    };
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if PROTOCOL_PARAMS.contains(&k) => kv.to_string(),
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// A namespace and a Deployment name: what is scaled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The process clock: a [`Duration`] since start, what the policies take as `now`.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    /// Starts now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Time since start.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_code(f.code()), Some(f));
        }
        assert_eq!(Fault::from_code("x"), None);
    }

    #[test]
    fn readings_are_checked() {
        assert_eq!(check_reading(Some(3.0), Some(1.0), Some(0.5)), None);
        assert_eq!(check_reading(Some(3.0), None, None), None);
        assert_eq!(check_reading(None, None, Some(0.5)), Some(Fault::NoQueueMetrics));
        assert_eq!(check_reading(Some(f64::NAN), None, None), Some(Fault::NotFinite));
        assert_eq!(
            check_reading(Some(f64::INFINITY), None, None),
            Some(Fault::NotFinite)
        );
        assert_eq!(check_reading(Some(-1.0), None, None), Some(Fault::Negative));
        assert_eq!(check_reading(Some(2e6), None, None), Some(Fault::Implausible));
        assert_eq!(
            check_reading(Some(1.0), None, Some(1.5)),
            Some(Fault::Implausible)
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("http://user:pw@h:1/metrics?token=abc&x=1"),
            "http://***@h:1/metrics?token=***&x=***"
        );
        assert_eq!(redact_url("http://h:1/metrics"), "http://h:1/metrics");
        // The protocol's own parameters stay readable; anything else is hidden.
        assert_eq!(
            redact_url("http://h:1/metrics?series=contract&wait=5&after=17.5&stream=1&key=s3cret"),
            "http://h:1/metrics?series=contract&wait=5&after=17.5&stream=1&key=***"
        );
        assert_eq!(redact_url("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(redact_url("u:p@h:1"), "***@h:1");
        assert_eq!(redact_url("h:1"), "h:1");
    }
}
