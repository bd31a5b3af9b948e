//! `gpuscale-activator`: the activator as its own process, reporting held requests to a
//! gpuscale-scaler over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::header;
use axum::response::IntoResponse;
use clap::Parser;
use gpuscale_activator::{Activator, ActivatorArgs, Reporter};
use gpuscale_edge::tasks::Tasks;
use gpuscale_expfmt::write::{Format, Writer};

/// Reverse proxy in front of GPU workloads that may sleep at zero: requests for a workload with
/// no ready replica wait (bounded) while gpuscale-scaler is told to wake it, then are released
/// in arrival order, never more at once than the ready replicas can take.
#[derive(Parser, Debug)]
#[command(name = "gpuscale-activator", version, about, long_about)]
struct Args {
    #[command(flatten)]
    activator: ActivatorArgs,

    /// The scaler's HTTP base URL; held requests are reported to its /v1/held.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_SCALER_URL")]
    scaler_url: String,

    /// A file holding a bearer token sent with every report to the scaler (the scaler checks
    /// it when started with --held-token-file), instead of a token in --scaler-url.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_SCALER_TOKEN_FILE")]
    scaler_token_file: Option<std::path::PathBuf>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_HTTP_LISTEN", default_value = "0.0.0.0:9092", value_parser = gpuscale_edge::cli::listen_addr)]
    http_listen: SocketAddr,

    /// Log format: `text` or `json`.
    #[arg(long, env = "GPUSCALE_ACTIVATOR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    gpuscale_edge::cli::exit("gpuscale-activator", run().await)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    gpuscale_edge::cli::init_logging(args.log_format == "json");
    let listen = args
        .activator
        .activator_listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
    let scaler_url =
        gpuscale_edge::fetch::normalize_url("--scaler-url", &args.scaler_url, "").map_err(|e| {
            anyhow::anyhow!(
                "{e} (the scaler's HTTP base URL, e.g. http://gpuscale-scaler.gpuscale-system:9091)"
            )
        })?;
    let token = match &args.scaler_token_file {
        None => None,
        Some(p) => Some(gpuscale_edge::cli::read_token_file("--scaler-token-file", p)?),
    };
    let mut tasks = Tasks::new();
    let activator = args
        .activator
        .start(
            Reporter::Remote(
                reqwest::Client::new(),
                scaler_url.trim_end_matches('/').to_string(),
                token,
            ),
            &mut tasks,
        )
        .await?;
    let a: Arc<Activator> = activator.clone();
    let ready: Arc<Activator> = activator.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let a = a.clone();
                async move {
                    let mut w = Writer::new(Format::Prometheus);
                    a.write_metrics(&mut w);
                    (
                        [(header::CONTENT_TYPE, Format::Prometheus.content_type())],
                        w.finish(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let a = ready.clone();
                async move {
                    if a.draining() {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "draining: shutting down\n",
                        )
                    } else {
                        (axum::http::StatusCode::OK, "ok\n")
                    }
                }
            }),
        );
    let http = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding --http-listen {}", args.http_listen))?;
    let proxy = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding --activator-listen {listen}"))?;
    tracing::info!(%listen, "activator listening");
    let stop = tasks.shutdown();
    // /metrics and /readyz stay up while the proxy drains (readyz then answers 503), and stop
    // once it has. Both servers are the foreground; the route watch (`--activator-kube`) is
    // supervised beside them.
    let servers = async move {
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let http = gpuscale_edge::server::serve(http, app, async {
            let _ = drained_rx.await;
        });
        let proxy = async move {
            gpuscale_activator::serve(activator, proxy, stop).await;
            let _ = drained_tx.send(());
        };
        tokio::join!(http, proxy);
        Ok(())
    };
    tasks.run(servers).await
}
