//! KEDA's call pattern (shared/research/keda.md section 2), replayed by a tonic client against
//! the scaler binary over TCP, with a real collector reading a model server that serves the
//! captured vLLM page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use gpuscale_scaler::keda::pb::{GetMetricsRequest, ScaledObjectRef};
use tonic::Code;
use tonic::transport::Channel;

fn so(extra: &[(&str, &str)]) -> ScaledObjectRef {
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert(
        "scalerAddress".into(),
        "gpuscale-scaler.gpuscale-system:9090".into(),
    );
    md.insert("deployment".into(), "qwen".into());
    for (k, v) in extra {
        md.insert(k.to_string(), v.to_string());
    }
    ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    }
}

/// One KEDA poll: GetMetricSpec, then per spec GetMetrics followed by IsActive.
async fn poll(
    c: &mut ExternalScalerClient<Channel>,
    r: &ScaledObjectRef,
) -> (Result<f64, tonic::Status>, Result<bool, tonic::Status>) {
    let spec = c.get_metric_spec(r.clone()).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1, "exactly one metric spec");
    let name = spec.metric_specs[0].metric_name.clone();
    let m = c
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: name.clone(),
        })
        .await
        .map(|m| {
            let m = m.into_inner();
            assert_eq!(m.metric_values.len(), 1, "exactly one value");
            assert_eq!(m.metric_values[0].metric_name, name);
            assert_eq!(
                m.metric_values[0].metric_value,
                m.metric_values[0].metric_value_float.ceil() as i64
            );
            m.metric_values[0].metric_value_float
        });
    let a = c.is_active(r.clone()).await.map(|a| a.into_inner().result);
    (m, a)
}

