//! The proxy: routing a request to its workload, admitting it through the workload's gate or
//! holding it (body read within bounds), forwarding it upstream, probing upstream readiness,
//! and draining on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use gpuscale_edge::budget::{Budget, Reservation};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use gpuscale_expfmt::write::Histogram;

use crate::gate::{Gate, Permit, Refused, Ticket};
use crate::report::{Reporter, spawn_reporter};
use crate::route::{Match, Route};
use gpuscale_contract::WorkloadKey;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The proxy's body type, both ways.
pub type Body = BoxBody<Bytes, BoxError>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// How the activator behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Routes.
    pub routes: Vec<Route>,
    /// Requests one ready replica takes at once (0 = unlimited).
    pub concurrency: usize,
    /// Most requests held per workload.
    pub max_held: usize,
    /// Longest a request is held before 503.
    pub cold_start_timeout: Duration,
    /// Largest request body read while held.
    pub max_body_bytes: usize,
    /// Held request bodies in memory, all workloads together; beyond it 503 + Retry-After.
    pub max_held_bytes: usize,
    /// Longest a held request's body may take to arrive (408 after it).
    pub body_timeout: Duration,
    /// Path probed on the upstream to tell it is ready.
    pub probe_path: String,
    /// Between probes.
    pub probe_interval: Duration,
    /// On shutdown, how long held requests get to be served before they are answered 503.
    pub drain_timeout: Duration,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct ActivatorTelemetry {
    /// Time requests spent held.
    pub hold_time: Histogram,
    /// Time from receipt to the upstream's response headers, for requests not held.
    pub pass_through: Histogram,
    /// 503s: queue full.
    pub queue_full: AtomicU64,
    /// 503s: held past the cold-start timeout.
    pub timeouts: AtomicU64,
    /// 503s: shutting down.
    pub shutdown: AtomicU64,
    /// 413s.
    pub too_large: AtomicU64,
    /// 408s: a held request's body did not arrive in time.
    pub body_timeouts: AtomicU64,
    /// 503s: held bodies at their total bound.
    pub held_bytes_full: AtomicU64,
    /// 502s.
    pub upstream_errors: AtomicU64,
}

/// A workload's gate and the task reporting it, aborted when the gate is dropped.
struct GateEntry {
    gate: Arc<Gate>,
    reporter: Option<tokio::task::AbortHandle>,
}

#[derive(Clone)]
struct RouteState {
    route: Arc<Route>,
    gate: Arc<Gate>,
}

/// The proxy.
pub struct Activator {
    config: Config,
    /// Replaced whole when routes change (kube mode); requests read a snapshot.
    routes: std::sync::RwLock<Arc<Vec<RouteState>>>,
    /// Routed workloads' gates, and unrouted ones until they hold nothing ([`Activator::prune`]).
    gates: Mutex<std::collections::HashMap<WorkloadKey, GateEntry>>,
    reporter: Mutex<Option<Reporter>>,
    /// Bytes of held request bodies in memory, all workloads (`--activator-max-held-bytes`).
    held_bytes: Arc<Budget>,
    /// Set once shutdown has begun: `/readyz` answers 503 so no new traffic is sent here.
    draining: std::sync::atomic::AtomicBool,
    client: Client<HttpConnector, Body>,
    /// Counters.
    pub telemetry: ActivatorTelemetry,
    shutdown: watch::Sender<bool>,
}

