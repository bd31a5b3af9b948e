//! End to end: model servers serving real captured pages over HTTP, the collector binary with
//! two scripted GPUs scraping them, its /metrics read back in both formats, checked by
//! `promtool`, and scraped by a real Prometheus whose PromQL answers carry the right values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpuscale_expfmt::text::{Limits, MetricFamily, parse_openmetrics, parse_prometheus};
use gpuscale_testkit::{Kill, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_gpuscale-collector");

fn fixtures() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/metrics");
    if p.is_dir() {
        return Some(p);
    }
    missing(format!(
        "{} not found: captured pages are not beside this checkout",
        p.display()
    ));
    None
}

fn missing(msg: String) {
    gpuscale_testkit::missing(msg, ".ci/run installs it and clones shared/ beside the checkout");
}

/// Serve `page` at /metrics on a loopback port.
async fn serve_page(page: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { page }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn get(client: &reqwest::Client, url: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let mut req = client.get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some((200, _)) = get(client, &format!("{base}/readyz"), None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base}/readyz never became ready");
}

/// Poll /metrics until `done` holds for the parsed page (or `secs` pass); the last page.
async fn metrics_until(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
    done: impl Fn(&[MetricFamily]) -> bool,
) -> Vec<MetricFamily> {
    let start = Instant::now();
    loop {
        let (_, text) = get(client, &format!("{base}/metrics"), None)
            .await
            .unwrap_or_default();
        let fams = parse_prometheus(&text, &Limits::default()).unwrap_or_default();
        if done(&fams) || start.elapsed() > Duration::from_secs(secs) {
            return fams;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn value(fams: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    fams.iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_reads_queues_and_gpus_and_prometheus_scrapes_it() {
    let Some(dir) = fixtures() else { return };
    let vllm = serve_page(read(&dir, "vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt")).await;
    let sglang = serve_page(read(&dir, "sglang-docs-production-metrics-llama3.1-8b.txt")).await;
    let tgi = serve_page(read(&dir, "tgi-datadog-integrations-core.txt")).await;
    let trtllm = serve_page(read(&dir, "triton-trtllm-backend-readme-batch-manager.txt")).await;
    let dead = free_port(); // nothing listens here: the scrape must fail and be reported
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let targets = [
        format!("llm/qwen=http://{vllm}/metrics"),
        format!("llm/llama=http://{sglang}/metrics"),
        format!("chat/tgi=http://{tgi}/metrics"),
        format!("trt/engine=http://{trtllm}/metrics"),
        format!("llm/gone=http://127.0.0.1:{dead}/metrics"),
    ];
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--gpu-source".into(),
        "fake:2".into(),
        "--interval".into(),
        "0.5".into(),
        "--scrape-timeout".into(),
        "1".into(),
        "--node-name".into(),
        "gpu-node-1".into(),
        "--dcgm-compat".into(),
    ];
    for t in &targets {
        args.push("--scrape-target".into());
        args.push(t.clone());
    }
    let _collector = Kill(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}")),
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;

    let (status, text) = get(&client, &format!("{base}/metrics"), None)
        .await
        .unwrap_or_default();
    assert_eq!(status, 200);
    let fams = parse_prometheus(&text, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let w = |workload: &str, metric: &str| {
        value(&fams, metric, &[("workload", workload), ("node", "gpu-node-1")])
    };
    // Queue depth per workload, from the real pages (SGLang's is under heavy load).
    assert_eq!(w("llama", "gpuscale_workload_requests_waiting"), Some(2826.0));
    assert_eq!(w("llama", "gpuscale_workload_requests_running"), Some(162.0));
    assert_eq!(w("llama", "gpuscale_workload_kv_cache_usage_ratio"), Some(0.28));
    assert_eq!(w("qwen", "gpuscale_workload_requests_waiting"), Some(0.0));
    assert_eq!(w("tgi", "gpuscale_workload_requests_waiting"), Some(0.0));
    assert_eq!(w("engine", "gpuscale_workload_requests_waiting"), Some(1.0));
    assert_eq!(
        value(
            &fams,
            "gpuscale_workload_requests_waiting",
            &[("workload", "llama"), ("namespace", "llm"), ("server", "sglang")]
        ),
        Some(2826.0)
    );
    // The dead target: down, counted, and no invented queue numbers.
    let dead_url = format!("http://127.0.0.1:{dead}/metrics");
    assert_eq!(
        value(&fams, "gpuscale_scrape_up", &[("target", &dead_url)]),
        Some(0.0)
    );
    assert!(value(&fams, "gpuscale_scrape_errors_total", &[("target", &dead_url)]).is_some_and(|v| v >= 1.0));
    assert_eq!(w("gone", "gpuscale_workload_requests_waiting"), None);
    // Scripted GPUs with their labels, and dcgm-exporter's names.
    let gpu1 = [
        ("gpu", "1"),
        ("uuid", "GPU-fake-0001"),
        ("model", "Fake GPU 80GB"),
        ("node", "gpu-node-1"),
    ];
    assert_eq!(value(&fams, "gpuscale_gpu_utilization_ratio", &gpu1), Some(0.2));
    // No kubelet socket here: GPU series stay unattributed, never with invented pods.
    assert!(
        fams.iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name.starts_with("gpuscale_gpu_"))
            .all(|s| s.label("pod").is_none())
    );
    assert_eq!(
        value(&fams, "gpuscale_gpu_memory_used_bytes", &gpu1),
        Some(20.0 * (1u64 << 30) as f64)
    );
    assert_eq!(
        value(
            &fams,
            "DCGM_FI_DEV_GPU_UTIL",
            &[
                ("gpu", "1"),
                ("UUID", "GPU-fake-0001"),
                ("Hostname", "gpu-node-1")
            ]
        ),
        Some(20.0)
    );

    // OpenMetrics when asked, and strictly valid.
    let (status, om) = get(
        &client,
        &format!("{base}/metrics"),
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .await
    .unwrap_or_default();
    assert_eq!(status, 200);
    let om_fams = parse_openmetrics(&om, &Limits::default()).unwrap_or_else(|e| panic!("{e}\n{om}"));
    assert_eq!(
        value(
            &om_fams,
            "gpuscale_workload_requests_waiting",
            &[("workload", "llama")]
        ),
        Some(2826.0)
    );

    // promtool's own checks on our metrics (dcgm-exporter's upper-case names are theirs, so the
    // check runs on a page without them).
    check_with_promtool(&text);

    // A real Prometheus scrapes the collector; PromQL returns the queue depth and GPU values.
    prometheus_scrapes(&client, port).await;
}

fn check_with_promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        missing("promtool not found (Debian's prometheus package; scripts/test installs it)".into());
        return;
    };
    let ours: String = text
        .lines()
        .filter(|l| !l.contains("DCGM_FI_"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(ours.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn prometheus_scrapes(client: &reqwest::Client, collector_port: u16) {
    if Command::new("prometheus").arg("--version").output().is_err() {
        missing("prometheus not found (Debian's prometheus package; scripts/test installs it)".into());
        return;
    }
    let dir = std::env::temp_dir().join(format!("gpuscale-prom-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("data"));
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: gpuscale-collector\n    \
         static_configs:\n      - targets: ['127.0.0.1:{collector_port}']\n"
    );
    let config_path = dir.join("prometheus.yml");
    let _ = std::fs::write(&config_path, config);
    let port = free_port();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus: {e}")),
    );
    let query = |q: &str| {
        format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            q.replace('"', "%22").replace(' ', "%20")
        )
    };
    let start = Instant::now();
    let mut last = String::new();
    let mut answers = (None, None);
    while start.elapsed() < Duration::from_secs(60) && (answers.0.is_none() || answers.1.is_none()) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let one = |body: Option<(u16, String)>| -> Option<f64> {
            let (_, body) = body?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
        };
        let waiting = get(
            client,
            &query("gpuscale_workload_requests_waiting{workload=\"llama\"}"),
            None,
        )
        .await;
        last = waiting.as_ref().map(|w| w.1.clone()).unwrap_or_default();
        answers.0 = answers.0.or(one(waiting));
        answers.1 = answers.1.or(one(get(
            client,
            &query("gpuscale_gpu_utilization_ratio{gpu=\"0\"}"),
            None,
        )
        .await));
    }
    assert_eq!(answers.0, Some(2826.0), "PromQL queue depth; last answer: {last}");
    assert_eq!(answers.1, Some(0.1), "PromQL GPU utilization");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_fail_with_the_fix() {
    // A user error is a message, never a backtrace, even with RUST_BACKTRACE set.
    let out = Command::new(BIN)
        .args(["--gpu-source", "fake:0"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: --gpu-source fake:0: expected fake:N with N from 1 to 64"),
        "{err}"
    );
    assert!(!err.contains("backtrace") && err.lines().count() <= 2, "{err}");
    // Listen addresses: the forms are shown; `:PORT` and names are accepted.
    let out = Command::new(BIN)
        .args(["--gpu-source", "none", "--listen", "9400"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has no port") && err.contains(":PORT"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--gpu-source", "none", "--interval", "soon"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`soon`: expected a duration such as 500ms, 30s, 5m or 1h"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args([
            "--gpu-source",
            "none",
            "--scrape-target",
            "https://secure/metrics",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--scrape-target `https://secure/metrics`: https is not supported")
            && err.contains("accepted: HOST:PORT"),
        "{err}"
    );
    // A bad scheme and a bad port are refused at start, naming the accepted forms, and a
    // secret in the URL never reaches the message.
    for (bad, says) in [
        ("llm/q=htp://h:1", "unsupported scheme `htp`"),
        ("llm/q=http://u:hunter2@h:99999/metrics", "not a port"),
    ] {
        let out = Command::new(BIN)
            .args(["--gpu-source", "none", "--scrape-target", bad])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{bad}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn nvml_reads_a_real_gpu() {
    // Needs a GPU node. CI has none: skipped there too, explicitly, never faked.
    match gpuscale_collector::gpu::NvmlGpus::new() {
        Err(e) => gpuscale_testkit::skipped(format_args!("no NVML on this machine: {e}")),
        Ok(mut g) => {
            use gpuscale_collector::gpu::GpuSource;
            let gpus = g.read().unwrap_or_else(|e| panic!("{e}"));
            assert!(!gpus.is_empty(), "NVML loaded but reports no GPU");
            for gpu in &gpus {
                assert!(
                    gpu.uuid.starts_with("GPU-") || gpu.uuid.starts_with("MIG-"),
                    "{gpu:?}"
                );
                assert!(gpu.memory_total_bytes.is_some_and(|t| t > 0), "{gpu:?}");
            }
        }
    }
}

#[test]
fn every_flag_is_documented() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let doc = std::fs::read_to_string(docs.join("collector.md")).unwrap_or_default();
    let reference = std::fs::read_to_string(docs.join("configuration.md")).unwrap_or_default();
    let flags = gpuscale_testkit::help_flags(BIN, &[]);
    assert!(flags.len() >= 14, "{flags:?}");
    for f in flags {
        let name = &f.name;
        assert!(
            doc.contains(&format!("| `--{name}` |")),
            "docs/collector.md does not document --{name}"
        );
        // Its env twin, as --help prints it, in the configuration reference.
        let env = f.env.unwrap_or_else(|| panic!("--{name} has no env twin"));
        assert!(
            reference.contains(&format!("| `--{name}` | `{env}` |")),
            "docs/configuration.md has no row `--{name}` with env `{env}`"
        );
    }
}

mod kubelet {
    use gpuscale_collector::podresources::pb::pod_resources_lister_server::{
        PodResourcesLister, PodResourcesListerServer,
    };
    use gpuscale_collector::podresources::pb::{
        ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
    };

    /// A kubelet's PodResources service over a real unix socket, answering a fixed List.
    pub struct FakeKubelet(pub ListPodResourcesResponse);

    #[tonic::async_trait]
    impl PodResourcesLister for FakeKubelet {
        async fn list(
            &self,
            _: tonic::Request<ListPodResourcesRequest>,
        ) -> Result<tonic::Response<ListPodResourcesResponse>, tonic::Status> {
            Ok(tonic::Response::new(self.0.clone()))
        }
    }

    pub fn pod(ns: &str, name: &str, container: &str, ids: &[&str]) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: ns.into(),
            containers: vec![ContainerResources {
                name: container.into(),
                devices: vec![ContainerDevices {
                    resource_name: "nvidia.com/gpu".into(),
                    device_ids: ids.iter().map(|s| s.to_string()).collect(),
                }],
            }],
        }
    }

    pub async fn serve(path: &std::path::Path, resp: ListPodResourcesResponse) {
        let listener = tokio::net::UnixListener::bind(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(FakeKubelet(resp)))
                .serve_with_incoming(incoming),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_are_attributed_to_pods_through_the_kubelet() {
    let dir = std::env::temp_dir().join(format!("gpuscale-kubelet-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let socket = dir.join("kubelet.sock");
    let _ = std::fs::remove_file(&socket);
    // GPU 1 belongs to one vLLM container; GPU 0 is time-sliced between two notebooks.
    kubelet::serve(
        &socket,
        gpuscale_collector::podresources::pb::ListPodResourcesResponse {
            pod_resources: vec![
                kubelet::pod("llm", "qwen-0", "vllm", &["GPU-fake-0001"]),
                kubelet::pod("dev", "nb-1", "jupyter", &["GPU-fake-0000::0"]),
                kubelet::pod("dev", "nb-2", "jupyter", &["GPU-fake-0000::1"]),
            ],
        },
    )
    .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _collector = Kill(
        Command::new(BIN)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--gpu-source",
                "fake:2",
                "--interval",
                "0.3",
            ])
            .args([
                "--pod-resources-socket",
                socket.to_str().unwrap_or_default(),
                "--pod-resources-interval",
                "0.2",
            ])
            .args(["--node-name", "gpu-node-2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}")),
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;
    // The attribution refreshes on its own timer; wait for it to reach a tick.
    let fams = metrics_until(&client, &base, 15, |f| {
        value(f, "gpuscale_gpu_utilization_ratio", &[("pod", "qwen-0")]).is_some()
    })
    .await;
    let util = |labels: &[(&str, &str)]| value(&fams, "gpuscale_gpu_utilization_ratio", labels);
    assert_eq!(
        util(&[
            ("gpu", "1"),
            ("namespace", "llm"),
            ("pod", "qwen-0"),
            ("container", "vllm")
        ]),
        Some(0.2)
    );
    assert_eq!(util(&[("gpu", "0"), ("pod", "nb-1")]), Some(0.1));
    assert_eq!(util(&[("gpu", "0"), ("pod", "nb-2")]), Some(0.1));
    let gpu0_series = fams
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == "gpuscale_gpu_utilization_ratio" && s.label("gpu") == Some("0"))
        .count();
    assert_eq!(
        gpu0_series, 2,
        "a shared GPU has one series per container holding it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Kubernetes API server's pod list/watch and ReplicaSet reads, in real Kubernetes JSON.
mod apiserver {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, Query, State};
    use axum::response::IntoResponse;

    #[derive(Clone)]
    pub struct Fake {
        pub node: String,
        pub pods: serde_json::Value,
        pub selectors: Arc<Mutex<Vec<String>>>,
    }

    async fn pods(
        State(f): State<Fake>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        let selector = q.get("fieldSelector").cloned().unwrap_or_default();
        if let Ok(mut s) = f.selectors.lock() {
            s.push(selector.clone());
        }
        if q.get("watch").map(String::as_str) == Some("true") {
            // A watch with nothing new: keep the stream open, as the API server does.
            let body = axum::body::Body::from_stream(tokio_stream::pending::<
                Result<axum::body::Bytes, std::io::Error>,
            >());
            return ([("content-type", "application/json")], body).into_response();
        }
        // Only a correct node selector sees this node's pods.
        let items = if selector == format!("spec.nodeName={}", f.node) {
            f.pods.clone()
        } else {
            serde_json::json!([])
        };
        axum::Json(serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"}, "items": items
        }))
        .into_response()
    }

    async fn replicaset(Path((ns, name)): Path<(String, String)>) -> axum::response::Response {
        // ReplicaSet `<deployment>-<hash>` is owned by Deployment `<deployment>`.
        let deployment = name
            .rsplit_once('-')
            .map_or(name.as_str(), |(d, _)| d)
            .to_string();
        axum::Json(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "uid": format!("rs-{name}"), "resourceVersion": "7",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                     "uid": format!("d-{deployment}"), "controller": true}]}
        }))
        .into_response()
    }

    pub async fn serve(fake: Fake) -> SocketAddr {
        let app = axum::Router::new()
            .route("/api/v1/pods", axum::routing::get(pods))
            .route(
                "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
                axum::routing::get(replicaset),
            )
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A pod on the node, owned by ReplicaSet `rs`.
    pub fn pod(
        ns: &str,
        name: &str,
        rs: &str,
        phase: &str,
        annotations: serde_json::Value,
        labels: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "90",
                "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                     "uid": format!("rs-{rs}"), "controller": true}]},
            "spec": {"nodeName": "gpu-node-3", "containers": [{"name": "server", "image": "server:1"}]},
            "status": {"phase": phase, "podIP": "127.0.0.1"}
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_mode_discovers_opted_in_pods_and_their_workloads() {
    let Some(dir) = fixtures() else { return };
    let vllm = serve_page(read(&dir, "vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt")).await;
    let sglang = serve_page(read(&dir, "sglang-docs-production-metrics-llama3.1-8b.txt")).await;
    let scrape = |port: u16, path: &str| serde_json::json!({"gpuscale.io/scrape": "true", "gpuscale.io/port": port.to_string(), "gpuscale.io/path": path});
    let pods = serde_json::json!([
        // A Deployment's pod: workload = the Deployment behind its ReplicaSet.
        apiserver::pod(
            "llm",
            "qwen-7d9f8-abcde",
            "qwen-7d9f8",
            "Running",
            scrape(vllm.port(), "/metrics"),
            serde_json::json!({})
        ),
        // A KServe predictor: workload = its InferenceService label (--workload-label).
        apiserver::pod(
            "llm",
            "llama-predictor-5c6b7-xyz",
            "llama-predictor-5c6b7",
            "Running",
            scrape(sglang.port(), "metrics"),
            serde_json::json!({"serving.kserve.io/inferenceservice": "llama"})
        ),
        // Not opted in, and not running yet: neither is scraped.
        apiserver::pod(
            "llm",
            "other-1-a",
            "other-1",
            "Running",
            serde_json::json!({}),
            serde_json::json!({})
        ),
        apiserver::pod(
            "llm",
            "late-1-b",
            "late-1",
            "Pending",
            scrape(vllm.port(), "/metrics"),
            serde_json::json!({})
        ),
    ]);
    let selectors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = apiserver::serve(apiserver::Fake {
        node: "gpu-node-3".into(),
        pods,
        selectors: selectors.clone(),
    })
    .await;
    let kubeconfig = std::env::temp_dir().join(format!("gpuscale-kubeconfig-{}", std::process::id()));
    let _ = std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n\
             users:\n- name: fake\n  user:\n    token: test-token\n"
        ),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _collector = Kill(
        Command::new(BIN)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--gpu-source",
                "none",
                "--interval",
                "0.3",
            ])
            .args([
                "--kube",
                "--node-name",
                "gpu-node-3",
                "--pod-resources-socket",
                "none",
            ])
            .args(["--workload-label", "serving.kserve.io/inferenceservice"])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{BIN}: {e}")),
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;
    let fams = metrics_until(&client, &base, 20, |f| {
        value(f, "gpuscale_workload_requests_waiting", &[("workload", "llama")]).is_some()
            && value(f, "gpuscale_workload_requests_waiting", &[("workload", "qwen")]).is_some()
    })
    .await;
    let waiting = |labels: &[(&str, &str)]| value(&fams, "gpuscale_workload_requests_waiting", labels);
    assert_eq!(
        waiting(&[
            ("namespace", "llm"),
            ("workload", "qwen"),
            ("pod", "qwen-7d9f8-abcde")
        ]),
        Some(0.0)
    );
    assert_eq!(
        waiting(&[
            ("namespace", "llm"),
            ("workload", "llama"),
            ("pod", "llama-predictor-5c6b7-xyz")
        ]),
        Some(2826.0)
    );
    let scraped = fams
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == "gpuscale_scrape_up")
        .count();
    assert_eq!(scraped, 2, "only the two running, opted-in pods are scraped");
    let sel = selectors.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        sel.iter().all(|s| s == "spec.nodeName=gpu-node-3"),
        "pods must be listed for this node only: {sel:?}"
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

/// `VmRSS` and `VmHWM` (peak), KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The collector's memory limit in deploy/base/collector/daemonset.yaml.
const COLLECTOR_LIMIT_MIB: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_of_190k_series_stay_under_the_daemonsets_limit() {
    // A valid 13.5 MiB page: the queue gauges among 190,000 other series.
    let mut page = String::with_capacity(14 << 20);
    page.push_str("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\"} 7\n");
    page.push_str("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 3\n");
    page.push_str("# TYPE vllm:token_stats gauge\n");
    for i in 0..190_000 {
        page.push_str(&format!(
            "vllm:token_stats{{engine=\"0\",model_name=\"Qwen/Qwen2.5-0.5B\",series=\"{i:06}\"}} {i}\n"
        ));
    }
    let mib = page.len() as f64 / f64::from(1 << 20);
    let n: usize = 3;
    let targets: Vec<SocketAddr> =
        futures_util::future::join_all((0..n).map(|_| serve_page(page.clone()))).await;
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--gpu-source", "fake:8"])
        // Memory is measured here, not speed: a loaded 2-core CI machine parsing 45 MiB in a
        // debug build gets time enough.
        .args([
            "--pod-resources-socket",
            "none",
            "--interval",
            "0.5",
            "--scrape-timeout",
            "30s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (i, t) in targets.iter().enumerate() {
        cmd.args(["--scrape-target", &format!("llm/w{i}=http://{t}/metrics")]);
    }
    let child = Kill(cmd.spawn().unwrap_or_else(|e| panic!("{e}")));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    // Every target read, repeatedly; the three pages are in flight at once.
    let fams = metrics_until(&client, &base, 90, |f| {
        f.iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == "gpuscale_workload_requests_waiting" && s.value == 7.0)
            .count()
            == n
    })
    .await;
    assert_eq!(
        fams.iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == "gpuscale_workload_requests_waiting")
            .count(),
        n
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, peak) = rss_kib(child.0.id());
    println!(
        "collector: 3 targets of {mib:.1} MiB / 190,002 series each, scraped every 0.5 s: RSS {} MiB, peak {} MiB (limit {COLLECTOR_LIMIT_MIB} Mi)",
        rss / 1024,
        peak / 1024
    );
    assert!(mib > 13.0, "{mib}");
    assert!(
        peak / 1024 < COLLECTOR_LIMIT_MIB * 8 / 10,
        "peak {} MiB",
        peak / 1024
    );
}

/// SIGTERM (what the kubelet sends) ends the collector cleanly: exit 0, not a supervised
/// task's failure, and soon (the drain bound is 10 s; an idle server needs none of it).
#[tokio::test]
async fn sigterm_ends_the_collector_cleanly() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["--gpu-source", "fake:1", "--pod-resources-socket", "none"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    wait_ready(&reqwest::Client::new(), &base).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break s;
        }
        if start.elapsed() > Duration::from_secs(8) {
            let _ = child.kill();
            panic!("the collector did not stop within 8 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "exit {status:?} after SIGTERM: {err}");
}
