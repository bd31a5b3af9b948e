//! Direct mode (`--direct`, no KEDA): Deployments annotated `gpuscale.io/policy` are tracked
//! from their annotations and, on the Lease holder only, scaled through their `scale`
//! subresource to the published decision, with a Kubernetes Event per change. An answer that is
//! not known (missing or stale signals) leaves the Deployment as it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams};
use ::kube::runtime::events::{Event, EventType, Recorder};
use ::kube::runtime::reflector;
use ::kube::{Api, Client, Resource as _, ResourceExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use tokio::sync::watch;

use super::replicas_of;
use crate::keda::trigger::{Trigger, fingerprint};
use crate::workloads::{Tracked, Workloads, lock};
use gpuscale_contract::Clock;
use gpuscale_contract::WorkloadKey;

/// Annotation prefix for direct mode; `gpuscale.io/policy` opts a Deployment in.
pub const ANNOTATION_PREFIX: &str = "gpuscale.io/";

/// Collector-side annotations that may also sit on a Deployment and are not trigger keys.
const COLLECTOR_ANNOTATIONS: &[&str] = &["scrape", "port", "path"];

/// The trigger metadata a Deployment's annotations give, if it opted in.
pub fn annotations_to_metadata(d: &Deployment) -> Option<HashMap<String, String>> {
    let ann = d.metadata.annotations.as_ref()?;
    ann.get("gpuscale.io/policy")?;
    let mut md: HashMap<String, String> = ann
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(ANNOTATION_PREFIX)?;
            (!COLLECTOR_ANNOTATIONS.contains(&key)).then(|| (key.to_string(), v.clone()))
        })
        .collect();
    md.insert("deployment".into(), d.name_any());
    md.insert("namespace".into(), d.namespace().unwrap_or_default());
    Some(md)
}

/// Patch a Deployment's `scale` subresource to `replicas`, guarded by `resource_version`:
/// a 409 (someone wrote since we read) re-reads the scale and tries again; 429 and 5xx are
/// retried with backoff (200 ms doubling, 5 attempts).
pub async fn scale(
    api: &Api<Deployment>,
    name: &str,
    mut resource_version: Option<String>,
    replicas: u32,
) -> Result<(), kube::Error> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut patch = serde_json::json!({ "spec": { "replicas": replicas } });
        if let Some(rv) = &resource_version {
            patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
        }
        let err = match api
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let code = match &err {
            kube::Error::Api(s) => s.code,
            _ => 0,
        };
        let retry = code == 409 || code == 429 || code >= 500 || code == 0;
        if !retry || attempt >= 5 {
            return Err(err);
        }
        tracing::debug!(deployment = name, code, attempt, "scale patch failed; retrying");
        if code == 409 {
            resource_version = api.get_scale(name).await?.metadata.resource_version;
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn direct(
    client: Client,
    store: reflector::Store<Deployment>,
    workloads: Arc<Workloads>,
    leader: watch::Receiver<bool>,
    recorder: Recorder,
    every: Duration,
    clock: Clock,
    identity: String,
) {
    let mut tick = tokio::time::interval(every);
    // Metadata that failed to parse, so each mistake is logged once.
    let mut refused: HashSet<(WorkloadKey, u64)> = HashSet::new();
    loop {
        tick.tick().await;
        let now = clock.now();
        let mut annotated: BTreeMap<WorkloadKey, (Arc<Deployment>, Arc<Tracked>)> = BTreeMap::new();
        for d in store.state() {
            let Some(md) = annotations_to_metadata(&d) else {
                continue;
            };
            let ns = d.namespace().unwrap_or_default();
            match Trigger::parse(&ns, &md) {
                Ok(t) => {
                    let key = t.workload.clone();
                    match workloads.register(t, &format!("Deployment {key} (annotations)"), now) {
                        Ok(w) => {
                            lock(&w).replicas = Some(replicas_of(&d));
                            annotated.insert(key, (d, w));
                        }
                        Err(e) => tracing::error!(workload = %key, error = %e, "cannot track the Deployment"),
                    }
                }
                Err(e) => {
                    let key = WorkloadKey {
                        namespace: ns,
                        name: d.name_any(),
                    };
                    let fp = fingerprint(&key.namespace, &md);
                    if refused.insert((key.clone(), fp)) {
                        tracing::error!(workload = %key, error = %e, "gpuscale.io annotations refused; the Deployment is not scaled");
                        let _ = recorder
                            .publish(
                                &Event {
                                    type_: EventType::Warning,
                                    reason: "InvalidAnnotations".into(),
                                    note: Some(e.to_string()),
                                    action: "Validate".into(),
                                    secondary: None,
                                },
                                &d.object_ref(&()),
                            )
                            .await;
                    }
                }
            }
        }
        if !*leader.borrow() {
            continue;
        }
        for (key, (d, w)) in annotated {
            let (desired, reason) = {
                let g = lock(&w);
                match (&w.answer().value, &g.decision) {
                    (Ok(_), Some((dec, _))) => (
                        dec.desired,
                        match &g.capacity {
                            Some(c) => format!("{} ({}); {c}", dec.rule.code(), dec.policy),
                            None => format!("{} ({})", dec.rule.code(), dec.policy),
                        },
                    ),
                    // Missing or stale data: hold whatever is there.
                    _ => continue,
                }
            };
            let current = replicas_of(&d).desired;
            if desired == current {
                continue;
            }
            let api: Api<Deployment> = Api::namespaced(client.clone(), &key.namespace);
            match scale(&api, &key.name, d.resource_version(), desired).await {
                Ok(()) => {
                    tracing::info!(workload = %key, from = current, to = desired, %reason, leader = %identity, "scaled");
                    let note = format!("gpuscale scaled {current} -> {desired}: {reason}");
                    if let Err(e) = recorder
                        .publish(
                            &Event {
                                type_: EventType::Normal,
                                reason: "Scaled".into(),
                                note: Some(note),
                                action: "Scale".into(),
                                secondary: None,
                            },
                            &d.object_ref(&()),
                        )
                        .await
                    {
                        tracing::warn!(workload = %key, error = %e, "could not record the Event");
                    }
                }
                Err(e) => {
                    tracing::error!(workload = %key, error = %e, "scaling failed; will retry next reconcile")
                }
            }
        }
    }
}
