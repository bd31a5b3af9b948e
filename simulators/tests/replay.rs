//! Replays of every bundled and shared trace under every policy, through the real binary:
//! conservation, determinism, the JSON contract, and errors that name the input.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gpuscale-sim");
const POLICIES: &str = "hpa,kpa,queue,slo,gpu,fixed:2,queue+gpu";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shared(name: &str) -> Option<PathBuf> {
    let p = root().join("../shared/traces").join(name);
    if p.is_file() {
        return Some(p);
    }
    let msg = format!(
        "{} not found: shared traces are not beside this checkout",
        p.display()
    );
    gpuscale_testkit::missing(msg, "CI clones main with shared/ beside it");
    None
}

fn sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpuscale-sim-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join(name)
}

/// Run the binary with `args` plus `--json <tmp>/name`; the parsed document.
fn run_json(args: &[&str], name: &str) -> Value {
    let json = tmp(name);
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--json", json.to_str().unwrap_or_default()]);
    let (ok, stdout, stderr) = sim(&all);
    assert!(ok, "{all:?} failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{json:?}: {e}"))
}

fn replay_json(trace: &Path, extra: &[&str], name: &str) -> Value {
    let json = tmp(name);
    let mut args = vec![
        "replay",
        "--trace",
        trace.to_str().unwrap_or_default(),
        "--policy",
        POLICIES,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--json",
        json.to_str().unwrap_or_default(),
        "--timeline-step",
        "60",
    ]);
    let (ok, stdout, stderr) = sim(&args);
    assert!(ok, "{trace:?} failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{json:?}: {e}"))
}

fn check_conservation(doc: &Value, what: &str) {
    let policies = doc["policies"].as_array().cloned().unwrap_or_default();
    assert_eq!(policies.len(), POLICIES.split(',').count(), "{what}");
    for p in policies {
        let s = &p["summary"];
        let n = |k: &str| {
            s[k].as_u64()
                .unwrap_or_else(|| panic!("{what} {}: {k} missing", p["policy"]))
        };
        assert!(n("requests") > 0, "{what}");
        assert_eq!(
            n("requests"),
            n("completed") + n("failed") + n("in_flight_at_end"),
            "{what} {}: requests != completed + failed + in flight",
            p["policy"]
        );
        assert!(
            s["gpu_hours"].as_f64().unwrap_or(-1.0) > 0.0,
            "{what} {}",
            p["policy"]
        );
        if doc["run"]["command"]
            .as_array()
            .is_some_and(|c| !c.iter().any(|a| a == "--drain"))
        {
            // The default drain runs until every request has an outcome.
            assert_eq!(n("in_flight_at_end"), 0, "{what} {}", p["policy"]);
        }
        // The bound holds for policies that meet its target.
        let target = doc["oracle"]["p99_target_s"].as_f64();
        if let (Some(bound), Some(t), Some(p99)) = (
            doc["oracle"]["gpu_hours"].as_f64(),
            target,
            s["latency_p99_s"].as_f64(),
        ) && p99 <= t
        {
            let g = s["gpu_hours"].as_f64().unwrap_or(0.0);
            eprintln!(
                "{what} {}: {g:.2} GPU-h at p99 {p99:.1} s, {:.2}x the bound {bound:.2}",
                p["policy"],
                g / bound
            );
            assert!(
                g >= bound,
                "{what} {}: {g} GPU-h is below the oracle's lower bound {bound}",
                p["policy"]
            );
        }
    }
}

/// Each policy alone with `--oracle`: the bound is then taken at that policy's own p99, and the
/// policy, which meets it, must not use less.
fn check_bound_per_policy(trace: &Path, extra: &[&str], what: &str) {
    for policy in POLICIES.split(',') {
        let json = tmp(&format!("bound-{}-{policy}.json", what.replace([' ', '/'], "_")));
        let mut args = vec![
            "replay",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--policy",
            policy,
            "--json",
            json.to_str().unwrap_or_default(),
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = sim(&args);
        if !ok && stderr.contains("no policy has a finite p99") {
            eprintln!("{what} {policy}: no finite p99, no bound to check");
            continue;
        }
        assert!(ok, "{args:?}:\n{stdout}\n{stderr}");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).unwrap_or_default();
        let g = doc["policies"][0]["summary"]["gpu_hours"].as_f64().unwrap_or(0.0);
        let bound = doc["oracle"]["gpu_hours"].as_f64().unwrap_or(f64::INFINITY);
        eprintln!(
            "{what} {policy}: {g:.2} GPU-h, bound at its own p99 {bound:.2} ({:.2}x)",
            g / bound
        );
        assert!(
            g >= bound,
            "{what} {policy}: {g} GPU-h is below its own bound {bound}"
        );
    }
}

