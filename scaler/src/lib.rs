//! gpuscale-scaler: the central service. Data flows one way through its modules:
//!
//! - [`sources`]: reading the collectors ([`sources::poll`]) and combining their pages per
//!   workload ([`sources::aggregate`]);
//! - [`workloads`]: per-workload state, the decision, and the published answers KEDA reads;
//! - [`keda`]: KEDA's external-scaler gRPC API ([`keda::grpc`], wire types in [`keda::pb`])
//!   and the trigger metadata it accepts ([`keda::trigger`]);
//! - [`kube`]: the Kubernetes side (collector discovery, Deployment replica counts, direct
//!   mode with a Lease);
//! - [`http`] (health, status, metrics), [`telemetry`], [`tls`] (with certificate reload).
//!
//! The activator that holds requests while a workload wakes is its own crate
//! (`gpuscale_activator`); the scaler runs it in-process with `--activator-listen`, taking its
//! reports through [`workloads::InProcess`].
//!
//! Every decision, and what KEDA is told of it, comes from [`gpuscale_policies`], so the
//! scaler and the simulator cannot disagree about what a policy does.

pub mod http;
pub mod keda;
pub mod kube;
pub mod sources;
pub mod telemetry;
pub mod tls;
pub mod workloads;

pub use gpuscale_policies as policies;
