//! The request path: a request arrives (and is refused when the queue is full or it can never
//! fit), waits in the gateway queue, goes to the least-loaded ready replica that can take it,
//! and completes, or expires once it has waited past the timeout.

use std::cmp::Reverse;

use super::replicas::State;
use super::{Engine, US, us};
use crate::llm::{Phase, Router};
use crate::serving::Serving;

impl Engine<'_> {
    pub(super) fn arrive(&mut self, req: u32) {
        self.control.arrival(self.now / 1_000_000);
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
                    self.llm.replicas[i].waiting.push_back(req);
                    self.llm_kick(i);
                }
                None => self.queue.push_back(req),
            },
        }
    }

    /// Fail queued requests that have waited past the timeout (the head is the oldest).
    pub(super) fn expire(&mut self) {
        let timeout = us(self.serving.timeout);
        let llm = self.llm_config().is_some();
        while let Some(&req) = self.queue.front() {
            let r = req as usize;
            if llm && self.llm.reqs.phase[r] != Phase::Waiting {
                self.queue.pop_front(); // already has an outcome
            } else if us(self.trace.requests[r].arrival) + timeout <= self.now {
                self.queue.pop_front();
                self.fail(r, false);
            } else {
                break;
            }
        }
        for i in 0..self.llm.replicas.len() {
            while let Some(&req) = self.llm.replicas[i].waiting.front() {
                let r = req as usize;
                if self.llm.reqs.phase[r] != Phase::Waiting {
                    self.llm.replicas[i].waiting.pop_front();
                } else if us(self.trace.requests[r].arrival) + timeout <= self.now {
                    self.llm.replicas[i].waiting.pop_front();
                    let dispatched = self.llm.reqs.admitted_at[r] != u64::MAX;
                    self.fail(r, dispatched);
                } else {
                    break;
                }
            }
        }
    }

    pub(super) fn dispatch(&mut self) {
        if self.llm_config().is_some() {
            // Replicas take work at their step boundaries; queued requests expire at the
            // second's tick.
            return;
        }
        self.expire();
        while let Some(&req) = self.queue.front() {
            let rq = &self.trace.requests[req as usize];
            let Some(rep) = self.fleet.pick(&self.serving.serving, rq) else {
                return;
            };
            self.queue.pop_front();
            self.start_service(rep, req as usize);
        }
    }

    pub(super) fn start_service(&mut self, rep: usize, req: usize) {
        let rq = self.trace.requests[req];
        let wait = self.now.saturating_sub(us(rq.arrival));
        self.out.waits.push(wait as f64 / US);
        self.dispatched_at[req] = self.now;
        let r = &mut self.fleet.list[rep];
        r.busy += 1;
        self.fleet.busy_total += 1;
        let service = match &self.serving.serving {
            Serving::Concurrency { .. } | Serving::Llm(_) => f64::from(self.services[req]),
            Serving::Batching(b) => {
                r.tokens += u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
                let prefill = b.prefill(rq.input_tokens);
                self.prefill_of[req] = prefill as f32;
                prefill + b.decode(rq.output_tokens, r.busy)
            }
        };
        self.fleet
            .completions
            .push(Reverse((self.now + us(service), rep as u32, req as u32)));
    }

    pub(super) fn complete(&mut self, rep: usize, req: usize) {
        let rq = self.trace.requests[req];
        let r = &mut self.fleet.list[rep];
        r.busy -= 1;
        self.fleet.busy_total -= 1;
        if let Serving::Batching(_) = self.serving.serving {
            r.tokens -= u64::from(rq.input_tokens) + u64::from(rq.output_tokens);
        }
        if r.state == State::Draining && r.busy == 0 {
            r.state = State::Gone;
            self.fleet.alive -= 1;
        }
        let started = self.dispatched_at[req];
        let latency = (self.now - us(rq.arrival)) as f64 / US;
        self.control
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
}
