//! Which messages run on the HTTP workers ("inline"), and the bound that keeps the API
//! answering while they do.
//!
//! Handing a message to a pool thread and its answer back costs two thread wake-ups, more
//! than a whole request to a fast handler, so a message over HTTP runs on the HTTP worker
//! that received it when it can, in an inline runner: a task of its own, never the request's
//! (see `ask.rs`). That must never take the HTTP workers away from the API: at most
//! [`Permits`] runners run at once, and the async runtime has one worker more than that
//! ([`http_workers`]), so one worker is always free to serve `/health`, `GET /paglets/{id}`
//! and every other request, however long the handlers that hold the others run. [`Pace`]
//! keeps paglets whose last handler was slow on the pool, so slow paglets do not take the
//! permits fast ones use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// A handler at least this slow sends its paglet's next message to the pool.
const SLOW: Duration = Duration::from_millis(1);

/// How many handlers may run inline at once: one per core, so inline handlers can use the
/// whole machine.
pub fn inline_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The async runtime's worker threads: one more than the inline permits, so one is always
/// free for the API.
pub fn http_workers() -> usize {
    inline_permits() + 1
}

/// The inline permits: a counter with a bound.
#[derive(Debug)]
pub struct Permits {
    taken: AtomicUsize,
    bound: usize,
}

/// One inline permit, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Permits>);

impl Permits {
    /// `bound` permits (at least one).
    pub fn new(bound: usize) -> Arc<Permits> {
        Arc::new(Permits {
            taken: AtomicUsize::new(0),
            bound: bound.max(1),
        })
    }

    /// A permit, unless all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.bound).then_some(taken + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a paglet's last handler took, in microseconds (saturating).
#[derive(Debug, Default)]
pub struct Pace(AtomicU32);

impl Pace {
    /// True unless its last handler was slow: its next message may run inline. One fast
    /// handler, wherever it ran, makes it eligible again, so a hiccup costs one message a
    /// trip through the pool and nothing more.
    pub fn runs_inline(&self) -> bool {
        u128::from(self.0.load(Ordering::Relaxed)) < SLOW.as_micros()
    }

    /// Records a handler's duration.
    pub fn note(&self, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.0.store(micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_run_out_and_come_back() {
        let permits = Permits::new(2);
        let first = permits.try_acquire().expect("first");
        let second = permits.try_acquire().expect("second");
        assert!(permits.try_acquire().is_none());
        drop(first);
        let third = permits
            .try_acquire()
            .expect("a permit given back is taken again");
        assert!(permits.try_acquire().is_none());
        drop((second, third));
        assert_eq!(permits.taken.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn there_is_always_a_permit_and_a_worker_more() {
        assert!(Permits::new(0).try_acquire().is_some());
        assert_eq!(http_workers(), inline_permits() + 1);
    }

    #[test]
    fn a_slow_handler_sends_only_the_next_message_to_the_pool() {
        let pace = Pace::default();
        assert!(pace.runs_inline(), "a new paglet may run inline");
        pace.note(Duration::from_micros(5));
        assert!(pace.runs_inline());
        pace.note(Duration::from_millis(20));
        assert!(!pace.runs_inline());
        pace.note(Duration::from_micros(5));
        assert!(
            pace.runs_inline(),
            "one fast handler makes it eligible again"
        );
        pace.note(Duration::from_secs(1 << 40));
        assert!(!pace.runs_inline(), "a duration past u32 saturates");
    }
}
