//! The scaler's HTTP side: `/metrics`, `/debug/workloads`, `/healthz`, `/readyz`, and
//! `POST /v1/held`, where a separate activator reports held requests.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gpuscale_expfmt::write::{Format, Writer};
use serde::{Deserialize, Serialize};

use crate::keda::trigger::Mode;
use crate::sources::poll::Polled;
use crate::telemetry::{METHODS, Telemetry};
use crate::workloads::{Workloads, lock};
use gpuscale_contract::Clock;
use gpuscale_contract::WorkloadKey;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Workloads.
    pub workloads: Arc<Workloads>,
    /// Poll state.
    pub polled: Arc<Polled>,
    /// Counters.
    pub telemetry: Arc<Telemetry>,
    /// Clock.
    pub clock: Clock,
    /// Whether this replica leads (direct mode); `None` when there is no election.
    pub leader: Option<tokio::sync::watch::Receiver<bool>>,
    /// The in-process activator, if one runs.
    pub activator: Option<Arc<gpuscale_activator::Activator>>,
    /// When set, `POST /v1/held` needs `Authorization: Bearer <token>`.
    pub held_token: Option<Arc<str>>,
    /// Most workloads with series of their own on `/metrics` (the UNAVAILABLE ones first).
    pub metrics_max_workloads: usize,
}

/// Largest `POST /v1/held` body; a report is under 300 bytes.
pub const MAX_HELD_BODY: usize = 16 * 1024;

/// Most requests one activator may report held for one workload.
pub const MAX_HELD_REQUESTS: f64 = 1e6;

/// The router.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/workloads", get(debug))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/held", post(held))
        .layer(DefaultBodyLimit::max(MAX_HELD_BODY))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.polled.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no poll of the collectors has completed yet\n",
        )
            .into_response()
    }
}

/// An activator's report.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeldReport {
    /// Namespace of the workload.
    pub namespace: String,
    /// Deployment name.
    pub workload: String,
    /// Requests held now: a whole number from 0 to 10^6.
    pub requests: f64,
    /// Ready upstream replicas as the activator sees them, when it knows.
    #[serde(default)]
    pub ready: Option<u32>,
}

fn bad(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, msg.into()).into_response()
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn held(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<HeldReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(token) = &s.held_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return bad(
                StatusCode::UNAUTHORIZED,
                "POST /v1/held needs `Authorization: Bearer <token>` with the token of --held-token-file (the activator's --scaler-token-file)\n",
            );
        }
    }
    let Json(r) = match body {
        Ok(b) => b,
        Err(e) => {
            // 413 for an oversized body, 415 without a JSON content type, 400 otherwise.
            let status = match e.status() {
                s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
                _ => StatusCode::BAD_REQUEST,
            };
            let what = gpuscale_policies::spec::brief_to(&e.body_text(), 200).into_owned();
            return bad(
                status,
                format!(
                    "{what}: expected at most {MAX_HELD_BODY} bytes of {{\"namespace\": \"...\", \"workload\": \"...\", \"requests\": N, \"ready\": N}}\n"
                ),
            );
        }
    };
    if !(r.requests.is_finite()
        && r.requests >= 0.0
        && r.requests <= MAX_HELD_REQUESTS
        && r.requests.fract() == 0.0)
    {
        return bad(
            StatusCode::BAD_REQUEST,
            format!(
                "`requests` {} is not a count: expected a whole number from 0 to {MAX_HELD_REQUESTS}\n",
                r.requests
            ),
        );
    }
    s.telemetry.held_reports.fetch_add(1, Ordering::Relaxed);
    let key = WorkloadKey {
        namespace: r.namespace,
        name: r.workload,
    };
    if s.workloads.held(&key, r.requests, r.ready, s.clock.now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let shown = gpuscale_policies::spec::brief_to(&key.to_string(), 200).into_owned();
        bad(
            StatusCode::NOT_FOUND,
            format!(
                "{shown} is not a workload this scaler tracks: no ScaledObject (or annotated Deployment) names it yet\n"
            ),
        )
    }
}

#[derive(Serialize)]
struct DebugWorkload<'a> {
    namespace: &'a str,
    name: &'a str,
    policy: &'a str,
    mode: &'static str,
    metric_name: String,
    params: &'a [(String, String)],
    observed: &'a Option<crate::sources::aggregate::Observed>,
    unknown: &'a Option<String>,
    signals: &'a Option<gpuscale_policies::Signals>,
    decision: Option<DebugDecision>,
    capacity: &'a Option<String>,
    warning: &'a Option<String>,
    /// What the policies learned, each with where it comes from (docs/scaler.md).
    learned: Vec<gpuscale_policies::Learned>,
    held: &'a Option<crate::workloads::Held>,
    replicas: &'a Option<crate::workloads::Replicas>,
    value: Option<f64>,
    active: Option<bool>,
    unavailable: Option<String>,
    seconds_since_asked: f64,
    asked_by: &'a str,
    fingerprint: String,
    /// Entries (distinct triggers) for this Deployment.
    triggers: usize,
}

