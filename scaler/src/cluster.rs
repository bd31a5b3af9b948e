//! The Kubernetes side (`--kube`): which collectors exist (the ready endpoints of the collector
//! Service's EndpointSlices), how many replicas each tracked Deployment has (a watch on
//! Deployments), and direct mode (`--direct`): scaling Deployments annotated
//! `gpuscale.io/policy` through their `scale` subresource, on the replica that holds the
//! `coordination.k8s.io` Lease, with a Kubernetes Event per change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client, Resource as _, ResourceExt as _};
use tokio::sync::watch;

use crate::trigger::Trigger;
use crate::workloads::{Replicas, Workloads, lock};
use gpuscale_contract::Clock;
use gpuscale_contract::WorkloadKey;
use gpuscale_edge::tasks::Tasks;
use gpuscale_edge::watch::cached;

fn duration(v: &str) -> Result<Duration, String> {
    gpuscale_policies::spec::parse_duration("duration", v).map_err(|e| e.to_string())
}

/// Flags of the Kubernetes side.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Use the API server (in-cluster service account or KUBECONFIG): discover collectors from
    /// the EndpointSlices of --collector-service and read Deployment replica counts.
    #[arg(long, env = "GPUSCALE_SCALER_KUBE")]
    pub kube: bool,

    /// The collectors' Service, `NAMESPACE/NAME`; its ready endpoints are read every
    /// --discovery-interval (port named `metrics`, else the first).
    #[arg(
        long,
        env = "GPUSCALE_SCALER_COLLECTOR_SERVICE",
        default_value = "gpuscale-system/gpuscale-collector"
    )]
    pub collector_service: String,

    /// Time between reads of the collector Service's EndpointSlices.
    #[arg(long, env = "GPUSCALE_SCALER_DISCOVERY_INTERVAL", default_value = "10s", value_parser = duration)]
    pub discovery_interval: Duration,

    /// Scale Deployments annotated `gpuscale.io/policy` directly (no KEDA). Needs --kube.
    #[arg(long, env = "GPUSCALE_SCALER_DIRECT", requires = "kube")]
    pub direct: bool,

    /// Time between direct-mode reconciles.
    #[arg(long, env = "GPUSCALE_SCALER_DIRECT_INTERVAL", default_value = "2s", value_parser = duration)]
    pub direct_interval: Duration,

    /// Lease that elects the one replica allowed to scale in direct mode.
    #[arg(long, env = "GPUSCALE_SCALER_LEASE_NAME", default_value = "gpuscale-scaler")]
    pub lease_name: String,

    /// Namespace of the Lease (the scaler's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpuscale-system")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Lease duration, seconds: how long a dead leader blocks the next one.
    #[arg(long, env = "GPUSCALE_SCALER_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// Seconds before expiry at which the leader renews.
    #[arg(long, env = "GPUSCALE_SCALER_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,
}

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

fn replicas_of(d: &Deployment) -> Replicas {
    let status = d.status.clone().unwrap_or_default();
    let ready = u32::try_from(status.ready_replicas.unwrap_or(0)).unwrap_or(0);
    let total = u32::try_from(status.replicas.unwrap_or(0)).unwrap_or(0);
    Replicas {
        desired: d
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(1),
        ready,
        starting: total.saturating_sub(ready),
    }
}

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

/// Start the Kubernetes side, its tasks in `tasks`. Returns the leadership flag in direct mode.
pub async fn start(
    tasks: &mut Tasks,
    args: &KubeArgs,
    static_collectors: &[String],
    collectors: watch::Sender<Vec<String>>,
    workloads: Arc<Workloads>,
    clock: Clock,
) -> anyhow::Result<Option<watch::Receiver<bool>>> {
    if !args.kube {
        return Ok(None);
    }
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("{e}: run in a pod with a service account, or set KUBECONFIG (or drop --kube)")
    })?;
    let (svc_ns, svc_name) = args.collector_service.split_once('/').ok_or_else(|| {
        anyhow::anyhow!(
            "--collector-service `{}`: expected NAMESPACE/NAME, e.g. gpuscale-system/gpuscale-collector",
            args.collector_service
        )
    })?;
    tasks.spawn_infallible(
        "collector discovery",
        discover(
            Api::namespaced(client.clone(), svc_ns),
            svc_name.to_string(),
            static_collectors.to_vec(),
            collectors,
            args.discovery_interval,
        ),
    );

    let (store, watch) = cached::<Deployment>(client.clone());
    tasks.spawn_infallible("Deployment watch", watch);

    let leader = if args.direct {
        let identity = args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("gpuscale-scaler-{}", std::process::id()));
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration)
            .with_grace(args.lease_grace)
            .build()
            .await
            .map_err(|e| {
                anyhow::anyhow!("creating Lease {}/{}: {e}", args.lease_namespace, args.lease_name)
            })?;
        let (rx, lease) = manager.watch().await;
        tasks.spawn("Lease", async move {
            match lease.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        });
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "gpuscale-scaler".into(),
                instance: Some(identity.clone()),
            },
        );
        tasks.spawn_infallible(
            "direct scaling",
            direct(
                client.clone(),
                store.clone(),
                workloads.clone(),
                rx.clone(),
                recorder,
                args.direct_interval,
                clock,
                identity,
            ),
        );
        Some(rx)
    } else {
        None
    };

    // Replica counts for every tracked workload: a lookup per tracked workload, not a pass
    // over every Deployment in the cluster.
    tasks.spawn_infallible("replica counts", async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            for (key, w) in workloads.all() {
                let at = reflector::ObjectRef::new(&key.name).within(&key.namespace);
                if let Some(d) = store.get(&at) {
                    lock(&w).replicas = Some(replicas_of(&d));
                }
            }
        }
    });
    Ok(leader)
}

async fn discover(
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
async fn direct(
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
        let mut annotated: BTreeMap<WorkloadKey, (Arc<Deployment>, Arc<crate::workloads::Tracked>)> =
            BTreeMap::new();
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
                    let fp = crate::trigger::fingerprint(&key.namespace, &md);
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
