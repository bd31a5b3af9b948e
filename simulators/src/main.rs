//! `gpuscale-sim`: replay recorded traffic against autoscaling policies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gpuscale_policies::spec;
use gpuscale_sim::engine::{ControlConfig, LoopModel};
use gpuscale_sim::llm::{LlmConfig, Router, StepCost};
use gpuscale_sim::perf::{self, PerfTable};
use gpuscale_sim::report::{self, Document, PolicyResult};
use gpuscale_sim::run::{Footing, PolicyRun, fair_params, footing, replay};
use gpuscale_sim::serving::{Batching, ColdStart, ServiceDist, Serving, ServingConfig};
use gpuscale_sim::trace::{self, Format, ReadOptions, TimeUnit, Trace};
use indicatif::{ProgressBar, ProgressStyle};

/// What would this autoscaling policy have cost, and how slow would it have been, on my real
/// traffic? Replays a recorded trace through a model of replicas (concurrency-limited, or LLM
/// continuous batching) driven by the same policy code the gpuscale scaler runs.
#[derive(Parser, Debug)]
#[command(name = "gpuscale-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a trace under one or more policies and compare them.
    ///
    /// Example: gpuscale-sim replay --trace data/traces/AzureLLMInferenceTrace_conv.csv
    /// --policy hpa,kpa,default,queue,slo --json out.json --report out.html
    Replay(ReplayArgs),
    /// Replay a trace over a grid of policy parameters and mark the cost / p99 Pareto frontier.
    ///
    /// Example: gpuscale-sim sweep --trace data/traces/AzureLLMInferenceTrace_code.csv
    /// --policy queue --param queue.target=2,4,8 --param queue.scaleDownWindow=60s,300s
    Sweep(ReplayArgs),
    /// Replay candidate policies and recommend the cheapest that meets a p99 latency objective,
    /// with its GPU-hours as a multiple of the lower bound, written as a ready KEDA ScaledObject
    /// and as direct-mode annotations.
    ///
    /// The candidates are hpa, kpa, default, queue and slo set up from the serving model, queue
    /// at half, one and twice the replica's slots, each with keepAlive 60s, 5m and 15m (or the
    /// --policy specs, if given).
    ///
    /// Example: gpuscale-sim recommend --trace data/traces/AzureLLMInferenceTrace_conv.csv
    /// --objective-p99 90s --deployment qwen --namespace llm --write-scaledobject so.yaml
    Recommend(RecommendArgs),
}

