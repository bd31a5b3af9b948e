//! `--activator-kube`: routes from annotated Services and each workload's capacity from its
//! ready endpoints, kept current from watches on Services and EndpointSlices.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gpuscale_contract::WorkloadKey;
use gpuscale_edge::watch::cached;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector;
use kube::{Client, ResourceExt as _};

use crate::proxy::Activator;
use crate::route::{ACTIVATE, Route, service_routes};

/// Ready endpoints of a Service, from its EndpointSlices.
fn ready_count(slices: &[Arc<EndpointSlice>], ns: &str, svc: &str) -> usize {
    slices
        .iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(ns)
                && s.labels().get("kubernetes.io/service-name").map(String::as_str) == Some(svc)
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count()
}

/// Activator kube mode: keep the routes of annotated Services (plus the static ones) and each
/// workload's capacity (concurrency x ready endpoints) current, from watches on Services and
/// EndpointSlices.
pub async fn activator_routes(client: Client, activator: Arc<Activator>, every: Duration) {
    let (services, services_watch) = cached::<Service>(client.clone());
    let (slices, slices_watch) = cached::<EndpointSlice>(client);
    // The watches run with the loop: if either ends, this ends, and its supervisor sees it.
    tokio::select! {
        () = services_watch => tracing::error!("Service watch ended"),
        () = slices_watch => tracing::error!("EndpointSlice watch ended"),
        () = keep_routes(services, slices, activator, every) => {}
    }
}

async fn keep_routes(
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    activator: Arc<Activator>,
    every: Duration,
) {
    let statics = activator.static_routes();
    let mut last: Option<Vec<Route>> = None;
    let mut refused: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut routes = statics.clone();
        let mut services_of: Vec<(WorkloadKey, String, String)> = Vec::new();
        for svc in services.state() {
            let on = svc.annotations().get(ACTIVATE).map(String::as_str) == Some("true");
            if !on {
                continue;
            }
            match service_routes(&svc) {
                Ok(rs) => {
                    if let Some(r) = rs.first() {
                        services_of.push((
                            r.workload.clone(),
                            svc.namespace().unwrap_or_default(),
                            svc.name_any(),
                        ));
                    }
                    routes.extend(rs);
                }
                Err(e) => {
                    if refused.insert(e.clone()) {
                        tracing::error!(error = %e, "annotated Service refused");
                    }
                }
            }
        }
        if last.as_ref() != Some(&routes) {
            tracing::info!(routes = routes.len(), "activator routes changed");
            activator.set_routes(routes.clone());
            last = Some(routes);
        } else {
            // Gates left by a route change go once their held requests are answered.
            activator.prune();
        }
        let slices = slices.state();
        for (key, ns, svc) in services_of {
            let ready = ready_count(&slices, &ns, &svc);
            let gate = activator.gate(&key);
            gate.set_ready(ready);
            gate.set_capacity(activator.capacity(ready));
        }
    }
}
