//! Reading the collectors and deciding from what they say.
//!
//! One reader per collector asks for its `/metrics` (OpenMetrics, within `max_page_bytes`) with
//! `?series=contract&wait=W&stream=1`: the collector keeps the answer open and writes a page into
//! it whenever it renders new readings, or after `W` with the same readings (a heartbeat, so
//! silence is never read as "no change": no page within `W` plus `timeout` is a failure). A
//! collector that answers with one page instead (an older one) gets held reads,
//! `?series=contract&wait=W&after=T`: it answers as soon as it has a page newer than the one
//! seen, or after `W`. Each newer page makes the decider bring the [`View`] up to date for the
//! workloads on it and decide those (coalesced over a few milliseconds), so a queue change
//! reaches KEDA without waiting for a poll, at a cost that grows with the change, not with the
//! fleet. Every `interval`, whatever arrives, the decider decides every workload no push
//! decided within the last two such passes (readings age, keep-alives expire), and every 10 s,
//! or on a failure, a recovery or a new collector list, it combines every page afresh. A
//! collector that does not wait (`wait` 0) is read every `interval`, as plain polling.
//!
//! The collector list is a `watch` channel so that a static `--collector` list and `--kube`
//! discovery (EndpointSlices) feed the same loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use gpuscale_contract::{Clock, redact_url};

use crate::sources::aggregate::{Changed, Page, Received, Source, View};
use crate::telemetry::Telemetry;
use crate::workloads::Workloads;

/// How to poll.
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// Between decisions when nothing arrives, and between reads of a collector that does not
    /// wait.
    pub interval: Duration,
    /// How long a collector may hold a read until it has a newer page (0: plain polling).
    pub wait: Duration,
    /// Per collector read.
    pub timeout: Duration,
    /// Largest page read.
    pub max_page_bytes: usize,
    /// Reads in flight at once.
    pub max_concurrent: usize,
    /// Sent as `Authorization: Bearer ...` to every collector.
    pub bearer: Option<String>,
}

/// The poll loop's state, readable by the HTTP server.
#[derive(Default)]
pub struct Polled {
    /// Per collector address.
    pub sources: RwLock<BTreeMap<String, Source>>,
    /// The last combined view.
    pub view: RwLock<View>,
    /// Whether a round has completed.
    pub ready: std::sync::atomic::AtomicBool,
    /// What the readers stored since the last decision, for a pushed one to decide only that.
    pub changed: std::sync::Mutex<Changed>,
}

/// Collector addresses become `/metrics` URLs: `host:port`, `http://host:port` (both mean
/// `/metrics`) or a full URL; anything else is refused with the accepted forms.
pub fn metrics_url(addr: &str) -> Result<String, String> {
    gpuscale_edge::fetch::metrics_url("--collector", addr)
}

/// A page received now, on both clocks.
fn received(clock: Clock) -> Received {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Received {
        at: clock.now(),
        wall,
    }
}

/// Read one collector: OpenMetrics only (a page without `# EOF` is truncated), through the
/// contract.
async fn read_collector(
    client: &reqwest::Client,
    config: &PollConfig,
    addr: &str,
    clock: Clock,
    wait: Option<(Duration, f64)>,
) -> Result<Page, String> {
    let url = metrics_url(addr)?;
    // Only the families the scaler reads; a collector that does not know the parameter serves
    // its whole page, which reads the same.
    let sep = if url.contains('?') { '&' } else { '?' };
    let (url, timeout) = match wait {
        None => (format!("{url}{sep}series=contract"), config.timeout),
        Some((w, after)) => (
            format!("{url}{sep}series=contract&wait={}&after={after}", w.as_secs_f64()),
            config.timeout + w,
        ),
    };
    let how = gpuscale_edge::fetch::Fetch {
        openmetrics: true,
        timeout,
        max_bytes: config.max_page_bytes,
        bearer: config.bearer.as_deref(),
        keep: None,
    };
    let families = gpuscale_edge::fetch::fetch_page(client, &url, &how)
        .await
        .map_err(|e| match e {
            gpuscale_edge::fetch::ScrapeError::Parse { url, error }
                if error.kind == gpuscale_expfmt::text::Problem::Truncated =>
            {
                format!("{url}: the page is truncated ({error}); a whole collector page ends with `# EOF`")
            }
            gpuscale_edge::fetch::ScrapeError::WrongFormat { url, content_type } => format!(
                "{url} is not a gpuscale collector: it answered `{content_type}` when asked for OpenMetrics (a model server's or another exporter's page?); point --collector at a gpuscale-collector, e.g. HOST:9400"
            ),
            e => e.to_string(),
        })?;
    Page::read(&families, &redact_url(&url), received(clock)).map_err(|e| e.to_string())
}

