//! The bounded pool of worker threads that run paglet code. Many instances share it; an
//! instance with queued jobs waits for a free worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::instance::Slot;

/// Jobs per turn before a worker moves on to another instance.
const BUDGET: usize = 32;

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    tx: crossbeam_channel::Sender<Arc<Slot>>,
}

impl Pool {
    /// Starts `workers` threads.
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<Slot>>();
        let pool = Pool { tx };
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let handle = pool.clone();
            std::thread::Builder::new()
                .name(format!("paglet-worker-{n}"))
                .spawn(move || {
                    while let Ok(slot) = rx.recv() {
                        // Plugin panics never get here (they are caught in the plugin); a host
                        // bug must not cost the pool a thread.
                        if catch_unwind(AssertUnwindSafe(|| slot.drain(&handle, BUDGET))).is_err() {
                            tracing::error!(paglet = %slot.id, "worker recovered from a panic");
                        }
                    }
                })?;
        }
        Ok(pool)
    }

    /// Schedules `slot`'s mailbox to be drained.
    pub fn submit(&self, slot: Arc<Slot>) {
        // The workers hold a sender too, so the channel never closes while the pool runs.
        let _ = self.tx.send(slot);
    }
}
