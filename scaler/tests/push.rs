//! The push path through the scaler binary: a queue change at a model server reaches KEDA's
//! GetMetrics through a real collector holding the scaler's read until it has a newer page,
//! long before the next periodic decision; a collector that does not hold reads (an older one)
//! is read at the poll interval, not in a loop. A pushed decision brings only the changed
//! workloads up to date, and still sums every collector's part and shows a failed target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gpuscale_scaler::keda::pb::ScaledObjectRef;
use gpuscale_scaler::keda::pb::external_scaler_client::ExternalScalerClient;

fn so() -> ScaledObjectRef {
    let md: HashMap<String, String> = [
        ("scalerAddress", "gpuscale-scaler:9090"),
        ("deployment", "qwen"),
        ("policy", "queue"),
        ("queue.target", "10"),
        ("keepAlive", "0s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ScaledObjectRef {
        name: "qwen".into(),
        namespace: "llm".into(),
        scaler_metadata: md,
    }
}

async fn value(c: &mut ExternalScalerClient<tonic::transport::Channel>) -> Option<f64> {
    common::ask(c, &so()).await.0.ok()
}

/// Wait until a collector has its first complete tick.
async fn ready(collector: std::net::SocketAddr) {
    let start = Instant::now();
    while !reqwest::get(format!("http://{collector}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(start.elapsed() < Duration::from_secs(10), "collector never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_change_arrives_between_periodic_decisions() {
    let model = common::ModelServer::start().await;
    model.set(5.0, 0.0);
    let collector = common::collector(&[("llm/qwen", model.addr)]).await;
    // The collector is up before the scaler's first read, so no read fails into the slow path.
    ready(collector).await;
    // Periodic decisions every 30 s: only the push path can carry a change sooner.
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "30s"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let start = Instant::now();
    while value(&mut c).await != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "first answer: {:?}",
            value(&mut c).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let polls = common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await;
    // 5 -> 45 waiting: ceil(45 / 10) = 5 replicas.
    model.set(45.0, 0.0);
    let changed = Instant::now();
    while value(&mut c).await != Some(5.0) {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "the change did not arrive before the next periodic decision"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = changed.elapsed();
    assert_eq!(
        common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await,
        polls,
        "a periodic decision carried it ({took:?})"
    );
    assert!(common::scaler_metric(&scaler, "gpuscale_scaler_pushed_decisions_total").await >= 1.0);
    eprintln!("queue change to GetMetrics through the push path: {took:?}");
}

/// Poll GetMetrics until `want` says the answer is there, within 10 s; the last answer.
async fn until(
    c: &mut ExternalScalerClient<tonic::transport::Channel>,
    what: &str,
    want: impl Fn(&Result<f64, tonic::Status>) -> bool,
) -> Result<f64, tonic::Status> {
    let start = Instant::now();
    loop {
        let got = common::ask(c, &so()).await.0;
        if want(&got) {
            return got;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_page_is_summed_with_the_other_collectors_and_a_failed_target_is_unknown() {
    // qwen has a replica on each of two nodes; another workload lives on the first only.
    let (a, b, other) = (
        common::ModelServer::start().await,
        common::ModelServer::start().await,
        common::ModelServer::start().await,
    );
    a.set(5.0, 0.0);
    b.set(10.0, 0.0);
    let ca = common::collector(&[("llm/qwen", a.addr), ("llm/llama", other.addr)]).await;
    let cb = common::collector(&[("llm/qwen", b.addr)]).await;
    ready(ca).await;
    ready(cb).await;
    let scaler = common::scaler(&[
        "--collector",
        &ca.to_string(),
        "--collector",
        &cb.to_string(),
        "--poll-interval",
        "30s",
    ])
    .await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    // 5 + 10 waiting: ceil(15 / 10) = 2.
    let first = until(&mut c, "first answer", |v| v.as_ref().ok() == Some(&2.0)).await;
    assert_eq!(first.ok(), Some(2.0));
    let polls = common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await;
    // Only the first node's page changes; the pushed decision must still add the second's part.
    a.set(35.0, 0.0);
    let summed = until(&mut c, "35 + 10 waiting: 5 replicas", |v| {
        v.as_ref().ok() == Some(&5.0)
    })
    .await;
    assert_eq!(summed.ok(), Some(5.0));
    // The first node's replica stops answering: its collector's next page says so, and the
    // pushed decision makes the workload unknown, never a smaller number.
    a.fail();
    let got = until(&mut c, "a failed target", |v| v.is_err()).await;
    let why = got.unwrap_err();
    assert_eq!(why.code(), tonic::Code::Unavailable, "{why:?}");
    assert!(why.message().contains("no valid reading"), "{why:?}");
    assert_eq!(
        common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await,
        polls,
        "a periodic decision carried the changes; they must come by push"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_hold_reads_is_polled_at_the_interval() {
    // A collector page served as is, whatever the query: an older collector.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let page = format!(
        "# TYPE gpuscale_collector_info gauge\ngpuscale_collector_info{{node=\"n1\",version=\"0.0.9\",contract=\"1\"}} 1\n\
         # TYPE gpuscale_collector_last_tick_timestamp_seconds gauge\ngpuscale_collector_last_tick_timestamp_seconds{{node=\"n1\"}} {now}\n# EOF\n"
    );
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let queries = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let q = queries.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
            h.fetch_add(1, Ordering::Relaxed);
            q.lock().unwrap().push(query.unwrap_or_default());
            let page = page.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    page,
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let scaler = common::scaler(&["--collector", &addr.to_string(), "--poll-interval", "300ms"]).await;
    let start = hits.load(Ordering::Relaxed);
    let pushed = common::scaler_metric(&scaler, "gpuscale_scaler_pushed_decisions_total").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = hits.load(Ordering::Relaxed) - start;
    // About 10 reads in 3 s at 300 ms; a loop that ignored the interval would make thousands.
    assert!((3..=25).contains(&n), "{n} reads in 3 s");
    // The page never gets newer, so nothing is pushed: decisions come from the interval alone
    // (a decider that spun on a closed channel once made hundreds a second here).
    let extra = common::scaler_metric(&scaler, "gpuscale_scaler_pushed_decisions_total").await - pushed;
    assert!(
        extra <= 2.0,
        "{extra} pushed decisions in 3 s without a newer page"
    );
    drop(scaler);
}

/// An answer as a streaming collector gives one: the header, then `body`'s pages.
fn stream_answer(
    body: impl futures_util::Stream<Item = Result<String, std::convert::Infallible>> + Send + 'static,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            (gpuscale_contract::STREAM_HEADER, "pages"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// A contract page for llm/qwen with `waiting` requests waiting, rendered now.
fn stream_page(waiting: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let t = r#"namespace="llm",workload="qwen",target="http://a/metrics",node="n1""#;
    format!(
        "# TYPE gpuscale_collector_info gauge\ngpuscale_collector_info{{node=\"n1\",version=\"0.1.0\",contract=\"1\"}} 1\n\
         # TYPE gpuscale_collector_last_tick_timestamp_seconds gauge\ngpuscale_collector_last_tick_timestamp_seconds{{node=\"n1\"}} {now}\n\
         # TYPE gpuscale_scrape_up gauge\ngpuscale_scrape_up{{{t}}} 1\n\
         # TYPE gpuscale_scrape_reading_valid gauge\ngpuscale_scrape_reading_valid{{{t}}} 1\n\
         # TYPE gpuscale_scrape_timestamp_seconds gauge\ngpuscale_scrape_timestamp_seconds{{{t}}} {now}\n\
         # TYPE gpuscale_workload_requests_waiting gauge\ngpuscale_workload_requests_waiting{{{t}}} {waiting}\n\
         # TYPE gpuscale_workload_requests_running gauge\ngpuscale_workload_requests_running{{{t}}} 0\n# EOF\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_arrive_on_one_stream_and_a_silent_stream_is_unknown() {
    // A collector speaking the stream: each request gets the header, the current page at once
    // and then every page the test sets (each split across two chunks, as a network may);
    // `None` is silence on an open connection.
    let requests = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::watch::channel::<Option<String>>(Some(stream_page(5.0)));
    let r = requests.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
            r.fetch_add(1, Ordering::Relaxed);
            let mut rx = rx.clone();
            async move {
                assert!(query.unwrap_or_default().contains("stream=1"));
                rx.mark_changed();
                let body = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.changed().await.ok()?;
                    let page = rx.borrow_and_update().clone();
                    let Some(page) = page else {
                        std::future::pending::<()>().await;
                        return None;
                    };
                    let (a, b) = page.split_at(page.len() / 2);
                    let chunks = vec![
                        Ok::<_, std::convert::Infallible>(a.to_string()),
                        Ok(b.to_string()),
                    ];
                    Some((futures_util::stream::iter(chunks), rx))
                });
                stream_answer(futures_util::StreamExt::flatten(body))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let scaler = common::scaler(&[
        "--collector",
        &addr.to_string(),
        "--poll-interval",
        "30s",
        "--collector-wait",
        "1s",
        "--poll-timeout",
        "500ms",
    ])
    .await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    // Asked about (decided at once, on the first page), then a newer page.
    let _ = common::ask(&mut c, &so()).await;
    tx.send_replace(Some(stream_page(5.0)));
    let first = until(&mut c, "the first page", |v| v.as_ref().ok() == Some(&1.0)).await;
    assert_eq!(first.ok(), Some(1.0));
    // 45 waiting: ceil(45 / 10) = 5, on the same answer, by push.
    let polls = common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await;
    tx.send_replace(Some(stream_page(45.0)));
    let second = until(&mut c, "the second page", |v| v.as_ref().ok() == Some(&5.0)).await;
    assert_eq!(second.ok(), Some(5.0));
    assert_eq!(requests.load(Ordering::Relaxed), 1, "every page on one answer");
    assert_eq!(
        common::scaler_metric(&scaler, "gpuscale_scaler_polls_total").await,
        polls
    );
    // The collector stops sending while the connection stays open: no page within
    // `--collector-wait` and `--poll-timeout` is a fault, never the last value held.
    let silent = Instant::now();
    tx.send_replace(None);
    let got = until(&mut c, "a silent stream", |v| v.is_err()).await;
    let why = got.unwrap_err();
    assert_eq!(why.code(), tonic::Code::Unavailable, "{why:?}");
    assert!(why.message().contains("no page on the stream"), "{why:?}");
    let took = silent.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "unknown before the heartbeat was due: {took:?}"
    );
}

/// A collector whose first stream sends `then` after a good page, and whose later streams send
/// nothing: what the scaler makes of a stream that breaks.
async fn broken_stream(
    then: &'static str,
    close: bool,
    good_first: bool,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let requests = Arc::new(AtomicU64::new(0));
    let r = requests.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = r.fetch_add(1, Ordering::Relaxed);
            async move {
                let chunks: Vec<Result<String, std::convert::Infallible>> = if n == 0 && good_first {
                    vec![Ok(stream_page(5.0))]
                } else {
                    Vec::new()
                };
                // The break comes a second after the good page: by then the test has asked
                // about the workload, so a decision follows it.
                let broken = futures_util::stream::once(async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(if n == 0 { then.to_string() } else { String::new() })
                });
                let body = futures_util::StreamExt::chain(
                    futures_util::StreamExt::chain(futures_util::stream::iter(chunks), broken),
                    futures_util::stream::once(async move {
                        // Closing ends the answer; otherwise it stays open and silent.
                        if !close {
                            std::future::pending::<()>().await;
                        }
                        Ok(String::new())
                    }),
                );
                stream_answer(body)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (addr, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_inside_a_page_or_carrying_a_bad_page_is_unknown() {
    for (then, close, want) in [
        // Half a page, then the connection ends: truncated, not the page so far.
        (
            "# TYPE gpuscale_workload_requests_waiting gauge\ngpuscale_workload_requests_waiting{namespace=\"llm\",workload=\"qwen\"",
            true,
            "ended inside a page",
        ),
        // A whole page (it ends in `# EOF`) that does not parse: its line is named.
        (
            "gpuscale_workload_requests_waiting{{{ 1\n# EOF\n",
            false,
            "line 1",
        ),
    ] {
        let (addr, requests) = broken_stream(then, close, true).await;
        // A long interval: after a failure the reader waits it out, so the failure stays what
        // KEDA hears, and no periodic decision happens meanwhile.
        let scaler = common::scaler(&[
            "--collector",
            &addr.to_string(),
            "--poll-interval",
            "30s",
            "--collector-wait",
            "5s",
        ])
        .await;
        let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
        let got = until(&mut c, want, |v| v.is_err() && format!("{v:?}").contains(want)).await;
        let why = got.unwrap_err();
        assert_eq!(why.code(), tonic::Code::Unavailable, "{why:?}");
        assert_eq!(
            requests.load(Ordering::Relaxed),
            1,
            "{want}: read again before the interval"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_ends_every_stream_at_once_is_unknown_and_not_asked_in_a_loop() {
    // Every answer carries the stream header and ends with nothing in it.
    let (addr, requests) = broken_stream("", true, false).await;
    let scaler = common::scaler(&["--collector", &addr.to_string(), "--poll-interval", "300ms"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    let want = "ended the stream before sending a page";
    let got = until(&mut c, want, |v| v.is_err() && format!("{v:?}").contains(want)).await;
    assert_eq!(got.unwrap_err().code(), tonic::Code::Unavailable);
    let start = requests.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = requests.load(Ordering::Relaxed) - start;
    // Each later stream ends at once: one every 300 ms (the interval after a failure), where
    // a reader that reopened at once would open thousands.
    assert!((2..=15).contains(&n), "{n} streams opened in 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_asked_about_after_the_last_page_is_answered_at_once() {
    // One page, then nothing for longer than the test: no page or periodic pass can decide
    // the workload after it is registered.
    let (addr, _requests) = broken_stream("", false, true).await;
    let scaler = common::scaler(&["--collector", &addr.to_string(), "--poll-interval", "30s"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();
    // GetMetricSpec registers it and decides it on the view the page made; the first
    // GetMetrics has the answer (5 waiting, target 10: one replica), not "no decision yet".
    let (value, active) = common::ask(&mut c, &so()).await;
    assert_eq!(value.map_err(|s| s.message().to_string()), Ok(1.0));
    assert_eq!(active.map_err(|s| s.message().to_string()), Ok(true));
}
