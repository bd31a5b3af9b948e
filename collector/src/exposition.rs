//! The node's snapshot and how it is written out: Prometheus text 0.0.4, or OpenMetrics 1.0
//! when asked, optionally with dcgm-exporter's names so existing dashboards keep working.
//!
//! Rendering happens once per tick, not per request: `/metrics` serves the last rendered page.

use crate::gpu::GpuReading;
use crate::podresources::{Attribution, Owner};
use crate::scrape::{Preset, Target};
use gpuscale_contract::{self as contract, Fault, label};
use gpuscale_expfmt::write::{Format, Writer};

/// One target's queue depth at the last tick.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueReading {
    /// Where it was scraped.
    pub target: Target,
    /// Server recognised (`None` when the scrape failed or the page was not recognised).
    pub server: Option<Preset>,
    /// Requests waiting.
    pub waiting: Option<f64>,
    /// Requests running.
    pub running: Option<f64>,
    /// KV-cache usage, 0-1.
    pub kv_cache: Option<f64>,
    /// Prompt tokens/s over the last [`contract::TOKEN_RATE_WINDOW_SECS`] (`None`: unknown).
    pub prompt_tokens_rate: Option<f64>,
    /// Output tokens/s over the same window.
    pub generation_tokens_rate: Option<f64>,
    /// Whether the last scrape answered a page that parsed.
    pub up: bool,
    /// Why there is no valid queue reading (`None`: the values above are real).
    pub fault: Option<Fault>,
    /// When the reading was measured, Unix seconds (`None`: never scraped).
    pub measured_at: Option<f64>,
    /// How long it took, seconds.
    pub duration_seconds: f64,
    /// Failed scrapes since start.
    pub errors_total: u64,
}

impl QueueReading {
    /// `target` with nothing read: down, no values, no fault named yet.
    pub fn unread(target: Target) -> Self {
        QueueReading {
            target,
            server: None,
            waiting: None,
            running: None,
            kv_cache: None,
            prompt_tokens_rate: None,
            generation_tokens_rate: None,
            up: false,
            fault: None,
            measured_at: None,
            duration_seconds: 0.0,
            errors_total: 0,
        }
    }
}

/// Everything the collector knows at one tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// This node's name.
    pub node: String,
    /// The GPU source's name.
    pub gpu_source: String,
    /// GPUs read this tick.
    pub gpus: Vec<GpuReading>,
    /// Why the GPU read failed this tick (`None`: it succeeded): the `reason` label of
    /// `gpuscale_gpu_source_up 0`.
    pub gpu_error: Option<&'static str>,
    /// Which containers hold which GPU (kubelet PodResources); empty when unknown.
    pub attribution: Attribution,
    /// Queue depth per target.
    pub queues: Vec<QueueReading>,
    /// Unix time of the tick, seconds.
    pub timestamp_seconds: f64,
    /// How long the tick took, seconds.
    pub tick_seconds: f64,
    /// Ticks completed since start.
    pub ticks_total: u64,
}

type GpuField = (&'static str, &'static str, fn(&GpuReading) -> Option<f64>);

const GPU_GAUGES: [GpuField; 10] = [
    (contract::GPU_UTILIZATION, "SM (compute) utilization, 0-1.", |g| {
        g.utilization
    }),
    (
        "gpuscale_gpu_memory_utilization_ratio",
        "Memory-controller utilization, 0-1.",
        |g| g.memory_utilization,
    ),
    (
        "gpuscale_gpu_memory_used_bytes",
        "Framebuffer memory used.",
        |g| g.memory_used_bytes.map(|b| b as f64),
    ),
    (
        "gpuscale_gpu_memory_free_bytes",
        "Framebuffer memory free.",
        |g| g.memory_free_bytes.map(|b| b as f64),
    ),
    (
        "gpuscale_gpu_memory_total_bytes",
        "Framebuffer memory in total.",
        |g| g.memory_total_bytes.map(|b| b as f64),
    ),
    ("gpuscale_gpu_power_watts", "Board power draw.", |g| g.power_watts),
    ("gpuscale_gpu_temperature_celsius", "GPU core temperature.", |g| {
        g.temperature_celsius
    }),
    ("gpuscale_gpu_sm_clock_hertz", "SM clock.", |g| g.sm_clock_hertz),
    ("gpuscale_gpu_memory_clock_hertz", "Memory clock.", |g| {
        g.memory_clock_hertz
    }),
    (
        "gpuscale_gpu_xid_last",
        "The last critical XID error in the past 5 minutes, 0 if none; absent where the GPU reports no XID events.",
        |g| g.xid_last.map(|x| x as f64),
    ),
];

