//! The replay engine: arrivals, a central FIFO queue, replicas that start, serve and drain,
//! and a control loop that asks the policies crate what to run. The request path (arrive,
//! wait, dispatch, complete or expire) is in [`queue`], the replicas and how a count is applied
//! in [`replicas`], the iteration-level LLM scheduling in [`llm`], and the control side (what
//! the collector measures, the signals, the direct or KEDA loop) in [`control`]; this module
//! owns the clock, the event loop and the accounting.
//!
//! Discrete events in integer microseconds (exact ordering, no float drift): arrivals in trace
//! order, completions and replica readiness from two heaps, and a control tick at every whole
//! second. Requests wait in one FIFO queue (the gateway or activator queue) and go to the ready
//! replica with the fewest outstanding requests that can take them (least-outstanding routing).

mod control;
mod llm;
mod queue;
mod replicas;

pub use control::{ControlConfig, LoopModel};

use std::cmp::Reverse;
use std::collections::VecDeque;

use gpuscale_policies::Autoscaler;

use crate::llm::{LlmReplica, Phase};
use crate::rng::Rng;
use crate::serving::{ServiceDist, Serving, ServingConfig};
use crate::trace::Trace;
use control::{Control, Fleet, Load};
use llm::LlmSide;
use replicas::{Replicas, State};

const US: f64 = 1_000_000.0;

fn us(s: f64) -> u64 {
    (s * US).round().max(0.0) as u64
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

/// A replay of one trace under one autoscaler.
pub struct Engine<'a> {
    trace: &'a Trace,
    serving: &'a ServingConfig,
    config: &'a ControlConfig,
    services: &'a [f32],
    rng: Rng,
    /// The clock, µs.
    now: u64,
    /// The gateway (activator) queue, in arrival order.
    queue: VecDeque<u32>,
    /// Per request: when it went to a replica (µs), and its prefill time in the batching model.
    dispatched_at: Vec<u64>,
    prefill_of: Vec<f32>,
    fleet: Replicas,
    /// The iteration-level LLM model's state (empty in the other models).
    llm: LlmSide,
    control: Control,
    out: Outcome,
    /// GPU-seconds are accounted up to this instant.
    last_account: u64,
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
        let llm = matches!(serving.serving, Serving::Llm(_));
        Engine {
            trace,
            serving,
            config: control,
            services,
            rng: Rng::new(seed),
            now: 0,
            queue: VecDeque::new(),
            dispatched_at: vec![u64::MAX; n],
            prefill_of: match serving.serving {
                Serving::Batching(_) => vec![0.0; n],
                _ => Vec::new(),
            },
            fleet: Replicas::new(initial),
            llm: LlmSide::new(if llm { initial } else { 0 }, if llm { n } else { 0 }),
            control: Control::new(control, autoscaler, llm),
            out: Outcome {
                replicas_max: initial,
                ..Outcome::default()
            },
            last_account: 0,
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
                self.llm.reqs.phase[req] = Phase::Done;
                let first = self.llm.reqs.first_token_at[req];
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
            self.out.gpu_seconds +=
                f64::from(self.fleet.alive) * dt * f64::from(self.serving.gpus_per_replica);
            self.out.replicas_mean += f64::from(self.fleet.alive) * dt;
            self.last_account = to;
        }
    }

    /// Run to the end of the trace (plus drain) and report.
    pub fn run(mut self) -> Outcome {
        let reqs = &self.trace.requests;
        let auto = self.config.drain.is_none();
        let mut end = us(self.trace.span() + self.config.drain.unwrap_or(self.serving.timeout));
        let mut next_arrival = 0usize;
        let mut next_tick: u64 = 0;
        let arrival_at = |i: usize| reqs.get(i).map_or(u64::MAX, |r| us(r.arrival));
        let mut t_arr = arrival_at(0);
        loop {
            let t_done = self
                .fleet
                .completions
                .peek()
                .map_or(u64::MAX, |Reverse((t, _, _))| *t);
            let t_ready = self.fleet.readies.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
            let t_step = self.llm.steps.peek().map_or(u64::MAX, |Reverse((t, _, _))| *t);
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
                let Some(Reverse((_, rep, req))) = self.fleet.completions.pop() else {
                    continue;
                };
                self.complete(rep as usize, req as usize);
                self.dispatch();
            } else if t_ready == t {
                let Some(Reverse((_, rep))) = self.fleet.readies.pop() else {
                    continue;
                };
                let r = &mut self.fleet.list[rep as usize];
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
                let Some(Reverse((_, rep, generation))) = self.llm.steps.pop() else {
                    continue;
                };
                self.llm_step_end(rep as usize, generation);
            }
        }
        self.finish(end, next_arrival as u64)
    }

    /// Requests waiting: the gateway queue and, in the LLM model, the replicas' own queues.
    fn waiting_now(&self) -> usize {
        self.queue.len() + self.llm.replicas.iter().map(|r| r.waiting.len()).sum::<usize>()
    }

    /// Requests in service.
    fn running_now(&self) -> u32 {
        match self.serving.serving {
            Serving::Llm(_) => self.llm.replicas.iter().map(LlmReplica::running).sum(),
            _ => self.fleet.busy_total,
        }
    }

    fn tick(&mut self, sec: u64) {
        self.expire();
        let arrivals = self.control.open(sec);
        if self.control.scrape_due(sec) {
            let load = self.load();
            self.control.scraped(sec, load);
        }
        let (ready, starting) = self.fleet.counts();
        let fleet = Fleet {
            desired: self.fleet.desired,
            ready,
            starting,
            waiting: self.waiting_now() as f64,
            running: f64::from(self.running_now()),
        };
        let step = self.control.step(sec, &fleet);
        if let Some(rule) = step.rule {
            self.out.last_rule = rule;
        }
        for n in step.apply.into_iter().flatten() {
            self.apply(n);
        }
        if self.config.timeline_step > 0 && sec.is_multiple_of(self.config.timeline_step) {
            let (ready, starting) = self.fleet.counts();
            self.out.timeline.push(Point {
                t: sec,
                arrivals,
                queued: self.waiting_now() as u32,
                ready,
                starting,
                desired: self.fleet.desired,
                running: self.running_now(),
            });
        }
    }

    /// What a scrape of the model servers would read now.
    fn load(&self) -> Load {
        let (kv, gpu) = self.fleet.usage(&self.serving.serving, &self.llm.replicas);
        Load {
            waiting: self.waiting_now() as f64,
            running: f64::from(self.running_now()),
            kv,
            gpu,
        }
    }

    fn finish(mut self, end: u64, arrived: u64) -> Outcome {
        self.now = end;
        self.account(end);
        self.expire();
        let duration = end as f64 / US;
        self.out.requests = arrived;
        let in_flight = self.in_system(arrived);
        if self.config.drain.is_none() {
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
            f64::from(self.fleet.alive)
        };
        self.out
    }
}
