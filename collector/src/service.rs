//! The collector process: a tick loop that reads GPUs and scrapes model servers into one
//! snapshot, and an HTTP server that serves the last rendered snapshot. No NVML call and no
//! scrape ever happens on the request path.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;

use crate::exposition::{Format, QueueReading, Snapshot, render};
use crate::gpu::GpuSource;
use crate::scrape::{CustomNames, Preset, ScrapeError, Target, fetch, queue_depth};

/// What the loop needs.
pub struct Config {
    /// This node's name (label on every series).
    pub node: String,
    /// Static scrape targets.
    pub targets: Vec<Target>,
    /// Server preset for the targets.
    pub preset: Preset,
    /// User-named queue metrics.
    pub custom: CustomNames,
    /// Time between ticks.
    pub interval: Duration,
    /// Per-scrape timeout.
    pub scrape_timeout: Duration,
    /// Largest page accepted from a target.
    pub max_page_bytes: usize,
    /// Scrapes in flight at once.
    pub max_concurrent_scrapes: usize,
    /// Also export dcgm-exporter's names.
    pub dcgm_compat: bool,
    /// The kubelet's PodResources socket (`None`: no attribution).
    pub pod_resources_socket: Option<std::path::PathBuf>,
    /// How often to refresh the attribution.
    pub pod_resources_interval: Duration,
    /// Targets found by `--kube` discovery, updated by the pod watch.
    pub discovered: Option<crate::discovery::SharedTargets>,
}

/// The last rendered pages, swapped whole each tick.
#[derive(Default)]
pub struct Pages {
    prometheus: String,
    openmetrics: String,
    ready: bool,
}

/// Shared between the loop and the server.
pub type SharedPages = Arc<RwLock<Pages>>;

async fn metrics(State(pages): State<SharedPages>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = match pages.read() {
        Ok(p) if p.ready => match format {
            Format::Prometheus => p.prometheus.clone(),
            Format::OpenMetrics => p.openmetrics.clone(),
        },
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "no complete tick yet\n").into_response(),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn readyz(State(pages): State<SharedPages>) -> Response {
    match pages.read() {
        Ok(p) if p.ready => (StatusCode::OK, "ready\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete tick\n",
        )
            .into_response(),
    }
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(pages: SharedPages) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(pages)
}

/// Run ticks forever, publishing each snapshot into `pages`.
pub async fn tick_loop(config: Config, gpus: Box<dyn GpuSource>, pages: SharedPages) {
    let client = match reqwest::Client::builder()
        .connect_timeout(config.scrape_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; scraping disabled");
            reqwest::Client::new()
        }
    };
    let gpu_name = gpus.name().to_string();
    let attribution = Arc::new(RwLock::new(crate::podresources::Attribution::new()));
    if let Some(socket) = config.pod_resources_socket.clone() {
        tokio::spawn(crate::podresources::refresh_loop(
            socket,
            config.pod_resources_interval,
            attribution.clone(),
        ));
    }
    // NVML calls block: they run on one dedicated thread, fed through a channel.
    let (gpu_tx, mut gpu_rx) = tokio::sync::mpsc::channel(1);
    let (req_tx, req_rx) = std::sync::mpsc::channel::<()>();
    let mut gpus = gpus;
    std::thread::Builder::new()
        .name("gpu-source".into())
        .spawn(move || {
            while req_rx.recv().is_ok() {
                if gpu_tx.blocking_send(gpus.read()).is_err() {
                    break;
                }
            }
        })
        .ok();
    let limit = Arc::new(Semaphore::new(config.max_concurrent_scrapes.max(1)));
    // Failed scrapes per target URL; bounded by forgetting targets that are gone.
    let mut errors: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut ticks: u64 = 0;
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let started = Instant::now();
        let _ = req_tx.send(());
        // Static targets plus whatever the pod watch found this tick (bounded like static ones).
        let mut targets = config.targets.clone();
        if let Some(found) = &config.discovered
            && let Ok(f) = found.read()
        {
            targets.extend(f.iter().take(1024).cloned());
        }
        let tasks: Vec<_> = targets
            .iter()
            .map(|t| {
                let (client, limit, url) = (client.clone(), limit.clone(), t.url.clone());
                let (timeout, max) = (config.scrape_timeout, config.max_page_bytes);
                tokio::spawn(async move {
                    let _permit = limit.acquire().await;
                    let t0 = Instant::now();
                    (
                        fetch(&client, &url, timeout, max).await,
                        t0.elapsed().as_secs_f64(),
                    )
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for (task, t) in tasks.into_iter().zip(&targets) {
            results.push(task.await.unwrap_or_else(|e| {
                let err = ScrapeError::Http {
                    url: t.url.clone(),
                    message: format!("scrape task failed: {e}"),
                };
                (Err(err), 0.0)
            }));
        }
        let (gpu_readings, gpu_error) = match gpu_rx.recv().await {
            Some(Ok(g)) => (g, false),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "GPU read failed");
                (Vec::new(), true)
            }
            None => (Vec::new(), true),
        };
        let mut queues = Vec::with_capacity(results.len());
        errors.retain(|url, _| targets.iter().any(|t| &t.url == url));
        for (target, (result, secs)) in targets.into_iter().zip(results) {
            let errors_so_far = errors.get(&target.url).copied().unwrap_or(0);
            let mut q = QueueReading {
                target,
                server: None,
                waiting: None,
                running: None,
                kv_cache: None,
                up: false,
                duration_seconds: secs,
                errors_total: errors_so_far,
            };
            match result {
                Ok(fams) => {
                    q.up = true;
                    match queue_depth(&fams, config.preset, &config.custom) {
                        Some(d) => {
                            q.server = Some(d.server);
                            q.waiting = d.waiting;
                            q.running = d.running;
                            q.kv_cache = d.kv_cache;
                        }
                        None => tracing::warn!(target = %q.target.url,
                            "no queue metrics recognised on the page; set --preset or --waiting-metric"),
                    }
                }
                Err(e) => {
                    q.errors_total = errors_so_far + 1;
                    errors.insert(q.target.url.clone(), q.errors_total);
                    tracing::warn!(error = %e, "scrape failed");
                }
            }
            queues.push(q);
        }
        ticks += 1;
        let snapshot = Snapshot {
            node: config.node.clone(),
            gpu_source: gpu_name.clone(),
            gpus: gpu_readings,
            gpu_error,
            attribution: attribution.read().map(|a| a.clone()).unwrap_or_default(),
            queues,
            timestamp_seconds: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            tick_seconds: started.elapsed().as_secs_f64(),
            ticks_total: ticks,
        };
        let prometheus = render(&snapshot, Format::Prometheus, config.dcgm_compat);
        let openmetrics = render(&snapshot, Format::OpenMetrics, config.dcgm_compat);
        if let Ok(mut p) = pages.write() {
            *p = Pages {
                prometheus,
                openmetrics,
                ready: true,
            };
        }
    }
}
