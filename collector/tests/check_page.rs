//! `gpuscale-collector check-page` on the real captured pages of shared/fixtures, from a file,
//! standard input and a real HTTP server: the server each page comes from is recognised, the
//! reading is what a scrape reads, and a broken page exits 1 naming its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use gpuscale_collector::scrape::{CustomNames, Preset, queue_depth};
use gpuscale_expfmt::text::{Limits, parse_prometheus};

const BIN: &str = env!("CARGO_BIN_EXE_gpuscale-collector");

fn fixtures() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/metrics");
    if d.is_dir() {
        return Some(d);
    }
    gpuscale_testkit::missing(
        format_args!("{} not found", d.display()),
        "CI clones main with shared/ beside it",
    );
    None
}

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("check-page")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_captured_model_server_page_is_recognised_and_read_as_a_scrape_reads_it() {
    let Some(dir) = fixtures() else { return };
    for (file, server) in [
        ("vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt", "vllm"),
        ("sglang-docs-production-metrics-llama3.1-8b.txt", "sglang"),
        ("tgi-datadog-integrations-core.txt", "tgi"),
        ("triton-datadog-integrations-core-t4.txt", "triton"),
        ("triton-trtllm-backend-readme-batch-manager.txt", "triton"),
    ] {
        let path = dir.join(file);
        let (code, out, err) = run(&[path.to_str().unwrap()], None);
        println!(
            "{file}:\n{}",
            out.lines()
                .skip_while(|l| !l.starts_with("what gpuscale reads"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains(&format!("server:    {server}")), "{file}: {out}");
        // The same reading the scrape path takes from the page.
        let text = std::fs::read_to_string(&path).unwrap();
        let fams = parse_prometheus(&text, &Limits::default()).unwrap();
        let q = queue_depth(&fams, Preset::Auto, &CustomNames::default()).unwrap();
        let shown = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x}"));
        assert!(
            out.contains(&format!("waiting:   {}\n", shown(q.waiting))),
            "{file}: {out}"
        );
        assert!(
            out.contains(&format!("running:   {}\n", shown(q.running))),
            "{file}: {out}"
        );
        let families = out.lines().next().unwrap_or_default().to_string();
        assert!(
            families.contains(&format!("{} families", fams.len())),
            "{families}"
        );
    }
    // A page without queue metrics parses, and says a scrape of it would not be valid.
    let (code, out, _) = run(
        &[dir
            .join("dcgm-exporter-k8s-ai-conformance-kops-l4.txt")
            .to_str()
            .unwrap()],
        None,
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("no server recognised") && out.contains("no_queue_metrics"),
        "{out}"
    );
}

#[test]
fn broken_pages_exit_1_naming_the_line_and_sources_are_file_stdin_or_url() {
    let (code, _, err) = run(&["-"], Some("ok 1\nbad{x=\"1\" 2\n"));
    assert_eq!(code, 1);
    assert!(err.starts_with("<stdin>:2: "), "{err}");
    let (code, _, err) = run(&["--format", "openmetrics", "-"], Some("# TYPE a gauge\na 1\n"));
    assert_eq!(code, 1);
    assert!(err.contains("EOF"), "{err}");
    let (code, _, err) = run(&["/nonexistent/page.txt"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/page.txt: cannot open"), "{err}");
    let (code, _, err) = run(
        &["--max-page-bytes", "10", "-"],
        Some("vllm:num_requests_waiting 1\n"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("too_large"), "{err}");

    // From a real HTTP server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                "# TYPE tgi_queue_size gauge\ntgi_queue_size 7\ntgi_batch_current_size 3\n"
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    });
    let (code, out, err) = run(&[&format!("http://{addr}/metrics")], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("server:    tgi") && out.contains("waiting:   7") && out.contains("running:   3"),
        "{out}"
    );
    let (code, _, err) = run(&[&format!("http://{addr}/nope")], None);
    assert_eq!(code, 2);
    assert!(err.contains("HTTP 404"), "{err}");
}

#[test]
fn llm_d_endpoint_picker_pages_read_as_the_workloads_queue() {
    // Pages written from llm-d's metric names (tests/fixtures/README.md): the gateway's flow
    // control queue is the workload's waiting requests, requests in flight its running ones.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for file in [
        "llm-d-epp.txt",
        "llm-d-epp-both-names.txt",
        "gaie-epp-deprecated.txt",
    ] {
        let (code, out, err) = run(&[dir.join(file).to_str().unwrap()], None);
        assert_eq!(code, 0, "{file}: {err}");
        for want in [
            "server:    epp",
            "waiting:   5\n",
            "running:   12\n",
            "KV-cache:  0.63\n",
            "valid: gpuscale_scrape_reading_valid 1",
        ] {
            assert!(out.contains(want), "{file}: no `{want}` in\n{out}");
        }
    }
    // --preset epp on a vLLM page finds nothing of its own.
    if let Some(fx) = fixtures() {
        let (code, out, _) = run(
            &[
                "--preset",
                "epp",
                fx.join("vllm-v1-k8s-ai-conformance-kops-qwen2.5-0.5b.txt")
                    .to_str()
                    .unwrap(),
            ],
            None,
        );
        assert_eq!(code, 0);
        assert!(out.contains("no_queue_metrics"), "{out}");
    }
}
