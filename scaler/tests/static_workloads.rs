//! Decisions without KEDA: a workload named by `--workload` is decided every poll from a real
//! collector's signals, and /debug/workloads and /metrics show it, with no gRPC call at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_named_on_the_command_line_is_decided_without_keda() {
    let model = common::ModelServer::start().await;
    model.set(6.0, 2.0);
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&[
        "--collector",
        &collector.to_string(),
        "--poll-interval",
        "200ms",
        "--workload",
        "llm/qwen:policy=queue,queue.target=2,maxReplicas=10",
    ])
    .await;
    let http = reqwest::Client::new();
    let start = Instant::now();
    let entry = loop {
        let v: Value = http
            .get(format!("{}/debug/workloads", scaler.http))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = v
            .as_array()
            .and_then(|a| a.iter().find(|w| w.to_string().contains("qwen")).cloned());
        if let Some(w) = found.filter(|w| w.to_string().contains("\"desired\":4")) {
            break w;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no decision for llm/qwen: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{entry:#}");
    let text = entry.to_string();
    assert!(
        text.contains("--workload llm/qwen"),
        "the asker is the flag: {text}"
    );
    // (6 waiting + 2 running) / target 2 = 4 replicas, and /metrics says so too.
    let metrics = http
        .get(format!("{}/metrics", scaler.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gpuscale_scaler_desired_replicas{") && l.contains("workload=\"qwen\""))
        .unwrap_or_else(|| panic!("no desired replicas series:\n{metrics}"));
    assert!(line.ends_with(" 4"), "{line}");
}

#[test]
fn bad_workload_specs_are_refused_with_the_fix() {
    let bin = env!("CARGO_BIN_EXE_gpuscale-scaler");
    for (spec, want) in [
        ("qwen", "expected NAMESPACE/DEPLOYMENT"),
        ("llm/qwen:policy", "expected key=value, found `policy`"),
        ("llm/qwen:queue.targt=2", "queue.targt"),
    ] {
        let out = std::process::Command::new(bin)
            .args([
                "--workload",
                spec,
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} accepted");
        assert!(err.contains("--workload") && err.contains(want), "{spec}: {err}");
    }
    let file = std::env::temp_dir().join(format!("gpuscale-workloads-{}.txt", std::process::id()));
    std::fs::write(
        &file,
        "# one per line\nllm/qwen:policy=queue\n\nllm/bad:policy=nope\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--workloads-file",
            file.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("{}:4:", file.display())),
        "{err}"
    );
    let _ = std::fs::remove_file(&file);
}

/// The value of an unlabelled series on a page.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_workload_series_are_bounded_and_the_unavailable_ones_kept_first() {
    let model = common::ModelServer::start().await;
    model.set(6.0, 2.0);
    let collector = common::collector(&[("llm/alpha", model.addr), ("llm/qwen", model.addr)]).await;
    // Three workloads, room for two: `ghost` is on no collector's page (UNAVAILABLE), so it
    // is kept ahead of both that have data, and of those the first by name.
    let scaler = common::scaler(&[
        "--collector",
        &collector.to_string(),
        "--poll-interval",
        "200ms",
        "--metrics-max-workloads",
        "2",
        "--workload",
        "llm/qwen:policy=queue,queue.target=2",
        "--workload",
        "llm/alpha:policy=queue,queue.target=2",
        "--workload",
        "llm/ghost:policy=queue,queue.target=2",
    ])
    .await;
    let http = reqwest::Client::new();
    let start = Instant::now();
    let page = loop {
        let page = http
            .get(format!("{}/metrics", scaler.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Until the collector's first readings are in: before, all three are UNAVAILABLE.
        if gauge(&page, "gpuscale_scaler_workloads_unavailable") == Some(1.0) {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "alpha and qwen never had data:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let named = |w: &str| {
        page.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("workload=\"{w}\"")))
            .count()
    };
    assert!(named("ghost") > 0 && named("alpha") > 0, "{page}");
    assert_eq!(named("qwen"), 0, "qwen is past the bound:\n{page}");
    assert!(
        page.lines()
            .any(|l| l == "gpuscale_scaler_unavailable{namespace=\"llm\",workload=\"ghost\"} 1"),
        "{page}"
    );
    assert_eq!(
        gauge(&page, "gpuscale_scaler_workload_series_omitted"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        gauge(&page, "gpuscale_scaler_workloads_unavailable"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(gauge(&page, "gpuscale_scaler_workloads"), Some(3.0), "{page}");
}
