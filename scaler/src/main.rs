//! `gpuscale-scaler`: KEDA external scaler, scale-to-zero activation and direct mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use gpuscale_contract::Clock;
use gpuscale_edge::tasks::Tasks;
use gpuscale_policies::spec::parse_duration;
use gpuscale_scaler::http::{AppState, router};
use gpuscale_scaler::keda::grpc::Scaler;
use gpuscale_scaler::keda::pb::external_scaler_server::ExternalScalerServer;
use gpuscale_scaler::sources::poll::{self, PollConfig, Polled};
use gpuscale_scaler::telemetry::Telemetry;
use gpuscale_scaler::tls::{self, TlsFiles};
use gpuscale_scaler::workloads::{InProcess, Workloads};
use tokio::sync::watch;

// mimalloc, not glibc's malloc: parsing thousands of collector pages a second on every core
// spent a quarter of the scaler's CPU in glibc's arena locking and consolidation (perf, fleet bench).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration("duration", v).map_err(|e| e.to_string())
}

/// The central gpuscale service: answers KEDA's external-scaler gRPC calls from the signals
/// of every gpuscale-collector, so a ScaledObject with an `external-push` trigger scales a GPU
/// workload (to and from zero) on queue depth, KV cache and GPU utilization.
///
/// Without KEDA, `--kube --direct` scales Deployments annotated `gpuscale.io/policy` itself.
/// Every flag has an environment twin; docs/scaler.md explains the trigger keys.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// gRPC address KEDA dials (the trigger's `scalerAddress`).
    #[arg(long, env = "GPUSCALE_SCALER_GRPC_LISTEN", default_value = "0.0.0.0:9090", value_parser = gpuscale_edge::cli::listen_addr)]
    grpc_listen: SocketAddr,

    /// HTTP address for /metrics, /debug/workloads, /healthz, /readyz and POST /v1/held.
    #[arg(long, env = "GPUSCALE_SCALER_HTTP_LISTEN", default_value = "0.0.0.0:9091", value_parser = gpuscale_edge::cli::listen_addr)]
    http_listen: SocketAddr,

    /// A collector to read: `host:port` or `http://host:port` (both mean its /metrics), or a
    /// full `http://host:port/path`. Repeatable; the env twin takes a comma-separated list.
    /// With --kube, discovered collectors are added.
    #[arg(long = "collector", env = "GPUSCALE_SCALER_COLLECTORS", value_delimiter = ',')]
    collectors: Vec<String>,

    /// A file holding a bearer token sent to every collector (for a proxy in front of them),
    /// instead of a token in the --collector URL.
    #[arg(long, env = "GPUSCALE_SCALER_COLLECTOR_TOKEN_FILE")]
    collector_token_file: Option<PathBuf>,

    /// A file holding the bearer token a standalone activator must send with POST /v1/held
    /// (its --scaler-token-file); without it the endpoint takes any report.
    #[arg(long, env = "GPUSCALE_SCALER_HELD_TOKEN_FILE")]
    held_token_file: Option<PathBuf>,

    /// Time between decisions over every workload when no collector has a newer page, and
    /// between reads of a collector that does not hold reads (--collector-wait 0, or an older
    /// collector).
    #[arg(long, env = "GPUSCALE_SCALER_POLL_INTERVAL", default_value = "500ms", value_parser = duration)]
    poll_interval: Duration,

    /// The push path's heartbeat: each collector streams its pages on one open answer, one as
    /// soon as its readings change (the scaler decides the workloads on that page at once), and
    /// one after this without a change (a heartbeat, with the readings' new times; keep it well
    /// under `maxSignalAge`). No page within this plus --poll-timeout makes the collector's
    /// workloads unknown. A collector that does not stream holds a read this long instead. 0
    /// turns push off (plain polling).
    #[arg(long, env = "GPUSCALE_SCALER_COLLECTOR_WAIT", default_value = "5s", value_parser = duration)]
    collector_wait: Duration,

    /// Time allowed for one collector read.
    #[arg(long, env = "GPUSCALE_SCALER_POLL_TIMEOUT", default_value = "2s", value_parser = duration)]
    poll_timeout: Duration,

    /// Largest collector page read, bytes.
    #[arg(long, env = "GPUSCALE_SCALER_MAX_PAGE_BYTES", default_value_t = 8 << 20)]
    max_page_bytes: usize,

    /// Collector reads in flight at once, reads a collector holds until it has a newer page
    /// excepted (each collector holds at most one).
    #[arg(long, env = "GPUSCALE_SCALER_MAX_CONCURRENT_POLLS", default_value_t = 32)]
    max_concurrent_polls: usize,

    /// Most workloads (ScaledObjects) tracked; beyond it GetMetricSpec answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "GPUSCALE_SCALER_MAX_WORKLOADS", default_value_t = 20_000)]
    max_workloads: usize,

    /// Most workloads given series of their own on /metrics (desired and ready replicas,
    /// signals, ...; about 9 series each), the UNAVAILABLE ones first; the rest are counted in
    /// `gpuscale_scaler_workload_series_omitted`. Bounds the page (40,000 workloads were 29.6 MB)
    /// below the sample_limit a Prometheus scrape may set; 0 leaves only the totals.
    #[arg(long, env = "GPUSCALE_SCALER_METRICS_MAX_WORKLOADS", default_value_t = 5_000)]
    metrics_max_workloads: usize,

    /// A workload to decide without KEDA asking: `NAMESPACE/DEPLOYMENT[:key=value,...]` with
    /// trigger keys (e.g. `llm/qwen:policy=queue,queue.target=8`). Repeatable (the env twin
    /// takes a `;`-separated list); /debug/workloads and /metrics then show its decision.
    #[arg(
        long = "workload",
        value_name = "NS/NAME[:KEY=VALUE,...]",
        env = "GPUSCALE_SCALER_WORKLOADS",
        value_delimiter = ';'
    )]
    static_workloads: Vec<String>,

    /// A file of --workload specs, one per line (`#` starts a comment).
    #[arg(long, env = "GPUSCALE_SCALER_WORKLOADS_FILE")]
    workloads_file: Option<PathBuf>,

    /// A workload no RPC has named for this long is forgotten (KEDA asks every pollingInterval).
    #[arg(long, env = "GPUSCALE_SCALER_WORKLOAD_IDLE_TTL", default_value = "10m", value_parser = duration)]
    workload_idle_ttl: Duration,

    /// PEM certificate chain for TLS on the gRPC port (KEDA `enableTLS: "true"`).
    #[arg(long, env = "GPUSCALE_SCALER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "GPUSCALE_SCALER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mTLS; KEDA's `tlsClientCert`).
    #[arg(long, env = "GPUSCALE_SCALER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes.
    #[arg(long, env = "GPUSCALE_SCALER_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration)]
    tls_reload_interval: Duration,

    /// Close client connections after this long so KEDA re-resolves a headless Service and
    /// spreads calls over the scaler replicas (0 = never).
    #[arg(long, env = "GPUSCALE_SCALER_MAX_CONNECTION_AGE", default_value = "5m", value_parser = duration)]
    max_connection_age: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "GPUSCALE_SCALER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(flatten)]
    kube: gpuscale_scaler::kube::KubeArgs,

    #[command(flatten)]
    activator: gpuscale_activator::ActivatorArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    gpuscale_edge::cli::exit("gpuscale-scaler", run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    gpuscale_edge::cli::init_logging(args.log_format == "json");
    if args.poll_interval.is_zero() {
        bail!("--poll-interval must be above 0 (e.g. 1s)");
    }
    let collectors: Vec<String> = args
        .collectors
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(|c| poll::metrics_url(c).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let collector_token = args
        .collector_token_file
        .as_deref()
        .map(|p| gpuscale_edge::cli::read_token_file("--collector-token-file", p))
        .transpose()?;
    let held_token = args
        .held_token_file
        .as_deref()
        .map(|p| gpuscale_edge::cli::read_token_file("--held-token-file", p))
        .transpose()?;
    if collectors.is_empty() && !args.kube.kube {
        tracing::warn!(
            "no --collector and no --kube: there are no signals, so every GetMetrics answers UNAVAILABLE \
             except for workloads an activator reports demand for"
        );
    }

    let mut statics = Vec::new();
    for w in args.static_workloads.iter().filter(|w| !w.trim().is_empty()) {
        statics.push(
            gpuscale_scaler::keda::trigger::parse_static(w).map_err(|e| anyhow::anyhow!("--workload {e}"))?,
        );
    }
    if let Some(path) = &args.workloads_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--workloads-file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            statics.push(
                gpuscale_scaler::keda::trigger::parse_static(line)
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?,
            );
        }
    }

    let clock = Clock::start();
    // Every long-lived task: the process ends (non-zero) if one fails or stops before shutdown.
    let mut tasks = Tasks::new();
    // A steady collector's readings reach this scaler at each heartbeat (or poll), up to a
    // collector interval (1 s by default) after they were read.
    let between_pages = if args.collector_wait.is_zero() {
        args.poll_interval
    } else {
        args.collector_wait.min(Duration::from_secs(30))
    };
    let workloads = Arc::new(
        Workloads::new(args.max_workloads, args.workload_idle_ttl)
            .with_reading_refresh(between_pages + Duration::from_secs(1)),
    );
    if !statics.is_empty() {
        // Named again every second, so the idle TTL never forgets them.
        let ws = workloads.clone();
        tasks.spawn_infallible("static workloads", async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                for t in &statics {
                    let asker = format!("--workload {}", t.workload);
                    if let Err(e) = ws.register(t.clone(), &asker, clock.now()) {
                        tracing::warn!(workload = %t.workload, "{asker}: {e}");
                    }
                }
            }
        });
    }
    let telemetry = Arc::new(Telemetry::default());
    let polled = Arc::new(Polled::default());
    let (collectors_tx, collectors_rx) = watch::channel(collectors.clone());

    let leader = gpuscale_scaler::kube::start(
        &mut tasks,
        &args.kube,
        &collectors,
        collectors_tx,
        workloads.clone(),
        clock,
    )
    .await
    .context("starting the Kubernetes side (--kube)")?;

    tasks.spawn(
        "collector reads",
        poll::run(
            PollConfig {
                interval: args.poll_interval,
                wait: args.collector_wait.min(Duration::from_secs(30)),
                timeout: args.poll_timeout,
                max_page_bytes: args.max_page_bytes,
                max_concurrent: args.max_concurrent_polls,
                bearer: collector_token,
            },
            collectors_rx,
            polled.clone(),
            workloads.clone(),
            telemetry.clone(),
            clock,
        ),
    );

    let activator = match args.activator.activator_listen {
        None => None,
        Some(addr) => {
            let a = args
                .activator
                .start(
                    gpuscale_activator::Reporter::InProcess(Arc::new(InProcess(workloads.clone(), clock))),
                    &mut tasks,
                )
                .await?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --activator-listen {addr}"))?;
            tracing::info!(%addr, "activator listening");
            tasks.spawn_infallible(
                "activator",
                gpuscale_activator::serve(a.clone(), l, tasks.shutdown()),
            );
            Some(a)
        }
    };
    let state = AppState {
        workloads: workloads.clone(),
        polled: polled.clone(),
        telemetry: telemetry.clone(),
        clock,
        leader,
        activator,
        held_token: held_token.map(Into::into),
        metrics_max_workloads: args.metrics_max_workloads,
    };
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", args.http_listen))?;
    tracing::info!(addr = %args.http_listen, "HTTP listening");
    tasks.spawn_infallible(
        "HTTP server",
        gpuscale_edge::server::serve(http, router(state), tasks.shutdown()),
    );

    let service = ExternalScalerServer::new(Scaler::new(workloads, telemetry, clock).with_view(polled));
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if !args.max_connection_age.is_zero() {
        server = server.max_connection_age(args.max_connection_age);
    }
    let grpc = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding --grpc-listen {}", args.grpc_listen))?;
    let stop = tasks.shutdown();
    // The gRPC server is the foreground: its end (on SIGTERM or Ctrl-C) ends the process, as
    // does any supervised task's failure meanwhile.
    let grpc = async move {
        match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca,
                };
                let tls =
                    tls::Reloading::start(files, args.tls_reload_interval).context("loading TLS files")?;
                tracing::info!(addr = %args.grpc_listen, "gRPC listening (TLS)");
                server
                    .add_service(service)
                    .serve_with_incoming_shutdown(tls::incoming(grpc, tls), stop)
                    .await?;
            }
            _ => {
                tracing::info!(addr = %args.grpc_listen, "gRPC listening (plaintext h2c)");
                server
                    .add_service(service)
                    .serve_with_incoming_shutdown(tls::plaintext(grpc), stop)
                    .await?;
            }
        }
        Ok(())
    };
    tasks.run(grpc).await
}
