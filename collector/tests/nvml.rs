//! The collector's NVML path, end to end, on a machine without a GPU: the real collector binary
//! with `--gpu-source nvml` loads `libnvidia-ml.so.1` through `LD_LIBRARY_PATH`, as on a node
//! where the NVIDIA runtime mounts it, and finds the stub (collector/nvml-stub), which speaks
//! the C ABI with nvml-wrapper-sys's own types and answers from a script this test writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpuscale_expfmt::text::{Limits, Sample, parse_prometheus};
use gpuscale_testkit::{Kill, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_gpuscale-collector");

/// The stub, built by cargo as this package's dev-dependency, copied in as libnvidia-ml.so.1.
fn stub_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let built = [
        deps.join("libgpuscale_nvml_stub.so"),
        deps.join("../libgpuscale_nvml_stub.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("libgpuscale_nvml_stub.so not found beside {}", exe.display()));
    let dir = std::env::temp_dir().join(format!("gpuscale-nvml-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&built, dir.join("libnvidia-ml.so.1")).unwrap();
    dir
}

fn gpu(i: usize, model: &str) -> serde_json::Value {
    let mut g = serde_json::json!({
        "uuid": format!("GPU-{i:08x}-1111-2222-3333-444455556666"),
        "name": model,
        "gpu_util": 10 * i as u32 + 5,
        "mem_util": i as u32 + 1,
        "total": 85_899_345_920u64,
        "used": (i as u64 + 1) << 30,
        "power_mw": 300_000 + 1000 * i as u32,
        "temp_c": 40 + i as u32,
        "sm_mhz": 1980,
        "mem_mhz": 2619,
        "processes": [[4000 + i as u32, (i as u64 + 1) << 29]],
    });
    // Odd GPUs have ECC (corrected i, uncorrected 0); even ones answer NOT_SUPPORTED.
    if i % 2 == 1 {
        g["ecc"] = serde_json::json!([i, 0]);
    }
    g
}

fn write_script(path: &Path, v: &serde_json::Value) {
    // Written whole and renamed in, so the stub never reads half a script.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn model_server() -> SocketAddr {
    let page = "vllm:num_requests_waiting{engine=\"0\"} 3\nvllm:num_requests_running{engine=\"0\"} 1\n";
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { page }));
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

struct Collector {
    _proc: Kill,
    base: String,
    script: PathBuf,
}

async fn collector(name: &str, script: serde_json::Value) -> Collector {
    let dir = stub_dir(name);
    let script_path = dir.join("node.json");
    write_script(&script_path, &script);
    let model = model_server().await;
    let port = free_port();
    let child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--gpu-source", "nvml"])
        .args([
            "--pod-resources-socket",
            "none",
            "--interval",
            "0.2",
            "--dcgm-compat",
        ])
        .args(["--scrape-target", &format!("llm/qwen=http://{model}/metrics")])
        .env("LD_LIBRARY_PATH", &dir)
        .env("GPUSCALE_NVML_STUB", &script_path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let c = Collector {
        _proc: Kill(child),
        base: format!("http://127.0.0.1:{port}"),
        script: script_path,
    };
    let start = Instant::now();
    while !reqwest::get(format!("{}/readyz", c.base))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(start.elapsed() < Duration::from_secs(10), "collector not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c
}

async fn samples(c: &Collector) -> Vec<Sample> {
    let text = reqwest::get(format!("{}/metrics", c.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_prometheus(&text, &Limits::default())
        .unwrap()
        .into_iter()
        .flat_map(|f| f.samples)
        .collect()
}

/// Poll /metrics until `done` holds (10 s at most); the samples.
async fn until(c: &Collector, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let s = samples(c).await;
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.iter()
        .find(|x| x.name == name && labels.iter().all(|(k, v)| x.label(k) == Some(v)))
        .map(|x| x.value)
}

fn source_up(s: &[Sample]) -> Option<(f64, Option<String>)> {
    s.iter()
        .find(|x| x.name == "gpuscale_gpu_source_up")
        .map(|x| (x.value, x.label("reason").map(String::from)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h100_node_with_8_gpus_reads_every_series_through_nvml() {
    let devices: Vec<_> = (0..8).map(|i| gpu(i, "NVIDIA H100 80GB HBM3")).collect();
    let c = collector("h100", serde_json::json!({"init": "ok", "devices": devices})).await;
    let s = until(&c, "8 GPUs", |s| {
        s.iter().filter(|x| x.name == "gpuscale_gpu_info").count() == 8
    })
    .await;
    assert_eq!(source_up(&s), Some((1.0, None)));
    for i in 0..8usize {
        let idx = i.to_string();
        let uuid = format!("GPU-{i:08x}-1111-2222-3333-444455556666");
        let g = [("gpu", idx.as_str()), ("uuid", uuid.as_str())];
        let f = i as f64;
        assert_eq!(
            value(&s, "gpuscale_gpu_utilization_ratio", &g),
            Some((10.0 * f + 5.0) / 100.0)
        );
        assert_eq!(
            value(&s, "gpuscale_gpu_memory_utilization_ratio", &g),
            Some((f + 1.0) / 100.0)
        );
        let used = ((i as u64 + 1) << 30) as f64;
        assert_eq!(value(&s, "gpuscale_gpu_memory_used_bytes", &g), Some(used));
        assert_eq!(
            value(&s, "gpuscale_gpu_memory_total_bytes", &g),
            Some(85_899_345_920.0)
        );
        assert_eq!(
            value(&s, "gpuscale_gpu_memory_free_bytes", &g),
            Some(85_899_345_920.0 - used)
        );
        assert_eq!(value(&s, "gpuscale_gpu_power_watts", &g), Some(300.0 + f));
        assert_eq!(value(&s, "gpuscale_gpu_temperature_celsius", &g), Some(40.0 + f));
        assert_eq!(value(&s, "gpuscale_gpu_sm_clock_hertz", &g), Some(1.98e9));
        assert_eq!(value(&s, "gpuscale_gpu_memory_clock_hertz", &g), Some(2.619e9));
        let ecc = |kind: &str| {
            value(
                &s,
                "gpuscale_gpu_ecc_errors_total",
                &[("uuid", uuid.as_str()), ("type", kind)],
            )
        };
        if i % 2 == 1 {
            assert_eq!((ecc("corrected"), ecc("uncorrected")), (Some(f), Some(0.0)));
        } else {
            assert_eq!(ecc("corrected"), None, "no ECC: no series, not a zero");
        }
        let info = [
            ("gpu", idx.as_str()),
            ("uuid", uuid.as_str()),
            ("model", "NVIDIA H100 80GB HBM3"),
        ];
        assert_eq!(value(&s, "gpuscale_gpu_info", &info), Some(1.0));
        let pid = (4000 + i).to_string();
        assert_eq!(
            value(
                &s,
                "gpuscale_gpu_process_memory_used_bytes",
                &[("uuid", &uuid), ("pid", &pid)]
            ),
            Some(((i as u64 + 1) << 29) as f64)
        );
        // dcgm-exporter's names and units: percent, MiB, W, C.
        let d = [
            ("gpu", idx.as_str()),
            ("UUID", uuid.as_str()),
            ("modelName", "NVIDIA H100 80GB HBM3"),
        ];
        assert_eq!(value(&s, "DCGM_FI_DEV_GPU_UTIL", &d), Some(10.0 * f + 5.0));
        assert_eq!(value(&s, "DCGM_FI_DEV_MEM_COPY_UTIL", &d), Some(f + 1.0));
        assert_eq!(value(&s, "DCGM_FI_DEV_FB_USED", &d), Some(1024.0 * (f + 1.0)));
        assert_eq!(
            value(&s, "DCGM_FI_DEV_FB_FREE", &d),
            Some(81920.0 - 1024.0 * (f + 1.0))
        );
        assert_eq!(value(&s, "DCGM_FI_DEV_POWER_USAGE", &d), Some(300.0 + f));
        assert_eq!(value(&s, "DCGM_FI_DEV_GPU_TEMP", &d), Some(40.0 + f));
        assert_eq!(value(&s, "DCGM_FI_DEV_SM_CLOCK", &d), Some(1980.0));
        assert_eq!(value(&s, "DCGM_FI_DEV_MEM_CLOCK", &d), Some(2619.0));
        assert_eq!(
            value(&s, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", &d),
            (i % 2 == 1).then_some(f)
        );
    }
    // Queue scraping goes on beside it.
    assert_eq!(
        value(&s, "gpuscale_workload_requests_waiting", &[("workload", "qwen")]),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a100_in_mig_mode_reports_each_instance_beside_its_parent() {
    let mut a100 = gpu(0, "NVIDIA A100-SXM4-80GB");
    a100["mig"] = (0..7)
        .map(|j| {
            serde_json::json!({
                "uuid": format!("MIG-{j:08x}-aaaa-bbbb-cccc-ddddeeeeffff"),
                "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb",
                "gpu_util": 10 + j, "mem_util": 0,
                "total": 10_737_418_240u64, "used": (j as u64 + 1) << 28,
                "processes": [[5000 + j, 1u64 << 28]],
            })
        })
        .collect();
    let c = collector("mig", serde_json::json!({"init": "ok", "devices": [a100]})).await;
    let s = until(&c, "1 GPU + 7 MIG", |s| {
        s.iter().filter(|x| x.name == "gpuscale_gpu_info").count() == 8
    })
    .await;
    assert_eq!(source_up(&s), Some((1.0, None)));
    assert_eq!(
        value(
            &s,
            "gpuscale_gpu_info",
            &[("gpu", "0"), ("model", "NVIDIA A100-SXM4-80GB")]
        ),
        Some(1.0)
    );
    for j in 0..7u32 {
        let idx = format!("0/{j}");
        let uuid = format!("MIG-{j:08x}-aaaa-bbbb-cccc-ddddeeeeffff");
        let m = [("gpu", idx.as_str()), ("uuid", uuid.as_str())];
        assert_eq!(
            value(&s, "gpuscale_gpu_utilization_ratio", &m),
            Some(f64::from(10 + j) / 100.0),
            "{idx}"
        );
        assert_eq!(
            value(&s, "gpuscale_gpu_memory_total_bytes", &m),
            Some(10_737_418_240.0)
        );
        assert_eq!(
            value(&s, "gpuscale_gpu_memory_used_bytes", &m),
            Some(f64::from((j + 1) << 28))
        );
        // MIG instances have no power, temperature or clock of their own: no invented series.
        assert_eq!(value(&s, "gpuscale_gpu_power_watts", &m), None);
        assert_eq!(value(&s, "gpuscale_gpu_temperature_celsius", &m), None);
        let pid = (5000 + j).to_string();
        assert_eq!(
            value(
                &s,
                "gpuscale_gpu_process_memory_used_bytes",
                &[("gpu", &idx), ("pid", &pid)]
            ),
            Some(f64::from(1u32 << 28))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_not_loaded_and_a_lost_gpu_are_reasons_while_queues_go_on() {
    let devices: Vec<_> = (0..4).map(|i| gpu(i, "NVIDIA H100 80GB HBM3")).collect();
    // The driver is not loaded yet: the collector starts anyway and says why.
    let c = collector(
        "lost",
        serde_json::json!({"init": "driver_not_loaded", "devices": devices}),
    )
    .await;
    let s = until(&c, "driver_not_loaded", |s| {
        source_up(s) == Some((0.0, Some("driver_not_loaded".into())))
    })
    .await;
    assert_eq!(s.iter().filter(|x| x.name == "gpuscale_gpu_info").count(), 0);
    assert_eq!(
        value(&s, "gpuscale_workload_requests_waiting", &[("workload", "qwen")]),
        Some(3.0)
    );
    // The driver loads: NVML initializes on a later tick.
    write_script(&c.script, &serde_json::json!({"init": "ok", "devices": devices}));
    until(&c, "initialized", |s| source_up(s) == Some((1.0, None))).await;
    // GPU 2 falls off the bus: the node's GPU view is unknown, never a blank GPU.
    let mut lost = devices.clone();
    lost[2]["lost"] = true.into();
    write_script(&c.script, &serde_json::json!({"init": "ok", "devices": lost}));
    let s = until(&c, "gpu_lost", |s| {
        source_up(s) == Some((0.0, Some("gpu_lost".into())))
    })
    .await;
    assert_eq!(
        s.iter()
            .filter(|x| x.name == "gpuscale_gpu_utilization_ratio")
            .count(),
        0
    );
    assert!(
        s.iter().all(|x| x.label("uuid") != Some("")),
        "a series with a blank UUID"
    );
    assert_eq!(
        value(&s, "gpuscale_workload_requests_waiting", &[("workload", "qwen")]),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_nvml_call_never_stalls_the_tick_or_metrics() {
    let mut devices: Vec<_> = (0..2).map(|i| gpu(i, "NVIDIA H100 80GB HBM3")).collect();
    let c = collector("block", serde_json::json!({"init": "ok", "devices": devices})).await;
    until(&c, "up", |s| source_up(s) == Some((1.0, None))).await;
    // The next utilization call blocks for 10 s, as a wedged driver call would.
    devices[1]["block_ms"] = 10_000.into();
    write_script(&c.script, &serde_json::json!({"init": "ok", "devices": devices}));
    let s = until(&c, "blocked", |s| {
        source_up(s) == Some((0.0, Some("blocked".into())))
    })
    .await;
    let ticks = |s: &[Sample]| value(s, "gpuscale_collector_ticks_total", &[]).unwrap();
    let before = ticks(&s);
    // While it blocks, ticks go on every 0.2 s and /metrics answers at once.
    devices[1]["block_ms"] = 0.into();
    write_script(&c.script, &serde_json::json!({"init": "ok", "devices": devices}));
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let s = samples(&c).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            value(&s, "gpuscale_workload_requests_waiting", &[("workload", "qwen")]),
            Some(3.0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = samples(&c).await;
    let during = ticks(&s) - before;
    println!("while an NVML call blocked for 10 s: {during} ticks in ~2 s, slowest /metrics {slowest:?}");
    assert!(during >= 5.0, "ticks stalled: {during}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // The call returns; readings come back.
    let start = Instant::now();
    loop {
        let s = samples(&c).await;
        if source_up(&s) == Some((1.0, None)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never recovered: {:?}",
            source_up(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_xid_errors_arrive_as_nvml_events_and_read_as_dcgm_exporter_reads_them() {
    // GPU 0 reports XID events (none yet); GPU 1 cannot (no series for it, never a zero).
    let mut g0 = gpu(0, "NVIDIA H100 80GB HBM3");
    g0["xid"] = serde_json::json!([]);
    let g1 = gpu(1, "NVIDIA H100 80GB HBM3");
    let c = collector(
        "xid",
        serde_json::json!({"init": "ok", "devices": [g0.clone(), g1.clone()]}),
    )
    .await;
    let uuid0 = "GPU-00000000-1111-2222-3333-444455556666";
    let uuid1 = "GPU-00000001-1111-2222-3333-444455556666";
    let s = until(&c, "xid series", |s| {
        value(s, "gpuscale_gpu_xid_last", &[("uuid", uuid0)]).is_some()
    })
    .await;
    assert_eq!(value(&s, "gpuscale_gpu_xid_last", &[("uuid", uuid0)]), Some(0.0));
    assert_eq!(
        value(&s, "gpuscale_gpu_xid_errors_total", &[("uuid", uuid0)]),
        Some(0.0)
    );
    assert_eq!(value(&s, "gpuscale_gpu_xid_last", &[("uuid", uuid1)]), None);
    // The GPU raises XID 79 (fallen off the bus) then 48 (double-bit ECC): the last one and
    // the count, under both names.
    g0["xid"] = serde_json::json!([79, 48]);
    write_script(&c.script, &serde_json::json!({"init": "ok", "devices": [g0, g1]}));
    let s = until(&c, "two XIDs", |s| {
        value(s, "gpuscale_gpu_xid_errors_total", &[("uuid", uuid0)]) == Some(2.0)
    })
    .await;
    assert_eq!(value(&s, "gpuscale_gpu_xid_last", &[("uuid", uuid0)]), Some(48.0));
    assert_eq!(
        value(&s, "DCGM_FI_DEV_XID_ERRORS", &[("UUID", uuid0)]),
        Some(48.0)
    );
    assert_eq!(value(&s, "DCGM_FI_DEV_XID_ERRORS", &[("UUID", uuid1)]), None);
}
