//! The activator: a reverse proxy that holds requests while a workload wakes from zero, so the
//! first request after a quiet hour is served rather than refused.
//!
//! Each route (a Host or a path prefix) leads to one workload's upstream. A per-workload
//! [`Gate`] admits at most `concurrency x ready replicas` requests at once; the rest wait in a
//! bounded FIFO queue, and while anything waits the scaler is told (in-process, or by
//! `POST /v1/held` when the activator runs on its own) so StreamIsActive fires at once. When the
//! upstream becomes ready the queue drains in arrival order, never faster than the capacity:
//! the first replica of a GPU model is not flooded (KEDA HTTP add-on issue #1038). A request
//! that waits longer than the cold-start timeout, or finds the queue full, gets 503 with
//! `Retry-After`; a client that goes away frees its place. Responses stream through unbuffered;
//! request bodies are read into memory only while held, up to a limit (413 beyond it).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use gpuscale_collector::budget::{Budget, Reservation};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{oneshot, watch};

use crate::telemetry::Histogram;
use crate::trigger::WorkloadKey;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The proxy's body type, both ways.
pub type Body = BoxBody<Bytes, BoxError>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// What a route matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    /// The request's Host (port ignored).
    Host(String),
    /// A path prefix (longest wins); the path is forwarded unchanged.
    Prefix(String),
}

/// One route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// What it matches.
    pub matches: Match,
    /// The workload behind it.
    pub workload: WorkloadKey,
    /// `http://host:port` of the workload's Service.
    pub upstream: Uri,
}

impl Route {
    /// Parse `HOST=NAMESPACE/WORKLOAD=URL` or `/PREFIX=NAMESPACE/WORKLOAD=URL`.
    pub fn parse(s: &str) -> Result<Route, String> {
        let usage = "expected HOST=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT] or /PATH-PREFIX=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT], e.g. qwen.example.com=llm/qwen=http://qwen-predictor.llm:80";
        let mut parts = s.splitn(3, '=');
        let (Some(m), Some(w), Some(u)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("route `{s}`: {usage}"));
        };
        let (ns, name) = w
            .split_once('/')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .ok_or_else(|| format!("route `{s}`: workload `{w}` is not NAMESPACE/NAME; {usage}"))?;
        let normalized = gpuscale_collector::scrape::normalize_url("upstream", u, "")
            .map_err(|e| format!("route `{}`: {e}", gpuscale_collector::contract::quote(s, 200)))?;
        let upstream: Uri = normalized
            .parse()
            .map_err(|e| format!("route `{s}`: upstream `{u}`: {e}; {usage}"))?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(format!(
                "route `{s}`: upstream `{u}` must be http://host[:port] (TLS to the upstream is not supported)"
            ));
        }
        let matches = if m.starts_with('/') {
            Match::Prefix(m.to_string())
        } else if m.is_empty() {
            return Err(format!("route `{s}`: empty host; {usage}"));
        } else {
            Match::Host(m.to_ascii_lowercase())
        };
        Ok(Route {
            matches,
            workload: WorkloadKey {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            upstream,
        })
    }
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

/// Where held-request counts go.
#[derive(Clone)]
pub enum Reporter {
    /// The scaler in this process.
    InProcess(Arc<crate::workloads::Workloads>, crate::poll::Clock),
    /// A scaler elsewhere: `POST {url}/v1/held`, with an optional bearer token.
    Remote(reqwest::Client, String, Option<String>),
    /// Nowhere (tests).
    None,
}

