//! The activator against real upstreams over loopback: one that starts only after a delay,
//! concurrent requests released in order within the concurrency limit, SSE streaming chunk by
//! chunk, 503s for timeouts, full queues and shutdown, 413 for large held bodies, freed places
//! for clients that leave, and HTTP/2 clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use gpuscale_activator::{Activator, Config, HeldSink, Reporter, Route};
use gpuscale_contract::WorkloadKey;

/// A scaler stand-in: the last held count reported per workload (the scaler's own sink is
/// tested in gpuscale-scaler, `workloads::tests`).
#[derive(Default)]
struct Reports(Mutex<std::collections::HashMap<WorkloadKey, usize>>);

impl HeldSink for Reports {
    fn held(&self, workload: &WorkloadKey, held: usize, _ready: Option<u32>) {
        self.0.lock().unwrap().insert(workload.clone(), held);
    }
}

#[derive(Default)]
struct Upstream {
    order: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A model server: `/health`, `/echo` (answers its body after 50 ms), `/stream` (5 SSE events,
/// 200 ms apart).
async fn upstream_on(addr: SocketAddr, u: Arc<Upstream>) {
    let echo_state = u.clone();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/echo",
            axum::routing::post(move |body: Bytes| {
                let u = echo_state.clone();
                async move {
                    u.order
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).to_string());
                    let now = u.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    u.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    u.in_flight.fetch_sub(1, Ordering::SeqCst);
                    format!("echo:{}", String::from_utf8_lossy(&body))
                }
            }),
        )
        .route(
            "/stream",
            axum::routing::get(|| async {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
                tokio::spawn(async move {
                    for i in 0..5 {
                        let _ = tx.send(Ok(Bytes::from(format!("data: token{i}\n\n")))).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
                )
            }),
        );
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
}

fn config(upstream: SocketAddr, concurrency: usize) -> Config {
    Config {
        routes: vec![
            Route::parse(&format!("qwen.example.com=llm/qwen=http://{upstream}")).unwrap(),
            Route::parse(&format!("/v1/=llm/qwen=http://{upstream}")).unwrap(),
        ],
        concurrency,
        max_held: 100,
        cold_start_timeout: Duration::from_secs(10),
        max_body_bytes: 1024,
        max_held_bytes: 1 << 20,
        body_timeout: Duration::from_secs(5),
        probe_path: "/health".into(),
        probe_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_millis(500),
    }
}

async fn start(
    config: Config,
    reporter: Reporter,
) -> (Arc<Activator>, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let a = Activator::new(config);
    a.spawn_readiness(reporter);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gpuscale_activator::serve(a.clone(), l, async move {
        let _ = stop_rx.await;
    }));
    (a, addr, stop_tx)
}

/// Wait (at most 10 s) until `done` holds, naming `what` if it never does.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", gpuscale_testkit::free_port())
        .parse()
        .unwrap()
}

