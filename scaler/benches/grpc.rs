//! GetMetrics under load, side by side with a bare tonic server of the same proto that answers
//! a constant (the baseline: what tonic and HTTP/2 cost here), then the scaler binary's RSS with
//! 10 000 ScaledObjects, then push latency (activator report to StreamIsActive message).
//!
//! `cargo bench -p gpuscale-scaler --bench grpc` (env: BENCH_SECONDS, BENCH_CLIENTS, BENCH_WORKLOADS).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuscale_contract::Clock;
use gpuscale_contract::WorkloadKey;
use gpuscale_scaler::keda::grpc::Scaler;
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use gpuscale_scaler::keda::pb::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use gpuscale_scaler::keda::pb::*;
use gpuscale_scaler::keda::trigger::Trigger;
use gpuscale_scaler::sources::aggregate::{Observed, Page, Source, View};
use gpuscale_scaler::telemetry::Telemetry;
use gpuscale_scaler::workloads::Workloads;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The baseline: same service, constant answers, no state.
struct Echo;

#[tonic::async_trait]
impl ExternalScaler for Echo {
    async fn is_active(&self, _: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        Ok(Response::new(IsActiveResponse { result: true }))
    }
    type StreamIsActiveStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
    async fn stream_is_active(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_metric_spec(
        &self,
        _: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn get_metrics(
        &self,
        r: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: r.into_inner().metric_name,
                metric_value: 1,
                metric_value_float: 1.0,
            }],
        }))
    }
}

fn so(i: usize) -> ScaledObjectRef {
    let mut md = HashMap::new();
    md.insert("scalerAddress".to_string(), "gpuscale-scaler:9090".to_string());
    md.insert("deployment".to_string(), format!("model-{i}"));
    md.insert("policy".to_string(), "queue+gpu".to_string());
    md.insert("queue.target".to_string(), "4".to_string());
    ScaledObjectRef {
        name: format!("model-{i}"),
        namespace: "llm".to_string(),
        scaler_metadata: md,
    }
}

/// How a server takes its connections.
#[derive(Clone, Copy)]
enum Accept {
    /// tonic's own listener, as a plain `Server::serve` would: TCP_NODELAY on.
    TonicDefault,
    /// A bare `TcpListenerStream`: TCP_NODELAY off, Nagle and delayed ACKs on small frames.
    BareStream,
    /// Exactly as the gpuscale-scaler binary serves plaintext gRPC (`tls::plaintext`).
    Scaler,
}

async fn serve<S: ExternalScaler>(svc: S, accept: Accept) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tonic::transport::Server::builder().add_service(ExternalScalerServer::new(svc));
    match accept {
        Accept::TonicDefault => {
            let incoming = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
            tokio::spawn(server.serve_with_incoming(incoming));
        }
        Accept::BareStream => {
            tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)));
        }
        Accept::Scaler => {
            tokio::spawn(server.serve_with_incoming(gpuscale_scaler::tls::plaintext(l)));
        }
    }
    addr
}

struct Run {
    calls: u64,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// Four connections (KEDA shares one per scaler address; a few model a few operators) and
/// one request per workload.
async fn connect(
    addr: SocketAddr,
    workloads: usize,
    names: &[String],
) -> (Vec<Channel>, Arc<Vec<GetMetricsRequest>>) {
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let reqs = (0..workloads)
        .map(|i| GetMetricsRequest {
            scaled_object_ref: Some(so(i)),
            metric_name: names[i].clone(),
        })
        .collect();
    (channels, Arc::new(reqs))
}

fn summarize(mut all: Vec<Duration>, took: Duration) -> Run {
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        calls: all.len() as u64,
        per_sec: all.len() as f64 / took.as_secs_f64(),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
    }
}

