//! `gpuscale-collector`: GPU and model-server queue metrics for one node, on one `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use gpuscale_collector::scrape::{CustomNames, Preset, Target};
use gpuscale_collector::service::{Config, Pages, router, tick_loop};
use gpuscale_edge::tasks::Tasks;

/// Serve the GPU and model-server queue metrics of this node on one /metrics endpoint:
/// GPU utilization, memory, power, temperature and clocks (NVML), and the waiting and running
/// requests and KV-cache usage of the model servers it scrapes, per workload.
///
/// `gpuscale-collector check-page FILE|URL|-` reads one metrics page as a scrape would and says
/// what gpuscale takes from it (see `check-page --help`).
#[derive(Parser, Debug)]
#[command(name = "gpuscale-collector", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "0.0.0.0:9400", env = "GPUSCALE_COLLECTOR_LISTEN", value_parser = gpuscale_edge::cli::listen_addr)]
    listen: SocketAddr,
    /// GPU source: `nvml` (the driver's library, on GPU nodes), `fake:N` (N scripted GPUs, for
    /// tests and demos) or `none`.
    #[arg(long, default_value = "nvml", env = "GPUSCALE_COLLECTOR_GPU_SOURCE")]
    gpu_source: String,
    /// A model server to scrape, `[NAMESPACE/WORKLOAD=]URL`, repeatable; the workload names the
    /// Deployment its queue belongs to (e.g. `llm/qwen=http://10.0.3.7:8000/metrics`).
    #[arg(
        long = "scrape-target",
        value_name = "[NAMESPACE/WORKLOAD=]URL",
        env = "GPUSCALE_COLLECTOR_SCRAPE_TARGETS",
        value_delimiter = ','
    )]
    scrape_targets: Vec<String>,
    /// Which server the targets run, to know their queue metrics; `auto` recognises vLLM,
    /// SGLang, TGI, Triton, Knative's queue-proxy and llm-d's endpoint picker from the page.
    #[arg(long, value_enum, default_value_t = Preset::Auto, env = "GPUSCALE_COLLECTOR_PRESET")]
    preset: Preset,
    /// Metric whose sum is the number of waiting requests (overrides the preset).
    #[arg(long, env = "GPUSCALE_COLLECTOR_WAITING_METRIC")]
    waiting_metric: Option<String>,
    /// Metric whose sum is the number of running requests (overrides the preset).
    #[arg(long, env = "GPUSCALE_COLLECTOR_RUNNING_METRIC")]
    running_metric: Option<String>,
    /// Metric whose mean is the KV-cache usage, 0-1 (overrides the preset).
    #[arg(long, env = "GPUSCALE_COLLECTOR_KV_METRIC")]
    kv_metric: Option<String>,
    /// Time between ticks (GPU read and render) and between scrapes of each target: `500ms`,
    /// `5s`, `1m` (a bare number is seconds).
    #[arg(long, default_value_t = gpuscale_collector::service::DEFAULT_INTERVAL_SECS, env = "GPUSCALE_COLLECTOR_INTERVAL", value_parser = gpuscale_edge::cli::duration_secs)]
    interval: f64,
    /// Time a scrape may take (`2s`; a bare number is seconds).
    #[arg(long, default_value_t = 2.0, env = "GPUSCALE_COLLECTOR_SCRAPE_TIMEOUT", value_parser = gpuscale_edge::cli::duration_secs)]
    scrape_timeout: f64,
    /// Largest page accepted from a target, bytes.
    #[arg(long, default_value_t = 16 << 20, env = "GPUSCALE_COLLECTOR_MAX_PAGE_BYTES")]
    max_page_bytes: usize,
    /// A file holding a bearer token sent to every scrape target (`Authorization: Bearer`),
    /// instead of a token in the target's URL. Read at start.
    #[arg(long, env = "GPUSCALE_COLLECTOR_SCRAPE_BEARER_TOKEN_FILE")]
    scrape_bearer_token_file: Option<std::path::PathBuf>,
    /// Scrapes in flight at once.
    #[arg(long, default_value_t = 16, env = "GPUSCALE_COLLECTOR_MAX_CONCURRENT_SCRAPES")]
    max_concurrent_scrapes: usize,
    /// This node's name, a label on every series (in Kubernetes, from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The kubelet's PodResources socket, to label GPU series with the pod using the GPU; when
    /// it is absent the series stay unattributed (with a warning). `none` turns this off.
    #[arg(
        long,
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock",
        env = "GPUSCALE_COLLECTOR_POD_RESOURCES_SOCKET"
    )]
    pod_resources_socket: String,
    /// Time between PodResources refreshes, never per scrape (`10s`; a bare number is seconds).
    #[arg(
        long,
        default_value_t = 10.0,
        env = "GPUSCALE_COLLECTOR_POD_RESOURCES_INTERVAL"
    , value_parser = gpuscale_edge::cli::duration_secs)]
    pod_resources_interval: f64,
    /// Discover the model-server pods on this node through the Kubernetes API (in-cluster
    /// config, or KUBECONFIG): pods annotated `gpuscale.io/scrape: "true"` are scraped at
    /// `gpuscale.io/port` and `gpuscale.io/path`. Needs --node-name.
    #[arg(long, env = "GPUSCALE_COLLECTOR_KUBE")]
    kube: bool,
    /// With --kube: take a pod's workload from this label when present (e.g.
    /// `serving.kserve.io/inferenceservice`) instead of its Deployment.
    #[arg(long, env = "GPUSCALE_COLLECTOR_WORKLOAD_LABEL")]
    workload_label: Option<String>,
    /// Also export dcgm-exporter's metric and label names (DCGM_FI_DEV_GPU_UTIL, ...).
    #[arg(long, env = "GPUSCALE_COLLECTOR_DCGM_COMPAT")]
    dcgm_compat: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "GPUSCALE_COLLECTOR_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Parse a metrics page exactly as a scrape would and print the families and samples found
    /// and what gpuscale reads from it: the server recognised, requests waiting and running,
    /// KV-cache usage, token counters, and whether a scrape of it would be valid. Exits 0 when
    /// it parses, 1 with `SOURCE:LINE: message` when it does not.
    ///
    /// Example: curl -s http://10.0.3.7:8000/metrics | gpuscale-collector check-page -
    CheckPage(CheckPage),
}

