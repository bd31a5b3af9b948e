//! The flags of `replay`, `sweep` and `recommend`, and how they become a trace, a serving model
//! and a control loop, refused with the flag and the fix when out of range.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use gpuscale_policies::spec;
use gpuscale_sim::engine::{ControlConfig, LoopModel};
use gpuscale_sim::keda::HpaBehavior;
use gpuscale_sim::llm::{LlmConfig, Router, StepCost};
use gpuscale_sim::perf::{self, PerfTable};
use gpuscale_sim::serving::{Batching, ColdStart, ServiceDist, Serving, ServingConfig};
use gpuscale_sim::trace::{self, Format, ReadOptions, TimeUnit, Trace};

#[derive(Args, Debug, Clone)]
pub(crate) struct RecommendArgs {
    #[command(flatten)]
    pub(crate) replay: ReplayArgs,
    /// The p99 end-to-end latency to meet, seconds (default: the best p99 among the candidates,
    /// within 10 %).
    #[arg(long, env = "GPUSCALE_SIM_OBJECTIVE_P99", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    pub(crate) objective_p99: Option<f64>,
    /// The Deployment the recommendation scales (the trigger's `deployment`).
    #[arg(long, default_value = "my-model", env = "GPUSCALE_SIM_DEPLOYMENT")]
    pub(crate) deployment: String,
    /// Its namespace.
    #[arg(long, default_value = "default", env = "GPUSCALE_SIM_NAMESPACE")]
    pub(crate) namespace: String,
    /// The gpuscale scaler's gRPC address, for the trigger's `scalerAddress`.
    #[arg(
        long,
        default_value = "gpuscale-scaler.gpuscale-system.svc:9090",
        env = "GPUSCALE_SIM_SCALER_ADDRESS"
    )]
    pub(crate) scaler_address: String,
    /// Write the recommendation as a KEDA ScaledObject (YAML) to this file.
    #[arg(long, env = "GPUSCALE_SIM_WRITE_SCALEDOBJECT")]
    pub(crate) write_scaledobject: Option<PathBuf>,
    /// Write it as direct-mode annotations (a Deployment patch, YAML) to this file.
    #[arg(long, env = "GPUSCALE_SIM_WRITE_ANNOTATIONS")]
    pub(crate) write_annotations: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LoopKind {
    /// gpuscale scales the Deployment itself (`--kube --direct`).
    Direct,
    /// KEDA polls gpuscale and drives an HPA (external-push trigger, replicas mode).
    Keda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HpaBehaviorKind {
    /// What deploy/ and `recommend` write: no stabilization, any step within one sync, so the
    /// HPA passes gpuscale's count through.
    Passthrough,
    /// The API server's default (no `advanced` in the ScaledObject): scale-up by 4 pods or
    /// 100 % per 15 s, scale-down after 300 s of stabilization on top of gpuscale's own window.
    Default,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServingKind {
    /// llm for traces with token counts and no service times, else concurrency.
    Auto,
    /// Each replica serves up to --concurrency requests at once.
    Concurrency,
    /// LLM serving step by step (vLLM V1 scheduler) on measured step times (--model,
    /// --hardware, --tp or --perf-table).
    Llm,
    /// The earlier continuous-batching model: its decode and prefill speeds are estimates.
    Batching,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ReplayArgs {
    /// Trace file (CSV).
    #[arg(long, env = "GPUSCALE_SIM_TRACE")]
    pub(crate) trace: PathBuf,
    /// Trace format; detected from the header when unambiguous.
    #[arg(long, env = "GPUSCALE_SIM_FORMAT")]
    pub(crate) format: Option<Format>,
    /// csv/rate: the time column (default: first column).
    #[arg(long, env = "GPUSCALE_SIM_TIME_COL")]
    pub(crate) time_col: Option<String>,
    /// csv/rate: unit of the time column (default: seconds, or date-times when they look like dates).
    #[arg(long, env = "GPUSCALE_SIM_TIME_UNIT")]
    pub(crate) time_unit: Option<TimeUnit>,
    /// csv: service time column, seconds.
    #[arg(long, env = "GPUSCALE_SIM_SERVICE_COL")]
    pub(crate) service_col: Option<String>,
    /// csv: prompt tokens column.
    #[arg(long, env = "GPUSCALE_SIM_INPUT_TOKENS_COL")]
    pub(crate) input_tokens_col: Option<String>,
    /// csv: output tokens column.
    #[arg(long, env = "GPUSCALE_SIM_OUTPUT_TOKENS_COL")]
    pub(crate) output_tokens_col: Option<String>,
    /// rate: the requests/s column (default: second column).
    #[arg(long, env = "GPUSCALE_SIM_RATE_COL")]
    pub(crate) rate_col: Option<String>,
    /// Count and skip malformed rows instead of stopping at the first.
    #[arg(long, env = "GPUSCALE_SIM_SKIP_BAD_ROWS")]
    pub(crate) skip_bad_rows: bool,
    /// Seed for everything random (Poisson expansion, drawn service times, cold starts).
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_SEED")]
    pub(crate) seed: u64,

    /// Policies to compare, comma-separated; `+` composes (e.g. queue+gpu). One of default
    /// (what a trigger without `policy` gets: the tokens policy), tokens, hpa, kpa, queue, slo,
    /// gpu, fixed:N each.
    #[arg(long, default_value = DEFAULT_POLICIES, env = "GPUSCALE_SIM_POLICY")]
    pub(crate) policy: String,
    /// Policy parameter KEY=VALUE, repeatable (see docs/policies.md). In `sweep`, VALUE may be a
    /// comma-separated list and every combination is replayed.
    #[arg(
        long = "param",
        value_name = "KEY=VALUE",
        env = "GPUSCALE_SIM_PARAM",
        value_delimiter = ';'
    )]
    pub(crate) params: Vec<String>,

    /// How decisions reach the workload.
    #[arg(long = "loop", value_enum, default_value_t = LoopKind::Direct, env = "GPUSCALE_SIM_LOOP")]
    pub(crate) loop_kind: LoopKind,
    /// direct: decision period in seconds (default 1; hpa and kpa use 15 and 2 unless set).
    #[arg(long, env = "GPUSCALE_SIM_TICK", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) tick: Option<u64>,
    /// keda: pollingInterval, seconds.
    #[arg(long, default_value_t = 30, env = "GPUSCALE_SIM_POLLING_INTERVAL", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) polling_interval: u64,
    /// keda: HPA sync period, seconds.
    #[arg(long, default_value_t = 15, env = "GPUSCALE_SIM_HPA_SYNC", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) hpa_sync: u64,
    /// keda: cooldownPeriod, seconds (30, what deploy/ and `recommend` write: gpuscale's
    /// keep-alive decides when a workload may sleep; KEDA's own default is 300).
    #[arg(long, default_value_t = 30, env = "GPUSCALE_SIM_COOLDOWN", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) cooldown: u64,
    /// keda: the HPA behavior the ScaledObject sets.
    #[arg(long, value_enum, default_value_t = HpaBehaviorKind::Passthrough, env = "GPUSCALE_SIM_HPA_BEHAVIOR")]
    pub(crate) hpa_behavior: HpaBehaviorKind,
    /// Seconds between metric scrapes: the policy sees the last one, aged (metric lag). 0 = fresh.
    #[arg(long, default_value_t = 0, env = "GPUSCALE_SIM_SCRAPE_INTERVAL", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) scrape_interval: u64,

    /// Serving model.
    #[arg(long, value_enum, default_value_t = ServingKind::Auto, env = "GPUSCALE_SIM_SERVING")]
    pub(crate) serving: ServingKind,
    /// concurrency: requests one replica serves at once.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_CONCURRENCY")]
    pub(crate) concurrency: u32,
    /// concurrency: mean service time (s) for traces without one.
    #[arg(long, default_value_t = 1.0, env = "GPUSCALE_SIM_SERVICE_TIME", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    pub(crate) service_time: f64,
    /// concurrency: distribution of those service times.
    #[arg(long, value_enum, default_value_t = ServiceDist::Exp, env = "GPUSCALE_SIM_SERVICE_DIST")]
    pub(crate) service_dist: ServiceDist,
    /// llm: model of the performance table (bundled: llama2-70b, bloom-176b).
    #[arg(long, default_value = "llama2-70b", env = "GPUSCALE_SIM_MODEL")]
    pub(crate) model: String,
    /// llm: hardware of the performance table (bundled: a100-80gb, h100-80gb, h100-80gb-pcap).
    #[arg(long, default_value = "h100-80gb", env = "GPUSCALE_SIM_HARDWARE")]
    pub(crate) hardware: String,
    /// llm: tensor parallelism; a replica holds this many GPUs (bundled: 2, 4, 8 for llama2-70b).
    #[arg(long, default_value_t = 4, env = "GPUSCALE_SIM_TP")]
    pub(crate) tp: u32,
    /// llm: your own measured table, in the bundled one's shape (docs/simulator.md).
    #[arg(long, env = "GPUSCALE_SIM_PERF_TABLE")]
    pub(crate) perf_table: Option<PathBuf>,
    /// llm: token budget of one step, shared by decode and chunked prefill (vLLM
    /// max_num_batched_tokens; default as vLLM's server picks it: 2048 on A100, 8192 on H100).
    #[arg(long, env = "GPUSCALE_SIM_MAX_BATCH_TOKENS")]
    pub(crate) max_batch_tokens: Option<u32>,
    /// llm, batching: most sequences running on a replica (vLLM max_num_seqs; llm default as
    /// vLLM's server picks it: 256 on A100, 1024 on H100; batching: 256).
    #[arg(long, env = "GPUSCALE_SIM_MAX_SEQS")]
    pub(crate) max_seqs: Option<u32>,
    /// llm, batching: KV-cache capacity in tokens per replica (llm default: derived from the
    /// model's size and the GPUs' memory; batching: 400000).
    #[arg(long, env = "GPUSCALE_SIM_KV_CACHE_TOKENS")]
    pub(crate) kv_cache_tokens: Option<u64>,
    /// llm: how requests reach replicas.
    #[arg(long, value_enum, default_value_t = Router::Shared, env = "GPUSCALE_SIM_ROUTER")]
    pub(crate) router: Router,
    /// batching: prompt tokens per second per replica (estimate).
    #[arg(long, default_value_t = Batching::default().prefill_tps, env = "GPUSCALE_SIM_PREFILL_TPS")]
    pub(crate) prefill_tps: f64,
    /// batching: decode tokens per second of one sequence alone.
    #[arg(long, default_value_t = Batching::default().decode_tps, env = "GPUSCALE_SIM_DECODE_TPS")]
    pub(crate) decode_tps: f64,
    /// batching: aggregate decode tokens per second of a full batch.
    #[arg(long, default_value_t = Batching::default().max_decode_tps, env = "GPUSCALE_SIM_MAX_DECODE_TPS")]
    pub(crate) max_decode_tps: f64,
    /// Seconds for a new replica to become ready (0 allowed).
    #[arg(long, default_value_t = 60.0, env = "GPUSCALE_SIM_COLD_START", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    pub(crate) cold_start: f64,
    /// Draw cold starts from recorded values instead: one number of seconds per line.
    #[arg(long, env = "GPUSCALE_SIM_COLD_START_FILE", conflicts_with = "cold_start")]
    pub(crate) cold_start_file: Option<PathBuf>,
    /// GPUs each replica holds (default: --tp for llm, else 1).
    #[arg(long, env = "GPUSCALE_SIM_GPUS_PER_REPLICA")]
    pub(crate) gpus_per_replica: Option<u32>,
    /// Price of one GPU-hour (default: an on-demand H100, see docs/simulator.md).
    #[arg(long, default_value_t = 3.24, env = "GPUSCALE_SIM_PRICE_PER_GPU_HOUR")]
    pub(crate) price_per_gpu_hour: f64,
    /// A request not completed this many seconds after arrival fails.
    #[arg(long, default_value_t = 300.0, env = "GPUSCALE_SIM_TIMEOUT", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    pub(crate) timeout: f64,
    /// Replicas ready at the start.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_INITIAL_REPLICAS")]
    pub(crate) initial_replicas: u32,
    /// Most requests waiting in the queue; later arrivals fail at once.
    #[arg(long, default_value_t = 10_000_000, env = "GPUSCALE_SIM_MAX_QUEUE")]
    pub(crate) max_queue: usize,
    /// Seconds to keep simulating after the last arrival; `auto`: until every request has an
    /// outcome (at most --timeout after the last arrival, when what is left has timed out).
    #[arg(long, default_value = "auto", env = "GPUSCALE_SIM_DRAIN", value_parser = drain_secs, allow_negative_numbers = true)]
    pub(crate) drain: Drain,
    /// Also compute a lower bound on GPU-hours for this trace and serving model (docs/simulator.md)
    /// and show every policy's GPU-hours as a multiple of it.
    #[arg(long, env = "GPUSCALE_SIM_ORACLE")]
    pub(crate) oracle: bool,
    /// The bound's latency target in seconds (default: the best p99 among the policies replayed).
    #[arg(long, env = "GPUSCALE_SIM_ORACLE_P99", value_parser = spec::duration_secs, allow_negative_numbers = true, requires = "oracle")]
    pub(crate) oracle_p99: Option<f64>,

    /// Latency objective in seconds: report the share of requests completed within it.
    #[arg(long, env = "GPUSCALE_SIM_SLO", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    pub(crate) slo: Option<f64>,
    /// Write the results as JSON (schema in docs/simulator.md).
    #[arg(long, env = "GPUSCALE_SIM_JSON")]
    pub(crate) json: Option<PathBuf>,
    /// Write a self-contained HTML report with SVG charts.
    #[arg(long, env = "GPUSCALE_SIM_REPORT")]
    pub(crate) report: Option<PathBuf>,
    /// Timeline resolution in seconds for --json and --report.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_TIMELINE_STEP", value_parser = whole_seconds, allow_negative_numbers = true)]
    pub(crate) timeline_step: u64,
    /// Replays run at once (default: the machine's cores).
    #[arg(long, env = "GPUSCALE_SIM_THREADS")]
    pub(crate) threads: Option<usize>,
}

/// Most replicas a run may start with: the policies' own bound on maxReplicas.
pub(crate) const MAX_REPLICAS: u32 = 100_000;

/// Longest simulated time (90 days: the 11-day Alibaba trace takes seconds per policy).
pub(crate) const MAX_SIMULATED_SECONDS: f64 = 90.0 * 86_400.0;

/// Most points in one sweep.
pub(crate) const MAX_SWEEP_POINTS: usize = 10_000;

/// `--drain`: `auto` or seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Drain(Option<f64>);

pub(crate) fn drain_secs(v: &str) -> Result<Drain, String> {
    if v.trim() == "auto" {
        return Ok(Drain(None));
    }
    let s = spec::duration_secs(v).map_err(|e| format!("{e} (or `auto`)"))?;
    if s < 0.0 {
        return Err(format!("`{}`: expected seconds >= 0 or `auto`", spec::brief(v)));
    }
    Ok(Drain(Some(s)))
}

/// The policies `replay` compares unless told otherwise (and `recommend`'s baselines).
pub(crate) const DEFAULT_POLICIES: &str = "hpa,kpa,default,queue,slo";

/// Largest step token budget: the step-time table holds one entry per token.
pub(crate) const MAX_BATCH_TOKENS: u32 = 1 << 20;

/// vLLM's OpenAI-server defaults (`EngineArgs.get_batch_defaults`): larger on GPUs of 70 GiB
/// or more other than the A100, where a larger budget was measured to cost throughput.
pub(crate) fn vllm_batch_defaults(hardware: &str) -> (u32, u32) {
    if hardware.starts_with("a100") || perf::gpu_memory_gib(hardware).is_some_and(|g| g < 70.0) {
        (2048, 256)
    } else {
        (8192, 1024)
    }
}

/// A duration flag the engine counts in whole seconds (its tick).
pub(crate) fn whole_seconds(v: &str) -> Result<u64, String> {
    let s = spec::duration_secs(v)?;
    if s.fract() != 0.0 {
        return Err(format!(
            "`{}`: expected whole seconds (the simulator ticks once a second), e.g. 15s or 2m",
            spec::brief(v)
        ));
    }
    Ok(s as u64)
}

pub(crate) fn check(
    cond: bool,
    flag: &str,
    value: impl std::fmt::Display,
    expected: &str,
) -> anyhow::Result<()> {
    if !cond {
        bail!("{flag} {value}: expected {expected}");
    }
    Ok(())
}

impl ReplayArgs {
    pub(crate) fn read_trace(&self) -> anyhow::Result<Trace> {
        let opts = ReadOptions {
            format: self.format,
            time_col: self.time_col.clone(),
            time_unit: self.time_unit,
            service_col: self.service_col.clone(),
            input_tokens_col: self.input_tokens_col.clone(),
            output_tokens_col: self.output_tokens_col.clone(),
            rate_col: self.rate_col.clone(),
            seed: self.seed,
            skip_bad_rows: self.skip_bad_rows,
            ..ReadOptions::default()
        };
        Ok(trace::read(&self.trace, &opts)?)
    }

    pub(crate) fn serving(&self, trace: &Trace) -> anyhow::Result<ServingConfig> {
        // Checked before anything is allocated for them.
        check(
            self.initial_replicas <= MAX_REPLICAS,
            "--initial-replicas",
            self.initial_replicas,
            &format!("0 to {MAX_REPLICAS} (maxReplicas' own bound)"),
        )?;
        let drain = self.drain.0.unwrap_or(self.timeout.max(0.0));
        let simulated = trace.span() + drain;
        if simulated > MAX_SIMULATED_SECONDS {
            bail!(
                "{}: the trace spans {:.1} days (plus --drain {} s); at most {} days are simulated, one tick a second: cut the trace to the window you want to study",
                trace.path.display(),
                trace.span() / 86_400.0,
                drain,
                MAX_SIMULATED_SECONDS / 86_400.0
            );
        }
        check(
            self.concurrency >= 1,
            "--concurrency",
            self.concurrency,
            "an integer >= 1",
        )?;
        check(
            self.service_time > 0.0,
            "--service-time",
            self.service_time,
            "seconds > 0",
        )?;
        check(
            self.cold_start >= 0.0,
            "--cold-start",
            self.cold_start,
            "seconds >= 0",
        )?;
        check(self.timeout > 0.0, "--timeout", self.timeout, "seconds > 0")?;
        if let Some(g) = self.gpus_per_replica {
            check(g >= 1, "--gpus-per-replica", g, "an integer >= 1")?;
        }
        check(
            self.price_per_gpu_hour >= 0.0,
            "--price-per-gpu-hour",
            self.price_per_gpu_hour,
            "a price >= 0",
        )?;
        for (flag, v) in [
            ("--prefill-tps", self.prefill_tps),
            ("--decode-tps", self.decode_tps),
            ("--max-decode-tps", self.max_decode_tps),
        ] {
            check(v > 0.0 && v.is_finite(), flag, v, "tokens/s > 0")?;
        }
        let (budget, seqs) = self.batch_limits();
        check(
            (1..=MAX_BATCH_TOKENS).contains(&budget),
            "--max-batch-tokens",
            budget,
            &format!("an integer from 1 to {MAX_BATCH_TOKENS}"),
        )?;
        check(
            seqs >= 1 && seqs <= budget,
            "--max-seqs",
            seqs,
            "an integer from 1 to --max-batch-tokens (each running sequence takes a token of every step)",
        )?;
        check(
            (1..=64).contains(&self.tp),
            "--tp",
            self.tp,
            "an integer from 1 to 64",
        )?;
        if let Some(kv) = self.kv_cache_tokens {
            check(kv >= 1, "--kv-cache-tokens", kv, "an integer >= 1")?;
        }
        let kind = match self.serving {
            ServingKind::Auto if trace.has_tokens() && !trace.has_service_times() => ServingKind::Llm,
            ServingKind::Auto => ServingKind::Concurrency,
            k => k,
        };
        if matches!(kind, ServingKind::Llm | ServingKind::Batching) && !trace.has_tokens() {
            bail!(
                "--serving {} needs token counts; this trace has none (map them with --input-tokens-col and --output-tokens-col, or use --serving concurrency)",
                if kind == ServingKind::Llm {
                    "llm"
                } else {
                    "batching"
                }
            );
        }
        let cold_start = match &self.cold_start_file {
            Some(p) => ColdStart::from_file(p).map_err(anyhow::Error::msg)?,
            None => ColdStart::Constant(self.cold_start),
        };
        let serving = match kind {
            ServingKind::Llm => Serving::Llm(Box::new(self.llm()?)),
            ServingKind::Batching => Serving::Batching(Batching {
                prefill_tps: self.prefill_tps,
                decode_tps: self.decode_tps,
                max_decode_tps: self.max_decode_tps,
                max_batch_tokens: self
                    .kv_cache_tokens
                    .unwrap_or(Batching::default().max_batch_tokens),
                max_batch_seqs: self.max_seqs.unwrap_or(Batching::default().max_batch_seqs),
            }),
            _ => Serving::Concurrency {
                slots: self.concurrency,
            },
        };
        let gpus_per_replica = self.gpus_per_replica.unwrap_or(match serving {
            Serving::Llm(_) => self.tp,
            _ => 1,
        });
        Ok(ServingConfig {
            serving,
            service_time: self.service_time,
            service_dist: self.service_dist,
            cold_start,
            gpus_per_replica,
            price_per_gpu_hour: self.price_per_gpu_hour,
            timeout: self.timeout,
            initial_replicas: self.initial_replicas,
            max_queue: self.max_queue,
        })
    }

    /// The llm model's step budget and sequence cap, given or vLLM's defaults.
    pub(crate) fn batch_limits(&self) -> (u32, u32) {
        let (budget, seqs) = vllm_batch_defaults(&self.hardware);
        (
            self.max_batch_tokens.unwrap_or(budget),
            self.max_seqs.unwrap_or(seqs),
        )
    }

    /// The measured LLM model from --model/--hardware/--tp or --perf-table.
    pub(crate) fn llm(&self) -> anyhow::Result<LlmConfig> {
        let (max_batch_tokens, max_seqs) = self.batch_limits();
        let table = match &self.perf_table {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("--perf-table {}", p.display()))?;
                PerfTable::parse(
                    &p.display().to_string(),
                    &text,
                    &self.model,
                    &self.hardware,
                    self.tp,
                )?
            }
            None => PerfTable::bundled(&self.model, &self.hardware, self.tp)?,
        };
        let kv_tokens = match self.kv_cache_tokens {
            Some(kv) => kv,
            None => perf::default_kv_tokens(&self.model, &self.hardware, self.tp).with_context(|| {
                format!(
                    "the KV-cache size of `{}` on `{}` is not known here, or the weights do not fit on {} GPU(s): give --kv-cache-tokens (vLLM logs it at start-up as `GPU KV cache size: N tokens`)",
                    spec::brief(&self.model),
                    spec::brief(&self.hardware),
                    self.tp
                )
            })?,
        };
        Ok(LlmConfig {
            cost: StepCost::new(&table, max_batch_tokens, max_seqs),
            table,
            max_batch_tokens,
            max_seqs,
            kv_tokens,
            router: self.router,
        })
    }

    pub(crate) fn control(&self) -> anyhow::Result<ControlConfig> {
        Ok(ControlConfig {
            loop_model: match self.loop_kind {
                LoopKind::Direct => LoopModel::Direct { tick: self.tick },
                LoopKind::Keda => LoopModel::Keda {
                    polling: self.polling_interval,
                    hpa_sync: self.hpa_sync,
                    cooldown: self.cooldown,
                    behavior: match self.hpa_behavior {
                        HpaBehaviorKind::Passthrough => HpaBehavior::Passthrough,
                        HpaBehaviorKind::Default => HpaBehavior::Default,
                    },
                },
            },
            scrape_interval: self.scrape_interval,
            timeline_step: if self.json.is_some() || self.report.is_some() {
                self.timeline_step.max(1)
            } else {
                0
            },
            drain: self.drain.0,
        })
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}
