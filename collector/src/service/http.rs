//! `/metrics` (held reads with `wait`/`after`, the contract cut with `series=contract`),
//! `/healthz` and `/readyz`, all answered from the last rendered [`Pages`](super::Pages).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{MAX_WAIT, MAX_WAITERS, SharedPages};
use gpuscale_contract as contract;
use gpuscale_expfmt::write::Format;

/// What a `/metrics` request asks beyond the page: `wait=SECONDS&after=TIMESTAMP` holds it
/// until a page whose readings changed after `after` exists, or answers at `wait` with the
/// current page (a heartbeat: silence is never "no change", and it carries the readings' new
/// times); either alone, or neither, answers at once.
/// `series=contract` asks for the scaler's families only. Other parameters are ignored.
#[derive(Debug, Default, PartialEq)]
struct MetricsQuery {
    hold: Option<(Duration, f64)>,
    contract: bool,
}

fn metrics_query(query: Option<&str>) -> Result<MetricsQuery, String> {
    let (mut wait, mut after, mut contract) = (None, None, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| {
            format!(
                "`{k}={}`: expected {what}",
                gpuscale_policies::spec::brief_to(v, 40)
            )
        };
        match k {
            "wait" => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => wait = Some(Duration::from_secs_f64(x).min(MAX_WAIT)),
                _ => return Err(bad("seconds >= 0 (at most 30 are waited)")),
            },
            "after" => match v.parse::<f64>() {
                Ok(x) if x.is_finite() => after = Some(x),
                _ => return Err(bad("the Unix time of the page already seen")),
            },
            "series" => contract = v == "contract",
            _ => {}
        }
    }
    Ok(MetricsQuery {
        hold: wait.zip(after),
        contract,
    })
}

async fn metrics(
    State(pages): State<SharedPages>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let asked = match metrics_query(query.as_deref()) {
        Ok(q) => q,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    if let Some((wait, after)) = asked.hold {
        wait_for_page(&pages, wait, after).await;
    }
    let contract = asked.contract;
    let body = match pages.read() {
        Ok(p) if p.ready => match (format, contract) {
            (Format::OpenMetrics, true) => p.contract.clone(),
            (Format::OpenMetrics, false) => p.openmetrics.clone(),
            (Format::Prometheus, true) => {
                gpuscale_expfmt::write::only_families(&p.prometheus, &contract::SCALER_FAMILIES)
            }
            (Format::Prometheus, false) => p.prometheus.clone(),
        },
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "no complete tick yet\n").into_response(),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// Wait up to `wait` for a page whose values changed after `after`, the render time of the page
/// the reader has (the scaler's push path). A page that only re-dates the same readings is not
/// news: the heartbeat at `wait` carries the new times.
async fn wait_for_page(pages: &SharedPages, wait: Duration, after: f64) {
    use std::sync::atomic::Ordering;
    let (changed, waiters) = match pages.read() {
        Ok(p) => (p.changed.clone(), p.waiters.clone()),
        Err(_) => return,
    };
    if waiters.fetch_add(1, Ordering::Relaxed) >= MAX_WAITERS {
        waiters.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let newer = pages
            .read()
            .map(|p| p.ready && p.values_at > after)
            .unwrap_or(true);
        if newer || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    waiters.fetch_sub(1, Ordering::Relaxed);
}

async fn readyz(State(pages): State<SharedPages>) -> Response {
    match pages.read() {
        Ok(p) if p.ready => (StatusCode::OK, "ready\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete tick\n",
        )
            .into_response(),
    }
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn router(pages: SharedPages) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(pages)
}
