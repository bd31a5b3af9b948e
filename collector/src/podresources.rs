//! Which pod uses which GPU: the kubelet's PodResources `List` over its unix socket, refreshed
//! on a timer (never per scrape). Device IDs as the NVIDIA device plugin reports them:
//! `GPU-<uuid>` (`nvidia.com/gpu`), `MIG-<uuid>` (`nvidia.com/mig-*`), and shared GPUs
//! (time-slicing, MPS) as `GPU-<uuid>::<n>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

/// Generated from proto/podresources.proto.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("v1");
}

/// Largest List answer accepted (the kubelet's own limit is 16 MiB too).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A container that holds a device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// GPU UUID (or MIG UUID) to the containers holding it; several when the GPU is shared.
pub type Attribution = BTreeMap<String, Vec<Owner>>;

/// The device ID as NVML names the GPU: `GPU-x::3` (a shared replica) is `GPU-x`.
pub fn normalize_device_id(id: &str) -> &str {
    id.split("::").next().unwrap_or(id)
}

/// Whether a resource name is an NVIDIA GPU or MIG resource.
pub fn is_gpu_resource(name: &str) -> bool {
    name == "nvidia.com/gpu" || name.starts_with("nvidia.com/mig-") || name.starts_with("nvidia.com/gpu.")
}

/// Build the attribution from a List answer.
pub fn attribution(resp: &pb::ListPodResourcesResponse) -> Attribution {
    let mut out: Attribution = BTreeMap::new();
    for pod in &resp.pod_resources {
        for c in &pod.containers {
            for d in c.devices.iter().filter(|d| is_gpu_resource(&d.resource_name)) {
                for id in &d.device_ids {
                    let owner = Owner {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: c.name.clone(),
                    };
                    let owners = out.entry(normalize_device_id(id).to_string()).or_default();
                    if !owners.contains(&owner) {
                        owners.push(owner);
                        owners.sort();
                    }
                }
            }
        }
    }
    out
}

/// One List call over the unix socket.
pub async fn list(socket: &Path, timeout: Duration) -> Result<pb::ListPodResourcesResponse, String> {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: the connector always dials the socket.
    let channel = Endpoint::try_from("http://kubelet.invalid")
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut client = pb::pod_resources_lister_client::PodResourcesListerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    client
        .list(pb::ListPodResourcesRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| format!("{}: List: {}", socket.display(), e.message()))
}

/// Refresh `shared` every `interval`. A missing socket is logged once and leaves the series
/// unattributed; the last good answer is kept through later failures.
pub async fn refresh_loop(socket: PathBuf, interval: Duration, shared: Arc<RwLock<Attribution>>) {
    let mut warned = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match list(&socket, Duration::from_secs(5)).await {
            Ok(resp) => {
                let a = attribution(&resp);
                if let Ok(mut s) = shared.write() {
                    *s = a;
                }
                warned = false;
            }
            Err(e) if !warned => {
                tracing::warn!(error = %e, "kubelet PodResources unavailable: GPU series stay unattributed \
                    (mount /var/lib/kubelet/pod-resources read-only, or set --pod-resources-socket)");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::{ContainerDevices, ContainerResources, ListPodResourcesResponse, PodResources};

    fn pod(ns: &str, name: &str, container: &str, resource: &str, ids: &[&str]) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: ns.into(),
            containers: vec![ContainerResources {
                name: container.into(),
                devices: vec![ContainerDevices {
                    resource_name: resource.into(),
                    device_ids: ids.iter().map(|s| s.to_string()).collect(),
                }],
            }],
        }
    }

    #[test]
    fn gpus_migs_and_shared_replicas() {
        let resp = ListPodResourcesResponse {
            pod_resources: vec![
                pod("llm", "qwen-0", "vllm", "nvidia.com/gpu", &["GPU-a"]),
                pod("llm", "small-0", "sglang", "nvidia.com/mig-1g.10gb", &["MIG-b"]),
                pod("dev", "nb-1", "jupyter", "nvidia.com/gpu", &["GPU-c::0"]),
                pod("dev", "nb-2", "jupyter", "nvidia.com/gpu", &["GPU-c::1"]),
                pod("net", "sriov", "app", "intel.com/sriov", &["0000:3b:00.1"]),
            ],
        };
        let a = attribution(&resp);
        assert_eq!(a.len(), 3);
        assert_eq!(
            a["GPU-a"],
            vec![Owner {
                namespace: "llm".into(),
                pod: "qwen-0".into(),
                container: "vllm".into()
            }]
        );
        assert_eq!(a["MIG-b"][0].pod, "small-0");
        assert_eq!(
            a["GPU-c"].iter().map(|o| o.pod.as_str()).collect::<Vec<_>>(),
            ["nb-1", "nb-2"]
        );
    }
}
