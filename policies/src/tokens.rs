//! `tokens`: replicas from the work an LLM server is limited by, with no hand-set target.
//!
//! A replica of a continuous-batching server (vLLM, SGLang, TGI) spends its time computing
//! prompt tokens (prefill) and generating output tokens (decode). With `C_p` prompt tokens/s
//! and `C_d` output tokens/s as one replica's capacity, the workload's measured token rates
//! `p` and `g` keep `p / C_p + g / C_d` replicas fully busy; the policy asks for that over a
//! target utilization (headroom), or for the KV cache's need if that is larger, or for more
//! when a backlog has persisted (the backstop: rates measure what was served, not what was
//! asked, so a saturated workload under-reports its demand).
//!
//! The capacities are set (the simulator derives them from its serving model, `gpuscale-sim
//! recommend` prints them) or learned, two ways: from any busy reading, saturated or not, by
//! fitting what a step costs ([`crate::stepcost`]), and from saturated ones, since what a
//! replica sustains while requests have been waiting the whole rate window is its capacity, by
//! definition. Rates also trail a saturated replica
//! in a way no backlog shows: a continuous-batching server admits requests into its running
//! batch long before any wait, so an overloaded replica shows many running requests and slow
//! steps, not a queue. The in-flight floor covers that: `waiting + running` above `saturation`
//! times the slots of every replica asks for more whatever the rates say. Until a capacity is known, and while a
//! token rate is missing or stale, the queue rule decides on `waiting + running` against the
//! per-replica slots (fitted, or the running count under backlog; 32 on an LLM server until
//! then), and the reason
//! says so. Unknown token rates therefore never read as zero demand: the queue rule sees the
//! requests.

use std::time::Duration;

use crate::band::{ScaleDownWindow, ceil_replicas, within_band};
use crate::decision::{Recommendation, Rule};
use crate::queue::{QueueConfig, queue_replicas};
use crate::signals::{Metric, SignalKind, Signals};
use crate::stepcost::StepCostFit;
use crate::window::BucketAverage;
use crate::{Context, Learned, Policy};

/// Tokens policy configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TokensConfig {
    /// Prompt tokens/s one replica computes at full load; `None`: learned.
    pub prefill_capacity: Option<f64>,
    /// Output tokens/s one replica generates at full load; `None`: learned.
    pub decode_capacity: Option<f64>,
    /// `C_p / C_d`, assumed when learning (one saturated mix cannot tell the two apart).
    /// Default 6.5: Llama 2 70B on H100 TP4 in the bundled SplitwiseSim table (8,587 prompt
    /// tokens/s in 8,192-token chunks against 1,318 output tokens/s at the batch where a step
    /// takes twice a single sequence's).
    pub prefill_decode_ratio: f64,
    /// Share of capacity to plan for (default 1.0). The capacity is that at the batch where a
    /// step takes twice a single sequence's, well below what a replica sustains, and bursts
    /// are the in-flight floor's to catch, so no further headroom is planned for (chosen with
    /// `saturation` on the Azure traces; docs/policies.md).
    pub utilization: f64,
    /// In-flight requests (`waiting + running`) per replica, as a multiple of `slots`, above
    /// which the replicas are overloaded whatever the token rates say (default 1.5): the count
    /// is at least `ceil(load / (slots * saturation))`. Slots are the batch at which a step
    /// takes twice a single sequence's, so half again as many in flight is a replica whose
    /// steps are slowing its requests well past their single-sequence pace.
    pub saturation: f64,
    /// The token rates are averaged over this window before sizing (default 60 s, as Knative's
    /// stable window): a burst shorter than a cold start is over before a new replica could
    /// serve it; one that lasts builds a backlog, which the backstop sees.
    pub window: Duration,
    /// KV-cache usage to plan for, 0-1 (default 0.9).
    pub kv_target: f64,
    /// Requests one replica serves at once, for the queue rule, the in-flight floor and the
    /// backlog backstop; `None`: learned (the fitted knee, or the running count per replica
    /// under backlog), until then 32 on a server that reports token rates and 4 on one that
    /// does not.
    pub slots: Option<f64>,
    /// How long requests must have been waiting before the backstop adds replicas, and before
    /// an observation counts as saturated for learning (default 30 s: a backlog that drains
    /// sooner is over before a new replica could start; at least the collector's 10 s rate
    /// window, so a saturated rate covers only saturated time).
    pub backlog_window: Duration,
    /// No change while the needed replicas are within `1 +- tolerance` of the current count
    /// (default 0.1).
    pub tolerance: f64,
    /// A lower count takes effect only once it has been the highest for this long (300 s).
    pub scale_down_window: Duration,
    /// The same, on a server that has never reported token rates, where the queue rule sees
    /// every request in flight (180 s). Shorter than an LLM server's: its demand is the exact
    /// count of requests, not rates averaged over a minute behind bursts of long prompts, so a
    /// lull it sees is a lull. Chosen on the Alibaba traces (docs/policies.md).
    pub queue_scale_down_window: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            prefill_capacity: None,
            decode_capacity: None,
            prefill_decode_ratio: 6.5,
            utilization: 1.0,
            saturation: 1.5,
            window: Duration::from_secs(60),
            kv_target: 0.9,
            slots: None,
            backlog_window: Duration::from_secs(30),
            tolerance: 0.1,
            scale_down_window: Duration::from_secs(300),
            queue_scale_down_window: Duration::from_secs(180),
        }
    }
}

