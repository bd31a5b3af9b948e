//! The engine's side of the iteration-level LLM model ([`crate::llm`]): which replica a request
//! goes to (the shared gateway queue, or least-loaded routing), when a replica starts a step,
//! when a decode run is cut short so a waiting request is admitted at the next boundary, and
//! what a finished step completes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::replicas::State;
use super::{Engine, US, us};
use crate::llm::{LlmConfig, LlmReplica, Requests, Router, StepEvents};
use crate::serving::{Serving, ServingConfig};

/// The LLM model's per-replica schedulers and the events between them.
pub(super) struct LlmSide {
    /// One scheduler per replica slot (empty in the other serving models).
    pub(super) replicas: Vec<LlmReplica>,
    /// Replicas that may be idle (checked when taken; duplicates and stale entries are fine).
    pub(super) idle_hint: Vec<u32>,
    /// Replicas with a step start scheduled for this instant.
    pub(super) pending_starts: usize,
    /// Per replica, its open run of decode steps as (start, step, end) µs, or end 0: a compact
    /// copy, so finding the one to cut short scans 24 bytes a replica.
    pub(super) open_runs: Vec<(u64, u64, u64)>,
    pub(super) reqs: Requests,
    /// Step ends as (µs, replica, generation).
    pub(super) steps: BinaryHeap<Reverse<(u64, u32, u32)>>,
    pub(super) ev: StepEvents,
}

impl LlmSide {
    /// `replicas` ready schedulers for a trace of `requests` (both 0 outside the LLM model).
    pub(super) fn new(replicas: u32, requests: usize) -> Self {
        LlmSide {
            replicas: (0..replicas).map(|_| LlmReplica::default()).collect(),
            idle_hint: (0..replicas).collect(),
            pending_starts: 0,
            open_runs: vec![(0, 1, 0); replicas as usize],
            reqs: Requests::new(requests),
            steps: BinaryHeap::new(),
            ev: StepEvents::default(),
        }
    }
}

