//! The tick: every `--interval` the GPUs are read (on their own thread), every scrape target
//! runs on its own clock in its own task, and each new reading re-renders the page, so a
//! queue change reaches `/metrics` one scrape after it happens.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Config, SharedPages, publish, unix_now};
use crate::exposition::{QueueReading, Snapshot};
use crate::gpu::{GpuError, GpuReading, GpuSource};
use crate::rate::TokenRate;
use crate::scrape::{CustomNames, Preset, Target, queue_depth};
use gpuscale_contract::{self as contract, Fault};
use gpuscale_edge::fetch::{Fetch, ScrapeError, fetch_page};

/// The latest reading of every target, written by the target's own task.
type Readings = Arc<RwLock<HashMap<Target, QueueReading>>>;

/// What one scrape of one target says.
fn reading_of(
    target: &Target,
    result: Result<Vec<gpuscale_expfmt::text::MetricFamily>, ScrapeError>,
    preset: Preset,
    custom: &CustomNames,
    seconds: f64,
    errors_total: u64,
    rates: &mut TokenRate,
) -> QueueReading {
    let mut q = QueueReading {
        measured_at: Some(unix_now()),
        duration_seconds: seconds,
        errors_total,
        ..QueueReading::unread(target.clone())
    };
    match result {
        Ok(fams) => {
            q.up = true;
            match queue_depth(&fams, preset, custom) {
                Some(d) => {
                    q.server = Some(d.server);
                    q.fault = contract::check_reading(d.waiting, d.running, d.kv_cache);
                    if q.fault.is_none() {
                        q.waiting = d.waiting;
                        q.running = d.running;
                        q.kv_cache = d.kv_cache;
                    }
                    let counters = d
                        .prompt_tokens
                        .zip(d.generation_tokens)
                        .filter(|_| q.fault.is_none());
                    let at = q.measured_at.unwrap_or_default();
                    (q.prompt_tokens_rate, q.generation_tokens_rate) = rates.record(at, counters).unzip();
                }
                None => {
                    q.fault = Some(Fault::NoQueueMetrics);
                    rates.reset();
                }
            }
            if let Some(f) = q.fault {
                tracing::warn!(target = %contract::redact_url(&target.url), reason = f.code(), "{}", f.explain());
            }
        }
        Err(e) => {
            q.fault = Some(e.fault());
            // A failed read breaks the counter's history: the next rate starts afresh.
            rates.reset();
            tracing::warn!(error = %e, "scrape failed");
        }
    }
    q
}

/// One target on its own clock: a target that hangs delays only its own readings, which then
/// age (their timestamp says when they were measured) instead of holding back the others.
async fn scrape_target(target: Target, shared: Arc<ScrapeShared>, readings: Readings) {
    let mut errors_total: u64 = 0;
    let mut rates = TokenRate::default();
    let mut tick = tokio::time::interval(shared.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let permit = shared.limit.acquire().await;
        let t0 = Instant::now();
        let how = Fetch {
            openmetrics: false,
            timeout: shared.timeout,
            max_bytes: shared.max_page_bytes,
            bearer: shared.bearer.as_deref(),
            keep: Some(&shared.keep),
        };
        let result = fetch_page(&shared.client, &target.url, &how).await;
        drop(permit);
        errors_total += u64::from(result.is_err());
        let q = reading_of(
            &target,
            result,
            shared.preset,
            &shared.custom,
            t0.elapsed().as_secs_f64(),
            errors_total,
            &mut rates,
        );
        if let Ok(mut r) = readings.write() {
            r.insert(target.clone(), q);
        }
        // The page is rendered again now, not at the next tick: a queue change reaches the
        // page one scrape after it happens, not a scrape and a tick.
        shared.fresh.notify_one();
    }
}

/// How long a re-render waits for the other targets' readings of the same round, which
/// arrive together (their clocks start together).
const RENDER_COALESCE: Duration = Duration::from_millis(10);

