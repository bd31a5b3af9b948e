//! Every workload the scaler answers for: its trigger, autoscaler, last signals, decision and
//! the answers KEDA reads.
//!
//! Decisions are made on the poll tick, for all workloads at once, from the combined
//! [`View`]: never on the request path. `GetMetrics` and `IsActive` read the answer the last
//! tick published, so they never wait on I/O and two scaler replicas fed the same pages give
//! the same answers. Time is passed in (a [`Duration`] since the process's epoch), so tests
//! drive this module with a virtual clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use gpuscale_policies::answer::{self, Demand, Measured, NotKnown, Reported, activity};
use gpuscale_policies::{Autoscaler, Decision, Reading, Signals};
use tokio::sync::watch;

use crate::keda::trigger::{Mode, Trigger, TriggerError};
use crate::sources::aggregate::{Observed, Seen, View};
use gpuscale_contract::{Clock, WorkloadKey};

/// Replica counts of a Deployment as the API server reports them (kube mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Replicas {
    /// `spec.replicas`.
    pub desired: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
    /// `status.replicas - status.readyReplicas`: created but not ready.
    pub starting: u32,
}

/// Held requests reported by an activator, and when.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Held {
    /// Requests waiting for the workload to wake.
    pub requests: f64,
    /// Ready upstream replicas as the activator sees them (`None`: it did not say).
    pub ready: Option<u32>,
    /// When reported.
    #[serde(skip)]
    pub at: Duration,
}

/// How long an activator's report counts. Activators repeat it every second while they hold.
pub const HELD_TTL: Duration = Duration::from_secs(5);

/// One workload.
pub struct Workload {
    autoscaler: Autoscaler,
    /// The last observation, if known.
    pub observed: Option<Observed>,
    /// Why it is not known.
    pub unknown: Option<String>,
    /// Signals given to the last decision.
    pub signals: Option<Signals>,
    /// The last decision and when it was made.
    pub decision: Option<(Decision, Duration)>,
    /// When a pushed page last had it decided ([`Workloads::tick_only`]).
    pub pushed_at: Option<Duration>,
    /// A scale-up the cluster's free GPUs cannot hold, in words.
    pub capacity: Option<String>,
    /// From the activator.
    pub held: Option<Held>,
    /// From the API server (kube mode).
    pub replicas: Option<Replicas>,
    /// Who asked last: `ScaledObject ns/name`, or `Deployment ns/name` in direct mode.
    pub asker: String,
    /// A trigger setting that works against this scaler's own, in words (see
    /// [`Workloads::with_reading_refresh`]).
    pub warning: Option<String>,
    /// What the RPCs read without this workload's lock: written by [`Workload::publish`].
    published: Arc<Published>,
}

/// The part of a workload the RPCs read, without the lock its decision holds: the trigger,
/// the last published answer (swapped whole after each decision), when it was last asked, and
/// the activity stream. A decision over every workload never delays an answer.
pub struct Published {
    /// Its trigger (fixed for the entry: a changed trigger is another entry).
    pub trigger: Trigger,
    answer: RwLock<Arc<Answer>>,
    /// Nanoseconds on the scaler's clock.
    last_asked_ns: AtomicU64,
    active: watch::Sender<Option<(bool, u64)>>,
}

impl Published {
    fn new(trigger: Trigger, now: Duration) -> Self {
        let p = Published {
            trigger,
            answer: RwLock::new(Arc::new(Answer::default())),
            last_asked_ns: AtomicU64::new(0),
            active: watch::channel(None).0,
        };
        p.touch(now);
        p
    }

    /// The answer published last.
    pub fn answer(&self) -> Arc<Answer> {
        self.answer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// KEDA (or direct mode) asked about it now.
    pub fn touch(&self, now: Duration) {
        let ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        self.last_asked_ns.store(ns, Ordering::Relaxed);
    }

    /// When it was last asked about.
    pub fn last_asked(&self) -> Duration {
        Duration::from_nanos(self.last_asked_ns.load(Ordering::Relaxed))
    }

    /// Subscribe to the activity (for StreamIsActive): whether active, and how many
    /// inactive-to-active edges there have been.
    pub fn subscribe(&self) -> watch::Receiver<Option<(bool, u64)>> {
        self.active.subscribe()
    }
}

/// A tracked workload: what the RPCs read ([`Published`], through `Deref`) and the state its
/// decisions change, behind a lock ([`lock`]).
pub struct Tracked {
    published: Arc<Published>,
    state: Mutex<Workload>,
}

impl Tracked {
    /// Decide it now, on `view` (a workload just registered, so its first answer need not
    /// wait for the next page or periodic pass).
    pub fn decide_now(&self, view: &View, now: Duration) {
        lock(self).decide(view, now);
    }
}

impl std::ops::Deref for Tracked {
    type Target = Published;
    fn deref(&self) -> &Published {
        &self.published
    }
}

/// What GetMetrics and IsActive return until the next tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The metric value, or why there is none.
    pub value: Result<f64, NotKnown>,
    /// Whether the workload should be awake, or why that is not known.
    pub active: Result<bool, NotKnown>,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            value: Err(NotKnown::NoDecision),
            active: Err(NotKnown::NoDecision),
        }
    }
}

impl Workload {
    /// What its policies have learned (`tokens.slots` and the capacities), for
    /// `/debug/workloads`.
    pub fn learned(&self) -> Vec<gpuscale_policies::Learned> {
        self.autoscaler.learned()
    }

