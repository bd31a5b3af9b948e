//! The control side of a replay: what the collector would have measured (per-second windows
//! behind the rates, the last scrape and its age), the signals the policy reads from it, and
//! the loop that asks the autoscaler (directly, or through the KEDA model) what to run.
//!
//! It sees the serving side only through [`Load`] (at a scrape) and [`Fleet`] (every second),
//! and answers with the replica counts to apply, so it is the same whatever serving model runs.

use std::time::Duration;

use gpuscale_policies::answer::Demand;
use gpuscale_policies::{Autoscaler, Decision, Reading, Signals};

use crate::keda::{HpaBehavior, Keda, KedaConfig};

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
    /// inactive), GetMetrics and the HPA (tolerance, `behavior`) every `hpa_sync` s.
    Keda {
        /// `pollingInterval` (30 s).
        polling: u64,
        /// HPA `--horizontal-pod-autoscaler-sync-period` (15 s).
        hpa_sync: u64,
        /// `cooldownPeriod` (the CLI default is 30 s, deploy/'s).
        cooldown: u64,
        /// The ScaledObject's HPA behavior.
        behavior: HpaBehavior,
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

/// What the model servers' pages say at a scrape, from the serving side.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Load {
    /// Requests waiting (the gateway queue and replicas' own queues).
    pub waiting: f64,
    /// Requests in service.
    pub running: f64,
    /// Mean KV-cache (or slot) usage over the ready replicas, 0-1.
    pub kv: f64,
    /// Share of ready replicas busy, 0-1.
    pub gpu: f64,
}

/// The replicas as the Deployment's status and the live queue show them, every second.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fleet {
    /// The count last asked for.
    pub desired: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Starting replicas.
    pub starting: u32,
    /// Requests waiting now.
    pub waiting: f64,
    /// Requests in service now.
    pub running: f64,
}

/// The last scrape of the workload's metrics.
#[derive(Clone, Copy)]
struct Scrape {
    at: u64,
    load: Load,
    rate: f64,
    service: Option<f64>,
    /// Prompt and output tokens/s over the token window; only the LLM model has tokens.
    tokens: Option<(f64, f64)>,
}

/// What one second of control decided.
#[derive(Debug, Default)]
pub(super) struct Step {
    /// Replica counts to apply, in order (KEDA: activation, then the HPA).
    pub apply: [Option<u32>; 2],
    /// The decision's reason code, when the autoscaler decided.
    pub rule: Option<String>,
}

/// The autoscaler, the loop it runs in, and what it has measured.
pub(super) struct Control {
    autoscaler: Autoscaler,
    loop_model: LoopModel,
    scrape_interval: u64,
    keda: Option<Keda>,
    windows: Windows,
    /// Arrivals since the second began (the timeline's).
    arrivals_this_second: u32,
    last_scrape: Option<Scrape>,
    /// KEDA loop: the scaler's last decision, what its RPCs answer from.
    last_decision: Option<Decision>,
    /// Whether the serving model has token counters (the LLM model).
    tokens: bool,
}

impl Control {
    pub(super) fn new(config: &ControlConfig, autoscaler: Autoscaler, tokens: bool) -> Self {
        Control {
            autoscaler,
            loop_model: config.loop_model.clone(),
            scrape_interval: config.scrape_interval,
            keda: match config.loop_model {
                LoopModel::Keda {
                    polling,
                    hpa_sync,
                    cooldown,
                    behavior,
                } => Some(Keda::new(KedaConfig {
                    polling,
                    hpa_sync,
                    cooldown,
                    behavior,
                })),
                LoopModel::Direct { .. } => None,
            },
            windows: Windows::new(),
            arrivals_this_second: 0,
            last_scrape: None,
            last_decision: None,
            tokens,
        }
    }

    /// A request arrived in second `sec`.
    pub(super) fn arrival(&mut self, sec: u64) {
        self.arrivals_this_second += 1;
        self.windows.arrival(sec);
    }

    /// Tokens computed in second `sec`.
    pub(super) fn tokens(&mut self, sec: u64, prompt: u64, generated: u64) {
        self.windows.tokens(sec, prompt, generated);
    }

    /// A request left service in second `sec` after `service` seconds in it.
    pub(super) fn completion(&mut self, sec: u64, service: f64) {
        self.windows.completion(sec, service);
    }

    /// Second `sec` starts; the arrivals of the one that ended.
    pub(super) fn open(&mut self, sec: u64) -> u32 {
        self.windows.open(sec);
        std::mem::take(&mut self.arrivals_this_second)
    }