#[derive(clap::Args, Debug)]
struct CheckPage {
    /// A file, an http(s) URL, or `-` for standard input.
    source: String,
    /// The exposition format: `prometheus` (what model servers serve), or `openmetrics`, parsed
    /// strictly as the scaler parses collectors' pages.
    #[arg(long, value_enum, default_value_t = gpuscale_collector::check::PageFormat::Prometheus)]
    format: gpuscale_collector::check::PageFormat,
    /// Which server the page comes from; `auto` recognises vLLM, SGLang, TGI, Triton,
    /// Knative's queue-proxy and llm-d's endpoint picker.
    #[arg(long, value_enum, default_value_t = Preset::Auto)]
    preset: Preset,
    /// Metric whose sum is the number of waiting requests (overrides the preset).
    #[arg(long)]
    waiting_metric: Option<String>,
    /// Metric whose sum is the number of running requests (overrides the preset).
    #[arg(long)]
    running_metric: Option<String>,
    /// Metric whose mean is the KV-cache usage, 0-1 (overrides the preset).
    #[arg(long)]
    kv_metric: Option<String>,
    /// Largest page accepted, bytes (a scrape's --max-page-bytes).
    #[arg(long, default_value_t = 16 << 20)]
    max_page_bytes: usize,
    /// List every family, not the first 30.
    #[arg(long)]
    all: bool,
}

/// Read the page a `check-page` source names, within `max` bytes.
async fn read_source(
    source: &str,
    format: gpuscale_collector::check::PageFormat,
    max: usize,
) -> anyhow::Result<String> {
    use std::io::Read as _;
    let bytes = if source == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else if source.starts_with("http://") || source.starts_with("https://") {
        let accept = match format {
            gpuscale_collector::check::PageFormat::Openmetrics => {
                "application/openmetrics-text;version=1.0.0"
            }
            gpuscale_collector::check::PageFormat::Prometheus => "text/plain;version=0.0.4",
        };
        let shown = gpuscale_contract::redact_url(source);
        let r = reqwest::Client::new()
            .get(source)
            .header("accept", accept)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("{shown}: the request failed"))?;
        anyhow::ensure!(r.status().is_success(), "{shown}: HTTP {}", r.status());
        let mut body = Vec::new();
        let mut r = r;
        while let Some(chunk) = r
            .chunk()
            .await
            .with_context(|| format!("{shown}: reading the body"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > max {
                break;
            }
        }
        body
    } else {
        let f = std::fs::File::open(source).with_context(|| format!("{source}: cannot open"))?;
        let mut buf = Vec::new();
        f.take(max as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("{source}: cannot read"))?;
        buf
    };
    anyhow::ensure!(
        bytes.len() <= max,
        "{source}: the page is over {max} bytes (a scrape would refuse it as too_large; raise --max-page-bytes)"
    );
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{source}: not UTF-8 at byte {}", e.utf8_error().valid_up_to()))
}

