//! gpuscale-scaler: the central service.
//!
//! It owns KEDA's external-scaler gRPC API ([`grpc`], wire types in [`pb`]), the trigger
//! metadata it accepts ([`trigger`]), reading the collectors ([`poll`]) and combining their
//! pages per workload ([`aggregate`]), the per-workload state and the answers KEDA reads
//! ([`workloads`]), its own HTTP endpoints ([`http`]), TLS with certificate reload ([`tls`]),
//! the Kubernetes side ([`cluster`]: collector discovery, Deployment status, direct mode with a
//! Lease) and the activator that holds requests while a workload wakes ([`activator`]).
//!
//! Every decision comes from [`gpuscale_policies`], so the scaler and the simulator cannot
//! disagree about what a policy does.

pub mod activator;
pub mod aggregate;
pub mod cluster;
pub mod grpc;
pub mod http;
pub mod poll;
pub mod telemetry;
pub mod tls;
pub mod trigger;
pub mod workloads;

/// Types generated from KEDA's `externalscaler.proto`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod pb {
    tonic::include_proto!("externalscaler");
}

pub use gpuscale_policies as policies;

/// Logging for the binaries: `RUST_LOG` filter (default `info`), JSON lines when `json`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// Read a bearer token from a file named by `flag`: trimmed, and refused when empty.
pub fn read_token_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!(
            "{flag} {}: the file is empty; put the token in it",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Resolves on SIGTERM or Ctrl-C (logged once, however many servers wait on it).
pub async fn shutdown_signal() {
    gpuscale_collector::cli::shutdown_signal().await;
}
