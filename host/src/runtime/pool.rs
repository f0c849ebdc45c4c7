//! The bounded pool of worker threads that run paglet code. Many paglets share it; a paglet
//! with queued jobs waits for a free worker. Two lanes: paglets with a message (or disposal)
//! waiting go first; paglets with only migrations queued (a reload) take the background lane,
//! so a reload of many paglets never holds up a message for longer than a job or two.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::paglet::Paglet;

/// Jobs per turn before a worker moves on to another paglet.
const BUDGET: usize = 32;
/// A worker takes a background turn first after this many turns in a row, so migrations
/// progress under a steady stream of messages.
const URGENT_STREAK: usize = 8;

/// Which lane a paglet waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A message or disposal waits: someone waits for the answer.
    Urgent,
    /// Only migrations wait.
    Background,
}

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    urgent: Sender<Arc<Paglet>>,
    background: Sender<Arc<Paglet>>,
}

impl Pool {
    /// Starts `workers` threads.
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let (urgent, urgent_rx) = crossbeam_channel::unbounded::<Arc<Paglet>>();
        let (background, background_rx) = crossbeam_channel::unbounded::<Arc<Paglet>>();
        let pool = Pool { urgent, background };
        for n in 0..workers.max(1) {
            let (urgent, background) = (urgent_rx.clone(), background_rx.clone());
            let handle = pool.clone();
            std::thread::Builder::new()
                .name(format!("paglet-worker-{n}"))
                .spawn(move || {
                    let mut streak = 0;
                    while let Some(paglet) = next(&urgent, &background, &mut streak) {
                        // Plugin panics never get here (they are caught in the plugin); a host
                        // bug must not cost the pool a thread.
                        if catch_unwind(AssertUnwindSafe(|| paglet.turn(&handle, BUDGET))).is_err()
                        {
                            tracing::error!(paglet = %paglet.id, "worker recovered from a panic");
                        }
                    }
                })?;
        }
        Ok(pool)
    }

    /// Schedules `paglet`'s mailbox to be drained.
    pub fn submit(&self, paglet: Arc<Paglet>, lane: Lane) {
        let lane = match lane {
            Lane::Urgent => &self.urgent,
            Lane::Background => &self.background,
        };
        // The pool holds a sender of each lane, so the channels never close while it runs.
        let _ = lane.send(paglet);
    }
}

/// The next paglet for a worker: urgent first, except one background turn after
/// `URGENT_STREAK` urgent ones.
fn next(
    urgent: &Receiver<Arc<Paglet>>,
    background: &Receiver<Arc<Paglet>>,
    streak: &mut usize,
) -> Option<Arc<Paglet>> {
    if *streak >= URGENT_STREAK {
        *streak = 0;
        if let Ok(paglet) = background.try_recv() {
            return Some(paglet);
        }
    }
    if let Ok(paglet) = urgent.try_recv() {
        *streak += 1;
        return Some(paglet);
    }
    crossbeam_channel::select! {
        recv(urgent) -> paglet => {
            *streak += 1;
            paglet.ok()
        }
        recv(background) -> paglet => {
            *streak = 0;
            paglet.ok()
        }
    }
}
