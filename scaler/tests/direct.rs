//! `--kube --direct` against a fake Kubernetes API server that speaks real Kubernetes JSON over
//! HTTP: EndpointSlice discovery of the collector, a Deployment list and held-open watch with
//! resourceVersions, the `scale` subresource with 409 on a stale resourceVersion (and injected
//! 409 and 429), events.k8s.io Events, and a coordination.k8s.io Lease (create, server-side
//! apply with field-ownership conflicts, strategic merge) shared by two scaler processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Default)]
struct Api {
    rv: u64,
    deployments: BTreeMap<(String, String), Value>,
    slices: Vec<Value>,
    lease: Option<Value>,
    /// Field manager owning `spec.holderIdentity` (server-side apply conflicts).
    holder_owner: Option<String>,
    events: Vec<Value>,
    /// (deployment, replicas, lease holder when the patch arrived)
    patches: Vec<(String, u32, String)>,
    inject: Vec<u16>,
    injected: Vec<u16>,
}

#[derive(Clone)]
struct Fake {
    api: Arc<Mutex<Api>>,
    watch: broadcast::Sender<Value>,
}

impl Fake {
    /// Who holds the Lease now.
    fn holder(&self) -> Option<String> {
        let api = self.api.lock().unwrap();
        api.lease
            .as_ref()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
        ),
    )
        .into_response()
}

fn deployment(ns: &str, name: &str, replicas: u32, annotations: Value, rv: u64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string(),
            "generation": 1, "annotations": annotations},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas, "observedGeneration": 1}
    })
}

async fn deployments(State(f): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        let mut rx = f.watch.subscribe();
        let stream = async_stream(
            move |tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>| async move {
                while let Ok(ev) = rx.recv().await {
                    let mut line = serde_json::to_vec(&ev).unwrap();
                    line.push(b'\n');
                    if tx.send(Ok(Bytes::from(line))).await.is_err() {
                        break;
                    }
                }
            },
        );
        return (
            [("content-type", "application/json")],
            axum::body::Body::from_stream(stream),
        )
            .into_response();
    }
    let api = f.api.lock().unwrap();
    let items: Vec<Value> = api.deployments.values().cloned().collect();
    axum::Json(json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
        "metadata": {"resourceVersion": api.rv.to_string()}, "items": items}))
    .into_response()
}

/// A body stream fed by a task.
fn async_stream<F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn scale_of(d: &Value) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": d["metadata"]["name"], "namespace": d["metadata"]["namespace"], "resourceVersion": d["metadata"]["resourceVersion"]},
        "spec": {"replicas": d["spec"]["replicas"]}, "status": {"replicas": d["status"]["replicas"], "selector": "app=x"}})
}

async fn get_scale(State(f): State<Fake>, Path((ns, name)): Path<(String, String)>) -> Response {
    let api = f.api.lock().unwrap();
    match api.deployments.get(&(ns, name.clone())) {
        Some(d) => axum::Json(scale_of(d)).into_response(),
        None => status(404, "NotFound", &format!("deployments.apps \"{name}\" not found")),
    }
}

