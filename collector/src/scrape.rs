//! Queue depth from model servers: scrape targets, per-server presets, and the fetch itself
//! (bounded in time and size).

use std::time::Duration;

use thiserror::Error;

use crate::text::{Limits, MetricFamily};

/// The forms `--collector`, `--scrape-target` and activator upstreams accept, for errors.
pub const URL_FORMS: &str = "HOST:PORT (means http://HOST:PORT/metrics), http://HOST:PORT (the same), or a full http://HOST:PORT/PATH";

/// Normalise a metrics address: `host:port` and `http://host:port` mean `/metrics` (as
/// Prometheus' `metrics_path` default), a URL with a path is kept as it is, and a bad scheme,
/// host or port is refused with the accepted forms. `flag` names the input in the error.
pub fn metrics_url(flag: &str, input: &str) -> Result<String, String> {
    normalize_url(flag, input, "/metrics")
}

/// As [`metrics_url`], with `default_path` for an address given without a path.
pub fn normalize_url(flag: &str, input: &str, default_path: &str) -> Result<String, String> {
    let input = input.trim();
    let shown = crate::contract::quote(&crate::contract::redact_url(input), 200).into_owned();
    let bad = |why: &str| format!("{flag} `{shown}`: {why}; accepted: {URL_FORMS}");
    let rest = match input.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(bad(
                "https is not supported (this build has no TLS client): use http on the cluster network",
            ));
        }
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unsupported scheme `{}`",
                crate::contract::quote(scheme, 20)
            )));
        }
        None => input,
    };
    if rest.contains("://") {
        return Err(bad("more than one scheme"));
    }
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Err(bad("unclosed `[` in an IPv6 address")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let host_ok = hostport.starts_with('[')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host_ok {
        return Err(bad(&format!(
            "`{}` is not a host name or address",
            crate::contract::quote(host, 80)
        )));
    }
    match port {
        None if input.contains("://") => {}
        None => return Err(bad("no port")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => {
                return Err(bad(&format!(
                    "`{}` is not a port (1-65535)",
                    crate::contract::quote(p, 20)
                )));
            }
        },
    }
    let path = match path {
        "" | "/" => default_path.to_string(),
        p if p.starts_with('?') => format!("{default_path}{p}"),
        p => p.to_string(),
    };
    Ok(format!("http://{authority}{path}"))
}

/// One static scrape target: `[NAMESPACE/WORKLOAD=]URL`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Namespace of the workload it serves ([`crate::contract::DEFAULT_NAMESPACE`] when not
    /// given, the rule the scaler applies too).
    pub namespace: String,
    /// The workload (Deployment) it serves; defaults to the URL's host:port.
    pub workload: String,
    /// The pod it runs in ("" for static targets).
    pub pod: String,
    /// The model server's metrics URL.
    pub url: String,
}

impl Target {
    /// Parse `[NAMESPACE/WORKLOAD=]URL`; the URL takes the forms of [`metrics_url`].
    pub fn parse(s: &str) -> Result<Target, String> {
        let (name, url) = match s.split_once('=') {
            Some((n, u)) if !n.contains("://") && !n.contains('?') => (Some(n), u),
            _ => (None, s),
        };
        let url = metrics_url("--scrape-target", url)?;
        let host = url
            .trim_start_matches("http://")
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let shown = crate::contract::quote(&crate::contract::redact_url(s), 200).into_owned();
        let (namespace, workload) = match name {
            None => (crate::contract::DEFAULT_NAMESPACE.to_string(), host.to_string()),
            Some(n) => match n.split_once('/') {
                Some((ns, w)) if !ns.is_empty() && !w.is_empty() => (ns.to_string(), w.to_string()),
                None if !n.is_empty() => (crate::contract::DEFAULT_NAMESPACE.to_string(), n.to_string()),
                _ => {
                    return Err(format!(
                        "--scrape-target `{shown}`: expected NAMESPACE/WORKLOAD before `=` (e.g. llm/qwen=http://10.0.3.7:8000/metrics)"
                    ));
                }
            },
        };
        Ok(Target {
            namespace,
            workload,
            pod: String::new(),
            url,
        })
    }
}

