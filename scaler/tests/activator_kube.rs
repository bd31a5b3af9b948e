//! The activator as its own process in kube mode: routes from a Service annotated
//! `gpuscale.io/activate`, readiness from its EndpointSlices (list and held-open watch from a
//! fake API server speaking Kubernetes JSON), and held requests reported over HTTP to a real
//! scaler process, whose IsActive then says wake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use gpuscale_scaler::keda::pb::ScaledObjectRef;
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Clone)]
struct Fake {
    services: Arc<Vec<Value>>,
    slice: Arc<Mutex<Value>>,
    events: broadcast::Sender<Value>,
}

fn watch_body(mut rx: broadcast::Receiver<Value>) -> Response {
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            let mut line = serde_json::to_vec(&ev).unwrap();
            line.push(b'\n');
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                break;
            }
        }
    });
    (
        [("content-type", "application/json")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out)),
    )
        .into_response()
}

async fn services(State(f): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        // Nothing changes: keep the watch open.
        return watch_body(broadcast::channel(1).0.subscribe());
    }
    axum::Json(
        json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "10"},
        "items": *f.services}),
    )
    .into_response()
}

async fn slices(State(f): State<Fake>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        return watch_body(f.events.subscribe());
    }
    let s = f.slice.lock().unwrap().clone();
    axum::Json(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
        "metadata": {"resourceVersion": "10"}, "items": [s]}),
    )
    .into_response()
}

fn slice(ready: bool, rv: u64) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "qwen-predictor-x1", "namespace": "llm", "resourceVersion": rv.to_string(),
            "labels": {"kubernetes.io/service-name": "qwen-predictor"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": ready}}]})
}

async fn serve_fake(f: Fake) -> SocketAddr {
    let app = axum::Router::new()
        .route("/api/v1/services", axum::routing::get(services))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            axum::routing::get(slices),
        )
        .fallback(|uri: axum::http::Uri| async move {
            eprintln!("fake API server: unexpected {uri}");
            axum::http::StatusCode::NOT_FOUND
        })
        .with_state(f);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_services_route_and_endpointslices_release() {
    // The model server (its Service's upstream, overridden to loopback).
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|b: Bytes| async move { b }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });

    let annotated = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "qwen-predictor", "namespace": "llm", "resourceVersion": "5",
            "annotations": {"gpuscale.io/activate": "true", "gpuscale.io/host": "qwen.example.com",
                "gpuscale.io/upstream": format!("http://{upstream}")}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": "qwen"}}});
    let plain = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other", "namespace": "llm", "resourceVersion": "6"},
        "spec": {"ports": [{"port": 80}]}});
    let fake = Fake {
        services: Arc::new(vec![annotated, plain]),
        slice: Arc::new(Mutex::new(slice(false, 7))),
        events: broadcast::channel(8).0,
    };
    let api = serve_fake(fake.clone()).await;
    let dir = std::env::temp_dir().join(format!("gpuscale-actkube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: f\n  cluster:\n    server: http://{api}\n\
             contexts:\n- name: f\n  context:\n    cluster: f\n    user: f\ncurrent-context: f\nusers:\n- name: f\n  user:\n    token: t\n"
        ),
    )
    .unwrap();

    // A real scaler (no collectors: only the activator's report can make the workload active).
    let scaler = common::scaler(&["--poll-interval", "200ms"]).await;
    let mut grpc = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let mut md = HashMap::new();
    md.insert("deployment".to_string(), "qwen-predictor".to_string());
    let so = ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    };
    grpc.get_metric_spec(so.clone()).await.unwrap();

    let Some(activator) = common::activator_bin() else {
        return;
    };
    let proxy_port = common::free_port();
    let metrics_port = common::free_port();
    let _activator = common::Kill(
        std::process::Command::new(&activator)
            .args(["--activator-listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--activator-kube", "--activator-probe-interval", "100ms"])
            .args(["--scaler-url", &scaler.http])
            .env("KUBECONFIG", &kc)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    // Routes appear once the Service list is read.
    let start = Instant::now();
    loop {
        let r = client
            .post(format!("http://127.0.0.1:{proxy_port}/v1/completions"))
            .header("host", "other.llm.svc")
            .body("x")
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 404) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "activator did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No ready endpoint: the request is held and the scaler hears of it.
    let c = client.clone();
    let held = tokio::spawn(async move {
        c.post(format!("http://127.0.0.1:{proxy_port}/v1/completions"))
            .header("host", "qwen.example.com")
            .body("hello")
            .send()
            .await
            .unwrap()
    });
    let start = Instant::now();
    loop {
        if grpc
            .is_active(so.clone())
            .await
            .is_ok_and(|r| r.into_inner().result)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the scaler never heard of the held request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!held.is_finished(), "held while no endpoint is ready");

    // The pod becomes ready: a watch event on its EndpointSlice releases the request.
    *fake.slice.lock().unwrap() = slice(true, 8);
    let _ = fake
        .events
        .send(json!({"type": "MODIFIED", "object": slice(true, 8)}));
    let r = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");

    // The activator's own metrics count the release, the hold and the 404 it answered itself.
    let m = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fams =
        gpuscale_expfmt::text::parse_prometheus(&m, &gpuscale_expfmt::text::Limits::default()).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        fams.iter()
            .flat_map(|f| f.samples.iter())
            .find(|s| {
                s.name == name && label.is_none_or(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    };
    assert_eq!(
        value(
            "gpuscale_activator_releases_total",
            Some(("workload", "qwen-predictor"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "gpuscale_activator_requests_held",
            Some(("workload", "qwen-predictor"))
        ),
        Some(0.0)
    );
    assert_eq!(value("gpuscale_activator_hold_seconds_count", None), Some(1.0));
    assert_eq!(
        value("gpuscale_activator_rejected_total", Some(("reason", "timeout"))),
        Some(0.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