/// Slots assumed before any are set or learned: the `queue` policy's default target.
const UNLEARNED_SLOTS: f64 = 4.0;
/// Slots assumed on a server that reports token rates (a continuous-batching LLM server)
/// before any are learned: at a batch of 32 every configuration of the bundled SplitwiseSim
/// table steps 1.17-1.40x a single sequence's time, below every knee there, and the step fit
/// needs batches of 8 or more to learn from, which 4 slots a replica would never show.
/// Chosen with the fit's least batch on six Azure replays (docs/policies.md).
const UNLEARNED_LLM_SLOTS: f64 = 32.0;
/// A learned value and where it comes from.
type Source = (f64, &'static str);

/// Weight of each new saturated observation in the learned estimates.
const LEARN_RATE: f64 = 0.2;

/// The tokens policy: its window, backlog tracker and learned capacities.
#[derive(Clone, Debug)]
pub struct Tokens {
    config: TokensConfig,
    window: ScaleDownWindow,
    /// The window of a server without token rates; both record every recommendation, so a
    /// server that starts reporting rates keeps its history.
    queue_window: ScaleDownWindow,
    /// Since when requests have been waiting without a break, and the fewest seen since.
    backlog: Option<(Duration, f64)>,
    /// Learned output tokens/s per replica (prefill is `ratio` times it).
    learned_decode: Option<f64>,
    learned_slots: Option<f64>,
    /// Step costs fitted from every busy reading, saturated or not.
    fit: StepCostFit,
    /// When both token rates were last fresh.
    rates_seen: Option<Duration>,
    /// Prompt and output token rates over the window.
    prompt: BucketAverage,
    generated: BucketAverage,
}

impl Tokens {
    /// A tokens policy with nothing learned.
    pub fn new(config: TokensConfig) -> Self {
        let secs = config.window.as_secs().max(1);
        Tokens {
            window: ScaleDownWindow::new(config.scale_down_window),
            queue_window: ScaleDownWindow::new(config.queue_scale_down_window),
            prompt: BucketAverage::new(secs),
            generated: BucketAverage::new(secs),
            config,
            backlog: None,
            learned_decode: None,
            learned_slots: None,
            fit: StepCostFit::default(),
            rates_seen: None,
        }
    }

    /// `(C_p, C_d)` as set, or learned; `None` while neither is known. Learned: from the
    /// step-cost fit where it has them, else from saturated replicas (`C_p` then is `ratio`
    /// times `C_d`).
    pub fn capacities(&self) -> Option<(f64, f64)> {
        self.capacities_from().map(|((p, _), (d, _))| (p, d))
    }

    /// [`Self::capacities`] with where each comes from (see [`Learned::from`]).
    fn capacities_from(&self) -> Option<(Source, Source)> {
        let r = self.config.prefill_decode_ratio;
        let fitted = self.fit.costs();
        let fit_p = fitted.map(|c| (c.prefill_capacity, "fitted"));
        let fit_d = fitted.and_then(|c| c.decode).map(|(_, d)| (d, "fitted"));
        let learned_d = fit_d.or(self.learned_decode.map(|d| (d, "saturated")));
        let learned_p = fit_p.or(self.learned_decode.map(|d| (d * r, "saturated")));
        let set_p = self.config.prefill_capacity.map(|p| (p, "set"));
        let set_d = self.config.decode_capacity.map(|d| (d, "set"));
        let p = set_p.or(learned_p);
        let d = set_d.or(learned_d);
        match (p, d) {
            (Some(p), Some(d)) => Some((p, d)),
            (Some(p), None) => Some((p, (p.0 / r, "ratio"))),
            (None, Some(d)) => Some(((d.0 * r, "ratio"), d)),
            (None, None) => None,
        }
    }

    /// Requests per replica as set, else learned: the fitted knee, or the running count of
    /// saturated replicas, the fewer where both are known (a saturated replica admits no more,
    /// whatever its steps would allow).
    pub fn known_slots(&self) -> Option<f64> {
        self.slots_from().map(|(s, _)| s)
    }

    fn slots_from(&self) -> Option<Source> {
        let knee = self
            .fit
            .costs()
            .and_then(|c| c.decode)
            .map(|(k, _)| (k, "fitted"));
        let saturated = self.learned_slots.map(|l| (l, "saturated"));
        self.config.slots.map(|s| (s, "set")).or(match (knee, saturated) {
            (Some(k), Some(l)) => Some(if l.0 < k.0 { l } else { k }),
            (k, l) => k.or(l),
        })
    }

    /// [`Self::known_slots`], else 32 on a server that reports token rates, else 4.
    pub fn slots(&self) -> f64 {
        self.known_slots().unwrap_or_else(|| self.prior_slots())
    }

    fn prior_slots(&self) -> f64 {
        if self.rates_seen.is_some() {
            UNLEARNED_LLM_SLOTS
        } else {
            UNLEARNED_SLOTS
        }
    }

    /// Waiting requests that have persisted for the backlog window, if any.
    fn sustained_backlog(&self, now: Duration) -> Option<f64> {
        let (since, least) = self.backlog?;
        (now.saturating_sub(since) >= self.config.backlog_window).then_some(least)
    }

    /// The queue rule, for when no token rates are known. On a server that has never
    /// reported token rates (a concurrency server: Triton, a classic model server, the Alibaba
    /// traces) the running requests are sized at once, and so are the waiting ones beyond one
    /// per ready slot; up to that many wait for a slot until the backlog window has passed,
    /// since each has a request ahead of it that ends sooner than a new replica could start
    /// (a cold start is a minute; the Alibaba traces' requests take 26 s), and a replica
    /// started for every such wait is then held for the whole scale-down window. Sizing every
    /// waiting request at once cost 14-22 % more GPU-hours on both Alibaba traces at about the
    /// same p99 (docs/policies.md). Where nothing is ready, or the running count is unknown,
    /// every request counts at once; so it does on an LLM server, whose slots are not its batch
    /// (it admits many more before any wait), so a waiting request there is a full replica.
    fn queue_rule(&self, ctx: &Context, s: &Signals, load: f64) -> u32 {
        let running = s.fresh(SignalKind::Running, ctx.max_signal_age);
        let demand = match running {
            Ok(r)
                if s.ready > 0 && self.rates_seen.is_none() && self.sustained_backlog(ctx.now).is_none() =>
            {
                let behind_a_slot = f64::from(s.ready) * self.slots();
                r + (load - r - behind_a_slot).max(0.0)
            }
            _ => load,
        };
        match queue_replicas(&self.fallback(), s.current, demand).0 {
            0 if load > 0.0 => ceil_replicas(load / self.slots()),
            n => n,
        }
    }

    fn fallback(&self) -> QueueConfig {
        QueueConfig {
            metric: Metric::Load,
            target: self.slots(),
            tolerance: self.config.tolerance,
            scale_down_window: self.config.scale_down_window,
        }
    }
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        None => sample,
        Some(o) => o + LEARN_RATE * (sample - o),
    }
}

