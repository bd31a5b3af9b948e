//! Admission for one workload: at most `concurrency x ready replicas` requests in flight, the
//! rest in a bounded FIFO queue released in arrival order. Pure bookkeeping and channels; no
//! I/O, so its ordering is tested without sockets.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

#[derive(Debug, Default)]
struct GateState {
    in_flight: usize,
    capacity: usize,
    next_id: u64,
    queue: VecDeque<InLine>,
}

/// One held request: its place, and whether its body has arrived. Only a request that is
/// ready to send is released, so a slow upload never occupies a slot of the upstream.
#[derive(Debug)]
struct InLine {
    id: u64,
    tx: oneshot::Sender<()>,
    ready: bool,
}

impl GateState {
    /// Release ready requests, oldest first, while there is room.
    fn dispatch(&mut self) -> u64 {
        let mut released = 0;
        while self.in_flight < self.capacity {
            let Some(i) = self.queue.iter().position(|e| e.ready) else {
                break;
            };
            let Some(e) = self.queue.remove(i) else { break };
            if e.tx.send(()).is_ok() {
                self.in_flight += 1;
                released += 1;
            }
        }
        released
    }
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is at its bound.
    QueueFull,
    /// Held longer than the cold-start timeout.
    Timeout,
    /// The activator is shutting down.
    ShuttingDown,
}

/// One workload's admission: in-flight limit and FIFO queue.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
    max_held: usize,
    /// Released from the queue, ever.
    pub releases: AtomicU64,
    held_changed: watch::Sender<usize>,
    /// Ready upstream replicas; `u64::MAX` until known.
    ready: AtomicU64,
}

/// A slot; dropping it frees the slot and releases the next held request.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        self.gate.released(n, held);
    }
}

/// A place in the queue; dropping it before it is granted gives the place up, and dropping it
/// after gives the slot back.
struct Waiting {
    gate: Arc<Gate>,
    id: u64,
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut s = self.gate.lock();
        let before = s.queue.len();
        s.queue.retain(|e| e.id != self.id);
        let mut n = 0;
        if s.queue.len() == before {
            // Already granted: the slot is ours to return.
            s.in_flight = s.in_flight.saturating_sub(1);
            n = s.dispatch();
        }
        let held = s.queue.len();
        drop(s);
        self.gate.released(n, held);
    }
}