#[derive(Args, Debug, Clone)]
struct RecommendArgs {
    #[command(flatten)]
    replay: ReplayArgs,
    /// The p99 end-to-end latency to meet, seconds (default: the best p99 among the candidates,
    /// within 10 %).
    #[arg(long, env = "GPUSCALE_SIM_OBJECTIVE_P99", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    objective_p99: Option<f64>,
    /// The Deployment the recommendation scales (the trigger's `deployment`).
    #[arg(long, default_value = "my-model", env = "GPUSCALE_SIM_DEPLOYMENT")]
    deployment: String,
    /// Its namespace.
    #[arg(long, default_value = "default", env = "GPUSCALE_SIM_NAMESPACE")]
    namespace: String,
    /// The gpuscale scaler's gRPC address, for the trigger's `scalerAddress`.
    #[arg(
        long,
        default_value = "gpuscale-scaler.gpuscale-system.svc:9090",
        env = "GPUSCALE_SIM_SCALER_ADDRESS"
    )]
    scaler_address: String,
    /// Write the recommendation as a KEDA ScaledObject (YAML) to this file.
    #[arg(long, env = "GPUSCALE_SIM_WRITE_SCALEDOBJECT")]
    write_scaledobject: Option<PathBuf>,
    /// Write it as direct-mode annotations (a Deployment patch, YAML) to this file.
    #[arg(long, env = "GPUSCALE_SIM_WRITE_ANNOTATIONS")]
    write_annotations: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LoopKind {
    /// gpuscale scales the Deployment itself (`--kube --direct`).
    Direct,
    /// KEDA polls gpuscale and drives an HPA (external-push trigger, replicas mode).
    Keda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServingKind {
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
struct ReplayArgs {
    /// Trace file (CSV).
    #[arg(long, env = "GPUSCALE_SIM_TRACE")]
    trace: PathBuf,
    /// Trace format; detected from the header when unambiguous.
    #[arg(long, env = "GPUSCALE_SIM_FORMAT")]
    format: Option<Format>,
    /// csv/rate: the time column (default: first column).
    #[arg(long, env = "GPUSCALE_SIM_TIME_COL")]
    time_col: Option<String>,
    /// csv/rate: unit of the time column (default: seconds, or date-times when they look like dates).
    #[arg(long, env = "GPUSCALE_SIM_TIME_UNIT")]
    time_unit: Option<TimeUnit>,
    /// csv: service time column, seconds.
    #[arg(long, env = "GPUSCALE_SIM_SERVICE_COL")]
    service_col: Option<String>,
    /// csv: prompt tokens column.
    #[arg(long, env = "GPUSCALE_SIM_INPUT_TOKENS_COL")]
    input_tokens_col: Option<String>,
    /// csv: output tokens column.
    #[arg(long, env = "GPUSCALE_SIM_OUTPUT_TOKENS_COL")]
    output_tokens_col: Option<String>,
    /// rate: the requests/s column (default: second column).
    #[arg(long, env = "GPUSCALE_SIM_RATE_COL")]
    rate_col: Option<String>,
    /// Count and skip malformed rows instead of stopping at the first.
    #[arg(long, env = "GPUSCALE_SIM_SKIP_BAD_ROWS")]
    skip_bad_rows: bool,
    /// Seed for everything random (Poisson expansion, drawn service times, cold starts).
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_SEED")]
    seed: u64,

    /// Policies to compare, comma-separated; `+` composes (e.g. queue+gpu). One of default
    /// (what a trigger without `policy` gets: the tokens policy), tokens, hpa, kpa, queue, slo,
    /// gpu, fixed:N each.
    #[arg(long, default_value = DEFAULT_POLICIES, env = "GPUSCALE_SIM_POLICY")]
    policy: String,
    /// Policy parameter KEY=VALUE, repeatable (see docs/policies.md). In `sweep`, VALUE may be a
    /// comma-separated list and every combination is replayed.
    #[arg(
        long = "param",
        value_name = "KEY=VALUE",
        env = "GPUSCALE_SIM_PARAM",
        value_delimiter = ';'
    )]
    params: Vec<String>,

    /// How decisions reach the workload.
    #[arg(long = "loop", value_enum, default_value_t = LoopKind::Direct, env = "GPUSCALE_SIM_LOOP")]
    loop_kind: LoopKind,
    /// direct: decision period in seconds (default 1; hpa and kpa use 15 and 2 unless set).
    #[arg(long, env = "GPUSCALE_SIM_TICK", value_parser = whole_seconds, allow_negative_numbers = true)]
    tick: Option<u64>,
    /// keda: pollingInterval, seconds.
    #[arg(long, default_value_t = 30, env = "GPUSCALE_SIM_POLLING_INTERVAL", value_parser = whole_seconds, allow_negative_numbers = true)]
    polling_interval: u64,
    /// keda: HPA sync period, seconds.
    #[arg(long, default_value_t = 15, env = "GPUSCALE_SIM_HPA_SYNC", value_parser = whole_seconds, allow_negative_numbers = true)]
    hpa_sync: u64,
    /// keda: cooldownPeriod, seconds.
    #[arg(long, default_value_t = 300, env = "GPUSCALE_SIM_COOLDOWN", value_parser = whole_seconds, allow_negative_numbers = true)]
    cooldown: u64,
    /// Seconds between metric scrapes: the policy sees the last one, aged (metric lag). 0 = fresh.
    #[arg(long, default_value_t = 0, env = "GPUSCALE_SIM_SCRAPE_INTERVAL", value_parser = whole_seconds, allow_negative_numbers = true)]
    scrape_interval: u64,

    /// Serving model.
    #[arg(long, value_enum, default_value_t = ServingKind::Auto, env = "GPUSCALE_SIM_SERVING")]
    serving: ServingKind,
    /// concurrency: requests one replica serves at once.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_CONCURRENCY")]
    concurrency: u32,
    /// concurrency: mean service time (s) for traces without one.
    #[arg(long, default_value_t = 1.0, env = "GPUSCALE_SIM_SERVICE_TIME", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    service_time: f64,
    /// concurrency: distribution of those service times.
    #[arg(long, value_enum, default_value_t = ServiceDist::Exp, env = "GPUSCALE_SIM_SERVICE_DIST")]
    service_dist: ServiceDist,
    /// llm: model of the performance table (bundled: llama2-70b, bloom-176b).
    #[arg(long, default_value = "llama2-70b", env = "GPUSCALE_SIM_MODEL")]
    model: String,
    /// llm: hardware of the performance table (bundled: a100-80gb, h100-80gb, h100-80gb-pcap).
    #[arg(long, default_value = "h100-80gb", env = "GPUSCALE_SIM_HARDWARE")]
    hardware: String,
    /// llm: tensor parallelism; a replica holds this many GPUs (bundled: 2, 4, 8 for llama2-70b).
    #[arg(long, default_value_t = 4, env = "GPUSCALE_SIM_TP")]
    tp: u32,
    /// llm: your own measured table, in the bundled one's shape (docs/simulator.md).
    #[arg(long, env = "GPUSCALE_SIM_PERF_TABLE")]
    perf_table: Option<PathBuf>,
    /// llm: token budget of one step, shared by decode and chunked prefill (vLLM
    /// max_num_batched_tokens; default as vLLM's server picks it: 2048 on A100, 8192 on H100).
    #[arg(long, env = "GPUSCALE_SIM_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<u32>,
    /// llm, batching: most sequences running on a replica (vLLM max_num_seqs; llm default as
    /// vLLM's server picks it: 256 on A100, 1024 on H100; batching: 256).
    #[arg(long, env = "GPUSCALE_SIM_MAX_SEQS")]
    max_seqs: Option<u32>,
    /// llm, batching: KV-cache capacity in tokens per replica (llm default: derived from the
    /// model's size and the GPUs' memory; batching: 400000).
    #[arg(long, env = "GPUSCALE_SIM_KV_CACHE_TOKENS")]
    kv_cache_tokens: Option<u64>,
    /// llm: how requests reach replicas.
    #[arg(long, value_enum, default_value_t = Router::Shared, env = "GPUSCALE_SIM_ROUTER")]
    router: Router,
    /// batching: prompt tokens per second per replica (estimate).
    #[arg(long, default_value_t = Batching::default().prefill_tps, env = "GPUSCALE_SIM_PREFILL_TPS")]
    prefill_tps: f64,
    /// batching: decode tokens per second of one sequence alone.
    #[arg(long, default_value_t = Batching::default().decode_tps, env = "GPUSCALE_SIM_DECODE_TPS")]
    decode_tps: f64,
    /// batching: aggregate decode tokens per second of a full batch.
    #[arg(long, default_value_t = Batching::default().max_decode_tps, env = "GPUSCALE_SIM_MAX_DECODE_TPS")]
    max_decode_tps: f64,
    /// Seconds for a new replica to become ready (0 allowed).
    #[arg(long, default_value_t = 60.0, env = "GPUSCALE_SIM_COLD_START", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    cold_start: f64,
    /// Draw cold starts from recorded values instead: one number of seconds per line.
    #[arg(long, env = "GPUSCALE_SIM_COLD_START_FILE", conflicts_with = "cold_start")]
    cold_start_file: Option<PathBuf>,
    /// GPUs each replica holds (default: --tp for llm, else 1).
    #[arg(long, env = "GPUSCALE_SIM_GPUS_PER_REPLICA")]
    gpus_per_replica: Option<u32>,
    /// Price of one GPU-hour (default: an on-demand H100, see docs/simulator.md).
    #[arg(long, default_value_t = 3.24, env = "GPUSCALE_SIM_PRICE_PER_GPU_HOUR")]
    price_per_gpu_hour: f64,
    /// A request not completed this many seconds after arrival fails.
    #[arg(long, default_value_t = 300.0, env = "GPUSCALE_SIM_TIMEOUT", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    timeout: f64,
    /// Replicas ready at the start.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_INITIAL_REPLICAS")]
    initial_replicas: u32,
    /// Most requests waiting in the queue; later arrivals fail at once.
    #[arg(long, default_value_t = 10_000_000, env = "GPUSCALE_SIM_MAX_QUEUE")]
    max_queue: usize,
    /// Seconds to keep simulating after the last arrival; `auto`: until every request has an
    /// outcome (at most --timeout after the last arrival, when what is left has timed out).
    #[arg(long, default_value = "auto", env = "GPUSCALE_SIM_DRAIN", value_parser = drain_secs, allow_negative_numbers = true)]
    drain: Drain,
    /// Also compute a lower bound on GPU-hours for this trace and serving model (docs/simulator.md)
    /// and show every policy's GPU-hours as a multiple of it.
    #[arg(long, env = "GPUSCALE_SIM_ORACLE")]
    oracle: bool,
    /// The bound's latency target in seconds (default: the best p99 among the policies replayed).
    #[arg(long, env = "GPUSCALE_SIM_ORACLE_P99", value_parser = spec::duration_secs, allow_negative_numbers = true, requires = "oracle")]
    oracle_p99: Option<f64>,

    /// Latency objective in seconds: report the share of requests completed within it.
    #[arg(long, env = "GPUSCALE_SIM_SLO", value_parser = spec::duration_secs, allow_negative_numbers = true)]
    slo: Option<f64>,
    /// Write the results as JSON (schema in docs/simulator.md).
    #[arg(long, env = "GPUSCALE_SIM_JSON")]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with SVG charts.
    #[arg(long, env = "GPUSCALE_SIM_REPORT")]
    report: Option<PathBuf>,
    /// Timeline resolution in seconds for --json and --report.
    #[arg(long, default_value_t = 1, env = "GPUSCALE_SIM_TIMELINE_STEP", value_parser = whole_seconds, allow_negative_numbers = true)]
    timeline_step: u64,
    /// Replays run at once (default: the machine's cores).
    #[arg(long, env = "GPUSCALE_SIM_THREADS")]
    threads: Option<usize>,
}