/// `check-page`: 0 when the page parses, 1 when it does not (the message names the line).
async fn check_page(c: CheckPage) -> anyhow::Result<std::process::ExitCode> {
    let text = read_source(&c.source, c.format, c.max_page_bytes).await?;
    let custom = CustomNames {
        waiting: c.waiting_metric,
        running: c.running_metric,
        kv_cache: c.kv_metric,
    };
    let limits = gpuscale_expfmt::text::Limits {
        max_bytes: c.max_page_bytes,
        ..gpuscale_expfmt::text::Limits::default()
    };
    let shown = gpuscale_contract::redact_url(&c.source);
    let name = if c.source == "-" {
        "<stdin>"
    } else {
        shown.as_str()
    };
    match gpuscale_collector::check::check(&text, c.format, c.preset, &custom, &limits) {
        Ok(report) => {
            print!("{}", report.render(name, c.format, c.all));
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) if e.line > 0 => {
            eprintln!("{name}:{}: {}", e.line, e.message);
            Ok(std::process::ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("{name}: {}", e.message);
            Ok(std::process::ExitCode::from(1))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn seconds(flag: &str, v: f64, min: f64, max: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (min..=max).contains(&v)) {
        anyhow::bail!("{flag} {v}s: expected a duration from {min}s to {max}s");
    }
    Ok(Duration::from_secs_f64(v))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(Sub::CheckPage(c)) = args.command.take() {
        return match check_page(c).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gpuscale-collector check-page: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    gpuscale_edge::cli::exit("gpuscale-collector", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    gpuscale_edge::cli::init_logging(args.log_format == LogFormat::Json);
    let targets = args
        .scrape_targets
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Target::parse(s.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        let shown = gpuscale_contract::redact_url(&t.url);
        if let Some(other) = targets[..i]
            .iter()
            .find(|o| gpuscale_contract::redact_url(&o.url) == shown)
        {
            anyhow::bail!(
                "--scrape-target: `{}/{}` and `{}/{}` both scrape {shown}: two targets must differ in more than their secrets",
                other.namespace,
                other.workload,
                t.namespace,
                t.workload
            );
        }
    }
    let bearer = match &args.scrape_bearer_token_file {
        None => None,
        Some(p) => Some(gpuscale_edge::cli::read_token_file(
            "--scrape-bearer-token-file",
            p,
        )?),
    };
    if targets.len() > 1024 {
        anyhow::bail!(
            "--scrape-target: {} targets; at most 1024 per collector",
            targets.len()
        );
    }
    let (gpus, _) = gpuscale_collector::gpu::from_flag(&args.gpu_source).map_err(anyhow::Error::msg)?;
    if args.kube && args.node_name.is_none() {
        anyhow::bail!(
            "--kube needs --node-name (set NODE_NAME from the downward API: fieldRef spec.nodeName)"
        );
    }
    let node = args
        .node_name
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let config = Config {
        node,
        targets,
        preset: args.preset,
        custom: CustomNames {
            waiting: args.waiting_metric,
            running: args.running_metric,
            kv_cache: args.kv_metric,
        },
        interval: seconds("--interval", args.interval, 0.1, 3600.0)?,
        scrape_timeout: seconds("--scrape-timeout", args.scrape_timeout, 0.01, 300.0)?,
        max_page_bytes: args.max_page_bytes,
        max_concurrent_scrapes: args.max_concurrent_scrapes.max(1),
        bearer,
        dcgm_compat: args.dcgm_compat,
        pod_resources_socket: (args.pod_resources_socket != "none")
            .then(|| args.pod_resources_socket.clone().into()),
        discovered: None,
        pod_resources_interval: seconds(
            "--pod-resources-interval",
            args.pod_resources_interval,
            0.1,
            3600.0,
        )?,
    };
    let pages = Arc::new(RwLock::new(Pages::default()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    tracing::info!(listen = %args.listen, gpu_source = %args.gpu_source, targets = config.targets.len(), "gpuscale-collector serving");
    let mut config = config;
    // Every long-lived task: the process ends (non-zero) if one fails or stops before shutdown.
    let mut tasks = Tasks::new();
    if args.kube {
        let client = kube::Client::try_default()
            .await
            .context("--kube: no Kubernetes configuration (in-cluster service account or KUBECONFIG)")?;
        let shared = Arc::new(RwLock::new(Vec::new()));
        tasks.spawn_infallible(
            "pod discovery",
            gpuscale_collector::discovery::watch_pods(
                client,
                config.node.clone(),
                args.workload_label.clone(),
                shared.clone(),
            ),
        );
        config.discovered = Some(shared);
    }
    tasks.spawn("tick", tick_loop(config, gpus, pages.clone()));
    let stop = tasks.shutdown();
    tasks
        .run(async move {
            gpuscale_edge::server::serve(listener, router(pages), stop).await;
            Ok(())
        })
        .await
}