    /// Whether second `sec` has a scrape (so [`Control::scraped`] must be told the load).
    pub(super) fn scrape_due(&self, sec: u64) -> bool {
        sec.is_multiple_of(self.scrape_interval.max(1)) || self.last_scrape.is_none()
    }

    /// The scrape of second `sec` saw `load`.
    pub(super) fn scraped(&mut self, sec: u64, load: Load) {
        let w = &self.windows;
        // The second in progress is included, so the window is the last (up to) 60 s.
        let window = (sec + 1).min(RATE_WINDOW as u64) as f64;
        self.last_scrape = Some(Scrape {
            at: sec,
            load,
            rate: f64::from(w.arrivals_total) / window,
            service: (w.service_n_total > 0).then(|| w.service_sum_total / f64::from(w.service_n_total)),
            tokens: self.tokens.then(|| {
                let span = (sec + 1).min(TOKEN_WINDOW as u64) as f64;
                (w.tokens_total.0 as f64 / span, w.tokens_total.1 as f64 / span)
            }),
        });
    }

    fn signals(sec: u64, fleet: &Fleet, scrape: &Scrape) -> Signals {
        let age = Duration::from_secs(sec - scrape.at);
        let l = &scrape.load;
        Signals {
            current: fleet.desired,
            ready: fleet.ready,
            starting: fleet.starting,
            waiting: Some(Reading::aged(l.waiting, age)),
            running: Some(Reading::aged(l.running, age)),
            kv_cache_usage: Some(Reading::aged(l.kv, age)),
            gpu_utilization: Some(Reading::aged(l.gpu, age)),
            arrival_rate: Some(Reading::aged(scrape.rate, age)),
            service_time: scrape.service.map(|s| Reading::aged(s, age)),
            prompt_tokens_rate: scrape.tokens.map(|t| Reading::aged(t.0, age)),
            generation_tokens_rate: scrape.tokens.map(|t| Reading::aged(t.1, age)),
            pods: Vec::new(),
        }
    }

    /// Run the control loop for second `sec`: decide when the loop reads the scaler, else let
    /// the autoscaler observe (its windows fill every second either way).
    pub(super) fn step(&mut self, sec: u64, fleet: &Fleet) -> Step {
        let Some(scrape) = self.last_scrape else {
            return Step::default();
        };
        let signals = Self::signals(sec, fleet, &scrape);
        let now = Duration::from_secs(sec);
        let mut out = Step::default();
        match self.loop_model {
            LoopModel::Direct { tick } => {
                let period = tick.unwrap_or_else(|| self.autoscaler.period().map_or(1, |p| p.as_secs()));
                if sec.is_multiple_of(period.max(1)) {
                    let d = self.autoscaler.decide(now, &signals);
                    out.rule = Some(d.rule.code().to_string());
                    out.apply[0] = Some(d.desired);
                    return out;
                }
            }
            LoopModel::Keda { .. } => {
                // The scaler decides on its own clock (every page, so every second; the `hpa` and
                // `kpa` baselines at their upstream periods) and answers every RPC from its last
                // decision, so its windows see every second whether KEDA reads it or not.
                let period = self.autoscaler.period().map_or(1, |p| p.as_secs()).max(1);
                let decided = sec.is_multiple_of(period) || self.last_decision.is_none();
                if decided {
                    let d = self.autoscaler.decide(now, &signals);
                    out.rule = Some(d.rule.code().to_string());
                    self.last_decision = Some(d);
                }
                if let (Some(keda), Some(d)) = (
                    self.keda.as_mut().filter(|k| k.reads(sec, fleet.desired)),
                    self.last_decision.as_ref(),
                ) {
                    // What the scaler sees. The simulator has no activator: requests queued at
                    // zero replicas are the ones an activator would hold.
                    let demand = if fleet.desired == 0 {
                        Demand {
                            held: fleet.waiting,
                            ..Demand::default()
                        }
                    } else {
                        Demand {
                            waiting: fleet.waiting,
                            running: fleet.running,
                            held: 0.0,
                        }
                    };
                    let (bounds, age) = (self.autoscaler.bounds(), self.autoscaler.safety().max_signal_age);
                    let actions = keda.step(sec, now, d, fleet.desired, demand, &signals, bounds, age);
                    out.apply = [actions.activation, actions.hpa];
                    return out;
                }
                if decided {
                    return out;
                }
            }
        }
        self.autoscaler.observe(now, &signals);
        out
    }
}