/// Most replicas a run may start with: the policies' own bound on maxReplicas.
const MAX_REPLICAS: u32 = 100_000;

/// Longest simulated time (90 days: the 11-day Alibaba trace takes seconds per policy).
const MAX_SIMULATED_SECONDS: f64 = 90.0 * 86_400.0;

/// Most points in one sweep.
const MAX_SWEEP_POINTS: usize = 10_000;

/// `--drain`: `auto` or seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Drain(Option<f64>);

fn drain_secs(v: &str) -> Result<Drain, String> {
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
const DEFAULT_POLICIES: &str = "hpa,kpa,default,queue,slo";

/// Largest step token budget: the step-time table holds one entry per token.
const MAX_BATCH_TOKENS: u32 = 1 << 20;

/// vLLM's OpenAI-server defaults (`EngineArgs.get_batch_defaults`): larger on GPUs of 70 GiB
/// or more other than the A100, where a larger budget was measured to cost throughput.
fn vllm_batch_defaults(hardware: &str) -> (u32, u32) {
    if hardware.starts_with("a100") || perf::gpu_memory_gib(hardware).is_some_and(|g| g < 70.0) {
        (2048, 256)
    } else {
        (8192, 1024)
    }
}

/// A duration flag the engine counts in whole seconds (its tick).
fn whole_seconds(v: &str) -> Result<u64, String> {
    let s = spec::duration_secs(v)?;
    if s.fract() != 0.0 {
        return Err(format!(
            "`{}`: expected whole seconds (the simulator ticks once a second), e.g. 15s or 2m",
            spec::brief(v)
        ));
    }
    Ok(s as u64)
}

fn check(cond: bool, flag: &str, value: impl std::fmt::Display, expected: &str) -> anyhow::Result<()> {
    if !cond {
        bail!("{flag} {value}: expected {expected}");
    }
    Ok(())
}

impl ReplayArgs {
    fn read_trace(&self) -> anyhow::Result<Trace> {
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

    fn serving(&self, trace: &Trace) -> anyhow::Result<ServingConfig> {
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
    fn batch_limits(&self) -> (u32, u32) {
        let (budget, seqs) = vllm_batch_defaults(&self.hardware);
        (
            self.max_batch_tokens.unwrap_or(budget),
            self.max_seqs.unwrap_or(seqs),
        )
    }

    /// The measured LLM model from --model/--hardware/--tp or --perf-table.
    fn llm(&self) -> anyhow::Result<LlmConfig> {
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

    fn control(&self) -> anyhow::Result<ControlConfig> {
        Ok(ControlConfig {
            loop_model: match self.loop_kind {
                LoopKind::Direct => LoopModel::Direct { tick: self.tick },
                LoopKind::Keda => LoopModel::Keda {
                    polling: self.polling_interval,
                    hpa_sync: self.hpa_sync,
                    cooldown: self.cooldown,
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

    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

fn describe(trace: &Trace, serving: &ServingConfig, derived: &[String]) -> String {
    let model = match &serving.serving {
        Serving::Concurrency { slots } => format!("concurrency {slots} per replica"),
        Serving::Batching(b) => format!(
            "continuous batching, ESTIMATED speeds (prefill {} tok/s, decode {} tok/s per sequence, {} tok/s per batch, {} KV tokens, {} seqs)",
            b.prefill_tps, b.decode_tps, b.max_decode_tps, b.max_batch_tokens, b.max_batch_seqs
        ),
        Serving::Llm(c) => {
            let t = &c.table;
            format!(
                "LLM steps of {} tokens, {} seqs, {} KV tokens, router {}; step times MEASURED: {} on {} TP {} from the {} ({} configurations{}; prefill {:.0} ms per {} tokens, decode step {:.1} ms at 1 seq, {:.1} ms at {})",
                c.max_batch_tokens,
                c.max_seqs,
                c.kv_tokens,
                match c.router {
                    Router::Shared => "shared",
                    Router::LeastLoaded => "least-loaded",
                },
                t.model,
                t.hardware,
                t.tp,
                t.source,
                t.measured.len(),
                if t.dropped.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} left out as non-monotone: {}",
                        t.dropped.len(),
                        t.dropped.join(", ")
                    )
                },
                t.prefill.at(f64::from(c.max_batch_tokens)) * 1000.0,
                c.max_batch_tokens,
                t.decode.at(1.0) * 1000.0,
                t.decode.at(f64::from(c.max_seqs)) * 1000.0,
                c.max_seqs
            )
        }
    };
    let cold = match &serving.cold_start {
        ColdStart::Constant(s) => format!("{s} s"),
        ColdStart::Empirical(v) => format!("drawn from {} recorded values", v.len()),
    };
    let mut s = format!(
        "trace {} ({}): {} requests over {:.1} h\nserving: {model}; cold start {cold}; {} GPU/replica at {}/GPU-h; timeout {} s\n",
        trace.path.display(),
        trace.format,
        trace.requests.len(),
        trace.span() / 3600.0,
        serving.gpus_per_replica,
        serving.price_per_gpu_hour,
        serving.timeout,
    );
    for line in derived {
        s.push_str(line);
        s.push('\n');
    }
    if trace.skipped_rows > 0 {
        s.push_str(&format!(
            "skipped {} bad rows; the first: {}\n",
            trace.skipped_rows,
            trace.first_skipped.as_deref().unwrap_or("")
        ));
    }
    s
}

/// What was run, for both outputs.
fn run_context(trace: &Trace, header: &str, runs: &[PolicyRun]) -> anyhow::Result<report::RunContext> {
    let bytes = std::fs::read(&trace.path).with_context(|| format!("--trace {}", trace.path.display()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(report::RunContext {
        tool: format!("gpuscale-sim {}", env!("CARGO_PKG_VERSION")),
        command: std::env::args().skip(1).collect(),
        trace: report::TraceRecord {
            path: trace.path.display().to_string(),
            sha256,
            format: trace.format.to_string(),
            requests: trace.requests.len(),
        },
        serving: header.lines().skip(1).map(String::from).collect(),
        runs: runs
            .iter()
            .map(|r| report::RunRecord {
                label: r.label.clone(),
                spec: r.spec.clone(),
                params: r.params.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            })
            .collect(),
    })
}

/// The settings each run gets from the serving model, and the header lines that say so.
fn derive(
    serving: &ServingConfig,
    trace: &Trace,
    policies: &[&str],
    user: &[(String, String)],
) -> (Footing, Vec<String>) {
    let f = footing(serving, trace);
    let mut lines = vec![format!("per-replica slots {}: {}", f.slots, f.how)];
    let per: Vec<String> = policies
        .iter()
        .filter_map(|p| {
            let fair = fair_params(p, &f, user);
            (!fair.is_empty()).then(|| {
                let kv: Vec<String> = fair.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{p}: {}", kv.join(" "))
            })
        })
        .collect();
    if !per.is_empty() {
        lines.push(format!(
            "derived (set any with --param to override): {}",
            per.join("; ")
        ));
    }
    (f, lines)
}

/// A run of `policy` with the user's parameters and the serving model's fair settings.
fn policy_run(policy: &str, user: &[(String, String)], footing: &Footing) -> anyhow::Result<PolicyRun> {
    let mut params = user.to_vec();
    params.extend(fair_params(policy, footing, user));
    PolicyRun::new(policy, &params).map_err(|e| anyhow::anyhow!("--policy {policy}: {e}"))
}

/// The `--oracle` bound, with every result's multiple of it.
fn oracle(
    args: &ReplayArgs,
    trace: &Trace,
    serving: &ServingConfig,
    results: &mut [PolicyResult],
) -> anyhow::Result<Option<gpuscale_sim::oracle::Oracle>> {
    if !args.oracle {
        return Ok(None);
    }
    let (target, from) = match args.oracle_p99 {
        Some(t) => {
            check(t > 0.0, "--oracle-p99", t, "seconds > 0")?;
            (t, "--oracle-p99".to_string())
        }
        None => {
            let best = results
                .iter()
                .filter_map(|r| r.summary.latency_p99_s.map(|p| (p, r.policy.clone())))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((p, name)) => (p, format!("the best p99 replayed, {name}")),
                None => bail!(
                    "--oracle: no policy has a finite p99 latency to take as the target (more than 1 % of requests failed under every one); give the target with --oracle-p99 SECONDS"
                ),
            }
        }
    };
    Ok(Some(bound_for(trace, serving, args.seed, target, &from, results)))
}

/// The bound at `target`, with every result's multiple of it.
fn bound_for(
    trace: &Trace,
    serving: &ServingConfig,
    seed: u64,
    target: f64,
    from: &str,
    results: &mut [PolicyResult],
) -> gpuscale_sim::oracle::Oracle {
    let services = gpuscale_sim::engine::service_times(trace, serving, seed);
    let o = gpuscale_sim::oracle::bound(trace, serving, &services, target, from);
    for r in results.iter_mut() {
        r.gpu_hours_x_oracle =
            (o.gpu_hours > 0.0).then(|| (r.summary.gpu_hours / o.gpu_hours * 100.0).round() / 100.0);
    }
    o
}

fn write_outputs(
    args: &ReplayArgs,
    title: &str,
    run: &report::RunContext,
    oracle: Option<&gpuscale_sim::oracle::Oracle>,
    results: &[PolicyResult],
) -> anyhow::Result<()> {
    if let Some(o) = oracle {
        println!("{}", report::oracle_line(o));
    }
    if let Some(r) = report::recommendation(results) {
        println!("{r}");
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&Document {
            run,
            oracle,
            policies: results,
        })?;
        std::fs::write(p, text + "\n").with_context(|| format!("--json {}", p.display()))?;
    }
    if let Some(p) = &args.report {
        let page = report::html(title, run, oracle, results).map_err(anyhow::Error::msg)?;
        std::fs::write(p, page).with_context(|| format!("--report {}", p.display()))?;
    }
    Ok(())
}

/// Every `--param` must be used by one of the `--policy` specs: a key no policy reads would
/// change nothing, silently.
fn check_params_used(policy: &str, params: &[(String, String)]) -> anyhow::Result<()> {
    let specs: Vec<&str> = policy.split(',').map(str::trim).collect();
    for (k, v) in params {
        spec::check_used(k, &specs).map_err(|e| anyhow::anyhow!("--param {k}={}: {e}", spec::brief(v)))?;
    }
    Ok(())
}

fn parse_params(words: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    Ok(spec::parse_params(words.iter().map(String::as_str))?)
}

fn run_replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    check_params_used(&args.policy, &params)?;
    for (k, v) in &params {
        if v.contains(',') {
            bail!("--param {k}={v}: replay takes one value per key; use `gpuscale-sim sweep` for a list");
        }
    }
    let policies: Vec<&str> = args.policy.split(',').map(str::trim).collect();
    let (footing, derived) = derive(&serving, &trace, &policies, &params);
    let runs = policies
        .iter()
        .map(|p| policy_run(p, &params, &footing))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let run = run_context(&trace, &header, &runs)?;
    let mut results = replay(
        &trace,
        &serving,
        &control,
        &runs,
        args.seed,
        args.slo,
        args.threads(),
    )?;
    report::mark_pareto(&mut results);
    let oracle = oracle(args, &trace, &serving, &mut results)?;
    print!("\n{}", report::table(&results));
    println!("* on the cost / p99-latency Pareto frontier");
    write_outputs(
        args,
        &format!("gpuscale-sim replay: {}", trace.path.display()),
        &run,
        oracle.as_ref(),
        &results,
    )
}

/// Every combination of the swept values, keys in the order given.
fn grid(params: &[(String, String)]) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, v) in params {
        let values: Vec<&str> = v.split(',').map(str::trim).filter(|x| !x.is_empty()).collect();
        out = out
            .into_iter()
            .flat_map(|base| {
                values.iter().map(move |val| {
                    let mut b = base.clone();
                    b.push((k.clone(), val.to_string()));
                    b
                })
            })
            .collect();
    }
    out
}

fn run_sweep(args: &ReplayArgs) -> anyhow::Result<()> {
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    check_params_used(&args.policy, &params)?;
    for (k, v) in &params {
        if v.split(',').any(|x| x.trim().is_empty()) {
            bail!(
                "--param {k}={}: an empty value in the list; give values separated by commas, e.g. {k}=2,4,8",
                spec::brief(v)
            );
        }
    }
    let policies: Vec<&str> = args.policy.split(',').map(str::trim).collect();
    let (footing, derived) = derive(&serving, &trace, &policies, &params);
    // Counted before the grid is built: a grid of 10^12 points is refused, not allocated.
    let size = params.iter().fold(1usize, |n, (_, v)| {
        n.saturating_mul(v.split(',').filter(|x| !x.trim().is_empty()).count())
    });
    if size > MAX_SWEEP_POINTS {
        bail!("the sweep has {size} points; at most {MAX_SWEEP_POINTS} (narrow the --param lists)");
    }
    let points = grid(&params);
    let mut runs = Vec::new();
    for &policy in &policies {
        for point in &points {
            let mut run = policy_run(policy, point, &footing)?;
            let swept: Vec<String> = point
                .iter()
                .filter(|(k, _)| run.params.iter().any(|(rk, _)| rk == k))
                .filter(|(k, _)| params.iter().any(|(pk, pv)| pk == k && pv.contains(',')))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !swept.is_empty() {
                run.label = format!("{policy}[{}]", swept.join(","));
            }
            if !runs.iter().any(|r: &PolicyRun| r.label == run.label) {
                runs.push(run);
            }
        }
    }
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let run = run_context(&trace, &header, &runs)?;
    let bar = ProgressBar::new(runs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} replays {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(args.threads().max(1)) {
        results.extend(replay(
            &trace,
            &serving,
            &control,
            chunk,
            args.seed,
            args.slo,
            args.threads(),
        )?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    report::mark_pareto(&mut results);
    let oracle = oracle(args, &trace, &serving, &mut results)?;
    print!("\n{}", report::table(&results));
    println!("* on the cost / p99-latency Pareto frontier");
    write_outputs(
        args,
        &format!("gpuscale-sim sweep: {}", trace.path.display()),
        &run,
        oracle.as_ref(),
        &results,
    )
}

/// The built-in candidates: the replay defaults set up alike, and queue at three targets in
/// slots, each at three keep-alives.
fn candidates(slots: u32) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = DEFAULT_POLICIES
        .split(',')
        .map(|p| (p.to_string(), Vec::new()))
        .collect();
    for mult in [0.5, 1.0, 2.0] {
        let target = ((f64::from(slots) * mult).round() as u32).max(1);
        for keep in ["60s", "5m", "15m"] {
            out.push((
                "queue".to_string(),
                vec![
                    ("queue.target".to_string(), target.to_string()),
                    ("keepAlive".to_string(), keep.to_string()),
                ],
            ));
        }
    }
    out
}

/// Trigger metadata for a run: the policy and every parameter it was built with.
fn trigger_metadata(run: &PolicyRun, deployment: &str) -> Vec<(String, String)> {
    let mut md = vec![
        ("deployment".to_string(), deployment.to_string()),
        ("policy".to_string(), run.spec.clone()),
    ];
    md.extend(run.params.iter().cloned());
    md
}

/// YAML-quote a scalar.
fn yq(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn scaledobject_yaml(a: &RecommendArgs, md: &[(String, String)], why: &str) -> String {
    let mut y = format!(
        "# {why}\n# Written by gpuscale-sim recommend; docs/simulator.md explains it.\n\
         apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n\
         \x20 scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: {name}\n\
         \x20 minReplicaCount: 0\n  pollingInterval: 15\n  cooldownPeriod: 30\n\
         \x20 advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n\
         \x20       scaleUp:\n          stabilizationWindowSeconds: 0\n          selectPolicy: Max\n          policies:\n\
         \x20           - type: Percent\n              value: 1000\n              periodSeconds: 15\n\
         \x20       scaleDown:\n          stabilizationWindowSeconds: 0\n          selectPolicy: Max\n          policies:\n\
         \x20           - type: Percent\n              value: 100\n              periodSeconds: 15\n\
         \x20 triggers:\n    - type: external-push\n      metadata:\n        scalerAddress: {addr}\n",
        name = a.deployment,
        ns = a.namespace,
        addr = yq(&a.scaler_address),
    );
    for (k, v) in md {
        y.push_str(&format!("        {k}: {}\n", yq(v)));
    }
    y
}

fn annotations_yaml(a: &RecommendArgs, md: &[(String, String)], why: &str) -> String {
    let mut y = format!(
        "# {why}\n# A patch for direct mode (no KEDA): kubectl patch deployment {name} -n {ns} --patch-file THIS_FILE\n\
         metadata:\n  annotations:\n",
        name = a.deployment,
        ns = a.namespace
    );
    for (k, v) in md.iter().filter(|(k, _)| k != "deployment") {
        y.push_str(&format!("    gpuscale.io/{k}: {}\n", yq(v)));
    }
    y
}

fn run_recommend(a: &RecommendArgs) -> anyhow::Result<()> {
    let args = &a.replay;
    let trace = args.read_trace()?;
    let serving = args.serving(&trace)?;
    let control = args.control()?;
    let params = parse_params(&args.params)?;
    let baselines: Vec<&str> = DEFAULT_POLICIES.split(',').collect();
    let (footing, derived) = derive(&serving, &trace, &baselines, &params);
    let given = args.policy != DEFAULT_POLICIES;
    let specs: Vec<(String, Vec<(String, String)>)> = if given {
        args.policy
            .split(',')
            .map(|p| (p.trim().to_string(), Vec::new()))
            .collect()
    } else {
        candidates(footing.slots)
    };
    let mut runs = Vec::new();
    for (spec, extra) in &specs {
        let mut user = params.clone();
        user.extend(extra.iter().cloned());
        let mut run = policy_run(spec, &user, &footing)?;
        if !extra.is_empty() {
            let shown: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            run.label = format!("{spec}[{}]", shown.join(","));
        }
        runs.push(run);
    }
    let header = describe(&trace, &serving, &derived);
    print!("{header}");
    let mut results = replay(
        &trace,
        &serving,
        &control,
        &runs,
        args.seed,
        args.slo,
        args.threads(),
    )?;
    report::mark_pareto(&mut results);
    let best = results
        .iter()
        .filter_map(|r| r.summary.latency_p99_s)
        .fold(f64::INFINITY, f64::min);
    let (objective, from) = match a.objective_p99 {
        Some(o) => {
            check(o > 0.0, "--objective-p99", o, "seconds > 0")?;
            (o, "--objective-p99".to_string())
        }
        None if best.is_finite() => (
            best * 1.1,
            "10 % above the best p99 among the candidates".to_string(),
        ),
        None => bail!(
            "no candidate has a finite p99 (more than 1 % of requests fail under every one): give the objective with --objective-p99, or more capacity (--max-seqs, --tp)"
        ),
    };
    let o = bound_for(&trace, &serving, args.seed, objective, &from, &mut results);
    print!("\n{}", report::table(&results));
    println!("{}", report::oracle_line(&o));
    let pick = results
        .iter()
        .zip(&runs)
        .filter(|(r, _)| r.summary.latency_p99_s.is_some_and(|p| p <= objective))
        .min_by(|x, y| x.0.summary.gpu_hours.total_cmp(&y.0.summary.gpu_hours));
    let Some((r, run)) = pick else {
        bail!(
            "no candidate meets p99 <= {objective:.3} s (the best reached {best:.3} s): loosen --objective-p99, or give the replicas more capacity"
        );
    };
    let why = format!(
        "{}: {:.2} GPU-h ({}x the lower bound {:.2}), p99 {:.3} s <= {:.3} s, on {} ({} requests)",
        r.policy,
        r.summary.gpu_hours,
        r.gpu_hours_x_oracle
            .map_or("-".to_string(), |x| format!("{x:.2}")),
        o.gpu_hours,
        r.summary.latency_p99_s.unwrap_or(f64::NAN),
        objective,
        trace.path.display(),
        trace.requests.len()
    );
    println!("recommended: {why}");
    let md = trigger_metadata(run, &a.deployment);
    println!(
        "trigger metadata: {}",
        md.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(p) = &a.write_scaledobject {
        std::fs::write(p, scaledobject_yaml(a, &md, &why))
            .with_context(|| format!("--write-scaledobject {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.write_annotations {
        std::fs::write(p, annotations_yaml(a, &md, &why))
            .with_context(|| format!("--write-annotations {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &args.json {
        let doc = serde_json::json!({
            "objective_p99_s": objective,
            "oracle": &o,
            "recommended": {"policy": r.policy, "summary": &r.summary, "gpu_hours_x_oracle": r.gpu_hours_x_oracle,
                            "trigger_metadata": md.iter().cloned().collect::<std::collections::BTreeMap<String, String>>()},
            "candidates": &results,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("--json {}", p.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Replay(a) => run_replay(a),
        Command::Sweep(a) => run_sweep(a),
        Command::Recommend(a) => run_recommend(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
