//! Shared by the scaler's tests: a model server serving a captured vLLM page with a settable
//! queue, a real collector (the library's tick loop and router, in-process, on a real socket),
//! and the scaler binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gpuscale_collector::scrape::{CustomNames, Preset, Target};
use gpuscale_collector::service::{Config, Pages, router, tick_loop};
pub use gpuscale_testkit::{Kill, free_port};

/// The captured vLLM page (shared/fixtures), or a page in the same format when the fixtures
/// are not beside this checkout.
pub fn vllm_page() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/metrics/vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt");
    match std::fs::read_to_string(&p) {
        Ok(s) => s,
        Err(_) => {
            if gpuscale_testkit::ci() {
                panic!("{} is missing under CI", p.display());
            }
            println!(
                "SKIPPED (fixture): {} not found; using a minimal vLLM page",
                p.display()
            );
            "vllm:num_requests_running{engine=\"0\",model_name=\"Qwen/Qwen2.5-0.5B-Instruct\"} 0.0\n\
             vllm:num_requests_waiting{engine=\"0\",model_name=\"Qwen/Qwen2.5-0.5B-Instruct\"} 0.0\n\
             vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"Qwen/Qwen2.5-0.5B-Instruct\"} 0.0\n"
                .to_string()
        }
    }
}

/// A model server whose queue the test sets; `None` answers 500.
#[derive(Clone)]
pub struct ModelServer {
    pub addr: SocketAddr,
    state: Arc<RwLock<Option<(f64, f64)>>>,
}

impl ModelServer {
    pub async fn start() -> ModelServer {
        let state: Arc<RwLock<Option<(f64, f64)>>> = Arc::new(RwLock::new(Some((0.0, 0.0))));
        let page = vllm_page();
        let s = state.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let s = s.clone();
                let page = page.clone();
                async move {
                    let Some((waiting, running)) = *s.read().unwrap() else {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    };
                    let body = page
                        .lines()
                        .map(|l| {
                            if l.starts_with("vllm:num_requests_waiting{") {
                                format!("{} {waiting:.1}", l.rsplit_once(' ').unwrap().0)
                            } else if l.starts_with("vllm:num_requests_running{") {
                                format!("{} {running:.1}", l.rsplit_once(' ').unwrap().0)
                            } else {
                                l.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                        + "\n";
                    (axum::http::StatusCode::OK, body)
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        ModelServer { addr, state }
    }

    pub fn set(&self, waiting: f64, running: f64) {
        *self.state.write().unwrap() = Some((waiting, running));
    }

    pub fn fail(&self) {
        *self.state.write().unwrap() = None;
    }
}

/// A real collector (library loop and router) scraping `targets` every 100 ms, with two fake GPUs.
pub async fn collector(targets: &[(&str, SocketAddr)]) -> SocketAddr {
    let specs: Vec<String> = targets
        .iter()
        .map(|(w, a)| format!("{w}=http://{a}/metrics"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    collector_with(&specs, Duration::from_secs(1)).await
}

/// A real collector scraping `--scrape-target` specs every 100 ms, each within `scrape_timeout`.
pub async fn collector_with(targets: &[&str], scrape_timeout: Duration) -> SocketAddr {
    collector_config(targets, scrape_timeout, false).await
}

/// As [`collector`], also exporting dcgm-exporter's names (`--dcgm-compat`).
pub async fn collector_dcgm(targets: &[(&str, SocketAddr)]) -> SocketAddr {
    let specs: Vec<String> = targets
        .iter()
        .map(|(w, a)| format!("{w}=http://{a}/metrics"))
        .collect();
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    collector_config(&specs, Duration::from_secs(1), true).await
}

async fn collector_config(targets: &[&str], scrape_timeout: Duration, dcgm_compat: bool) -> SocketAddr {
    let pages: Arc<RwLock<Pages>> = Arc::default();
    let config = Config {
        node: "gpu-node-1".into(),
        targets: targets.iter().map(|t| Target::parse(t).unwrap()).collect(),
        preset: Preset::Auto,
        custom: CustomNames::default(),
        interval: Duration::from_millis(100),
        scrape_timeout,
        max_page_bytes: 1 << 20,
        max_concurrent_scrapes: 4,
        bearer: None,
        dcgm_compat,
        pod_resources_socket: None,
        pod_resources_interval: Duration::from_secs(60),
        discovered: None,
    };
    let (gpus, _handle) = gpuscale_collector::gpu::FakeGpus::new(2);
    tokio::spawn(tick_loop(config, Box::new(gpus), pages.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(gpuscale_edge::server::serve(
        l,
        router(pages),
        std::future::pending(),
    ));
    addr
}

pub struct Scaler {
    pub proc: Kill,
    pub grpc: String,
    pub http: String,
}

/// Start the scaler binary and wait for /readyz. A scaler that exits before it is ready (a
/// port taken between [`free_port`] and its bind) is started again on other ports.
pub async fn scaler(args: &[&str]) -> Scaler {
    for _ in 0..3 {
        let grpc_port = free_port();
        let http_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut s = Scaler {
            proc: Kill(child),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            http: format!("http://127.0.0.1:{http_port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{}/readyz", s.http)).send().await
                && r.status().is_success()
            {
                return s;
            }
            if let Some(status) = s.proc.0.try_wait().unwrap() {
                eprintln!("scaler exited before it was ready ({status}); starting it again");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("scaler did not become ready");
}

/// What KEDA would read for one ScaledObject: GetMetrics (after GetMetricSpec names the metric)
/// and IsActive.
pub type Answer = (Result<f64, tonic::Status>, Result<bool, tonic::Status>);

/// Ask the scaler as KEDA does.
pub async fn ask(
    c: &mut gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient<
        tonic::transport::Channel,
    >,
    r: &gpuscale_scaler::keda::pb::ScaledObjectRef,
) -> Answer {
    let name = c
        .get_metric_spec(r.clone())
        .await
        .unwrap()
        .into_inner()
        .metric_specs[0]
        .metric_name
        .clone();
    let m = c
        .get_metrics(gpuscale_scaler::keda::pb::GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: name,
        })
        .await
        .map(|m| m.into_inner().metric_values[0].metric_value_float);
    let a = c.is_active(r.clone()).await.map(|a| a.into_inner().result);
    (m, a)
}

/// One unlabelled series (a counter's `_total`) from the scaler's own /metrics.
pub async fn scaler_metric(scaler: &Scaler, name: &str) -> f64 {
    let page = reqwest::get(format!("{}/metrics", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} on the scaler's /metrics"))
}

/// The gpuscale-activator binary (another package's), or `None` after reporting it missing.
pub fn activator_bin() -> Option<std::path::PathBuf> {
    let bin = gpuscale_testkit::workspace_bin("gpuscale-activator");
    if bin.is_none() {
        gpuscale_testkit::missing(
            "the gpuscale-activator binary is not built",
            "./scripts/test runs `cargo test --workspace`, which builds it; alone, run `cargo build -p gpuscale-activator` first",
        );
    }
    bin
}
