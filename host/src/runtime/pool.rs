//! The bounded pool of worker threads that run paglet code. Many paglets share it; a paglet
//! with queued jobs waits for a free worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::paglet::Paglet;

/// Jobs per turn before a worker moves on to another paglet.
const BUDGET: usize = 32;

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    tx: crossbeam_channel::Sender<Arc<Paglet>>,
}

impl Pool {
    /// Starts `workers` threads.
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<Paglet>>();
        let pool = Pool { tx };
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let handle = pool.clone();
            std::thread::Builder::new()
                .name(format!("paglet-worker-{n}"))
                .spawn(move || {
                    while let Ok(paglet) = rx.recv() {
                        // Plugin panics never get here (they are caught in the plugin); a host
                        // bug must not cost the pool a thread.
                        if catch_unwind(AssertUnwindSafe(|| paglet.drain(&handle, BUDGET))).is_err()
                        {
                            tracing::error!(paglet = %paglet.id, "worker recovered from a panic");
                        }
                    }
                })?;
        }
        Ok(pool)
    }

    /// Schedules `paglet`'s mailbox to be drained.
    pub fn submit(&self, paglet: Arc<Paglet>) {
        // The workers hold a sender too, so the channel never closes while the pool runs.
        let _ = self.tx.send(paglet);
    }
}