    fn new(trigger: Trigger, asker: &str, autoscaler: Autoscaler, now: Duration) -> Self {
        Workload {
            asker: asker.to_string(),
            autoscaler,
            observed: None,
            unknown: None,
            signals: None,
            decision: None,
            pushed_at: None,
            capacity: None,
            held: None,
            replicas: None,
            warning: None,
            published: Arc::new(Published::new(trigger, now)),
        }
    }

    fn fresh_held(&self, now: Duration) -> f64 {
        self.fresh_report(now).map_or(0.0, |h| h.requests)
    }

    fn fresh_report(&self, now: Duration) -> Option<Held> {
        self.held.filter(|h| now.saturating_sub(h.at) <= HELD_TTL)
    }

    /// At zero replicas no model server runs, so no collector can report the workload; its
    /// demand is then known only from a fresh activator report, and only when zero replicas is
    /// itself known: from the Deployment (`--kube`), or from the activator's own readiness.
    fn known_at_zero(&self, now: Duration) -> Result<Duration, String> {
        let Some(h) = self.fresh_report(now) else {
            return Err(match self.held {
                Some(h) => format!(
                    "the activator's last report is {:.0} s old (they come every second)",
                    now.saturating_sub(h.at).as_secs_f64()
                ),
                None => "no activator reports it either (at zero replicas only an activator can see demand)"
                    .into(),
            });
        };
        let zero = match (self.replicas, h.ready) {
            (Some(r), _) => r.ready == 0 && r.starting == 0,
            (None, Some(ready)) => ready == 0,
            (None, None) => false,
        };
        if zero {
            Ok(h.at)
        } else {
            Err(match (self.replicas, h.ready) {
                (Some(r), _) => format!(
                    "the Deployment has {} ready and {} starting replicas that no collector reports",
                    r.ready, r.starting
                ),
                (None, Some(ready)) => {
                    format!("the activator sees {ready} ready replicas that no collector reports")
                }
                (None, None) => "the activator's report does not say whether any replica is ready".into(),
            })
        }
    }

    /// Build signals from the view and decide.
    fn decide(&mut self, view: &View, now: Duration) {
        let held = self.fresh_held(now);
        let seen = view.observe(&self.published.trigger.workload);
        let (observed, at) = match seen {
            Seen::Known { observed, at } => match self.replicas {
                // The API server says pods are ready, but no collector reports them yet.
                Some(r) if r.ready > 0 && observed.up == 0 => {
                    self.unknown = Some(format!(
                        "the Deployment has {} ready replicas but no collector reports them yet",
                        r.ready
                    ));
                    (None, None)
                }
                _ => {
                    self.unknown = None;
                    (Some(observed), Some(at))
                }
            },
            Seen::Absent(why) | Seen::Unknown(why) => match self.known_at_zero(now) {
                Ok(reported) => {
                    self.unknown = None;
                    (Some(Observed::default()), Some(reported.as_secs_f64()))
                }
                Err(zero_why) => {
                    self.unknown = Some(format!("{why}; {zero_why}"));
                    (None, None)
                }
            },
        };
        let prev_current = self.signals.as_ref().map_or(0, |s| s.current);
        let (current, ready, starting) = match (self.replicas, &observed) {
            (Some(r), _) => (r.desired, r.ready, r.starting),
            (None, Some(o)) => (o.up, o.up, 0),
            (None, None) => (prev_current, prev_current, 0),
        };
        let reading = |v: f64| {
            at.map(|at: f64| Reading::aged(v, Duration::from_secs_f64((now.as_secs_f64() - at).max(0.0))))
        };
        let signals = Signals {
            current,
            ready,
            starting,
            waiting: observed.as_ref().and_then(|o| reading(o.waiting + held)),
            running: observed.as_ref().and_then(|o| reading(o.running)),
            kv_cache_usage: observed.as_ref().and_then(|o| o.kv_cache_usage.and_then(reading)),
            gpu_utilization: observed
                .as_ref()
                .and_then(|o| o.gpu_utilization.and_then(reading)),
            arrival_rate: None,
            service_time: None,
            prompt_tokens_rate: observed
                .as_ref()
                .and_then(|o| o.prompt_tokens_rate.and_then(reading)),
            generation_tokens_rate: observed
                .as_ref()
                .and_then(|o| o.generation_tokens_rate.and_then(reading)),
            pods: Vec::new(),
        };
        let d = self.autoscaler.decide(now, &signals);
        self.capacity = None;
        if d.desired > current && !view.capacity.is_empty() {
            let need = (d.desired - current).saturating_mul(self.published.trigger.gpus_per_replica);
            let free = view.free_gpus(&self.published.trigger.gpu_model);
            if need > free {
                let model = if self.published.trigger.gpu_model.is_empty() {
                    "GPUs"
                } else {
                    self.published.trigger.gpu_model.as_str()
                };
                self.capacity = Some(format!(
                    "capacity: scaling {current} -> {} needs {need} {model} but the collectors report {free} free",
                    d.desired
                ));
            }
        }
        self.observed = observed;
        self.signals = Some(signals);
        self.decision = Some((d, now));
        self.publish(now);
    }

