//! The Kubernetes side (`--kube`): which collectors exist ([`discovery`]: the ready endpoints of
//! the collector Service's EndpointSlices), how many replicas each tracked Deployment has (a
//! watch on Deployments, here), and direct mode ([`direct`], `--direct`): scaling Deployments
//! annotated `gpuscale.io/policy` through their `scale` subresource, on the replica that holds
//! the `coordination.k8s.io` Lease, with a Kubernetes Event per change.

pub mod direct;
pub mod discovery;

use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::events::{Recorder, Reporter};
use ::kube::runtime::reflector;
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::Deployment;
use tokio::sync::watch;

use crate::workloads::{Replicas, Workloads, lock};
use gpuscale_contract::Clock;
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

pub(crate) fn replicas_of(d: &Deployment) -> Replicas {
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
        discovery::discover(
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
            direct::direct(
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
