//! A simulated fleet against the scaler binary: N synthetic GPU nodes on loopback, each serving
//! a real collector page (rendered by the collector's own exposition code: 8 GPUs, 8 vLLM
//! targets, one workload per target; the `series=contract` page the scaler asks for) that is
//! rendered anew every second, as a collector serves the scaler: a stream of pages on one
//! answer (`stream=1`), or with `FLEET_STREAM=0` a held read (`?wait=&after=`), as an older
//! collector does. Every workload is registered (`--workloads-file`). As a collector does, a
//! node sends a page when its readings change, not when a render only re-dates them: a `busy`
//! share of the nodes has new readings at every render, the rest send heartbeats (every 5 s,
//! the scaler's `--collector-wait`). Reported per fleet size and busy share: the scaler's CPU
//! (share of one core) and RSS while it keeps up, the synthetic fleet's own CPU (the bench
//! process, the baseline the scaler's figure sits beside on this 2-core machine), and
//! freshness: a queue change on one node to the value KEDA reads from GetMetrics.
//!
//! `cargo bench -p gpuscale-scaler --bench fleet` (env: FLEET_NODES="100,1000,5000",
//! FLEET_BUSY="1,0" (shares of nodes whose readings change every second), FLEET_SECONDS=15 for
//! the CPU window, FLEET_CHANGES=10, FLEET_SCALER_BIN to run another scaler build, FLEET_LOG for
//! its RUST_LOG, FLEET_STREAM=0 for nodes that hold reads rather than stream).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use axum::response::IntoResponse;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use gpuscale_scaler::keda::pb::{GetMetricsRequest, ScaledObjectRef};

mod common;
use common::{GPUS, PLACEHOLDER, TARGETS, page};
use gpuscale_testkit::{Kill, free_port};

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The fleet's state: one template per node and when it was last rendered.
struct Fleet {
    templates: Vec<RwLock<String>>,
    rendered: Vec<AtomicU64>,
    /// When each node's readings last changed: what a held read waits for.
    values_at: Vec<AtomicU64>,
    changed: tokio::sync::Notify,
    /// Requests answered.
    answers: AtomicU64,
}

impl Fleet {
    fn rendered(&self, i: usize) -> f64 {
        f64::from_bits(self.rendered[i].load(Ordering::Relaxed))
    }

    fn render(&self, i: usize, at: f64) {
        self.rendered[i].store(at.to_bits(), Ordering::Relaxed);
    }

    fn values_at(&self, i: usize) -> f64 {
        f64::from_bits(self.values_at[i].load(Ordering::Relaxed))
    }

    /// Until node `i` has readings newer than `after`, or the 5 s heartbeat.
    async fn newer(&self, i: usize, after: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.values_at(i) > after || tokio::time::timeout_at(deadline, n).await.is_err() {
                return;
            }
        }
    }

    /// Node `i`'s page as last rendered.
    fn page(&self, i: usize) -> String {
        let ts = format!("{}", self.rendered(i));
        self.templates[i]
            .read()
            .unwrap()
            .replace(&format!("{PLACEHOLDER}"), &ts)
    }

    /// Node `i` rendered new readings at `at`.
    fn change(&self, i: usize, at: f64) {
        self.render(i, at);
        self.values_at[i].store(at.to_bits(), Ordering::Relaxed);
    }
}

