//! gpuscale-scaler: the central service.
//!
//! It will own the KEDA external-scaler gRPC API, collector polling and aggregation, direct
//! Deployment scaling and the scale-from-zero activator (issues #5 and #6). Every decision it
//! makes will come from [`gpuscale_policies`], so the scaler and the simulator cannot disagree.
//! Nothing is implemented here yet.

pub use gpuscale_policies as policies;
