//! The iteration-level LLM replica, modelled on vLLM's V1 scheduler.
//!
//! A replica runs steps. Each step has a token budget (`max_num_batched_tokens`) shared by one
//! decode token for every running sequence and chunks of prefill (sequences being prefilled
//! first, in admission order, then new admissions from the waiting queue, first come first
//! served), a cap on running sequences (`max_num_seqs`) and a KV cache of a fixed number of
//! tokens. KV is allocated as tokens are scheduled; when a decode step cannot get its tokens,
//! the most recently admitted sequence is preempted (its KV freed, recomputed later from the
//! front of the queue), as vLLM's recompute preemption does. A step lasts the performance
//! table's time for its prefill tokens and decode batch ([`StepCost`]).
//!
//! Pure decode steps with nothing to admit repeat identically, so they are run as one event of
//! `k` steps (until the next sequence finishes or the cache fills); an arrival the replica
//! could admit cuts that run short at the next step boundary ([`LlmReplica::interrupt`]), so
//! admission happens exactly where it would step by step. This keeps a replay's cost
//! proportional to changes in the batch, not to tokens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::perf::PerfTable;
use crate::trace::Request;

const US: f64 = 1_000_000.0;

/// How requests reach replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Router {
    /// One gateway queue; a replica takes the head whenever its scheduler has room (llm-d's
    /// flow control, an activator holding requests).
    #[default]
    Shared,
    /// Each request goes at once to the ready replica with the fewest requests (running plus
    /// waiting) and waits in that replica's own queue (a Service or a least-request balancer
    /// in front of vLLM).
    LeastLoaded,
}

/// Step durations in microseconds, tabulated once for every step the limits allow.
#[derive(Clone, Debug, PartialEq)]
pub struct StepCost {
    prefill_us: Vec<u64>,
    batched_us: Vec<u64>,
    decode_us: Vec<u64>,
}

impl StepCost {
    /// From a table's curves, for steps of up to `budget` tokens and `max_seqs` sequences.
    pub fn new(table: &PerfTable, budget: u32, max_seqs: u32) -> Self {
        let us = |s: f64| (s * US).round().max(1.0) as u64;
        let batched = table.prefill_batched.as_ref().unwrap_or(&table.prefill);
        // Below the batched curve's first measurement its extrapolation means nothing: a small
        // batch costs what one prompt of its tokens costs.
        let first = batched.points.first().map_or(0.0, |p| p.0);
        StepCost {
            prefill_us: (0..=budget).map(|p| us(table.prefill.at(f64::from(p)))).collect(),
            batched_us: (0..=budget)
                .map(|p| {
                    let x = f64::from(p);
                    us(if x < first {
                        table.prefill.at(x)
                    } else {
                        batched.at(x)
                    })
                })
                .collect(),
            decode_us: (0..=max_seqs)
                .map(|d| us(table.decode.at(f64::from(d))))
                .collect(),
        }
    }

    /// A step with `p` prefill tokens over `n` sequences and `d` decoding sequences. A mixed
    /// step is one forward pass over `p + d` tokens: it pays the prefill of all of them (as a
    /// batch), plus what the decode batch costs beyond a single sequence (reading the
    /// sequences' KV). The table measures no mixed steps, so this is the model's one
    /// assumption beyond it; pure steps are the table's own figures.
    pub fn step_us(&self, p: u32, n: u32, d: u32) -> u64 {
        let d = (d as usize).min(self.decode_us.len() - 1);
        let last = self.prefill_us.len() - 1;
        match (p as usize, d) {
            (0, d) => self.decode_us[d],
            (p, 0) if n <= 1 => self.prefill_us[p.min(last)],
            (p, 0) => self.batched_us[p.min(last)],
            (p, d) => self.batched_us[(p + d).min(last)] + self.decode_us[d] - self.decode_us[1],
        }
    }

    /// Seconds of replica time a prompt token costs at best, for the oracle: the least `c_p`
    /// such that every prefill step the limits allow costs at least `p * c_p` (checked at every
    /// `p`, single prompt or batch).
    pub fn least_prefill_cost(&self) -> f64 {
        let budget = self.prefill_us.len() - 1;
        let c_p = (1..=budget)
            .map(|p| self.prefill_us[p].min(self.batched_us[p]) as f64 / p as f64)
            .fold(f64::INFINITY, f64::min);
        c_p / US
    }