    /// Recompute the answers from the last decision and the held requests.
    fn publish(&mut self, now: Duration) {
        let held = self.fresh_held(now);
        let threshold = self.published.trigger.activation_threshold;
        // A decision on fresh data, or why there is none. `observed` is set whenever
        // `unknown` is clear after a decision.
        let decision = match (&self.unknown, &self.decision) {
            (Some(why), _) => Err(NotKnown::Unobserved(why.clone())),
            (None, None) => Err(NotKnown::NoDecision),
            (None, Some((d, _))) => Ok(d),
        };
        let o = self.observed.clone().unwrap_or_default();
        let reported = match self.published.trigger.mode {
            Mode::Replicas => Reported::Replicas,
            Mode::Signal { metric, .. } => Reported::Signal(metric),
        };
        let demand = Demand {
            waiting: o.waiting,
            running: o.running,
            held,
        };
        let seen = Measured {
            demand,
            kv_cache_usage: o.kv_cache_usage,
            gpu_utilization: o.gpu_utilization,
        };
        let value = answer::value(decision.clone(), reported, &seen);
        let current = self.signals.as_ref().map_or(0, |s| s.current);
        let active = activity(decision, current, demand, threshold);
        if let Ok(a) = active {
            // Count inactive-to-active edges, so a stream that wakes up late (after a quick
            // true-false-true) still pushes the edge it did not see.
            self.published.active.send_if_modified(|s| {
                let (prev, edges) = s.map_or((None, 0), |(p, e)| (Some(p), e));
                let edges = edges + u64::from(a && prev != Some(true));
                let next = Some((a, edges));
                let changed = *s != next;
                *s = next;
                changed
            });
        }
        *self.published.answer.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Answer { value, active });
    }
}

/// Most distinct trigger metadata tracked for one Deployment (several triggers, or edits not
/// yet forgotten); beyond it a new one is refused rather than crowd out other workloads.
pub const MAX_TRIGGERS_PER_WORKLOAD: usize = 8;

/// Why a workload could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The metadata is invalid.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// The table is full.
    #[error(
        "the scaler already tracks {0} workloads (--max-workloads); raise the limit or run another scaler"
    )]
    Full(usize),
    /// Too many different triggers name one Deployment.
    #[error(
        "{workload} is already named by {MAX_TRIGGERS_PER_WORKLOAD} triggers with different metadata ({owners}); give the Deployment one gpuscale trigger, or wait --workload-idle-ttl for edited ones to be forgotten"
    )]
    TooManyTriggers {
        /// The Deployment.
        workload: WorkloadKey,
        /// Who asks for the existing ones.
        owners: String,
    },
}

/// All workloads, shared by the gRPC server, the HTTP server and the poll loop.
///
/// Keyed by Deployment and then by trigger fingerprint: two triggers (or two ScaledObjects)
/// naming one Deployment with different metadata each get their own autoscaler and a stable
/// answer, instead of rebuilding one autoscaler back and forth on every call. An edited
/// trigger is a new entry; the old one is forgotten after the idle TTL, as nobody asks for it.
pub struct Workloads {
    map: RwLock<HashMap<WorkloadKey, Vec<Entry>>>,
    max: usize,
    idle_ttl: Duration,
    /// How old a steady collector's readings get between the pages this scaler receives.
    reading_refresh: Duration,
}

type Entry = (u64, Arc<Tracked>);

