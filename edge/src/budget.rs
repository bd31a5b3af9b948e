//! Byte budgets shared by concurrent readers: what bounds memory *in total*, where a per-item
//! limit bounds only one page or one body. A reader takes bytes as they arrive and gives them
//! back when its [`Reservation`] drops; a reader that would pass the budget is refused, so the
//! sum never exceeds it, however many readers run at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes in use out of a fixed total.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The total.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty reservation against this budget.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            n: 0,
        }
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    n: usize,
}

impl Reservation {
    /// Take `more` bytes if the budget's total stays within its limit.
    pub fn take(&mut self, more: usize) -> bool {
        let limit = self.budget.limit;
        let ok = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_add(more).filter(|n| *n <= limit)
            })
            .is_ok();
        if ok {
            self.n += more;
        }
        ok
    }

    /// Bytes held by this reservation.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_never_exceeded_and_drops_give_back() {
        let b = Budget::new(100);
        let mut r1 = b.reserve();
        let mut r2 = b.reserve();
        assert!(r1.take(60));
        assert!(!r2.take(41), "60 + 41 > 100");
        assert!(r2.take(40));
        assert_eq!(b.used(), 100);
        drop(r1);
        assert_eq!(b.used(), 40);
        assert!(r2.take(60));
        assert_eq!(r2.len(), 100);
        drop(r2);
        assert_eq!(b.used(), 0);
    }
}
