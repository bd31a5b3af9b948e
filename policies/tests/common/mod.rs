//! Helpers shared by the policy tests.
#![allow(dead_code)]

use std::time::Duration;

use gpuscale_policies::{Bounds, Context, Reading, Signals};

/// Whole seconds.
pub fn s(x: u64) -> Duration {
    Duration::from_secs(x)
}

/// A context at second `now` with bounds `[min, max]` and a 30 s staleness limit.
pub fn ctx(now: u64, min: u32, max: u32) -> Context {
    Context {
        now: s(now),
        bounds: Bounds { min, max },
        max_signal_age: s(30),
        hold_while_starting: true,
    }
}

/// Signals with `load` split as all-running and fresh.
pub fn load(current: u32, ready: u32, load: f64) -> Signals {
    Signals {
        current,
        ready,
        starting: current.saturating_sub(ready),
        waiting: Some(Reading::fresh(0.0)),
        running: Some(Reading::fresh(load)),
        ..Signals::default()
    }
}
