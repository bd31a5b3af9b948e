//! The serving model: how replicas serve requests, what a replica costs, how long it takes to
//! start. Defaults and where each figure comes from are in docs/simulator.md.

use crate::rng::Rng;

/// How a replica serves requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Serving {
    /// Up to `slots` requests at once, each for its own service time (classic inference).
    Concurrency {
        /// Requests served at once per replica.
        slots: u32,
    },
    /// LLM continuous batching, the earlier estimated model (figures are estimates).
    Batching(Batching),
    /// LLM serving step by step, calibrated on a measured performance table.
    Llm(Box<crate::llm::LlmConfig>),
}

/// Continuous batching: admission bounded by sequences and KV tokens; a request's time is its
/// prefill plus its decode, and decode slows once the batch is large enough to be bound by
/// aggregate throughput rather than by the single-sequence step time.
#[derive(Clone, Debug, PartialEq)]
pub struct Batching {
    /// Prompt tokens processed per second (prefill).
    pub prefill_tps: f64,
    /// Decode speed of one sequence alone, tokens/s (the memory-bound step rate).
    pub decode_tps: f64,
    /// Aggregate decode throughput of a full batch, tokens/s.
    pub max_decode_tps: f64,
    /// KV-cache capacity in tokens (prompt + output of all running sequences).
    pub max_batch_tokens: u64,
    /// Most sequences in a batch (vLLM `max_num_seqs`).
    pub max_batch_seqs: u32,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            prefill_tps: 20_000.0,
            decode_tps: 150.0,
            max_decode_tps: 5_103.0,
            max_batch_tokens: 400_000,
            max_batch_seqs: 256,
        }
    }
}

impl Batching {
    /// Seconds to prefill `input` tokens.
    pub fn prefill(&self, input: u32) -> f64 {
        f64::from(input) / self.prefill_tps
    }

    /// Seconds to decode `output` tokens in a batch of `batch` sequences: each step takes the
    /// longer of the single-sequence step and the batch's share of aggregate throughput.
    pub fn decode(&self, output: u32, batch: u32) -> f64 {
        let per_token = (1.0 / self.decode_tps).max(f64::from(batch.max(1)) / self.max_decode_tps);
        f64::from(output) * per_token
    }
}

/// How long a new replica takes to become ready.
#[derive(Clone, Debug, PartialEq)]
pub enum ColdStart {
    /// Always this many seconds.
    Constant(f64),
    /// Drawn uniformly from recorded values (seconds).
    Empirical(Vec<f64>),
}

impl ColdStart {
    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            ColdStart::Constant(s) => *s,
            ColdStart::Empirical(v) if v.is_empty() => 0.0,
            ColdStart::Empirical(v) => v[rng.below(v.len())],
        }
    }

    /// Read one value per line (seconds); blank lines and `#` comments are ignored.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            match l.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => v.push(x),
                _ => {
                    return Err(format!(
                        "{}:{}: expected a cold start in seconds (a number >= 0), found `{l}`",
                        path.display(),
                        i + 1
                    ));
                }
            }
        }
        if v.is_empty() {
            return Err(format!("{}: no cold-start values", path.display()));
        }
        Ok(ColdStart::Empirical(v))
    }
}

/// Service times for requests whose trace has none.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub enum ServiceDist {
    /// Exponential with the given mean (M/M/c).
    Exp,
    /// Always the mean.
    Const,
}

/// Everything about the serving side of a replay.
#[derive(Clone, Debug, PartialEq)]
pub struct ServingConfig {
    /// Concurrency or batching.
    pub serving: Serving,
    /// Mean service time (s) when the trace has none (concurrency model).
    pub service_time: f64,
    /// Its distribution.
    pub service_dist: ServiceDist,
    /// Replica start time.
    pub cold_start: ColdStart,
    /// GPUs each replica holds.
    pub gpus_per_replica: u32,
    /// Price of one GPU-hour.
    pub price_per_gpu_hour: f64,
    /// A request not completed this long after arrival fails (s).
    pub timeout: f64,
    /// Replicas ready at t = 0.
    pub initial_replicas: u32,
    /// Most requests waiting in the central queue; arrivals beyond it fail at once.
    pub max_queue: usize,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            serving: Serving::Concurrency { slots: 1 },
            service_time: 1.0,
            service_dist: ServiceDist::Exp,
            cold_start: ColdStart::Constant(60.0),
            gpus_per_replica: 1,
            price_per_gpu_hour: 3.24,
            timeout: 300.0,
            initial_replicas: 1,
            max_queue: 10_000_000,
        }
    }
}