/// Which model server a page comes from, and so which metrics mean queue depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Recognise the server from the metric names on the page.
    Auto,
    /// vLLM: `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`.
    Vllm,
    /// SGLang: `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`.
    Sglang,
    /// TGI: `tgi_queue_size`, `tgi_batch_current_size`.
    Tgi,
    /// Triton: `nv_inference_pending_request_count` (summed over models), or the TensorRT-LLM
    /// backend's `nv_trt_llm_request_metrics{request_type="waiting"|"active"}`.
    Triton,
    /// Knative queue-proxy: `queue_average_concurrent_requests` (every request the proxy
    /// holds, queued or in service: reported as running, with waiting 0).
    Knative,
    /// llm-d's endpoint picker (EPP) in front of an InferencePool: the gateway's own queue,
    /// `llm_d_epp_flow_control_queue_size`, requests in flight, `llm_d_epp_request_running`,
    /// and the pool's mean KV-cache use, `llm_d_epp_average_kv_cache_utilization` (or the
    /// deprecated `inference_extension_flow_control_queue_size`,
    /// `inference_objective_running_requests`, `inference_pool_average_kv_cache_utilization`).
    Epp,
}

impl Preset {
    /// Stable name, used as the `server` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Auto => "auto",
            Preset::Vllm => "vllm",
            Preset::Sglang => "sglang",
            Preset::Tgi => "tgi",
            Preset::Triton => "triton",
            Preset::Knative => "knative",
            Preset::Epp => "epp",
        }
    }
}

/// Metric names given by the user, overriding the preset for that signal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomNames {
    /// Requests waiting.
    pub waiting: Option<String>,
    /// Requests running.
    pub running: Option<String>,
    /// KV-cache usage, 0-1.
    pub kv_cache: Option<String>,
}

/// What one page says about queue depth.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDepth {
    /// The server recognised.
    pub server: Preset,
    /// Requests waiting (sum over models/engines on the page).
    pub waiting: Option<f64>,
    /// Requests running.
    pub running: Option<f64>,
    /// KV-cache usage (mean over engines), 0-1.
    pub kv_cache: Option<f64>,
    /// Prompt tokens computed since the server started (a counter; sum over engines).
    pub prompt_tokens: Option<f64>,
    /// Output tokens generated since the server started (a counter).
    pub generation_tokens: Option<f64>,
}

fn sum(fams: &[MetricFamily], name: &str, filter: Option<(&str, &str)>) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for s in fams.iter().flat_map(|f| &f.samples).filter(|s| s.name == name) {
        if filter.is_some_and(|(k, v)| s.label(k) != Some(v)) {
            continue;
        }
        found = true;
        total += s.value;
    }
    found.then_some(total)
}

fn mean(fams: &[MetricFamily], name: &str) -> Option<f64> {
    let vals: Vec<f64> = fams
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
}

fn has(fams: &[MetricFamily], name: &str) -> bool {
    fams.iter().flat_map(|f| &f.samples).any(|s| s.name == name)
}

