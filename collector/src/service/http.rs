//! `/metrics` (held reads with `wait`/`after`, the contract cut with `series=contract`),
//! `/healthz` and `/readyz`, all answered from the last rendered [`Pages`](super::Pages).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// `series=contract` asks for the scaler's families only. `stream=1` with `wait` keeps the
/// answer open and writes page after page into it (see [`contract::STREAM_HEADER`]). Other parameters
/// are ignored.
#[derive(Debug, Default, PartialEq)]
struct MetricsQuery {
    hold: Option<(Duration, f64)>,
    contract: bool,
    /// `stream=1`: the heartbeat interval (the `wait` asked for).
    stream: Option<Duration>,
}

/// How long one stream stays open before the collector ends it (the reader opens another at
/// once): what bounds a connection whose reader is gone without a reset.
pub const MAX_STREAM: Duration = Duration::from_secs(300);

fn metrics_query(query: Option<&str>) -> Result<MetricsQuery, String> {
    let (mut wait, mut after, mut contract, mut stream) = (None, None, false, false);
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
            "stream" => match v {
                "1" | "true" => stream = true,
                "0" | "false" => stream = false,
                _ => return Err(bad("1 or 0")),
            },
            _ => {}
        }
    }
    let stream = match (stream, wait) {
        (false, _) => None,
        (true, Some(w)) if !w.is_zero() => Some(w),
        (true, _) => return Err("`stream=1` needs `wait=SECONDS` above 0, the heartbeat interval".into()),
    };
    Ok(MetricsQuery {
        hold: wait.zip(after),
        contract,
        stream,
    })
}

/// The page a request asks for, if a tick has completed, with when its readings last changed.
fn page_for(pages: &SharedPages, format: Format, contract: bool) -> Option<(String, f64)> {
    let p = pages.read().ok().filter(|p| p.ready)?;
    let body = match (format, contract) {
        (Format::OpenMetrics, true) => p.contract.clone(),
        (Format::OpenMetrics, false) => p.openmetrics.clone(),
        (Format::Prometheus, true) => {
            gpuscale_expfmt::write::only_families(&p.prometheus, &contract::SCALER_FAMILIES)
        }
        (Format::Prometheus, false) => p.prometheus.clone(),
    };
    Some((body, p.values_at))
}

/// One of the [`MAX_WAITERS`] places, held until dropped; `None` when all are taken.
struct Waiter(Arc<AtomicUsize>);

impl Waiter {
    fn take(pages: &SharedPages) -> Option<(Waiter, Arc<tokio::sync::Notify>)> {
        let (changed, waiters) = pages
            .read()
            .ok()
            .map(|p| (p.changed.clone(), p.waiters.clone()))?;
        if waiters.fetch_add(1, Ordering::Relaxed) >= MAX_WAITERS {
            waiters.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some((Waiter(waiters), changed))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Until a page whose values changed after `after` exists, or `deadline`.
async fn newer_than(
    pages: &SharedPages,
    changed: &tokio::sync::Notify,
    after: f64,
    deadline: tokio::time::Instant,
) {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let newer = pages
            .read()
            .map(|p| p.ready && p.values_at > after)
            .unwrap_or(true);
        if newer || tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

/// A stream of pages (see [`contract::STREAM_HEADER`]), written by a task of its own into a channel of
/// one page: a reader that falls behind gets the newest page next, never a backlog. The task
/// ends when the reader goes (the send fails) or after [`MAX_STREAM`].
fn stream_pages(
    pages: SharedPages,
    contract: bool,
    heartbeat: Duration,
    waiter: Waiter,
    changed: Arc<tokio::sync::Notify>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let _waiter = waiter;
        let end = tokio::time::Instant::now() + MAX_STREAM;
        let mut after = f64::NEG_INFINITY;
        loop {
            let deadline = (tokio::time::Instant::now() + heartbeat).min(end);
            newer_than(&pages, &changed, after, deadline).await;
            if tokio::time::Instant::now() >= end {
                return;
            }
            let Some((page, values_at)) = page_for(&pages, Format::OpenMetrics, contract) else {
                return; // no complete tick: the reader reads again
            };
            after = values_at;
            if tx.send(Ok(page)).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (
        [
            (header::CONTENT_TYPE, Format::OpenMetrics.content_type()),
            (header::HeaderName::from_static(contract::STREAM_HEADER), "pages"),
        ],
        body,
    )
        .into_response()
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
    let ready = pages.read().is_ok_and(|p| p.ready);
    if let Some(heartbeat) = asked.stream.filter(|_| ready) {
        if format != Format::OpenMetrics {
            return (
                StatusCode::NOT_ACCEPTABLE,
                "`stream=1` writes OpenMetrics pages (each ends in `# EOF`): ask with `Accept: application/openmetrics-text`\n",
            )
                .into_response();
        }
        // Past the bound, one page at once: the reader holds reads instead.
        if let Some((waiter, changed)) = Waiter::take(&pages) {
            return stream_pages(pages, asked.contract, heartbeat, waiter, changed);
        }
    } else if let Some((wait, after)) = asked.hold {
        wait_for_page(&pages, wait, after).await;
    }
    match page_for(&pages, format, asked.contract) {
        Some((body, _)) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no complete tick yet\n").into_response(),
    }
}

/// Wait up to `wait` for a page whose values changed after `after`, the render time of the page
/// the reader has (the scaler's push path). A page that only re-dates the same readings is not
/// news: the heartbeat at `wait` carries the new times.
async fn wait_for_page(pages: &SharedPages, wait: Duration, after: f64) {
    let Some((_waiter, changed)) = Waiter::take(pages) else {
        return;
    };
    newer_than(pages, &changed, after, tokio::time::Instant::now() + wait).await;
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
