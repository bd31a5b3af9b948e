//! The collector process: a tick loop ([`tick`]) that reads GPUs and scrapes model servers
//! into one snapshot and renders it into [`Pages`], and an HTTP server ([`http`]) that serves
//! the last rendered pages. No NVML call and no scrape ever happens on the request path.

pub mod http;
pub mod tick;

pub use http::router;
pub use tick::tick_loop;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::exposition::{Snapshot, render};
use crate::scrape::{CustomNames, Preset, Target};
use gpuscale_contract as contract;
use gpuscale_expfmt::write::Format;

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
    /// Bearer token sent to every target (from `--scrape-bearer-token-file`).
    pub bearer: Option<String>,
    /// Also export dcgm-exporter's names.
    pub dcgm_compat: bool,
    /// The kubelet's PodResources socket (`None`: no attribution).
    pub pod_resources_socket: Option<std::path::PathBuf>,
    /// How often to refresh the attribution.
    pub pod_resources_interval: Duration,
    /// Targets found by `--kube` discovery, updated by the pod watch.
    pub discovered: Option<crate::discovery::SharedTargets>,
}

/// The last rendered pages, replaced at each render.
#[derive(Default)]
pub struct Pages {
    prometheus: String,
    openmetrics: String,
    /// The OpenMetrics page with only the families the scaler reads (`?series=contract`).
    contract: String,
    ready: bool,
    /// When the page was rendered (its `gpuscale_collector_last_tick_timestamp_seconds`).
    rendered: f64,
    /// What the scaler reads on the contract page, less the times every render changes.
    values: u64,
    /// When the last page whose `values` differ from the one before it was rendered: what a
    /// held read waits for, so a steady node sends the scaler heartbeats, not a page a render.
    values_at: f64,
    /// Told at every render, for requests waiting for a newer page.
    changed: Arc<tokio::sync::Notify>,
    /// Requests waiting now.
    waiters: Arc<std::sync::atomic::AtomicUsize>,
}

/// The collector's default `--interval`, seconds: how often it reads GPUs and scrapes model
/// servers (docs/operations.md says what it costs and what freshness it gives).
pub const DEFAULT_INTERVAL_SECS: f64 = 1.0;

/// Longest `wait` a `/metrics` request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Requests waiting for a newer page at once; beyond it a request is answered at once (it
/// falls back to polling), so waiters can never hold the server.
pub const MAX_WAITERS: usize = 1024;

/// Shared between the loop and the server.
pub type SharedPages = Arc<RwLock<Pages>>;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Render `snapshot` in every form `/metrics` serves and swap the pages in, waking held reads.
fn publish(pages: &SharedPages, snapshot: &Snapshot, dcgm_compat: bool) {
    let prometheus = render(snapshot, Format::Prometheus, dcgm_compat);
    let openmetrics = render(snapshot, Format::OpenMetrics, dcgm_compat);
    let contract_page = gpuscale_expfmt::write::only_families(&openmetrics, &contract::SCALER_FAMILIES);
    let values = values_digest(&contract_page);
    if let Ok(mut p) = pages.write() {
        p.prometheus = prometheus;
        p.openmetrics = openmetrics;
        p.contract = contract_page;
        if !p.ready || values != p.values {
            p.values = values;
            p.values_at = snapshot.timestamp_seconds;
        }
        p.ready = true;
        p.rendered = snapshot.timestamp_seconds;
        p.changed.notify_waiters();
    }
}

/// A digest of the contract page without the render time and the targets' scrape times, which
/// change at every render while the readings they date may not.
pub fn values_digest(contract_page: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for line in contract_page.lines() {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        if name != contract::LAST_TICK && name != contract::SCRAPE_TIMESTAMP {
            line.hash(&mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::values_digest;

    #[test]
    fn the_values_digest_leaves_out_the_times_only() {
        let page = |tick: f64, scraped: f64, waiting: f64| {
            format!(
                "gpuscale_collector_last_tick_timestamp_seconds{{node=\"n1\"}} {tick}\n\
                 gpuscale_scrape_timestamp_seconds{{workload=\"qwen\"}} {scraped}\n\
                 gpuscale_workload_requests_waiting{{workload=\"qwen\"}} {waiting}\n# EOF\n"
            )
        };
        assert_eq!(
            values_digest(&page(1.0, 0.5, 3.0)),
            values_digest(&page(2.0, 1.5, 3.0))
        );
        assert_ne!(
            values_digest(&page(1.0, 0.5, 3.0)),
            values_digest(&page(1.0, 0.5, 4.0))
        );
    }
}