/// Every metric name [`queue_depth`] may read for `preset` and `custom`: a scrape keeps only
/// these samples.
pub fn queue_metric_names(preset: Preset, custom: &CustomNames) -> Vec<String> {
    let all: &[(Preset, &[&str])] = &[
        (
            Preset::Vllm,
            &[
                "vllm:num_requests_waiting",
                "vllm:num_requests_running",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",
            ],
        ),
        (
            Preset::Sglang,
            &[
                "sglang:num_queue_reqs",
                "sglang:num_running_reqs",
                "sglang:token_usage",
            ],
        ),
        (Preset::Tgi, &["tgi_queue_size", "tgi_batch_current_size"]),
        (
            Preset::Triton,
            &["nv_inference_pending_request_count", "nv_trt_llm_request_metrics"],
        ),
        (Preset::Knative, &["queue_average_concurrent_requests"]),
        (Preset::Epp, EPP_NAMES),
    ];
    let mut names: Vec<String> = all
        .iter()
        .filter(|(p, _)| preset == Preset::Auto || *p == preset)
        .flat_map(|(_, n)| n.iter().map(|s| s.to_string()))
        .collect();
    names.extend(
        TOKEN_COUNTERS
            .iter()
            .filter(|(p, ..)| preset == Preset::Auto || *p == preset)
            .flat_map(|(_, a, b)| [a.to_string(), b.to_string()]),
    );
    names.extend(
        [&custom.waiting, &custom.running, &custom.kv_cache]
            .into_iter()
            .flatten()
            .cloned(),
    );
    names
}

/// Each server's counters of tokens processed, (prompt, generation): vLLM and SGLang count
/// per step; TGI's request histograms count each request's tokens when it completes, a coarser
/// but still monotone counter.
pub const TOKEN_COUNTERS: &[(Preset, &str, &str)] = &[
    (
        Preset::Vllm,
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ),
    (
        Preset::Sglang,
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
    ),
    (
        Preset::Tgi,
        "tgi_request_input_length_sum",
        "tgi_request_generated_tokens_sum",
    ),
];

/// The endpoint picker's names, current first, then their deprecated twins (llm-d exports
/// both while the old ones are phased out): waiting, running, KV-cache.
const EPP_NAMES: &[&str] = &[
    "llm_d_epp_flow_control_queue_size",
    "llm_d_epp_request_running",
    "llm_d_epp_average_kv_cache_utilization",
    "inference_extension_flow_control_queue_size",
    "inference_objective_running_requests",
    "inference_pool_average_kv_cache_utilization",
];

/// Read queue depth from a parsed page; `None` when the server is not recognised and no custom
/// names are given.
pub fn queue_depth(fams: &[MetricFamily], preset: Preset, custom: &CustomNames) -> Option<QueueDepth> {
    let server = match preset {
        Preset::Auto => {
            if has(fams, "vllm:num_requests_waiting") {
                Preset::Vllm
            } else if has(fams, "sglang:num_queue_reqs") {
                Preset::Sglang
            } else if has(fams, "tgi_queue_size") {
                Preset::Tgi
            } else if has(fams, "nv_inference_pending_request_count")
                || has(fams, "nv_trt_llm_request_metrics")
            {
                Preset::Triton
            } else if has(fams, "queue_average_concurrent_requests") {
                Preset::Knative
            } else if EPP_NAMES[..2]
                .iter()
                .chain(&EPP_NAMES[3..5])
                .any(|n| has(fams, n))
            {
                Preset::Epp
            } else if custom.waiting.is_some() || custom.running.is_some() {
                Preset::Auto
            } else {
                return None;
            }
        }
        p => p,
    };
    let (waiting, running, kv_cache) = match server {
        Preset::Vllm => (
            sum(fams, "vllm:num_requests_waiting", None),
            sum(fams, "vllm:num_requests_running", None),
            mean(fams, "vllm:kv_cache_usage_perc").or_else(|| mean(fams, "vllm:gpu_cache_usage_perc")),
        ),
        Preset::Sglang => (
            sum(fams, "sglang:num_queue_reqs", None),
            sum(fams, "sglang:num_running_reqs", None),
            mean(fams, "sglang:token_usage"),
        ),
        Preset::Tgi => (
            sum(fams, "tgi_queue_size", None),
            sum(fams, "tgi_batch_current_size", None),
            None,
        ),
        Preset::Triton => (
            sum(fams, "nv_inference_pending_request_count", None).or_else(|| {
                sum(
                    fams,
                    "nv_trt_llm_request_metrics",
                    Some(("request_type", "waiting")),
                )
            }),
            sum(
                fams,
                "nv_trt_llm_request_metrics",
                Some(("request_type", "active")),
            ),
            None,
        ),
        Preset::Knative => {
            let c = sum(fams, "queue_average_concurrent_requests", None);
            (c.map(|_| 0.0), c, None)
        }
        Preset::Epp => {
            // Current name, else its deprecated twin; never both (they count the same requests).
            let either = |new: &str, old: &str| sum(fams, new, None).or_else(|| sum(fams, old, None));
            (
                either(EPP_NAMES[0], EPP_NAMES[3]),
                either(EPP_NAMES[1], EPP_NAMES[4]),
                mean(fams, EPP_NAMES[2]).or_else(|| mean(fams, EPP_NAMES[5])),
            )
        }
        Preset::Auto => (None, None, None),
    };
    let pick = |name: &Option<String>, preset_value: Option<f64>, is_mean: bool| match name {
        Some(n) if is_mean => mean(fams, n),
        Some(n) => sum(fams, n, None),
        None => preset_value,
    };
    let counters = TOKEN_COUNTERS.iter().find(|(p, ..)| *p == server);
    let counter = |pick: fn(&(Preset, &'static str, &'static str)) -> &'static str| {
        counters.and_then(|c| sum(fams, pick(c), None))
    };
    Some(QueueDepth {
        server,
        waiting: pick(&custom.waiting, waiting, false),
        running: pick(&custom.running, running, false),
        kv_cache: pick(&custom.kv_cache, kv_cache, true),
        prompt_tokens: counter(|c| c.1),
        generation_tokens: counter(|c| c.2),
    })
}