#[test]
fn bundled_traces_replay_under_every_policy_and_conserve_requests() {
    for name in [
        "AzureLLMInferenceTrace_conv.csv",
        "AzureLLMInferenceTrace_code.csv",
    ] {
        let trace = root().join("data/traces").join(name);
        check_conservation(&replay_json(&trace, &["--oracle"], &format!("{name}.json")), name);
        check_bound_per_policy(&trace, &["--oracle"], name);
        let keda = replay_json(
            &trace,
            &["--loop", "keda", "--scrape-interval", "15"],
            &format!("{name}.keda.json"),
        );
        check_conservation(&keda, &format!("{name} (keda)"));
        let routed = replay_json(
            &trace,
            &["--router", "least-loaded", "--tp", "2"],
            &format!("{name}.routed.json"),
        );
        check_conservation(&routed, &format!("{name} (least-loaded, TP 2)"));
    }
}

#[test]
fn shared_traces_replay_under_every_policy_and_conserve_requests() {
    if let Some(t) = shared("alibaba_genai_lora_request_trace_2024-11-15_to_11-26.csv") {
        check_conservation(&replay_json(&t, &["--oracle"], "alibaba.json"), "alibaba lora");
        check_bound_per_policy(&t, &["--oracle"], "alibaba lora");
    }
    if let Some(t) = shared("azure_functions_2021_first200.csv") {
        check_conservation(
            // Over 1 % of its requests fail under every policy, so no p99 is finite: the
            // bound is asked for at the timeout.
            &replay_json(&t, &["--oracle", "--oracle-p99", "300"], "functions.json"),
            "azure functions",
        );
    }
    if let Some(t) = shared("alibaba_genai_qps.csv") {
        let extra = [
            "--format",
            "rate",
            "--time-col",
            "timestamp_anon",
            "--rate-col",
            "value",
            "--service-time",
            "2",
            "--oracle",
        ];
        check_conservation(&replay_json(&t, &extra, "qps.json"), "alibaba qps (rate)");
        check_bound_per_policy(&t, &extra, "alibaba qps");
    }
    for name in [
        "AzureLLMInferenceTrace_conv.csv",
        "AzureLLMInferenceTrace_code.csv",
    ] {
        if let Some(t) = shared(name) {
            check_conservation(
                &replay_json(
                    &t,
                    &["--serving", "batching", "--oracle"],
                    &format!("shared-{name}.json"),
                ),
                name,
            );
        }
    }
}

#[test]
fn same_seed_same_json_byte_for_byte() {
    // A rate series (Poisson expansion), drawn service times and drawn cold starts all depend
    // on the seed; the same seed must give the same bytes.
    let trace = tmp("rate.csv");
    let cold = tmp("cold.txt");
    let _ = std::fs::write(&trace, "time,rps\n0,5\n600,20\n1200,0\n1800,1\n2400,0\n");
    let _ = std::fs::write(&cold, "# seconds\n20\n45\n90\n");
    let run = |seed: &str, out: &str| {
        let json = tmp(out);
        let (ok, stdout, stderr) = sim(&[
            "replay",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--format",
            "rate",
            "--seed",
            seed,
            "--policy",
            POLICIES,
            "--cold-start-file",
            cold.to_str().unwrap_or_default(),
            "--param",
            "keepAlive=adaptive",
            "--json",
            json.to_str().unwrap_or_default(),
            "--threads",
            "2",
        ]);
        assert!(ok, "{stdout}\n{stderr}");
        std::fs::read(json).unwrap_or_default()
    };
    let (a, b, c) = (run("11", "a.json"), run("11", "b.json"), run("12", "c.json"));
    assert!(!a.is_empty());
    // The recorded command names the output file, which differs here on purpose.
    let without_command = |bytes: &[u8]| {
        let mut v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        v["run"]["command"] = Value::Null;
        v
    };
    assert!(
        without_command(&a) == without_command(&b),
        "same seed, different JSON"
    );
    assert!(a != c, "a different seed should give a different replay");
}

#[test]
fn json_has_the_documented_keys() {
    let doc = replay_json(
        &root().join("data/traces/AzureLLMInferenceTrace_code.csv"),
        &["--slo", "5"],
        "keys.json",
    );
    let p = &doc["policies"][0];
    assert_eq!(p["policy"], "hpa");
    const SUMMARY: [&str; 23] = [
        "gpu_hours",
        "cost",
        "requests",
        "completed",
        "failed",
        "rejected",
        "in_flight_at_end",
        "latency_p50_s",
        "latency_p90_s",
        "latency_p99_s",
        "queue_wait_mean_s",
        "queue_wait_p99_s",
        "ttft_p50_s",
        "ttft_p99_s",
        "tpot_p50_s",
        "tpot_p99_s",
        "preemptions",
        "slo_attainment",
        "cold_starts",
        "cancelled_starts",
        "scale_events",
        "replicas_mean",
        "replicas_max",
    ];
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut want: Vec<String> = SUMMARY.iter().map(|s| s.to_string()).collect();
    let mut got = keys(&p["summary"]);
    want.sort();
    got.sort();
    assert_eq!(got, want, "summary keys");
    // And in the documented order in the file itself (serde_json::Value sorts its keys).
    let text = std::fs::read_to_string(tmp("keys.json")).unwrap_or_default();
    let summary = text
        .split("\"summary\": {")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .unwrap_or_default();
    let order: Vec<usize> = SUMMARY
        .iter()
        .map(|k| summary.find(&format!("\"{k}\"")).unwrap_or(usize::MAX))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "summary key order in the file: {order:?}"
    );
    assert!(
        p["summary"]["ttft_p99_s"].is_number(),
        "the LLM model reports TTFT"
    );
    assert!(p["summary"]["slo_attainment"].is_number());
    let point = &p["timeline"][1];
    let mut pk = keys(point);
    pk.sort();
    assert_eq!(pk, ["arrivals", "desired", "queued", "ready", "starting", "t"]);
    assert_eq!(point["t"], 60);
}

