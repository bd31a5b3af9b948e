//! The replay engine: arrivals, a central FIFO queue, replicas that start, serve and drain,
//! and a control loop that asks the policies crate what to run.
//!
//! Discrete events in integer microseconds (exact ordering, no float drift): arrivals in trace
//! order, completions and replica readiness from two heaps, and a control tick at every whole
//! second. Requests wait in one FIFO queue (the gateway or activator queue) and go to the ready
//! replica with the fewest outstanding requests that can take them (least-outstanding routing).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use gpuscale_policies::answer::Demand;

use crate::keda::{Keda, KedaConfig};
use gpuscale_policies::{Autoscaler, Reading, Signals};

use crate::llm::{LlmConfig, LlmReplica, Phase, Requests, Router, StepEvents};
use crate::rng::Rng;
use crate::serving::{ServiceDist, Serving, ServingConfig};
use crate::trace::Trace;

const US: f64 = 1_000_000.0;

fn us(s: f64) -> u64 {
    (s * US).round().max(0.0) as u64
}

/// How decisions reach the workload.
#[derive(Clone, Debug, PartialEq)]
pub enum LoopModel {
    /// gpuscale scales the Deployment itself every `tick` seconds. `None`: 1 s, except the
    /// `hpa` and `kpa` baselines, which decide at their upstream periods (15 s sync, 2 s tick).
    Direct {
        /// Decision period in whole seconds.
        tick: Option<u64>,
    },
    /// KEDA drives an HPA on gpuscale's number (replicas mode: desired count, target 1):
    /// IsActive every `polling` s (activation 0 -> 1, and back to 0 after `cooldown` s
    /// inactive), GetMetrics and the HPA (tolerance, default behavior) every `hpa_sync` s.
    Keda {
        /// `pollingInterval` (30 s).
        polling: u64,
        /// HPA `--horizontal-pod-autoscaler-sync-period` (15 s).
        hpa_sync: u64,
        /// `cooldownPeriod` (300 s).
        cooldown: u64,
    },
}

/// Control-side settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    /// How decisions are applied.
    pub loop_model: LoopModel,
    /// Seconds between metric scrapes; the policy sees the last scrape and its age (0: fresh).
    pub scrape_interval: u64,
    /// Record the per-second timeline every this many seconds (0: none).
    pub timeline_step: u64,
    /// Seconds to keep running after the last arrival; `None`: until every request has an
    /// outcome, at most `timeout` after the last arrival (when every one still in flight is
    /// past its timeout and fails).
    pub drain: Option<f64>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            loop_model: LoopModel::Direct { tick: None },
            scrape_interval: 0,
            timeline_step: 0,
            drain: None,
        }
    }
}

/// One point of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the first arrival.
    pub t: u64,
    /// Arrivals during the second before `t`.
    pub arrivals: u32,
    /// Requests waiting in the queue at `t`.
    pub queued: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Starting replicas.
    pub starting: u32,
    /// The count last asked for.
    pub desired: u32,
    /// Requests in service (not in the JSON schema; used by the report's demand line).
    #[serde(skip)]
    pub running: u32,
}

/// Everything one replay measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Requests that arrived.
    pub requests: u64,
    /// Completed within the timeout.
    pub completed: u64,
    /// Timed out (in the queue, or completed too late) or refused (a full queue, or larger
    /// than a replica's whole KV cache).
    pub failed: u64,
    /// Of the failed, refused at arrival as larger than the KV cache.
    pub rejected: u64,
    /// Queued or in service when the replay ended.
    pub in_flight_at_end: u64,
    /// End-to-end latency of every request with an outcome, failed ones as infinity, and of
    /// those still in flight at the end, also as infinity (s).
    pub latencies: Vec<f64>,
    /// Queue wait of every request, infinity for those that never left the queue (s).
    pub waits: Vec<f64>,
    /// Time to first token (LLM models only; infinity where none came in time; s).
    pub ttfts: Vec<f64>,
    /// Time per output token after the first, of completed requests with more than one (s).
    pub tpots: Vec<f64>,
    /// Sequences preempted for KV cache (recomputed later).
    pub preemptions: u64,
    /// GPU-seconds held (starting, ready and draining replicas).
    pub gpu_seconds: f64,
    /// Replicas that started and became ready (each paid a cold start).
    pub cold_starts: u64,
    /// Replicas that were starting and were removed before they became ready.
    pub cancelled_starts: u64,
    /// Changes of the desired count.
    pub scale_events: u64,
    /// Time-weighted mean of replicas held.
    pub replicas_mean: f64,
    /// Most replicas held at once.
    pub replicas_max: u32,
    /// Simulated seconds.
    pub duration: f64,
    /// Per-second timeline (if asked for).
    pub timeline: Vec<Point>,
    /// The last decision's reason code.
    pub last_rule: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Starting(u64),
    Ready,
    Draining,
    Gone,
}