/// Why a scrape failed. URLs in messages are redacted.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// Connection or HTTP error.
    #[error("{url}: {message}")]
    Http {
        /// The target, redacted.
        url: String,
        /// What happened.
        message: String,
    },
    /// No complete answer in time.
    #[error("{url}: no complete answer within {seconds:.1} s")]
    Timeout {
        /// The target, redacted.
        url: String,
        /// The timeout.
        seconds: f64,
    },
    /// The page is larger than allowed.
    #[error("{url}: page larger than {limit} bytes (raise --max-page-bytes if this is expected)")]
    TooLarge {
        /// The target, redacted.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// OpenMetrics was asked for and required, and the answer is in another format.
    #[error("{url}: answered `{content_type}` when asked for OpenMetrics")]
    WrongFormat {
        /// The target, redacted.
        url: String,
        /// What it answered (bounded).
        content_type: String,
    },
    /// The page does not parse.
    #[error("{url}: {error}")]
    Parse {
        /// The target, redacted.
        url: String,
        /// The parser's error, with its line.
        error: crate::text::ParseError,
    },
}

impl ScrapeError {
    /// The contract's fault code for it.
    pub fn fault(&self) -> crate::contract::Fault {
        use crate::contract::Fault;
        match self {
            ScrapeError::Http { .. } => Fault::Http,
            ScrapeError::Timeout { .. } => Fault::Timeout,
            ScrapeError::TooLarge { .. } => Fault::TooLarge,
            ScrapeError::Parse { .. } | ScrapeError::WrongFormat { .. } => Fault::Parse,
        }
    }
}

/// An error with every cause after it (`error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`), so a log says what actually failed.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// How to fetch one page.
#[derive(Clone, Copy, Debug)]
pub struct Fetch<'a> {
    /// Ask for OpenMetrics (and require it: a page in another format is refused).
    pub openmetrics: bool,
    /// Whole answer, headers to last byte.
    pub timeout: Duration,
    /// Largest page.
    pub max_bytes: usize,
    /// Sent as `Authorization: Bearer ...`.
    pub bearer: Option<&'a str>,
    /// Keep only samples with these names (Prometheus text, parsed as it arrives); `None`
    /// keeps all.
    pub keep: Option<&'a [String]>,
}

