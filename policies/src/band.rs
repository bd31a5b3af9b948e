//! What `queue`, `slo` and `gpu` share: HPA's tolerance band and a slow scale-down window.

use std::time::Duration;

use crate::decision::Rule;
use crate::window::SlidingMax;

/// Fast up, slow down: a recommendation above the current count takes effect at once, and one
/// below it only down to the highest recommendation of the window, as HPA's scale-down
/// stabilization does. The window never raises the count: a recommendation that did not take
/// effect when it was made (held back while replicas were starting, or by a bound) is not
/// replayed later as a scale-up, when what asked for it may be over.
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

    /// Record `want` at `now` with `current` replicas; the count and the deciding rule.
    pub(crate) fn apply(&mut self, now: Duration, current: u32, want: u32, rule: Rule) -> (u32, Rule) {
        match &mut self.window {
            None => (want, rule),
            Some(w) => {
                let held = w.record(now, want);
                let floor = held.min(current);
                if floor > want {
                    (floor, Rule::ScaleDownWindow)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_window_slows_scale_down_and_never_raises_the_count() {
        let mut w = ScaleDownWindow::new(secs(60));
        let up = Rule::QueueTarget;
        // Up at once.
        assert_eq!(w.apply(secs(0), 1, 4, up), (4, up));
        // Down only to the window's highest, so held at 4.
        assert_eq!(w.apply(secs(10), 4, 2, up), (4, Rule::ScaleDownWindow));
        // Asked for 6 while the count stayed at 4 (held back while replicas started): once that
        // is over and 3 is asked for, the count stays 4; the 6 is not replayed as a scale-up.
        assert_eq!(w.apply(secs(20), 4, 6, up), (6, up));
        assert_eq!(w.apply(secs(30), 4, 3, up), (4, Rule::ScaleDownWindow));
        // Partway down: the highest of the window below the current count.
        assert_eq!(w.apply(secs(81), 4, 1, up), (3, Rule::ScaleDownWindow));
        assert_eq!(w.apply(secs(91), 3, 1, up), (1, up));
        // No window: the recommendation as it is.
        let mut none = ScaleDownWindow::new(Duration::ZERO);
        assert_eq!(none.apply(secs(0), 5, 1, up), (1, up));
    }
}
