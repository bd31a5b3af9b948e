//! gpuscale-expfmt: the exposition formats, and nothing else. [`text`] parses Prometheus text
//! 0.0.4 (lenient where real servers are sloppy, never misreading a value) and OpenMetrics 1.0
//! (strict, as the reference parser), both bounded by [`text::Limits`]; [`write`] writes either
//! format. The collector parses model-server pages and writes its own with it; the scaler parses
//! collector pages and writes its `/metrics`; the activator writes its `/metrics`.
//!
//! Pure: no I/O and no dependency but `thiserror`, so it is fuzzed and property-tested on its own (`fuzz/`).

pub mod text;
pub mod write;
