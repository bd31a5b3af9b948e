//! What KEDA talks to: the external-scaler gRPC service ([`grpc`], wire types in [`pb`]) and
//! the trigger metadata a ScaledObject (or a direct-mode Deployment's annotations) gives
//! ([`trigger`]).

pub mod grpc;
pub mod trigger;

/// Types generated from KEDA's `externalscaler.proto`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod pb {
    tonic::include_proto!("externalscaler");
}