#[derive(Clone, Copy, Debug)]
struct Replica {
    state: State,
    busy: u32,
    tokens: u64,
}

/// Seconds of history behind the arrival rate (`rate(requests[1m])`).
const RATE_WINDOW: usize = 60;
/// Seconds of history behind the mean service time (`rate(sum[5m]) / rate(count[5m])`): a
/// property of the model that must outlive sparse traffic and a cold start.
const SERVICE_WINDOW: usize = 300;

/// Seconds of history behind the token rates: the collector's rate window over the model
/// server's token counters.
const TOKEN_WINDOW: usize = 10;

/// Per-second rings with running totals, so a scrape is O(1).
struct Windows {
    arrivals: [u32; RATE_WINDOW],
    arrivals_total: u32,
    /// Prompt and output tokens computed, per second.
    tokens: [(u64, u64); TOKEN_WINDOW],
    tokens_total: (u64, u64),
    service_sum: Box<[f64; SERVICE_WINDOW]>,
    service_n: Box<[u32; SERVICE_WINDOW]>,
    service_sum_total: f64,
    service_n_total: u32,
}

impl Windows {
    fn new() -> Self {
        Windows {
            arrivals: [0; RATE_WINDOW],
            arrivals_total: 0,
            tokens: [(0, 0); TOKEN_WINDOW],
            tokens_total: (0, 0),
            service_sum: Box::new([0.0; SERVICE_WINDOW]),
            service_n: Box::new([0; SERVICE_WINDOW]),
            service_sum_total: 0.0,
            service_n_total: 0,
        }
    }

    /// Second `sec` starts: its slots are reused, so what they held leaves the totals.
    fn open(&mut self, sec: u64) {
        let a = (sec as usize) % RATE_WINDOW;
        self.arrivals_total -= self.arrivals[a];
        self.arrivals[a] = 0;
        let t = (sec as usize) % TOKEN_WINDOW;
        self.tokens_total.0 -= self.tokens[t].0;
        self.tokens_total.1 -= self.tokens[t].1;
        self.tokens[t] = (0, 0);
        let s = (sec as usize) % SERVICE_WINDOW;
        self.service_sum_total -= self.service_sum[s];
        self.service_n_total -= self.service_n[s];
        self.service_sum[s] = 0.0;
        self.service_n[s] = 0;
        if self.service_n_total == 0 {
            self.service_sum_total = 0.0; // no float residue once the window is empty
        }
    }

    fn arrival(&mut self, sec: u64) {
        self.arrivals[(sec as usize) % RATE_WINDOW] += 1;
        self.arrivals_total += 1;
    }

    fn tokens(&mut self, sec: u64, prompt: u64, generated: u64) {
        let slot = &mut self.tokens[(sec as usize) % TOKEN_WINDOW];
        slot.0 += prompt;
        slot.1 += generated;
        self.tokens_total.0 += prompt;
        self.tokens_total.1 += generated;
    }

    fn completion(&mut self, sec: u64, service: f64) {
        let s = (sec as usize) % SERVICE_WINDOW;
        self.service_sum[s] += service;
        self.service_n[s] += 1;
        self.service_sum_total += service;
        self.service_n_total += 1;
    }
}

/// The last scrape of the workload's metrics.
#[derive(Clone, Copy)]
struct Scrape {
    at: u64,
    waiting: f64,
    running: f64,
    kv: f64,
    gpu: f64,
    rate: f64,
    service: Option<f64>,
    /// Prompt and output tokens/s over the token window; only the LLM model has tokens.
    tokens: Option<(f64, f64)>,
}

/// A replay of one trace under one autoscaler.
pub struct Engine<'a> {
    trace: &'a Trace,
    serving: &'a ServingConfig,
    control: &'a ControlConfig,
    services: &'a [f32],
    autoscaler: Autoscaler,
    rng: Rng,
    now: u64,
    queue: VecDeque<u32>,
    replicas: Vec<Replica>,
    completions: BinaryHeap<Reverse<(u64, u32, u32)>>,
    readies: BinaryHeap<Reverse<(u64, u32)>>,
    // per-request bookkeeping
    dispatched_at: Vec<u64>,
    prefill_of: Vec<f32>,
    out: Outcome,
    // accounting
    alive: u32,
    last_account: u64,
    desired: u32,
    busy_total: u32,
    windows: Windows,
    arrivals_this_second: u32,
    last_scrape: Option<Scrape>,
    /// KEDA's model, in `--loop keda`.
    keda: Option<Keda>,
    // iteration-level LLM model
    llm: Vec<LlmReplica>,
    /// Replicas that may be idle (checked when taken; duplicates and stale entries are fine).
    idle_hint: Vec<u32>,
    /// Replicas with a step start scheduled for this instant.
    pending_starts: usize,
    /// Per replica, its open run of decode steps as (start, step, end) µs, or end 0: a compact
    /// copy, so finding the one to cut short scans 24 bytes a replica.
    open_runs: Vec<(u64, u64, u64)>,
    reqs: Requests,
    steps: BinaryHeap<Reverse<(u64, u32, u32)>>,
    ev: StepEvents,
}