#[derive(Serialize)]
struct DebugDecision {
    desired: u32,
    recommended: u32,
    policy: &'static str,
    rule: String,
    reason: String,
    seconds_ago: f64,
}

async fn debug(State(s): State<AppState>) -> Response {
    let now = s.clock.now();
    let all = s.workloads.all();
    let mut out = Vec::with_capacity(all.len());
    for (_, w) in &all {
        let g = lock(w);
        let answer = w.answer();
        let decision = g.decision.as_ref().map(|(d, at)| DebugDecision {
            desired: d.desired,
            recommended: d.recommended,
            policy: d.policy,
            rule: d.rule.code().to_string(),
            reason: match &g.capacity {
                Some(c) => format!("{}; {c}", d.rule),
                None => d.rule.to_string(),
            },
            seconds_ago: now.saturating_sub(*at).as_secs_f64(),
        });
        let item = DebugWorkload {
            namespace: &w.trigger.workload.namespace,
            name: &w.trigger.workload.name,
            policy: &w.trigger.policy,
            mode: match w.trigger.mode {
                Mode::Replicas => "replicas",
                Mode::Signal { .. } => "signal",
            },
            metric_name: w.trigger.metric_name(),
            params: &w.trigger.params,
            observed: &g.observed,
            unknown: &g.unknown,
            signals: &g.signals,
            decision,
            capacity: &g.capacity,
            warning: &g.warning,
            learned: g.learned(),
            held: &g.held,
            replicas: &g.replicas,
            value: answer.value.as_ref().ok().copied(),
            active: answer.active.as_ref().ok().copied(),
            unavailable: answer.value.as_ref().err().map(ToString::to_string),
            seconds_since_asked: now.saturating_sub(w.last_asked()).as_secs_f64(),
            asked_by: &g.asker,
            fingerprint: format!("{:016x}", w.trigger.fingerprint),
            triggers: all.iter().filter(|(k, _)| *k == w.trigger.workload).count(),
        };
        out.push(serde_json::to_value(&item).unwrap_or_default());
    }
    Json(out).into_response()
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    // Off the runtime's workers: at 40,000 workloads a render takes a tenth of a second or
    // more, which would hold up the gRPC answers and collector reads queued on that worker.
    match tokio::task::spawn_blocking(move || render(&s, format)).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering /metrics failed; see the scaler's log\n",
            )
                .into_response()
        }
    }
}

