//! `gpuscale-collector`: GPU and model-server queue metrics for one node, on one `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use gpuscale_collector::scrape::{CustomNames, Preset, Target};
use gpuscale_collector::service::{Config, Pages, router, tick_loop};

/// Serve the GPU and model-server queue metrics of this node on one /metrics endpoint:
/// GPU utilization, memory, power, temperature and clocks (NVML), and the waiting and running
/// requests and KV-cache usage of the model servers it scrapes, per workload.
#[derive(Parser, Debug)]
#[command(name = "gpuscale-collector", version)]
struct Args {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "0.0.0.0:9400", env = "GPUSCALE_COLLECTOR_LISTEN", value_parser = gpuscale_collector::cli::listen_addr)]
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
    /// SGLang, TGI, Triton and Knative's queue-proxy from the page.
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
    #[arg(long, default_value_t = 5.0, env = "GPUSCALE_COLLECTOR_INTERVAL", value_parser = gpuscale_collector::cli::duration_secs)]
    interval: f64,
    /// Time a scrape may take (`2s`; a bare number is seconds).
    #[arg(long, default_value_t = 2.0, env = "GPUSCALE_COLLECTOR_SCRAPE_TIMEOUT", value_parser = gpuscale_collector::cli::duration_secs)]
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
    , value_parser = gpuscale_collector::cli::duration_secs)]
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
    gpuscale_collector::cli::exit("gpuscale-collector", run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let targets = args
        .scrape_targets
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Target::parse(s.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        let shown = gpuscale_collector::contract::redact_url(&t.url);
        if let Some(other) = targets[..i]
            .iter()
            .find(|o| gpuscale_collector::contract::redact_url(&o.url) == shown)
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
        Some(p) => {
            let token = std::fs::read_to_string(p)
                .with_context(|| format!("--scrape-bearer-token-file {}", p.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                anyhow::bail!("--scrape-bearer-token-file {}: the file is empty", p.display());
            }
            Some(token)
        }
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
    if args.kube {
        let client = kube::Client::try_default()
            .await
            .context("--kube: no Kubernetes configuration (in-cluster service account or KUBECONFIG)")?;
        let shared = Arc::new(RwLock::new(Vec::new()));
        tokio::spawn(gpuscale_collector::discovery::watch_pods(
            client,
            config.node.clone(),
            args.workload_label.clone(),
            shared.clone(),
        ));
        config.discovered = Some(shared);
    }
    tokio::spawn(tick_loop(config, gpus, pages.clone()));
    gpuscale_collector::server::serve(
        listener,
        router(pages),
        gpuscale_collector::cli::shutdown_signal(),
    )
    .await;
    Ok(())
}
