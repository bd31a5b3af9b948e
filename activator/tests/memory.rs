//! Memory under load, read from /proc, against the limits the shipped manifests set
//! (deploy/base): the activator holding 600 POSTs of 1 MiB while its workload wakes.
//! The collector's figure is in the collector's own tests (collector/tests/e2e.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

/// `VmRSS` and `VmHWM` (peak) of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The activator's limit in deploy/base/activator/deployment.yaml.
const ACTIVATOR_LIMIT_MIB: u64 = 512;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activator_holding_600_one_mib_posts_stays_under_its_limit() {
    let dead_upstream = gpuscale_testkit::free_port();
    let proxy = gpuscale_testkit::free_port();
    let http = gpuscale_testkit::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gpuscale-activator"))
        .args(["--activator-listen", &format!("127.0.0.1:{proxy}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--route", &format!("/=llm/qwen=http://127.0.0.1:{dead_upstream}")])
        .args([
            "--scaler-url",
            &format!("http://127.0.0.1:{}", gpuscale_testkit::free_port()),
        ])
        // Room in the queue for all 600: the byte budget (default 256 MiB) is what bounds them.
        .args(["--activator-max-held", "1000"])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let activator = gpuscale_testkit::Kill(child);
    let pid = activator.0.id();
    let metrics = format!("http://127.0.0.1:{http}/metrics");
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client.get(&metrics).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "activator did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (idle, _) = rss_kib(pid);
    let body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let mut tasks = Vec::new();
    for _ in 0..600 {
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("http://127.0.0.1:{proxy}/v1/completions"))
                .body(body)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Until every request is either held or has its answer.
    let (mut held, mut refused);
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let page = client.get(&metrics).send().await.unwrap().text().await.unwrap();
        let value = |prefix: &str| -> f64 {
            page.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        held = value("gpuscale_activator_requests_held");
        refused = value("gpuscale_activator_rejected_total{reason=\"held_bytes_full\"}");
        let answered = tasks.iter().filter(|t| t.is_finished()).count() as f64;
        // `held` counts requests still uploading too: settled once what is left fits the
        // byte budget (256 bodies of 1 MiB); a broken bound never settles and times out.
        if held + answered >= 600.0 && held <= 256.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "held {held}, answered {answered}, refused {refused}"
        );
    }
    let (rss, peak) = rss_kib(pid);
    println!(
        "activator: 600 POSTs of 1 MiB at a sleeping workload: {held} held, {refused} refused 503 \
         (--activator-max-held-bytes 256 MiB); RSS idle {} MiB, now {} MiB, peak {} MiB (limit {ACTIVATOR_LIMIT_MIB} Mi)",
        idle / 1024,
        rss / 1024,
        peak / 1024
    );
    assert!((200.0..=256.0).contains(&held), "held {held}");
    assert!(
        peak / 1024 < ACTIVATOR_LIMIT_MIB * 8 / 10,
        "peak {} MiB",
        peak / 1024
    );
    // The refused ones were told so at once, with a retry hint (503).
    let mut statuses = std::collections::BTreeMap::new();
    drop(activator);
    for t in tasks {
        let s = t.await.unwrap().unwrap_or(0);
        *statuses.entry(s).or_insert(0) += 1;
    }
    // A client still uploading when the 503 comes may see the connection close before it
    // reads the answer (an early response, as HTTP allows); the rest read the 503. None of the
    // 600 waits silently: each is held or has its answer.
    let answered_503 = statuses.get(&503).copied().unwrap_or(0);
    println!(
        "refused clients: {answered_503} read the 503, the rest saw the connection close mid-upload: {statuses:?}"
    );
    // How many of the refused read their 503 before the close depends on timing (fewer on a
    // loaded machine); that every one ended as a 503 or a closed connection does not.
    assert!(answered_503 > 0, "{statuses:?}");
    assert!(statuses.keys().all(|s| *s == 503 || *s == 0), "{statuses:?}");
}
