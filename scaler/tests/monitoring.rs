//! The dashboard and the alert rules against a real Prometheus scraping a real collector (fake
//! GPUs, a model server serving the captured vLLM page), the scaler binary answering a KEDA
//! client, and the activator binary holding a request while its upstream is down.
//!
//! Every PromQL expression of deploy/monitoring/gpuscale-dashboard.json is evaluated by that
//! Prometheus (with the dashboard variables at "All") and must return series; every variable's
//! metric must carry its label; every alert rule of deploy/monitoring/gpuscale.rules.yaml is
//! loaded by it and evaluates without error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use gpuscale_scaler::keda::pb::{GetMetricsRequest, ScaledObjectRef};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing(msg: &str) -> bool {
    gpuscale_testkit::missing(msg, "scripts/test installs it");
    true
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The dashboard's queries with its variables at their "All" value.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/monitoring/gpuscale-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", ".*")
                .replace("$workload", ".*")
                .replace("$node", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// `label_values(METRIC{...}, LABEL)` of each dashboard variable, as (selector, label).
fn dashboard_variables() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/monitoring/gpuscale-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["definition"].as_str())
        .map(|def| {
            let inner = def.trim_start_matches("label_values(").trim_end_matches(')');
            let (sel, label) = inner.rsplit_once(',').unwrap();
            (sel.trim().replace("$namespace", ".*"), label.trim().to_string())
        })
        .collect()
}

/// Grafana dashboard 12239's queries (panel, expression, whether gpuscale serves it).
const DCGM_DASHBOARD: [(&str, &str, bool); 8] = [
    (
        "GPU Temperature",
        "max(DCGM_FI_DEV_GPU_TEMP{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (Hostname, gpu, uuid)",
        true,
    ),
    (
        "GPU Avg. Temp",
        "avg(DCGM_FI_DEV_GPU_TEMP{Hostname=~\"$Hostname\", gpu=~\"$gpu\"})",
        true,
    ),
    (
        "GPU Power Usage",
        "max(DCGM_FI_DEV_POWER_USAGE{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (Hostname, gpu, uuid)",
        true,
    ),
    (
        "GPU Power Total",
        "sum(max(DCGM_FI_DEV_POWER_USAGE{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (gpu))",
        true,
    ),
    (
        "GPU SM Clocks",
        "max(DCGM_FI_DEV_SM_CLOCK{Hostname=~\"$Hostname\", gpu=~\"$gpu\"} * 1000000) by (Hostname, UUID, gpu)",
        true,
    ),
    (
        "GPU Framebuffer Mem Used",
        "max(DCGM_FI_DEV_FB_USED{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)",
        true,
    ),
    (
        "GPU Utilization (DCP)",
        "max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)",
        false,
    ),
    (
        "Tensor Core Utilization (DCP)",
        "max(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{Hostname=~\"$Hostname\", gpu=~\"$gpu\"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)",
        false,
    ),
];

/// An upstream for the activator: `/health` and `/v1/echo`.
async fn upstream_on(addr: SocketAddr) {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/v1/echo",
            axum::routing::post(|body: String| async move { body }),
        );
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
}

