//! The scaler's own counters and latency histograms, rendered on its `/metrics` with the
//! collector's exposition writer. Lock-free: the gRPC hot path only bumps atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gpuscale_expfmt::write::Histogram;

/// The gRPC methods, for labels.
pub const METHODS: [&str; 4] = ["GetMetricSpec", "GetMetrics", "IsActive", "StreamIsActive"];

/// Everything counted.
#[derive(Default, Debug)]
pub struct Telemetry {
    /// Per method: latency.
    pub grpc_latency: [Histogram; 4],
    /// Per method: answers that were not OK.
    pub grpc_errors: [AtomicU64; 4],
    /// Streams open now.
    pub streams_open: AtomicU64,
    /// `true` messages pushed on streams.
    pub stream_pushes: AtomicU64,
    /// Periodic decisions (every `--poll-interval`).
    pub polls: AtomicU64,
    /// Decisions made at once on a newer collector page, between periodic ones.
    pub pushed_decisions: AtomicU64,
    /// Failed collector reads.
    pub poll_errors: AtomicU64,
    /// Duration of one decision over every workload (combine the pages, decide).
    pub poll_duration: Histogram,
    /// Activator reports received.
    pub held_reports: AtomicU64,
}

impl Telemetry {
    /// Count one RPC.
    pub fn rpc(&self, method: usize, took: Duration, ok: bool) {
        self.grpc_latency[method].observe(took);
        if !ok {
            self.grpc_errors[method].fetch_add(1, Ordering::Relaxed);
        }
    }
}