    /// The least a decode token can be charged in a step no longer than `tau` seconds, as the
    /// lower convex envelope `H(tau)` of every step the limits allow: each step `(p, n, d)` of
    /// duration `t` charges its `d` decoding sequences `(t - p * c_p) / d` each (the prefill
    /// tokens pay `c_p`). `H` is convex and non-increasing, so a request whose `k` decode steps
    /// last at most `L` in all is charged at least `k * H(L / k)` (Jensen). Returned as hull
    /// vertices `(tau_s, charge_s)`, `tau` ascending, charge descending; `c_p` in seconds.
    pub fn decode_envelope(&self, c_p: f64) -> Vec<(f64, f64)> {
        let budget = self.prefill_us.len() - 1;
        let seqs = self.decode_us.len() - 1;
        let c_p_us = c_p * US;
        // Every (p, d) step: the curves are piecewise linear, so a coarser grid could miss a
        // vertex of the envelope and overstate the bound.
        let mut points: Vec<(f64, f64)> = Vec::with_capacity(seqs.min(budget) * (budget + 1) / 4);
        for d in 1..=seqs.min(budget) {
            let mut best_at: Vec<(f64, f64)> = Vec::new();
            for p in 0..=(budget - d) {
                let t = self.step_us(p as u32, 2, d as u32) as f64;
                let charge = (t - p as f64 * c_p_us) / d as f64;
                // Per d, only points that lower the charge as t grows can be on the envelope.
                if best_at.last().is_none_or(|&(_, c)| charge < c) {
                    best_at.push((t, charge));
                }
            }
            points.extend(best_at);
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        // Andrew's monotone chain, lower hull, stopping at the least charge (beyond it the
        // envelope is flat: a longer step need not cost more per token).
        let mut hull: Vec<(f64, f64)> = Vec::new();
        for &(t, c) in &points {
            if hull.last().is_some_and(|&(_, lc)| c >= lc) {
                continue;
            }
            while hull.len() >= 2 {
                let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                let cross = (b.0 - a.0) * (c - a.1) - (b.1 - a.1) * (t - a.0);
                if cross <= 0.0 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push((t, c));
        }
        hull.into_iter().map(|(t, c)| (t / US, c / US)).collect()
    }

    /// Seconds a request needs at least on an otherwise idle replica: its prompt in chunks of
    /// the budget, then one decode step per further output token.
    pub fn alone_s(&self, input: u32, output: u32) -> f64 {
        let budget = (self.prefill_us.len() - 1) as u32;
        let mut left = input.max(1);
        let mut t = 0u64;
        while left > 0 {
            let c = left.min(budget);
            t += self.prefill_us[c as usize];
            left -= c;
        }
        t += u64::from(output.saturating_sub(1)) * self.decode_us[1];
        t as f64 / US
    }
}

/// The LLM serving settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    /// What the step times come from.
    pub table: PerfTable,
    /// Step durations.
    pub cost: StepCost,
    /// Token budget of one step (vLLM `max_num_batched_tokens`).
    pub max_batch_tokens: u32,
    /// Most running sequences (vLLM `max_num_seqs`).
    pub max_seqs: u32,
    /// KV-cache capacity in tokens.
    pub kv_tokens: u64,
    /// How requests reach replicas.
    pub router: Router,
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// In a queue (the gateway's or a replica's), possibly after a preemption.
    Waiting,
    /// Being prefilled.
    Prefill,
    /// Decoding.
    Decode,
    /// Has an outcome.
    Done,
}

/// Per-request state shared by all replicas (indexed by request).
pub struct Requests {
    /// Where each is.
    pub phase: Vec<Phase>,
    /// Output tokens generated (at the last join of the decode batch).
    pub generated: Vec<u32>,
    /// Replica decode-step count when it joined the decode batch.
    pub join: Vec<u64>,
    /// Tokens its current prefill covers (prompt, plus generated tokens after a preemption).
    pub prefill_total: Vec<u32>,
    /// Of those, prefilled so far.
    pub prefilled: Vec<u32>,
    /// When it was first scheduled (µs; `u64::MAX` if never).
    pub admitted_at: Vec<u64>,
    /// When its first token came out (µs; `u64::MAX` if never).
    pub first_token_at: Vec<u64>,
}

impl Requests {
    /// `n` requests, all waiting.
    pub fn new(n: usize) -> Self {
        Requests {
            phase: vec![Phase::Waiting; n],
            generated: vec![0; n],
            join: vec![0; n],
            prefill_total: vec![0; n],
            prefilled: vec![0; n],
            admitted_at: vec![u64::MAX; n],
            first_token_at: vec![u64::MAX; n],
        }
    }
}

/// What a step's end produced, for the engine to account.
#[derive(Debug, Default)]
pub struct StepEvents {
    /// Requests that finished (their last token came out at the step's end).
    pub completed: Vec<u32>,
    /// Requests first scheduled at the step's start.
    pub admitted: Vec<u32>,
    /// Sequences preempted while composing the next step.
    pub preemptions: u64,
    /// Prompt tokens computed by the steps that ended (vLLM's `prompt_tokens_total`; a
    /// preempted sequence's recomputation counts again, as there).
    pub prompt_tokens: u64,
    /// Output tokens generated by the steps that ended (vLLM's `generation_tokens_total`).
    pub generation_tokens: u64,
}

#[derive(Clone, Copy, Debug)]
struct Step {
    start: u64,
    dt: u64,
    k: u64,
    d: u32,
}

/// One replica's scheduler state.
#[derive(Debug, Default)]
pub struct LlmReplica {
    /// Its own queue: requests routed to it (least-loaded) and preempted ones (front).
    pub waiting: VecDeque<u32>,
    prefilling: VecDeque<u32>,
    decoding: BinaryHeap<Reverse<(u64, u32)>>,
    decode_n: u32,
    steps: u64,
    order: Vec<u32>,
    running: u32,
    /// KV tokens allocated (including those reserved for the decode run in progress).
    pub kv_used: u64,
    chunks: Vec<(u32, u32)>,
    cur: Option<Step>,
    /// Bumped whenever the scheduled step end changes: older heap entries are stale.
    pub generation: u32,
    /// Idle, with a step start scheduled for the end of the current instant (so requests that
    /// arrive together are scheduled together).
    pub pending_start: bool,
}

impl LlmReplica {
    /// A fresh scheduler for a new replica in this slot; the generation carries on, so no
    /// stale step event of the slot's previous replica can match.
    pub fn reset(&mut self) {
        let generation = self.generation.wrapping_add(1);
        *self = LlmReplica {
            generation,
            ..LlmReplica::default()
        };
    }

