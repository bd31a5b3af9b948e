//! Queue depth from model servers: scrape targets and per-server presets. The bounded fetch
//! itself is `gpuscale_edge::fetch`, shared with the scaler.

use gpuscale_edge::fetch::metrics_url;
use gpuscale_expfmt::text::MetricFamily;

/// One static scrape target: `[NAMESPACE/WORKLOAD=]URL`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Namespace of the workload it serves ([`gpuscale_contract::DEFAULT_NAMESPACE`] when not
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
        let shown = gpuscale_policies::spec::brief_to(&gpuscale_contract::redact_url(s), 200).into_owned();
        let (namespace, workload) = match name {
            None => (gpuscale_contract::DEFAULT_NAMESPACE.to_string(), host.to_string()),
            Some(n) => match n.split_once('/') {
                Some((ns, w)) if !ns.is_empty() && !w.is_empty() => (ns.to_string(), w.to_string()),
                None if !n.is_empty() => (gpuscale_contract::DEFAULT_NAMESPACE.to_string(), n.to_string()),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gpuscale_expfmt::text::{Limits, parse_prometheus};

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