/// Service times for a trace without them, drawn once so every policy sees the same requests.
pub fn service_times(trace: &Trace, serving: &ServingConfig, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0x5EED_5E41_CE00_0001);
    trace
        .requests
        .iter()
        .map(|r| match r.service() {
            Some(s) => s as f32,
            None => match serving.service_dist {
                ServiceDist::Exp => rng.exp(serving.service_time) as f32,
                ServiceDist::Const => serving.service_time as f32,
            },
        })
        .collect()
}

impl<'a> Engine<'a> {
    /// An engine at t = 0 with `initial_replicas` ready.
    pub fn new(
        trace: &'a Trace,
        serving: &'a ServingConfig,
        control: &'a ControlConfig,
        services: &'a [f32],
        autoscaler: Autoscaler,
        seed: u64,
    ) -> Self {
        let n = trace.requests.len();
        let initial = serving.initial_replicas;
        Engine {
            trace,
            serving,
            control,
            services,
            autoscaler,
            rng: Rng::new(seed),
            now: 0,
            queue: VecDeque::new(),
            replicas: vec![
                Replica {
                    state: State::Ready,
                    busy: 0,
                    tokens: 0
                };
                initial as usize
            ],
            completions: BinaryHeap::new(),
            readies: BinaryHeap::new(),
            dispatched_at: vec![u64::MAX; n],
            prefill_of: match serving.serving {
                Serving::Batching(_) => vec![0.0; n],
                _ => Vec::new(),
            },
            out: Outcome {
                replicas_max: initial,
                ..Outcome::default()
            },
            alive: initial,
            last_account: 0,
            desired: initial,
            busy_total: 0,
            windows: Windows::new(),
            arrivals_this_second: 0,
            last_scrape: None,
            keda: match control.loop_model {
                LoopModel::Keda {
                    polling,
                    hpa_sync,
                    cooldown,
                } => Some(Keda::new(KedaConfig {
                    polling,
                    hpa_sync,
                    cooldown,
                })),
                LoopModel::Direct { .. } => None,
            },
            llm: match serving.serving {
                Serving::Llm(_) => (0..initial).map(|_| LlmReplica::default()).collect(),
                _ => Vec::new(),
            },
            idle_hint: (0..initial).collect(),
            pending_starts: 0,
            open_runs: vec![(0, 1, 0); initial as usize],
            reqs: Requests::new(match serving.serving {
                Serving::Llm(_) => n,
                _ => 0,
            }),
            steps: BinaryHeap::new(),
            ev: StepEvents::default(),
        }
    }

