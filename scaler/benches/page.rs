//! What one collector page costs the scaler, beside a baseline in the same run: the synthetic
//! node page of the fleet bench (8 GPUs, 8 vLLM targets, the `series=contract` page), timed as
//! - `scan`: counting its lines (the least any reader pays: one pass over the bytes),
//! - `parse`: the strict OpenMetrics parse the scaler runs on every page,
//! - `parse+read`: that and [`Page::read`] (the page's workloads and capacity),
//! - `combine/1000`: [`View::combine`] over 1,000 such pages (once per decision).
//!
//! `cargo bench -p gpuscale-scaler --bench page`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gpuscale_expfmt::text::{Limits, parse_openmetrics};
use gpuscale_scaler::sources::aggregate::{Page, Received, Source, View};

mod common;

fn received() -> Received {
    Received {
        at: Duration::from_secs(100),
        wall: common::PLACEHOLDER + 0.5,
    }
}

fn bench(c: &mut Criterion) {
    let body = common::page(7, 3.0);
    let limits = Limits::default();
    let mut g = c.benchmark_group("collector page");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("scan", |b| b.iter(|| black_box(&body).lines().count()));
    g.bench_function("parse", |b| {
        b.iter(|| parse_openmetrics(black_box(&body), &limits).unwrap())
    });
    g.bench_function("parse+read", |b| {
        b.iter(|| {
            let f = parse_openmetrics(black_box(&body), &limits).unwrap();
            Page::read(&f, "http://node:9400/metrics", received()).unwrap()
        })
    });
    g.finish();

    let sources: Vec<(String, Source)> = (0..1000)
        .map(|i| {
            let f = parse_openmetrics(&common::page(i, 0.0), &limits).unwrap();
            let page = Page::read(&f, "x", received()).unwrap();
            (
                format!("http://10.0.{}.{}:9400/metrics", i / 250, i % 250),
                Source {
                    last_ok: Some((Duration::from_secs(100), page)),
                    error: None,
                },
            )
        })
        .collect();
    let mut g = c.benchmark_group("view");
    g.sample_size(20);
    g.bench_function("combine/1000", |b| {
        b.iter(|| View::combine(sources.iter().map(|(k, v)| (k.as_str(), v))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
