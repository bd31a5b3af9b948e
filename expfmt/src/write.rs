//! Writing exposition pages: Prometheus text 0.0.4 or OpenMetrics 1.0, picked from the
//! client's `Accept` header, cutting a written page down to some families, and the lock-free
//! latency [`Histogram`] the scaler and activator count with.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

impl Format {
    /// The Content-Type to send.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// Pick from an Accept header: OpenMetrics only when the client asks for it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Writes families in either format: the collector's page, and the scaler's and activator's own
/// `/metrics`.
pub struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// An empty page in `format`.
    pub fn new(format: Format) -> Self {
        Self::with_capacity(format, 0)
    }

    /// An empty page in `format`, with room for `bytes` before it grows.
    pub fn with_capacity(format: Format, bytes: usize) -> Self {
        Writer {
            out: String::with_capacity(bytes),
            format,
        }
    }

    /// `name` is the family name; for counters the samples are `name_total`. Text 0.0.4 names
    /// a counter family after its samples (`x_total`), OpenMetrics after the family (`x`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let suffix = if kind == "counter" && self.format == Format::Prometheus {
            "_total"
        } else {
            ""
        };
        let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {kind}");
    }

    /// One sample; labels with empty values are left out, as Prometheus treats them alike.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        let labels: Vec<&(&str, &str)> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// The page, with `# EOF` for OpenMetrics.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// `page` (either format, as [`Writer`] writes it) with only the families named in `keep`:
/// each family's metadata and samples whole, and `# EOF`.
pub fn only_families(page: &str, keep: &[&str]) -> String {
    let mut out = String::with_capacity(page.len() / 2);
    let mut on = false;
    for line in page.lines() {
        if let Some(meta) = line.strip_prefix("# ")
            && line != "# EOF"
        {
            let mut words = meta.split(' ');
            let _kind = words.next();
            on = words.next().is_some_and(|name| keep.contains(&name));
        }
        if on || line == "# EOF" {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

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
