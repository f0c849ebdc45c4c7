//! One live paglet: its mailbox, handled one job at a time in arrival order on the worker
//! pool, and the code (library generation) it runs on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use plugin_api::loader::{HostContext, Instance};
use plugin_api::{Hook, PagletError};
use serde_json::Value;

use super::lock;
use super::pool::Pool;
use crate::registry::LoadedLib;

/// A handler faster than this, every time so far, may run on the HTTP worker directly.
const INLINE_BELOW: Duration = Duration::from_micros(50);
/// A message this slow from an eligible instance sends it back to the pool for good (well
/// above the scheduling hiccups of a busy machine).
const DEMOTE_AT: Duration = Duration::from_millis(1);
/// How many fast messages, run on the pool, make an instance eligible.
const INLINE_AFTER: u32 = 8;

/// Where a job's result goes.
pub type Replier<T> = Box<dyn FnOnce(Result<T, PagletError>) + Send>;

/// Work for an instance, run in order.
pub enum Job {
    /// A message; `chain` is the ids already handling a message up the call chain.
    Message {
        kind: String,
        args: String,
        chain: Vec<String>,
        reply: Replier<String>,
    },
    /// Move to `lib` with the current state (a reload).
    Migrate {
        lib: Arc<LoadedLib>,
        ctx: Box<dyn FnOnce() -> Ctx + Send>,
        done: Replier<()>,
    },
    /// Run the disposing hook; the instance is already out of the table.
    Dispose { reply: Replier<()> },
}

/// A host context for an instance, boxed for [`Job::Migrate`].
pub type Ctx = super::HostCtx;

#[derive(Default)]
struct Mailbox {
    queue: VecDeque<Job>,
    /// Someone (a pool worker or an inline sender) owns draining this mailbox.
    scheduled: bool,
}

/// One live paglet.
pub struct Slot {
    /// Its id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// When it was created (or restored).
    pub created_at: SystemTime,
    /// Messages handled so far.
    pub handled: AtomicU64,
    busy: AtomicBool,
    disposed: AtomicBool,
    /// Fast messages seen in a row (capped at `INLINE_AFTER`); `u32::MAX` once a message was
    /// slow after the instance became eligible (never inline again).
    fast_streak: AtomicU32,
    code: Mutex<Arc<LoadedLib>>,
    paglet: Mutex<Instance>,
    mailbox: Mutex<Mailbox>,
    /// The call chain of the message being handled, for cycle checks.
    chain: Mutex<Vec<String>>,
}

impl Slot {
    /// A slot for an instance already created (and hooked) on `lib`.
    pub fn new(id: String, class: String, lib: Arc<LoadedLib>, paglet: Instance) -> Slot {
        Slot {
            id,
            class,
            created_at: SystemTime::now(),
            handled: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            disposed: AtomicBool::new(false),
            fast_streak: AtomicU32::new(0),
            code: Mutex::new(lib),
            paglet: Mutex::new(paglet),
            mailbox: Mutex::default(),
            chain: Mutex::default(),
        }
    }

    /// True after enough fast messages in a row: the caller may run the next one on its own
    /// (HTTP) thread instead of handing it to the pool. One slow message after that ends this
    /// for good, so a long handler holds an HTTP worker at most once per instance.
    pub fn runs_inline(&self) -> bool {
        let streak = self.fast_streak.load(Ordering::Relaxed);
        (INLINE_AFTER..u32::MAX).contains(&streak)
    }

