//! Any bytes, both parsers: no panic, and limits hold.
#![no_main]

use gpuscale_expfmt::text::{Limits, parse_openmetrics, parse_prometheus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let limits = Limits { max_samples: 1000, max_labels: 16, max_label_value: 256, ..Limits::default() };
        if let Ok(families) = parse_prometheus(text, &limits) {
            assert!(families.iter().map(|f| f.samples.len()).sum::<usize>() <= 1000);
            assert!(families.iter().flat_map(|f| &f.samples).all(|s| s.labels.len() <= 16));
        }
        let _ = parse_openmetrics(text, &limits);
    }
});