async fn post(client: &reqwest::Client, proxy: SocketAddr, body: String) -> (u16, String) {
    let r = client
        .post(format!("http://{proxy}/echo"))
        .header("host", "qwen.example.com")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_until_the_upstream_starts_then_released_in_order_one_at_a_time() {
    let up_addr = free_addr();
    let upstream = Arc::new(Upstream::default());
    // Held requests are reported at once, so the scaler can wake the workload.
    let reports = Arc::new(Reports::default());
    let (a, proxy, _stop) = start(config(up_addr, 1), Reporter::InProcess(reports.clone())).await;

    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    let gate = a.gates()[0].1.clone();
    for i in 0..20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            post(&c, proxy, format!("req{i:02}")).await
        }));
        // The next is sent once this one is held, so arrival order is the index order.
        until(&format!("req{i:02} held"), || gate.held() == i + 1).await;
    }
    let key = WorkloadKey {
        namespace: "llm".into(),
        name: "qwen".into(),
    };
    until("the scaler hears of 20 held", || {
        reports.0.lock().unwrap().get(&key) == Some(&20)
    })
    .await;
    assert_eq!(
        a.gates()[0].1.held(),
        20,
        "all 20 held while the upstream is down"
    );

    upstream_on(up_addr, upstream.clone()).await;
    let started = Instant::now();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, body), (200, format!("echo:req{i:02}")));
    }
    let order = upstream.order.lock().unwrap().clone();
    let want: Vec<String> = (0..20).map(|i| format!("req{i:02}")).collect();
    assert_eq!(order, want, "released in arrival order");
    assert_eq!(
        upstream.max_in_flight.load(Ordering::SeqCst),
        1,
        "concurrency 1 x 1 replica"
    );
    // 20 requests of 50 ms, one at a time: at least a second.
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(a.gates()[0].1.held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_respects_the_concurrency_limit_and_streams_pass_through() {
    let up_addr = free_addr();
    let upstream = Arc::new(Upstream::default());
    let (_a, proxy, _stop) = start(config(up_addr, 3), Reporter::None).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { post(&c, proxy, format!("r{i}")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    upstream_on(up_addr, upstream.clone()).await;
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (200, format!("echo:r{i}")));
    }
    assert_eq!(
        upstream.max_in_flight.load(Ordering::SeqCst),
        3,
        "never more than 3 x 1 replica at once"
    );

    // SSE through the path-prefix route: each event arrives as the upstream sends it.
    let started = Instant::now();
    let mut r = client.get(format!("http://{proxy}/stream")).send().await.unwrap();
    assert_eq!(r.status(), 404, "/stream matches no route");
    let mut r2 = client
        .get(format!("http://{proxy}/stream"))
        .header("host", "qwen.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r2.headers()["content-type"], "text/event-stream");
    let mut chunks = Vec::new();
    while let Some(c) = r2.chunk().await.unwrap() {
        chunks.push((started.elapsed(), String::from_utf8_lossy(&c).to_string()));
    }
    let text: String = chunks.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(
        text,
        (0..5).map(|i| format!("data: token{i}\n\n")).collect::<String>()
    );
    assert!(
        chunks.len() >= 4,
        "chunk by chunk, not one buffered body: {chunks:?}"
    );
    assert!(
        chunks[0].0 < Duration::from_millis(400),
        "first token before the stream ended: {chunks:?}"
    );
    assert!(chunks.last().unwrap().0 >= Duration::from_millis(750));
    let _ = r.chunk().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_full_queues_large_bodies_and_leaving_clients() {
    let never = free_addr();
    let mut cfg = config(never, 1);
    cfg.cold_start_timeout = Duration::from_millis(400);
    cfg.max_held = 2;
    let (a, proxy, stop) = start(cfg, Reporter::None).await;
    let client = reqwest::Client::new();

    // Held past the cold-start timeout: 503 with Retry-After, saying why.
    let started = Instant::now();
    let r = client
        .post(format!("http://{proxy}/v1/chat"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(r.text().await.unwrap().contains("did not become ready"));

    // Large body while held: 413.
    let r = client
        .post(format!("http://{proxy}/v1/chat"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Two held fill the queue; the third is refused at once.
    let c1 = client.clone();
    let c2 = client.clone();
    let h1 = tokio::spawn(async move { c1.post(format!("http://{proxy}/v1/a")).body("1").send().await });
    let h2 = tokio::spawn(async move { c2.post(format!("http://{proxy}/v1/b")).body("2").send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = client
        .post(format!("http://{proxy}/v1/c"))
        .body("3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(t.elapsed() < Duration::from_millis(200));
    assert!(r.text().await.unwrap().contains("already held"));
    let _ = (h1.await, h2.await);

    // A client that leaves frees its place.
    let gate = a.gates()[0].1.clone();
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let _ = quick.post(format!("http://{proxy}/v1/a")).body("1").send().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.held(), 0, "the departed client's place is freed");

    // Shutdown with a request held: it is answered 503 by the drain deadline, not dropped.
    let c = client.clone();
    let held = tokio::spawn(async move { c.post(format!("http://{proxy}/v1/a")).body("1").send().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = stop.send(());
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_proxied() {
    use http_body_util::BodyExt as _;
    let up_addr = free_addr();
    upstream_on(up_addr, Arc::new(Upstream::default())).await;
    let (_a, proxy, _stop) = start(config(up_addr, 4), Reporter::None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = http::Request::post(format!("http://{proxy}/echo"))
        .header("host", "qwen.example.com")
        .body(http_body_util::Full::new(Bytes::from("h2")))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"echo:h2");
}

#[test]
fn routes_come_from_flags_and_a_file_with_errors_naming_the_line() {
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        a: gpuscale_activator::ActivatorArgs,
    }
    let dir = std::env::temp_dir().join(format!("gpuscale-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("routes");
    std::fs::write(&f, "# models\nqwen.example.com=llm/qwen=http://qwen.llm:80\n\n/v1/llama/=llm/llama=http://llama.llm:80  # prefix\n").unwrap();
    let args = Args::parse_from([
        "x",
        "--route",
        "a.example.com=llm/a=http://a:80",
        "--routes-file",
        f.to_str().unwrap(),
    ]);
    let c = args.a.config().unwrap();
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.routes[2].workload.name, "llama");
    std::fs::write(&f, "qwen.example.com=llm/qwen=http://qwen.llm:80\nbroken\n").unwrap();
    let args = Args::parse_from(["x", "--routes-file", f.to_str().unwrap()]);
    let e = args.a.config().unwrap_err();
    assert!(
        e.contains("routes:2") && e.contains("expected HOST=NAMESPACE/WORKLOAD="),
        "{e}"
    );
    let e = Args::parse_from(["x"]).a.config().unwrap_err();
    assert!(e.contains("--route"), "{e}");
    assert!(Args::parse_from(["x", "--activator-kube"]).a.config().is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request whose body arrives one chunk every `gap`.
async fn trickle(proxy: SocketAddr, chunks: usize, gap: Duration) -> u16 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        for _ in 0..chunks {
            if tx.send(Ok(Bytes::from_static(b"x"))).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    use tokio_stream::StreamExt as _;
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|r| r.map(hyper::body::Frame::data));
    let body = reqwest::Body::wrap(http_body_util::StreamBody::new(frames));
    reqwest::Client::new()
        .post(format!("http://{proxy}/echo"))
        .header("host", "qwen.example.com")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_are_bounded_in_total_and_in_time() {
    // No upstream yet: everything is held.
    let up_addr = free_addr();
    let mut c = config(up_addr, 1);
    c.max_held_bytes = 1500;
    c.body_timeout = Duration::from_millis(600);
    let (a, proxy, _stop) = start(c, Reporter::None).await;
    let client = reqwest::Client::new();
    // Two 1000-byte bodies against a 1500-byte total: the first is held, the second refused
    // with 503 + Retry-After, and the held one still completes once the upstream is up.
    let first = tokio::spawn({
        let client = client.clone();
        async move { post(&client, proxy, "a".repeat(1000)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client
        .post(format!("http://{proxy}/echo"))
        .header("host", "qwen.example.com")
        .body("b".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("--activator-max-held-bytes"));
    // A body that trickles in slower than the body timeout: 408, and its place is given up.
    assert_eq!(trickle(proxy, 10, Duration::from_millis(200)).await, 408);
    upstream_on(up_addr, Arc::new(Upstream::default())).await;
    let (status, body) = first.await.unwrap();
    assert_eq!((status, body.len()), (200, 5 + 1000));
    // Released bytes are given back: the next held body fits again.
    assert_eq!(a.gates()[0].1.held(), 0);
    let rendered = {
        let mut w = gpuscale_expfmt::write::Writer::new(gpuscale_expfmt::write::Format::Prometheus);
        a.write_metrics(&mut w);
        w.finish()
    };
    assert!(rendered.contains("reason=\"held_bytes_full\"} 1"), "{rendered}");
    assert!(rendered.contains("reason=\"body_timeout\"} 1"), "{rendered}");
    // Holds last up to the cold-start timeout (10 min by default): the buckets reach it.
    assert!(
        rendered.contains("gpuscale_activator_hold_seconds_bucket{le=\"600\"}"),
        "{rendered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_never_holds_a_release_slot() {
    let up_addr = free_addr();
    let upstream = Arc::new(Upstream::default());
    let mut c = config(up_addr, 1);
    c.body_timeout = Duration::from_secs(10);
    let (_a, proxy, _stop) = start(c, Reporter::None).await;
    // First in line: a body arriving a byte every 150 ms for 3 s.
    let slow = tokio::spawn(trickle(proxy, 20, Duration::from_millis(150)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Second in line, body complete at once.
    let client = reqwest::Client::new();
    let fast = tokio::spawn(async move { post(&client, proxy, "fast".into()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The upstream comes up with room for one request: the fast one goes, not the uploader.
    upstream_on(up_addr, upstream.clone()).await;
    let started = Instant::now();
    let (status, body) = fast.await.unwrap();
    let fast_took = started.elapsed();
    assert_eq!((status, body.as_str()), (200, "echo:fast"));
    assert!(!slow.is_finished(), "the slow upload finished first");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(upstream.order.lock().unwrap()[0], "fast");
    println!("complete body released {fast_took:?} after the upstream came up, ahead of a slow upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_request_is_told_so_in_plain_words() {
    let (_a, proxy, _stop) = start(config(free_addr(), 1), Reporter::None).await;
    let r = reqwest::Client::new()
        .get(format!("http://{proxy}/nowhere"))
        .header("host", "nowhere.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("no route for host nowhere.example.com path /nowhere") && !body.contains("Some("),
        "{body}"
    );
}
