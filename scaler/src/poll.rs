//! Reading the collectors: every `interval`, fetch each collector's `/metrics` (concurrently,
//! at most `max_concurrent` at once, each within `timeout` and `max_page_bytes`), combine the
//! pages into a [`View`], and decide every workload from it.
//!
//! The collector list is a `watch` channel so that a static `--collector` list and `--kube`
//! discovery (EndpointSlices) feed the same loop.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::watch;

use gpuscale_collector::contract::redact_url;

use crate::aggregate::{Page, Received, Source, View};
use crate::telemetry::Telemetry;
use crate::workloads::Workloads;

/// The process clock: a [`Duration`] since start, what the policies take as `now`.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    /// Starts now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Time since start.
    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// How to poll.
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// Between rounds.
    pub interval: Duration,
    /// Per collector read.
    pub timeout: Duration,
    /// Largest page read.
    pub max_page_bytes: usize,
    /// Reads in flight at once.
    pub max_concurrent: usize,
    /// Sent as `Authorization: Bearer ...` to every collector.
    pub bearer: Option<String>,
}

/// The poll loop's state, readable by the HTTP server.
#[derive(Default)]
pub struct Polled {
    /// Per collector address.
    pub sources: RwLock<BTreeMap<String, Source>>,
    /// The last combined view.
    pub view: RwLock<View>,
    /// Whether a round has completed.
    pub ready: std::sync::atomic::AtomicBool,
}

/// Collector addresses become `/metrics` URLs: `host:port`, `http://host:port` (both mean
/// `/metrics`) or a full URL; anything else is refused with the accepted forms.
pub fn metrics_url(addr: &str) -> Result<String, String> {
    gpuscale_collector::scrape::metrics_url("--collector", addr)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Read one collector: OpenMetrics only (a page without `# EOF` is truncated), through the
/// contract.
async fn read_collector(
    client: &reqwest::Client,
    config: &PollConfig,
    addr: &str,
    clock: Clock,
) -> Result<Page, String> {
    let url = metrics_url(addr)?;
    let how = gpuscale_collector::scrape::Fetch {
        openmetrics: true,
        timeout: config.timeout,
        max_bytes: config.max_page_bytes,
        bearer: config.bearer.as_deref(),
        keep: None,
    };
    let families = gpuscale_collector::scrape::fetch_page(client, &url, &how)
        .await
        .map_err(|e| match e {
            gpuscale_collector::scrape::ScrapeError::Parse { url, error }
                if error.message.contains("# EOF") =>
            {
                format!("{url}: the page is truncated ({error}); a whole collector page ends with `# EOF`")
            }
            gpuscale_collector::scrape::ScrapeError::WrongFormat { url, content_type } => format!(
                "{url} is not a gpuscale collector: it answered `{content_type}` when asked for OpenMetrics (a model server's or another exporter's page?); point --collector at a gpuscale-collector, e.g. HOST:9400"
            ),
            e => e.to_string(),
        })?;
    let received = Received {
        at: clock.now(),
        wall: unix_now(),
    };
    Page::read(&families, &redact_url(&url), received).map_err(|e| e.to_string())
}

/// One round: fetch every collector, combine, decide.
pub async fn round(
    client: &reqwest::Client,
    config: &PollConfig,
    collectors: &[String],
    polled: &Polled,
    workloads: &Workloads,
    telemetry: &Telemetry,
    clock: Clock,
) {
    let started = Instant::now();
    let results: Vec<(String, Duration, Result<Page, String>)> =
        futures_util::stream::iter(collectors.iter().cloned())
            .map(|addr| async move {
                let r = read_collector(client, config, &addr, clock).await;
                (addr, clock.now(), r)
            })
            .buffer_unordered(config.max_concurrent.max(1))
            .collect()
            .await;
    let view = {
        let mut sources = polled.sources.write().unwrap_or_else(|e| e.into_inner());
        sources.retain(|k, _| collectors.contains(k));
        for (addr, at, r) in results {
            let s = sources.entry(addr.clone()).or_default();
            match r {
                Ok(page) => {
                    s.last_ok = Some((at, page));
                    s.error = None;
                }
                Err(e) => {
                    telemetry.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(collector = %redact_url(&addr), error = %e, "collector read failed");
                    s.error = Some(e);
                }
            }
        }
        View::combine(sources.iter().map(|(k, v)| (k.as_str(), v)))
    };
    workloads.tick(&view, clock.now());
    *polled.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    polled.ready.store(true, Ordering::Relaxed);
    telemetry.polls.fetch_add(1, Ordering::Relaxed);
    telemetry.poll_duration.observe(started.elapsed());
}

/// Poll forever.
pub async fn run(
    config: PollConfig,
    mut collectors: watch::Receiver<Vec<String>>,
    polled: Arc<Polled>,
    workloads: Arc<Workloads>,
    telemetry: Arc<Telemetry>,
    clock: Clock,
) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client; the scaler will answer UNAVAILABLE");
            return;
        }
    };
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let list = collectors.borrow_and_update().clone();
        round(&client, &config, &list, &polled, &workloads, &telemetry, clock).await;
    }
}