    fn llm_config(&self) -> Option<&'a LlmConfig> {
        let serving: &'a ServingConfig = self.serving;
        match &serving.serving {
            Serving::Llm(c) => Some(c),
            _ => None,
        }
    }

    /// Requests arrived and without an outcome.
    fn in_system(&self, arrived: u64) -> u64 {
        arrived - self.out.completed - self.out.failed
    }

    fn fail(&mut self, req: usize, dispatched: bool) {
        self.out.failed += 1;
        self.out.latencies.push(f64::INFINITY);
        if !dispatched {
            self.out.waits.push(f64::INFINITY);
        }
        match self.serving.serving {
            Serving::Llm(_) => {
                self.reqs.phase[req] = Phase::Done;
                let first = self.reqs.first_token_at[req];
                self.out.ttfts.push(if first == u64::MAX {
                    f64::INFINITY
                } else {
                    (first - us(self.trace.requests[req].arrival)) as f64 / US
                });
            }
            Serving::Batching(_) => self.out.ttfts.push(f64::INFINITY),
            Serving::Concurrency { .. } => {}
        }
    }

    fn account(&mut self, to: u64) {
        if to > self.last_account {
            let dt = (to - self.last_account) as f64 / US;
            self.out.gpu_seconds += f64::from(self.alive) * dt * f64::from(self.serving.gpus_per_replica);
            self.out.replicas_mean += f64::from(self.alive) * dt;
            self.last_account = to;
        }
    }

    fn counts(&self) -> (u32, u32) {
        let mut ready = 0;
        let mut starting = 0;
        for r in &self.replicas {
            match r.state {
                State::Ready => ready += 1,
                State::Starting(_) => starting += 1,
                _ => {}
            }
        }
        (ready, starting)
    }

    /// Run to the end of the trace (plus drain) and report.
    pub fn run(mut self) -> Outcome {
        let reqs = &self.trace.requests;
        let auto = self.control.drain.is_none();
        let mut end = us(self.trace.span() + self.control.drain.unwrap_or(self.serving.timeout));
        let mut next_arrival = 0usize;
        let mut next_tick: u64 = 0;
        let arrival_at = |i: usize| reqs.get(i).map_or(u64::MAX, |r| us(r.arrival));
        let mut t_arr = arrival_at(0);
        loop {
            let t_done = self.completions.peek().map_or(u64::MAX, |Reverse((t, _, _))| *t);
            let t_ready = self.readies.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
            let t_step = self.steps.peek().map_or(u64::MAX, |Reverse((t, _, _))| *t);
            let t = t_arr.min(t_done).min(t_ready).min(next_tick).min(t_step);
            if t > end {
                break;
            }
            if auto && next_arrival == reqs.len() && self.in_system(next_arrival as u64) == 0 {
                // Every request has an outcome: the replay ends at the last one.
                end = self.now.max(us(self.trace.span()));
                break;
            }
            self.account(t);
            self.now = t;
            // At equal times the tick goes first: it closes the second that ended, so an event
            // at exactly `s` (1 s resolution traces) belongs to the second [s, s + 1).
            if next_tick == t {
                self.tick(next_tick / 1_000_000);
                next_tick += 1_000_000;
            } else if t_done == t {
                let Some(Reverse((_, rep, req))) = self.completions.pop() else {
                    continue;
                };
                self.complete(rep as usize, req as usize);
                self.dispatch();
            } else if t_ready == t {
                let Some(Reverse((_, rep))) = self.readies.pop() else {
                    continue;
                };
                let r = &mut self.replicas[rep as usize];
                if r.state == State::Starting(t) {
                    r.state = State::Ready;
                    self.out.cold_starts += 1;
                    self.llm_ready(rep as usize);
                    self.dispatch();
                }
            } else if t_arr == t {
                // Before step events at the same instant: a replica starting a step now
                // schedules every request that has arrived by now.
                self.arrive(next_arrival as u32);
                next_arrival += 1;
                t_arr = arrival_at(next_arrival);
                self.dispatch();
            } else {
                let Some(Reverse((_, rep, generation))) = self.steps.pop() else {
                    continue;
                };
                self.llm_step_end(rep as usize, generation);
            }
        }
        self.finish(end, next_arrival as u64)
    }

    fn arrive(&mut self, req: u32) {
        self.arrivals_this_second += 1;
        self.windows.arrival(self.now / 1_000_000);
        if self.queue.len() >= self.serving.max_queue {
            self.fail(req as usize, false);
            return;
        }
        let Some(cfg) = self.llm_config() else {
            self.queue.push_back(req);
            return;
        };
        let rq = self.trace.requests[req as usize];
        if u64::from(rq.input_tokens.max(1)) + u64::from(rq.output_tokens.max(1)) > cfg.kv_tokens {
            // vLLM refuses a request longer than its context can ever hold.
            self.out.rejected += 1;
            self.fail(req as usize, false);
            return;
        }
        match cfg.router {
            Router::Shared => {
                self.queue.push_back(req);
                self.llm_kick_shared(false);
            }
            Router::LeastLoaded => match self.least_loaded() {
                Some(i) => {
                    self.llm[i].waiting.push_back(req);
                    self.llm_kick(i);
                }
                None => self.queue.push_back(req),
            },
        }
    }

    /// The ready replica with the fewest requests running and waiting.
    fn least_loaded(&self) -> Option<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].state == State::Ready)
            .min_by_key(|&i| self.llm[i].load())
    }

    /// An idle replica starts a step once every event of this instant is in.
    fn llm_schedule_start(&mut self, i: usize) {
        let r = &mut self.llm[i];
        if !r.busy() && !r.pending_start {
            r.pending_start = true;
            self.pending_starts += 1;
            self.steps.push(Reverse((self.now, i as u32, r.generation)));
        }
    }

    /// A replica that may have room: start a step if idle, else cut a decode run short.
    fn llm_kick(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        if !self.llm[i].busy() {
            self.llm_schedule_start(i);
        } else if let Some(end) = self.llm[i].interrupt(self.now, cfg) {
            self.steps.push(Reverse((end, i as u32, self.llm[i].generation)));
        }
    }

    /// Requests wait in the gateway queue: idle replicas take them now, busy ones with room
    /// at their next step.
    /// A ready replica with nothing to do, if there is one.
    fn take_idle(&mut self) -> Option<usize> {
        while let Some(i) = self.idle_hint.pop() {
            let i = i as usize;
            let r = &self.llm[i];
            if self.replicas[i].state == State::Ready && !r.busy() && !r.pending_start {
                return Some(i);
            }
        }
        None
    }

    /// Requests wait in the gateway queue: one replica per waiting request is woken. An idle
    /// one starts a step now; else, when the queue has just become non-empty (or a replica
    /// left requests behind it), the busy one with room whose step ends first is cut short at
    /// that boundary. Waking every replica for one request would only cost events.
    fn llm_kick_shared(&mut self, scan: bool) {
        let Some(cfg) = self.llm_config() else { return };
        if self.queue.is_empty() || self.pending_starts >= self.queue.len() {
            return;
        }
        if let Some(i) = self.take_idle() {
            self.llm_schedule_start(i);
            return;
        }
        if !(scan || self.queue.len() == 1) {
            return;
        }
        // Only a run of decode steps needs cutting: a replica in a single step composes at
        // its end anyway. The run whose next boundary comes first is cut.
        let now = self.now;
        let mut first = None::<(u64, usize)>;
        for (i, &(start, dt, end)) in self.open_runs.iter().enumerate() {
            if end <= now {
                continue;
            }
            let b = start + (now.saturating_sub(start) / dt + 1) * dt;
            if b < end && first.is_none_or(|(fb, _)| b < fb) {
                first = Some((b, i));
            }
        }
        if let Some((_, i)) = first
            && self.replicas[i].state == State::Ready
        {
            if let Some(end) = self.llm[i].interrupt(now, cfg) {
                self.steps.push(Reverse((end, i as u32, self.llm[i].generation)));
            }
            self.open_runs[i].2 = 0;
        }
    }

    fn llm_ready(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        match cfg.router {
            Router::Shared => {
                self.idle_hint.push(i as u32);
                self.llm_kick_shared(true);
            }
            Router::LeastLoaded => {
                // The activator releases what it held through the Service.
                while let Some(req) = self.queue.pop_front() {
                    let to = self.least_loaded().unwrap_or(i);
                    self.llm[to].waiting.push_back(req);
                }
                for j in 0..self.replicas.len() {
                    if self.replicas[j].state == State::Ready {
                        self.llm_kick(j);
                    }
                }
            }
        }
    }

    fn llm_compose(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        let state = self.replicas[i].state;
        let shared = state == State::Ready && cfg.router == Router::Shared;
        let queued = self.queue.len();
        let central = shared.then_some(&mut self.queue);
        self.ev.admitted.clear();
        let end = self.llm[i].compose(
            self.now,
            cfg,
            &self.trace.requests,
            &mut self.reqs,
            central,
            &mut self.ev,
        );
        self.out.preemptions += std::mem::take(&mut self.ev.preemptions);
        for k in 0..self.ev.admitted.len() {
            let req = self.ev.admitted[k] as usize;
            let wait = self.now.saturating_sub(us(self.trace.requests[req].arrival));
            self.out.waits.push(wait as f64 / US);
        }
        self.open_runs[i] = match (state, self.llm[i].open_run(cfg)) {
            (State::Ready, Some(run)) => run,
            _ => (0, 1, 0),
        };
        match end {
            Some(t) => self.steps.push(Reverse((t, i as u32, self.llm[i].generation))),
            None if state == State::Draining && self.llm[i].empty() => {
                self.replicas[i].state = State::Gone;
                self.alive -= 1;
            }
            None if state == State::Ready => self.idle_hint.push(i as u32),
            None => {}
        }
        if shared && self.queue.len() < queued && !self.queue.is_empty() {
            // It took what it could and left the rest: the next replica with room is woken.
            self.llm_kick_shared(true);
        }
    }

    fn llm_step_end(&mut self, i: usize, generation: u32) {
        if self.llm[i].generation != generation {
            return; // superseded by an interrupt, or the replica is gone
        }
        if !self.llm[i].busy() {
            if self.llm[i].pending_start {
                self.llm[i].pending_start = false;
                self.pending_starts -= 1;
                if matches!(self.replicas[i].state, State::Ready | State::Draining) {
                    self.llm_compose(i);
                }
            }
            return;
        }
        let mut ev = std::mem::take(&mut self.ev);
        ev.completed.clear();
        self.llm[i].finish_step(self.now, &self.trace.requests, &mut self.reqs, &mut ev);
        self.windows
            .tokens(self.now / 1_000_000, ev.prompt_tokens, ev.generation_tokens);
        (ev.prompt_tokens, ev.generation_tokens) = (0, 0);
        for &req in &ev.completed {
            let req = req as usize;
            let rq = self.trace.requests[req];
            let arrival = us(rq.arrival);
            let latency = (self.now - arrival) as f64 / US;
            let admitted = self.reqs.admitted_at[req];
            self.windows
                .completion(self.now / 1_000_000, (self.now - admitted) as f64 / US);
            if latency > self.serving.timeout {
                self.fail(req, true);
                continue;
            }
            let first = self.reqs.first_token_at[req];
            self.out.completed += 1;
            self.out.latencies.push(latency);
            self.out.ttfts.push((first - arrival) as f64 / US);
            if rq.output_tokens > 1 {
                self.out
                    .tpots
                    .push((self.now - first) as f64 / US / f64::from(rq.output_tokens - 1));
            }
        }
        self.ev = ev;
        if matches!(self.replicas[i].state, State::Ready | State::Draining) {
            self.llm_compose(i);
        }
    }

    /// Fail queued requests that have waited past the timeout (the head is the oldest).
    fn expire(&mut self) {
        let timeout = us(self.serving.timeout);
        let llm = self.llm_config().is_some();
        while let Some(&req) = self.queue.front() {
            let r = req as usize;
            if llm && self.reqs.phase[r] != Phase::Waiting {
                self.queue.pop_front(); // already has an outcome
            } else if us(self.trace.requests[r].arrival) + timeout <= self.now {
                self.queue.pop_front();
                self.fail(r, false);
            } else {
                break;
            }
        }
        for i in 0..self.llm.len() {
            while let Some(&req) = self.llm[i].waiting.front() {
                let r = req as usize;
                if self.reqs.phase[r] != Phase::Waiting {
                    self.llm[i].waiting.pop_front();
                } else if us(self.trace.requests[r].arrival) + timeout <= self.now {
                    self.llm[i].waiting.pop_front();
                    let dispatched = self.reqs.admitted_at[r] != u64::MAX;
                    self.fail(r, dispatched);
                } else {
                    break;
                }
            }
        }
    }

    fn dispatch(&mut self) {
        if self.llm_config().is_some() {
            // Replicas take work at their step boundaries; queued requests expire at the
            // second's tick.
            return;
        }
        self.expire();
        while let Some(&req) = self.queue.front() {
            let Some(rep) = self.pick(req as usize) else {
                return;
            };
            self.queue.pop_front();
            self.start_service(rep, req as usize);
        }
    }

    /// The ready replica with the fewest outstanding requests that can take `req`.
    fn pick(&self, req: usize) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        match &self.serving.serving {
            Serving::Concurrency { slots } => {
                for (i, r) in self.replicas.iter().enumerate() {
                    if r.state == State::Ready && r.busy < *slots && best.is_none_or(|(_, b)| r.busy < b) {
                        best = Some((i, r.busy));
                        if r.busy == 0 {
                            break;
                        }
                    }
                }
            }
            Serving::Llm(_) => {}
            Serving::Batching(b) => {
                let rq = &self.trace.requests[req];
                let need = u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
                for (i, r) in self.replicas.iter().enumerate() {
                    // A request larger than the whole KV cache is admitted alone rather than
                    // never: vLLM would reject it, but silently dropping it would hide it.
                    let fits = r.tokens + need <= b.max_batch_tokens || r.busy == 0;
                    if r.state == State::Ready
                        && r.busy < b.max_batch_seqs
                        && fits
                        && best.is_none_or(|(_, x)| r.busy < x)
                    {
                        best = Some((i, r.busy));
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }

    fn start_service(&mut self, rep: usize, req: usize) {
        let rq = self.trace.requests[req];
        let wait = self.now.saturating_sub(us(rq.arrival));
        self.out.waits.push(wait as f64 / US);
        self.dispatched_at[req] = self.now;
        let r = &mut self.replicas[rep];
        r.busy += 1;
        self.busy_total += 1;
        let service = match &self.serving.serving {
            Serving::Concurrency { .. } | Serving::Llm(_) => f64::from(self.services[req]),
            Serving::Batching(b) => {
                r.tokens += u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
                let prefill = b.prefill(rq.input_tokens);
                self.prefill_of[req] = prefill as f32;
                prefill + b.decode(rq.output_tokens, r.busy)
            }
        };
        self.completions
            .push(Reverse((self.now + us(service), rep as u32, req as u32)));
    }

    fn complete(&mut self, rep: usize, req: usize) {
        let rq = self.trace.requests[req];
        let r = &mut self.replicas[rep];
        r.busy -= 1;
        self.busy_total -= 1;
        if let Serving::Batching(_) = self.serving.serving {
            r.tokens -= u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
        }
        if r.state == State::Draining && r.busy == 0 {
            r.state = State::Gone;
            self.alive -= 1;
        }
        let started = self.dispatched_at[req];
        let latency = (self.now - us(rq.arrival)) as f64 / US;
        self.windows
            .completion(self.now / 1_000_000, (self.now - started) as f64 / US);
        if latency > self.serving.timeout {
            self.fail(req, true);
            return;
        }
        self.out.completed += 1;
        self.out.latencies.push(latency);
        if let Serving::Batching(_) = self.serving.serving {
            let wait = (started - us(rq.arrival)) as f64 / US;
            self.out.ttfts.push(wait + f64::from(self.prefill_of[req]));
        }
    }

    /// Requests waiting: the gateway queue and, in the LLM model, the replicas' own queues.
    fn waiting_now(&self) -> usize {
        self.queue.len() + self.llm.iter().map(|r| r.waiting.len()).sum::<usize>()
    }

    /// Requests in service.
    fn running_now(&self) -> u32 {
        match self.serving.serving {
            Serving::Llm(_) => self.llm.iter().map(LlmReplica::running).sum(),
            _ => self.busy_total,
        }
    }

    fn scrape(&self, sec: u64) -> Scrape {
        let (ready, _) = self.counts();
        let w = &self.windows;
        // The second in progress is included, so the window is the last (up to) 60 s.
        let window = (sec + 1).min(RATE_WINDOW as u64) as f64;
        let (kv, gpu) = match &self.serving.serving {
            _ if ready == 0 => (0.0, 0.0),
            Serving::Llm(c) => {
                let (mut tokens, mut busy) = (0u64, 0u32);
                for (i, r) in self.replicas.iter().enumerate() {
                    if r.state == State::Ready {
                        tokens += self.llm[i].kv_used;
                        busy += u32::from(self.llm[i].busy());
                    }
                }
                (
                    (tokens as f64 / (f64::from(ready) * c.kv_tokens as f64)).min(1.0),
                    f64::from(busy) / f64::from(ready),
                )
            }
            Serving::Concurrency { slots } => {
                let busy_replicas = self
                    .replicas
                    .iter()
                    .filter(|r| r.state == State::Ready && r.busy > 0)
                    .count();
                (
                    f64::from(self.busy_total) / f64::from(ready * slots),
                    busy_replicas as f64 / f64::from(ready),
                )
            }
            Serving::Batching(b) => {
                let (mut tokens, mut busy) = (0u64, 0u32);
                for r in self.replicas.iter().filter(|r| r.state == State::Ready) {
                    tokens += r.tokens;
                    busy += u32::from(r.busy > 0);
                }
                (
                    (tokens as f64 / (f64::from(ready) * b.max_batch_tokens as f64)).min(1.0),
                    f64::from(busy) / f64::from(ready),
                )
            }
        };
        Scrape {
            at: sec,
            waiting: self.waiting_now() as f64,
            running: f64::from(self.running_now()),
            kv,
            gpu,
            rate: f64::from(w.arrivals_total) / window,
            service: (w.service_n_total > 0).then(|| w.service_sum_total / f64::from(w.service_n_total)),
            tokens: matches!(self.serving.serving, Serving::Llm(_)).then(|| {
                let span = (sec + 1).min(TOKEN_WINDOW as u64) as f64;
                (w.tokens_total.0 as f64 / span, w.tokens_total.1 as f64 / span)
            }),
        }
    }

    fn signals(&self, sec: u64, scrape: &Scrape) -> Signals {
        let (ready, starting) = self.counts();
        let age = Duration::from_secs(sec - scrape.at);
        Signals {
            current: self.desired,
            ready,
            starting,
            waiting: Some(Reading::aged(scrape.waiting, age)),
            running: Some(Reading::aged(scrape.running, age)),
            kv_cache_usage: Some(Reading::aged(scrape.kv, age)),
            gpu_utilization: Some(Reading::aged(scrape.gpu, age)),
            arrival_rate: Some(Reading::aged(scrape.rate, age)),
            service_time: scrape.service.map(|s| Reading::aged(s, age)),
            prompt_tokens_rate: scrape.tokens.map(|t| Reading::aged(t.0, age)),
            generation_tokens_rate: scrape.tokens.map(|t| Reading::aged(t.1, age)),
            pods: Vec::new(),
        }
    }

    fn tick(&mut self, sec: u64) {
        self.expire();
        let arrivals = self.arrivals_this_second;
        self.arrivals_this_second = 0;
        self.windows.open(sec);

        let scrape_every = self.control.scrape_interval.max(1);
        if sec.is_multiple_of(scrape_every) || self.last_scrape.is_none() {
            self.last_scrape = Some(self.scrape(sec));
        }
        let scrape = self.last_scrape.unwrap_or_else(|| self.scrape(sec));
        let signals = self.signals(sec, &scrape);
        let now = Duration::from_secs(sec);
        let decided = self.control_step(sec, now, &signals);
        if !decided {
            self.autoscaler.observe(now, &signals);
        }
        if self.control.timeline_step > 0 && sec.is_multiple_of(self.control.timeline_step) {
            let (ready, starting) = self.counts();
            self.out.timeline.push(Point {
                t: sec,
                arrivals,
                queued: self.waiting_now() as u32,
                ready,
                starting,
                desired: self.desired,
                running: self.running_now(),
            });
        }
    }

    /// Run the control loop for this second; whether the autoscaler decided (and so observed).
    fn control_step(&mut self, sec: u64, now: Duration, signals: &Signals) -> bool {
        // Copy the `&'a ControlConfig` out so matching on it does not borrow `self`.
        let control = self.control;
        match control.loop_model {
            LoopModel::Direct { tick } => {
                let period = tick.unwrap_or_else(|| self.autoscaler.period().map_or(1, |p| p.as_secs()));
                if !sec.is_multiple_of(period.max(1)) {
                    return false;
                }
                let d = self.autoscaler.decide(now, signals);
                self.out.last_rule = d.rule.code().to_string();
                self.apply(d.desired);
                true
            }
            LoopModel::Keda { .. } => {
                if !self.keda.as_ref().is_some_and(|k| k.reads(sec, self.desired)) {
                    return false;
                }
                // One decision a second, whichever loops read it: the scaler decides on its own
                // clock and answers every RPC from the last decision.
                let d = self.autoscaler.decide(now, signals);
                self.out.last_rule = d.rule.code().to_string();
                // What the scaler sees. The simulator has no activator: requests queued at zero
                // replicas are the ones an activator would hold.
                let queued = self.waiting_now() as f64;
                let demand = if self.desired == 0 {
                    Demand {
                        held: queued,
                        ..Demand::default()
                    }
                } else {
                    Demand {
                        waiting: queued,
                        running: f64::from(self.running_now()),
                        held: 0.0,
                    }
                };
                let (bounds, age) = (self.autoscaler.bounds(), self.autoscaler.safety().max_signal_age);
                let actions = match self.keda.as_mut() {
                    Some(keda) => keda.step(sec, now, &d, self.desired, demand, signals, bounds, age),
                    None => return false,
                };
                for n in [actions.activation, actions.hpa].into_iter().flatten() {
                    self.apply(n);
                }
                true
            }
        }
    }

    fn apply(&mut self, desired: u32) {
        if desired != self.desired {
            self.out.scale_events += 1;
        }
        self.desired = desired;
        let (ready, starting) = self.counts();
        let active = ready + starting;
        if desired > active {
            for _ in 0..desired - active {
                let cold = self.serving.cold_start.sample(&mut self.rng);
                let ready_at = self.now + us(cold);
                let state = if cold <= 0.0 {
                    State::Ready
                } else {
                    State::Starting(ready_at)
                };
                let llm = self.llm_config().is_some();
                let idx = match self.replicas.iter().position(|r| r.state == State::Gone) {
                    Some(i) => {
                        self.replicas[i] = Replica {
                            state,
                            busy: 0,
                            tokens: 0,
                        };
                        if llm {
                            // A fresh scheduler; the generation carries on so no stale step
                            // event of the slot's previous replica can match.
                            if self.llm[i].pending_start {
                                self.pending_starts -= 1;
                            }
                            self.llm[i].reset();
                        }
                        i
                    }
                    None => {
                        self.replicas.push(Replica {
                            state,
                            busy: 0,
                            tokens: 0,
                        });
                        if llm {
                            self.llm.push(LlmReplica::default());
                            self.open_runs.push((0, 1, 0));
                        }
                        self.replicas.len() - 1
                    }
                };
                if cold > 0.0 {
                    self.readies.push(Reverse((ready_at, idx as u32)));
                } else {
                    self.out.cold_starts += 1;
                    self.llm_ready(idx);
                }
                self.alive += 1;
            }
            self.out.replicas_max = self.out.replicas_max.max(self.alive);
            self.dispatch();
        } else if desired < active {
            let mut remove = active - desired;
            // Starting replicas go first (newest first), then the least busy ready ones.
            for i in (0..self.replicas.len()).rev() {
                if remove == 0 {
                    break;
                }
                if let State::Starting(_) = self.replicas[i].state {
                    self.replicas[i].state = State::Gone;
                    self.alive -= 1;
                    self.out.cancelled_starts += 1;
                    remove -= 1;
                }
            }
            let llm = self.llm_config().is_some();
            while remove > 0 {
                let load = |i: usize| {
                    if llm {
                        self.llm[i].load() as u32 + u32::from(self.llm[i].busy())
                    } else {
                        self.replicas[i].busy
                    }
                };
                let pick = (0..self.replicas.len())
                    .filter(|&i| self.replicas[i].state == State::Ready)
                    .min_by_key(|&i| load(i));
                let Some(i) = pick else { break };
                if load(i) == 0 {
                    self.replicas[i].state = State::Gone;
                    self.alive -= 1;
                } else {
                    self.replicas[i].state = State::Draining;
                    if llm {
                        self.open_runs[i] = (0, 1, 0);
                    }
                }
                remove -= 1;
            }
        }
    }

    fn finish(mut self, end: u64, arrived: u64) -> Outcome {
        self.now = end;
        self.account(end);
        self.expire();
        let duration = end as f64 / US;
        self.out.requests = arrived;
        let in_flight = self.in_system(arrived);
        if self.control.drain.is_none() {
            // The run went on to `timeout` after the last arrival: whatever is still in
            // flight is past its timeout.
            self.out.failed += in_flight;
            self.out
                .latencies
                .extend(std::iter::repeat_n(f64::INFINITY, in_flight as usize));
        } else {
            self.out.in_flight_at_end = in_flight;
            self.out
                .latencies
                .extend(std::iter::repeat_n(f64::INFINITY, in_flight as usize));
        }
        self.out.duration = duration;
        self.out.replicas_mean = if duration > 0.0 {
            self.out.replicas_mean / duration
        } else {
            f64::from(self.alive)
        };
        self.out
    }
}
