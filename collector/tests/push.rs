//! The push path on the collector's side: `/metrics?wait=W&after=T` answers as soon as a page
//! whose readings changed after `T` is rendered, or at `W` with the current page (a heartbeat),
//! over a real socket, with the library loop reading a model server whose queue the test
//! changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gpuscale_collector::scrape::{CustomNames, Preset, Target};
use gpuscale_collector::service::{Config, Pages, router, tick_loop};

async fn model_server(waiting: Arc<RwLock<f64>>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let w = *waiting.read().unwrap();
            async move { format!("vllm:num_requests_waiting{{engine=\"0\"}} {w}\nvllm:num_requests_running{{engine=\"0\"}} 1\n") }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// A collector reading `target` every `interval`.
async fn collector(target: SocketAddr, interval: Duration) -> SocketAddr {
    let pages: Arc<RwLock<Pages>> = Arc::default();
    let config = Config {
        node: "n1".into(),
        targets: vec![Target::parse(&format!("llm/qwen=http://{target}/metrics")).unwrap()],
        preset: Preset::Auto,
        custom: CustomNames::default(),
        interval,
        scrape_timeout: Duration::from_secs(1),
        max_page_bytes: 1 << 20,
        max_concurrent_scrapes: 4,
        bearer: None,
        dcgm_compat: false,
        pod_resources_socket: None,
        pod_resources_interval: Duration::from_secs(60),
        discovered: None,
    };
    let (gpus, _handle) = gpuscale_collector::gpu::FakeGpus::new(1);
    tokio::spawn(tick_loop(config, Box::new(gpus), pages.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(gpuscale_edge::server::serve(
        l,
        router(pages),
        std::future::pending(),
    ));
    addr
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn rendered(page: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix("gpuscale_collector_last_tick_timestamp_seconds{"))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .expect("the render time on the page")
}

fn waiting(page: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix("gpuscale_workload_requests_waiting{"))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_read_answers_with_the_next_page_or_a_heartbeat() {
    let queue = Arc::new(RwLock::new(0.0));
    let server = model_server(queue.clone()).await;
    // Ticks every 2 s: between ticks only a new model-server reading renders a page.
    let c = collector(server, Duration::from_secs(2)).await;
    let base = format!("http://{c}/metrics");
    let start = Instant::now();
    let page = loop {
        let (status, page) = get(&base).await;
        if status == 200 && waiting(&page).is_some() {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no page with a reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen = rendered(&page);

    // A page older than the one asked after is answered at once.
    let t0 = Instant::now();
    let (status, now) = get(&format!("{base}?wait=10&after={}", seen - 100.0)).await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(rendered(&now) >= seen);

    // Held until the queue changes at the model server and the collector has read it.
    let latest = rendered(&now);
    let held = tokio::spawn(async move {
        let t0 = Instant::now();
        let (status, page) = get(&format!("http://{c}/metrics?wait=20&after={latest}")).await;
        (status, page, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    *queue.write().unwrap() = 42.0;
    let (status, page, took) = held.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        rendered(&page) > latest,
        "answered with the page it was asked after"
    );
    // The next page after `latest` came from the tick or the new reading, well inside the
    // 20 s the read could be held.
    assert!(took < Duration::from_secs(10), "{took:?}");
    let start = Instant::now();
    let mut last = page;
    while waiting(&last) != Some(42.0) {
        let (_, p) = get(&format!("{base}?wait=20&after={}", rendered(&last))).await;
        last = p;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the change never arrived"
        );
    }

    // Asked after a page that will never come (the future): the heartbeat answers at `wait`
    // with the current page, so silence is never read as "no change".
    let t0 = Instant::now();
    let (status, page) = get(&format!("{base}?wait=0.3&after=1e12")).await;
    let took = t0.elapsed();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(waiting(&page), Some(42.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_node_answers_held_reads_with_heartbeats_and_a_change_at_once() {
    let queue = Arc::new(RwLock::new(3.0));
    let server = model_server(queue.clone()).await;
    // Read every 100 ms: a page is rendered ten times a second, with the same readings.
    let c = collector(server, Duration::from_millis(100)).await;
    let base = format!("http://{c}/metrics");
    let start = Instant::now();
    let page = loop {
        let (status, page) = get(&base).await;
        if status == 200 && waiting(&page) == Some(3.0) {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no page with a reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Nothing the scaler reads changes: the read is held to its wait, though newer pages
    // (new times) are rendered meanwhile, and the heartbeat carries those times.
    let t0 = Instant::now();
    let (status, beat) = get(&format!("{base}?wait=1.5&after={}", rendered(&page))).await;
    let took = t0.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_millis(1400),
        "answered before the heartbeat: {took:?}"
    );
    assert!(
        rendered(&beat) > rendered(&page),
        "the heartbeat has the latest render"
    );
    assert_eq!(waiting(&beat), Some(3.0));
    // A reading that changes is news at once.
    let after = rendered(&beat);
    let held = tokio::spawn(async move {
        let t0 = Instant::now();
        let (_, page) = get(&format!("http://{c}/metrics?wait=20&after={after}")).await;
        (page, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    *queue.write().unwrap() = 4.0;
    let (page, took) = held.await.unwrap();
    assert_eq!(waiting(&page), Some(4.0), "answered with the changed reading");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wait_parameters_are_refused_with_the_fix() {
    let server = model_server(Arc::new(RwLock::new(1.0))).await;
    let c = collector(server, Duration::from_millis(200)).await;
    let base = format!("http://{c}/metrics");
    let start = Instant::now();
    while get(&base).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(&format!("{base}?wait=soon&after=1")).await;
    assert_eq!(status, 400);
    assert!(body.contains("`wait=soon`") && body.contains("seconds"), "{body}");
    let (status, body) = get(&format!("{base}?wait=1&after=NaN")).await;
    assert_eq!(status, 400);
    assert!(body.contains("`after=NaN`"), "{body}");
    // Without both, an ordinary read.
    let t0 = Instant::now();
    assert_eq!(get(&format!("{base}?wait=5")).await.0, 200);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_page_holds_the_scalers_families_only() {
    let server = model_server(Arc::new(RwLock::new(3.0))).await;
    let c = collector(server, Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let om = "application/openmetrics-text;version=1.0.0";
    let get_om = async |q: &str| {
        client
            .get(format!("http://{c}/metrics{q}"))
            .header("accept", om)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let start = Instant::now();
    let full = loop {
        let p = get_om("").await;
        if waiting(&p).is_some() {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let slim = get_om("?series=contract").await;
    let limits = gpuscale_expfmt::text::Limits::default();
    let fams =
        gpuscale_expfmt::text::parse_openmetrics(&slim, &limits).unwrap_or_else(|e| panic!("{e}\n{slim}"));
    let names: Vec<&str> = fams.iter().map(|f| f.name.as_str()).collect();
    for want in gpuscale_contract::SCALER_FAMILIES {
        if want.contains("tokens") || want.contains("kv_cache") {
            continue; // this model server exports neither
        }
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    assert!(!slim.contains("gpuscale_gpu_power_watts") && full.contains("gpuscale_gpu_power_watts"));
    assert!(slim.ends_with("# EOF\n"));
    assert!(
        slim.len() * 2 < full.len(),
        "{} of {} bytes",
        slim.len(),
        full.len()
    );
    assert_eq!(waiting(&slim), Some(3.0));
}

/// The next whole page on a stream (`buf` keeps what came after it).
async fn next_page(r: &mut reqwest::Response, buf: &mut String) -> String {
    loop {
        if let Some(i) = buf.find("# EOF\n") {
            let rest = buf.split_off(i + "# EOF\n".len());
            return std::mem::replace(buf, rest);
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("a page within 10 s")
            .unwrap()
            .expect("the stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_the_page_at_once_then_each_change_and_heartbeats() {
    let queue = Arc::new(RwLock::new(3.0));
    let server = model_server(queue.clone()).await;
    // Read every 100 ms: a page is rendered ten times a second, with the same readings.
    let c = collector(server, Duration::from_millis(100)).await;
    let base = format!("http://{c}/metrics");
    let start = Instant::now();
    while waiting(&get(&base).await.1) != Some(3.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no page with a reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::new();
    let om = "application/openmetrics-text;version=1.0.0";
    let t0 = Instant::now();
    let mut r = client
        .get(format!("{base}?series=contract&wait=1&stream=1"))
        .header("accept", om)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get(gpuscale_contract::STREAM_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("pages")
    );
    let mut buf = String::new();
    // The current page at once, whole, in the contract's cut.
    let first = next_page(&mut r, &mut buf).await;
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    assert_eq!(waiting(&first), Some(3.0));
    assert!(!first.contains("gpuscale_gpu_power_watts"), "{first}");
    gpuscale_expfmt::text::parse_openmetrics(&first, &gpuscale_expfmt::text::Limits::default())
        .unwrap_or_else(|e| panic!("{e}\n{first}"));
    // Nothing changes: the next page is the heartbeat at `wait`, with the latest render, not
    // one of the ten renders a second that only re-date the readings.
    let t1 = Instant::now();
    let beat = next_page(&mut r, &mut buf).await;
    let took = t1.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "a page before the heartbeat: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(rendered(&beat) > rendered(&first));
    assert_eq!(waiting(&beat), Some(3.0));
    // A change is the next page, at once.
    let t2 = Instant::now();
    *queue.write().unwrap() = 7.0;
    let changed = next_page(&mut r, &mut buf).await;
    assert_eq!(waiting(&changed), Some(7.0), "{changed}");
    assert!(t2.elapsed() < Duration::from_millis(900), "{:?}", t2.elapsed());
    drop(r);

    // What a stream cannot be asked with: no heartbeat, or a format without `# EOF`.
    let (status, body) = get(&format!("{base}?stream=1")).await;
    assert_eq!(status, 400);
    assert!(body.contains("wait=SECONDS"), "{body}");
    let (status, body) = get(&format!("{base}?stream=maybe&wait=1")).await;
    assert_eq!(status, 400);
    assert!(body.contains("`stream=maybe`"), "{body}");
    let (status, body) = get(&format!("{base}?stream=1&wait=1")).await;
    assert_eq!(status, 406, "Prometheus text has no end marker");
    assert!(body.contains("OpenMetrics"), "{body}");
}
