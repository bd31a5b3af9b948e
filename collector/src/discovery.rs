//! `--kube`: the model-server pods on this node that opt in to scraping, found by watching the
//! API server (`fieldSelector=spec.nodeName=<node>`), each labelled with the workload it
//! belongs to.
//!
//! A pod opts in with the annotation `gpuscale.io/scrape: "true"`; `gpuscale.io/port` (default:
//! the first container port) and `gpuscale.io/path` (default `/metrics`) say where. Its workload
//! is the value of `--workload-label` when the pod has that label (e.g.
//! `serving.kserve.io/inferenceservice`), else the Deployment behind its ReplicaSet owner, else
//! its controller's name, else the pod's own name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::scrape::Target;

/// Annotation that opts a pod in.
pub const SCRAPE_ANNOTATION: &str = "gpuscale.io/scrape";
/// Annotation naming the metrics port.
pub const PORT_ANNOTATION: &str = "gpuscale.io/port";
/// Annotation naming the metrics path.
pub const PATH_ANNOTATION: &str = "gpuscale.io/path";

/// The targets found so far, replaced as pods come and go.
pub type SharedTargets = Arc<RwLock<Vec<Target>>>;

/// Where to scrape a pod, if it opted in and is running with an IP.
fn endpoint(pod: &Pod) -> Option<(String, String, String)> {
    let meta = &pod.metadata;
    let ann = meta.annotations.as_ref()?;
    if ann.get(SCRAPE_ANNOTATION).map(String::as_str) != Some("true") {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone()?;
    let port = match ann.get(PORT_ANNOTATION) {
        Some(p) => p.parse::<u16>().ok().map(|p| p.to_string()),
        None => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().flat_map(|c| c.ports.iter().flatten()).next())
            .map(|p| p.container_port.to_string()),
    };
    let Some(port) = port else {
        tracing::warn!(pod = ?meta.name, "pod opts in to scraping but has no valid {PORT_ANNOTATION} and no container port");
        return None;
    };
    let path = ann
        .get(PATH_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| "/metrics".into());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    Some((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
        format!("http://{host}:{port}{path}"),
    ))
}

/// Resolves a pod's workload, caching ReplicaSet owners (a ReplicaSet's Deployment never changes).
struct Owners {
    client: Client,
    workload_label: Option<String>,
    replicasets: HashMap<(String, String), String>,
}

impl Owners {
    async fn workload(&mut self, pod: &Pod) -> String {
        let meta = &pod.metadata;
        if let Some(label) = &self.workload_label
            && let Some(v) = meta.labels.as_ref().and_then(|l| l.get(label))
        {
            return v.clone();
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        match controller {
            Some(o) if o.kind == "ReplicaSet" => {
                let key = (ns.clone(), o.name.clone());
                if let Some(d) = self.replicasets.get(&key) {
                    return d.clone();
                }
                let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
                let name = match api.get(&o.name).await {
                    Ok(rs) => rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|r| r.controller == Some(true) && r.kind == "Deployment")
                        .map_or_else(|| o.name.clone(), |r| r.name.clone()),
                    Err(e) => {
                        tracing::warn!(replicaset = %o.name, error = %e, "cannot read the ReplicaSet; using its name as the workload");
                        return o.name.clone();
                    }
                };
                if self.replicasets.len() < 10_000 {
                    self.replicasets.insert(key, name.clone());
                }
                name
            }
            Some(o) => o.name.clone(),
            None => meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Watch this node's pods and keep `shared` equal to the opted-in ones. Runs until the process
/// ends; watch errors back off and retry.
pub async fn watch_pods(client: Client, node: String, workload_label: Option<String>, shared: SharedTargets) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut owners = Owners {
        client,
        workload_label,
        replicasets: HashMap::new(),
    };
    let mut current: BTreeMap<String, Target> = BTreeMap::new();
    let mut initial: Option<BTreeMap<String, Target>> = None;
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        let mut changed = false;
        match event {
            watcher::Event::Init => initial = Some(BTreeMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(map), Some(t)) = (initial.as_mut(), target(&mut owners, &pod).await) {
                    map.insert(uid(&pod), t);
                }
            }
            watcher::Event::InitDone => {
                current = initial.take().unwrap_or_default();
                changed = true;
            }
            watcher::Event::Apply(pod) => {
                match target(&mut owners, &pod).await {
                    Some(t) => current.insert(uid(&pod), t),
                    None => current.remove(&uid(&pod)),
                };
                changed = true;
            }
            watcher::Event::Delete(pod) => {
                current.remove(&uid(&pod));
                changed = true;
            }
        }
        if changed && let Ok(mut s) = shared.write() {
            *s = current.values().cloned().collect();
        }
    }
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        )
    })
}

async fn target(owners: &mut Owners, pod: &Pod) -> Option<Target> {
    let (namespace, pod_name, url) = endpoint(pod)?;
    let workload = owners.workload(pod).await;
    Some(Target {
        namespace,
        workload,
        pod: pod_name,
        url,
    })
}