/// How long the decider waits after a newer page, for the other collectors' pages of the same
/// moment (their renders follow the same model-server reads).
const PUSH_COALESCE: Duration = Duration::from_millis(5);
/// Pushed decisions are at least this far apart...
const PUSH_MIN_GAP: Duration = Duration::from_millis(20);
/// ...and keep deciding under this share of one core: after a pushed decision that took `d`,
/// the next pushed one waits `d * (1 / share - 1)`. A pushed decision covers only the workloads
/// on the changed pages, so this binds only when pages change faster than they can be read
/// (it bound at 5,000 nodes when every push decided all 40,000 workloads, ~120 ms each).
const PUSH_CPU_SHARE: f64 = 0.2;

/// What one decision covers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pass {
    /// Pages changed: the workloads on them.
    Pushed,
    /// The interval: every workload, on the view kept up to date page by page.
    Periodic,
    /// Every workload, on a view combined afresh from every page: the collector list changed,
    /// or it is time to (see [`FULL_COMBINE_EVERY`]).
    Full,
}

/// A periodic decision combines every page afresh at least this often, though the view is kept
/// up to date page by page: what keeps a mistake in that bookkeeping from outliving a few
/// seconds.
const FULL_COMBINE_EVERY: Duration = Duration::from_secs(10);

/// Which workloads a periodic pass may leave: those a push decided since the pass before the
/// last one began, so within the last two intervals. A busy collector's page changes once
/// every collector `--interval` (1 s by default: its model servers are read together), so on a
/// busy fleet at the defaults (a pass every 500 ms) a push decided nearly every workload within
/// the last two passes, and the pass is nearly free; leaving only those pushed since the last
/// pass, it decided about half the fleet again each time (a tenth of a core at 40,000
/// workloads). Each workload is still decided at least every three
/// intervals (1.5 s at the defaults): what only time changes (a reading ageing past
/// `maxSignalAge`, 30 s by default; a keep-alive; a scale-down window) is seen that late at most.
#[derive(Debug, Default)]
struct PeriodicPasses {
    /// When the last two began, the older first.
    began: [Option<Duration>; 2],
}

impl PeriodicPasses {
    /// A periodic pass begins at `now`: what it may leave is what a push decided at or after
    /// the returned time.
    fn begin(&mut self, now: Duration) -> Option<Duration> {
        let since = self.began[0];
        self.began = [self.began[1], Some(now)];
        since
    }
}

/// Decide: bring the view up to date with what the readers stored since the last decision
/// (only the workloads on changed pages are combined again), then decide the workloads on
/// those pages (`Pushed`) or every workload. A failure, a recovery, a first answer or a
/// changed collector list makes the view be combined afresh from every page. Whether every
/// collector has answered.
fn decide(
    collectors: &HashSet<String>,
    polled: &Polled,
    workloads: &Workloads,
    clock: Clock,
    pass: Pass,
    since: Option<Duration>,
) -> bool {
    // Taken before the sources are read: a page stored after this is in the next `changed`.
    let changed = std::mem::take(&mut *polled.changed.lock().unwrap_or_else(|e| e.into_inner()));
    if pass != Pass::Full && !changed.everything {
        if !changed.is_empty() {
            let mut view = polled.view.write().unwrap_or_else(|e| e.into_inner());
            let sources = polled.sources.read().unwrap_or_else(|e| e.into_inner());
            view.update(&sources, &changed);
        }
        // Decided under a read of the view, so /status is not held up by a pass over every
        // workload; this task is the view's only writer.
        let view = polled.view.read().unwrap_or_else(|e| e.into_inner());
        match pass {
            Pass::Pushed => workloads.tick_only(&view, changed.workloads(), clock.now()),
            _ => workloads.tick_since(&view, clock.now(), since),
        }
        // Only a first answer completes the view, and that changes everything.
        return polled.ready.load(Ordering::Relaxed);
    }
    let (view, complete) = {
        let mut sources = polled.sources.write().unwrap_or_else(|e| e.into_inner());
        sources.retain(|k, _| collectors.contains(k));
        let complete = collectors.iter().all(|c| sources.contains_key(c));
        (
            View::combine(sources.iter().map(|(k, v)| (k.as_str(), v))),
            complete,
        )
    };
    workloads.tick(&view, clock.now());
    *polled.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    complete
}