async fn patch_scale(
    State(f): State<Fake>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assert_eq!(
        headers.get("content-type").unwrap().to_str().unwrap(),
        "application/merge-patch+json"
    );
    let patch: Value = serde_json::from_slice(&body).unwrap();
    let mut api = f.api.lock().unwrap();
    if let Some(code) = api.inject.pop() {
        api.injected.push(code);
        // An injected conflict is a real one: someone else wrote in between.
        if code == 409 {
            api.rv += 1;
            let rv = api.rv.to_string();
            if let Some(d) = api.deployments.get_mut(&(ns.clone(), name.clone())) {
                d["metadata"]["resourceVersion"] = json!(rv);
            }
            return status(
                409,
                "Conflict",
                "Operation cannot be fulfilled on deployments.apps: the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        return status(
            code,
            "TooManyRequests",
            "too many requests, please try again later",
        );
    }
    api.rv += 1;
    let rv = api.rv;
    let holder = api
        .lease
        .as_ref()
        .and_then(|l| l["spec"]["holderIdentity"].as_str())
        .unwrap_or("")
        .to_string();
    let Some(d) = api.deployments.get_mut(&(ns.clone(), name.clone())) else {
        return status(404, "NotFound", "not found");
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
        && want != d["metadata"]["resourceVersion"].as_str().unwrap()
    {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    let n = patch["spec"]["replicas"].as_u64().unwrap();
    d["spec"]["replicas"] = json!(n);
    d["status"]["replicas"] = json!(n);
    d["status"]["readyReplicas"] = json!(n);
    d["metadata"]["resourceVersion"] = json!(rv.to_string());
    let ev = json!({"type": "MODIFIED", "object": d.clone()});
    let scale = scale_of(d);
    api.patches.push((name, u32::try_from(n).unwrap(), holder));
    let _ = f.watch.send(ev);
    axum::Json(scale).into_response()
}

async fn slices(State(f): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    assert_eq!(
        q.get("labelSelector").map(String::as_str),
        Some("kubernetes.io/service-name=gpuscale-collector")
    );
    let api = f.api.lock().unwrap();
    axum::Json(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
        "metadata": {"resourceVersion": "5"}, "items": api.slices}),
    )
    .into_response()
}

async fn post_event(State(f): State<Fake>, body: Bytes) -> Response {
    // Seen once under heavy load and not reproduced: say what arrived if it happens again.
    let ev: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "POST events: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    f.api.lock().unwrap().events.push(ev.clone());
    (StatusCode::CREATED, axum::Json(ev)).into_response()
}

async fn patch_event(State(f): State<Fake>, body: Bytes) -> Response {
    let ev: Value = serde_json::from_slice(&body).unwrap();
    f.api.lock().unwrap().events.push(ev.clone());
    axum::Json(ev).into_response()
}

async fn get_lease(State(f): State<Fake>, Path((_ns, name)): Path<(String, String)>) -> Response {
    match &f.api.lock().unwrap().lease {
        Some(l) => axum::Json(l.clone()).into_response(),
        None => status(
            404,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn create_lease(State(f): State<Fake>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut l: Value = serde_json::from_slice(&body).unwrap();
    let mut api = f.api.lock().unwrap();
    if api.lease.is_some() {
        return status(409, "AlreadyExists", "leases.coordination.k8s.io already exists");
    }
    api.rv += 1;
    l["metadata"]["namespace"] = json!(ns);
    l["metadata"]["resourceVersion"] = json!(api.rv.to_string());
    l["metadata"]["uid"] = json!("lease-uid");
    if l.get("spec").is_none() || l["spec"].is_null() {
        l["spec"] = json!({});
    }
    api.lease = Some(l.clone());
    (StatusCode::CREATED, axum::Json(l)).into_response()
}

async fn patch_lease(
    State(f): State<Fake>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers.get("content-type").unwrap().to_str().unwrap().to_string();
    let patch: Value = serde_json::from_slice(&body).unwrap();
    let manager = q.get("fieldManager").cloned().unwrap_or_default();
    let mut api = f.api.lock().unwrap();
    let Some(mut lease) = api.lease.clone() else {
        return status(404, "NotFound", "lease not found");
    };
    let new_holder = &patch["spec"]["holderIdentity"];
    if ct == "application/apply-patch+yaml"
        && let Some(h) = new_holder.as_str()
        && api.holder_owner.as_ref().is_some_and(|o| *o != manager)
        && lease["spec"]["holderIdentity"].as_str() != Some(h)
    {
        return status(
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with another manager: .spec.holderIdentity",
        );
    }
    for (k, v) in patch["spec"].as_object().unwrap() {
        if v.is_null() {
            lease["spec"].as_object_mut().unwrap().remove(k);
        } else {
            lease["spec"][k] = v.clone();
        }
    }
    if new_holder.is_string() {
        api.holder_owner = Some(manager);
    } else if new_holder.is_null() && patch["spec"].get("holderIdentity").is_some() {
        api.holder_owner = None;
    }
    api.rv += 1;
    lease["metadata"]["resourceVersion"] = json!(api.rv.to_string());
    api.lease = Some(lease.clone());
    axum::Json(lease).into_response()
}

async fn serve(fake: Fake) -> SocketAddr {
    let app = Router::new()
        .route("/apis/apps/v1/deployments", get(deployments))
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            get(get_scale).patch(patch_scale),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            get(slices),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events",
            axum::routing::post(post_event),
        )
        .route(
            "/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}",
            axum::routing::patch(patch_event),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            axum::routing::post(create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(get_lease).patch(patch_lease),
        )
        .fallback(|uri: axum::http::Uri, m: axum::http::Method| async move {
            eprintln!("fake API server: unexpected {m} {uri}");
            status(404, "NotFound", &format!("{uri} is not served by the fake"))
        })
        .with_state(fake);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n"
        ),
    )
    .unwrap();
    p
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scaler_cmd(kubeconfig: &std::path::Path, identity: &str) -> common::Kill {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
        .args(["--grpc-listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--kube", "--direct", "--identity", identity])
        .args([
            "--poll-interval",
            "200ms",
            "--discovery-interval",
            "200ms",
            "--direct-interval",
            "200ms",
        ])
        .args(["--lease-duration", "2", "--lease-grace", "1"])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "gpuscale-system")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    common::Kill(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_scales_with_retries_events_and_leader_handover() {
    let model = common::ModelServer::start().await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;

    let mut api = Api {
        rv: 10,
        ..Api::default()
    };
    let qwen = json!({"gpuscale.io/policy": "queue", "gpuscale.io/queue.target": "2",
        "gpuscale.io/queue.scaleDownWindow": "0s", "gpuscale.io/maxReplicas": "8"});
    api.deployments.insert(
        ("llm".into(), "qwen".into()),
        deployment("llm", "qwen", 1, qwen, 10),
    );
    api.deployments.insert(
        ("llm".into(), "plain".into()),
        deployment("llm", "plain", 2, json!({}), 10),
    );
    api.deployments.insert(
        ("llm".into(), "typo".into()),
        deployment(
            "llm",
            "typo",
            1,
            json!({"gpuscale.io/policy": "queue", "gpuscale.io/minReplica": "1"}),
            10,
        ),
    );
    api.slices.push(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "gpuscale-collector-abc", "namespace": "gpuscale-system",
            "labels": {"kubernetes.io/service-name": "gpuscale-collector"}},
        "ports": [{"name": "metrics", "port": collector.port(), "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [collector.ip().to_string()], "conditions": {"ready": true}},
            {"addresses": ["10.255.0.9"], "conditions": {"ready": false}}
        ]
    }));
    // The first write meets a conflict, the retry a throttle; the third lands.
    api.inject = vec![429, 409];
    let fake = Fake {
        api: Arc::new(Mutex::new(api)),
        watch: broadcast::channel(64).0,
    };
    let addr = serve(fake.clone()).await;
    let dir = std::env::temp_dir().join(format!("gpuscale-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = kubeconfig(&dir, addr);

    let a = scaler_cmd(&kc, "scaler-a");
    until("scaler-a to hold the lease", Duration::from_secs(15), || {
        fake.holder().as_deref() == Some("scaler-a")
    })
    .await;
    let b = scaler_cmd(&kc, "scaler-b");

    // Six waiting requests at target 2: three replicas.
    model.set(6.0, 0.0);
    until("qwen scaled to 3", Duration::from_secs(15), || {
        fake.api
            .lock()
            .unwrap()
            .patches
            .iter()
            .any(|p| p.0 == "qwen" && p.1 == 3)
    })
    .await;
    {
        let api = fake.api.lock().unwrap();
        assert_eq!(
            api.injected,
            vec![409, 429],
            "both injected failures were met and retried"
        );
        assert!(
            api.patches.iter().all(|p| p.0 == "qwen"),
            "only the annotated Deployment is scaled: {:?}",
            api.patches
        );
        assert!(
            api.patches.iter().all(|p| p.2 == "scaler-a"),
            "only the leader writes: {:?}",
            api.patches
        );
        let scaled = api
            .events
            .iter()
            .find(|e| e["reason"] == "Scaled")
            .expect("a Scaled event");
        assert_eq!(scaled["regarding"]["name"], "qwen");
        assert_eq!(scaled["type"], "Normal");
        let note = scaled["note"].as_str().unwrap();
        assert!(note.contains("1 -> 3") && note.contains("queue"), "{note}");
        let warn = api
            .events
            .iter()
            .find(|e| e["reason"] == "InvalidAnnotations")
            .expect("a warning for the typo");
        assert_eq!(warn["regarding"]["name"], "typo");
        assert!(warn["note"].as_str().unwrap().contains("minReplica"));
    }

    // The leader dies; the other replica takes the lease once it expires and carries on.
    drop(a);
    until("scaler-b to take the lease", Duration::from_secs(20), || {
        fake.holder().as_deref() == Some("scaler-b")
    })
    .await;
    model.set(10.0, 0.0);
    until("qwen scaled to 5 by scaler-b", Duration::from_secs(15), || {
        fake.api
            .lock()
            .unwrap()
            .patches
            .iter()
            .any(|p| p.1 == 5 && p.2 == "scaler-b")
    })
    .await;
    // The collector breaks: stale data never scales down.
    model.fail();
    let before = fake.api.lock().unwrap().patches.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.api.lock().unwrap().patches.len(),
        before,
        "no write on missing data"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
