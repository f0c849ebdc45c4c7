//! One live paglet as the runtime holds it: its mailbox, handled one job at a time in arrival
//! order on the worker pool, the loaded [`Instance`] that runs its code, and the library
//! generation that code comes from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use plugin_api::loader::Instance;
use plugin_api::{Hook, PagletError};
use serde_json::Value;

use super::context::HostContext;
use super::durable::{Checkpoint, Saver};
use super::inline::InlineGate;
use super::pool::Pool;
use super::{RuntimeError, lock};
use crate::registry::LoadedLib;

/// Where a job's result goes.
pub type Replier<T> = Box<dyn FnOnce(Result<T, RuntimeError>) + Send>;

/// Work for a paglet, run in order.
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
        context: HostContext,
        done: Replier<()>,
    },
    /// Run the disposing hook; the paglet is already out of the table.
    Dispose { reply: Replier<()> },
    /// Hand the state to the store (interval mode, when the paglet was busy).
    Checkpoint(Checkpoint),
}

/// Where [`Paglet::push`] puts a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueAt {
    /// Behind everything queued (messages, disposal).
    Back,
    /// Ahead of queued messages, behind earlier migrations (reloads).
    AfterMigrations,
}

#[derive(Default)]
struct Mailbox {
    queue: VecDeque<Job>,
    /// Someone (a pool worker or an inline sender) owns draining this mailbox.
    scheduled: bool,
}

/// One live paglet.
pub struct Paglet {
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
    /// Whether its messages may run on the HTTP worker that received them.
    inline: InlineGate,
    code: Mutex<Arc<LoadedLib>>,
    instance: Mutex<Instance>,
    mailbox: Mutex<Mailbox>,
    /// The call chain of the message being handled, for cycle checks.
    chain: Mutex<Vec<String>>,
    /// Changed since the checkpointer last read its state (interval mode).
    pub(super) dirty: AtomicBool,
    /// A hash of the state last handed to the store (sync mode skips unchanged states).
    pub(super) saved_state: AtomicU64,
    /// Where its state is saved, when the host has a store.
    saver: Option<Arc<Saver>>,
}

impl Paglet {
    /// A paglet whose instance was already created (and hooked) on `lib`.
    pub fn new(
        id: String,
        class: String,
        lib: Arc<LoadedLib>,
        instance: Instance,
        saver: Option<Arc<Saver>>,
    ) -> Paglet {
        Paglet {
            id,
            class,
            created_at: SystemTime::now(),
            handled: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            disposed: AtomicBool::new(false),
            inline: InlineGate::default(),
            code: Mutex::new(lib),
            instance: Mutex::new(instance),
            mailbox: Mutex::default(),
            chain: Mutex::default(),
            dirty: AtomicBool::new(false),
            saved_state: AtomicU64::new(0),
            saver,
        }
    }

    /// True when the caller may run the next message on its own (HTTP) thread; see
    /// [`InlineGate::open`].
    pub fn runs_inline(&self) -> bool {
        self.inline.open()
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
        let instance = self.instance.try_lock().ok()?;
        Some(instance.state().and_then(|text| {
            serde_json::from_str(&text).map_err(|e| PagletError::Failed(format!("state: {e}")))
        }))
    }

    /// Runs `f` on the instance, waiting for a running job to finish.
    pub fn with_instance<T>(&self, f: impl FnOnce(&Instance) -> T) -> T {
        f(&lock(&self.instance))
    }

    /// Runs `f` on the instance unless a job is running (then `None` at once).
    pub fn try_with_instance<T>(&self, f: impl FnOnce(&Instance) -> T) -> Option<T> {
        if self.is_busy() {
            return None;
        }
        let instance = self.instance.try_lock().ok()?;
        Some(f(&instance))
    }

    /// True once its disposing hook ran.
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }

    /// Queues a job and makes sure a worker drains the mailbox.
    pub fn push(self: &Arc<Self>, job: Job, at: QueueAt, pool: &Pool) {
        let mut mailbox = lock(&self.mailbox);
        match at {
            QueueAt::Back => mailbox.queue.push_back(job),
            QueueAt::AfterMigrations => {
                // Two reloads in a row while the paglet is busy must leave it on the newer
                // code.
                let index = mailbox
                    .queue
                    .iter()
                    .take_while(|j| matches!(j, Job::Migrate { .. }))
                    .count();
                mailbox.queue.insert(index, job);
            }
        }
        if !mailbox.scheduled {
            mailbox.scheduled = true;
            pool.submit(self.clone());
        }
    }

    /// Takes over draining if the mailbox is idle and empty, so a sender can run a job
    /// inline on its own thread. Pair with [`release`](Paglet::release).
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

    /// Runs queued jobs; after `budget` of them, yields the worker to other paglets.
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
        let mut instance = lock(&self.instance);
        match job {
            Job::Message { reply, .. } if self.disposed.load(Ordering::Acquire) => {
                reply(Err(PagletError::Failed(format!(
                    "paglet {} was disposed",
                    self.id
                ))
                .into()));
            }
            Job::Message {
                kind,
                args,
                chain,
                reply,
            } => {
                *lock(&self.chain) = chain;
                let started = Instant::now();
                let result = instance.handle(&kind, &args);
                self.inline.note(started.elapsed());
                lock(&self.chain).clear();
                self.handled.fetch_add(1, Ordering::Relaxed);
                let result = result.map_err(RuntimeError::from);
                match &self.saver {
                    Some(saver) => saver.after_change(self, &instance, result, reply),
                    None => reply(result),
                }
            }
            Job::Migrate { lib, context, done } => {
                // Snapshot, re-create on the new code, run the arrival hook; on failure the old
                // instance is untouched and keeps serving.
                match instance.migrate_to(&lib.library, context) {
                    Ok(fresh) => {
                        *instance = fresh;
                        *lock(&self.code) = lib;
                        match &self.saver {
                            Some(saver) => saver.after_change(self, &instance, Ok(()), done),
                            None => done(Ok(())),
                        }
                    }
                    Err(e) => done(Err(e.into())),
                }
            }
            Job::Dispose { reply } => {
                self.disposed.store(true, Ordering::Release);
                let result = instance.hook(Hook::Disposing).map_err(RuntimeError::from);
                match &self.saver {
                    Some(saver) => saver.after_dispose(&self.id, result, reply),
                    None => reply(result),
                }
            }
            Job::Checkpoint(save) => {
                if !self.is_disposed() {
                    save(self, &instance);
                }
            }
        }
        drop(instance);
        self.busy.store(false, Ordering::Release);
    }
}