impl Reporter {
    async fn report(&self, w: &WorkloadKey, held: usize, ready: Option<u32>) {
        match self {
            Reporter::InProcess(ws, clock) => {
                ws.held(w, held as f64, ready, clock.now());
            }
            Reporter::Remote(client, url, bearer) => {
                let body = serde_json::json!({"namespace": w.namespace, "workload": w.name, "requests": held, "ready": ready});
                let mut req = client
                    .post(format!("{url}/v1/held"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(Duration::from_secs(2));
                if let Some(token) = bearer {
                    req = req.bearer_auth(token);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(target: "gpuscale_activator", workload = %w, status = %r.status(), "scaler refused the held-request report")
                    }
                    Err(e) => {
                        tracing::warn!(target: "gpuscale_activator", workload = %w, error = %gpuscale_collector::scrape::with_causes(&e.without_url()), "cannot report held requests to the scaler")
                    }
                }
            }
            Reporter::None => {}
        }
    }
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: usize,
    capacity: usize,
    next_id: u64,
    queue: VecDeque<InLine>,
}

/// One held request: its place, and whether its body has arrived. Only a request that is
/// ready to send is released, so a slow upload never occupies a slot of the upstream.
#[derive(Debug)]
struct InLine {
    id: u64,
    tx: oneshot::Sender<()>,
    ready: bool,
}

impl GateState {
    /// Release ready requests, oldest first, while there is room.
    fn dispatch(&mut self) -> u64 {
        let mut released = 0;
        while self.in_flight < self.capacity {
            let Some(i) = self.queue.iter().position(|e| e.ready) else {
                break;
            };
            let Some(e) = self.queue.remove(i) else { break };
            if e.tx.send(()).is_ok() {
                self.in_flight += 1;
                released += 1;
            }
        }
        released
    }
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is at its bound.
    QueueFull,
    /// Held longer than the cold-start timeout.
    Timeout,
    /// The activator is shutting down.
    ShuttingDown,
}

/// One workload's admission: in-flight limit and FIFO queue.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    max_held: usize,
    /// Released from the queue, ever.
    pub releases: AtomicU64,
    held_changed: watch::Sender<usize>,
    /// Ready upstream replicas; `u64::MAX` until known.
    ready: AtomicU64,
}

/// A slot; dropping it frees the slot and releases the next held request.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        self.gate.released(n, held);
    }
}

/// A place in the queue; dropping it before it is granted gives the place up, and dropping it
/// after gives the slot back.
struct Waiting {
    gate: Arc<Gate>,
    id: u64,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.gate.lock();
        let before = s.queue.len();
        s.queue.retain(|e| e.id != self.id);
        let mut n = 0;
        if s.queue.len() == before {
            // Already granted: the slot is ours to return.
            s.in_flight = s.in_flight.saturating_sub(1);
            n = s.dispatch();
        }
        let held = s.queue.len();
        drop(s);
        self.gate.released(n, held);
    }
}