/// What one reader shares with the decider.
struct Reader {
    client: reqwest::Client,
    config: PollConfig,
    polled: Arc<Polled>,
    telemetry: Arc<Telemetry>,
    /// Told when a reader has stored a newer page (or a new failure).
    changed: Arc<tokio::sync::Notify>,
    /// Bounds the reads that are answered at once (a held read waits on the collector, not on
    /// this process, so it takes no permit).
    limit: tokio::sync::Semaphore,
    clock: Clock,
}

/// Store what a read gave for `addr` and note what it changed; whether the decider should
/// hear of it (a newer page, or a new failure). `seen` is the render time of the last page.
fn store(r: &Reader, addr: &str, result: Result<Page, String>, seen: &mut Option<f64>) -> bool {
    let mut sources = r.polled.sources.write().unwrap_or_else(|e| e.into_inner());
    let s = sources.entry(addr.to_string()).or_default();
    let mut changed = r.polled.changed.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(page) => {
            let newer = seen.is_none_or(|t| page.rendered > t);
            // A newer page from a collector whose last read was good changes only the
            // workloads on the two pages; a first page or a recovery changes the view.
            let good = s.last_ok.as_ref().filter(|_| s.error.is_none()).map(|(_, p)| p);
            if newer || good.is_none() {
                changed.replaced(addr, good, &page);
            }
            *seen = Some(page.rendered);
            s.last_ok = Some((r.clock.now(), page));
            s.error = None;
            newer
        }
        Err(e) => {
            r.telemetry.poll_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(collector = %redact_url(addr), error = %e, "collector read failed");
            // The same failure again changes nothing the view holds; a new one changes
            // every workload the collector reported.
            let newer = s.error.as_ref() != Some(&e);
            if newer {
                changed.everything = true;
            }
            s.error = Some(e);
            *seen = None;
            newer
        }
    }
}

/// An open stream of pages from a collector (see [`gpuscale_contract::STREAM_HEADER`]).
struct PageStream {
    body: hyper::body::Incoming,
    /// The connection's task, ended with the stream.
    conn: tokio::task::JoinHandle<()>,
    /// What has arrived of the next page.
    buf: Vec<u8>,
    /// How far `buf` has been searched for the page's end.
    scanned: usize,
    /// The URL, redacted, for errors.
    shown: String,
}

impl Drop for PageStream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The read buffer of a stream's connection. A connection is opened for each stream (not
/// through reqwest's pool) to fix this: hyper's adaptive buffer doubles whenever a read fills
/// it and never gives the memory back, so at 5,000 nodes, where two pages now and then wait in
/// one socket, the streams' buffers grew the scaler by about 100 MiB.
const STREAM_READ_BUF: usize = 16 * 1024;

/// Where the first page in `buf` ends (after its `# EOF` line), searching from `from`.
fn page_end(buf: &[u8], from: usize) -> Option<usize> {
    const EOF: &[u8] = b"# EOF\n";
    let start = from.saturating_sub(EOF.len());
    // Every occurrence, not the first: a HELP text may hold `# EOF` at the end of its line.
    memchr::memmem::find_iter(&buf[start..], EOF)
        .map(|i| start + i)
        .find(|&i| i == 0 || buf[i - 1] == b'\n')
        .map(|i| i + EOF.len())
}