/// Fetch and parse one Prometheus text page, within `timeout` and `max_bytes`.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<MetricFamily>, ScrapeError> {
    let how = Fetch {
        openmetrics: false,
        timeout,
        max_bytes,
        bearer: None,
        keep: None,
    };
    fetch_page(client, url, &how).await
}

/// Fetch and parse one page as `how` says. The body is read in chunks and refused as soon as
/// it passes the limit, so a large page never sits in memory whole beyond `max_bytes`.
pub async fn fetch_page(
    client: &reqwest::Client,
    url: &str,
    how: &Fetch<'_>,
) -> Result<Vec<MetricFamily>, ScrapeError> {
    let shown = crate::contract::redact_url(url);
    let http = |message: String| ScrapeError::Http {
        url: shown.clone(),
        message,
    };
    let accept = if how.openmetrics {
        "application/openmetrics-text;version=1.0.0"
    } else {
        "text/plain;version=0.0.4"
    };
    let work = async {
        let mut req = client.get(url).header("accept", accept);
        if let Some(token) = how.bearer {
            req = req.bearer_auth(token);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| http(with_causes(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(http(format!("HTTP {}", resp.status())));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let too_large = || ScrapeError::TooLarge {
            url: shown.clone(),
            limit: how.max_bytes,
        };
        let limits = Limits {
            max_bytes: how.max_bytes,
            ..Limits::default()
        };
        let mut next = async || {
            resp.chunk()
                .await
                .map_err(|e| http(with_causes(&e.without_url())))
        };
        let parsed = if how.openmetrics {
            // A collector's page, small and read whole: OpenMetrics needs the end (`# EOF`).
            if !content_type.starts_with("application/openmetrics-text") {
                return Err(ScrapeError::WrongFormat {
                    url: shown.clone(),
                    content_type: crate::contract::quote(&content_type, 80).into_owned(),
                });
            }
            let mut body: Vec<u8> = Vec::new();
            while let Some(chunk) = next().await? {
                if body.len() + chunk.len() > how.max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(body).map_err(|_| http("page is not UTF-8".into()))?;
            crate::text::parse_openmetrics(&text, &limits)
        } else {
            // A model server's page, of any size: parsed as it arrives, keeping only the series
            // asked for, so memory does not grow with the page.
            let all = |_: &str| true;
            let wanted = |n: &str| how.keep.is_some_and(|k| k.iter().any(|w| w == n));
            let keep: &(dyn Fn(&str) -> bool + Sync) = if how.keep.is_some() { &wanted } else { &all };
            let mut parser = crate::text::PromParser::new(&limits, keep);
            let mut read = 0usize;
            let mut outcome = Ok(());
            while let Some(chunk) = next().await? {
                read += chunk.len();
                if read > how.max_bytes {
                    return Err(too_large());
                }
                outcome = parser.feed(&chunk);
                if outcome.is_err() {
                    break;
                }
            }
            outcome.and_then(|()| parser.end())
        };
        parsed.map_err(|error| ScrapeError::Parse {
            url: shown.clone(),
            error,
        })
    };
    match tokio::time::timeout(how.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout {
            url: shown.clone(),
            seconds: how.timeout.as_secs_f64(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::text::{Limits, parse_prometheus};

    #[test]
    fn targets() {
        let t = Target::parse("llm/vllm-qwen=http://10.0.0.5:8000/metrics").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.namespace.as_str(), t.workload.as_str()), ("llm", "vllm-qwen"));
        assert_eq!(t.url, "http://10.0.0.5:8000/metrics");
        let t = Target::parse("http://h:1/m?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.workload.as_str(), t.url.as_str()), ("h:1", "http://h:1/m?x=1"));
        // No namespace: `default`, the rule the scaler applies too.
        let t = Target::parse("llama=10.0.0.5:8000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.namespace.as_str(), t.workload.as_str(), t.url.as_str()),
            ("default", "llama", "http://10.0.0.5:8000/metrics")
        );
        assert!(Target::parse("https://h/metrics").is_err());
        assert!(Target::parse("/w=http://h/").is_err());
    }

    #[test]
    fn metrics_urls() {
        let ok = |s: &str| metrics_url("--collector", s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("h:9400"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400/"), "http://h:9400/metrics");
        assert_eq!(ok("h:9400/metrics"), "http://h:9400/metrics");
        assert_eq!(ok("http://h:9400/metrics"), "http://h:9400/metrics");
        assert_eq!(ok("http://h/custom?x=1"), "http://h/custom?x=1");
        assert_eq!(ok("[::1]:9400"), "http://[::1]:9400/metrics");
        let bad = |s: &str| metrics_url("--collector", s).unwrap_err();
        let e = bad("htp://h:1");
        assert!(
            e.contains("unsupported scheme `htp`") && e.contains("HOST:PORT"),
            "{e}"
        );
        assert!(bad("h:99999").contains("not a port"));
        assert!(bad("h").contains("no port"));
        assert!(bad("http://:1").contains("no host"));
        assert!(bad("https://h:1").contains("https"));
        assert!(bad("http://http://h:1").contains("more than one scheme"));
        // Secrets never reach the message.
        let e = bad("http://user:hunter2@h:99999/?token=s3cret");
        assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn presets_and_custom_names() {
        let page = "vllm:num_requests_waiting{engine=\"0\"} 3\nvllm:num_requests_waiting{engine=\"1\"} 4\n\
                    vllm:num_requests_running{engine=\"0\"} 8\nvllm:kv_cache_usage_perc{engine=\"0\"} 0.5\n\
                    vllm:kv_cache_usage_perc{engine=\"1\"} 0.7\nmy_queue 11\n";
        let f = parse_prometheus(page, &Limits::default()).unwrap_or_default();
        let q = queue_depth(&f, Preset::Auto, &CustomNames::default());
        assert_eq!(
            q,
            Some(QueueDepth {
                server: Preset::Vllm,
                waiting: Some(7.0),
                running: Some(8.0),
                kv_cache: Some(0.6),
                prompt_tokens: None,
                generation_tokens: None,
            })
        );
        let custom = CustomNames {
            waiting: Some("my_queue".into()),
            ..CustomNames::default()
        };
        assert_eq!(
            queue_depth(&f, Preset::Auto, &custom).and_then(|q| q.waiting),
            Some(11.0)
        );
        let other = parse_prometheus("up 1\n", &Limits::default()).unwrap_or_default();
        assert_eq!(queue_depth(&other, Preset::Auto, &CustomNames::default()), None);
    }

    #[test]
    fn token_counters_of_the_captured_pages() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/metrics");
        let Ok(dir) = std::fs::read_dir(&root) else {
            gpuscale_testkit::missing(
                format_args!("{} not found", root.display()),
                "CI clones main with shared/ beside it",
            );
            return;
        };
        let mut seen = Vec::new();
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(f) = parse_prometheus(&text, &Limits::default()) else {
                continue;
            };
            let Some(q) = queue_depth(&f, Preset::Auto, &CustomNames::default()) else {
                continue;
            };
            if matches!(q.server, Preset::Vllm | Preset::Sglang | Preset::Tgi) {
                let (p, g) = (q.prompt_tokens, q.generation_tokens);
                assert!(
                    p.is_some_and(|v| v >= 0.0) && g.is_some_and(|v| v >= 0.0),
                    "{}: {:?} page without token counters: {p:?} {g:?}",
                    entry.path().display(),
                    q.server
                );
                seen.push(q.server);
            }
        }
        for s in [Preset::Vllm, Preset::Sglang, Preset::Tgi] {
            assert!(seen.contains(&s), "no captured {s:?} page read");
        }
    }
}