/// The scaler's `/metrics` page.
pub fn render(s: &AppState, format: Format) -> String {
    let mut w = Writer::new(format);
    let t = &s.telemetry;
    let now = s.clock.now();
    w.family(
        "gpuscale_scaler_grpc_request_duration_seconds",
        "histogram",
        "Time to answer a KEDA external-scaler RPC (for StreamIsActive: to open the stream).",
    );
    for (i, m) in METHODS.iter().enumerate() {
        t.grpc_latency[i].write(
            &mut w,
            "gpuscale_scaler_grpc_request_duration_seconds",
            &[("method", m)],
        );
    }
    w.family(
        "gpuscale_scaler_grpc_errors",
        "counter",
        "RPCs answered with an error status.",
    );
    let errors = "gpuscale_scaler_grpc_errors_total";
    for (i, m) in METHODS.iter().enumerate() {
        w.sample(
            errors,
            &[("method", m)],
            t.grpc_errors[i].load(Ordering::Relaxed) as f64,
        );
    }
    let gauges: [(&str, &str, f64); 3] = [
        (
            "gpuscale_scaler_streams_open",
            "StreamIsActive streams open now.",
            t.streams_open.load(Ordering::Relaxed) as f64,
        ),
        (
            "gpuscale_scaler_workloads",
            "Workloads tracked.",
            s.workloads.len() as f64,
        ),
        (
            "gpuscale_scaler_leader",
            "1 if this replica leads direct mode (0 when it does not, absent without election).",
            s.leader
                .as_ref()
                .map_or(f64::NAN, |l| f64::from(u8::from(*l.borrow()))),
        ),
    ];
    for (name, help, v) in gauges {
        if v.is_nan() {
            continue;
        }
        w.family(name, "gauge", help);
        w.sample(name, &[], v);
    }
    let counters: [(&str, &str, u64); 5] = [
        (
            "gpuscale_scaler_stream_pushes",
            "`true` messages pushed on StreamIsActive.",
            t.stream_pushes.load(Ordering::Relaxed),
        ),
        (
            "gpuscale_scaler_polls",
            "Periodic decisions over every workload (every --poll-interval).",
            t.polls.load(Ordering::Relaxed),
        ),
        (
            "gpuscale_scaler_pushed_decisions",
            "Decisions made at once on a newer collector page, between periodic ones.",
            t.pushed_decisions.load(Ordering::Relaxed),
        ),
        (
            "gpuscale_scaler_poll_errors",
            "Failed collector reads.",
            t.poll_errors.load(Ordering::Relaxed),
        ),
        (
            "gpuscale_scaler_held_reports",
            "Held-request reports from activators.",
            t.held_reports.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        w.family(name, "counter", help);
        w.sample(&format!("{name}_total"), &[], v as f64);
    }
    w.family(
        "gpuscale_scaler_poll_duration_seconds",
        "histogram",
        "Time of one decision over every workload: combine the collectors' pages, decide.",
    );
    t.poll_duration
        .write(&mut w, "gpuscale_scaler_poll_duration_seconds", &[]);

    {
        let sources = s.polled.sources.read().unwrap_or_else(|e| e.into_inner());
        w.family(
            "gpuscale_scaler_collector_age_seconds",
            "gauge",
            "Seconds since each collector was last read successfully.",
        );
        for (addr, src) in sources.iter() {
            if let Some((at, _)) = &src.last_ok {
                w.sample(
                    "gpuscale_scaler_collector_age_seconds",
                    &[("collector", &gpuscale_contract::redact_url(addr))],
                    now.saturating_sub(*at).as_secs_f64(),
                );
            }
        }
        w.family(
            "gpuscale_scaler_collector_up",
            "gauge",
            "1 if the last read of the collector succeeded.",
        );
        for (addr, src) in sources.iter() {
            w.sample(
                "gpuscale_scaler_collector_up",
                &[("collector", &gpuscale_contract::redact_url(addr))],
                f64::from(u8::from(src.error.is_none() && src.last_ok.is_some())),
            );
        }
    }
    {
        let view = s.polled.view.read().unwrap_or_else(|e| e.into_inner());
        if !view.capacity.is_empty() {
            w.family(
                "gpuscale_cluster_gpus",
                "gauge",
                "GPUs per node and product as the collectors report them: allocatable, or allocated to a pod.",
            );
            for ((node, model), c) in &view.capacity {
                for (state, v) in [("allocatable", c.allocatable), ("allocated", c.allocated)] {
                    w.sample(
                        "gpuscale_cluster_gpus",
                        &[("node", node), ("model", model), ("state", state)],
                        f64::from(v),
                    );
                }
            }
        }
    }

    let all = s.workloads.all();
    type Row = (String, String, String, f64);
    let mut desired: Vec<Row> = Vec::new();
    let mut values: Vec<Row> = Vec::new();
    let mut actives: Vec<Row> = Vec::new();
    let mut unavailable: Vec<Row> = Vec::new();
    let mut signals: Vec<(String, String, &'static str, f64)> = Vec::new();
    let mut ages: Vec<Row> = Vec::new();
    let mut ready: Vec<Row> = Vec::new();
    // One row per Deployment: when several triggers name it (see /debug/workloads), the one
    // asked about most recently; gpuscale_scaler_workload_triggers counts them.
    let mut triggers: Vec<(WorkloadKey, usize)> = Vec::new();
    let mut latest: Vec<(WorkloadKey, Arc<crate::workloads::Tracked>)> = Vec::new();
    for (k, wl) in &all {
        match triggers.last_mut() {
            Some((last, n)) if last == k => {
                *n += 1;
                if let Some(l) = latest.last_mut()
                    && wl.last_asked() > l.1.last_asked()
                {
                    l.1 = wl.clone();
                }
            }
            _ => {
                triggers.push((k.clone(), 1));
                latest.push((k.clone(), wl.clone()));
            }
        }
    }
    // Bounded: at 40,000 workloads their series were 29.6 MB and 0.6 s of CPU a scrape, past
    // many Prometheus setups' sample_limit (a scrape over it keeps nothing). The UNAVAILABLE
    // ones come first, as alerts look for them; the counts below cover every workload.
    let answers: Vec<_> = latest.iter().map(|(_, wl)| wl.answer()).collect();
    let unavailable_total = answers.iter().filter(|a| a.value.is_err()).count();
    let mut order: Vec<usize> = (0..latest.len()).collect();
    order.sort_by_key(|&i| answers[i].value.is_ok());
    order.truncate(s.metrics_max_workloads);
    order.sort_unstable();
    let omitted = latest.len() - order.len();
    let per_workload: [(&str, &str, usize); 2] = [
        (
            "gpuscale_scaler_workloads_unavailable",
            "Workloads GetMetrics answers UNAVAILABLE for (missing or stale data), all of them.",
            unavailable_total,
        ),
        (
            "gpuscale_scaler_workload_series_omitted",
            "Workloads left out of the per-workload series (--metrics-max-workloads; UNAVAILABLE ones are kept first).",
            omitted,
        ),
    ];
    for (name, help, v) in per_workload {
        w.family(name, "gauge", help);
        w.sample(name, &[], v as f64);
    }
    let mut multi: Vec<&(WorkloadKey, usize)> = Vec::new();
    for i in order {
        let (k, wl) = &latest[i];
        let answer = &answers[i];
        if triggers[i].1 > 1 {
            multi.push(&triggers[i]);
        }
        let g = lock(wl);
        let (ns, name) = (k.namespace.clone(), k.name.clone());
        if let Some((d, _)) = &g.decision {
            desired.push((
                ns.clone(),
                name.clone(),
                d.rule.code().to_string(),
                f64::from(d.desired),
            ));
        }
        if let Ok(v) = answer.value {
            values.push((ns.clone(), name.clone(), String::new(), v));
        }
        if let Ok(a) = answer.active {
            actives.push((ns.clone(), name.clone(), String::new(), f64::from(u8::from(a))));
        }
        unavailable.push((
            ns.clone(),
            name.clone(),
            String::new(),
            f64::from(u8::from(answer.value.is_err())),
        ));
        if let Some(sig) = &g.signals {
            ready.push((ns.clone(), name.clone(), String::new(), f64::from(sig.ready)));
            let readings = [
                ("waiting", sig.waiting),
                ("running", sig.running),
                ("kv_cache_usage", sig.kv_cache_usage),
                ("gpu_utilization", sig.gpu_utilization),
            ];
            let mut oldest: Option<f64> = None;
            for (kind, r) in readings {
                if let Some(r) = r {
                    signals.push((ns.clone(), name.clone(), kind, r.value));
                    oldest = Some(oldest.unwrap_or(0.0).max(r.age.as_secs_f64()));
                }
            }
            if let Some(a) = oldest {
                ages.push((ns, name, String::new(), a));
            }
        }
    }
    let tables: [(&str, &str, &Vec<Row>); 6] = [
        (
            "gpuscale_scaler_desired_replicas",
            "The policy's desired replicas, by deciding rule.",
            &desired,
        ),
        (
            "gpuscale_scaler_metric_value",
            "The value GetMetrics returns.",
            &values,
        ),
        (
            "gpuscale_scaler_active",
            "1 if IsActive says the workload should be awake.",
            &actives,
        ),
        (
            "gpuscale_scaler_unavailable",
            "1 while GetMetrics answers UNAVAILABLE (missing or stale data).",
            &unavailable,
        ),
        (
            "gpuscale_scaler_signal_age_seconds",
            "Age of the oldest signal behind the last decision.",
            &ages,
        ),
        (
            "gpuscale_scaler_ready_replicas",
            "Ready replicas behind the last decision.",
            &ready,
        ),
    ];
    for (name, help, rows) in tables {
        if rows.is_empty() {
            continue;
        }
        w.family(name, "gauge", help);
        for (ns, wl, rule, v) in rows.iter() {
            w.sample(name, &[("namespace", ns), ("workload", wl), ("rule", rule)], *v);
        }
    }
    if !multi.is_empty() {
        w.family(
            "gpuscale_scaler_workload_triggers",
            "gauge",
            "Distinct trigger metadata naming one Deployment, where more than one (see /debug/workloads).",
        );
    }
    for (k, n) in multi {
        w.sample(
            "gpuscale_scaler_workload_triggers",
            &[("namespace", &k.namespace), ("workload", &k.name)],
            *n as f64,
        );
    }
    if !signals.is_empty() {
        w.family(
            "gpuscale_scaler_signal",
            "gauge",
            "Aggregated signals behind the last decision.",
        );
        for (ns, wl, kind, v) in &signals {
            w.sample(
                "gpuscale_scaler_signal",
                &[("namespace", ns), ("workload", wl), ("signal", kind)],
                *v,
            );
        }
    }
    if let Some(a) = &s.activator {
        a.write_metrics(&mut w);
    }
    w.finish()
}