/// What every target task shares.
struct ScrapeShared {
    client: reqwest::Client,
    limit: Semaphore,
    interval: Duration,
    timeout: Duration,
    max_page_bytes: usize,
    bearer: Option<String>,
    preset: Preset,
    custom: CustomNames,
    /// The only sample names kept from a target's page.
    keep: Vec<String>,
    /// Told whenever a new reading is in.
    fresh: tokio::sync::Notify,
}

/// The GPU source on its own thread. NVML calls block: they run on one dedicated thread, fed
/// through a channel. A request is sent only when the previous one has been answered, so a call
/// wedged in the driver holds one request, not a growing queue, and the tick never waits on it
/// beyond `wait`.
struct GpuThread {
    ask: std::sync::mpsc::Sender<()>,
    answers: tokio::sync::mpsc::Receiver<Result<Vec<GpuReading>, GpuError>>,
    /// When the request in flight was sent, if one is.
    asked: Option<Instant>,
    wait: Duration,
}

impl GpuThread {
    fn start(mut gpus: Box<dyn GpuSource>, wait: Duration) -> anyhow::Result<Self> {
        let (tx, answers) = tokio::sync::mpsc::channel(1);
        let (ask, asks) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("gpu-source".into())
            .spawn(move || {
                while asks.recv().is_ok() {
                    if tx.blocking_send(gpus.read()).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the GPU thread: {e}"))?;
        Ok(GpuThread {
            ask,
            answers,
            asked: None,
            wait,
        })
    }

    /// Ask for a reading, unless one is still in flight.
    fn ask(&mut self, now: Instant) {
        if self.asked.is_none() && self.ask.send(()).is_ok() {
            self.asked = Some(now);
        }
    }

    /// The reading asked for, within the wait, or why there is none (the reason label).
    async fn answer(&mut self) -> (Vec<GpuReading>, Option<&'static str>) {
        let answer = match self.asked {
            Some(_) => tokio::time::timeout(self.wait, self.answers.recv()).await.ok(),
            None => None,
        };
        if answer.is_some() {
            self.asked = None;
        }
        match answer {
            Some(Some(Ok(g))) => (g, None),
            Some(Some(Err(e))) => {
                tracing::warn!(error = %e, "GPU read failed");
                (Vec::new(), Some(e.reason()))
            }
            Some(None) => (Vec::new(), Some("error")),
            // Still waiting: a driver call has not returned. Its answer, when it comes, is
            // taken at a later tick as that tick's reading.
            None => match self.asked {
                Some(at) => {
                    tracing::warn!(
                        waited_s = at.elapsed().as_secs_f64(),
                        "an NVML call has not returned; GPU series are reported as down until it does"
                    );
                    (Vec::new(), Some("blocked"))
                }
                None => (Vec::new(), Some("error")),
            },
        }
    }
}

/// One task per scrape target, kept in step with the target list.
#[derive(Default)]
struct Scrapers(HashMap<Target, tokio::task::JoinHandle<()>>);

impl Scrapers {
    /// Stop the tasks of targets that are gone, restart any that panicked, start new ones.
    fn sync(&mut self, targets: &[Target], shared: &Arc<ScrapeShared>, readings: &Readings) {
        self.0.retain(|t, handle| {
            let keep = targets.contains(t);
            if !keep {
                handle.abort();
            }
            // A target's task never returns: one that has ended panicked, and is started again
            // below (meanwhile its last reading only ages, into stale).
            if keep && let Some(panic) = gpuscale_edge::tasks::ended(handle) {
                if let Some(e) = panic {
                    tracing::error!(target = %gpuscale_contract::redact_url(&t.url), error = %e, "scrape task panicked; restarting it");
                }
                return false;
            }
            keep
        });
        if let Ok(mut r) = readings.write() {
            r.retain(|t, _| targets.contains(t));
        }
        for t in targets {
            self.0
                .entry(t.clone())
                .or_insert_with(|| tokio::spawn(scrape_target(t.clone(), shared.clone(), readings.clone())));
        }
    }
}

/// Each target's latest reading, or `pending` for one that has none yet.
fn queue_readings(targets: Vec<Target>, readings: &Readings) -> Vec<QueueReading> {
    let r = readings.read().unwrap_or_else(|e| e.into_inner());
    targets
        .into_iter()
        .map(|t| {
            r.get(&t).cloned().unwrap_or_else(|| QueueReading {
                fault: Some(Fault::Pending),
                ..QueueReading::unread(t)
            })
        })
        .collect()
}

/// Static targets plus whatever the pod watch found (bounded like static ones).
fn targets_now(config: &Config) -> Vec<Target> {
    let mut targets = config.targets.clone();
    if let Some(found) = &config.discovered
        && let Ok(f) = found.read()
    {
        targets.extend(f.iter().take(1024).cloned());
    }
    targets
}

/// The first page waits (up to `within`, so a hung target cannot hold back readiness) for
/// every target's first reading; those still missing are `pending`.
async fn first_readings(targets: &[Target], readings: &Readings, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline
        && readings
            .read()
            .map(|r| targets.iter().any(|t| !r.contains_key(t)))
            .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Run ticks forever, publishing each snapshot into `pages`; an error only when it cannot
/// start (no HTTP client, no GPU thread), for the process to end on.
pub async fn tick_loop(config: Config, gpus: Box<dyn GpuSource>, pages: SharedPages) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(config.scrape_timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client for scraping model servers: {e}"))?;
    let gpu_name = gpus.name().to_string();
    let attribution = Arc::new(RwLock::new(crate::podresources::Attribution::new()));
    let refresh = || {
        config.pod_resources_socket.clone().map(|socket| {
            tokio::spawn(crate::podresources::refresh_loop(
                socket,
                config.pod_resources_interval,
                attribution.clone(),
            ))
        })
    };
    let mut refreshing = refresh();
    let mut gpu = GpuThread::start(gpus, (config.interval / 2).min(Duration::from_secs(1)))?;
    let shared = Arc::new(ScrapeShared {
        client,
        limit: Semaphore::new(config.max_concurrent_scrapes.max(1)),
        interval: config.interval,
        timeout: config.scrape_timeout,
        max_page_bytes: config.max_page_bytes,
        bearer: config.bearer.clone(),
        preset: config.preset,
        custom: config.custom.clone(),
        keep: crate::scrape::queue_metric_names(config.preset, &config.custom),
        fresh: tokio::sync::Notify::new(),
    });
    // The GPU part of the page between ticks: re-renders for new queue readings reuse it.
    let mut gpu_part: (Vec<GpuReading>, Option<&'static str>) = (Vec::new(), Some("error"));
    let readings: Readings = Arc::default();
    let mut scrapers = Scrapers::default();
    let mut ticks: u64 = 0;
    let mut interval = tokio::time::interval(config.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A tick reads the GPUs and renders; a new queue reading in between only renders.
        let full = tokio::select! {
            _ = interval.tick() => true,
            _ = shared.fresh.notified(), if ticks > 0 => false,
        };
        if !full {
            tokio::time::sleep(RENDER_COALESCE).await;
        }
        let started = Instant::now();
        if full {
            gpu.ask(started);
        }
        let targets = targets_now(&config);
        scrapers.sync(&targets, &shared, &readings);
        if let Some(panic) = refreshing.as_mut().and_then(gpuscale_edge::tasks::ended) {
            if let Some(e) = panic {
                tracing::error!(error = %e, "PodResources refresh panicked; restarting it");
            }
            refreshing = refresh();
        }
        if ticks == 0 {
            first_readings(&targets, &readings, config.interval.min(config.scrape_timeout)).await;
        }
        let (gpu_readings, gpu_error) = if full {
            gpu.answer().await
        } else {
            gpu_part.clone()
        };
        if full {
            ticks += 1;
            gpu_part = (gpu_readings.clone(), gpu_error);
        }
        let snapshot = Snapshot {
            node: config.node.clone(),
            gpu_source: gpu_name.clone(),
            gpus: gpu_readings,
            gpu_error,
            attribution: attribution.read().map(|a| a.clone()).unwrap_or_default(),
            queues: queue_readings(targets, &readings),
            timestamp_seconds: unix_now(),
            tick_seconds: started.elapsed().as_secs_f64(),
            ticks_total: ticks,
        };
        publish(&pages, &snapshot, config.dcgm_compat);
    }
}
