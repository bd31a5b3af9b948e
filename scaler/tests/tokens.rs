//! Token rates end to end: a vLLM page whose `prompt_tokens_total` and
//! `generation_tokens_total` counters grow at rates the test sets, read by a real collector,
//! polled by the scaler binary, and asked by KEDA over gRPC with the `tokens` policy. The rate
//! drives the answer; counters that vanish are unknown (UNAVAILABLE, never a scale-down on a
//! cruder rule); a counter reset is not a negative or zero rate; recovery follows.
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

/// What the page server's counters do.
#[derive(Clone, Copy)]
struct Counters {
    /// Prompt and generation tokens/s.
    rates: (f64, f64),
    /// Whether the counters are on the page at all.
    shown: bool,
    /// Counter values at `since`.
    base: (f64, f64),
    since: Instant,
}

impl Counters {
    fn now(&self) -> (f64, f64) {
        let t = self.since.elapsed().as_secs_f64();
        (self.base.0 + self.rates.0 * t, self.base.1 + self.rates.1 * t)
    }
}

#[derive(Clone)]
struct TokenServer {
    addr: SocketAddr,
    state: Arc<RwLock<Counters>>,
}

impl TokenServer {
    async fn start(rates: (f64, f64)) -> TokenServer {
        let state = Arc::new(RwLock::new(Counters {
            rates,
            shown: true,
            base: (1e6, 1e5),
            since: Instant::now(),
        }));
        let page = common::vllm_page();
        assert!(
            page.contains("vllm:prompt_tokens_total{"),
            "the captured vLLM page has the token counters"
        );
        let s = state.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let c = *s.read().unwrap();
                let page = page.clone();
                async move {
                    let (p, g) = c.now();
                    page.lines()
                        .filter_map(|l| {
                            let counter = l.starts_with("vllm:prompt_tokens_total{")
                                || l.starts_with("vllm:generation_tokens_total{");
                            match (counter, c.shown) {
                                (true, false) => None,
                                (true, true) => {
                                    let v = if l.starts_with("vllm:prompt") { p } else { g };
                                    Some(format!("{} {v:.1}", l.rsplit_once(' ').unwrap().0))
                                }
                                _ if l.starts_with("vllm:num_requests_running{") => {
                                    Some(format!("{} 5.0", l.rsplit_once(' ').unwrap().0))
                                }
                                _ => Some(l.to_string()),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                        + "\n"
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        TokenServer { addr, state }
    }

    fn update(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.state.write().unwrap();
        // Counters keep their value across a change of rate, as a real server's do.
        c.base = c.now();
        c.since = Instant::now();
        f(&mut c);
    }
}

fn so() -> ScaledObjectRef {
    // One replica computes 1,000 prompt and 100 output tokens/s; plan for all of it. Queue
    // fallback: 100 slots, so the 5 running requests alone would ask for 1 replica.
    let md: HashMap<String, String> = [
        ("scalerAddress", "gpuscale-scaler:9090"),
        ("deployment", "qwen"),
        ("policy", "tokens"),
        ("tokens.prefillCapacity", "1000"),
        ("tokens.decodeCapacity", "100"),
        ("tokens.utilization", "1"),
        ("tokens.window", "1s"),
        ("tokens.slots", "100"),
        ("tokens.scaleDownWindow", "0s"),
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

/// Poll until `f` holds, asserting on the way that KEDA is never told inactive.
async fn until(c: &mut ExternalScalerClient<Channel>, what: &str, f: impl Fn(&Answer) -> bool) -> Answer {
    let start = Instant::now();
    loop {
        let a = ask(c, &so()).await;
        assert!(
            !matches!(a.1, Ok(false)),
            "{what}: IsActive=false with requests running: {a:?}"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rates_drive_the_answer_and_their_loss_is_unknown() {
    // Three replicas of llm/qwen, each computing 1,500 prompt and 20 output tokens/s.
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TokenServer::start((1500.0, 20.0)).await);
    }
    let targets: Vec<(&str, SocketAddr)> = servers.iter().map(|s| ("llm/qwen", s.addr)).collect();
    let collector = common::collector(&targets).await;
    let scaler = common::scaler(&["--collector", &collector.to_string(), "--poll-interval", "200ms"]).await;
    let mut c = ExternalScalerClient::connect(scaler.grpc.clone()).await.unwrap();

    // 4,500 / 1,000 + 60 / 100 = 5.1 replicas busy: 6, where the queue rule (15 running over
    // 100 slots) would say 1.
    let (m, a) = until(&mut c, "the token rule's answer", |(m, _)| {
        m.as_ref().is_ok_and(|v| *v == 6.0)
    })
    .await;
    assert_eq!((m.unwrap(), a.unwrap()), (6.0, true));
    // /debug/workloads says what the policy works with, and that each value was set.
    let page = reqwest::get(format!("{}/debug/workloads", scaler.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let debug: serde_json::Value = serde_json::from_str(&page).unwrap();
    let learned: Vec<(String, f64, String)> = debug[0]["learned"]
        .as_array()
        .unwrap_or_else(|| panic!("no learned in {debug}"))
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_string(),
                l["value"].as_f64().unwrap(),
                l["from"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let set = |k: &str, v: f64| (k.to_string(), v, "set".to_string());
    assert_eq!(
        learned,
        [
            set("tokens.slots", 100.0),
            set("tokens.prefillCapacity", 1000.0),
            set("tokens.decodeCapacity", 100.0)
        ]
    );
    // The collector exports the rate it computed, per target: within 5 % once its window spans
    // a few reads (each read's timestamp is taken when its answer is in, so the first spans
    // carry the scheduling jitter).
    let start = Instant::now();
    loop {
        let page = reqwest::get(format!("http://{collector}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let rates: Vec<f64> = page
            .lines()
            .filter_map(|l| l.strip_prefix("gpuscale_workload_prompt_tokens_per_second{"))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse().unwrap())
            .collect();
        assert_eq!(rates.len(), 3, "{page}");
        if rates.iter().all(|r| (r - 1500.0).abs() < 75.0) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "rates {rates:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One replica's counters vanish: the workload's rate is unknown (a sum over two of three
    // replicas is not its rate). The queue rule would scale 3 down to 1; KEDA hears UNAVAILABLE
    // naming the signal instead, and never IsActive=false.
    servers[0].update(|c| c.shown = false);
    let (m, _) = until(&mut c, "UNAVAILABLE on lost rates", |(m, _)| m.is_err()).await;
    let e = m.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("prompt_tokens_rate"), "{}", e.message());
    for _ in 0..5 {
        let (m, a) = ask(&mut c, &so()).await;
        assert!(
            m.is_err() && !matches!(a, Ok(false)),
            "answered on unknown rates: {m:?} {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // They come back reset (the server restarted): the drop is no rate at all, so the first
    // answer after it is the true one, not a low or negative reading.
    servers[0].update(|c| {
        c.shown = true;
        c.base = (0.0, 0.0);
    });
    let (m, a) = until(&mut c, "recovery", |(m, _)| m.is_ok()).await;
    // A reset read as a rate would be negative or near zero (1 replica at most); the first
    // span after it may carry scheduling jitter on a loaded machine (5.1 busy read as 4.x: 5),
    // so the first answer is 5 or 6, and then 6.
    let first = m.unwrap();
    assert!(
        first == 6.0 || first == 5.0,
        "first answer after the reset: {first}"
    );
    assert!(a.unwrap(), "active after recovery");
    let (m, _) = until(&mut c, "the true answer after recovery", |(m, _)| {
        m.as_ref().is_ok_and(|v| *v == 6.0)
    })
    .await;
    assert_eq!(m.unwrap(), 6.0);

    // A fifth of the load, known: 900 / 1,000 = 0.9 replicas busy, so 1.
    for s in &servers {
        s.update(|c| c.rates = (300.0, 0.0));
    }
    let (m, _) = until(&mut c, "the lower rate's answer", |(m, _)| {
        m.as_ref().is_ok_and(|v| *v == 1.0)
    })
    .await;
    assert_eq!(m.unwrap(), 1.0);
}