/// Lock a workload's state; a panic elsewhere while holding it leaves data that is still
/// consistent enough to read (every write is a whole-field assignment), so poisoning is ignored.
pub fn lock(w: &Tracked) -> MutexGuard<'_, Workload> {
    w.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Workloads {
    /// At most `max` workloads; one nobody asked about for `idle_ttl` is forgotten.
    pub fn new(max: usize, idle_ttl: Duration) -> Self {
        Workloads {
            map: RwLock::new(HashMap::new()),
            max,
            idle_ttl,
            reading_refresh: Duration::ZERO,
        }
    }

    /// Readings of a collector whose readings hold still reach this scaler up to `refresh` old
    /// (its `--collector-wait` heartbeat, or its `--poll-interval` when it polls, plus a
    /// collector interval). A trigger whose `maxSignalAge` is no longer would read them as
    /// stale between pages, and KEDA would hear UNAVAILABLE on and off: it is tracked, and
    /// warned about in the log and `/debug/workloads`.
    pub fn with_reading_refresh(mut self, refresh: Duration) -> Self {
        self.reading_refresh = refresh;
        self
    }

    fn staleness_warning(&self, autoscaler: &Autoscaler) -> Option<String> {
        let age = autoscaler.safety().max_signal_age;
        (!self.reading_refresh.is_zero() && age <= self.reading_refresh).then(|| {
            format!(
                "maxSignalAge {age:?} is no longer than the {:?} a steady collector's readings can age between the pages this scaler receives (--collector-wait, or --poll-interval when polling, plus a collector interval): they will read as stale between pages and KEDA will hear UNAVAILABLE on and off; set maxSignalAge above {:?} (default 30s) or lower the scaler's --collector-wait",
                self.reading_refresh, self.reading_refresh
            )
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<WorkloadKey, Vec<Entry>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The workload a trigger with this fingerprint registered, if tracked.
    pub fn get(&self, key: &WorkloadKey, fingerprint: u64) -> Option<Arc<Tracked>> {
        self.read()
            .get(key)
            .and_then(|v| v.iter().find(|(f, _)| *f == fingerprint).map(|(_, w)| w.clone()))
    }

    /// Every trigger's entry for one Deployment.
    pub fn entries(&self, key: &WorkloadKey) -> Vec<Arc<Tracked>> {
        self.read()
            .get(key)
            .map(|v| v.iter().map(|(_, w)| w.clone()).collect())
            .unwrap_or_default()
    }

    /// Number tracked (entries, one per distinct trigger).
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Whether none are tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, sorted by Deployment.
    pub fn all(&self) -> Vec<(WorkloadKey, Arc<Tracked>)> {
        let mut v: Vec<_> = self
            .read()
            .iter()
            .flat_map(|(k, e)| e.iter().map(move |(_, w)| (k.clone(), w.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Register the trigger (or mark it as asked about), for `asker` (the ScaledObject, or
    /// the annotated Deployment in direct mode), named in logs and `/debug/workloads`.
    pub fn register(
        &self,
        trigger: Trigger,
        asker: &str,
        now: Duration,
    ) -> Result<Arc<Tracked>, RegisterError> {
        if let Some(w) = self.get(&trigger.workload, trigger.fingerprint) {
            w.touch(now);
            let mut g = lock(&w);
            if g.asker != asker {
                g.asker = asker.to_string();
            }
            drop(g);
            return Ok(w);
        }
        let autoscaler = trigger.autoscaler()?;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let total: usize = map.values().map(Vec::len).sum();
        let entries = map.entry(trigger.workload.clone()).or_default();
        if let Some((_, w)) = entries.iter().find(|(f, _)| *f == trigger.fingerprint) {
            return Ok(w.clone());
        }
        let owners: Vec<String> = entries.iter().map(|(_, w)| lock(w).asker.clone()).collect();
        if entries.len() >= MAX_TRIGGERS_PER_WORKLOAD {
            return Err(RegisterError::TooManyTriggers {
                workload: trigger.workload.clone(),
                owners: owners.join(", "),
            });
        }
        if total >= self.max {
            if entries.is_empty() {
                map.remove(&trigger.workload);
            }
            return Err(RegisterError::Full(self.max));
        }
        if let Some(other) = owners.iter().find(|o| o.as_str() != asker) {
            tracing::warn!(
                workload = %trigger.workload,
                "{asker} and {other} both scale {} with different gpuscale metadata: each is answered from its own autoscaler, and their HPAs will disagree; give the Deployment one ScaledObject",
                trigger.workload
            );
        } else if !owners.is_empty() {
            tracing::info!(workload = %trigger.workload, %asker, "new trigger metadata for the workload: a fresh autoscaler (an edited trigger's old entry is forgotten after the idle TTL)");
        } else {
            tracing::info!(workload = %trigger.workload, policy = %trigger.policy, %asker, "tracking a new workload");
        }
        let fingerprint = trigger.fingerprint;
        let warning = self.staleness_warning(&autoscaler);
        if let Some(w) = &warning {
            tracing::warn!(workload = %trigger.workload, %asker, "{w}");
        }
        let mut state = Workload::new(trigger, asker, autoscaler, now);
        state.warning = warning;
        let w = Arc::new(Tracked {
            published: state.published.clone(),
            state: Mutex::new(state),
        });
        entries.push((fingerprint, w.clone()));
        Ok(w)
    }

    /// Decide every workload from the view; forget those nobody asked about for the idle TTL.
    pub fn tick(&self, view: &View, now: Duration) {
        self.tick_since(view, now, None);
    }

    /// As [`Workloads::tick`], but a workload a pushed page had decided at or after `since`
    /// (the poll loop passes the start of the periodic pass before the last one) is left as it
    /// is: on a fleet whose pages all change every second, the periodic pass would otherwise
    /// decide much of the fleet again. Whoever passes `since` bounds how long a workload goes
    /// undecided (the poll loop: three intervals).
    pub fn tick_since(&self, view: &View, now: Duration, since: Option<Duration>) {
        let mut expired = Vec::new();
        // The entries are copied out and the map's lock let go before deciding: a tick over
        // 40,000 workloads takes ~100 ms, and a registration waiting for the write lock
        // would meanwhile hold up every RPC's read of the map (std's RwLock queues readers
        // behind a waiting writer). Each workload's own lock is held only for its decision.
        // (A workload is keyed by its trigger's workload, so only the Arcs are copied.)
        let all: Vec<(u64, Arc<Tracked>)> = self
            .read()
            .values()
            .flat_map(|entries| entries.iter().map(|(f, w)| (*f, w.clone())))
            .collect();
        for (f, w) in all {
            if now.saturating_sub(w.last_asked()) > self.idle_ttl {
                expired.push((w.trigger.workload.clone(), f));
                continue;
            }
            let mut g = lock(&w);
            if since.is_some_and(|s| g.pushed_at.is_some_and(|t| t >= s)) {
                continue;
            }
            g.decide(view, now);
        }
        if !expired.is_empty() {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            for (k, f) in expired {
                tracing::info!(workload = %k, "forgetting a trigger nobody asked about");
                if let Some(v) = map.get_mut(&k) {
                    v.retain(|(g, _)| *g != f);
                    if v.is_empty() {
                        map.remove(&k);
                    }
                }
            }
        }
    }

    /// Decide only the workloads in `keys`, from a view brought up to date for them (a pushed
    /// page changed them): the cost of a push grows with what changed. Forgetting idle triggers
    /// and deciding the rest (readings age, keep-alives expire) is left to [`Workloads::tick`].
    pub fn tick_only<'a>(&self, view: &View, keys: impl IntoIterator<Item = &'a WorkloadKey>, now: Duration) {
        // Copied out under one read of the map, let go before deciding (as in `tick`).
        let named: Vec<Arc<Tracked>> = {
            let map = self.read();
            keys.into_iter()
                .filter_map(|k| map.get(k))
                .flat_map(|entries| entries.iter().map(|(_, w)| w.clone()))
                .collect()
        };
        for w in named {
            let mut g = lock(&w);
            g.pushed_at = Some(now);
            g.decide(view, now);
        }
    }

    /// An activator reports held requests: update the activity at once, without waiting for
    /// the next tick, so StreamIsActive pushes within milliseconds. Returns false for an
    /// unknown workload.
    pub fn held(&self, key: &WorkloadKey, requests: f64, ready: Option<u32>, now: Duration) -> bool {
        let entries = self.entries(key);
        for w in &entries {
            let mut g = lock(w);
            g.held = Some(Held {
                requests,
                ready,
                at: now,
            });
            g.publish(now);
        }
        !entries.is_empty()
    }

    /// The API server reports a Deployment's replicas.
    pub fn set_replicas(&self, key: &WorkloadKey, r: Replicas) {
        for w in self.entries(key) {
            lock(&w).replicas = Some(r);
        }
    }
}

/// The in-process activator's reports, straight into the workload table on the scaler's clock.
pub struct InProcess(pub Arc<Workloads>, pub Clock);

impl gpuscale_activator::HeldSink for InProcess {
    fn held(&self, workload: &WorkloadKey, held: usize, ready: Option<u32>) {
        self.0.held(workload, held as f64, ready, self.1.now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sources::aggregate::{Page, Source};
    use std::collections::HashMap as Map;

    fn trigger(extra: &[(&str, &str)]) -> Trigger {
        let mut md: Map<String, String> = Map::new();
        md.insert("deployment".into(), "qwen".into());
        for (k, v) in extra {
            md.insert(k.to_string(), v.to_string());
        }
        Trigger::parse("llm", &md).unwrap()
    }

    fn view(at: u64, waiting: f64, running: f64, up: u32) -> View {
        let mut page = Page::default();
        page.workloads.insert(
            WorkloadKey {
                namespace: "llm".into(),
                name: "qwen".into(),
            },
            Observed {
                waiting,
                running,
                up,
                measured: at as f64,
                ..Observed::default()
            },
        );
        let src = Source {
            last_ok: Some((Duration::from_secs(at), page)),
            error: None,
        };
        View::combine([("c", &src)])
    }

    /// Every collector answered; none reports the workload.
    fn absent(at: u64) -> View {
        let src = Source {
            last_ok: Some((Duration::from_secs(at), Page::default())),
            error: None,
        };
        View::combine([("c", &src)])
    }

    #[test]
    fn a_workload_no_collector_reports_is_unknown_unless_known_to_be_at_zero() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[("keepAlive", "0s")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        let key = w.trigger.workload.clone();
        let t = |s: u64| Duration::from_secs(s);
        // Never seen: unknown, never IsActive=false.
        ws.tick(&absent(1), t(1));
        let a = w.answer().clone();
        let why = a.active.clone().unwrap_err().to_string();
        assert!(
            why.contains("no collector reports llm/qwen") && why.contains("no activator"),
            "{why}"
        );
        assert!(a.value.is_err());
        // An activator that does not say whether replicas are ready: still unknown.
        ws.held(&key, 0.0, None, t(2));
        ws.tick(&absent(2), t(2));
        assert!(
            &w.answer()
                .active
                .clone()
                .unwrap_err()
                .to_string()
                .contains("does not say")
        );
        // The activator sees ready replicas that no collector reports: misattributed, unknown.
        ws.held(&key, 0.0, Some(2), t(3));
        ws.tick(&absent(3), t(3));
        assert!(
            &w.answer()
                .active
                .clone()
                .unwrap_err()
                .to_string()
                .contains("2 ready replicas")
        );
        // At zero replicas with a fresh report of nothing held: a known zero.
        ws.held(&key, 0.0, Some(0), t(4));
        ws.tick(&absent(4), t(4));
        assert_eq!(w.answer().active, Ok(false));
        assert_eq!(w.answer().value, Ok(0.0));
        // The report goes stale: unknown again.
        ws.tick(&absent(20), t(20));
        assert!(
            w.answer()
                .active
                .clone()
                .unwrap_err()
                .to_string()
                .contains("s old")
        );
        // --kube says zero replicas; a fresh report is still needed, and then it is known.
        ws.set_replicas(
            &key,
            Replicas {
                desired: 0,
                ready: 0,
                starting: 0,
            },
        );
        ws.held(&key, 0.0, None, t(21));
        ws.tick(&absent(21), t(21));
        assert_eq!(w.answer().active, Ok(false));
        // Held requests at zero: active, with the held count as demand.
        ws.held(&key, 3.0, None, t(22));
        assert_eq!(w.answer().active, Ok(true));
    }

    #[test]
    fn answers_follow_the_tick_and_stale_data_is_unavailable() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[("keepAlive", "0s"), ("queue.target", "2")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        assert!(w.answer().value.is_err());
        ws.tick(&view(1, 6.0, 2.0, 1), Duration::from_secs(1));
        assert_eq!(w.answer().value, Ok(4.0));
        assert_eq!(w.answer().active, Ok(true));
        // The same page, 60 s later: stale; no number, no activity verdict.
        ws.tick(&view(1, 6.0, 2.0, 1), Duration::from_secs(61));
        let a = w.answer().clone();
        assert!(
            matches!(
                a.value,
                Err(NotKnown::Hold(gpuscale_policies::Rule::SignalStale(_)))
            ),
            "a stale signal is a hold: {:?}",
            a.value
        );
        assert!(a.value.clone().unwrap_err().to_string().contains("signal_stale"));
        assert!(a.active.is_err());
    }

    #[test]
    fn signal_mode_reports_a_missing_kv_reading_as_unknown_not_zero() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let kv = ws
            .register(
                trigger(&[("mode", "signal"), ("metric", "kv_cache_usage")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        // The page carries queue series but no KV-cache reading (a server that exports none).
        ws.tick(&view(1, 6.0, 2.0, 1), Duration::from_secs(1));
        let a = kv.answer().clone();
        assert!(
            matches!(&a.value, Err(NotKnown::Unobserved(why)) if why.contains("kv_cache_usage")),
            "an unreported KV cache is not an idle one: {:?}",
            a.value
        );
        // Activity is still judged on the queue, which is known.
        assert_eq!(a.active, Ok(true));
        let load = ws
            .register(
                trigger(&[("mode", "signal"), ("metric", "load")]),
                "ScaledObject llm/qwen-load",
                Duration::ZERO,
            )
            .unwrap();
        ws.tick(&view(2, 6.0, 2.0, 1), Duration::from_secs(2));
        assert_eq!(load.answer().value, Ok(8.0));
    }

    #[test]
    fn a_pushed_decision_decides_only_the_workloads_it_names() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let params = [("keepAlive", "0s"), ("queue.target", "2")];
        let qwen = ws
            .register(trigger(&params), "ScaledObject llm/qwen", Duration::ZERO)
            .unwrap();
        let llama = ws
            .register(
                trigger(&[params[0], params[1], ("deployment", "llama")]),
                "ScaledObject llm/llama",
                Duration::ZERO,
            )
            .unwrap();
        let both = |at: u64, waiting: f64| {
            let mut page = Page::default();
            for name in ["qwen", "llama"] {
                let o = Observed {
                    waiting,
                    running: 2.0,
                    up: 1,
                    measured: at as f64,
                    ..Observed::default()
                };
                page.workloads.insert(
                    WorkloadKey {
                        namespace: "llm".into(),
                        name: name.into(),
                    },
                    o,
                );
            }
            let src = Source {
                last_ok: Some((Duration::from_secs(at), page)),
                error: None,
            };
            View::combine([("c", &src)])
        };
        ws.tick(&both(1, 6.0), Duration::from_secs(1));
        assert_eq!(
            (qwen.answer().value.clone(), llama.answer().value.clone()),
            (Ok(4.0), Ok(4.0))
        );
        ws.tick_only(&both(2, 14.0), [&qwen.trigger.workload], Duration::from_secs(2));
        assert_eq!(qwen.answer().value, Ok(8.0));
        assert_eq!(
            llama.answer().value,
            Ok(4.0),
            "llama was not named, so not decided"
        );
    }

    #[test]
    fn a_periodic_pass_leaves_what_a_push_just_decided() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[
                    ("keepAlive", "0s"),
                    ("queue.target", "2"),
                    ("queue.scaleDownWindow", "0s"),
                ]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        let at = Duration::from_millis;
        ws.tick(&view(1, 6.0, 2.0, 1), at(1000));
        assert_eq!(w.answer().value, Ok(4.0));
        // Periodic passes at 1 s and 1.5 s, no push between: decided.
        ws.tick_since(&view(1, 14.0, 2.0, 1), at(1500), Some(at(1000)));
        assert_eq!(w.answer().value, Ok(8.0), "no push since the last pass began");
        // A push at 1.7 s decides it; the pass at 2 s leaves it, even on another view...
        ws.tick_only(&view(1, 6.0, 2.0, 1), [&w.trigger.workload], at(1700));
        assert_eq!(w.answer().value, Ok(4.0));
        ws.tick_since(&view(1, 14.0, 2.0, 1), at(2000), Some(at(1500)));
        assert_eq!(
            w.answer().value,
            Ok(4.0),
            "decided by the push since the last pass"
        );
        // ...and the one at 2.5 s decides it.
        ws.tick_since(&view(1, 14.0, 2.0, 1), at(2500), Some(at(2000)));
        assert_eq!(w.answer().value, Ok(8.0));
    }

    #[test]
    fn idle_goes_inactive_and_held_requests_wake_at_once() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[("keepAlive", "0s")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        let mut rx = w.subscribe();
        ws.tick(&view(1, 0.0, 0.0, 0), Duration::from_secs(1));
        assert_eq!(w.answer().active, Ok(false));
        assert_eq!(*rx.borrow_and_update(), Some((false, 0)));
        let key = w.trigger.workload.clone();
        assert!(ws.held(&key, 1.0, None, Duration::from_millis(1500)));
        assert_eq!(w.answer().active, Ok(true));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Some((true, 1)));
        // true -> false -> true before a reader looks: the edge count still shows the new edge.
        ws.held(&key, 0.0, None, Duration::from_millis(1600));
        ws.tick(&view(2, 0.0, 0.0, 0), Duration::from_millis(1700));
        assert_eq!(w.answer().active, Ok(false));
        ws.held(&key, 1.0, None, Duration::from_millis(1800));
        assert_eq!(*rx.borrow_and_update(), Some((true, 2)));
        // Held requests are demand for the policy too.
        ws.tick(&view(2, 0.0, 0.0, 0), Duration::from_secs(2));
        assert_eq!(w.answer().value, Ok(1.0));
        // Unknown workloads are refused.
        let other = WorkloadKey {
            namespace: "x".into(),
            name: "y".into(),
        };
        assert!(!ws.held(&other, 1.0, None, Duration::from_secs(2)));
    }

    #[test]
    fn activation_threshold_gates_waking_only() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[("keepAlive", "0s"), ("activationThreshold", "3")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        ws.tick(&view(1, 2.0, 0.0, 0), Duration::from_secs(1));
        assert_eq!(w.answer().active, Ok(false));
        ws.tick(&view(2, 4.0, 0.0, 0), Duration::from_secs(2));
        assert_eq!(w.answer().active, Ok(true));
        // Awake with one busy replica and demand under the threshold: still active.
        ws.tick(&view(3, 0.0, 1.0, 1), Duration::from_secs(3));
        assert_eq!(w.answer().active, Ok(true));
    }

    #[test]
    fn two_triggers_for_one_deployment_each_keep_their_own_answer() {
        let ws = Workloads::new(100, Duration::from_secs(600));
        let a = ws
            .register(
                trigger(&[("queue.target", "2")]),
                "ScaledObject llm/a",
                Duration::ZERO,
            )
            .unwrap();
        let b = ws
            .register(
                trigger(&[("queue.target", "4")]),
                "ScaledObject llm/b",
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(ws.len(), 2);
        // Asking again, alternately, finds each its own entry: nothing is rebuilt.
        for _ in 0..3 {
            for (t, asker, same) in [("2", "ScaledObject llm/a", &a), ("4", "ScaledObject llm/b", &b)] {
                let w = ws
                    .register(trigger(&[("queue.target", t)]), asker, Duration::from_secs(1))
                    .unwrap();
                assert!(Arc::ptr_eq(&w, same));
            }
        }
        ws.tick(&view(1, 7.0, 0.0, 1), Duration::from_secs(1));
        assert_eq!(a.answer().value, Ok(4.0));
        assert_eq!(b.answer().value, Ok(2.0));
        // Held reports and replica counts reach every entry of the Deployment.
        let key = a.trigger.workload.clone();
        assert!(ws.held(&key, 9.0, None, Duration::from_secs(1)));
        assert_eq!(lock(&b).held.map(|h| h.requests), Some(9.0));
        // Bounded per Deployment.
        for i in 0..MAX_TRIGGERS_PER_WORKLOAD - 2 {
            let t = format!("{}", 10 + i);
            ws.register(trigger(&[("queue.target", &t)]), "x", Duration::ZERO)
                .unwrap();
        }
        let Err(e) = ws.register(
            trigger(&[("queue.target", "99")]),
            "ScaledObject llm/z",
            Duration::ZERO,
        ) else {
            panic!("a ninth trigger was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("ScaledObject llm/a") && e.contains("one gpuscale trigger"),
            "{e}"
        );
    }

    #[test]
    fn a_max_signal_age_the_heartbeat_outlasts_is_warned_about() {
        // Pages of a steady collector every 5 s heartbeat, read a second before: 6 s.
        let ws = Workloads::new(10, Duration::from_secs(600)).with_reading_refresh(Duration::from_secs(6));
        let short = ws
            .register(
                trigger(&[("maxSignalAge", "3s")]),
                "ScaledObject llm/a",
                Duration::ZERO,
            )
            .unwrap();
        let w = lock(&short).warning.clone().unwrap_or_default();
        assert!(
            w.contains("maxSignalAge 3s") && w.contains("--collector-wait") && w.contains("above 6s"),
            "{w}"
        );
        // The default (30 s) is well above it; and a scaler that never said (tests, tools) warns
        // about nothing.
        let fine = ws
            .register(trigger(&[]), "ScaledObject llm/b", Duration::ZERO)
            .unwrap();
        assert_eq!(lock(&fine).warning, None);
        let quiet = Workloads::new(10, Duration::from_secs(600));
        let w = quiet
            .register(
                trigger(&[("maxSignalAge", "3s")]),
                "ScaledObject llm/a",
                Duration::ZERO,
            )
            .unwrap();
        assert_eq!(lock(&w).warning, None);
    }

    #[test]
    fn bounded_and_forgetful() {
        let ws = Workloads::new(1, Duration::from_secs(60));
        ws.register(trigger(&[]), "t", Duration::ZERO).unwrap();
        let mut md: Map<String, String> = Map::new();
        md.insert("deployment".into(), "other".into());
        let e = ws.register(Trigger::parse("llm", &md).unwrap(), "t", Duration::ZERO);
        assert!(matches!(e, Err(RegisterError::Full(1))));
        ws.tick(&view(100, 0.0, 0.0, 0), Duration::from_secs(100));
        assert!(ws.is_empty());
    }

    #[test]
    fn a_tick_does_not_hold_the_map_while_it_decides() {
        let ws = Arc::new(Workloads::new(10, Duration::from_secs(600)));
        let w = ws.register(trigger(&[]), "t", Duration::ZERO).unwrap();
        // The tick blocks on this workload, as on a slow decision...
        let held = lock(&w);
        let t = {
            let ws = ws.clone();
            std::thread::spawn(move || ws.tick(&view(1, 1.0, 1.0, 1), Duration::from_secs(1)))
        };
        std::thread::sleep(Duration::from_millis(100));
        // ...and meanwhile a registration (the map's write lock) goes through, so an RPC's read of
        // the map never queues behind a tick.
        let (tx, rx) = std::sync::mpsc::channel();
        let r = {
            let ws = ws.clone();
            std::thread::spawn(move || {
                let mut md: Map<String, String> = Map::new();
                md.insert("deployment".into(), "other".into());
                let ok = ws
                    .register(Trigger::parse("llm", &md).unwrap(), "t", Duration::ZERO)
                    .is_ok();
                let _ = tx.send(ok);
            })
        };
        let registered = rx.recv_timeout(Duration::from_secs(5));
        drop(held);
        t.join().unwrap();
        r.join().unwrap();
        assert_eq!(registered, Ok(true), "registration waited for the tick");
        let decided = w.answer().value.clone();
        assert!(
            decided.is_ok(),
            "the held workload was still decided: {decided:?}"
        );
    }

    /// The in-process activator's reports reach the workload at once: held requests at zero
    /// replicas make it active without waiting for a tick.
    #[test]
    fn the_in_process_activator_wakes_a_workload_at_zero() {
        use gpuscale_activator::HeldSink as _;
        let clock = Clock::start();
        let ws = Arc::new(Workloads::new(10, Duration::from_secs(600)));
        let w = ws.register(trigger(&[]), "t", clock.now()).unwrap();
        let key = w.trigger.workload.clone();
        InProcess(ws.clone(), clock).held(&key, 20, Some(0));
        assert_eq!(
            lock(&w).held.map(|h| (h.requests, h.ready)),
            Some((20.0, Some(0)))
        );
        assert_eq!(w.answer().active, Ok(true), "20 held wake {key}");
        InProcess(ws.clone(), clock).held(&key, 0, Some(0));
        assert_ne!(
            w.answer().active,
            Ok(true),
            "nothing held, nothing decided: not active"
        );
    }

    /// KEDA's RPCs read the published answer: a decision holding the workload's lock (here held
    /// by the test) never delays GetMetrics or IsActive.
    #[test]
    fn rpcs_answer_while_a_decision_holds_the_workload() {
        use crate::keda::pb::external_scaler_server::ExternalScaler as _;
        let ws = Arc::new(Workloads::new(10, Duration::from_secs(600)));
        let w = ws.register(trigger(&[]), "t", Duration::ZERO).unwrap();
        ws.tick(&view(1, 3.0, 1.0, 1), Duration::from_secs(1));
        let fingerprint = w.trigger.fingerprint;
        let held = lock(&w);
        let (tx, rx) = std::sync::mpsc::channel();
        let rpc = {
            let ws = ws.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let scaler = crate::keda::grpc::Scaler::new(
                    ws.clone(),
                    Arc::default(),
                    gpuscale_contract::Clock::start(),
                );
                // The same metadata the entry was registered with, so it resolves to it.
                let md: Map<String, String> = [("deployment".to_string(), "qwen".to_string())].into();
                let key = crate::keda::trigger::Trigger::parse("llm", &md).unwrap().workload;
                assert!(ws.get(&key, fingerprint).is_some());
                let so = crate::keda::pb::ScaledObjectRef {
                    name: "qwen".into(),
                    namespace: "llm".into(),
                    scaler_metadata: md,
                };
                let active = rt.block_on(scaler.is_active(tonic::Request::new(so.clone())));
                let metric = rt.block_on(scaler.get_metrics(tonic::Request::new(
                    crate::keda::pb::GetMetricsRequest {
                        scaled_object_ref: Some(so),
                        metric_name: String::new(),
                    },
                )));
                let _ = tx.send((
                    active.map(|r| r.into_inner().result).map_err(|e| e.to_string()),
                    metric
                        .map(|r| r.into_inner().metric_values[0].metric_value_float)
                        .map_err(|e| e.to_string()),
                ));
            })
        };
        let answered = rx.recv_timeout(Duration::from_secs(5));
        drop(held);
        rpc.join().unwrap();
        let (active, metric) = answered.unwrap_or_else(|_| panic!("the RPCs waited for the workload's lock"));
        assert_eq!(active, Ok(true));
        assert!(metric.is_ok_and(|v| v >= 1.0));
    }

    #[test]
    fn scale_up_past_free_gpus_is_reported() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws
            .register(
                trigger(&[("queue.target", "1"), ("gpusPerReplica", "2")]),
                "ScaledObject llm/qwen",
                Duration::ZERO,
            )
            .unwrap();
        let mut v = view(1, 5.0, 0.0, 1);
        v.capacity.insert(
            ("n1".into(), "NVIDIA H100".into()),
            crate::sources::aggregate::Capacity {
                allocatable: 8,
                allocated: 5,
            },
        );
        ws.tick(&v, Duration::from_secs(1));
        let g = lock(&w);
        assert_eq!(
            w.answer().value,
            Ok(5.0),
            "still asked for: the cluster autoscaler may add nodes"
        );
        let c = g.capacity.clone().unwrap();
        assert!(c.contains("1 -> 5 needs 8 GPUs") && c.contains("3 free"), "{c}");
    }

    #[test]
    fn kube_replicas_without_collector_series_are_unknown() {
        let ws = Workloads::new(10, Duration::from_secs(600));
        let w = ws.register(trigger(&[]), "t", Duration::ZERO).unwrap();
        let key = w.trigger.workload.clone();
        ws.set_replicas(
            &key,
            Replicas {
                desired: 2,
                ready: 2,
                starting: 0,
            },
        );
        ws.tick(&view(1, 0.0, 0.0, 0), Duration::from_secs(1));
        let e = w.answer().value.clone().unwrap_err();
        assert!(matches!(e, NotKnown::Unobserved(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("no collector reports them"), "{e}");
    }
}