    /// Sequences running (prefilling or decoding).
    pub fn running(&self) -> u32 {
        self.running
    }

    /// Whether a step is in progress.
    pub fn busy(&self) -> bool {
        self.cur.is_some()
    }

    /// Running plus waiting here: what a least-request balancer compares.
    pub fn load(&self) -> usize {
        self.running as usize + self.waiting.len()
    }

    /// Nothing running, nothing waiting here.
    pub fn empty(&self) -> bool {
        self.running == 0 && self.waiting.is_empty() && self.cur.is_none()
    }

    /// The run of identical decode steps in progress, as (start, step length, end) in µs, if
    /// the replica has a sequence slot free (only such a run is worth cutting short).
    pub fn open_run(&self, cfg: &LlmConfig) -> Option<(u64, u64, u64)> {
        let step = self.cur.as_ref()?;
        (step.k > 1 && self.running < cfg.max_seqs).then_some((
            step.start,
            step.dt,
            step.start + step.k * step.dt,
        ))
    }

    /// Cut a run of identical decode steps short at the next step boundary after `now`, because
    /// something arrived that this replica could admit. Returns the new end if it changed.
    pub fn interrupt(&mut self, now: u64, cfg: &LlmConfig) -> Option<u64> {
        let step = self.cur.as_mut()?;
        let k = now.saturating_sub(step.start) / step.dt + 1;
        if k >= step.k || self.running >= cfg.max_seqs {
            return None;
        }
        let freed = u64::from(step.d) * (step.k - k);
        if self.kv_used - freed >= cfg.kv_tokens {
            return None;
        }
        self.kv_used -= freed;
        step.k = k;
        self.generation = self.generation.wrapping_add(1);
        Some(step.start + k * step.dt)
    }