impl Gate {
    /// A gate with room for `max_held` waiting requests and no capacity yet.
    pub fn new(max_held: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState::default()),
            max_held,
            releases: AtomicU64::new(0),
            held_changed: watch::channel(0).0,
            ready: AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn released(&self, n: u64, held: usize) {
        self.releases.fetch_add(n, Ordering::Relaxed);
        self.held_changed.send_if_modified(|h| {
            let c = *h != held;
            *h = held;
            c
        });
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.lock().queue.len()
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Watch the held count.
    pub fn watch_held(&self) -> watch::Receiver<usize> {
        self.held_changed.subscribe()
    }

    /// Record how many upstream replicas are ready (reported to the scaler with the held count).
    pub fn set_ready(&self, ready: usize) {
        self.ready.store(ready as u64, Ordering::Relaxed);
    }

    /// Ready upstream replicas, once known.
    pub fn ready(&self) -> Option<u32> {
        match self.ready.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }

    /// Set how many requests may be in flight (concurrency x ready replicas) and release
    /// what now fits, oldest first.
    pub fn set_capacity(&self, capacity: usize) {
        let mut s = self.lock();
        s.capacity = capacity;
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        self.released(n, held);
    }

    /// Admit now if there is room and nobody is ahead (the request keeps its place in line
    /// from this call on), else take a place in the queue.
    pub fn enqueue(self: &Arc<Self>, shutting_down: bool) -> Result<Ticket, Refused> {
        let mut s = self.lock();
        if s.queue.is_empty() && s.in_flight < s.capacity {
            s.in_flight += 1;
            return Ok(Ticket::Now(Permit { gate: self.clone() }));
        }
        if shutting_down {
            return Err(Refused::ShuttingDown);
        }
        if s.queue.len() >= self.max_held {
            return Err(Refused::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        s.next_id += 1;
        let id = s.next_id;
        s.queue.push_back(InLine { id, tx, ready: false });
        let held = s.queue.len();
        drop(s);
        self.held_changed.send_replace(held);
        Ok(Ticket::Queued(Queued {
            rx,
            guard: Waiting {
                gate: self.clone(),
                id,
                armed: true,
            },
            started: Instant::now(),
        }))
    }

    /// [`Gate::enqueue`], then wait up to `timeout` or until `shutdown`.
    pub async fn admit(
        self: &Arc<Self>,
        timeout: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Permit, Option<Duration>), Refused> {
        let shutting_down = *shutdown.borrow();
        match self.enqueue(shutting_down)? {
            Ticket::Now(p) => Ok((p, None)),
            Ticket::Queued(q) => {
                q.ready();
                q.wait(timeout, shutdown).await.map(|(p, d)| (p, Some(d)))
            }
        }
    }
}

/// The outcome of [`Gate::enqueue`].
pub enum Ticket {
    /// Admitted.
    Now(Permit),
    /// In line.
    Queued(Queued),
}

/// A place in line.
pub struct Queued {
    rx: oneshot::Receiver<()>,
    guard: Waiting,
    started: Instant,
}

impl Queued {
    /// The request is ready to send (its body has arrived): it may now be released.
    pub fn ready(&self) {
        let gate = &self.guard.gate;
        let mut s = gate.lock();
        if let Some(e) = s.queue.iter_mut().find(|e| e.id == self.guard.id) {
            e.ready = true;
        }
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        gate.released(n, held);
    }

    /// Wait for the slot, at most `timeout` (counted from the enqueue), or until `shutdown`.
    pub async fn wait(
        mut self,
        timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(Permit, Duration), Refused> {
        let left = timeout.saturating_sub(self.started.elapsed());
        let outcome = tokio::select! {
            r = &mut self.rx => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(Refused::ShuttingDown),
            },
            () = tokio::time::sleep(left) => Err(Refused::Timeout),
            _ = shutdown.wait_for(|s| *s) => Err(Refused::ShuttingDown),
        };
        match outcome {
            Ok(()) => {
                self.guard.armed = false;
                Ok((
                    Permit {
                        gate: self.guard.gate.clone(),
                    },
                    self.started.elapsed(),
                ))
            }
            // Dropping the guard leaves the queue, or returns a slot granted meanwhile.
            Err(e) => Err(e),
        }
    }
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
    gates: Mutex<std::collections::HashMap<WorkloadKey, Arc<Gate>>>,
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
        if let Some(g) = gates.get(key) {
            return g.clone();
        }
        let g = Gate::new(self.config.max_held);
        gates.insert(key.clone(), g.clone());
        drop(gates);
        if let Some(r) = self.reporter.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            spawn_reporter(r, key.clone(), g.clone());
        }
        g
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
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("(none)");
            let mut r = Response::new(full(format!(
                "no route for host {} path {}: routes are set with --route, --routes-file or --activator-kube\n",
                gpuscale_collector::contract::quote(host, 200),
                gpuscale_collector::contract::quote(req.uri().path(), 200)
            )));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        };
        let (parts, body) = req.into_parts();
        let wait = self.config.cold_start_timeout;
        let shutdown = self.shutdown.subscribe();
        // Take a place in line now, before reading anything, so arrival order is kept.
        let ticket = match rs.gate.enqueue(*shutdown.borrow()) {
            Ok(t) => t,
            Err(e) => return self.refused(e, &rs.route.workload),
        };
        let (permit, body, held_for) = match ticket {
            // Admitted at once: the body streams through.
            Ticket::Now(p) => (p, body.map_err(|e| Box::new(e) as BoxError).boxed(), None),
            Ticket::Queued(q) => {
                // Held: read the body now (bounded in size, in total and in time) so it is
                // ready on release; only then may the request be released.
                let chunks = match self.read_held_body(body, &rs.route.workload).await {
                    Ok(c) => c,
                    Err(r) => return r,
                };
                q.ready();
                // The reservation lives in the body: it is given back when the body is dropped
                // (sent upstream, or the request refused).
                let (chunks, reserved) = chunks;
                let frames = futures_util::stream::iter(chunks).map(move |b| {
                    let _ = &reserved;
                    Ok::<_, BoxError>(hyper::body::Frame::data(b))
                });
                let body = BodyExt::boxed(http_body_util::StreamBody::new(frames));
                match q.wait(wait, shutdown).await {
                    Ok((p, held)) => (p, body, Some(held)),
                    Err(e) => return self.refused(e, &rs.route.workload),
                }
            }
        };
        if let Some(h) = held_for {
            self.telemetry.hold_time.observe(h);
        }
        let mut parts = parts;
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{pq}", rs.route.upstream.to_string().trim_end_matches('/'));
        parts.uri = match uri.parse() {
            Ok(u) => u,
            Err(e) => {
                let mut r = Response::new(full(format!("bad upstream URI {uri}: {e}\n")));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return r;
            }
        };
        // The upstream speaks HTTP/1.1; an HTTP/2 client's request is translated.
        parts.version = http::Version::HTTP_11;
        if let Some(host) = parts.headers.get(header::HOST).cloned() {
            parts.headers.insert("x-forwarded-host", host);
        }
        if let Some(a) = rs.route.upstream.authority()
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
        let resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                self.telemetry.upstream_errors.fetch_add(1, Ordering::Relaxed);
                let mut r = Response::new(full(format!(
                    "upstream {}: {e}\n",
                    gpuscale_collector::contract::redact_url(&rs.route.upstream.to_string())
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

    /// Report held counts to the scaler (for every gate, present and future), and probe the
    /// upstream of every static route to set its capacity. Kube-mode routes get their
    /// capacity from EndpointSlices instead ([`crate::cluster::activator_routes`]).
    pub fn spawn_readiness(self: &Arc<Self>, reporter: Reporter) {
        *self.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(reporter.clone());
        let existing: Vec<(WorkloadKey, Arc<Gate>)> = self
            .gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        for (key, gate) in existing {
            spawn_reporter(reporter.clone(), key, gate);
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
                        tracing::info!(target: "gpuscale_activator", upstream = %gpuscale_collector::contract::redact_url(&upstream.to_string()), ready = ok, "upstream readiness changed");
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
    pub fn write_metrics(&self, w: &mut gpuscale_collector::exposition::Writer) {
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

/// Report a gate's held count at once on change, and every second while anything is held so
/// the report stays fresh at the scaler.
fn spawn_reporter(reporter: Reporter, key: WorkloadKey, gate: Arc<Gate>) {
    tokio::spawn(async move {
        // Every second, zero too: the scaler takes a workload at zero replicas as idle only on
        // a fresh report, so silence reads as unknown, never as nothing held.
        let mut rx = gate.watch_held();
        loop {
            let held = *rx.borrow_and_update();
            reporter.report(&key, held, gate.ready()).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    });
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
    let builder = gpuscale_collector::server::builder();
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
            if !gpuscale_collector::server::first_byte(&tcp).await {
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

fn duration(v: &str) -> Result<Duration, String> {
    gpuscale_policies::spec::parse_duration("duration", v).map_err(|e| e.to_string())
}

/// The activator's flags, shared by `gpuscale-scaler` (in-process) and `gpuscale-activator`.
#[derive(clap::Args, Debug, Clone)]
pub struct ActivatorArgs {
    /// Address of the activator's proxy port. In gpuscale-scaler the activator runs only when
    /// this is set.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_LISTEN", value_parser = gpuscale_collector::cli::listen_addr)]
    pub activator_listen: Option<SocketAddr>,

    /// `HOST=NAMESPACE/WORKLOAD=http://UPSTREAM[:PORT]` or `/PREFIX=NAMESPACE/WORKLOAD=http://...`,
    /// repeatable (env: comma-separated). The Host match ignores the port; the longest prefix
    /// wins; paths are forwarded unchanged.
    #[arg(long = "route", env = "GPUSCALE_ACTIVATOR_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,

    /// A file of routes, one per line in the --route syntax (`#` starts a comment); read at
    /// start, added to --route.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_ROUTES_FILE")]
    pub routes_file: Option<std::path::PathBuf>,

    /// Also route to Services annotated `gpuscale.io/activate: "true"` (any namespace), with
    /// readiness from their EndpointSlices; uses the in-cluster service account or KUBECONFIG.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_KUBE")]
    pub activator_kube: bool,

    /// Requests one ready replica takes at once (vLLM's max concurrent sequences is a good
    /// start; 0 = no limit once ready). Held requests are released at most this many per
    /// ready replica, so the first replica is not flooded.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_CONCURRENCY", default_value_t = 32)]
    pub activator_concurrency: usize,

    /// Most requests held per workload; beyond it 503 with Retry-After.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_HELD", default_value_t = 1000)]
    pub activator_max_held: usize,

    /// Longest a request is held before 503 with Retry-After (model load time plus margin).
    #[arg(long, env = "GPUSCALE_ACTIVATOR_COLD_START_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub activator_cold_start_timeout: Duration,

    /// Largest request body held in memory while a workload wakes; larger gets 413.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub activator_max_body_bytes: usize,

    /// Request bodies held in memory while workloads wake, all together (bytes); beyond it a
    /// held request gets 503 with Retry-After. Keep it well under the container's memory limit.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_MAX_HELD_BYTES", default_value_t = 256 << 20)]
    pub activator_max_held_bytes: usize,

    /// Longest a held request's body may take to arrive; a slower upload gets 408 and never
    /// holds a release slot meanwhile.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_BODY_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub activator_body_timeout: Duration,

    /// Path probed on each upstream to tell it is ready (vLLM, SGLang and TGI serve /health).
    #[arg(long, env = "GPUSCALE_ACTIVATOR_PROBE_PATH", default_value = "/health")]
    pub activator_probe_path: String,

    /// Time between readiness probes.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_PROBE_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub activator_probe_interval: Duration,

    /// On shutdown, how long held requests keep their chance to be served before 503.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub activator_drain_timeout: Duration,
}

impl ActivatorArgs {
    /// Build the activator, start its readiness and reporting tasks, and with
    /// `--activator-kube` its routes from annotated Services. The caller binds and serves.
    pub async fn start(&self, reporter: Reporter) -> anyhow::Result<Arc<Activator>> {
        let activator = Activator::new(self.config().map_err(anyhow::Error::msg)?);
        activator.spawn_readiness(reporter);
        if self.activator_kube {
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!(
                    "--activator-kube: {e}: run in a pod with a service account, or set KUBECONFIG"
                )
            })?;
            tokio::spawn(crate::cluster::activator_routes(
                client,
                activator.clone(),
                self.activator_probe_interval,
            ));
        }
        Ok(activator)
    }

    /// The config, with every route parsed.
    pub fn config(&self) -> Result<Config, String> {
        let mut lines: Vec<String> = self.routes.clone();
        if let Some(f) = &self.routes_file {
            let text =
                std::fs::read_to_string(f).map_err(|e| format!("--routes-file {}: {e}", f.display()))?;
            for (i, l) in text.lines().enumerate() {
                let l = l.split('#').next().unwrap_or("").trim();
                if l.is_empty() {
                    continue;
                }
                Route::parse(l).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
                lines.push(l.to_string());
            }
        }
        if lines.is_empty() && !self.activator_kube {
            return Err("the activator needs at least one --route (or --routes-file, or --activator-kube), e.g. --route qwen.example.com=llm/qwen=http://qwen-predictor.llm:80".into());
        }
        if !self.activator_probe_path.starts_with('/') {
            return Err(format!(
                "--activator-probe-path `{}` must start with /",
                self.activator_probe_path
            ));
        }
        Ok(Config {
            routes: lines.iter().map(|r| Route::parse(r)).collect::<Result<_, _>>()?,
            concurrency: self.activator_concurrency,
            max_held: self.activator_max_held,
            cold_start_timeout: self.activator_cold_start_timeout,
            max_body_bytes: self.activator_max_body_bytes,
            max_held_bytes: self.activator_max_held_bytes,
            body_timeout: self.activator_body_timeout,
            probe_path: self.activator_probe_path.clone(),
            probe_interval: self.activator_probe_interval,
            drain_timeout: self.activator_drain_timeout,
        })
    }
}
