//! The replicas: each starting (until its cold start ends), ready, draining (finishing what it
//! holds) or gone, and how a new desired count is applied: new replicas pay a cold start,
//! starting ones are cancelled first, then the least busy ready ones drain.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Engine, us};
use crate::llm::LlmReplica;
use crate::serving::Serving;
use crate::trace::Request;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum State {
    Starting(u64),
    Ready,
    Draining,
    Gone,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Replica {
    pub(super) state: State,
    /// Requests in service (concurrency and batching models).
    pub(super) busy: u32,
    /// KV tokens held (batching model).
    pub(super) tokens: u64,
}

impl Replica {
    fn new(state: State) -> Self {
        Replica {
            state,
            busy: 0,
            tokens: 0,
        }
    }
}

/// Every replica slot (a gone one is reused), and the events they wait on.
pub(super) struct Replicas {
    pub(super) list: Vec<Replica>,
    /// Replicas held (starting, ready or draining): what GPU-hours count.
    pub(super) alive: u32,
    /// The count last asked for.
    pub(super) desired: u32,
    /// Requests in service over every replica (concurrency and batching models).
    pub(super) busy_total: u32,
    /// Service ends as (µs, replica, request).
    pub(super) completions: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Cold-start ends as (µs, replica).
    pub(super) readies: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Replicas {
    /// `initial` replicas, ready.
    pub(super) fn new(initial: u32) -> Self {
        Replicas {
            list: vec![Replica::new(State::Ready); initial as usize],
            alive: initial,
            desired: initial,
            busy_total: 0,
            completions: BinaryHeap::new(),
            readies: BinaryHeap::new(),
        }
    }

    /// Ready and starting replicas.
    pub(super) fn counts(&self) -> (u32, u32) {
        let mut ready = 0;
        let mut starting = 0;
        for r in &self.list {
            match r.state {
                State::Ready => ready += 1,
                State::Starting(_) => starting += 1,
                _ => {}
            }
        }
        (ready, starting)
    }

    /// The ready replica with the fewest outstanding requests that can take `rq`.
    pub(super) fn pick(&self, serving: &Serving, rq: &Request) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        match serving {
            Serving::Concurrency { slots } => {
                for (i, r) in self.list.iter().enumerate() {
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
                let need = u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
                for (i, r) in self.list.iter().enumerate() {
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

    /// KV-cache (or slot) usage and the share of ready replicas busy, over the ready replicas,
    /// as their pages would report them; `llm` holds the LLM model's schedulers.
    pub(super) fn usage(&self, serving: &Serving, llm: &[LlmReplica]) -> (f64, f64) {
        let (ready, _) = self.counts();
        match serving {
            _ if ready == 0 => (0.0, 0.0),
            Serving::Llm(c) => {
                let (mut tokens, mut busy) = (0u64, 0u32);
                for (i, r) in self.list.iter().enumerate() {
                    if r.state == State::Ready {
                        tokens += llm[i].kv_used;
                        busy += u32::from(llm[i].busy());
                    }
                }
                (
                    (tokens as f64 / (f64::from(ready) * c.kv_tokens as f64)).min(1.0),
                    f64::from(busy) / f64::from(ready),
                )
            }
            Serving::Concurrency { slots } => {
                let busy_replicas = self
                    .list
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
                for r in self.list.iter().filter(|r| r.state == State::Ready) {
                    tokens += r.tokens;
                    busy += u32::from(r.busy > 0);
                }
                (
                    (tokens as f64 / (f64::from(ready) * b.max_batch_tokens as f64)).min(1.0),
                    f64::from(busy) / f64::from(ready),
                )
            }
        }
    }
}

impl Engine<'_> {
    /// Scale to `desired`.
    pub(super) fn apply(&mut self, desired: u32) {
        if desired != self.fleet.desired {
            self.out.scale_events += 1;
        }
        self.fleet.desired = desired;
        let (ready, starting) = self.fleet.counts();
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
                let idx = match self.fleet.list.iter().position(|r| r.state == State::Gone) {
                    Some(i) => {
                        self.fleet.list[i] = Replica::new(state);
                        if llm {
                            // A fresh scheduler; the generation carries on so no stale step
                            // event of the slot's previous replica can match.
                            if self.llm.replicas[i].pending_start {
                                self.llm.pending_starts -= 1;
                            }
                            self.llm.replicas[i].reset();
                        }
                        i
                    }
                    None => {
                        self.fleet.list.push(Replica::new(state));
                        if llm {
                            self.llm.replicas.push(LlmReplica::default());
                            self.llm.open_runs.push((0, 1, 0));
                        }
                        self.fleet.list.len() - 1
                    }
                };
                if cold > 0.0 {
                    self.fleet.readies.push(Reverse((ready_at, idx as u32)));
                } else {
                    self.out.cold_starts += 1;
                    self.llm_ready(idx);
                }
                self.fleet.alive += 1;
            }
            self.out.replicas_max = self.out.replicas_max.max(self.fleet.alive);
            self.dispatch();
        } else if desired < active {
            let mut remove = active - desired;
            // Starting replicas go first (newest first), then the least busy ready ones.
            for i in (0..self.fleet.list.len()).rev() {
                if remove == 0 {
                    break;
                }
                if let State::Starting(_) = self.fleet.list[i].state {
                    self.fleet.list[i].state = State::Gone;
                    self.fleet.alive -= 1;
                    self.out.cancelled_starts += 1;
                    remove -= 1;
                }
            }
            let llm = self.llm_config().is_some();
            while remove > 0 {
                let load = |i: usize| {
                    if llm {
                        self.llm.replicas[i].load() as u32 + u32::from(self.llm.replicas[i].busy())
                    } else {
                        self.fleet.list[i].busy
                    }
                };
                let pick = (0..self.fleet.list.len())
                    .filter(|&i| self.fleet.list[i].state == State::Ready)
                    .min_by_key(|&i| load(i));
                let Some(i) = pick else { break };
                if load(i) == 0 {
                    self.fleet.list[i].state = State::Gone;
                    self.fleet.alive -= 1;
                } else {
                    self.fleet.list[i].state = State::Draining;
                    if llm {
                        self.llm.open_runs[i] = (0, 1, 0);
                    }
                }
                remove -= 1;
            }
        }
    }
}