async fn until<F: FnMut(&Result<f64, tonic::Status>, &Result<bool, tonic::Status>) -> bool>(
    c: &mut ExternalScalerClient<Channel>,
    r: &ScaledObjectRef,
    mut f: F,
) -> (Result<f64, tonic::Status>, Result<bool, tonic::Status>) {
    let start = Instant::now();
    loop {
        let (m, a) = poll(c, r).await;
        if f(&m, &a) {
            return (m, a);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "condition not reached: last {m:?} {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_call_pattern_scale_from_zero_and_back() {
    let model = common::ModelServer::start().await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "200ms"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let r = so(&[
        ("policy", "queue"),
        ("queue.target", "2"),
        ("keepAlive", "2s"),
        ("maxSignalAge", "3s"),
        ("queue.scaleDownWindow", "0s"),
    ]);

    // Reconcile: GetMetricSpec builds the HPA. One spec, target 1 (replicas mode).
    let spec = c.get_metric_spec(r.clone()).await.unwrap().into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    let s = &spec.metric_specs[0];
    assert_eq!(
        (s.metric_name.as_str(), s.target_size, s.target_size_float),
        ("gpuscale-replicas-llm-qwen", 1, 1.0)
    );

    // Idle model server: the one replica stays for the 2 s keep-alive, then zero, inactive.
    let (m, a) = until(&mut c, &r, |m, a| m.is_ok() && a.is_ok()).await;
    assert_eq!((m.unwrap(), a.unwrap()), (1.0, true));
    let (m, a) = until(&mut c, &r, |m, _| m.as_ref().is_ok_and(|v| *v == 0.0)).await;
    assert_eq!((m.unwrap(), a.unwrap()), (0.0, false));

    // external-push: the stream sends the current state when opened.
    let mut stream = c.stream_is_active(r.clone()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.result);

    // Requests arrive at the model server: the stream pushes `true` once, and the HPA path
    // reads ceil(6 / 2) = 3 replicas.
    model.set(6.0, 0.0);
    let pushed = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(msg.result);
    println!(
        "push after the model server's queue grew: {:?} (collector tick 100 ms + scaler poll 200 ms)",
        pushed.elapsed()
    );
    let (m, a) = until(&mut c, &r, |m, _| m.as_ref().is_ok_and(|v| *v == 3.0)).await;
    assert_eq!((m.unwrap(), a.unwrap()), (3.0, true));
    // HPA sync: GetMetricSpec, GetMetrics, IsActive again; still active, and no repeated `true`.
    for _ in 0..3 {
        let (m, a) = poll(&mut c, &r).await;
        assert_eq!((m.unwrap(), a.unwrap()), (3.0, true));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(800), stream.message())
            .await
            .is_err(),
        "no second `true` while already active"
    );

    // Idle again: one replica through the 2 s keep-alive, then zero and inactive.
    model.set(0.0, 0.0);
    // Both answers of one poll (GetMetrics and IsActive can straddle a tick).
    let (m, a) = until(&mut c, &r, |m, a| {
        matches!(a, Ok(false)) && m.as_ref().is_ok_and(|v| *v == 0.0)
    })
    .await;
    assert_eq!(m.unwrap(), 0.0);
    assert!(!a.unwrap());

    // The collector's target breaks: after maxSignalAge the scaler refuses to answer rather
    // than invent a number, and says why.
    model.fail();
    let (m, a) = until(&mut c, &r, |m, _| m.is_err()).await;
    let e = m.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("llm/qwen")
            && e.message().contains("no valid reading")
            && e.message().contains("scrape failed"),
        "{}",
        e.message()
    );
    assert_eq!(a.unwrap_err().code(), Code::Unavailable);

    // /debug/workloads shows the workload, its decision and why it is unavailable.
    let debug: serde_json::Value = reqwest::get(format!("{}/debug/workloads", scaler.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let w = &debug[0];
    assert_eq!(
        (w["namespace"].as_str(), w["name"].as_str()),
        (Some("llm"), Some("qwen"))
    );
    assert!(w["unavailable"].as_str().unwrap().contains("no valid reading"));
    // /metrics: gRPC latency histograms and per-workload series.
    let metrics = reqwest::get(format!("{}/metrics", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gpuscale_scaler_grpc_request_duration_seconds_count{method=\"GetMetrics\"}"));
    assert!(metrics.contains("gpuscale_scaler_unavailable{namespace=\"llm\",workload=\"qwen\"} 1"));
    // GPU capacity per node and product, from the collector's gpuscale_gpu_info.
    assert!(
        metrics.contains(
            "gpuscale_cluster_gpus{node=\"gpu-node-1\",model=\"Fake GPU 80GB\",state=\"allocatable\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activator_demand_pushes_within_100ms_and_bad_metadata_is_refused() {
    let model = common::ModelServer::start().await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    // A slow poll, so that only the activator's report can explain a fast push.
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "5s"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let r = so(&[("keepAlive", "0s")]);
    c.get_metric_spec(r.clone()).await.unwrap();
    let mut stream = c.stream_is_active(r.clone()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(12), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.result, "idle at open");

    let http = reqwest::Client::new();
    let started = Instant::now();
    let resp = http
        .post(format!("{}/v1/held", scaler.http))
        .json(&serde_json::json!({"namespace": "llm", "workload": "qwen", "requests": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let msg = tokio::time::timeout(Duration::from_millis(100), stream.message())
        .await
        .expect("true within 100 ms of the activator's report")
        .unwrap()
        .unwrap();
    assert!(msg.result);
    println!(
        "push latency, activator report -> stream message: {:?}",
        started.elapsed()
    );

    // Unknown workloads and bad bodies are refused with the fix.
    let resp = http
        .post(format!("{}/v1/held", scaler.http))
        .json(&serde_json::json!({"namespace": "llm", "workload": "nope", "requests": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .post(format!("{}/v1/held", scaler.http))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("\"namespace\""));

    // Bad trigger metadata: INVALID_ARGUMENT naming the key and what is allowed.
    let e = c.get_metric_spec(so(&[("minReplica", "1")])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("unknown key `minReplica`") && e.message().contains("minReplicas"),
        "{}",
        e.message()
    );
    let mut no_deploy = so(&[]);
    no_deploy.scaler_metadata.remove("deployment");
    let e = c.is_active(no_deploy).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("`deployment`"));
    // A metric name this trigger does not serve.
    let e = c
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: "s0-other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("gpuscale-replicas-llm-qwen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_mode_reports_the_raw_signal() {
    let model = common::ModelServer::start().await;
    model.set(5.0, 3.0);
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "200ms"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let r = so(&[("mode", "signal"), ("metric", "waiting"), ("target", "2.5")]);
    let spec = c.get_metric_spec(r.clone()).await.unwrap().into_inner();
    let s = &spec.metric_specs[0];
    assert_eq!(
        (s.metric_name.as_str(), s.target_size, s.target_size_float),
        ("gpuscale-waiting-llm-qwen", 3, 2.5)
    );
    let (m, a) = until(&mut c, &r, |m, _| m.is_ok()).await;
    assert_eq!((m.unwrap(), a.unwrap()), (5.0, true));
}