impl Activator {
    /// Build from config; one gate per workload.
    pub fn new(config: Config) -> Arc<Activator> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let a = Arc::new(Activator {
            routes: std::sync::RwLock::new(Arc::new(Vec::new())),
            gates: Mutex::new(std::collections::HashMap::new()),
            reporter: Mutex::new(None),
            held_bytes: Budget::new(config.max_held_bytes),
            draining: std::sync::atomic::AtomicBool::new(false),
            client,
            telemetry: ActivatorTelemetry::default(),
            shutdown: watch::channel(false).0,
            config,
        });
        let routes = a.config.routes.clone();
        a.set_routes(routes);
        a
    }

    /// The gate of a workload, created (with its reporter task) on first use.
    pub fn gate(self: &Arc<Self>, key: &WorkloadKey) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = gates.get(key) {
            return e.gate.clone();
        }
        let g = Gate::new(self.config.max_held);
        let reporter = self
            .reporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|r| spawn_reporter(r, key.clone(), g.clone()));
        gates.insert(
            key.clone(),
            GateEntry {
                gate: g.clone(),
                reporter,
            },
        );
        g
    }

    /// Drop the gates of workloads no route names any more once they hold and serve nothing,
    /// with their reporter tasks, so route churn (kube mode) does not grow the table or the
    /// reports. Called on every route change and every kube-mode refresh.
    pub fn prune(&self) {
        let routes = self.snapshot();
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|key, e| {
            let keep = routes.iter().any(|r| r.route.workload == *key)
                || e.gate.held() > 0
                || e.gate.in_flight() > 0;
            if !keep && let Some(r) = &e.reporter {
                r.abort();
            }
            keep
        });
    }

    /// How many workloads have a gate (routed, or unrouted but still holding requests).
    #[cfg(test)]
    fn gate_count(&self) -> usize {
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The routes given by flags or file.
    pub fn static_routes(&self) -> Vec<Route> {
        self.config.routes.clone()
    }

    /// Replace the routes (kube mode calls this as annotated Services change).
    pub fn set_routes(self: &Arc<Self>, routes: Vec<Route>) {
        let states: Vec<RouteState> = routes
            .into_iter()
            .map(|r| RouteState {
                gate: self.gate(&r.workload),
                route: Arc::new(r),
            })
            .collect();
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(states);
        self.prune();
    }

    fn snapshot(&self) -> Arc<Vec<RouteState>> {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every routed workload's gate, with its (first) upstream.
    pub fn gates(&self) -> Vec<(WorkloadKey, Arc<Gate>, Uri)> {
        let mut v: Vec<(WorkloadKey, Arc<Gate>, Uri)> = Vec::new();
        for r in self.snapshot().iter() {
            if !v.iter().any(|(k, _, _)| *k == r.route.workload) {
                v.push((r.route.workload.clone(), r.gate.clone(), r.route.upstream.clone()));
            }
        }
        v
    }

    fn route(&self, req: &Request<Incoming>) -> Option<RouteState> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .map(|h| h.rsplit_once(':').map_or(h, |(a, _)| a).to_ascii_lowercase());
        let path = req.uri().path();
        let routes = self.snapshot();
        let by_host = routes
            .iter()
            .find(|r| matches!(&r.route.matches, Match::Host(h) if Some(h) == host.as_ref()));
        by_host
            .or_else(|| {
                routes
                    .iter()
                    .filter_map(|r| match &r.route.matches {
                        Match::Prefix(p) if path.starts_with(p.as_str()) => Some((p.len(), r)),
                        _ => None,
                    })
                    .max_by_key(|(n, _)| *n)
                    .map(|(_, r)| r)
            })
            .cloned()
    }

    fn refused(&self, e: Refused, w: &WorkloadKey) -> Response<Body> {
        match e {
            Refused::QueueFull => {
                self.telemetry.queue_full.fetch_add(1, Ordering::Relaxed);
                self.unavailable(&format!(
                    "{w} is waking and {} requests are already held (--activator-max-held)",
                    self.config.max_held
                ))
            }
            Refused::Timeout => {
                self.telemetry.timeouts.fetch_add(1, Ordering::Relaxed);
                self.unavailable(&format!(
                    "{w} did not become ready within {:?} (--activator-cold-start-timeout)",
                    self.config.cold_start_timeout
                ))
            }
            Refused::ShuttingDown => {
                self.telemetry.shutdown.fetch_add(1, Ordering::Relaxed);
                self.unavailable("the activator is shutting down; retry")
            }
        }
    }

    fn unavailable(&self, why: &str) -> Response<Body> {
        let secs = self.config.cold_start_timeout.as_secs().clamp(1, 30);
        let mut r = Response::new(full(format!("{why}\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }

    /// Read a held request's body: at most `max_body_bytes` (413), within `body_timeout`
    /// (408), and within what is left of `max_held_bytes` for all held bodies (503).
    async fn read_held_body(
        &self,
        mut body: Incoming,
        w: &WorkloadKey,
    ) -> Result<(Vec<Bytes>, Reservation), Response<Body>> {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut reserved = self.held_bytes.reserve();
        let deadline = tokio::time::sleep(self.config.body_timeout);
        tokio::pin!(deadline);
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = &mut deadline => {
                    self.telemetry.body_timeouts.fetch_add(1, Ordering::Relaxed);
                    let mut r = Response::new(full(format!(
                        "the request body did not arrive within {:?} (--activator-body-timeout)\n",
                        self.config.body_timeout
                    )));
                    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
                    return Err(r);
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    let mut r = Response::new(full(format!("reading the request body: {e}\n")));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return Err(r);
                }
            };
            if reserved.len() + data.len() > self.config.max_body_bytes {
                self.telemetry.too_large.fetch_add(1, Ordering::Relaxed);
                let mut r = Response::new(full(format!(
                    "request body over {} bytes cannot be held while {w} wakes (--activator-max-body-bytes)\n",
                    self.config.max_body_bytes
                )));
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return Err(r);
            }
            if !reserved.take(data.len()) {
                self.telemetry.held_bytes_full.fetch_add(1, Ordering::Relaxed);
                return Err(self.unavailable(&format!(
                    "held request bodies already take {} bytes (--activator-max-held-bytes) while workloads wake",
                    self.config.max_held_bytes
                )));
            }
            chunks.push(data);
        }
        Ok((chunks, reserved))
    }

    /// Handle one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let received = Instant::now();
        let Some(rs) = self.route(&req) else {
            return no_route(&req);
        };
        let (parts, body) = req.into_parts();
        let (permit, body, held_for) = match self.admit(&rs, body).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        if let Some(h) = held_for {
            self.telemetry.hold_time.observe(h);
        }
        let parts = match to_upstream(parts, &rs.route.upstream) {
            Ok(p) => p,
            Err(why) => {
                let mut r = Response::new(full(format!("{why}\n")));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        let resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                self.telemetry.upstream_errors.fetch_add(1, Ordering::Relaxed);
                let mut r = Response::new(full(format!(
                    "upstream {}: {e}\n",
                    gpuscale_contract::redact_url(&rs.route.upstream.to_string())
                )));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        if held_for.is_none() {
            self.telemetry.pass_through.observe(received.elapsed());
        }
        let (mut parts, body) = resp.into_parts();
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            parts.headers.remove(h);
        }
        // The slot is held until the response body ends: streaming tokens count as in flight.
        let body = PermitBody {
            inner: body,
            _permit: permit,
        };
        Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
    }

    /// Admission: a slot now (the body streams through), or a place in line taken before
    /// anything is read (so arrival order is kept), the body read within its bounds, and the
    /// wait for a slot. The refusal, as the response to send, otherwise.
    async fn admit(
        &self,
        rs: &RouteState,
        body: Incoming,
    ) -> Result<(Permit, Body, Option<Duration>), Response<Body>> {
        let shutdown = self.shutdown.subscribe();
        let ticket = rs
            .gate
            .enqueue(*shutdown.borrow())
            .map_err(|e| self.refused(e, &rs.route.workload))?;
        match ticket {
            Ticket::Now(p) => Ok((p, body.map_err(|e| Box::new(e) as BoxError).boxed(), None)),
            Ticket::Queued(q) => {
                // Held: read the body now (bounded in size, in total and in time) so it is
                // ready on release; only then may the request be released.
                let (chunks, reserved) = self.read_held_body(body, &rs.route.workload).await?;
                q.ready();
                // The reservation lives in the body: it is given back when the body is dropped
                // (sent upstream, or the request refused).
                let frames = futures_util::stream::iter(chunks).map(move |b| {
                    let _ = &reserved;
                    Ok::<_, BoxError>(hyper::body::Frame::data(b))
                });
                let body = BodyExt::boxed(http_body_util::StreamBody::new(frames));
                let (p, held) = q
                    .wait(self.config.cold_start_timeout, shutdown)
                    .await
                    .map_err(|e| self.refused(e, &rs.route.workload))?;
                Ok((p, body, Some(held)))
            }
        }
    }

    /// Report held counts to the scaler (for every gate, present and future), and probe the
    /// upstream of every static route to set its capacity. Kube-mode routes get their
    /// capacity from EndpointSlices instead ([`crate::kube_routes::activator_routes`]).
    pub fn spawn_readiness(self: &Arc<Self>, reporter: Reporter) {
        *self.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(reporter.clone());
        for (key, e) in self.gates.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            if let Some(old) =
                e.reporter
                    .replace(spawn_reporter(reporter.clone(), key.clone(), e.gate.clone()))
            {
                old.abort();
            }
        }
        let mut probed: Vec<&WorkloadKey> = Vec::new();
        for r in &self.config.routes {
            if probed.contains(&&r.workload) {
                continue;
            }
            probed.push(&r.workload);
            let (gate, upstream) = (self.gate(&r.workload), r.upstream.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let probe = format!(
                    "{}{}",
                    upstream.to_string().trim_end_matches('/'),
                    me.config.probe_path
                );
                let client = reqwest::Client::new();
                let mut ready = false;
                let mut tick = tokio::time::interval(me.config.probe_interval);
                loop {
                    tick.tick().await;
                    let ok = matches!(
                        client.get(&probe).timeout(Duration::from_secs(2)).send().await,
                        Ok(r) if r.status().is_success()
                    );
                    if ok != ready {
                        tracing::info!(target: "gpuscale_activator", upstream = %gpuscale_contract::redact_url(&upstream.to_string()), ready = ok, "upstream readiness changed");
                        ready = ok;
                    }
                    gate.set_ready(usize::from(ok));
                    gate.set_capacity(me.capacity(usize::from(ok)));
                }
            });
        }
    }

    /// Requests in flight allowed for `ready` replicas.
    pub fn capacity(&self, ready: usize) -> usize {
        match (self.config.concurrency, ready) {
            (_, 0) => 0,
            (0, _) => usize::MAX,
            (c, r) => c.saturating_mul(r),
        }
    }

    /// Whether shutdown has begun (the listener is closed; held requests are draining).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start shutting down: new and held requests are answered 503 with Retry-After.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Render the activator's series into `w`.
    pub fn write_metrics(&self, w: &mut gpuscale_expfmt::write::Writer) {
        let gates = self.gates();
        w.family(
            "gpuscale_activator_requests_held",
            "gauge",
            "Requests waiting for their workload to wake.",
        );
        for (k, g, _) in &gates {
            w.sample(
                "gpuscale_activator_requests_held",
                &[("namespace", &k.namespace), ("workload", &k.name)],
                g.held() as f64,
            );
        }
        w.family(
            "gpuscale_activator_requests_in_flight",
            "gauge",
            "Requests admitted to the upstream and not finished.",
        );
        for (k, g, _) in &gates {
            w.sample(
                "gpuscale_activator_requests_in_flight",
                &[("namespace", &k.namespace), ("workload", &k.name)],
                g.in_flight() as f64,
            );
        }
        w.family(
            "gpuscale_activator_releases",
            "counter",
            "Held requests released to the upstream.",
        );
        for (k, g, _) in &gates {
            w.sample(
                "gpuscale_activator_releases_total",
                &[("namespace", &k.namespace), ("workload", &k.name)],
                g.releases.load(Ordering::Relaxed) as f64,
            );
        }
        let t = &self.telemetry;
        w.family(
            "gpuscale_activator_rejected",
            "counter",
            "Requests answered by the activator itself, by reason.",
        );
        for (reason, c) in [
            ("queue_full", &t.queue_full),
            ("timeout", &t.timeouts),
            ("shutdown", &t.shutdown),
            ("body_too_large", &t.too_large),
            ("body_timeout", &t.body_timeouts),
            ("held_bytes_full", &t.held_bytes_full),
            ("upstream_error", &t.upstream_errors),
        ] {
            w.sample(
                "gpuscale_activator_rejected_total",
                &[("reason", reason)],
                c.load(Ordering::Relaxed) as f64,
            );
        }
        w.family(
            "gpuscale_activator_hold_seconds",
            "histogram",
            "Time requests spent held before release.",
        );
        t.hold_time.write(w, "gpuscale_activator_hold_seconds", &[]);
        w.family(
            "gpuscale_activator_pass_through_seconds",
            "histogram",
            "Receipt to upstream response headers, for requests that were not held.",
        );
        t.pass_through
            .write(w, "gpuscale_activator_pass_through_seconds", &[]);
    }
}