async fn load(addr: SocketAddr, workloads: usize, clients: usize, secs: u64, names: Arc<Vec<String>>) -> Run {
    let (channels, reqs) = connect(addr, workloads, &names).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = ExternalScalerClient::new(channels[c % channels.len()].clone());
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = c * 7919;
            while Instant::now() < deadline {
                i = (i + 104_729) % reqs.len();
                let t = Instant::now();
                let r = client.get_metrics(reqs[i].clone()).await;
                lat.push(t.elapsed());
                assert!(r.is_ok(), "{r:?}");
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    summarize(all, started.elapsed())
}

/// Open loop: `rate` GetMetrics a second over `clients` clients on a fixed schedule, each
/// latency measured from when the call was due (so a stall counts for every call it delayed,
/// not once).
async fn load_paced(
    addr: SocketAddr,
    workloads: usize,
    clients: usize,
    rate: f64,
    secs: u64,
    names: Arc<Vec<String>>,
) -> Run {
    let (channels, reqs) = connect(addr, workloads, &names).await;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let total = (rate * secs as f64) as u64;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = ExternalScalerClient::new(channels[c % channels.len()].clone());
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = c as u64;
            let mut i = c * 7919;
            while k < total {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                i = (i + 104_729) % reqs.len();
                let r = client.get_metrics(reqs[i].clone()).await;
                lat.push(due.elapsed());
                assert!(r.is_ok(), "{r:?}");
                k += clients as u64;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    summarize(all, start.elapsed())
}

/// Every workload known idle at zero replicas (nothing queued, every signal read): a known
/// zero, as a collector page and an activator's report would make it.
fn idle_view(at: Duration, keys: &[WorkloadKey]) -> View {
    let mut page = Page::default();
    for k in keys {
        page.workloads.insert(
            k.clone(),
            Observed {
                up: 0,
                kv_cache_usage: Some(0.0),
                gpu_utilization: Some(0.0),
                measured: at.as_secs_f64(),
                ..Observed::default()
            },
        );
    }
    let src = Source {
        last_ok: Some((at, page)),
        error: None,
    };
    View::combine([("bench", &src)])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = env("BENCH_SECONDS", if quick { 1 } else { 5 });
    let clients = env("BENCH_CLIENTS", 64) as usize;
    let n = env("BENCH_WORKLOADS", if quick { 500 } else { 10_000 }) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let clock = Clock::start();
        let workloads = Arc::new(Workloads::new(n + 100_000, Duration::from_secs(3600)));
        let telemetry = Arc::new(Telemetry::default());
        let mut names = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            let r = so(i);
            let t = Trigger::parse(&r.namespace, &r.scaler_metadata).unwrap();
            names.push(t.metric_name());
            keys.push(t.workload.clone());
            workloads.register(t, "ScaledObject bench", clock.now()).unwrap();
        }
        let t = Instant::now();
        workloads.tick(&idle_view(clock.now(), &keys), clock.now());
        println!("decide {n} workloads (one poll tick): {:?}", t.elapsed());
        let names = Arc::new(names);

        // The baseline is an echo served the default way (TCP_NODELAY on); the scaler is served
        // as its binary serves it. The echo served over a bare stream shows what Nagle costs.
        let echo = serve(Echo, Accept::TonicDefault).await;
        let echo_bare = serve(Echo, Accept::BareStream).await;
        let scaler = serve(
            Scaler::new(workloads.clone(), telemetry.clone(), clock),
            Accept::Scaler,
        )
        .await;
        // Warm both, then measure each twice, interleaved, to see the noise.
        let _ = load(echo, n, clients, 1, names.clone()).await;
        let _ = load(scaler, n, clients, 1, names.clone()).await;
        println!(
            "GetMetrics, {n} ScaledObjects, {clients} concurrent clients over 4 connections, {secs} s each:"
        );
        println!(
            "{:<22} {:>10} {:>12} {:>10} {:>10} {:>10}",
            "server", "calls", "calls/s", "p50", "p99", "p99.9"
        );
        for round in 0..2 {
            for (name, addr) in [
                ("tonic echo (baseline)", echo),
                ("echo, no TCP_NODELAY", echo_bare),
                ("gpuscale scaler", scaler),
            ] {
                let r = load(addr, n, clients, secs, names.clone()).await;
                println!(
                    "{:<22} {:>10} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?}  (round {})",
                    name,
                    r.calls,
                    r.per_sec,
                    r.p50,
                    r.p99,
                    r.p999,
                    round + 1
                );
            }
        }

        // Paced, as a fleet of KEDA operators polls: the 3,000 calls a second.
        let rate = env("BENCH_PACED_RATE", 3000) as f64;
        println!("GetMetrics paced at {rate:.0}/s (open loop, latency from when each call was due), {secs} s each:");
        for round in 0..2 {
            for (name, addr) in [("tonic echo (baseline)", echo), ("gpuscale scaler", scaler)] {
                let r = load_paced(addr, n, clients, rate, secs, names.clone()).await;
                println!(
                    "{:<22} {:>10} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?}  (round {})",
                    name,
                    r.calls,
                    r.per_sec,
                    r.p50,
                    r.p99,
                    r.p999,
                    round + 1
                );
            }
        }

        // The same load while the scaler's poll loop decides every workload every 500 ms and
        // new ScaledObjects arrive (20 a second): what KEDA sees during ticks and churn.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (workloads, keys, stop) = (workloads.clone(), keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                let mut last_tick = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if last_tick.elapsed() >= Duration::from_millis(500) {
                        last_tick = Instant::now();
                        workloads.tick(&idle_view(clock.now(), &keys), clock.now());
                    }
                    let mut md = HashMap::new();
                    md.insert("deployment".to_string(), format!("churn-{i}"));
                    if let Ok(t) = Trigger::parse("bench", &md) {
                        let _ = workloads.register(t, "ScaledObject churn", clock.now());
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        for round in 0..2 {
            let r = load(scaler, n, clients, secs, names.clone()).await;
            println!(
                "{:<22} {:>10} {:>12.0} {:>10.1?} {:>10.1?} {:>10.1?}  (round {}, ticking every 500 ms, 20 new ScaledObjects/s)",
                "gpuscale scaler",
                r.calls,
                r.per_sec,
                r.p50,
                r.p99,
                r.p999,
                round + 1
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.join();

        // Push latency: an activator's report to the stream's `true`, over TCP.
        let mut c = ExternalScalerClient::connect(format!("http://{scaler}"))
            .await
            .unwrap();
        let r0 = so(0);
        let key = Trigger::parse(&r0.namespace, &r0.scaler_metadata)
            .unwrap()
            .workload;
        let mut stream = c.stream_is_active(r0).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(!first.result);
        let mut pushes = Vec::new();
        for _ in 0..200 {
            let now = clock.now();
            let t = Instant::now();
            workloads.held(&key, 1.0, None, now);
            let m = stream.message().await.unwrap().unwrap();
            pushes.push(t.elapsed());
            assert!(m.result);
            // Back to idle: no held requests, a fresh idle view.
            workloads.held(&key, 0.0, None, now);
            workloads.tick(&idle_view(clock.now(), &keys), clock.now());
        }
        pushes.sort();
        println!(
            "push latency (report -> StreamIsActive message), 200 edges: p50 {:?}, p99 {:?}, max {:?}",
            pushes[100], pushes[197], pushes[199]
        );
    });

    // RSS of the real binary holding n ScaledObjects.
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
        .args([
            "--grpc-listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let pid = child.id();
    rt.block_on(async move {
        let mut c = None;
        for _ in 0..100 {
            if let Ok(x) = ExternalScalerClient::connect(format!("http://{grpc}")).await {
                c = Some(x);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = c.unwrap();
        let before = rss_kib(pid);
        for i in 0..n {
            c.get_metric_spec(so(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        println!(
            "scaler binary RSS: {:.1} MiB at start, {:.1} MiB with {n} ScaledObjects registered and decided",
            before as f64 / 1024.0,
            rss_kib(pid) as f64 / 1024.0
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