impl Gate {
    /// A gate with room for `max_held` waiting requests and no capacity yet.
    pub fn new(max_held: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(GateState::default()),
            max_held,
            releases: AtomicU64::new(0),
            held_changed: watch::channel(0).0,
            ready: AtomicU64::new(u64::MAX),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn released(&self, n: u64, held: usize) {
        self.releases.fetch_add(n, Ordering::Relaxed);
        self.held_changed.send_if_modified(|h| {
            let c = *h != held;
            *h = held;
            c
        });
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.lock().queue.len()
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Watch the held count.
    pub fn watch_held(&self) -> watch::Receiver<usize> {
        self.held_changed.subscribe()
    }

    /// Record how many upstream replicas are ready (reported to the scaler with the held count).
    pub fn set_ready(&self, ready: usize) {
        self.ready.store(ready as u64, Ordering::Relaxed);
    }

    /// Ready upstream replicas, once known.
    pub fn ready(&self) -> Option<u32> {
        match self.ready.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }

    /// Set how many requests may be in flight (concurrency x ready replicas) and release
    /// what now fits, oldest first.
    pub fn set_capacity(&self, capacity: usize) {
        let mut s = self.lock();
        s.capacity = capacity;
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        self.released(n, held);
    }

    /// Admit now if there is room and nobody is ahead (the request keeps its place in line
    /// from this call on), else take a place in the queue.
    pub fn enqueue(self: &Arc<Self>, shutting_down: bool) -> Result<Ticket, Refused> {
        let mut s = self.lock();
        if s.queue.is_empty() && s.in_flight < s.capacity {
            s.in_flight += 1;
            return Ok(Ticket::Now(Permit { gate: self.clone() }));
        }
        if shutting_down {
            return Err(Refused::ShuttingDown);
        }
        if s.queue.len() >= self.max_held {
            return Err(Refused::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        s.next_id += 1;
        let id = s.next_id;
        s.queue.push_back(InLine { id, tx, ready: false });
        let held = s.queue.len();
        drop(s);
        self.held_changed.send_replace(held);
        Ok(Ticket::Queued(Queued {
            rx,
            guard: Waiting {
                gate: self.clone(),
                id,
                armed: true,
            },
            started: Instant::now(),
        }))
    }

    /// [`Gate::enqueue`], then wait up to `timeout` or until `shutdown`.
    pub async fn admit(
        self: &Arc<Self>,
        timeout: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Permit, Option<Duration>), Refused> {
        let shutting_down = *shutdown.borrow();
        match self.enqueue(shutting_down)? {
            Ticket::Now(p) => Ok((p, None)),
            Ticket::Queued(q) => {
                q.ready();
                q.wait(timeout, shutdown).await.map(|(p, d)| (p, Some(d)))
            }
        }
    }
}

/// The outcome of [`Gate::enqueue`].
pub enum Ticket {
    /// Admitted.
    Now(Permit),
    /// In line.
    Queued(Queued),
}

/// A place in line.
pub struct Queued {
    rx: oneshot::Receiver<()>,
    guard: Waiting,
    started: Instant,
}

impl Queued {
    /// The request is ready to send (its body has arrived): it may now be released.
    pub fn ready(&self) {
        let gate = &self.guard.gate;
        let mut s = gate.lock();
        if let Some(e) = s.queue.iter_mut().find(|e| e.id == self.guard.id) {
            e.ready = true;
        }
        let n = s.dispatch();
        let held = s.queue.len();
        drop(s);
        gate.released(n, held);
    }

    /// Wait for the slot, at most `timeout` (counted from the enqueue), or until `shutdown`.
    pub async fn wait(
        mut self,
        timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(Permit, Duration), Refused> {
        let left = timeout.saturating_sub(self.started.elapsed());
        let outcome = tokio::select! {
            r = &mut self.rx => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(Refused::ShuttingDown),
            },
            () = tokio::time::sleep(left) => Err(Refused::Timeout),
            _ = shutdown.wait_for(|s| *s) => Err(Refused::ShuttingDown),
        };
        match outcome {
            Ok(()) => {
                self.guard.armed = false;
                Ok((
                    Permit {
                        gate: self.guard.gate.clone(),
                    },
                    self.started.elapsed(),
                ))
            }
            // Dropping the guard leaves the queue, or returns a slot granted meanwhile.
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn queued(g: &Arc<Gate>) -> Queued {
        match g.enqueue(false) {
            Ok(Ticket::Queued(q)) => q,
            Ok(Ticket::Now(_)) => panic!("admitted at once"),
            Err(e) => panic!("refused: {e:?}"),
        }
    }

    /// A shutdown signal that never fires (a dropped sender reads as shutdown, by design).
    fn no_shutdown() -> watch::Receiver<bool> {
        static SENDER: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
        SENDER.get_or_init(|| watch::channel(false).0).subscribe()
    }

    /// Release order is arrival order, one slot at a time, with no sockets and no sleeps: each
    /// waiter's grant is observed as its permit is dropped.
    #[tokio::test(start_paused = true)]
    async fn held_requests_are_released_in_arrival_order_within_capacity() {
        let g = Gate::new(10);
        let line: Vec<Queued> = (0..5).map(|_| queued(&g)).collect();
        for q in &line {
            q.ready();
        }
        assert_eq!((g.held(), g.in_flight()), (5, 0));
        let waits: Vec<_> = line
            .into_iter()
            .map(|q| tokio::spawn(q.wait(Duration::from_secs(60), no_shutdown())))
            .collect();
        g.set_capacity(1);
        assert_eq!((g.held(), g.in_flight()), (4, 1));
        for (i, w) in waits.into_iter().enumerate() {
            let (permit, _) = w.await.unwrap().unwrap();
            assert_eq!(g.in_flight(), 1, "one at a time (request {i})");
            assert_eq!(g.held(), 4 - i);
            drop(permit);
        }
        assert_eq!((g.held(), g.in_flight()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_not_ready_to_send_is_passed_over_not_dropped() {
        let g = Gate::new(10);
        let (slow, fast) = (queued(&g), queued(&g));
        fast.ready();
        g.set_capacity(1);
        let (p, _) = fast.wait(Duration::from_secs(60), no_shutdown()).await.unwrap();
        assert_eq!(g.held(), 1, "the slow upload keeps its place");
        drop(p);
        slow.ready();
        let (p, _) = slow.wait(Duration::from_secs(60), no_shutdown()).await.unwrap();
        drop(p);
        assert_eq!((g.held(), g.in_flight()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_a_wait_times_out() {
        let g = Gate::new(2);
        let (a, _b) = (queued(&g), queued(&g));
        assert!(matches!(g.enqueue(false), Err(Refused::QueueFull)));
        a.ready();
        // The virtual clock jumps to the deadline: no real waiting.
        assert!(matches!(
            a.wait(Duration::from_secs(300), no_shutdown()).await,
            Err(Refused::Timeout)
        ));
        assert_eq!(g.held(), 1, "the timed-out request left the line");
        assert!(matches!(g.enqueue(true), Err(Refused::ShuttingDown)));
    }
}
