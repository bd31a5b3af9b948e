//! Token rates from a model server's counters, read on the collector's own clock: the one
//! place a counter becomes a rate, so a reset, a gap or a first read can never look like a rate
//! of zero.

use std::collections::VecDeque;

use gpuscale_contract::{TOKEN_RATE_WINDOW_SECS, plausible_tokens_rate};

/// At most this many reads are kept per target, whatever the interval.
const MAX_POINTS: usize = 64;

/// Consecutive reads of one target's (prompt, generation) token counters.
#[derive(Clone, Debug, Default)]
pub struct TokenRate {
    points: VecDeque<(f64, f64, f64)>,
}

impl TokenRate {
    /// Forget the history: the next rate needs two reads again.
    pub fn reset(&mut self) {
        self.points.clear();
    }

    /// Record the counters read at `at` (Unix seconds) and return the rates over the last
    /// [`TOKEN_RATE_WINDOW_SECS`], `None` when they are unknown: no counters on the page, the
    /// first read, a counter that went down (the server restarted), or an implausible rate.
    pub fn record(&mut self, at: f64, counters: Option<(f64, f64)>) -> Option<(f64, f64)> {
        let Some((p, g)) = counters.filter(|(p, g)| p.is_finite() && g.is_finite() && *p >= 0.0 && *g >= 0.0)
        else {
            self.reset();
            return None;
        };
        if let Some(&(t, lp, lg)) = self.points.back()
            && (at <= t || p < lp || g < lg)
        {
            // A reset, or a clock that went back: history says nothing about now.
            self.reset();
        }
        self.points.push_back((at, p, g));
        // Keep the newest read at or before the window's start, so the span covers the window.
        while self.points.len() > MAX_POINTS
            || (self.points.len() > 2 && at - self.points[1].0 >= TOKEN_RATE_WINDOW_SECS)
        {
            self.points.pop_front();
        }
        let &(t0, p0, g0) = self.points.front()?;
        let span = at - t0;
        if span <= 0.0 {
            return None;
        }
        let rates = ((p - p0) / span, (g - g0) / span);
        (plausible_tokens_rate(rates.0) && plausible_tokens_rate(rates.1)).then_some(rates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_read_is_unknown_then_the_window_rate() {
        let mut r = TokenRate::default();
        assert_eq!(r.record(100.0, Some((1000.0, 100.0))), None);
        assert_eq!(r.record(101.0, Some((1500.0, 150.0))), Some((500.0, 50.0)));
        // Then 100/s, read every second: once 10 s have passed the burst is out of the window.
        let mut got = None;
        for i in 2..=13 {
            got = r.record(
                100.0 + f64::from(i),
                Some((1500.0 + 100.0 * f64::from(i - 1), 150.0)),
            );
        }
        assert_eq!(got, Some((100.0, 0.0)));
    }

    #[test]
    fn a_reset_or_missing_counter_is_unknown_not_zero() {
        let mut r = TokenRate::default();
        r.record(0.0, Some((5000.0, 500.0)));
        assert!(r.record(1.0, Some((6000.0, 600.0))).is_some());
        // The server restarted: its counters start again from zero.
        assert_eq!(r.record(2.0, Some((10.0, 1.0))), None);
        assert_eq!(r.record(3.0, Some((110.0, 11.0))), Some((100.0, 10.0)));
        // A page without the counters forgets the history.
        assert_eq!(r.record(4.0, None), None);
        assert_eq!(r.record(5.0, Some((300.0, 30.0))), None);
        // NaN or negative counters are no counters.
        assert_eq!(r.record(6.0, Some((f64::NAN, 30.0))), None);
        assert_eq!(r.record(7.0, Some((-1.0, 30.0))), None);
        // Implausible jumps are not rates.
        r.record(8.0, Some((0.0, 0.0)));
        assert_eq!(r.record(9.0, Some((1e12, 0.0))), None);
    }

    #[test]
    fn history_is_bounded() {
        let mut r = TokenRate::default();
        for i in 0..10_000 {
            r.record(f64::from(i) * 0.001, Some((f64::from(i), 0.0)));
        }
        assert!(r.points.len() <= MAX_POINTS);
    }
}