    /// Choose the next step at `now`; `central` is the gateway queue this replica may take from
    /// (`None` when it must not: draining, or routed mode). Returns when the step ends, or
    /// `None` when there is nothing to do.
    pub fn compose(
        &mut self,
        now: u64,
        cfg: &LlmConfig,
        trace: &[Request],
        st: &mut Requests,
        mut central: Option<&mut VecDeque<u32>>,
        ev: &mut StepEvents,
    ) -> Option<u64> {
        // Decode needs one KV slot per sequence; preempt the newest until it fits.
        let mut preempted = false;
        while self.kv_used + u64::from(self.decode_n) > cfg.kv_tokens && self.running > 1 {
            self.preempt_newest(st);
            ev.preemptions += 1;
            preempted = true;
        }
        let d = self.decode_n;
        let mut budget = cfg.max_batch_tokens.saturating_sub(d);
        self.kv_used += u64::from(d);
        self.chunks.clear();
        for &req in &self.prefilling {
            let r = req as usize;
            let left = st.prefill_total[r] - st.prefilled[r];
            let c = left
                .min(budget)
                .min(cfg.kv_tokens.saturating_sub(self.kv_used) as u32);
            if c == 0 {
                break;
            }
            self.chunks.push((req, c));
            budget -= c;
            self.kv_used += u64::from(c);
        }
        // As vLLM's scheduler: nothing new is admitted in a step that had to preempt, or the
        // sequence just preempted would take back the room it freed.
        while !preempted && self.running < cfg.max_seqs && budget > 0 && self.kv_used < cfg.kv_tokens {
            let own = self.waiting.front().copied();
            let from_central = own.is_none();
            let Some(req) = own.or_else(|| central.as_ref().and_then(|q| q.front().copied())) else {
                break;
            };
            if from_central {
                if let Some(q) = central.as_mut() {
                    q.pop_front();
                }
            } else {
                self.waiting.pop_front();
            }
            let r = req as usize;
            if st.phase[r] != Phase::Waiting {
                continue; // failed while queued
            }
            let total = trace[r].input_tokens.max(1) + st.generated[r];
            let c = total.min(budget).min((cfg.kv_tokens - self.kv_used) as u32);
            st.phase[r] = Phase::Prefill;
            st.prefill_total[r] = total;
            st.prefilled[r] = 0;
            if st.admitted_at[r] == u64::MAX {
                st.admitted_at[r] = now;
                ev.admitted.push(req);
            }
            self.prefilling.push_back(req);
            self.order.push(req);
            self.running += 1;
            self.chunks.push((req, c));
            budget -= c;
            self.kv_used += u64::from(c);
        }
        let p: u32 = self.chunks.iter().map(|&(_, c)| c).sum();
        if p == 0 && d == 0 {
            self.cur = None;
            return None;
        }
        let dt = cfg.cost.step_us(p, self.chunks.len() as u32, d);
        let mut k = 1;
        if p == 0 {
            // Nothing to admit: the same decode step repeats until a sequence finishes or the
            // cache is full.
            let to_finish = self
                .decoding
                .peek()
                .map_or(1, |Reverse((f, _))| f.saturating_sub(self.steps).max(1));
            let kv_room = cfg.kv_tokens.saturating_sub(self.kv_used) / u64::from(d);
            k = to_finish.min(1 + kv_room).max(1);
            self.kv_used += u64::from(d) * (k - 1);
        }
        self.cur = Some(Step { start: now, dt, k, d });
        self.generation = self.generation.wrapping_add(1);
        Some(now + dt * k)
    }

