//! The scaler's own counters and latency histograms, rendered on its `/metrics` with the
//! collector's exposition writer. Lock-free: the gRPC hot path only bumps atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gpuscale_collector::exposition::Writer;

/// Upper bounds of the buckets, seconds: from gRPC answers (tens of microseconds) to requests
/// held while a GPU workload wakes (up to the 10-minute cold-start timeout).
pub const BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];

/// A Prometheus histogram over [`BUCKETS`].
#[derive(Default, Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Write `name_bucket`, `name_sum`, `name_count` with `labels`.
    pub fn write(&self, w: &mut Writer, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| format!("{b}"));
            let mut l = labels.to_vec();
            l.push(("le", &le));
            w.sample(&bucket, &l, cumulative as f64);
        }
        w.sample(
            &format!("{name}_sum"),
            labels,
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        w.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

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
