//! Time windows over a virtual clock: Knative's bucketed averages and sliding maxima.

use std::collections::VecDeque;
use std::time::Duration;

/// Knative's `TimedFloat64Buckets` with 1 s buckets and its linear `WindowAverage`
/// (serving `pkg/autoscaler/aggregation/bucketing.go`).
///
/// One difference, on purpose: Knative *adds* values recorded in the same second, because each
/// is one scrape's share of the revision total. Ours is already the workload total, so a second
/// observation within the same second *replaces* the first; with one observation per second (as
/// Knative scrapes) the two agree exactly.
#[derive(Clone, Debug)]
pub(crate) struct BucketAverage {
    buckets: Vec<f64>,
    first_write: u64,
    last_write: u64,
    written: bool,
    total: f64,
}

impl BucketAverage {
    /// A window of `window_secs` one-second buckets (at least one).
    pub(crate) fn new(window_secs: u64) -> Self {
        BucketAverage {
            buckets: vec![0.0; window_secs.max(1) as usize],
            first_write: 0,
            last_write: 0,
            written: false,
            total: 0.0,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn idx(&self, sec: u64) -> usize {
        (sec % self.len()) as usize
    }

    /// Record `value` for second `sec`.
    pub(crate) fn record(&mut self, sec: u64, value: f64) {
        let window = self.len();
        if !self.written {
            self.written = true;
            self.first_write = sec;
            self.last_write = sec;
            let i = self.idx(sec);
            self.buckets[i] = value;
            self.total = value;
            return;
        }
        if sec + window < self.last_write {
            return; // older than a window: Knative ignores it too
        }
        if sec < self.first_write {
            self.first_write = sec;
        }
        if sec > self.last_write {
            if sec - self.last_write >= window {
                self.buckets.iter_mut().for_each(|b| *b = 0.0);
                self.total = 0.0;
                self.first_write = sec;
            } else {
                for s in self.last_write + 1..=sec {
                    let i = self.idx(s);
                    self.total -= self.buckets[i];
                    self.buckets[i] = 0.0;
                }
            }
            self.last_write = sec;
        }
        let i = self.idx(sec);
        self.total += value - self.buckets[i];
        self.buckets[i] = value;
    }

    /// No data within the window (Knative's `IsEmpty`, which makes the decider return "no data").
    pub(crate) fn is_empty(&self, now_sec: u64) -> bool {
        !self.written || now_sec.saturating_sub(self.last_write) > self.len()
    }

    /// Average over the valid buckets of the window ending at `now_sec`: a partial window right
    /// after the first write, gaps shorter than the window counted as zero.
    pub(crate) fn average(&self, now_sec: u64) -> f64 {
        if self.is_empty(now_sec) {
            return 0.0;
        }
        let span = self.last_write - self.first_write + 1;
        let v = if now_sec <= self.last_write {
            self.total / span.min(self.len()) as f64
        } else {
            let d = now_sec - self.last_write;
            if d >= self.len() {
                return 0.0;
            }
            let mut total = self.total;
            for s in self.last_write + 1..=now_sec {
                total -= self.buckets[self.idx(s)];
            }
            total / span.min(self.len() - d) as f64
        };
        // Knative floors the average to 6 decimal digits (roundToNDigits).
        (v * 1e6).floor() / 1e6
    }
}

/// Knative's `max.TimeWindow`: the largest value recorded in the last `size` time slots of
/// `granularity` each, kept as a monotone deque (ascending minima in reverse), O(1) amortized.
#[derive(Clone, Debug)]
pub(crate) struct SlidingMax {
    granularity_ms: u64,
    size: u64,
    entries: VecDeque<(u64, u32)>,
}

impl SlidingMax {
    /// A window of `window` split into slots of `granularity`.
    pub(crate) fn new(window: Duration, granularity: Duration) -> Self {
        let g = granularity.as_millis().max(1) as u64;
        let w = window.as_millis() as u64;
        SlidingMax {
            granularity_ms: g,
            size: w.div_ceil(g).max(1),
            entries: VecDeque::new(),
        }
    }

    /// Record `value` at `now` and return the window's maximum, `value` included.
    pub(crate) fn record(&mut self, now: Duration, value: u32) -> u32 {
        let index = now.as_millis() as u64 / self.granularity_ms;
        while let Some(&(i, _)) = self.entries.front() {
            if i + self.size <= index {
                self.entries.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(_, v)) = self.entries.back() {
            if v <= value {
                self.entries.pop_back();
            } else {
                break;
            }
        }
        self.entries.push_back((index, value));
        // The deque holds at most one entry per slot, so it is bounded by `size`.
        self.entries.front().map_or(value, |&(_, v)| v)
    }
}

/// A history of `(time, value)` pairs no older than the longest window that reads it, with a
/// hard cap so a caller deciding at a very high rate cannot grow it without bound.
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    entries: VecDeque<(Duration, u32)>,
}

impl History {
    /// The most entries kept: one hour of decisions at 1 s is 3600; well above any real use.
    pub(crate) const CAP: usize = 10_000;

    pub(crate) fn push(&mut self, at: Duration, value: u32) {
        if self.entries.len() == Self::CAP {
            self.entries.pop_front();
        }
        self.entries.push_back((at, value));
    }

    /// Drop entries at or before `now - keep` (HPA compares with `After(cutoff)`).
    pub(crate) fn prune(&mut self, now: Duration, keep: Duration) {
        if let Some(cutoff) = now.checked_sub(keep) {
            while let Some(&(t, _)) = self.entries.front() {
                if t <= cutoff {
                    self.entries.pop_front();
                } else {
                    break;
                }
            }
        }
    }

    /// Entries strictly newer than `now - window` (all of them when `window > now`), newest
    /// first; stops at the first older one, so the cost is the size of the window, not the history.
    pub(crate) fn within(&self, now: Duration, window: Duration) -> impl Iterator<Item = u32> + '_ {
        let cutoff = now.checked_sub(window);
        self.entries
            .iter()
            .rev()
            .take_while(move |(t, _)| cutoff.is_none_or(|c| *t > c))
            .map(|&(_, v)| v)
    }
}

/// The lowest and highest values recorded within two trailing windows, as HPA's
/// stabilization reads its recommendation history (min over the scale-up window, max over the
/// scale-down window), kept as two monotone deques: O(1) amortized per record and read, with
/// exactly the answers of a scan over the whole history.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extremes {
    mins: VecDeque<(Duration, u32)>,
    maxs: VecDeque<(Duration, u32)>,
}