    /// Apply the step that ends at `now`.
    pub fn finish_step(&mut self, now: u64, trace: &[Request], st: &mut Requests, ev: &mut StepEvents) {
        let Some(step) = self.cur.take() else {
            return;
        };
        self.steps += step.k;
        ev.generation_tokens += step.k * u64::from(step.d);
        for i in 0..self.chunks.len() {
            let (req, c) = self.chunks[i];
            let r = req as usize;
            ev.prompt_tokens += u64::from(c);
            st.prefilled[r] += c;
            if st.prefilled[r] < st.prefill_total[r] {
                continue;
            }
            // Finished prefills are a prefix of `prefilling`: a later one got tokens only if
            // the earlier ones got all they needed.
            if self.prefilling.front() == Some(&req) {
                self.prefilling.pop_front();
            } else if let Some(pos) = self.prefilling.iter().position(|&x| x == req) {
                self.prefilling.remove(pos);
            }
            st.generated[r] += 1;
            ev.generation_tokens += 1;
            if st.first_token_at[r] == u64::MAX {
                st.first_token_at[r] = now;
            }
            let out = trace[r].output_tokens.max(1);
            if st.generated[r] >= out {
                self.kv_used -= u64::from(st.prefill_total[r]);
                self.retire(req, st, ev);
            } else {
                st.phase[r] = Phase::Decode;
                st.join[r] = self.steps;
                self.decode_n += 1;
                self.decoding
                    .push(Reverse((self.steps + u64::from(out - st.generated[r]), req)));
            }
        }
        while let Some(&Reverse((finish, req))) = self.decoding.peek() {
            if finish > self.steps {
                break;
            }
            self.decoding.pop();
            let r = req as usize;
            let out = trace[r].output_tokens.max(1);
            if st.phase[r] != Phase::Decode || st.join[r] + u64::from(out - st.generated[r]) != finish {
                continue; // preempted since; a newer entry stands for it
            }
            self.kv_used -= u64::from(st.prefill_total[r]) + (self.steps - st.join[r]);
            st.generated[r] = out;
            self.decode_n -= 1;
            self.retire(req, st, ev);
        }
    }

    fn retire(&mut self, req: u32, st: &mut Requests, ev: &mut StepEvents) {
        st.phase[req as usize] = Phase::Done;
        self.running -= 1;
        ev.completed.push(req);
        if self.order.len() > 2 * self.running as usize + 16 {
            self.order
                .retain(|&r| matches!(st.phase[r as usize], Phase::Prefill | Phase::Decode));
        }
    }

    fn preempt_newest(&mut self, st: &mut Requests) {
        while let Some(req) = self.order.pop() {
            let r = req as usize;
            match st.phase[r] {
                Phase::Decode => {
                    let made = self.steps - st.join[r];
                    self.kv_used -= u64::from(st.prefill_total[r]) + made;
                    st.generated[r] += made as u32;
                    self.decode_n -= 1;
                }
                Phase::Prefill => {
                    self.kv_used -= u64::from(st.prefilled[r]);
                    if let Some(pos) = self.prefilling.iter().rposition(|&x| x == req) {
                        self.prefilling.remove(pos);
                    }
                }
                _ => continue,
            }
            st.phase[r] = Phase::Waiting;
            self.running -= 1;
            self.waiting.push_front(req);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StepCost;
    use crate::oracle::envelope_at as h;
    use crate::perf::PerfTable;
    use crate::rng::Rng;

    #[test]
    fn the_decode_envelope_is_convex_non_increasing_and_below_every_step() {
        let table = PerfTable::bundled("llama2-70b", "h100-80gb", 4).unwrap_or_else(|e| panic!("{e}"));
        let cost = StepCost::new(&table, 8192, 1024);
        let c_p = cost.least_prefill_cost();
        let hull = cost.decode_envelope(c_p);
        assert!(hull.len() >= 2, "{hull:?}");
        for w in hull.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 < w[0].1, "not decreasing: {w:?}");
        }
        for w in hull.windows(3) {
            let s1 = (w[1].1 - w[0].1) / (w[1].0 - w[0].0);
            let s2 = (w[2].1 - w[1].1) / (w[2].0 - w[1].0);
            assert!(s2 >= s1 - 1e-12, "not convex: {w:?}");
        }
        // Every step the limits allow charges its decode tokens at least the envelope at its
        // own length: sampled, with the extremes.
        let mut rng = Rng::new(7);
        let mut steps = vec![(0u32, 1u32), (0, 1024), (8191, 1), (7168, 1024)];
        for _ in 0..20_000 {
            let d = 1 + (rng.uniform() * 1023.0) as u32;
            let p = (rng.uniform() * f64::from(8192 - d)) as u32;
            steps.push((p, d));
        }
        for (p, d) in steps {
            let t = cost.step_us(p, 2, d) as f64 / 1e6;
            let charge = (t - f64::from(p) * c_p) / f64::from(d);
            assert!(
                charge >= h(&hull, t) - 1e-12,
                "step p={p} d={d}: {t} s charges {charge}, below the envelope {}",
                h(&hull, t)
            );
        }
        // The cheapest decode token rides in a step at the cheapest prefill rate.
        let least = hull[hull.len() - 1].1;
        assert!((least - c_p).abs() < 1e-9, "{least} vs c_p {c_p}");
    }
}
