//! The fault matrix (issue #11): one test per way the signal can lie, each with the real
//! collector (library loop and router on a real socket), the scaler binary and a page server
//! that misbehaves in that way, asserting what KEDA would see over gRPC: never `IsActive=false`
//! on unknown data, `GetMetrics` UNAVAILABLE with a reason that names the cause, and recovery
//! within two polls once the fault clears. docs/operations.md has the same table in prose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{Answer, ask};
use gpuscale_scaler::keda::pb::ScaledObjectRef;
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;
use tonic::Code;
use tonic::transport::Channel;

/// The scaler's poll interval in these tests: long enough that "within two polls" is counted
/// in polls, not guessed from time.
const POLL: &str = "300ms";

fn so(namespace: &str, deployment: &str) -> ScaledObjectRef {
    let md: HashMap<String, String> = [
        ("scalerAddress", "gpuscale-scaler:9090"),
        ("deployment", deployment),
        ("keepAlive", "0s"),
        ("queue.scaleDownWindow", "0s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ScaledObjectRef {
        name: deployment.into(),
        namespace: namespace.into(),
        scaler_metadata: md,
    }
}

async fn until(
    c: &mut ExternalScalerClient<Channel>,
    r: &ScaledObjectRef,
    what: &str,
    f: impl Fn(&Answer) -> bool,
) -> Answer {
    let start = Instant::now();
    loop {
        let a = ask(c, r).await;
        if f(&a) {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: last answer {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What KEDA must see on unknown data: UNAVAILABLE from both calls, never `false`, with every
/// phrase of `says` in the reason. Returns the reason.
async fn unknown(c: &mut ExternalScalerClient<Channel>, r: &ScaledObjectRef, says: &[&str]) -> String {
    // Never IsActive=false on the way there either.
    let (m, a) = until(c, r, &format!("UNAVAILABLE naming {says:?}"), |(m, a)| {
        assert!(
            !matches!(a, Ok(false)) || m.is_ok(),
            "IsActive=false on unknown data: {m:?}"
        );
        m.as_ref()
            .is_err_and(|e| says.iter().all(|s| e.message().contains(s)))
    })
    .await;
    let m = m.unwrap_err();
    assert_eq!(m.code(), Code::Unavailable, "{m:?}");
    // Never IsActive=false: the scale to zero this would allow is the failure being guarded.
    match a {
        Ok(active) => panic!("IsActive answered {active} on unknown data: {}", m.message()),
        Err(e) => assert_eq!(e.code(), Code::Unavailable),
    }
    // Stays unknown while the fault lasts: never IsActive=false in later polls either.
    for _ in 0..3 {
        let (m, a) = ask(c, r).await;
        assert!(
            m.is_err() && a.is_err(),
            "answered while still unknown: {m:?} {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.message().to_string()
}

async fn polls(scaler: &common::Scaler) -> u64 {
    common::scaler_metric(scaler, "gpuscale_scaler_polls_total").await as u64
}

/// After the fault has cleared at the collector, the next two polls bring the answer back:
/// counted in the scaler's own polls.
async fn recovers(
    c: &mut ExternalScalerClient<Channel>,
    r: &ScaledObjectRef,
    scaler: &common::Scaler,
    expect: f64,
) {
    let p0 = polls(scaler).await;
    let (m, a) = until(c, r, "recovery", |(m, _)| m.is_ok()).await;
    let p1 = polls(scaler).await;
    assert_eq!((m.unwrap(), a.unwrap()), (expect, true));
    assert!(p1 - p0 <= 2, "recovered after {} polls", p1 - p0);
}

/// Waits until the collector's own page shows `pattern` (the collector has re-read a target).
async fn collector_shows(collector: SocketAddr, pattern: &str) {
    let start = Instant::now();
    loop {
        let page = reqwest::get(format!("http://{collector}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains(pattern) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "collector never showed {pattern}:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The captured vLLM page with `waiting` queued and `running` in service.
fn vllm(waiting: &str, running: &str) -> String {
    common::vllm_page()
        .lines()
        .map(|l| {
            if l.starts_with("vllm:num_requests_waiting{") {
                format!("{} {waiting}", l.rsplit_once(' ').unwrap().0)
            } else if l.starts_with("vllm:num_requests_running{") {
                format!("{} {running}", l.rsplit_once(' ').unwrap().0)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// How a page server answers.
#[derive(Clone)]
enum Mode {
    /// 200 with this body (Prometheus text).
    Page(String),
    /// Accept the connection and never answer.
    Hang,
}

/// A page server whose answer the test sets.
#[derive(Clone)]
struct PageServer {
    addr: SocketAddr,
    mode: Arc<RwLock<Mode>>,
}

impl PageServer {
    async fn start(mode: Mode) -> PageServer {
        let mode = Arc::new(RwLock::new(mode));
        let m = mode.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move {
                    let now = m.read().unwrap().clone();
                    match now {
                        Mode::Page(body) => body,
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            String::new()
                        }
                    }
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        PageServer { addr, mode }
    }

    fn set(&self, mode: Mode) {
        *self.mode.write().unwrap() = mode;
    }
}

/// How the proxy in front of a collector bends its page.
#[derive(Clone, Copy, PartialEq)]
enum Bend {
    Pass,
    /// Cut at a line boundary before the first queue series, as a proxy or a body limit would.
    Truncate,
    /// Every timestamp the collector wrote moved an hour into the past.
    HourOld,
    /// A series after `# EOF`: whole but malformed, which must not read as truncated.
    AfterEof,
}

/// A proxy in front of a real collector, passing the scaler's Accept header through.
async fn proxy(collector: SocketAddr) -> (SocketAddr, Arc<RwLock<Bend>>) {
    let bend = Arc::new(RwLock::new(Bend::Pass));
    let b = bend.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let b = b.clone();
            async move {
                let mut req = reqwest::Client::new().get(format!("http://{collector}/metrics"));
                if let Some(a) = headers.get("accept") {
                    req = req.header("accept", a.to_str().unwrap());
                }
                let resp = req.send().await.unwrap();
                let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
                let page = resp.text().await.unwrap();
                let bend = *b.read().unwrap();
                let body = match bend {
                    Bend::Pass => page,
                    Bend::Truncate => {
                        let cut = page.find("gpuscale_workload_requests_waiting").unwrap();
                        let cut = page[..cut].rfind("\n# ").unwrap() + 1;
                        page[..cut].to_string()
                    }
                    Bend::AfterEof => format!("{page}gpuscale_workload_requests_waiting 0\n"),
                    Bend::HourOld => {
                        page.lines()
                            .map(|l| {
                                let timed = l.starts_with("gpuscale_collector_last_tick_timestamp_seconds")
                                    || l.starts_with("gpuscale_scrape_timestamp_seconds");
                                match l.rsplit_once(' ') {
                                    Some((k, v)) if timed => {
                                        format!("{k} {}", v.parse::<f64>().unwrap() - 3600.0)
                                    }
                                    _ => l.to_string(),
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                            + "\n"
                    }
                };
                ([("content-type", ct)], body)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, bend)
}

async fn client(scaler: &common::Scaler) -> ExternalScalerClient<Channel> {
    ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_servers_page_is_not_a_collector() {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let scaler = common::scaler(&["--collector", &model.addr.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let why = unknown(
        &mut c,
        &so("llm", "qwen"),
        &["is not a gpuscale collector", "HOST:9400"],
    )
    .await;
    assert!(why.contains(&model.addr.to_string()), "names the URL: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_a_namespace_is_in_default_on_both_sides() {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let target = format!("llama=http://{}/metrics", model.addr);
    let collector = common::collector_with(&[&target], Duration::from_secs(1)).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    // The ScaledObject in `default` matches: 7 waiting, active.
    let (m, a) = until(
        &mut c,
        &so("default", "llama"),
        "default/llama known",
        |(m, _)| m.is_ok(),
    )
    .await;
    assert!(m.unwrap() >= 1.0);
    assert!(a.unwrap());
    // In another namespace it is unknown, and the near miss is named.
    let why = unknown(
        &mut c,
        &so("prod", "llama"),
        &["no collector reports prod/llama", "`default/llama`"],
    )
    .await;
    assert!(why.contains("namespace"), "{why}");
}

/// The collector behind a proxy that bends its page: known first, unknown (saying `says`)
/// while bent, and back within two polls once it is not.
async fn bent_collector_page(how: Bend, says: &[&str]) {
    bent_collector_page_says(how, says).await;
}

/// [`bent_collector_page`], answering what the scaler said while the page was bent.
async fn bent_collector_page_says(how: Bend, says: &[&str]) -> String {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let (front, bend) = proxy(collector).await;
    let scaler = common::scaler(&["--collector", &front.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let r = so("llm", "qwen");
    let (m, _) = until(&mut c, &r, "known first", |(m, _)| m.is_ok()).await;
    assert_eq!(m.unwrap(), 2.0);
    *bend.write().unwrap() = how;
    let why = unknown(&mut c, &r, says).await;
    *bend.write().unwrap() = Bend::Pass;
    recovers(&mut c, &r, &scaler, 2.0).await;
    why
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_collector_page_is_unknown() {
    bent_collector_page(Bend::Truncate, &["truncated", "# EOF"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_after_eof_is_unknown_and_not_called_truncated() {
    let why = bent_collector_page_says(Bend::AfterEof, &["text after # EOF"]).await;
    assert!(!why.contains("truncated"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_queue_metrics_is_unknown() {
    let exporter = "# TYPE node_load1 gauge\nnode_load1 0.5\n# TYPE up gauge\nup 1\n".to_string();
    let model = PageServer::start(Mode::Page(exporter)).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let r = so("llm", "qwen");
    unknown(
        &mut c,
        &r,
        &["1 of 1 targets of llm/qwen", "no queue metric", "--preset"],
    )
    .await;
    model.set(Mode::Page(vllm("7.0", "0.0")));
    collector_shows(collector, "gpuscale_workload_requests_waiting{").await;
    recovers(&mut c, &r, &scaler, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_cannot_be_real_are_unknown() {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let r = so("llm", "qwen");
    let (m, _) = until(&mut c, &r, "known first", |(m, _)| m.is_ok()).await;
    assert_eq!(m.unwrap(), 2.0);
    let duplicated = {
        let page = vllm("3.0", "0.0");
        let line = page
            .lines()
            .find(|l| l.starts_with("vllm:num_requests_waiting{"))
            .unwrap()
            .to_string();
        page.replace(&line, &format!("{line}\n{line}"))
    };
    for (page, says) in [
        (vllm("NaN", "0.0"), "NaN"),
        (vllm("+Inf", "0.0"), "infinite"),
        (vllm("-3.0", "0.0"), "negative"),
        (vllm("5e6", "0.0"), "implausibly large"),
        (duplicated, "does not parse"),
    ] {
        model.set(Mode::Page(page));
        unknown(&mut c, &r, &["llm/qwen", says]).await;
    }
    model.set(Mode::Page(vllm("7.0", "0.0")));
    collector_shows(collector, "gpuscale_workload_requests_waiting{").await;
    recovers(&mut c, &r, &scaler, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_timestamps_are_an_hour_old_is_stale() {
    bent_collector_page(Bend::HourOld, &["stale"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_delays_only_itself() {
    let hung = PageServer::start(Mode::Hang).await;
    let model = PageServer::start(Mode::Page(vllm("0.0", "0.0"))).await;
    let targets = [
        format!("llm/hung=http://{}/metrics", hung.addr),
        format!("llm/qwen=http://{}/metrics", model.addr),
    ];
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    // A 30 s scrape timeout: the hung target takes 30 s to fail each time.
    let collector = common::collector_with(&targets, Duration::from_secs(30)).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let r = so("llm", "qwen");
    let (m, a) = until(&mut c, &r, "idle known", |(m, _)| m.is_ok()).await;
    assert_eq!((m.unwrap(), a.unwrap()), (0.0, false), "a known idle workload");
    let started = Instant::now();
    model.set(Mode::Page(vllm("7.0", "0.0")));
    let (m, a) = until(&mut c, &r, "load seen", |(m, _)| {
        m.as_ref().is_ok_and(|v| *v >= 2.0)
    })
    .await;
    let seen = started.elapsed();
    assert!(a.unwrap());
    println!("load at a healthy target beside a hung one seen by KEDA after {seen:?} (was > 50 s)");
    assert!(m.unwrap() >= 2.0);
    assert!(
        seen < Duration::from_secs(15),
        "a hung target held back its neighbour for {seen:?}"
    );
    // The hung target's own workload is unknown (not yet scraped), never idle.
    unknown(&mut c, &so("llm", "hung"), &["llm/hung", "not scraped yet"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_addresses_take_every_documented_form_and_secrets_stay_secret() {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    for form in [
        format!("http://{collector}"),
        format!("{collector}/metrics"),
        format!("http://{collector}/metrics"),
    ] {
        let scaler = common::scaler(&["--collector", &form, "--poll-interval", POLL]).await;
        let mut c = client(&scaler).await;
        let (m, _) = until(&mut c, &so("llm", "qwen"), &form, |(m, _)| m.is_ok()).await;
        assert_eq!(m.unwrap(), 2.0, "{form}");
    }
    for (bad, says) in [
        ("htp://h:1", "unsupported scheme `htp`"),
        ("h:99999", "not a port"),
        ("https://h:1", "https is not supported"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-scaler"))
            .args([
                "--collector",
                bad,
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(err.contains(says) && err.contains("HOST:PORT"), "{bad}: {err}");
    }
    // A collector URL with a password and a token: neither reaches KEDA, /debug or /metrics.
    let port = common::free_port();
    let secret = format!("http://scraper:hunter2@127.0.0.1:{port}/metrics?token=s3cret");
    let scaler = common::scaler(&["--collector", &secret, "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    // The cause is named, not just "error sending request".
    let why = unknown(
        &mut c,
        &so("llm", "qwen"),
        &["has not answered yet", "***@127.0.0.1", "Connection refused"],
    )
    .await;
    let debug = reqwest::get(format!("{}/debug/workloads", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("{}/metrics", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&why, &debug, &metrics] {
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "secret leaked: {text}"
        );
    }
    assert!(metrics.contains("token=***"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_zero_replicas_only_a_fresh_activator_report_is_a_known_zero() {
    // A collector that reports nothing of llm/qwen (it serves another workload).
    let model = PageServer::start(Mode::Page(vllm("0.0", "0.0"))).await;
    let collector = common::collector(&[("llm/other", model.addr)]).await;
    let dir = std::env::temp_dir().join(format!("gpuscale-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("held-token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let scaler = common::scaler(&[
        "--collector",
        &collector.to_string(),
        "--poll-interval",
        POLL,
        "--held-token-file",
        token.to_str().unwrap(),
    ])
    .await;
    let mut c = client(&scaler).await;
    let r = so("llm", "qwen");
    unknown(&mut c, &r, &["no collector reports llm/qwen", "no activator"]).await;
    let http = reqwest::Client::new();
    let held = |body: serde_json::Value, token: Option<&'static str>| {
        let mut req = http.post(format!("{}/v1/held", scaler.http)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let report = serde_json::json!({"namespace": "llm", "workload": "qwen", "requests": 0, "ready": 0});
    // The token is required, and only the right one.
    assert_eq!(held(report.clone(), None).await.unwrap().status(), 401);
    assert_eq!(held(report.clone(), Some("wrong")).await.unwrap().status(), 401);
    // Counts that are not whole and plausible, and oversized bodies, are refused.
    for requests in [
        serde_json::json!(1e300),
        serde_json::json!(2.5),
        serde_json::json!(-1),
    ] {
        let body = serde_json::json!({"namespace": "llm", "workload": "qwen", "requests": requests});
        let resp = held(body, Some("t0ken")).await.unwrap();
        assert_eq!(resp.status(), 400, "{requests}");
        assert!(resp.text().await.unwrap().contains("whole number"));
    }
    let huge = serde_json::json!({"namespace": "x".repeat(20_000), "workload": "qwen", "requests": 0});
    assert_eq!(held(huge, Some("t0ken")).await.unwrap().status(), 413);
    // A fresh report of nothing held at zero ready replicas: a known zero, IsActive false.
    assert_eq!(held(report.clone(), Some("t0ken")).await.unwrap().status(), 204);
    // Both answers of one poll (GetMetrics and IsActive can straddle the tick that decides).
    let (m, a) = until(&mut c, &r, "known zero", |(m, a)| m.is_ok() && a.is_ok()).await;
    assert_eq!((m.unwrap(), a.unwrap()), (0.0, false));
    // Reports stop: within 5 s it is unknown again, never a standing zero.
    unknown(&mut c, &r, &["activator's last report"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scaled_objects_for_one_deployment_get_stable_answers() {
    let model = PageServer::start(Mode::Page(vllm("7.0", "0.0"))).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", POLL]).await;
    let mut c = client(&scaler).await;
    let mut a = so("llm", "qwen");
    a.name = "qwen-a".into();
    a.scaler_metadata.insert("queue.target".into(), "2".into());
    let mut b = so("llm", "qwen");
    b.name = "qwen-b".into();
    b.scaler_metadata.insert("queue.target".into(), "4".into());
    let _ = until(&mut c, &a, "a known", |(m, _)| m.is_ok()).await;
    let _ = until(&mut c, &b, "b known", |(m, _)| m.is_ok()).await;
    // Called alternately, as two HPAs would: each keeps its own answer, nothing flips.
    for _ in 0..10 {
        assert_eq!(ask(&mut c, &a).await.0.unwrap(), 4.0);
        assert_eq!(ask(&mut c, &b).await.0.unwrap(), 2.0);
    }
    let metrics = reqwest::get(format!("{}/metrics", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gpuscale_scaler_workload_triggers{namespace=\"llm\",workload=\"qwen\"} 2"),
        "{metrics}"
    );
    // The page is still valid exposition: one series per Deployment, none repeated.
    gpuscale_expfmt::text::parse_prometheus(&metrics, &Default::default()).unwrap();
    let debug: serde_json::Value = reqwest::get(format!("{}/debug/workloads", scaler.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut askers: Vec<&str> = debug
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["asked_by"].as_str().unwrap())
        .collect();
    askers.sort();
    assert_eq!(askers, ["ScaledObject llm/qwen-a", "ScaledObject llm/qwen-b"]);
    // A megabyte of metadata is refused with a bounded message (gRPC clients refuse large ones).
    let mut huge = so("llm", "qwen");
    huge.scaler_metadata
        .insert("maxReplicas".into(), "9".repeat(1 << 20));
    let e = c.get_metric_spec(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().len() < 4096 && e.message().contains("bytes)"),
        "{} bytes",
        e.message().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_on_every_server() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let model = PageServer::start(Mode::Page(vllm("0.0", "0.0"))).await;
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    let activator_port = common::free_port();
    let activator = format!("127.0.0.1:{activator_port}");
    let route = format!("/=llm/qwen=http://{}", model.addr);
    let scaler = common::scaler(&[
        "--collector",
        &collector.to_string(),
        "--activator-listen",
        &activator,
        "--route",
        &route,
    ])
    .await;
    let servers = [
        ("collector", collector.to_string()),
        (
            "scaler http",
            scaler.http.trim_start_matches("http://").to_string(),
        ),
        (
            "scaler grpc",
            scaler.grpc.trim_start_matches("http://").to_string(),
        ),
        ("activator", activator.clone()),
    ];
    let started = Instant::now();
    let mut open = Vec::new();
    for (name, addr) in &servers {
        for i in 0..20 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                // Trickling: part of a request line, then nothing.
                s.write_all(b"GET /metrics HTTP/1.1\r\nHo").await.unwrap();
            }
            open.push((*name, s));
        }
    }
    // Meanwhile a whole request is still served.
    let page = reqwest::get(format!("http://{collector}/metrics")).await.unwrap();
    assert!(page.status().is_success());
    let mut slowest = Duration::ZERO;
    for (name, mut s) in open {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // An error response (408) before closing is fine.
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{name} kept a half-open connection for 15 s");
        slowest = slowest.max(started.elapsed());
    }
    println!("80 half-open connections over 4 servers all closed after {slowest:?} (header timeout 5 s)");
}