/// dcgm-exporter's names, units and label names (`gpu`, `UUID`, `device`, `modelName`,
/// `Hostname`), from the dcgm-exporter pages in shared/fixtures.
const DCGM_GAUGES: [GpuField; 11] = [
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", |g| {
        g.utilization.map(|u| (u * 100.0).round())
    }),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", |g| {
        g.memory_utilization.map(|u| (u * 100.0).round())
    }),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", |g| {
        g.memory_used_bytes.map(|b| (b >> 20) as f64)
    }),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", |g| {
        g.memory_free_bytes.map(|b| (b >> 20) as f64)
    }),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", |g| g.power_watts),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", |g| {
        g.temperature_celsius
    }),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", |g| {
        g.sm_clock_hertz.map(|h| (h / 1e6).round())
    }),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", |g| {
        g.memory_clock_hertz.map(|h| (h / 1e6).round())
    }),
    (
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "Total number of single-bit volatile ECC errors.",
        |g| g.ecc_corrected.map(|c| c as f64),
    ),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Total number of double-bit volatile ECC errors.",
        |g| g.ecc_uncorrected.map(|c| c as f64),
    ),
    (
        "DCGM_FI_DEV_XID_ERRORS",
        "Value of the last XID error encountered.",
        |g| g.xid_last.map(|x| x as f64),
    ),
];

/// The labels naming a GPU on gpuscale's own series.
fn gpu_labels<'a>(g: &'a GpuReading, node: &'a str) -> [(&'static str, &'a str); 4] {
    [
        ("gpu", g.index.as_str()),
        ("uuid", &g.uuid),
        ("model", &g.model),
        ("node", node),
    ]
}

/// The containers holding `g`: one series per owner, or one unattributed series.
fn owners<'a>(s: &'a Snapshot, g: &GpuReading) -> Vec<Option<&'a Owner>> {
    match s.attribution.get(&g.uuid) {
        Some(list) if !list.is_empty() => list.iter().map(Some).collect(),
        _ => vec![None],
    }
}

/// Base labels plus `namespace`, `pod`, `container` when attributed.
fn with_owner<'a>(base: &[(&'a str, &'a str)], o: Option<&'a Owner>) -> Vec<(&'a str, &'a str)> {
    let mut v = base.to_vec();
    if let Some(o) = o {
        v.extend([
            ("namespace", o.namespace.as_str()),
            ("pod", o.pod.as_str()),
            ("container", o.container.as_str()),
        ]);
    }
    v
}

