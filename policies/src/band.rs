//! What `queue`, `slo` and `gpu` share: HPA's tolerance band and a slow scale-down window.

use std::time::Duration;

use crate::decision::Rule;
use crate::window::SlidingMax;

/// Fast up, slow down: a recommendation takes effect at once when it is the highest of the
/// window, and a lower one only once every higher one has aged out of it.
#[derive(Clone, Debug)]
pub(crate) struct ScaleDownWindow {
    window: Option<SlidingMax>,
}

impl ScaleDownWindow {
    pub(crate) fn new(window: Duration) -> Self {
        ScaleDownWindow {
            window: (window > Duration::ZERO).then(|| SlidingMax::new(window, Duration::from_secs(1))),
        }
    }

    /// Record `want` at `now`; the window's highest recommendation and the deciding rule.
    pub(crate) fn apply(&mut self, now: Duration, want: u32, rule: Rule) -> (u32, Rule) {
        match &mut self.window {
            None => (want, rule),
            Some(w) => {
                let held = w.record(now, want);
                if held > want {
                    (held, Rule::ScaleDownWindow)
                } else {
                    (want, rule)
                }
            }
        }
    }
}

/// `ceil(x)` as a replica count, saturating, 0 for NaN and non-positive values.
pub(crate) fn ceil_replicas(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x.ceil() as u32
    }
}

/// HPA's tolerance test: `1 - tolerance <= ratio <= 1 + tolerance`.
pub(crate) fn within_band(ratio: f64, tolerance: f64) -> bool {
    (1.0 - tolerance) <= ratio && ratio <= (1.0 + tolerance)
}