impl PageStream {
    /// Ask `addr` for a stream; `Ok(None)` when it answers otherwise (a collector that does not
    /// stream, or one too busy to: the reader holds reads instead), or when its address carries
    /// a user name (those go through the HTTP client's basic auth, on held reads).
    async fn open(config: &PollConfig, addr: &str) -> Result<Option<PageStream>, String> {
        let url = metrics_url(addr)?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}series=contract&wait={}&stream=1",
            config.wait.as_secs_f64()
        );
        let shown = redact_url(&url);
        let uri: http::Uri = url.parse().map_err(|e| format!("{shown}: {e}"))?;
        let Some(authority) = uri.authority().filter(|a| !a.as_str().contains('@')).cloned() else {
            return Ok(None);
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let failed = |what: String| format!("{shown}: {what}");
        let work = async {
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let tcp = tokio::net::TcpStream::connect((host, authority.port_u16().unwrap_or(80)))
                .await
                .map_err(|e| failed(format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let (mut send, conn) = hyper::client::conn::http1::Builder::new()
                .read_buf_exact_size(Some(STREAM_READ_BUF))
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| failed(gpuscale_edge::fetch::with_causes(&e)))?;
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = http::Request::get(path)
                .header(http::header::HOST, authority.as_str())
                .header(http::header::ACCEPT, "application/openmetrics-text;version=1.0.0");
            if let Some(token) = config.bearer.as_deref() {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req
                .body(http_body_util::Empty::new())
                .map_err(|e| failed(e.to_string()))?;
            let response = send
                .send_request(req)
                .await
                .map_err(|e| failed(gpuscale_edge::fetch::with_causes(&e)))?;
            Ok::<_, String>((response, conn))
        };
        let (response, conn) = tokio::time::timeout(config.timeout, work)
            .await
            .map_err(|_| failed(format!("no answer within {:.1} s", config.timeout.as_secs_f64())))??;
        if !response.status().is_success()
            || !response.headers().contains_key(gpuscale_contract::STREAM_HEADER)
        {
            conn.abort();
            return Ok(None);
        }
        Ok(Some(PageStream {
            body: response.into_body(),
            conn,
            buf: Vec::new(),
            scanned: 0,
            shown,
        }))
    }

    /// The next whole page; `Ok(None)` when the collector ended the stream between pages (it
    /// does every few minutes). Silence longer than the heartbeat and the timeout is a fault:
    /// the collector sends a page at least every `wait`.
    async fn next(&mut self, config: &PollConfig) -> Result<Option<String>, String> {
        let within = config.wait + config.timeout;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = page_end(&self.buf, self.scanned) {
                let rest = self.buf.split_off(end);
                let page = std::mem::replace(&mut self.buf, rest);
                self.scanned = 0;
                return String::from_utf8(page)
                    .map(Some)
                    .map_err(|_| format!("{}: a page on the stream is not UTF-8", self.shown));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > config.max_page_bytes {
                return Err(format!(
                    "{}: page larger than {} bytes (raise --max-page-bytes if this is expected)",
                    self.shown, config.max_page_bytes
                ));
            }
            let frame = async {
                loop {
                    match http_body_util::BodyExt::frame(&mut self.body).await {
                        Some(Ok(f)) => match f.into_data() {
                            Ok(data) => return Ok(Some(data)),
                            Err(_) => continue, // trailers
                        },
                        Some(Err(e)) => return Err(e),
                        None => return Ok(None),
                    }
                }
            };
            match tokio::time::timeout_at(deadline, frame).await {
                Err(_) => {
                    return Err(format!(
                        "{}: no page on the stream for {:.1} s, though the collector sends one at least every {:.1} s",
                        self.shown,
                        within.as_secs_f64(),
                        config.wait.as_secs_f64()
                    ));
                }
                Ok(Err(e)) => {
                    return Err(format!(
                        "{}: {}",
                        self.shown,
                        gpuscale_edge::fetch::with_causes(&e)
                    ));
                }
                Ok(Ok(None)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(None)) => {
                    return Err(format!(
                        "{}: the stream ended inside a page ({} bytes without `# EOF`)",
                        self.shown,
                        self.buf.len()
                    ));
                }
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    /// A page from the stream, through the same parse and contract as a read.
    fn read(&self, text: &str, config: &PollConfig, clock: Clock) -> Result<Page, String> {
        let limits = gpuscale_expfmt::text::Limits {
            max_bytes: config.max_page_bytes,
            ..Default::default()
        };
        let families = gpuscale_expfmt::text::parse_openmetrics(text, &limits)
            .map_err(|error| format!("{}: {error}", self.shown))?;
        Page::read(&families, &self.shown, received(clock)).map_err(|e| e.to_string())
    }
}

/// Read one collector forever: a stream of its pages where it offers one, else waiting reads
/// while it renders newer pages, and a read every `interval` otherwise (an error, a heartbeat,
/// a collector that does not wait).
async fn read_loop(addr: String, r: Arc<Reader>) {
    let mut seen: Option<f64> = None;
    // Until the collector answers a stream request with one page: then held reads, until a
    // failure (the collector may have been replaced by one that streams).
    let mut streams = !r.config.wait.is_zero();
    loop {
        if streams {
            match PageStream::open(&r.config, &addr).await {
                Ok(Some(mut stream)) => {
                    let mut pages = 0u64;
                    loop {
                        let result = match stream.next(&r.config).await {
                            // Ended between pages, as a collector does every few minutes: open
                            // another at once. One that ends before its first page is a fault,
                            // or the reader would open streams in a loop.
                            Ok(None) if pages > 0 => break,
                            Ok(None) => Err(format!(
                                "{}: the collector ended the stream before sending a page",
                                stream.shown
                            )),
                            Ok(Some(text)) => {
                                pages += 1;
                                stream.read(&text, &r.config, r.clock)
                            }
                            Err(e) => Err(e),
                        };
                        let failed = result.is_err();
                        if store(&r, &addr, result, &mut seen) {
                            r.changed.notify_one();
                        }
                        if failed {
                            tokio::time::sleep(r.config.interval).await;
                            break;
                        }
                    }
                    continue;
                }
                Ok(None) => streams = false,
                Err(e) => {
                    if store(&r, &addr, Err(e), &mut seen) {
                        r.changed.notify_one();
                    }
                    tokio::time::sleep(r.config.interval).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        let wait = seen
            .filter(|_| !r.config.wait.is_zero())
            .map(|after| (r.config.wait, after));
        let permit = match wait {
            None => r.limit.acquire().await.ok(),
            Some(_) => None,
        };
        let result = read_collector(&r.client, &r.config, &addr, r.clock, wait).await;
        drop(permit);
        let failed = result.is_err();
        let newer = store(&r, &addr, result, &mut seen);
        if newer {
            r.changed.notify_one();
        }
        if failed {
            streams = !r.config.wait.is_zero();
        }
        if failed || !newer {
            tokio::time::sleep(r.config.interval.saturating_sub(started.elapsed())).await;
        }
    }
}

/// Read and decide forever; an error only when it cannot start (then the process must end:
/// a scaler that reads nothing would answer UNAVAILABLE forever while looking healthy).
pub async fn run(
    config: PollConfig,
    mut collectors: watch::Receiver<Vec<String>>,
    polled: Arc<Polled>,
    workloads: Arc<Workloads>,
    telemetry: Arc<Telemetry>,
    clock: Clock,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for reading collectors: {e}"))?;
    let reader = Arc::new(Reader {
        client,
        config: config.clone(),
        polled: polled.clone(),
        telemetry: telemetry.clone(),
        changed: Arc::new(tokio::sync::Notify::new()),
        limit: tokio::sync::Semaphore::new(config.max_concurrent.max(1)),
        clock,
    });
    let mut readers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last decision ended, and the least gap before a pushed one.
    let mut last = (Instant::now(), Duration::ZERO);
    // The collector list; a pushed decision while it stays the same decides only what changed.
    let mut list: HashSet<String> = HashSet::new();
    // When the view was last combined afresh from every page (the first decision does).
    let mut last_full: Option<Instant> = None;
    // When the last two periodic passes began, on the decisions' clock.
    let mut passes = PeriodicPasses::default();
    // A static list's sender is gone once sent: `changed` would then return at once, forever.
    let mut watching = true;
    loop {
        let (periodic, listed) = tokio::select! {
            _ = tick.tick() => (true, false),
            _ = reader.changed.notified() => {
                let gap = last.1.max(PUSH_MIN_GAP);
                let at = (last.0 + gap).max(Instant::now() + PUSH_COALESCE);
                tokio::time::sleep_until(at.into()).await;
                (false, false)
            }
            changed = collectors.changed(), if watching => {
                watching = changed.is_ok();
                (false, true)
            }
        };
        let listed = listed || collectors.has_changed().unwrap_or(false);
        let relist = periodic || listed;
        if relist {
            // A set: with thousands of collectors, list lookups per decision were quadratic.
            list = collectors.borrow_and_update().iter().cloned().collect();
            readers.retain(|addr, handle| {
                let keep = list.contains(addr);
                if !keep {
                    handle.abort();
                }
                // A reader never returns: one that has ended panicked, and is started again
                // below (meanwhile its last page only ages, into stale).
                if keep && let Some(panic) = gpuscale_edge::tasks::ended(handle) {
                    if let Some(e) = panic {
                        tracing::error!(collector = %redact_url(addr), error = %e, "collector reader panicked; restarting it");
                    }
                    return false;
                }
                keep
            });
            for addr in &list {
                readers
                    .entry(addr.clone())
                    .or_insert_with(|| tokio::spawn(read_loop(addr.clone(), reader.clone())));
            }
        }
        let started = Instant::now();
        let due = last_full.is_none_or(|t| t.elapsed() >= FULL_COMBINE_EVERY);
        let pass = if listed || (periodic && due) {
            last_full = Some(Instant::now());
            Pass::Full
        } else if periodic {
            Pass::Periodic
        } else {
            Pass::Pushed
        };
        // A full pass begins a periodic interval too, but leaves nothing.
        let since = if periodic {
            passes.begin(clock.now()).filter(|_| pass == Pass::Periodic)
        } else {
            None
        };
        let complete = decide(&list, &polled, &workloads, clock, pass, since);
        if complete {
            polled.ready.store(true, Ordering::Relaxed);
        }
        if periodic {
            telemetry.polls.fetch_add(1, Ordering::Relaxed);
        } else {
            telemetry.pushed_decisions.fetch_add(1, Ordering::Relaxed);
        }
        let took = started.elapsed();
        telemetry.poll_duration.observe(took);
        // Periodic passes are paced by the interval; only pushed ones need the CPU bound.
        let gap = if periodic || relist {
            Duration::ZERO
        } else {
            took.mul_f64(1.0 / PUSH_CPU_SHARE - 1.0)
        };
        last = (Instant::now(), gap);
    }
}

#[cfg(test)]
mod tests {
    use super::{PeriodicPasses, page_end};
    use std::time::Duration;

    #[test]
    fn a_page_on_a_stream_ends_at_its_eof_line_wherever_the_chunks_split() {
        let two = b"a 1\n# EOF\nb 2\n# EOF\n";
        assert_eq!(page_end(two, 0), Some(10));
        assert_eq!(page_end(&two[10..], 0), Some(10));
        // Searched again from where the last chunk ended: an `# EOF` split across chunks is
        // found, one inside a line is not an end.
        assert_eq!(page_end(&two[..8], 0), None);
        assert_eq!(page_end(two, 8), Some(10));
        assert_eq!(page_end(b"a{x=\"# EOF\n\"} 1\n", 0), None);
        assert_eq!(page_end(b"# EOF\n", 0), Some(6));
        assert_eq!(page_end(b"a 1\n# EOF", 0), None, "the line must be whole");
        assert_eq!(page_end(b"# HELP a is # EOF\n# EOF\n", 0), Some(24));
    }

    #[test]
    fn a_periodic_pass_leaves_only_what_a_push_decided_within_the_last_two_intervals() {
        let ms = Duration::from_millis;
        let mut passes = PeriodicPasses::default();
        // The first two passes leave nothing: a push before either is no proof of anything.
        assert_eq!(passes.begin(ms(0)), None);
        assert_eq!(passes.begin(ms(500)), None);
        // From the third, what was pushed since the pass before the last one began.
        assert_eq!(passes.begin(ms(1000)), Some(ms(0)));
        assert_eq!(passes.begin(ms(1500)), Some(ms(500)));
        // A late pass (the runtime was busy) still looks back two passes, not two intervals.
        assert_eq!(passes.begin(ms(2600)), Some(ms(1000)));
    }
}
