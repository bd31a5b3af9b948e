//! Which collectors exist: the static ones plus the ready endpoints of the collector Service's
//! EndpointSlices, re-read every `--discovery-interval`.

use std::time::Duration;

use ::kube::Api;
use ::kube::api::ListParams;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

/// The ready `host:port`s of a Service's EndpointSlices.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> Vec<String> {
    let mut out = Vec::new();
    for s in slices {
        let ports = s.ports.clone().unwrap_or_default();
        let Some(port) = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .or_else(|| ports.first())
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            if let Some(a) = e.addresses.first() {
                out.push(if a.contains(':') {
                    format!("[{a}]:{port}")
                } else {
                    format!("{a}:{port}")
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(crate) async fn discover(
    api: Api<EndpointSlice>,
    service: String,
    static_collectors: Vec<String>,
    tx: watch::Sender<Vec<String>>,
    every: Duration,
) {
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match api.list(&params).await {
            Ok(list) => {
                let mut all = static_collectors.clone();
                all.extend(ready_endpoints(&list.items));
                all.sort();
                all.dedup();
                tx.send_if_modified(|cur| {
                    let changed = *cur != all;
                    if changed {
                        tracing::info!(collectors = all.len(), "collector endpoints changed");
                        *cur = all;
                    }
                    changed
                });
            }
            // Keep the last list: a collector that vanished from a failed read is not gone.
            Err(e) => {
                tracing::warn!(error = %e, service = %service, "listing the collector EndpointSlices failed")
            }
        }
    }
}
