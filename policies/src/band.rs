//! What `queue`, `slo` and `gpu` share: HPA's tolerance band and a slow scale-down window.

use std::time::Duration;

use crate::Context;
use crate::decision::Rule;
use crate::signals::Signals;
use crate::window::SlidingMax;

/// Fast up, slow down: a recommendation takes effect at once when it is the highest of the
/// window, and a lower one only once every higher one has aged out of it.
///
/// The window remembers what can take effect: no more than the upper bound, and no more than
/// the current count while replicas start and the autoscaler holds further scale-ups. A
/// recommendation held back when it was made is therefore not replayed as a scale-up once
/// the hold ends, when what asked for it may be over: replayed, it started replicas for
/// bursts already served and held them for the window.
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

    /// Record `want` with the signals `s` it was made on; the count and the deciding rule.
    pub(crate) fn apply(&mut self, ctx: &Context, s: &Signals, want: u32, rule: Rule) -> (u32, Rule) {
        match &mut self.window {
            None => (want, rule),
            Some(w) => {
                let held_back = ctx.hold_while_starting && s.starting > 0;
                let ceiling = if held_back { s.current } else { u32::MAX }.min(ctx.bounds.max);
                let held = w.record(ctx.now, want.min(ceiling));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bounds;

    fn at(sec: u64, current: u32, starting: u32) -> (Context, Signals) {
        let ctx = Context {
            now: Duration::from_secs(sec),
            bounds: Bounds { min: 0, max: 10 },
            max_signal_age: Duration::from_secs(30),
            hold_while_starting: true,
        };
        let s = Signals {
            current,
            ready: current - starting,
            starting,
            ..Signals::default()
        };
        (ctx, s)
    }

    #[test]
    fn the_window_slows_scale_down_and_forgets_what_could_not_take_effect() {
        let mut w = ScaleDownWindow::new(Duration::from_secs(60));
        let up = Rule::QueueTarget;
        let mut apply = |sec, current, starting, want| {
            let (ctx, s) = at(sec, current, starting);
            w.apply(&ctx, &s, want, up)
        };
        // Up at once; down only once the higher recommendation has aged out.
        assert_eq!(apply(0, 1, 0, 4), (4, up));
        assert_eq!(apply(10, 4, 0, 2), (4, Rule::ScaleDownWindow));
        // Asked for 6 while a replica of the 4 was starting (the autoscaler holds that back):
        // the window remembers 4, so once the replica is ready and 3 is asked for, the 6 is
        // not replayed as a scale-up.
        assert_eq!(apply(20, 4, 1, 6), (6, up));
        assert_eq!(apply(30, 4, 0, 3), (4, Rule::ScaleDownWindow));
        // The same 6 with nothing starting takes effect, and is held, also when the count
        // reads lower (a replica stopped reporting, with no replica count from the API server):
        // the window, not the reading, decides when to come down.
        assert_eq!(apply(40, 4, 0, 6), (6, up));
        assert_eq!(apply(50, 6, 0, 3), (6, Rule::ScaleDownWindow));
        assert_eq!(apply(55, 5, 0, 3), (6, Rule::ScaleDownWindow));
        // Above the upper bound: remembered as the bound.
        assert_eq!(apply(60, 6, 0, 12), (12, up));
        assert_eq!(apply(70, 10, 0, 3), (10, Rule::ScaleDownWindow));
        // Every higher one aged out.
        assert_eq!(apply(131, 10, 0, 3), (3, up));
        // No window: the recommendation as it is.
        let mut none = ScaleDownWindow::new(Duration::ZERO);
        let (ctx, s) = at(0, 5, 0);
        assert_eq!(none.apply(&ctx, &s, 1, up), (1, up));
    }
}
