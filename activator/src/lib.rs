//! gpuscale-activator: a reverse proxy that holds requests while a workload wakes from zero, so the
//! first request after a quiet hour is served rather than refused.
//!
//! Each route (a Host or a path prefix) leads to one workload's upstream. A per-workload
//! [`Gate`] admits at most `concurrency x ready replicas` requests at once; the rest wait in a
//! bounded FIFO queue, and while anything waits the scaler is told (in-process, or by
//! `POST /v1/held` when the activator runs on its own) so StreamIsActive fires at once. When the
//! upstream becomes ready the queue drains in arrival order, never faster than the capacity:
//! the first replica of a GPU model is not flooded (KEDA HTTP add-on issue #1038). A request
//! that waits longer than the cold-start timeout, or finds the queue full, gets 503 with
//! `Retry-After`; a client that goes away frees its place. Responses stream through unbuffered;
//! request bodies are read into memory only while held, up to a limit (413 beyond it).
//!
//! Modules, in the order a request meets them: [`route`] (which workload), [`gate`] (admit or
//! hold, pure), [`proxy`] (hold the body, forward, probe readiness, drain), [`report`] (tell the
//! scaler what is held: in-process through [`HeldSink`], or over HTTP), [`kube_routes`] (routes
//! from annotated Services), [`args`] (the flags both binaries share). It depends on no gRPC,
//! Lease or NVML code: the scaler links it, not the other way round.

pub mod args;
pub mod gate;
pub mod kube_routes;
pub mod proxy;
pub mod report;
pub mod route;

pub use args::ActivatorArgs;
pub use gate::{Gate, Permit, Queued, Refused, Ticket};
pub use proxy::{Activator, ActivatorTelemetry, Body, Config, serve};
pub use report::{HeldSink, Reporter};
pub use route::{Match, Route};
