//! Freshness, measured from outside: a model server's queue changes, and a KEDA client polling
//! GetMetrics every 10 ms times how long until the scaler's answer shows it. A real collector
//! (the library's tick loop and router on a real socket, as the binary runs them) scrapes the
//! model server; the scaler binary reads the collector (push: the collector's stream of pages,
//! or polling with `/poll`). Each configuration runs `FRESHNESS_TRIALS` changes (default 20),
//! alternating the queue between 0 and 20 at random phases, and prints p50, p99 and max.
//!
//! `cargo bench -p gpuscale-scaler --bench freshness`
//! (env: FRESHNESS_TRIALS; FRESHNESS_CONFIGS="default,default/poll,250ms/500ms,250ms/500ms/poll").
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gpuscale_collector::scrape::{CustomNames, Preset, Target};
use gpuscale_collector::service::{Config, Pages, router, tick_loop};
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use gpuscale_scaler::keda::pb::{GetMetricsRequest, ScaledObjectRef};
use gpuscale_testkit::{Kill, free_port};

/// A vLLM-shaped page whose waiting count the bench sets.
async fn model_server(waiting: Arc<AtomicU64>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let w = waiting.load(Ordering::SeqCst);
            async move {
                format!(
                    "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {w}\n\
                     # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} 0\n"
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[rank]
}

/// A collector for one target at `interval`, with the binary's other defaults; its address.
async fn collector(target: &str, interval: Duration) -> SocketAddr {
    let pages: Arc<RwLock<Pages>> = Arc::default();
    let config = Config {
        node: "node-1".into(),
        targets: vec![Target::parse(target).unwrap()],
        preset: Preset::Auto,
        custom: CustomNames::default(),
        interval,
        scrape_timeout: Duration::from_secs(2),
        max_page_bytes: 16 << 20,
        max_concurrent_scrapes: 16,
        bearer: None,
        dcgm_compat: false,
        pod_resources_socket: None,
        pod_resources_interval: Duration::from_secs(10),
        discovered: None,
    };
    tokio::spawn(tick_loop(
        config,
        Box::new(gpuscale_collector::gpu::NoGpus),
        pages.clone(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(gpuscale_edge::server::serve(
        l,
        router(pages),
        std::future::pending(),
    ));
    addr
}

async fn run(name: &str, interval: Duration, scaler_args: &[&str], trials: usize) {
    let waiting = Arc::new(AtomicU64::new(0));
    let model = model_server(waiting.clone()).await;
    let caddr = collector(&format!("llm/qwen=http://{model}/metrics"), interval).await;
    let cport = caddr.port();
    let (gport, hport) = (free_port(), free_port());
    let _scaler = Kill(
        Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
            .args(["--grpc-listen", &format!("127.0.0.1:{gport}")])
            .args(["--http-listen", &format!("127.0.0.1:{hport}")])
            .args(["--collector", &format!("127.0.0.1:{cport}")])
            .args(scaler_args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut client = loop {
        if let Ok(c) = ExternalScalerClient::connect(format!("http://127.0.0.1:{gport}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("deployment".into(), "qwen".into());
    md.insert("mode".into(), "signal".into());
    md.insert("metric".into(), "waiting".into());
    let so = ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    };
    let metric = client
        .get_metric_spec(so.clone())
        .await
        .unwrap()
        .into_inner()
        .metric_specs[0]
        .metric_name
        .clone();
    let mut read = async || -> Option<f64> {
        client
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(so.clone()),
                metric_name: metric.clone(),
            })
            .await
            .ok()
            .map(|m| m.into_inner().metric_values[0].metric_value_float)
    };
    // Until the first answer.
    let start = Instant::now();
    while read().await != Some(0.0) {
        assert!(start.elapsed() < Duration::from_secs(30), "{name}: no answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..trials {
        // A random phase against both loops: anywhere in two collector periods.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let span = (2 * interval.as_millis() as u64).max(1000);
        tokio::time::sleep(Duration::from_millis(100 + seed % span)).await;
        let want = if i % 2 == 0 { 20.0 } else { 0.0 };
        waiting.store(want as u64, Ordering::SeqCst);
        let t0 = Instant::now();
        loop {
            if read().await == Some(want) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name}: the change never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lat.push(t0.elapsed().as_secs_f64());
    }
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "  {name:<34} p50 {:>5.0} ms  p99 {:>5.0} ms  max {:>5.0} ms  ({trials} changes)",
        p50 * 1e3,
        p99 * 1e3,
        max * 1e3
    );
}

#[tokio::main]
async fn main() {
    let trials: usize = std::env::var("FRESHNESS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // `COLLECTOR_INTERVAL/POLL_INTERVAL[/poll]`; `/poll` turns the push path off
    // (`--collector-wait 0`), the baseline each push figure is read against.
    let configs = std::env::var("FRESHNESS_CONFIGS")
        .unwrap_or_else(|_| "default,default/poll,250ms/500ms,250ms/500ms/poll,5s/1s/poll".into());
    println!(
        "queue change at the model server -> the value KEDA reads from GetMetrics (polled every 10 ms):"
    );
    for c in configs.split(',') {
        let (spec, poll) = match c.trim().strip_suffix("/poll") {
            Some(s) => (s, true),
            None => (c.trim(), false),
        };
        let mut args: Vec<&str> = if poll {
            vec!["--collector-wait", "0"]
        } else {
            Vec::new()
        };
        let how = if poll {
            "polling only (--collector-wait 0)"
        } else {
            "push"
        };
        match spec {
            "default" => {
                let interval = Duration::from_secs_f64(gpuscale_collector::service::DEFAULT_INTERVAL_SECS);
                run(&format!("defaults, {how}"), interval, &args, trials).await
            }
            spec => {
                let (ci, sp) = spec.split_once('/').unwrap_or((spec, "1s"));
                let interval = Duration::from_secs_f64(gpuscale_edge::cli::duration_secs(ci).unwrap());
                args.extend(["--poll-interval", sp]);
                run(
                    &format!("collector --interval {ci}, scaler --poll-interval {sp}, {how}"),
                    interval,
                    &args,
                    trials,
                )
                .await
            }
        }
    }
}
