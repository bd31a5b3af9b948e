//! gpuscale-scaler: the central service.
//!
//! It owns KEDA's external-scaler gRPC API ([`grpc`], wire types in [`pb`]), the trigger
//! metadata it accepts ([`trigger`]), reading the collectors ([`poll`]) and combining their
//! pages per workload ([`aggregate`]), the per-workload state and the answers KEDA reads
//! ([`workloads`]), its own HTTP endpoints ([`http`]), TLS with certificate reload ([`tls`]),
//! the Kubernetes side ([`cluster`]: collector discovery, Deployment status, direct mode with a
//! Lease). The activator that holds requests while a workload wakes is its own crate
//! (`gpuscale_activator`); the scaler runs it in-process with `--activator-listen`, taking its
//! reports through [`workloads::InProcess`].
//!
//! Every decision comes from [`gpuscale_policies`], so the scaler and the simulator cannot
//! disagree about what a policy does.

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
