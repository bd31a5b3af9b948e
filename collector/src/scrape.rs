//! Queue depth from model servers: scrape targets, per-server presets, and the fetch itself
//! (bounded in time and size).

use std::time::Duration;

use thiserror::Error;

use crate::text::{Limits, MetricFamily, parse_prometheus};

/// One static scrape target: `[NAMESPACE/WORKLOAD=]URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Namespace of the workload it serves ("" when not given).
    pub namespace: String,
    /// The workload (Deployment) it serves; defaults to the URL's host:port.
    pub workload: String,
    /// The pod it runs in ("" for static targets).
    pub pod: String,
    /// The model server's metrics URL.
    pub url: String,
}

impl Target {
    /// Parse `[NAMESPACE/WORKLOAD=]URL`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (name, url) = match s.split_once('=') {
            Some((n, u)) if !n.contains("://") => (Some(n), u),
            _ => (None, s),
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "--scrape-target {s}: expected [NAMESPACE/WORKLOAD=]http://HOST:PORT/PATH (plain http, as model servers expose metrics)"
            ));
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("--scrape-target {s}: the URL has no host"));
        }
        let (namespace, workload) = match name {
            None => (String::new(), host.to_string()),
            Some(n) => match n.split_once('/') {
                Some((ns, w)) if !ns.is_empty() && !w.is_empty() => (ns.to_string(), w.to_string()),
                None if !n.is_empty() => (String::new(), n.to_string()),
                _ => {
                    return Err(format!(
                        "--scrape-target {s}: expected NAMESPACE/WORKLOAD before `=`"
                    ));
                }
            },
        };
        Ok(Target {
            namespace,
            workload,
            pod: String::new(),
            url: url.to_string(),
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
        Preset::Auto => (None, None, None),
    };
    let pick = |name: &Option<String>, preset_value: Option<f64>, is_mean: bool| match name {
        Some(n) if is_mean => mean(fams, n),
        Some(n) => sum(fams, n, None),
        None => preset_value,
    };
    Some(QueueDepth {
        server,
        waiting: pick(&custom.waiting, waiting, false),
        running: pick(&custom.running, running, false),
        kv_cache: pick(&custom.kv_cache, kv_cache, true),
    })
}

/// Why a scrape failed.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// Connection, timeout or HTTP error.
    #[error("{url}: {message}")]
    Http {
        /// The target.
        url: String,
        /// What happened.
        message: String,
    },
    /// The page is larger than allowed.
    #[error("{url}: page larger than {limit} bytes (raise --max-page-bytes if this is expected)")]
    TooLarge {
        /// The target.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The page does not parse.
    #[error("{url}: {error}")]
    Parse {
        /// The target.
        url: String,
        /// The parser's error, with its line.
        error: crate::text::ParseError,
    },
}

/// Fetch and parse one page, within `timeout` and `max_bytes`.
pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<MetricFamily>, ScrapeError> {
    let http = |message: String| ScrapeError::Http {
        url: url.to_string(),
        message,
    };
    let work = async {
        let mut resp = client
            .get(url)
            .header("accept", "text/plain;version=0.0.4")
            .send()
            .await
            .map_err(|e| http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("HTTP {}", resp.status())));
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(e.to_string()))? {
            if body.len() + chunk.len() > max_bytes {
                return Err(ScrapeError::TooLarge {
                    url: url.to_string(),
                    limit: max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| http("page is not UTF-8".into()))?;
        let limits = Limits {
            max_bytes,
            ..Limits::default()
        };
        parse_prometheus(&text, &limits).map_err(|error| ScrapeError::Parse {
            url: url.to_string(),
            error,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(http(format!(
            "no complete answer within {:.1} s",
            timeout.as_secs_f64()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Limits;

    #[test]
    fn targets() {
        let t = Target::parse("llm/vllm-qwen=http://10.0.0.5:8000/metrics").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.namespace.as_str(), t.workload.as_str()), ("llm", "vllm-qwen"));
        assert_eq!(t.url, "http://10.0.0.5:8000/metrics");
        let t = Target::parse("http://h:1/m?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.workload.as_str(), t.url.as_str()), ("h:1", "http://h:1/m?x=1"));
        assert!(Target::parse("https://h/metrics").is_err());
        assert!(Target::parse("/w=http://h/").is_err());
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
                kv_cache: Some(0.6)
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
}