impl<'a> Engine<'a> {
    pub(super) fn llm_config(&self) -> Option<&'a LlmConfig> {
        let serving: &'a ServingConfig = self.serving;
        match &serving.serving {
            Serving::Llm(c) => Some(c),
            _ => None,
        }
    }

    /// The ready replica with the fewest requests running and waiting.
    pub(super) fn least_loaded(&self) -> Option<usize> {
        (0..self.fleet.list.len())
            .filter(|&i| self.fleet.list[i].state == State::Ready)
            .min_by_key(|&i| self.llm.replicas[i].load())
    }

    /// An idle replica starts a step once every event of this instant is in.
    pub(super) fn llm_schedule_start(&mut self, i: usize) {
        let r = &mut self.llm.replicas[i];
        if !r.busy() && !r.pending_start {
            r.pending_start = true;
            self.llm.pending_starts += 1;
            self.llm.steps.push(Reverse((self.now, i as u32, r.generation)));
        }
    }

    /// A replica that may have room: start a step if idle, else cut a decode run short.
    pub(super) fn llm_kick(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        if !self.llm.replicas[i].busy() {
            self.llm_schedule_start(i);
        } else if let Some(end) = self.llm.replicas[i].interrupt(self.now, cfg) {
            self.llm
                .steps
                .push(Reverse((end, i as u32, self.llm.replicas[i].generation)));
        }
    }

    /// A ready replica with nothing to do, if there is one.
    pub(super) fn take_idle(&mut self) -> Option<usize> {
        while let Some(i) = self.llm.idle_hint.pop() {
            let i = i as usize;
            let r = &self.llm.replicas[i];
            if self.fleet.list[i].state == State::Ready && !r.busy() && !r.pending_start {
                return Some(i);
            }
        }
        None
    }

    /// Requests wait in the gateway queue: one replica per waiting request is woken. An idle
    /// one starts a step now; else, when the queue has just become non-empty (or a replica
    /// left requests behind it), the busy one with room whose step ends first is cut short at
    /// that boundary. Waking every replica for one request would only cost events.
    pub(super) fn llm_kick_shared(&mut self, scan: bool) {
        let Some(cfg) = self.llm_config() else { return };
        if self.queue.is_empty() || self.llm.pending_starts >= self.queue.len() {
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
        for (i, &(start, dt, end)) in self.llm.open_runs.iter().enumerate() {
            if end <= now {
                continue;
            }
            let b = start + (now.saturating_sub(start) / dt + 1) * dt;
            if b < end && first.is_none_or(|(fb, _)| b < fb) {
                first = Some((b, i));
            }
        }
        if let Some((_, i)) = first
            && self.fleet.list[i].state == State::Ready
        {
            if let Some(end) = self.llm.replicas[i].interrupt(now, cfg) {
                self.llm
                    .steps
                    .push(Reverse((end, i as u32, self.llm.replicas[i].generation)));
            }
            self.llm.open_runs[i].2 = 0;
        }
    }

    pub(super) fn llm_ready(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        match cfg.router {
            Router::Shared => {
                self.llm.idle_hint.push(i as u32);
                self.llm_kick_shared(true);
            }
            Router::LeastLoaded => {
                // The activator releases what it held through the Service.
                while let Some(req) = self.queue.pop_front() {
                    let to = self.least_loaded().unwrap_or(i);
                    self.llm.replicas[to].waiting.push_back(req);
                }
                for j in 0..self.fleet.list.len() {
                    if self.fleet.list[j].state == State::Ready {
                        self.llm_kick(j);
                    }
                }
            }
        }
    }

    pub(super) fn llm_compose(&mut self, i: usize) {
        let Some(cfg) = self.llm_config() else { return };
        let state = self.fleet.list[i].state;
        let shared = state == State::Ready && cfg.router == Router::Shared;
        let queued = self.queue.len();
        let central = shared.then_some(&mut self.queue);
        self.llm.ev.admitted.clear();
        let end = self.llm.replicas[i].compose(
            self.now,
            cfg,
            &self.trace.requests,
            &mut self.llm.reqs,
            central,
            &mut self.llm.ev,
        );
        self.out.preemptions += std::mem::take(&mut self.llm.ev.preemptions);
        for k in 0..self.llm.ev.admitted.len() {
            let req = self.llm.ev.admitted[k] as usize;
            let wait = self.now.saturating_sub(us(self.trace.requests[req].arrival));
            self.out.waits.push(wait as f64 / US);
        }
        self.llm.open_runs[i] = match (state, self.llm.replicas[i].open_run(cfg)) {
            (State::Ready, Some(run)) => run,
            _ => (0, 1, 0),
        };
        match end {
            Some(t) => self
                .llm
                .steps
                .push(Reverse((t, i as u32, self.llm.replicas[i].generation))),
            None if state == State::Draining && self.llm.replicas[i].empty() => {
                self.fleet.list[i].state = State::Gone;
                self.fleet.alive -= 1;
            }
            None if state == State::Ready => self.llm.idle_hint.push(i as u32),
            None => {}
        }
        if shared && self.queue.len() < queued && !self.queue.is_empty() {
            // It took what it could and left the rest: the next replica with room is woken.
            self.llm_kick_shared(true);
        }
    }

    pub(super) fn llm_step_end(&mut self, i: usize, generation: u32) {
        if self.llm.replicas[i].generation != generation {
            return; // superseded by an interrupt, or the replica is gone
        }
        if !self.llm.replicas[i].busy() {
            if self.llm.replicas[i].pending_start {
                self.llm.replicas[i].pending_start = false;
                self.llm.pending_starts -= 1;
                if matches!(self.fleet.list[i].state, State::Ready | State::Draining) {
                    self.llm_compose(i);
                }
            }
            return;
        }
        let mut ev = std::mem::take(&mut self.llm.ev);
        ev.completed.clear();
        self.llm.replicas[i].finish_step(self.now, &self.trace.requests, &mut self.llm.reqs, &mut ev);
        self.control
            .tokens(self.now / 1_000_000, ev.prompt_tokens, ev.generation_tokens);
        (ev.prompt_tokens, ev.generation_tokens) = (0, 0);
        for &req in &ev.completed {
            let req = req as usize;
            let rq = self.trace.requests[req];
            let arrival = us(rq.arrival);
            let latency = (self.now - arrival) as f64 / US;
            let admitted = self.llm.reqs.admitted_at[req];
            self.control
                .completion(self.now / 1_000_000, (self.now - admitted) as f64 / US);
            if latency > self.serving.timeout {
                self.fail(req, true);
                continue;
            }
            let first = self.llm.reqs.first_token_at[req];
            self.out.completed += 1;
            self.out.latencies.push(latency);
            self.out.ttfts.push((first - arrival) as f64 / US);
            if rq.output_tokens > 1 {
                self.out
                    .tpots
                    .push((self.now - first) as f64 / US / f64::from(rq.output_tokens - 1));
            }
        }
        self.llm.ev = ev;
        if matches!(self.fleet.list[i].state, State::Ready | State::Draining) {
            self.llm_compose(i);
        }
    }
}