/// Render a snapshot.
pub fn render(s: &Snapshot, format: Format, dcgm_compat: bool) -> String {
    let mut w = Writer::with_capacity(format, 4096);
    for (name, help, get) in GPU_GAUGES {
        let readings: Vec<(&GpuReading, f64)> =
            s.gpus.iter().filter_map(|g| get(g).map(|v| (g, v))).collect();
        if readings.is_empty() {
            continue;
        }
        w.family(name, "gauge", help);
        for (g, v) in readings {
            let base = gpu_labels(g, &s.node);
            for o in owners(s, g) {
                w.sample(name, &with_owner(&base, o), v);
            }
        }
    }
    if s.gpus.iter().any(|g| g.xid_errors.is_some()) {
        let name = "gpuscale_gpu_xid_errors";
        w.family(
            name,
            "counter",
            "Critical XID errors raised since the collector started.",
        );
        for g in s.gpus.iter() {
            let Some(v) = g.xid_errors else { continue };
            let base = gpu_labels(g, &s.node);
            for o in owners(s, g) {
                w.sample("gpuscale_gpu_xid_errors_total", &with_owner(&base, o), v as f64);
            }
        }
    }
    if s.gpus
        .iter()
        .any(|g| g.ecc_corrected.is_some() || g.ecc_uncorrected.is_some())
    {
        let name = "gpuscale_gpu_ecc_errors";
        w.family(
            name,
            "counter",
            "Volatile ECC errors since the driver loaded, by type (corrected, uncorrected); absent without ECC.",
        );
        for g in &s.gpus {
            for (kind, v) in [("corrected", g.ecc_corrected), ("uncorrected", g.ecc_uncorrected)] {
                let Some(v) = v else { continue };
                let [a, b, c, d] = gpu_labels(g, &s.node);
                let base = [a, b, c, d, ("type", kind)];
                for o in owners(s, g) {
                    w.sample("gpuscale_gpu_ecc_errors_total", &with_owner(&base, o), v as f64);
                }
            }
        }
    }
    if !s.gpus.is_empty() {
        w.family(
            contract::GPU_INFO,
            "gauge",
            "One per GPU and container holding it: index, UUID, product, node.",
        );
        for g in &s.gpus {
            let base = gpu_labels(g, &s.node);
            for o in owners(s, g) {
                w.sample(contract::GPU_INFO, &with_owner(&base, o), 1.0);
            }
        }
    }
    if s.gpus
        .iter()
        .any(|g| g.processes.iter().any(|(_, m)| m.is_some()))
    {
        let name = "gpuscale_gpu_process_memory_used_bytes";
        w.family(
            name,
            "gauge",
            "GPU memory used by one process (NVML's per-process accounting).",
        );
        for g in &s.gpus {
            for (pid, used) in &g.processes {
                if let Some(b) = used {
                    let pid = pid.to_string();
                    w.sample(
                        name,
                        &[
                            ("gpu", &g.index),
                            ("uuid", &g.uuid),
                            ("pid", &pid),
                            ("node", &s.node),
                        ],
                        *b as f64,
                    );
                }
            }
        }
    }
    if dcgm_compat {
        for (name, help, get) in DCGM_GAUGES {
            let readings: Vec<(&GpuReading, f64)> =
                s.gpus.iter().filter_map(|g| get(g).map(|v| (g, v))).collect();
            if readings.is_empty() {
                continue;
            }
            w.family(name, "gauge", help);
            for (g, v) in readings {
                let device = format!("nvidia{}", g.index);
                let base = [
                    ("gpu", g.index.as_str()),
                    ("UUID", &g.uuid),
                    ("device", &device),
                    ("modelName", &g.model),
                    ("Hostname", &s.node),
                ];
                for o in owners(s, g) {
                    w.sample(name, &with_owner(&base, o), v);
                }
            }
        }
    }
    w.family(
        "gpuscale_gpu_source_up",
        "gauge",
        "1 if the last GPU read succeeded; reason (library_not_found, driver_not_loaded, gpu_lost, blocked, error) when 0.",
    );
    let mut labels = vec![("source", s.gpu_source.as_str()), ("node", s.node.as_str())];
    if let Some(reason) = s.gpu_error {
        labels.push((label::REASON, reason));
    }
    w.sample(
        "gpuscale_gpu_source_up",
        &labels,
        f64::from(u8::from(s.gpu_error.is_none())),
    );

    type QueueField = (&'static str, &'static str, fn(&QueueReading) -> Option<f64>);
    let queue_gauges: [QueueField; 5] = [
        (
            contract::WAITING,
            "Requests queued at the model server, not yet served.",
            |q| q.waiting,
        ),
        (
            contract::RUNNING,
            "Requests being served by the model server.",
            |q| q.running,
        ),
        (
            contract::KV_CACHE,
            "KV-cache usage of the model server, 0-1.",
            |q| q.kv_cache,
        ),
        (
            contract::PROMPT_TOKENS_RATE,
            "Prompt tokens the model server computed per second, over the last 10 s of its counter.",
            |q| q.prompt_tokens_rate,
        ),
        (
            contract::GENERATION_TOKENS_RATE,
            "Output tokens the model server generated per second, over the last 10 s of its counter.",
            |q| q.generation_tokens_rate,
        ),
    ];
    // Secrets in a target's URL never reach a label.
    let shown: Vec<String> = s
        .queues
        .iter()
        .map(|q| contract::redact_url(&q.target.url))
        .collect();
    for (name, help, get) in queue_gauges {
        // An invalid reading is not exported as queue depth: the scaler must not read it.
        let rows: Vec<(usize, &QueueReading, f64)> = s
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.fault.is_none())
            .filter_map(|(i, q)| get(q).map(|v| (i, q, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        w.family(name, "gauge", help);
        for (i, q, v) in rows {
            let server = q.server.map_or("", |p| p.as_str());
            w.sample(
                name,
                &[
                    (label::NAMESPACE, &q.target.namespace),
                    (label::WORKLOAD, &q.target.workload),
                    (label::POD, &q.target.pod),
                    ("server", server),
                    (label::TARGET, &shown[i]),
                    (label::NODE, &s.node),
                ],
                v,
            );
        }
    }
    if !s.queues.is_empty() {
        let target_labels: Vec<[(&str, &str); 5]> = s
            .queues
            .iter()
            .zip(&shown)
            .map(|(q, url)| {
                [
                    (label::NAMESPACE, q.target.namespace.as_str()),
                    (label::WORKLOAD, q.target.workload.as_str()),
                    (label::POD, q.target.pod.as_str()),
                    (label::TARGET, url.as_str()),
                    (label::NODE, s.node.as_str()),
                ]
            })
            .collect();
        w.family(
            contract::SCRAPE_UP,
            "gauge",
            "1 if the last scrape of the target answered a page that parsed.",
        );
        for (q, l) in s.queues.iter().zip(&target_labels) {
            w.sample(contract::SCRAPE_UP, l, f64::from(u8::from(q.up)));
        }
        w.family(
            contract::READING_VALID,
            "gauge",
            "1 if the target's last page held a plausible queue reading; reason says why not.",
        );
        for (q, l) in s.queues.iter().zip(&target_labels) {
            let mut l = l.to_vec();
            if let Some(f) = q.fault {
                l.push((label::REASON, f.code()));
            }
            w.sample(
                contract::READING_VALID,
                &l,
                f64::from(u8::from(q.fault.is_none())),
            );
        }
        if s.queues.iter().any(|q| q.measured_at.is_some()) {
            w.family(
                contract::SCRAPE_TIMESTAMP,
                "gauge",
                "Unix time the target's last reading was measured (each target runs on its own clock).",
            );
            for (q, l) in s.queues.iter().zip(&target_labels) {
                if let Some(t) = q.measured_at {
                    w.sample(contract::SCRAPE_TIMESTAMP, l, t);
                }
            }
        }
        w.family(
            "gpuscale_scrape_duration_seconds",
            "gauge",
            "Duration of the last scrape of the target.",
        );
        for (i, q) in s.queues.iter().enumerate() {
            w.sample(
                "gpuscale_scrape_duration_seconds",
                &[(label::TARGET, &shown[i]), (label::NODE, &s.node)],
                q.duration_seconds,
            );
        }
        w.family(
            "gpuscale_scrape_errors",
            "counter",
            "Failed scrapes of the target since start.",
        );
        for (i, q) in s.queues.iter().enumerate() {
            w.sample(
                "gpuscale_scrape_errors_total",
                &[(label::TARGET, &shown[i]), (label::NODE, &s.node)],
                q.errors_total as f64,
            );
        }
    }
    w.family(
        contract::COLLECTOR_INFO,
        "gauge",
        "Identity of a gpuscale collector and the version of its contract with the scaler.",
    );
    w.sample(
        contract::COLLECTOR_INFO,
        &[
            (label::NODE, &s.node),
            (label::VERSION, env!("CARGO_PKG_VERSION")),
            (label::CONTRACT, contract::CONTRACT_VERSION),
        ],
        1.0,
    );
    w.family(
        contract::LAST_TICK,
        "gauge",
        "Unix time of the last completed tick.",
    );
    w.sample(contract::LAST_TICK, &[("node", &s.node)], s.timestamp_seconds);
    w.family(
        "gpuscale_collector_tick_duration_seconds",
        "gauge",
        "Duration of the last tick (GPU read and scrapes).",
    );
    w.sample(
        "gpuscale_collector_tick_duration_seconds",
        &[("node", &s.node)],
        s.tick_seconds,
    );
    w.family(
        "gpuscale_collector_ticks",
        "counter",
        "Ticks completed since start.",
    );
    w.sample(
        "gpuscale_collector_ticks_total",
        &[("node", &s.node)],
        s.ticks_total as f64,
    );
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{FakeGpus, GpuSource};
    use gpuscale_expfmt::text::{Limits, parse_openmetrics, parse_prometheus};

    fn snapshot() -> Snapshot {
        let (mut fake, handle) = FakeGpus::new(2);
        handle.update(|g| g[0].processes = vec![(4242, Some(7 << 30)), (4243, None)]);
        Snapshot {
            node: "node-a".into(),
            gpu_source: "fake".into(),
            gpus: fake.read().unwrap_or_default(),
            gpu_error: None,
            attribution: [(
                "GPU-fake-0001".to_string(),
                vec![Owner {
                    namespace: "llm".into(),
                    pod: "qwen-0".into(),
                    container: "vllm".into(),
                }],
            )]
            .into_iter()
            .collect(),
            queues: vec![QueueReading {
                target: Target {
                    namespace: "llm".into(),
                    workload: "qwen \"x\"".into(),
                    pod: String::new(),
                    url: "http://h:1/metrics".into(),
                },
                server: Some(Preset::Vllm),
                waiting: Some(3.0),
                running: Some(8.0),
                kv_cache: None,
                prompt_tokens_rate: Some(1234.5),
                generation_tokens_rate: None,
                up: true,
                fault: None,
                measured_at: Some(1.7e9 - 1.0),
                duration_seconds: 0.01,
                errors_total: 2,
            }],
            timestamp_seconds: 1.7e9,
            tick_seconds: 0.02,
            ticks_total: 5,
        }
    }

    #[test]
    fn both_formats_parse_back_with_the_same_values() {
        let s = snapshot();
        let text = render(&s, Format::Prometheus, true);
        let prom = parse_prometheus(&text, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let om_text = render(&s, Format::OpenMetrics, true);
        let om = parse_openmetrics(&om_text, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{om_text}"));
        for fams in [&prom, &om] {
            let find = |n: &str, k: &str, v: &str| {
                fams.iter()
                    .flat_map(|f| &f.samples)
                    .find(|s| s.name == n && s.label(k) == Some(v))
                    .map(|s| s.value)
            };
            assert_eq!(find("gpuscale_gpu_utilization_ratio", "gpu", "1"), Some(0.2));
            assert_eq!(find("gpuscale_gpu_utilization_ratio", "pod", "qwen-0"), Some(0.2));
            assert_eq!(
                find("gpuscale_gpu_process_memory_used_bytes", "pid", "4242"),
                Some((7u64 << 30) as f64)
            );
            assert_eq!(
                find("gpuscale_gpu_process_memory_used_bytes", "pid", "4243"),
                None
            );
            assert_eq!(find("DCGM_FI_DEV_GPU_UTIL", "container", "vllm"), Some(20.0));
            // GPU 0 is held by no pod: no pod label, never an invented one.
            assert_eq!(find("gpuscale_gpu_utilization_ratio", "gpu", "0"), Some(0.1));
            assert_eq!(find("DCGM_FI_DEV_GPU_UTIL", "gpu", "1"), Some(20.0));
            assert_eq!(
                find("DCGM_FI_DEV_FB_USED", "UUID", "GPU-fake-0000"),
                Some(10240.0)
            );
            assert_eq!(
                find("gpuscale_workload_requests_waiting", "workload", "qwen \"x\""),
                Some(3.0)
            );
            assert_eq!(
                find("gpuscale_scrape_errors_total", "target", "http://h:1/metrics"),
                Some(2.0)
            );
        }
        assert!(!text.contains("# EOF") && om_text.ends_with("# EOF\n"));
        // Every series is typed as intended in both formats (text 0.0.4 names counter families
        // after their `_total` samples, OpenMetrics after the family).
        for (fams, counter) in [
            (&prom, "gpuscale_scrape_errors_total"),
            (&om, "gpuscale_scrape_errors"),
        ] {
            let kind = |n: &str| fams.iter().find(|f| f.name == n).map(|f| f.kind);
            assert_eq!(kind(counter), Some(gpuscale_expfmt::text::Kind::Counter));
            assert_eq!(
                kind("gpuscale_gpu_utilization_ratio"),
                Some(gpuscale_expfmt::text::Kind::Gauge)
            );
            assert!(
                fams.iter()
                    .all(|f| f.kind != gpuscale_expfmt::text::Kind::Unknown),
                "untyped family"
            );
        }
        // kv_cache unknown: no invented series.
        assert!(!text.contains("gpuscale_workload_kv_cache_usage_ratio"));
        // A known token rate is exported; an unknown one is absent, never 0.
        assert!(
            text.lines()
                .any(|l| l.starts_with("gpuscale_workload_prompt_tokens_per_second{")
                    && l.ends_with(" 1234.5")),
            "{text}"
        );
        assert!(!text.contains("gpuscale_workload_generation_tokens_per_second{"));
    }
}
