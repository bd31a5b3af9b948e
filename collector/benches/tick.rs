//! The collector's CPU per tick on an 8-GPU node with 8 vLLM targets, beside a no-op baseline in
//! the same process: parsing the 8 captured vLLM pages as a scrape does (keeping only the queue
//! series), and rendering the page in both formats (the tick's work besides NVML, whose calls
//! happen in the driver), and cutting the contract page with the digest of its readings. The
//! baseline renders an empty snapshot.
//!
//! `cargo bench -p gpuscale-collector --bench tick`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::Instant;

use gpuscale_collector::exposition::{QueueReading, Snapshot, render};
use gpuscale_collector::gpu::{FakeGpus, GpuSource};
use gpuscale_collector::scrape::{CustomNames, Preset, Target, queue_depth, queue_metric_names};
use gpuscale_expfmt::text::{Limits, parse_prometheus_keeping};
use gpuscale_expfmt::write::Format;

fn per_iter(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / f64::from(iters)
}

fn main() {
    let page_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/metrics/vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt");
    let Ok(page) = std::fs::read_to_string(&page_path) else {
        gpuscale_testkit::missing(
            format_args!("{} not found", page_path.display()),
            "CI clones main with shared/ beside it",
        );
        return;
    };
    let (mut gpus, _h) = FakeGpus::new(8);
    let gpu_readings = gpus.read().unwrap();
    let keep_names = queue_metric_names(Preset::Auto, &CustomNames::default());
    let keep = move |n: &str| keep_names.iter().any(|k| k == n);
    let limits = Limits::default();

    let parse = per_iter(200, || {
        for _ in 0..8 {
            let fams = parse_prometheus_keeping(&page, &limits, &keep).unwrap();
            let _ = queue_depth(&fams, Preset::Auto, &CustomNames::default());
        }
    });
    let queues: Vec<QueueReading> = (0..8)
        .map(|i| QueueReading {
            target: Target::parse(&format!("llm/qwen-{i}=http://10.0.0.{i}:8000/metrics")).unwrap(),
            server: Some(Preset::Vllm),
            waiting: Some(3.0),
            running: Some(2.0),
            kv_cache: Some(0.25),
            prompt_tokens_rate: Some(6000.0),
            generation_tokens_rate: Some(1100.0),
            up: true,
            fault: None,
            measured_at: Some(1.7e9),
            duration_seconds: 0.002,
            errors_total: 0,
        })
        .collect();
    let full = Snapshot {
        node: "gpu-node-1".into(),
        gpu_source: "nvml".into(),
        gpus: gpu_readings,
        queues,
        timestamp_seconds: 1.7e9,
        ..Snapshot::default()
    };
    let empty = Snapshot {
        node: "gpu-node-1".into(),
        gpu_source: "none".into(),
        ..Snapshot::default()
    };
    let render_full = per_iter(2000, || {
        let _ = render(&full, Format::Prometheus, false);
        let _ = render(&full, Format::OpenMetrics, false);
    });
    let render_empty = per_iter(2000, || {
        let _ = render(&empty, Format::Prometheus, false);
        let _ = render(&empty, Format::OpenMetrics, false);
    });
    // What a render adds for the scaler: the contract page, and the digest of its readings that
    // decides whether a held read is answered.
    let om = render(&full, Format::OpenMetrics, false);
    let contract_cut = per_iter(2000, || {
        let page = gpuscale_expfmt::write::only_families(&om, &gpuscale_contract::SCALER_FAMILIES);
        let _ = gpuscale_collector::service::values_digest(&page);
    });
    let bytes = render(&full, Format::Prometheus, false).len();
    println!(
        "collector tick, 8 GPUs and 8 vLLM targets ({} KB page each, {bytes} B rendered):",
        page.len() / 1024
    );
    println!(
        "  parse 8 pages (keep queue series only)  {:>8.1} µs",
        parse * 1e6
    );
    println!(
        "  render both formats                      {:>8.1} µs",
        render_full * 1e6
    );
    println!(
        "  contract page + readings digest          {:>8.1} µs",
        contract_cut * 1e6
    );
    println!(
        "  baseline: render an empty snapshot       {:>8.1} µs",
        render_empty * 1e6
    );
    println!(
        "  per tick (parse + render + contract)     {:>8.1} µs",
        (parse + render_full + contract_cut) * 1e6
    );
}