/// A stream of node `i`'s pages, as a collector answers `stream=1`: the page at once, then each
/// page with new readings, or the current one after 5 s without (the heartbeat). Each page sent
/// counts as an answer.
fn stream(f: Arc<Fleet>, i: usize) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let mut after = f64::NEG_INFINITY;
        loop {
            f.newer(i, after).await;
            after = f.values_at(i);
            f.answers.fetch_add(1, Ordering::Relaxed);
            if tx.send(Ok(f.page(i))).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            (gpuscale_contract::STREAM_HEADER, "pages"),
        ],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn serve_fleet(n: usize, busy: f64, streams: bool) -> (Arc<Fleet>, u16) {
    let now = unix_now();
    let fleet = Arc::new(Fleet {
        templates: (0..n).map(|i| RwLock::new(page(i, 0.0))).collect(),
        rendered: (0..n).map(|_| AtomicU64::new(now.to_bits())).collect(),
        values_at: (0..n).map(|_| AtomicU64::new(now.to_bits())).collect(),
        changed: tokio::sync::Notify::new(),
        answers: AtomicU64::new(0),
    });
    // Every node renders once a second, at its own phase; the first `busy` share of them with
    // new readings each time.
    let busy_nodes = (busy * n as f64).round() as usize;
    let f = fleet.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // A tick the bench process was too busy to run is late, not made up in a burst: a
        // burst would render some nodes twice within a second and overstate the page rate.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut k = 0usize;
        loop {
            tick.tick().await;
            let now = unix_now();
            for i in (k % 10..n).step_by(10) {
                if i < busy_nodes {
                    f.change(i, now);
                } else {
                    f.render(i, now);
                }
            }
            k += 1;
            f.changed.notify_waiters();
        }
    });
    let f = fleet.clone();
    let app = axum::Router::new().route(
        "/n/{i}/metrics",
        axum::routing::get(
            move |axum::extract::Path(i): axum::extract::Path<usize>,
                  axum::extract::RawQuery(q): axum::extract::RawQuery| {
                let f = f.clone();
                async move {
                    if streams
                        && q.as_deref()
                            .is_some_and(|q| q.split('&').any(|p| p == "stream=1"))
                    {
                        return stream(f, i);
                    }
                    let after = q.as_deref().and_then(|q| {
                        q.split('&')
                            .find_map(|p| p.strip_prefix("after="))
                            .and_then(|v| v.parse::<f64>().ok())
                    });
                    if let Some(after) = after {
                        f.newer(i, after).await;
                    }
                    f.answers.fetch_add(1, Ordering::Relaxed);
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        f.page(i),
                    )
                        .into_response()
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (fleet, port)
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[rank]
}

/// A counter or a histogram's sum/count from the scaler's own /metrics.
async fn scaler_metric(http: u16, name: &str) -> f64 {
    let page = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn run(n: usize, busy: f64, seconds: u64, changes: usize, streams: bool) {
    let (fleet, port) = serve_fleet(n, busy, streams).await;
    let dir = std::env::temp_dir().join(format!("gpuscale-fleet-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workloads.txt");
    let mut lines = String::new();
    for i in 0..n {
        for t in 0..TARGETS {
            lines.push_str(&format!(
                "fleet/w{i}-{t}:policy=queue,queue.target=10,queue.scaleDownWindow=0s\n"
            ));
        }
    }
    std::fs::write(&file, lines).unwrap();
    let (gport, hport) = (free_port(), free_port());
    // FLEET_SCALER_BIN: another build of the scaler (an older release, for a baseline run on
    // the same fleet in the same session).
    let bin =
        std::env::var("FLEET_SCALER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gpuscale-scaler").into());
    let mut cmd = Command::new(bin);
    cmd.args(["--grpc-listen", &format!("127.0.0.1:{gport}")])
        .args(["--http-listen", &format!("127.0.0.1:{hport}")])
        .args(["--workloads-file", file.to_str().unwrap()])
        .args(["--max-workloads", &(n * TARGETS + 1000).to_string()])
        .env(
            "RUST_LOG",
            std::env::var("FLEET_LOG").unwrap_or_else(|_| "error".into()),
        )
        // As the image runs it (deploy/docker/Dockerfile.scaler): mimalloc returning freed
        // memory at once, which keeps RSS within the 5,000-node budget.
        .env(
            "MIMALLOC_PURGE_DELAY",
            std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "0".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for i in 0..n {
        cmd.args(["--collector", &format!("http://127.0.0.1:{port}/n/{i}/metrics")]);
    }
    let scaler = Kill(cmd.spawn().unwrap());
    let pid = scaler.0.id();
    let mut client = loop {
        if let Ok(c) = ExternalScalerClient::connect(format!("http://127.0.0.1:{gport}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let so = ScaledObjectRef {
        name: "w0-0".into(),
        namespace: "fleet".into(),
        scaler_metadata: [
            ("deployment", "w0-0"),
            ("policy", "queue"),
            ("queue.target", "10"),
            ("queue.scaleDownWindow", "0s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>(),
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
    // Until the whole fleet is read: the first answer for node 0's workload.
    let start = Instant::now();
    while read().await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "{n} nodes: no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let me = std::process::id();
    let decisions = async || {
        (
            scaler_metric(hport, "gpuscale_scaler_polls_total").await
                + scaler_metric(hport, "gpuscale_scaler_pushed_decisions_total").await,
            scaler_metric(hport, "gpuscale_scaler_poll_duration_seconds_sum").await,
        )
    };
    let d0 = decisions().await;
    let e0 = scaler_metric(hport, "gpuscale_scaler_poll_errors_total").await;
    let (c0, b0, a0, t0) = (
        cpu_seconds(pid),
        cpu_seconds(me),
        fleet.answers.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Everything this window measures is read at its end, before the scaler's /metrics is
    // asked for (rendering that page is work of its own, and takes a while at 40,000
    // workloads: read after it, the CPU and page figures would count it against `wall`).
    let wall = t0.elapsed().as_secs_f64();
    let scaler_cpu = (cpu_seconds(pid) - c0) / wall;
    let fleet_cpu = (cpu_seconds(me) - b0) / wall;
    let pages = (fleet.answers.load(Ordering::Relaxed) - a0) as f64 / wall;
    let d1 = decisions().await;
    let errors = (scaler_metric(hport, "gpuscale_scaler_poll_errors_total").await - e0) / wall;
    let per_s = (d1.0 - d0.0) / wall;
    let decide_ms = (d1.1 - d0.1) / (d1.0 - d0.0).max(1.0) * 1e3;
    let rss = rss_mib(pid);
    // The scaler's own page, as a Prometheus scrape gets it, under the fleet's load.
    let t = Instant::now();
    let own = reqwest::get(format!("http://127.0.0.1:{hport}/metrics"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let own_ms = t.elapsed().as_secs_f64() * 1e3;

    // Freshness: node 0's first workload goes from 0 to 100 waiting beside its 4 running (the
    // queue rule on load: ceil(104 / 10) = 11 replicas) and back (ceil(4 / 10) = 1).
    let mut lat = Vec::new();
    for k in 0..changes {
        tokio::time::sleep(Duration::from_millis(700 + (k as u64 * 379) % 900)).await;
        let (waiting, want) = if k % 2 == 0 { (100.0, 11.0) } else { (0.0, 1.0) };
        *fleet.templates[0].write().unwrap() = page(0, waiting);
        // The node renders the change at once, as a collector does when a reading comes in.
        fleet.change(0, unix_now());
        fleet.changed.notify_waiters();
        let t = Instant::now();
        let mut seen = false;
        while t.elapsed() < Duration::from_secs(30) {
            if read().await == Some(want) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A change not seen within 30 s: the scaler did not keep up (shown as such).
        lat.push(if seen {
            t.elapsed().as_secs_f64()
        } else {
            f64::INFINITY
        });
        if !seen {
            break;
        }
    }
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{:>5.0} ms", v * 1e3)
        } else {
            "> 30 s (did not keep up)".to_string()
        }
    };
    println!(
        "  {n:>5} nodes ({:>6} workloads), {:>3.0} % busy: scaler {:>5.1} % of a core, RSS {:>6.1} MiB; fleet server {:>5.1} % ({:>6.0} pages/s, {errors:.1} failed reads/s); \
         {per_s:.1} decisions/s of {decide_ms:.2} ms; change -> GetMetrics p50 {}, p99 {}; first answer after {ready_s:.1} s; its /metrics {:.1} MB in {own_ms:.0} ms",
        n * TARGETS,
        busy * 100.0,
        scaler_cpu * 100.0,
        rss,
        fleet_cpu * 100.0,
        pages,
        ms(p50),
        ms(p99),
        own as f64 / 1e6,
    );
    drop(scaler);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    let nodes = std::env::var("FLEET_NODES").unwrap_or_else(|_| "100,1000,5000".into());
    let seconds = std::env::var("FLEET_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let changes = std::env::var("FLEET_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // FLEET_STREAM=0: the nodes answer as collectors that do not stream (held reads), the
    // baseline for what streaming saves, with the same scaler in the same session.
    let streams = std::env::var("FLEET_STREAM").map_or(true, |v| v != "0");
    let busy: Vec<f64> = std::env::var("FLEET_BUSY")
        .unwrap_or_else(|_| "1,0".into())
        .split(',')
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .filter(|b| (0.0..=1.0).contains(b))
        .collect();
    println!(
        "a fleet of synthetic collectors ({GPUS} GPUs, {TARGETS} vLLM targets each, every page rendered once a second; `busy`: the share with new readings at each render, the rest sending 5 s heartbeats; pages {}), the scaler binary at its defaults (MIMALLOC_PURGE_DELAY=0, as in its image):",
        if streams {
            "streamed (one answer per node)"
        } else {
            "on held reads (one request per page; FLEET_STREAM=0)"
        }
    );
    for n in nodes.split(',').filter_map(|v| v.trim().parse::<usize>().ok()) {
        for &b in &busy {
            run(n, b, seconds, changes, streams).await;
        }
    }
}