/// 404 naming what was asked for and where routes come from.
fn no_route(req: &Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("(none)");
    let mut r = Response::new(full(format!(
        "no route for host {} path {}: routes are set with --route, --routes-file or --activator-kube\n",
        gpuscale_policies::spec::brief_to(host, 200),
        gpuscale_policies::spec::brief_to(req.uri().path(), 200)
    )));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// A client's request as the upstream gets it: its URI on the upstream, HTTP/1.1 (an HTTP/2
/// client's request is translated), `Host` the upstream's with the client's kept in
/// `X-Forwarded-Host`, hop-by-hop headers removed. Pure.
fn to_upstream(mut parts: http::request::Parts, upstream: &Uri) -> Result<http::request::Parts, String> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{pq}", upstream.to_string().trim_end_matches('/'));
    parts.uri = match uri.parse() {
        Ok(u) => u,
        Err(e) => return Err(format!("bad upstream URI {uri}: {e}")),
    };
    parts.version = http::Version::HTTP_11;
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert("x-forwarded-host", host);
    }
    if let Some(a) = upstream.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    Ok(parts)
}

/// A response body that keeps its request's slot until it ends.
struct PermitBody {
    inner: Incoming,
    _permit: Permit,
}

impl hyper::body::Body for PermitBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serve the proxy on `listener` (HTTP/1.1 and HTTP/2 prior knowledge) until `stop` resolves;
/// then refuse new connections, answer held requests 503 once `drain_timeout` passes, and
/// wait for open connections up to that deadline.
pub async fn serve(
    activator: Arc<Activator>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = gpuscale_edge::server::builder();
    tokio::pin!(stop);
    loop {
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target: "gpuscale_activator", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let a = activator.clone();
        let svc = hyper::service::service_fn(move |req| {
            let a = a.clone();
            async move { Ok::<_, Infallible>(a.handle(req).await) }
        });
        let (b, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // A connection that sends nothing is closed after the header timeout.
            if !gpuscale_edge::server::first_byte(&tcp).await {
                return;
            }
            let conn = b.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    activator.draining.store(true, Ordering::Relaxed);
    let deadline = activator.config.drain_timeout;
    tracing::info!(target: "gpuscale_activator",
        held = activator.gates().iter().map(|(_, g, _)| g.held()).sum::<usize>(),
        "activator draining"
    );
    // Held requests keep their chance to be served until the deadline, then get 503.
    let a = activator.clone();
    tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        a.shut_down();
    });
    if tokio::time::timeout(deadline + Duration::from_secs(1), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(target: "gpuscale_activator", "connections still open after the drain deadline; closing");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::report::HeldSink;

    #[derive(Default)]
    struct Reports(Mutex<Vec<String>>);

    impl HeldSink for Reports {
        fn held(&self, workload: &WorkloadKey, _held: usize, _ready: Option<u32>) {
            self.0.lock().unwrap().push(workload.to_string());
        }
    }

    fn config(routes: Vec<Route>) -> Config {
        Config {
            routes,
            concurrency: 1,
            max_held: 10,
            cold_start_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            max_held_bytes: 1 << 24,
            body_timeout: Duration::from_secs(5),
            probe_path: "/health".into(),
            probe_interval: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(1),
        }
    }

    fn route(s: &str) -> Route {
        Route::parse(s).unwrap()
    }

    #[test]
    fn a_request_is_rewritten_for_the_upstream() {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/completions?stream=true")
            .version(http::Version::HTTP_2)
            .header(header::HOST, "qwen.example.com")
            .header("connection", "keep-alive")
            .header("te", "trailers")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let up: Uri = "http://qwen-predictor.llm:80".parse().unwrap();
        let p = to_upstream(parts, &up).unwrap();
        assert_eq!(p.uri, "http://qwen-predictor.llm:80/v1/completions?stream=true");
        assert_eq!(p.version, http::Version::HTTP_11);
        assert_eq!(p.headers[header::HOST], "qwen-predictor.llm:80");
        assert_eq!(p.headers["x-forwarded-host"], "qwen.example.com");
        assert_eq!(p.headers["authorization"], "Bearer t", "end-to-end headers pass");
        assert!(p.headers.get("connection").is_none() && p.headers.get("te").is_none());
    }

    #[tokio::test]
    async fn a_gate_no_route_names_goes_with_its_reporter_once_it_holds_nothing() {
        let a = Activator::new(config(Vec::new()));
        let reports = Arc::new(Reports::default());
        a.spawn_readiness(Reporter::InProcess(reports.clone()));
        a.set_routes(vec![
            route("a.example=llm/a=http://127.0.0.1:9"),
            route("b.example=llm/b=http://127.0.0.1:9"),
        ]);
        assert_eq!(a.gate_count(), 2);
        // `b` holds a request when its route goes: its gate stays until the request is gone.
        let b = a.gate(&WorkloadKey {
            namespace: "llm".into(),
            name: "b".into(),
        });
        let Ok(Ticket::Queued(held)) = b.enqueue(false) else {
            panic!("a gate without capacity holds the request")
        };
        a.set_routes(vec![route("a.example=llm/a=http://127.0.0.1:9")]);
        assert_eq!(a.gate_count(), 2, "a gate holding a request is kept");
        drop(held);
        a.prune();
        assert_eq!(a.gate_count(), 1);
        // Its reporter stopped with it: within the next reports (one a second), only `a`.
        tokio::time::sleep(Duration::from_millis(100)).await;
        reports.0.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let seen = reports.0.lock().unwrap().clone();
        assert!(seen.contains(&"llm/a".to_string()), "{seen:?}");
        assert!(
            !seen.contains(&"llm/b".to_string()),
            "the dropped gate still reports: {seen:?}"
        );
    }
}