#[test]
fn report_is_a_self_contained_page_with_charts() {
    let html = tmp("r.html");
    let (ok, stdout, stderr) = sim(&[
        "replay",
        "--trace",
        root()
            .join("data/traces/AzureLLMInferenceTrace_code.csv")
            .to_str()
            .unwrap_or_default(),
        "--policy",
        "hpa,queue",
        "--report",
        html.to_str().unwrap_or_default(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let page = std::fs::read_to_string(html).unwrap_or_default();
    assert!(page.starts_with("<!DOCTYPE html>"));
    // The trade-off chart plus one timeline per policy.
    assert_eq!(
        page.matches("<svg").count(),
        3,
        "{}",
        &page[..page.len().min(400)]
    );
    assert!(page.contains("cost against p99 latency") && page.contains("replicas held"));
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
}

#[test]
fn sweep_marks_the_pareto_frontier() {
    let json = tmp("sweep.json");
    let (ok, stdout, stderr) = sim(&[
        "sweep",
        "--trace",
        root()
            .join("data/traces/AzureLLMInferenceTrace_code.csv")
            .to_str()
            .unwrap_or_default(),
        "--policy",
        "queue",
        "--param",
        "queue.target=1,4,16",
        "--param",
        "queue.scaleDownWindow=30s,300s",
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("queue[queue.target=1,queue.scaleDownWindow=30s]"),
        "{stdout}"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap_or_default()).unwrap_or(Value::Null);
    let runs = doc["policies"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 6);
    let on: Vec<&Value> = runs.iter().filter(|r| r["pareto"] == true).collect();
    assert!(!on.is_empty());
    // Nothing on the frontier is dominated by anything in the sweep.
    for a in &on {
        let (ca, pa) = (
            a["summary"]["cost"].as_f64().unwrap_or(0.0),
            a["summary"]["latency_p99_s"].as_f64().unwrap_or(0.0),
        );
        for b in &runs {
            let (cb, pb) = (
                b["summary"]["cost"].as_f64().unwrap_or(0.0),
                b["summary"]["latency_p99_s"].as_f64().unwrap_or(0.0),
            );
            assert!(
                !(cb <= ca && pb <= pa && (cb < ca || pb < pa)),
                "{} is dominated by {}",
                a["policy"],
                b["policy"]
            );
        }
    }
}

#[test]
fn errors_name_the_input_and_the_fix() {
    let bad = tmp("bad.csv");
    let _ = std::fs::write(
        &bad,
        "app,func,end_timestamp,duration\na,f,1.5,0.5\na,f,2.5,soon\n",
    );
    let (ok, _, stderr) = sim(&["replay", "--trace", bad.to_str().unwrap_or_default()]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.csv:3: column `duration`: expected seconds >= 0, found `soon`"),
        "{stderr}"
    );
    let (ok, stdout, _) = sim(&[
        "replay",
        "--trace",
        bad.to_str().unwrap_or_default(),
        "--skip-bad-rows",
        "--policy",
        "queue",
    ]);
    assert!(ok && stdout.contains("skipped 1 bad rows"), "{stdout}");

    let conv = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let (ok, _, stderr) = sim(&[
        "replay",
        "--trace",
        conv.to_str().unwrap_or_default(),
        "--policy",
        "queue,magic",
    ]);
    assert!(
        !ok && stderr.contains("--policy magic: unknown policy `magic`"),
        "{stderr}"
    );
    let (ok, _, stderr) = sim(&[
        "replay",
        "--trace",
        conv.to_str().unwrap_or_default(),
        "--policy",
        "queue",
        "--param",
        "queue.target=0",
    ]);
    assert!(
        !ok && stderr.contains("invalid value `0` for `queue.target`: expected a number > 0"),
        "{stderr}"
    );
    let (ok, _, stderr) = sim(&["replay", "--trace", "/nonexistent/trace.csv"]);
    assert!(!ok && stderr.contains("/nonexistent/trace.csv"), "{stderr}");
}

#[test]
fn inputs_are_refused_before_anything_is_allocated_for_them() {
    let conv = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let conv = conv.to_str().unwrap_or_default();
    // A billion initial replicas aborted with a 32 GB allocation: now an error, at once.
    let started = std::time::Instant::now();
    let (ok, _, stderr) = sim(&[
        "replay",
        "--trace",
        conv,
        "--policy",
        "queue",
        "--initial-replicas",
        "1000000000",
    ]);
    assert!(
        !ok && stderr.contains("--initial-replicas 1000000000: expected 0 to 100000"),
        "{stderr}"
    );
    // A sweep of 10^12 points is counted, not built.
    let list = (1..=1000).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let params: Vec<String> = ["queue.target", "minReplicas", "maxReplicas", "keepAlive"]
        .iter()
        .map(|k| format!("{k}={list}"))
        .collect();
    let mut args = vec!["sweep", "--trace", conv, "--policy", "queue"];
    for p in &params {
        args.extend(["--param", p.as_str()]);
    }
    let (ok, _, stderr) = sim(&args);
    assert!(
        !ok && stderr.contains("the sweep has 1000000000000 points; at most 10000"),
        "{stderr}"
    );
    // A trace spanning years: refused with its span, not simulated for hours.
    let years = tmp("years.csv");
    let _ = std::fs::write(&years, "t,svc\n0,1\n1,1\n94608000,1\n");
    let (ok, _, stderr) = sim(&[
        "replay",
        "--trace",
        years.to_str().unwrap_or_default(),
        "--format",
        "csv",
        "--time-col",
        "t",
        "--service-col",
        "svc",
        "--policy",
        "queue",
    ]);
    assert!(
        !ok && stderr.contains("spans 1095.0 days") && stderr.contains("at most 90 days"),
        "{stderr}"
    );
    println!("three oversized inputs refused in {:?}", started.elapsed());
}

#[test]
fn keda_loop_wakes_at_the_polling_interval_and_sleeps_after_cooldown() {
    // Traffic for 20 s, then quiet for an hour, then one request. Under KEDA the sleeping
    // workload wakes only at the next 30 s poll (plus the 10 s cold start) and goes back to
    // zero only after the 300 s cooldown; the direct loop reacts within a second.
    let trace = tmp("wake.csv");
    let mut rows = String::from("t,svc\n");
    for i in 0..20 {
        rows.push_str(&format!("{i},0.5\n"));
    }
    rows.push_str("3601,0.5\n");
    let _ = std::fs::write(&trace, rows);
    let run = |lp: &str| {
        let doc = run_json(
            &[
                "replay",
                "--trace",
                trace.to_str().unwrap_or_default(),
                "--format",
                "csv",
                "--service-col",
                "svc",
                "--policy",
                "queue",
                "--loop",
                lp,
                "--cooldown",
                "300",
                "--cold-start",
                "10",
                "--param",
                "keepAlive=60s",
                "--param",
                "queue.scaleDownWindow=0s",
                "--drain",
                "120",
            ],
            &format!("wake-{lp}.json"),
        );
        doc["policies"][0].clone()
    };
    let (direct, keda) = (run("direct"), run("keda"));
    let timeline = |p: &Value| p["timeline"].as_array().cloned().unwrap_or_default();
    let desired_at = |p: &Value, t: u64| {
        timeline(p)
            .iter()
            .find(|x| x["t"] == t)
            .map(|x| x["desired"].as_u64().unwrap_or(99))
    };
    // Direct: the keep-alive (60 s after the last request at ~19.5 s) ends near t = 80.
    assert_eq!(desired_at(&direct, 100), Some(0));
    // KEDA: still up at t = 300 (cooldown counts from the last active poll), down by t = 400.
    assert_eq!(desired_at(&keda, 300), Some(1));
    assert_eq!(desired_at(&keda, 400), Some(0));
    // The request at t = 3601: direct wakes at once (10 s cold start); KEDA at the poll at
    // t = 3630, so that request waits about 39 s.
    let wait = |p: &Value| p["summary"]["queue_wait_p99_s"].as_f64().unwrap_or(0.0);
    assert!(wait(&direct) < 12.0, "direct wait {}", wait(&direct));
    assert!(
        wait(&keda) > 35.0 && wait(&keda) < 45.0,
        "keda wait {}",
        wait(&keda)
    );
}

#[test]
fn under_keda_the_scaler_decides_every_second_not_only_when_read() {
    // Three 10 s requests every 15 s, arriving a second after each HPA sync, so at every sync
    // nothing is in flight. The scaler decides on its own clock: its 60 s scale-down window
    // sees each burst and holds exactly the 3 replicas they need. Deciding only when KEDA reads
    // (as the model once did) samples the window at the quiet instants and held 5 here.
    let trace = tmp("between-syncs.csv");
    let mut rows = String::from("t,svc\n");
    for k in 0..12 {
        for _ in 0..3 {
            rows.push_str(&format!("{},10\n", 16 + 15 * k));
        }
    }
    let _ = std::fs::write(&trace, rows);
    let doc = run_json(
        &[
            "replay",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--format",
            "csv",
            "--service-col",
            "svc",
            "--policy",
            "queue",
            "--loop",
            "keda",
            "--cold-start",
            "20",
            "--param",
            "queue.target=1",
            "--param",
            "queue.scaleDownWindow=60s",
            "--param",
            "keepAlive=600s",
            "--drain",
            "60",
        ],
        "between-syncs.json",
    );
    let held: Vec<(u64, u64)> = doc["policies"][0]["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["t"].as_u64()?, p["desired"].as_u64()?)))
                .filter(|&(t, _)| (150..=195).contains(&t))
                .collect()
        })
        .unwrap_or_default();
    assert!(!held.is_empty(), "no timeline");
    assert!(held.iter().all(|&(_, n)| n == 3), "{held:?}");
}

#[test]
fn integer_second_arrivals_are_counted() {
    // Regression: arrivals at exactly a tick instant (1 s resolution traces) were dropped from
    // the rate window by that tick. Three at t = 0 and two at t = 5 show up in the timeline at
    // t = 1 and t = 6 (arrivals during the second before t).
    let trace = tmp("ints.csv");
    let _ = std::fs::write(&trace, "t,svc\n0,1\n0,1\n0,1\n5,1\n5,1\n9,1\n");
    let doc = run_json(
        &[
            "replay",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--format",
            "csv",
            "--service-col",
            "svc",
            "--policy",
            "queue",
            "--drain",
            "0",
        ],
        "ints.json",
    );
    let arrivals: Vec<u64> = doc["policies"][0]["timeline"]
        .as_array()
        .map(|a| a.iter().map(|p| p["arrivals"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    assert_eq!(arrivals, [0, 3, 0, 0, 0, 0, 2, 0, 0, 0], "{arrivals:?}");
}

#[test]
fn every_flag_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/simulator.md")).unwrap_or_default();
    let flags = gpuscale_testkit::help_flags(BIN, &["replay"]);
    assert!(flags.len() > 30, "{flags:?}");
    for f in flags {
        let name = &f.name;
        assert!(
            doc.contains(&format!("| `--{name}` |")),
            "docs/simulator.md does not document --{name}"
        );
        let env = format!("GPUSCALE_SIM_{}", name.to_uppercase().replace('-', "_"));
        assert_eq!(
            f.env.as_deref(),
            Some(env.as_str()),
            "--{name} has no env twin {env}"
        );
    }
}

#[test]
fn keda_cooldown_counts_from_the_start_when_never_active() {
    // gpuscale's own keep-alive is off (keepAlive=0s) so IsActive is false from the start.
    // One request at t = 1000 only: before it the workload was never active, so KEDA scales
    // the initial replica away once the cooldown (300 s) has passed since t = 0, at the first
    // poll at or after 300 s (t = 300), not at the first poll (t = 0).
    let trace = tmp("late.csv");
    let _ = std::fs::write(&trace, "t,svc\n0,0.5\n1000,0.5\n");
    let doc = run_json(
        &[
            "replay",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--format",
            "csv",
            "--service-col",
            "svc",
            "--policy",
            "fixed:0",
            "--param",
            "keepAlive=0s",
            "--loop",
            "keda",
            "--cooldown",
            "300",
        ],
        "late.json",
    );
    let tl = doc["policies"][0]["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let desired = |t: u64| {
        tl.iter()
            .find(|p| p["t"] == t)
            .and_then(|p| p["desired"].as_u64())
    };
    assert_eq!(
        desired(30),
        Some(1),
        "the first polls must not scale the workload away"
    );
    assert_eq!(desired(299), Some(1));
    assert_eq!(desired(300), Some(0));
}

#[test]
fn first_hour_parsing_agrees_with_itself_and_errors_teach() {
    let conv = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let conv = conv.to_str().unwrap_or_default();
    let replay = |extra: &[&str]| {
        let mut a = vec!["replay", "--trace", conv, "--policy", "queue"];
        a.extend_from_slice(extra);
        sim(&a)
    };
    // One duration syntax: the scaler's `5m` works here too, and a negative value reaches the
    // parser instead of reading as a flag.
    let (ok, stdout, stderr) = replay(&["--cold-start", "5m", "--timeout", "10m", "--drain", "30s"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("queue"), "{stdout}");
    let (ok, _, stderr) = replay(&["--cold-start", "-5"]);
    assert!(
        !ok && stderr.contains("`-5`: expected a duration such as 500ms, 30s, 5m or 1h"),
        "{stderr}"
    );
    let (ok, _, stderr) = replay(&["--polling-interval", "1.5s", "--loop", "keda"]);
    assert!(!ok && stderr.contains("expected whole seconds"), "{stderr}");
    // A key no chosen policy reads is refused, naming whose key it is.
    let (ok, _, stderr) = replay(&["--param", "slo.wait=2s"]);
    assert!(
        !ok && stderr.contains("`slo.wait` is a parameter of policy `slo`, which `queue` does not include"),
        "{stderr}"
    );
    let (ok, _, stderr) = sim(&[
        "replay",
        "--trace",
        conv,
        "--policy",
        "hpa,kpa",
        "--param",
        "queue.target=2",
    ]);
    assert!(
        !ok && stderr
            .contains("`queue.target` is a parameter of policy `queue`, which `hpa,kpa` does not include"),
        "{stderr}"
    );
    // Empty values in a sweep list are errors, not silently dropped.
    for bad in ["queue.target=", "queue.target=1,,2"] {
        let (ok, _, stderr) = sim(&["sweep", "--trace", conv, "--policy", "queue", "--param", bad]);
        assert!(
            !ok && stderr.contains("an empty value in the list"),
            "{bad}: {stderr}"
        );
    }
    // A missing trace is said once.
    let (ok, _, stderr) = sim(&["replay", "--trace", "nope.csv"]);
    assert!(!ok, "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(
        stderr.contains("nope.csv") && stderr.contains("--trace"),
        "{stderr}"
    );
    // A spreadsheet's byte-order mark does not hide the format.
    let text = std::fs::read_to_string(root().join("data/traces/AzureLLMInferenceTrace_conv.csv"))
        .unwrap_or_default();
    let head: String = text.lines().take(200).map(|l| format!("{l}\n")).collect();
    let bom = tmp("bom.csv");
    let _ = std::fs::write(&bom, format!("\u{feff}{head}"));
    let (ok, stdout, stderr) = sim(&[
        "replay",
        "--trace",
        bom.to_str().unwrap_or_default(),
        "--policy",
        "queue",
    ]);
    assert!(ok && stdout.contains("queue"), "{stderr}");
}

#[test]
fn a_reports_recorded_command_reproduces_its_json_byte_for_byte() {
    let conv = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let out = tmp("reproduce.json");
    let html = tmp("reproduce.html");
    let (ok, stdout, stderr) = sim(&[
        "replay",
        "--trace",
        conv.to_str().unwrap_or_default(),
        "--policy",
        "queue,kpa",
        "--param",
        "queue.target=8",
        "--cold-start",
        "45s",
        "--json",
        out.to_str().unwrap_or_default(),
        "--report",
        html.to_str().unwrap_or_default(),
    ]);
    assert!(ok, "{stderr}");
    // replay marks the Pareto set and names a recommendation, as sweep does.
    assert!(
        stdout.contains("* on the cost / p99-latency Pareto frontier"),
        "{stdout}"
    );
    assert!(stdout.contains("recommended: "), "{stdout}");
    let first = std::fs::read(&out).unwrap_or_default();
    let doc: Value = serde_json::from_slice(&first).unwrap_or(Value::Null);
    let run = &doc["run"];
    assert!(
        run["tool"].as_str().unwrap_or("").starts_with("gpuscale-sim "),
        "{run}"
    );
    assert_eq!(run["trace"]["format"], "azure-llm");
    assert_eq!(run["trace"]["requests"], 19366);
    assert_eq!(run["trace"]["sha256"].as_str().map(str::len), Some(64));
    let runs = run["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0]["params"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "queue.target=8")),
        "{run}"
    );
    assert!(
        run["serving"][0]
            .as_str()
            .unwrap_or("")
            .contains("cold start 45 s"),
        "{run}"
    );
    assert!(doc["policies"][0]["pareto"].is_boolean());
    // Rerun exactly what was recorded: the same bytes.
    let command: Vec<String> = run["command"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let (ok, _, stderr) = sim(&command.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{stderr}");
    assert!(
        std::fs::read(&out).unwrap_or_default() == first,
        "the recorded command wrote different JSON"
    );
    // The HTML report records the same.
    let page = std::fs::read_to_string(&html).unwrap_or_default();
    assert!(
        page.contains("What was run") && page.contains(run["trace"]["sha256"].as_str().unwrap_or("-")),
        "no run record in the report"
    );
    assert!(page.contains("reproduce (from the same directory): gpuscale-sim replay --trace"));
}

#[test]
fn failed_requests_count_in_every_percentile_and_every_request_has_an_outcome() {
    // One replica for the conversation trace, 60 s timeout: most requests fail. A percentile
    // that falls among them is not a number (the table says `failed`), SLO attainment counts
    // them as misses, and the default drain leaves nothing in flight.
    let trace = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let t = trace.to_str().unwrap_or_default();
    let args = [
        "replay",
        "--trace",
        t,
        "--policy",
        "fixed:1",
        "--timeout",
        "60",
        "--slo",
        "1000",
    ];
    let doc = run_json(&args, "failed.json");
    let s = &doc["policies"][0]["summary"];
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let failed_share = n("failed") as f64 / n("requests") as f64;
    eprintln!(
        "failed {} of {} ({:.0} %)",
        n("failed"),
        n("requests"),
        failed_share * 100.0
    );
    assert!(failed_share > 0.5, "{failed_share}");
    assert_eq!(n("in_flight_at_end"), 0);
    assert_eq!(n("requests"), n("completed") + n("failed"));
    for k in ["latency_p50_s", "latency_p99_s", "queue_wait_p99_s", "ttft_p99_s"] {
        assert!(
            s[k].is_null(),
            "{k} = {} with {:.0} % failed",
            s[k],
            failed_share * 100.0
        );
    }
    let attainment = s["slo_attainment"].as_f64().unwrap_or(1.0);
    assert!((attainment - n("completed") as f64 / n("requests") as f64).abs() < 1e-6);
    let (ok, stdout, _) = sim(&args);
    assert!(ok);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("fixed:1"))
        .unwrap_or_default();
    assert!(row.contains("failed"), "{row}");

    // With --drain 0 the replay stops at the last arrival: what is still running is counted
    // in flight, and in the percentiles as a failure would be.
    let short = ["replay", "--trace", t, "--policy", "fixed:1", "--drain", "0"];
    let doc = run_json(&short, "short.json");
    let s = &doc["policies"][0]["summary"];
    assert!(s["in_flight_at_end"].as_u64().unwrap_or(0) > 0);
    assert_eq!(
        s["requests"].as_u64(),
        Some(
            s["completed"].as_u64().unwrap_or(0)
                + s["failed"].as_u64().unwrap_or(0)
                + s["in_flight_at_end"].as_u64().unwrap_or(0)
        )
    );
}

#[test]
fn baselines_get_their_targets_from_the_serving_model_and_say_so() {
    let trace = root().join("data/traces/AzureLLMInferenceTrace_conv.csv");
    let t = trace.to_str().unwrap_or_default();
    let (ok, stdout, stderr) = sim(&["replay", "--trace", t, "--policy", "hpa,kpa,queue"]);
    assert!(ok, "{stderr}");
    let slots_line = stdout
        .lines()
        .find(|l| l.starts_with("per-replica slots "))
        .unwrap_or_else(|| panic!("no slots line:\n{stdout}"));
    let slots: u32 = slots_line
        .trim_start_matches("per-replica slots ")
        .split(':')
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(slots > 4, "{slots_line}");
    let derived = stdout
        .lines()
        .find(|l| l.starts_with("derived"))
        .unwrap_or_default();
    for want in [
        format!("hpa: hpa.target={slots}"),
        format!("kpa: kpa.target={slots} keepAlive=0s"),
        format!("queue: queue.target={slots}"),
    ] {
        assert!(derived.contains(&want), "{derived} lacks {want}");
    }
    // A user's value wins, and the header says what was derived for the rest.
    let (ok, stdout, _) = sim(&[
        "replay",
        "--trace",
        t,
        "--policy",
        "queue",
        "--param",
        "queue.target=7",
    ]);
    assert!(ok);
    assert!(!stdout.contains("queue.target="), "{stdout}");
}

#[test]
fn a_users_own_performance_table_drives_the_replay() {
    // A table of the bundled shape for a made-up model: prefill 0.1 ms a token, decode steps
    // of 20 ms (1 sequence) to 40 ms (64). A replay on it reports the file and its figures.
    let table = tmp("my_perf.csv");
    let mut text =
        String::from("model,hardware,tensor_parallel,prompt_size,batch_size,prompt_time,token_time\n");
    for (ps, bs, pt, tt) in [
        (512, 1, 51.2, 20.0),
        (2048, 1, 204.8, 20.5),
        (512, 8, 409.6, 25.0),
        (512, 64, 3276.8, 40.0),
    ] {
        text.push_str(&format!("my-8b,l40s,1,{ps},{bs},{pt},{tt}\n"));
    }
    let _ = std::fs::write(&table, text);
    let trace = root().join("data/traces/AzureLLMInferenceTrace_code.csv");
    let base = [
        "replay",
        "--trace",
        trace.to_str().unwrap_or_default(),
        "--policy",
        "queue",
        "--perf-table",
        table.to_str().unwrap_or_default(),
        "--model",
        "my-8b",
        "--hardware",
        "l40s",
        "--tp",
        "1",
    ];
    // Its KV size is not known here: the error says how to give it.
    let (ok, _, stderr) = sim(&base);
    assert!(!ok && stderr.contains("give --kv-cache-tokens"), "{stderr}");
    let mut args = base.to_vec();
    args.extend_from_slice(&["--kv-cache-tokens", "200000"]);
    let doc = run_json(&args, "own-table.json");
    let serving = doc["run"]["serving"][0].as_str().unwrap_or_default();
    assert!(
        serving.contains("my-8b on l40s TP 1 from the")
            && serving.contains("my_perf.csv")
            && serving.contains("MEASURED"),
        "{serving}"
    );
    let s = &doc["policies"][0]["summary"];
    assert_eq!(s["completed"].as_u64(), Some(8819));
    // One GPU a replica (TP 1).
    assert!(
        doc["run"]["serving"][0]
            .as_str()
            .unwrap_or_default()
            .contains("1 GPU/replica")
    );

    // The wrong configuration lists what the table has; a bad cell names its line.
    let mut wrong = base.to_vec();
    let last = wrong.len() - 1;
    wrong[last] = "2";
    let (ok, _, stderr) = sim(&wrong);
    assert!(!ok && stderr.contains("it has: my-8b/l40s/TP 1"), "{stderr}");
    let _ = std::fs::write(
        &table,
        "model,hardware,tensor_parallel,prompt_size,batch_size,prompt_time,token_time\nmy-8b,l40s,1,512,1,fast,20\n",
    );
    let (ok, _, stderr) = sim(&base);
    assert!(
        !ok && stderr.contains("my_perf.csv:2: column prompt_time: expected milliseconds > 0, found `fast`"),
        "{stderr}"
    );
}

#[test]
fn recommend_picks_the_cheapest_candidate_that_meets_the_objective_and_writes_a_valid_trigger() {
    let trace = root().join("data/traces/AzureLLMInferenceTrace_code.csv");
    let so = tmp("recommended-so.yaml");
    let ann = tmp("recommended-annotations.yaml");
    let doc = run_json(
        &[
            "recommend",
            "--trace",
            trace.to_str().unwrap_or_default(),
            "--objective-p99",
            "90s",
            "--deployment",
            "qwen",
            "--namespace",
            "llm",
            "--write-scaledobject",
            so.to_str().unwrap_or_default(),
            "--write-annotations",
            ann.to_str().unwrap_or_default(),
        ],
        "recommend.json",
    );
    let objective = doc["objective_p99_s"].as_f64().unwrap_or(0.0);
    assert_eq!(objective, 90.0);
    let rec = &doc["recommended"];
    let gh = rec["summary"]["gpu_hours"].as_f64().unwrap_or(f64::NAN);
    let p99 = rec["summary"]["latency_p99_s"].as_f64().unwrap_or(f64::INFINITY);
    assert!(p99 <= objective, "recommended p99 {p99} over the objective");
    // No candidate that meets the objective is cheaper.
    let candidates = doc["candidates"].as_array().cloned().unwrap_or_default();
    assert!(candidates.len() >= 10, "{}", candidates.len());
    for c in &candidates {
        let meets = c["summary"]["latency_p99_s"]
            .as_f64()
            .is_some_and(|p| p <= objective);
        let g = c["summary"]["gpu_hours"].as_f64().unwrap_or(f64::INFINITY);
        assert!(
            !meets || g >= gh,
            "{} meets the objective at {g} GPU-h < {gh}",
            c["policy"]
        );
    }
    let bound = doc["oracle"]["gpu_hours"].as_f64().unwrap_or(f64::INFINITY);
    assert!(gh >= bound, "below the lower bound");
    assert_eq!(
        rec["gpu_hours_x_oracle"].as_f64(),
        Some((gh / bound * 100.0).round() / 100.0)
    );
    // The trigger names the Deployment and uses only keys gpuscale reads.
    let md = rec["trigger_metadata"].as_object().cloned().unwrap_or_default();
    assert_eq!(md["deployment"], "qwen");
    for k in md
        .keys()
        .filter(|k| !matches!(k.as_str(), "deployment" | "policy"))
    {
        let known = gpuscale_policies::spec::KEYS.iter().any(|key| {
            let name = if key.policy.is_empty() {
                key.name.to_string()
            } else {
                format!("{}.{}", key.policy, key.name)
            };
            &name == k
        });
        assert!(known, "trigger key `{k}` is not a gpuscale key");
    }
    let yaml = std::fs::read_to_string(&so).unwrap_or_default();
    assert!(
        yaml.contains("kind: ScaledObject")
            && yaml.contains("type: external-push")
            && yaml.contains("deployment: \"qwen\""),
        "{yaml}"
    );
    let annotations = std::fs::read_to_string(&ann).unwrap_or_default();
    assert!(
        annotations.contains(&format!("gpuscale.io/policy: {}", md["policy"])),
        "{annotations}"
    );
    // The ScaledObject passes the deploy test's validation (KEDA's strict schema).
    let py = std::env::var("GPUSCALE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/python"));
    let spec = root().join("../shared/spec");
    if !spec.is_dir()
        || Command::new(&py)
            .args(["-c", "import kubernetes_validate"])
            .output()
            .map_or(true, |o| !o.status.success())
    {
        gpuscale_testkit::missing(
            "ScaledObject schema validation (no kubernetes_validate)",
            "./scripts/test installs it",
        );
        return;
    }
    let out = Command::new(&py)
        .arg(root().join("tests/python/validate_manifests.py"))
        .arg(&spec)
        .arg("1.35.0")
        .arg(tmp("recommend-objects.json"))
        .arg(&so)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