    fn note_duration(&self, took: Duration) {
        let _ = self
            .fast_streak
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(match n {
                    u32::MAX => return None,
                    // Eligible: a slow message sends the instance to the pool for good.
                    n if n >= INLINE_AFTER => {
                        if took >= DEMOTE_AT {
                            u32::MAX
                        } else {
                            n
                        }
                    }
                    // Not yet: a slow message (a cold first call, say) restarts the count.
                    _ if took >= INLINE_BELOW => 0,
                    n => n + 1,
                })
            });
    }

    /// The code it runs on.
    pub fn code(&self) -> Arc<LoadedLib> {
        lock(&self.code).clone()
    }

    /// True while a job runs.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// True when no job runs and none is queued.
    pub fn is_idle(&self) -> bool {
        !self.is_busy() && lock(&self.mailbox).queue.is_empty()
    }

    /// The call chain of the message being handled.
    pub fn chain(&self) -> Vec<String> {
        lock(&self.chain).clone()
    }

    /// The state, unless a job is running (then `None` at once, never waiting).
    pub fn try_state(&self) -> Option<Result<Value, PagletError>> {
        if self.is_busy() {
            return None;
        }
        let paglet = self.paglet.try_lock().ok()?;
        Some(paglet.state().and_then(|text| {
            serde_json::from_str(&text).map_err(|e| PagletError::Failed(format!("state: {e}")))
        }))
    }

    /// Queues a job (`front` for migrations, which go before queued messages) and makes sure
    /// a worker drains the mailbox.
    pub fn push(self: &Arc<Self>, job: Job, front: bool, pool: &Pool) {
        let mut mailbox = lock(&self.mailbox);
        if front {
            // Ahead of messages, behind earlier migrations: two reloads in a row while the
            // instance is busy must leave it on the newer code.
            let at = mailbox
                .queue
                .iter()
                .take_while(|j| matches!(j, Job::Migrate { .. }))
                .count();
            mailbox.queue.insert(at, job);
        } else {
            mailbox.queue.push_back(job);
        }
        if !mailbox.scheduled {
            mailbox.scheduled = true;
            pool.submit(self.clone());
        }
    }

    /// Takes over draining if the mailbox is idle and empty, so a sender can run a job
    /// inline on its own thread. Pair with [`release`](Slot::release).
    pub fn try_claim(&self) -> bool {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.scheduled || !mailbox.queue.is_empty() {
            return false;
        }
        mailbox.scheduled = true;
        true
    }

    /// Gives up draining; hands queued jobs to the pool.
    pub fn release(self: &Arc<Self>, pool: &Pool) {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.queue.is_empty() {
            mailbox.scheduled = false;
        } else {
            pool.submit(self.clone());
        }
    }

    /// Runs queued jobs; after `budget` of them, yields the worker to other instances.
    pub fn drain(self: &Arc<Self>, pool: &Pool, budget: usize) {
        for _ in 0..budget {
            let job = {
                let mut mailbox = lock(&self.mailbox);
                match mailbox.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        mailbox.scheduled = false;
                        return;
                    }
                }
            };
            self.run(job);
        }
        pool.submit(self.clone());
    }

    /// Runs one job now, on this thread.
    pub fn run(&self, job: Job) {
        self.busy.store(true, Ordering::Release);
        let mut paglet = lock(&self.paglet);
        match job {
            Job::Message { reply, .. } if self.disposed.load(Ordering::Acquire) => {
                reply(Err(PagletError::Failed(format!(
                    "paglet {} was disposed",
                    self.id
                ))));
            }
            Job::Message {
                kind,
                args,
                chain,
                reply,
            } => {
                *lock(&self.chain) = chain;
                let started = Instant::now();
                let result = paglet.handle(&kind, &args);
                self.note_duration(started.elapsed());
                lock(&self.chain).clear();
                self.handled.fetch_add(1, Ordering::Relaxed);
                reply(result);
            }
            Job::Migrate { lib, ctx, done } => match migrate(&mut paglet, &self.class, &lib, ctx())
            {
                Ok(fresh) => {
                    *paglet = fresh;
                    *lock(&self.code) = lib;
                    done(Ok(()));
                }
                Err(e) => done(Err(e)),
            },
            Job::Dispose { reply } => {
                self.disposed.store(true, Ordering::Release);
                reply(paglet.hook(Hook::Disposing));
            }
        }
        drop(paglet);
        self.busy.store(false, Ordering::Release);
    }
}

/// Snapshot, re-create on the new code, run the arrival hook. The old instance is untouched
/// on failure.
fn migrate(
    old: &mut Instance,
    class: &str,
    lib: &LoadedLib,
    ctx: impl HostContext,
) -> Result<Instance, PagletError> {
    if lib.library.class(class).is_none() {
        return Err(PagletError::Failed(format!(
            "the new code of {} has no class {class}",
            lib.source.display()
        )));
    }
    let state: Value = serde_json::from_str(&old.state()?)
        .map_err(|e| PagletError::Failed(format!("state: {e}")))?;
    let mut fresh = lib.library.create(class, Some(&state), ctx)?;
    fresh.hook(Hook::Arrived)?;
    Ok(fresh)
}
