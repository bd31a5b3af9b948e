//! The synthetic node page the fleet and page benches share: what a collector with 8 GPUs and
//! 8 vLLM targets serves the scaler (`?series=contract`), rendered by the collector's own code.
#![allow(dead_code, clippy::unwrap_used)]

use gpuscale_collector::exposition::{QueueReading, Snapshot, render};
use gpuscale_collector::gpu::{FakeGpus, GpuSource};
use gpuscale_collector::scrape::{Preset, Target};
use gpuscale_expfmt::write::{Format, only_families};

pub const GPUS: u32 = 8;
pub const TARGETS: usize = 8;
/// Written where every timestamp goes, then replaced by the render time at each answer.
pub const PLACEHOLDER: f64 = 1_234_567_890.5;

/// Node `i`'s page, its first target's waiting count set to `waiting`.
pub fn page(i: usize, waiting: f64) -> String {
    let (mut fake, _h) = FakeGpus::new(GPUS);
    let queues = (0..TARGETS)
        .map(|t| QueueReading {
            target: Target::parse(&format!(
                "fleet/w{i}-{t}=http://10.{}.{}.{t}:8000/metrics",
                i / 250,
                i % 250
            ))
            .unwrap(),
            server: Some(Preset::Vllm),
            waiting: Some(if t == 0 { waiting } else { 1.0 }),
            running: Some(4.0),
            kv_cache: Some(0.3),
            prompt_tokens_rate: Some(3000.0),
            generation_tokens_rate: Some(500.0),
            up: true,
            fault: None,
            measured_at: Some(PLACEHOLDER),
            duration_seconds: 0.002,
            errors_total: 0,
        })
        .collect();
    let s = Snapshot {
        node: format!("gpu-node-{i}"),
        gpu_source: "nvml".into(),
        gpus: fake.read().unwrap(),
        queues,
        timestamp_seconds: PLACEHOLDER,
        ..Snapshot::default()
    };
    // What a collector serves the scaler (`?series=contract`, which the scaler always asks for).
    only_families(
        &render(&s, Format::OpenMetrics, false),
        &gpuscale_contract::SCALER_FAMILIES,
    )
}