fn so() -> ScaledObjectRef {
    let mut md: HashMap<String, String> = HashMap::new();
    md.insert("deployment".into(), "qwen".into());
    ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_rule_works_on_real_series() {
    if Command::new("prometheus").arg("--version").output().is_err()
        && missing("prometheus not found (Debian's prometheus package)")
    {
        return;
    }
    let model = common::ModelServer::start().await;
    model.set(3.0, 2.0);
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    // A second node's collector with dcgm-exporter's names, for NVIDIA's dashboard.
    let dcgm = common::collector_dcgm(&[]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "250ms"]).await;

    // KEDA polls the workload all along, so the scaler decides and its gRPC histogram moves.
    let grpc = scaler.grpc.clone();
    let keda = tokio::spawn(async move {
        let mut c = ExternalScalerClient::connect(grpc).await.unwrap();
        loop {
            let spec = c.get_metric_spec(so()).await.unwrap().into_inner();
            let _ = c
                .get_metrics(GetMetricsRequest {
                    scaled_object_ref: Some(so()),
                    metric_name: spec.metric_specs[0].metric_name.clone(),
                })
                .await;
            let _ = c.is_active(so()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let Some(activator) = common::activator_bin() else {
        return;
    };
    // The activator, its upstream down for now.
    let up: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let proxy_port = common::free_port();
    let activator_http = common::free_port();
    let _activator = common::Kill(
        Command::new(&activator)
            .args(["--activator-listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{activator_http}")])
            .args(["--route", &format!("/v1/=llm/qwen=http://{up}")])
            .args(["--scaler-url", &scaler.http])
            .args(["--activator-probe-interval", "100ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // Prometheus scraping all three every second, with gpuscale's alert rules loaded.
    let dir = std::env::temp_dir().join(format!("gpuscale-monitoring-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("data"));
    let scaler_http = scaler.http.trim_start_matches("http://").to_string();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: gpuscale-collector\n    honor_labels: true\n    static_configs:\n      - targets: ['{collector}']\n\
         \x20 - job_name: gpuscale-scaler\n    static_configs:\n      - targets: ['{scaler_http}']\n\
         \x20 - job_name: gpuscale-activator\n    static_configs:\n      - targets: ['127.0.0.1:{activator_http}']\n\
         \x20 - job_name: gpuscale-collector-dcgm\n    honor_labels: true\n    static_configs:\n      - targets: ['{dcgm}']\n",
        root().join("deploy/monitoring/gpuscale.rules.yaml").display()
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let prom_port = common::free_port();
    let _prom = common::Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let api = |path: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{prom_port}/api/v1/{path}"))
                .send()
                .await
                .ok()?;
            r.json::<Value>().await.ok()
        }
    };
    // Wait for a few scrapes of every target.
    let start = Instant::now();
    loop {
        let up = api(format!("query?query={}", encode("count(up == 1)"))).await;
        if up
            .as_ref()
            .and_then(|v| v["data"]["result"][0]["value"][1].as_str())
            == Some("4")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "targets never all up: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A request arrives while the upstream is down: held, then released when it starts.
    let proxy = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{proxy_port}/v1/echo"))
            .body("hello")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    upstream_on(up).await;
    assert_eq!(
        proxy.await.unwrap(),
        200,
        "the held request is served once the upstream is up"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every dashboard query returns series.
    let mut failures = Vec::new();
    for (title, expr) in dashboard_queries() {
        let v = api(format!("query?query={}", encode(&expr)))
            .await
            .unwrap_or(Value::Null);
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let shown: Vec<String> = result
            .iter()
            .take(3)
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(k, _)| !matches!(k.as_str(), "job" | "instance"))
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                format!("{{{labels}}} {}", s["value"][1].as_str().unwrap_or("?"))
            })
            .collect();
        println!(
            "{title}: {expr}\n    -> {} series: {}",
            result.len(),
            shown.join("; ")
        );
        if v["status"] != "success" || result.is_empty() {
            failures.push(format!("{title}: `{expr}` returned {v}"));
        }
        let nan = result
            .iter()
            .all(|s| s["value"][1].as_str().is_some_and(|x| x == "NaN"));
        if !result.is_empty() && nan {
            failures.push(format!("{title}: `{expr}` is NaN everywhere (no data behind it)"));
        }
    }
    // Every variable's metric carries its label.
    for (selector, label) in dashboard_variables() {
        let v = api(format!("series?match[]={}", encode(&selector)))
            .await
            .unwrap_or(Value::Null);
        let has = v["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s[&label].is_string()));
        println!(
            "variable label_values({selector}, {label}): {}",
            if has { "found" } else { "MISSING" }
        );
        if !has {
            failures.push(format!(
                "variable {label}: no {selector} series with label {label}: {v}"
            ));
        }
    }
    // NVIDIA's dcgm-exporter dashboard (Grafana 12239, NVIDIA/dcgm-exporter
    // grafana/dcgm-exporter-dashboard.json): its queries, verbatim but for the variables at
    // "All", on the collector's --dcgm-compat names. Its two DCP panels read profiling
    // fields only DCGM has (no NVML call gives them): they stay empty, not faked.
    for (panel, expr, served) in DCGM_DASHBOARD {
        let expr = expr.replace("$Hostname", ".*").replace("$gpu", ".*");
        let v = api(format!("query?query={}", encode(&expr)))
            .await
            .unwrap_or(Value::Null);
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        let first = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("-")
            .to_string();
        println!("dcgm dashboard {panel}: {expr}\n    -> {n} series (first {first})");
        if v["status"] != "success" || (served && n == 0) || (!served && n != 0) {
            failures.push(format!("dcgm dashboard {panel}: `{expr}` returned {v}"));
        }
    }
    for (metric, label) in [
        ("DCGM_FI_DEV_FB_FREE", "Hostname"),
        ("DCGM_FI_DEV_FB_FREE", "gpu"),
    ] {
        let v = api(format!("series?match[]={metric}"))
            .await
            .unwrap_or(Value::Null);
        let has = v["data"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s[label].is_string()));
        println!(
            "dcgm dashboard variable label_values({metric}, {label}): {}",
            if has { "found" } else { "MISSING" }
        );
        if !has {
            failures.push(format!("dcgm dashboard variable {label}: {v}"));
        }
    }
    // Every alert rule loaded and evaluated without error.
    let rules = api("rules".to_string()).await.unwrap_or(Value::Null);
    let mut loaded = 0;
    for g in rules["data"]["groups"].as_array().cloned().unwrap_or_default() {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            loaded += 1;
            println!(
                "rule {}: health {}, state {}",
                r["name"].as_str().unwrap_or("?"),
                r["health"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?")
            );
            if r["health"] != "ok" {
                failures.push(format!("rule {}: {}", r["name"], r["lastError"]));
            }
        }
    }
    if loaded != 9 {
        failures.push(format!("{loaded} rules loaded, expected 9: {rules}"));
    }
    keda.abort();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The rule file passes `promtool check rules` and its unit tests (each alert firing and not).
#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let dir = root().join("deploy/monitoring");
    let check = Command::new("promtool")
        .args(["check", "rules", "gpuscale.rules.yaml"])
        .current_dir(&dir)
        .output();
    let Ok(check) = check else {
        missing("promtool not found (Debian's prometheus package)");
        return;
    };
    let out = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    println!("{out}");
    assert!(
        check.status.success() && out.contains("SUCCESS: 9 rules found"),
        "{out}"
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "gpuscale.rules.test.yaml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    println!("{out}");
    assert!(test.status.success() && out.contains("SUCCESS"), "{out}");
    // Every alert has a firing case and a silent case in the tests.
    let rules = std::fs::read_to_string(dir.join("gpuscale.rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("gpuscale.rules.test.yaml")).unwrap();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(line))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{line}: no test where it stays silent"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{line}: no test where it fires"
        );
    }
}
