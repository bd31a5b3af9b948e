//! Added latency of the activator's pass-through path: the same client calls a loopback
//! upstream directly and through the activator, interleaved (one of each per tick) at a fixed
//! rate, so both see the same noise. `cargo bench -p gpuscale-activator --bench activator`
//! (env: BENCH_RPS, default 1000; BENCH_SECONDS, default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use gpuscale_activator::{Activator, Config, Reporter, Route};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rps: u64 = std::env::var("BENCH_RPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route(
                "/v1/completions",
                axum::routing::post(|| async { "{\"choices\":[{\"text\":\"ok\"}]}" }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });

        let a = Activator::new(Config {
            routes: vec![Route::parse(&format!("/v1/=llm/qwen=http://{upstream}")).unwrap()],
            concurrency: 64,
            max_held: 1000,
            cold_start_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_held_bytes: 256 << 20,
            body_timeout: Duration::from_secs(30),
            probe_path: "/health".into(),
            probe_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(1),
        });
        a.spawn_readiness(Reporter::None);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = l.local_addr().unwrap();
        tokio::spawn(gpuscale_activator::serve(a, l, std::future::pending()));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let client = reqwest::Client::new();
        let body = "{\"model\":\"qwen\",\"prompt\":\"hello\",\"max_tokens\":16}";
        let call = |url: String| {
            let c = client.clone();
            async move {
                let t = Instant::now();
                let r = c.post(url).body(body).send().await.unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await.unwrap();
                t.elapsed()
            }
        };
        // Warm-up.
        for _ in 0..200 {
            call(format!("http://{upstream}/v1/completions")).await;
            call(format!("http://{proxy}/v1/completions")).await;
        }
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rps));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let n = rps * secs;
        let mut tasks = Vec::with_capacity(n as usize);
        let started = Instant::now();
        for i in 0..n {
            tick.tick().await;
            let url = if i % 2 == 0 {
                format!("http://{upstream}/v1/completions")
            } else {
                format!("http://{proxy}/v1/completions")
            };
            tasks.push((i % 2 == 1, tokio::spawn(call(url))));
        }
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        for (via, t) in tasks {
            let d = t.await.unwrap();
            if via { proxied.push(d) } else { direct.push(d) }
        }
        let took = started.elapsed();
        direct.sort();
        proxied.sort();
        let q = |v: &Vec<Duration>, p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        println!(
            "{n} requests in {:.2} s ({:.0}/s offered, half direct, half through the activator)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        println!("{:<20} {:>10} {:>10} {:>10}", "path", "p50", "p99", "p99.9");
        for (name, v) in [("direct", &direct), ("activator", &proxied)] {
            println!(
                "{:<20} {:>10.1?} {:>10.1?} {:>10.1?}",
                name,
                q(v, 0.5),
                q(v, 0.99),
                q(v, 0.999)
            );
        }
        println!(
            "added by the activator: p50 {:?}, p99 {:?}",
            q(&proxied, 0.5).saturating_sub(q(&direct, 0.5)),
            q(&proxied, 0.99).saturating_sub(q(&direct, 0.99))
        );
    });
}