impl Extremes {
    /// Record `value` at `at` (times must not go backwards).
    pub(crate) fn push(&mut self, at: Duration, value: u32) {
        while self.mins.back().is_some_and(|&(_, v)| v >= value) {
            self.mins.pop_back();
        }
        while self.maxs.back().is_some_and(|&(_, v)| v <= value) {
            self.maxs.pop_back();
        }
        for q in [&mut self.mins, &mut self.maxs] {
            if q.len() == History::CAP {
                q.pop_front();
            }
            q.push_back((at, value));
        }
    }

    fn prune(q: &mut VecDeque<(Duration, u32)>, now: Duration, window: Duration) {
        if let Some(cutoff) = now.checked_sub(window) {
            while q.front().is_some_and(|&(t, _)| t <= cutoff) {
                q.pop_front();
            }
        }
    }

    /// Lowest value recorded strictly after `now - window`.
    pub(crate) fn min_within(&mut self, now: Duration, window: Duration) -> Option<u32> {
        Self::prune(&mut self.mins, now, window);
        self.mins.front().map(|&(_, v)| v)
    }

    /// Highest value recorded strictly after `now - window`.
    pub(crate) fn max_within(&mut self, now: Duration, window: Duration) -> Option<u32> {
        Self::prune(&mut self.maxs, now, window);
        self.maxs.front().map(|&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_average_partial_window_then_full() {
        let mut b = BucketAverage::new(60);
        // First write at t=100: the average covers only the seconds since the first write.
        b.record(100, 10.0);
        assert_eq!(b.average(100), 10.0);
        b.record(101, 20.0);
        assert_eq!(b.average(101), 15.0);
        // Two seconds later with no data: buckets 102 and 103 are gaps counted... only once
        // data arrives; reading at 103 divides by the valid span (2) over the window minus the
        // unwritten tail (60 - 2): min(2, 58) = 2.
        assert_eq!(b.average(103), 15.0);
        // After more than a window without data the bucket is empty.
        assert!(b.is_empty(162));
        assert_eq!(b.average(162), 0.0);
    }

    #[test]
    fn bucket_average_gap_counts_as_zero() {
        let mut b = BucketAverage::new(6);
        for s in 0..6 {
            b.record(s, 6.0);
        }
        assert_eq!(b.average(5), 6.0);
        // Seconds 6 and 7 missing, 8 written: gaps inside the window count as 0.
        b.record(8, 6.0);
        // Window is seconds 3..=8: 6 + 6 + 6 + 0 + 0 + 6 = 24 over 6 buckets.
        assert_eq!(b.average(8), 4.0);
    }

    #[test]
    fn same_second_replaces() {
        let mut b = BucketAverage::new(6);
        b.record(0, 5.0);
        b.record(0, 7.0);
        assert_eq!(b.average(0), 7.0);
    }

    #[test]
    fn extremes_match_a_scan() {
        // Each deque is always read with the same window (as HPA reads them), so one instance
        // per window size; the answers must equal a scan over the full history.
        let vals = [5u32, 3, 8, 8, 1, 4, 9, 2, 2, 7, 0, 6];
        for w in [0u64, 6, 7, 20, 40, 500] {
            let w = Duration::from_secs(w);
            let mut e = Extremes::default();
            let mut h = History::default();
            for (i, &v) in vals.iter().enumerate() {
                let now = Duration::from_secs(i as u64 * 7);
                e.push(now, v);
                h.push(now, v);
                let (mut lo, mut hi) = (e.clone(), e.clone());
                assert_eq!(lo.min_within(now, w), h.within(now, w).min(), "min i={i} w={w:?}");
                assert_eq!(hi.max_within(now, w), h.within(now, w).max(), "max i={i} w={w:?}");
                e = if i % 2 == 0 { lo } else { hi };
            }
        }
    }

    #[test]
    fn sliding_max_expires_old_slots() {
        let mut m = SlidingMax::new(Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(m.record(Duration::from_secs(0), 5), 5);
        assert_eq!(m.record(Duration::from_secs(4), 3), 5);
        // Slot size 5 (10 s / 2 s): index 0 leaves once index 5 (t=10 s) is recorded.
        assert_eq!(m.record(Duration::from_secs(8), 2), 5);
        assert_eq!(m.record(Duration::from_secs(10), 1), 3);
        assert_eq!(m.record(Duration::from_secs(14), 1), 2);
    }
}
