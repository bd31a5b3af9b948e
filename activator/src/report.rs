//! Telling the scaler how many requests are held: in-process through [`HeldSink`], or by
//! `POST /v1/held` when the activator runs on its own.

use std::sync::Arc;
use std::time::Duration;

use gpuscale_contract::WorkloadKey;

use crate::gate::Gate;

/// A scaler that takes held-request counts in this process (the scaler implements it for its
/// workload table), so the activator does not depend on the scaler.
pub trait HeldSink: Send + Sync + 'static {
    /// `held` requests wait for `workload`; `ready` replicas are ready as the activator sees
    /// them (`None`: it does not know).
    fn held(&self, workload: &WorkloadKey, held: usize, ready: Option<u32>);
}

/// Where held-request counts go.
#[derive(Clone)]
pub enum Reporter {
    /// The scaler in this process.
    InProcess(Arc<dyn HeldSink>),
    /// A scaler elsewhere: `POST {url}/v1/held`, with an optional bearer token.
    Remote(reqwest::Client, String, Option<String>),
    /// Nowhere (tests).
    None,
}

impl Reporter {
    pub(crate) async fn report(&self, w: &WorkloadKey, held: usize, ready: Option<u32>) {
        match self {
            Reporter::InProcess(sink) => sink.held(w, held, ready),
            Reporter::Remote(client, url, bearer) => {
                let body = serde_json::json!({"namespace": w.namespace, "workload": w.name, "requests": held, "ready": ready});
                let mut req = client
                    .post(format!("{url}/v1/held"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(Duration::from_secs(2));
                if let Some(token) = bearer {
                    req = req.bearer_auth(token);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(target: "gpuscale_activator", workload = %w, status = %r.status(), "scaler refused the held-request report")
                    }
                    Err(e) => {
                        tracing::warn!(target: "gpuscale_activator", workload = %w, error = %gpuscale_edge::fetch::with_causes(&e.without_url()), "cannot report held requests to the scaler")
                    }
                }
            }
            Reporter::None => {}
        }
    }
}

/// Report a gate's held count at once on change, and every second while anything is held so
/// the report stays fresh at the scaler.
pub(crate) fn spawn_reporter(
    reporter: Reporter,
    key: WorkloadKey,
    gate: Arc<Gate>,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        // Every second, zero too: the scaler takes a workload at zero replicas as idle only on
        // a fresh report, so silence reads as unknown, never as nothing held.
        let mut rx = gate.watch_held();
        loop {
            let held = *rx.borrow_and_update();
            reporter.report(&key, held, gate.ready()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    })
    .abort_handle()
}