impl Policy for Tokens {
    fn name(&self) -> &'static str {
        "tokens"
    }

    fn needs(&self) -> &[SignalKind] {
        Metric::Load.signals()
    }

    fn learned(&self) -> Vec<Learned> {
        let (slots, from) = self.slots_from().unwrap_or((self.prior_slots(), "assumed"));
        let mut out = vec![Learned {
            key: "tokens.slots",
            value: slots,
            from,
        }];
        if let Some(((p, pf), (d, df))) = self.capacities_from() {
            out.push(Learned {
                key: "tokens.prefillCapacity",
                value: p,
                from: pf,
            });
            out.push(Learned {
                key: "tokens.decodeCapacity",
                value: d,
                from: df,
            });
        }
        out
    }

    fn observe(&mut self, ctx: &Context, s: &Signals) {
        let rates = (
            s.fresh(SignalKind::PromptTokensRate, ctx.max_signal_age),
            s.fresh(SignalKind::GenerationTokensRate, ctx.max_signal_age),
        );
        if let (Ok(p), Ok(g)) = rates {
            self.prompt.record(ctx.now.as_secs(), p);
            self.generated.record(ctx.now.as_secs(), g);
            self.rates_seen = Some(ctx.now);
            if let Ok(running) = s.fresh(SignalKind::Running, ctx.max_signal_age)
                && s.ready > 0
                && s.starting == 0
            {
                let ready = f64::from(s.ready);
                self.fit.record(running / ready, g / ready, p / ready);
            }
        }
        let Ok(waiting) = s.fresh(SignalKind::Waiting, ctx.max_signal_age) else {
            // Unknown is not "no backlog": keep what was known, learn nothing.
            return;
        };
        self.backlog = match self.backlog {
            _ if waiting <= 0.0 => None,
            None => Some((ctx.now, waiting)),
            Some((since, least)) => Some((since, least.min(waiting))),
        };
        // Saturated: requests waited through the whole rate window, and every replica asked
        // for is serving, so the rates are what these replicas sustain.
        if self.sustained_backlog(ctx.now).is_none() || s.ready == 0 || s.starting > 0 {
            return;
        }
        let ready = f64::from(s.ready);
        if let Ok(running) = s.fresh(SignalKind::Running, ctx.max_signal_age)
            && running > 0.0
        {
            self.learned_slots = Some(ewma(self.learned_slots, running / ready));
        }
        if let (Ok(p), Ok(g)) = rates {
            let per_replica = (p / self.config.prefill_decode_ratio + g) / ready;
            if per_replica > 0.0 {
                self.learned_decode = Some(ewma(self.learned_decode, per_replica));
            }
        }
    }

    fn recommend(&mut self, ctx: &Context, s: &Signals) -> Recommendation {
        let load = match s.metric(Metric::Load, ctx.max_signal_age) {
            Ok(l) => l,
            Err(f) => return Recommendation::new(s.current, f.into()),
        };
        let rates = (
            s.fresh(SignalKind::PromptTokensRate, ctx.max_signal_age),
            s.fresh(SignalKind::GenerationTokensRate, ctx.max_signal_age),
        );
        let (want, rule) = match (self.capacities(), rates) {
            (Some((cp, cd)), (Ok(_), Ok(_))) => {
                let c = &self.config;
                // The current readings were recorded by `observe`, so the averages include them.
                let sec = ctx.now.as_secs();
                let (p, g) = (self.prompt.average(sec), self.generated.average(sec));
                let need = (p / cp + g / cd) / c.utilization;
                let mut best =
                    if s.current > 0 && need > 0.0 && within_band(need / f64::from(s.current), c.tolerance) {
                        (s.current, Rule::TokensWithinTolerance)
                    } else {
                        (ceil_replicas(need), Rule::TokensCapacity)
                    };
                if let Ok(kv) = s.fresh(SignalKind::KvCacheUsage, ctx.max_signal_age) {
                    let n = ceil_replicas(f64::from(s.ready) * kv / c.kv_target);
                    if n > best.0 {
                        best = (n, Rule::TokensKvCache);
                    }
                }
                let n = ceil_replicas(load / (self.slots() * c.saturation));
                if n > best.0 {
                    best = (n, Rule::TokensInFlight);
                }
                if let Some(waiting) = self.sustained_backlog(ctx.now) {
                    let n = s
                        .ready
                        .max(s.current)
                        .saturating_add(ceil_replicas(waiting / self.slots()));
                    if n > best.0 {
                        best = (n, Rule::TokensBacklog);
                    }
                }
                if best.0 == 0 && load > 0.0 {
                    // Rates trail the requests by their window; the requests are here now.
                    best = (ceil_replicas(load / self.slots()), Rule::TokensCapacity);
                }
                best
            }
            (_, (p, g)) => {
                let n = self.queue_rule(ctx, s, load);
                // Rates that were known and are not now are unknown, not a reason to trust a
                // cruder rule downwards: hold (the safety rule names the signal) until they
                // have been gone for the scale-down window, then the queue rule decides.
                let lost = p.err().or(g.err());
                let recent = self.rates_seen.is_some_and(|t| {
                    ctx.now.saturating_sub(t) < self.config.scale_down_window.max(ctx.max_signal_age)
                });
                if let Some(fault) = lost.filter(|_| recent && n < s.current) {
                    return Recommendation::new(s.current, fault.into());
                }
                (n, Rule::TokensFallbackQueue)
            }
        };
        let llm = self.window.apply(ctx, s, want, rule);
        let queue = self.queue_window.apply(ctx, s, want, rule);
        let (n, rule) = if self.rates_seen.is_some() { llm } else { queue };
        Recommendation::new(n, rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bounds;
    use crate::signals::Reading;
    use crate::stepcost::busy_output_rate;

    fn ctx(t: u64) -> Context {
        Context {
            now: Duration::from_secs(t),
            bounds: Bounds::default(),
            max_signal_age: Duration::from_secs(30),
            hold_while_starting: true,
        }
    }

    fn signals(current: u32, waiting: f64, running: f64, rates: Option<(f64, f64)>) -> Signals {
        Signals {
            current,
            ready: current,
            waiting: Some(Reading::fresh(waiting)),
            running: Some(Reading::fresh(running)),
            prompt_tokens_rate: rates.map(|r| Reading::fresh(r.0)),
            generation_tokens_rate: rates.map(|r| Reading::fresh(r.1)),
            ..Signals::default()
        }
    }

    /// What the autoscaler does each decision: observe, then recommend.
    fn step(t: &mut Tokens, sec: u64, s: &Signals) -> Recommendation {
        t.observe(&ctx(sec), s);
        t.recommend(&ctx(sec), s)
    }

    fn set(cp: f64, cd: f64) -> TokensConfig {
        TokensConfig {
            prefill_capacity: Some(cp),
            decode_capacity: Some(cd),
            slots: Some(80.0),
            utilization: 0.8,
            saturation: 2.0,
            window: Duration::from_secs(1),
            backlog_window: Duration::from_secs(10),
            scale_down_window: Duration::ZERO,
            queue_scale_down_window: Duration::ZERO,
            ..TokensConfig::default()
        }
    }

    #[test]
    fn work_over_utilization() {
        // 6,000 prompt tokens/s at 8,000/s and 1,200 output tokens/s at 1,200/s: 1.75 replicas
        // busy, over 0.8 utilization 2.19, so 3.
        let mut t = Tokens::new(set(8000.0, 1200.0));
        let s = signals(1, 0.0, 50.0, Some((6000.0, 1200.0)));
        let r = step(&mut t, 0, &s);
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensCapacity));
        // Inside the band around 2 replicas' need (2.19 / 2 = 1.09): no change.
        let r = step(
            &mut t,
            1,
            &Signals {
                current: 2,
                ready: 2,
                ..s
            },
        );
        assert_eq!((r.replicas, r.rule), (2, Rule::TokensWithinTolerance));
    }

    #[test]
    fn missing_rates_fall_back_to_the_queue_rule_not_to_zero() {
        let mut t = Tokens::new(set(8000.0, 1200.0));
        // An LLM server: it has reported rates, so every waiting request counts at once.
        step(&mut t, 0, &signals(1, 0.0, 10.0, Some((100.0, 10.0))));
        let r = step(&mut t, 0, &signals(3, 100.0, 140.0, None));
        // 240 requests over 80 slots.
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensFallbackQueue));
        let r = step(&mut t, 1, &signals(1, 100.0, 140.0, None));
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensFallbackQueue));
        // A stale rate is no rate.
        let mut s = signals(1, 100.0, 140.0, Some((0.0, 0.0)));
        s.prompt_tokens_rate = Some(Reading::aged(0.0, Duration::from_secs(60)));
        let r = step(&mut t, 2, &s);
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensFallbackQueue));
    }

    #[test]
    fn rates_that_vanish_hold_the_count_until_the_window_passes() {
        let mut t = Tokens::new(TokensConfig {
            scale_down_window: Duration::from_secs(60),
            ..set(1000.0, 100.0)
        });
        let r = step(&mut t, 0, &signals(1, 0.0, 5.0, Some((2000.0, 0.0))));
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensCapacity));
        // The counters are gone (a pod restarted, a server upgraded): the queue rule alone would
        // say 1; the count holds and the reason names the missing signal.
        let gone = signals(3, 0.0, 5.0, None);
        let r = step(&mut t, 1, &gone);
        assert_eq!(
            (r.replicas, r.rule),
            (3, Rule::SignalMissing(SignalKind::PromptTokensRate))
        );
        assert!(r.rule.is_safety_hold());
        // A scale-up on the queue rule is never held back.
        let r = step(&mut t, 2, &signals(3, 300.0, 100.0, None));
        assert_eq!((r.replicas, r.rule), (5, Rule::TokensFallbackQueue));
        // Gone for the whole window: the queue rule decides.
        let gone = signals(5, 0.0, 5.0, None);
        let r = step(&mut t, 61, &gone);
        assert_eq!((r.replicas, r.rule), (5, Rule::ScaleDownWindow));
        let r = step(&mut t, 63, &gone);
        assert_eq!((r.replicas, r.rule), (1, Rule::TokensFallbackQueue));
    }

    #[test]
    fn a_concurrency_servers_waiting_requests_wait_for_a_slot_until_the_backlog_window() {
        // A server without token counters, one request per replica (the Alibaba traces).
        let mut t = Tokens::new(TokensConfig {
            slots: Some(1.0),
            backlog_window: Duration::from_secs(10),
            scale_down_window: Duration::ZERO,
            queue_scale_down_window: Duration::ZERO,
            ..TokensConfig::default()
        });
        let mut s = signals(2, 1.0, 2.0, None);
        for sec in 0..10 {
            let r = step(&mut t, sec, &s);
            assert_eq!(
                (r.replicas, r.rule),
                (2, Rule::TokensFallbackQueue),
                "second {sec}: one waiting request behind each busy replica is not yet a replica"
            );
        }
        // It has waited through the backlog window: every request counts.
        assert_eq!(step(&mut t, 10, &s).replicas, 3);
        // More waiting than ready slots: the excess counts at once, before any window.
        let mut t = Tokens::new(t.config.clone());
        s.waiting = Some(Reading::fresh(4.0));
        assert_eq!(
            step(&mut t, 0, &s).replicas,
            4,
            "2 running + (4 waiting - 2 slots)"
        );
        // Nothing ready (the only replica is starting): every request counts at once.
        let starting = Signals {
            current: 1,
            ready: 0,
            starting: 1,
            ..signals(1, 2.0, 0.0, None)
        };
        assert_eq!(step(&mut t, 1, &starting).replicas, 2);
        // At zero, one request wakes a replica at once.
        let mut t = Tokens::new(t.config.clone());
        assert_eq!(step(&mut t, 0, &signals(0, 1.0, 0.0, None)).replicas, 1);
        // Running count unknown: the load is unknown, a hold that names it, not a deferral.
        let mut t = Tokens::new(t.config.clone());
        let mut blind = signals(2, 1.0, 2.0, None);
        blind.running = Some(Reading::aged(2.0, Duration::from_secs(600)));
        let r = step(&mut t, 0, &blind);
        assert!(r.rule.is_safety_hold(), "{:?}", r.rule);
    }

    #[test]
    fn a_server_without_token_rates_scales_down_on_its_own_window() {
        let config = TokensConfig {
            slots: Some(1.0),
            scale_down_window: Duration::from_secs(300),
            queue_scale_down_window: Duration::from_secs(180),
            ..set(8000.0, 1200.0)
        };
        // No token rates ever: the queue rule, held for 180 s.
        let mut t = Tokens::new(config.clone());
        assert_eq!(step(&mut t, 0, &signals(1, 0.0, 4.0, None)).replicas, 4);
        let quiet = signals(4, 0.0, 1.0, None);
        assert_eq!(step(&mut t, 179, &quiet).replicas, 4);
        assert_eq!(step(&mut t, 180, &quiet).replicas, 1);
        // An LLM server (it reports rates) keeps the longer window.
        let mut t = Tokens::new(config);
        let busy = signals(1, 0.0, 4.0, Some((24_000.0, 3_600.0)));
        let r = step(&mut t, 0, &busy);
        let quiet = signals(r.replicas, 0.0, 1.0, Some((0.0, 0.0)));
        assert_eq!(step(&mut t, 180, &quiet).replicas, r.replicas);
        assert_eq!(step(&mut t, 300, &quiet).replicas, 1);
    }

    #[test]
    fn backlog_adds_replicas_only_once_it_persists() {
        let mut t = Tokens::new(set(8000.0, 1200.0));
        // Rates say one replica suffices, but requests wait.
        let s = signals(1, 100.0, 50.0, Some((1000.0, 300.0)));
        for sec in 0..10 {
            let r = step(&mut t, sec, &s);
            assert_eq!(r.replicas, 1, "second {sec}: a backlog younger than the window");
        }
        let r = step(&mut t, 10, &s);
        // ready 1 + ceil(100 / 80).
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensBacklog));
        // One reading without waiting requests resets it.
        let clear = signals(1, 0.0, 50.0, Some((1000.0, 300.0)));
        t.observe(&ctx(11), &clear);
        t.observe(&ctx(12), &s);
        assert_eq!(step(&mut t, 12, &s).replicas, 1);
    }

    #[test]
    fn learns_capacity_from_saturated_replicas() {
        let mut t = Tokens::new(TokensConfig {
            window: Duration::from_secs(1),
            backlog_window: Duration::from_secs(10),
            scale_down_window: Duration::ZERO,
            queue_scale_down_window: Duration::ZERO,
            utilization: 0.8,
            ..TokensConfig::default()
        });
        assert_eq!(t.capacities(), None);
        // Before anything is learned the queue rule decides, at 32 slots per replica on a
        // server that reports token rates: ceil(90 / 32) = 3.
        let r = step(&mut t, 0, &signals(2, 0.0, 90.0, Some((3000.0, 500.0))));
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensFallbackQueue));
        // Two replicas with requests waiting for 10 s serve 13,000 prompt and 2,000 output
        // tokens/s: per replica 13,000 / 6.5 / 2 + 1,000 = 2,000 output tokens/s.
        let sat = signals(2, 30.0, 120.0, Some((13_000.0, 2_000.0)));
        for sec in 0..=10 {
            t.observe(&ctx(sec), &sat);
        }
        let Some((cp, cd)) = t.capacities() else {
            panic!("nothing learned from 11 saturated seconds")
        };
        assert!(
            (cd - 2000.0).abs() < 1e-9 && (cp - 13_000.0).abs() < 1e-6,
            "{cp} {cd}"
        );
        assert!((t.slots() - 60.0).abs() < 1e-9, "{}", t.slots());
        // Now half that load needs one replica over 0.8: ceil(0.5 * 2 / 0.8) = 2.
        let half = signals(2, 0.0, 60.0, Some((6_500.0, 1_000.0)));
        let r = step(&mut t, 11, &half);
        assert_eq!((r.replicas, r.rule), (2, Rule::TokensCapacity));
        let tenth = signals(4, 0.0, 20.0, Some((1_300.0, 200.0)));
        let r = step(&mut t, 12, &tenth);
        assert_eq!((r.replicas, r.rule), (1, Rule::TokensCapacity));
    }

    #[test]
    fn learns_slots_and_capacities_from_busy_replicas_that_never_saturate() {
        let mut t = Tokens::new(TokensConfig {
            window: Duration::from_secs(1),
            scale_down_window: Duration::ZERO,
            queue_scale_down_window: Duration::ZERO,
            ..TokensConfig::default()
        });
        // Steps cost 30 ms + 0.4 ms a sequence + 0.12 ms a prompt token; two replicas at
        // batches 8-106, never a request waiting. Each reading's output rate is what fills
        // the replicas' seconds exactly: 1 = 0.03 g / b + 0.0004 g + 0.000 12 p, per replica.
        let (a, c_d, c_p) = (0.03, 0.0004, 0.000_12);
        let assumed = |value| Learned {
            key: "tokens.slots",
            value,
            from: "assumed",
        };
        assert_eq!(t.learned(), [assumed(4.0)]);
        for sec in 0..600u32 {
            let b = 8.0 + f64::from(sec % 50) * 2.0;
            let p = 500.0 + f64::from((sec * 37) % 29) * 100.0;
            let g = busy_output_rate((a, c_d, c_p), b, p);
            t.observe(
                &ctx(u64::from(sec)),
                &signals(2, 0.0, 2.0 * b, Some((2.0 * p, 2.0 * g))),
            );
        }
        // The knee: a + c_d b = 2 (a + c_d), b = 77; its output rate 77 / (a + 77 c_d).
        let Some(slots) = t.known_slots() else {
            panic!("a knee from 600 busy readings")
        };
        assert!((slots - 77.0).abs() < 0.01, "{slots}");
        let Some((cp, cd)) = t.capacities() else {
            panic!("capacities")
        };
        assert!(
            (cp - 1.0 / c_p).abs() < 1.0 && (cd - 77.0 / (a + c_d * 77.0)).abs() < 0.1,
            "{cp} {cd}"
        );
        let learned: Vec<_> = t.learned().iter().map(|l| (l.key, l.from)).collect();
        assert_eq!(
            learned,
            [
                ("tokens.slots", "fitted"),
                ("tokens.prefillCapacity", "fitted"),
                ("tokens.decodeCapacity", "fitted")
            ]
        );
        // The in-flight floor now counts in those slots: 300 in flight on 2 replicas is
        // ceil(300 / (77 x 1.5)) = 3, though the rates ask for less.
        let r = step(&mut t, 600, &signals(2, 0.0, 300.0, Some((1000.0, 500.0))));
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensInFlight));
    }

    #[test]
    fn an_llm_server_with_nothing_learned_counts_32_slots_a_replica_and_idle_readings_teach_nothing() {
        let mut t = Tokens::new(TokensConfig {
            scale_down_window: Duration::ZERO,
            queue_scale_down_window: Duration::ZERO,
            ..TokensConfig::default()
        });
        // Before any token rate: 4 slots a replica, as the queue policy.
        let r = step(
            &mut t,
            0,
            &Signals {
                prompt_tokens_rate: None,
                generation_tokens_rate: None,
                ..signals(1, 0.0, 20.0, None)
            },
        );
        assert_eq!((r.replicas, r.rule), (5, Rule::TokensFallbackQueue));
        // Hours of readings at 2-7 running a replica, whatever they would imply: a replica that
        // may idle part of the second is not fitted, so nothing is learned and 32 stands.
        for sec in 1..7200u32 {
            let b = 2.0 + f64::from(sec % 6);
            t.observe(
                &ctx(u64::from(sec)),
                &signals(4, 0.0, 4.0 * b, Some((400.0 * b, 40.0 * b))),
            );
        }
        assert_eq!((t.known_slots(), t.capacities()), (None, None));
        assert_eq!(
            t.learned(),
            [Learned {
                key: "tokens.slots",
                value: 32.0,
                from: "assumed"
            }]
        );
        let r = step(&mut t, 7200, &signals(4, 0.0, 200.0, Some((4000.0, 400.0))));
        assert_eq!((r.replicas, r.rule), (7, Rule::TokensFallbackQueue));
    }

    #[test]
    fn nothing_is_learned_while_replicas_start_or_data_is_stale() {
        let mut t = Tokens::new(TokensConfig {
            backlog_window: Duration::from_secs(10),
            ..TokensConfig::default()
        });
        let mut starting = signals(2, 30.0, 120.0, Some((13_000.0, 2_000.0)));
        starting.starting = 1;
        for sec in 0..=20 {
            t.observe(&ctx(sec), &starting);
        }
        assert_eq!(t.capacities(), None);
        let mut stale = signals(2, 30.0, 120.0, Some((13_000.0, 2_000.0)));
        stale.waiting = Some(Reading::aged(30.0, Duration::from_secs(31)));
        for sec in 21..=40 {
            t.observe(&ctx(sec), &stale);
        }
        assert_eq!(t.capacities(), None);
        // Nor does the step-cost fit learn from such readings, at however many batches: while a
        // replica starts, or with the running count stale.
        let mut t = Tokens::new(TokensConfig::default());
        let busy = |sec: u64| {
            let b = 8.0 + (sec % 50) as f64 * 2.0;
            let p = 500.0 + ((sec * 37) % 29) as f64 * 100.0;
            let g = busy_output_rate((0.03, 0.0004, 0.000_12), b, p);
            signals(2, 0.0, 2.0 * b, Some((2.0 * p, 2.0 * g)))
        };
        for sec in 41..1000 {
            let mut s = busy(sec);
            if sec % 2 == 0 {
                s.starting = 1;
            } else {
                s.running = s.running.map(|r| Reading::aged(r.value, Duration::from_secs(31)));
            }
            t.observe(&ctx(sec), &s);
        }
        assert_eq!((t.capacities(), t.known_slots()), (None, None));
        // The same readings, fresh and with every replica ready, teach.
        for sec in 1000..1300 {
            t.observe(&ctx(sec), &busy(sec));
        }
        assert!(t.known_slots().is_some() && t.capacities().is_some());
    }

    #[test]
    fn a_burst_shorter_than_the_window_is_averaged_away() {
        let mut t = Tokens::new(TokensConfig {
            window: Duration::from_secs(60),
            ..set(8000.0, 1200.0)
        });
        let quiet = signals(1, 0.0, 10.0, Some((4000.0, 200.0)));
        for sec in 0..50 {
            assert_eq!(step(&mut t, sec, &quiet).replicas, 1);
        }
        // Ten seconds at 4x (2.67 replicas busy): the 60 s average rises from 0.67 to 1.0, over
        // 0.8 utilization 1.25, so 2, not the 4 the burst alone would ask for.
        let burst = signals(1, 0.0, 40.0, Some((16_000.0, 800.0)));
        let mut most = 0;
        for sec in 50..60 {
            most = most.max(step(&mut t, sec, &burst).replicas);
        }
        assert_eq!(most, 2);
    }

    #[test]
    fn a_replica_overloaded_inside_its_batch_gets_help_the_rates_do_not_ask_for() {
        // The rates (those of a saturated replica: what it serves, not what is asked) need one
        // replica, and nothing waits: the server admitted every request into its batch. But 250
        // requests are in flight on one replica of 80 slots, more than twice its slots:
        // ceil(250 / 160) = 2.
        let mut t = Tokens::new(set(8000.0, 1200.0));
        let s = signals(1, 0.0, 250.0, Some((3000.0, 450.0)));
        let r = step(&mut t, 0, &s);
        assert_eq!((r.replicas, r.rule), (2, Rule::TokensInFlight));
        // At twice the slots or fewer the rates decide ((0.375 + 0.375) / 0.8: one replica).
        let s = signals(1, 0.0, 160.0, Some((3000.0, 450.0)));
        let r = step(&mut t, 1, &s);
        assert_eq!(r.replicas, 1);
        assert_ne!(r.rule, Rule::TokensInFlight);
    }

    #[test]
    fn kv_cache_pressure_adds_replicas() {
        let mut t = Tokens::new(set(8000.0, 1200.0));
        let mut s = signals(2, 0.0, 50.0, Some((1000.0, 100.0)));
        s.kv_cache_usage = Some(Reading::fresh(0.99));
        let r = step(&mut t, 0, &s);
        // ceil(2 * 0.99 / 0.9) = 3.
        assert_eq!((r.replicas, r.rule), (3, Rule::TokensKvCache));
    }
}
