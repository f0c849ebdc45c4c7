//! One live paglet as the runtime holds it: its mailbox (`mailbox.rs`), handled one job at a
//! time in arrival order on the worker pool or by inline runners (`ask.rs`), the [`Code`]
//! that runs its code, and the library generation that code comes from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use plugin_api::{Hook, PagletError};
use serde_json::Value;

use super::code::Code;
use super::context::HostContext;
use super::durable::{Checkpoint, Saver};
use super::inline::Pace;
use super::mailbox::{Mailbox, Next, QueueAt, Queued};
use super::pool::{Lane, Pool};
use super::{RuntimeError, lock};
use crate::registry::LoadedLib;

/// Where a job's result goes. Every job answers exactly once: a job dropped before it ran
/// (a host fault) answers with an error instead of leaving its caller waiting, or taking the
/// silence for success.
pub struct Replier<T> {
    answer: Option<Answer<T>>,
}

/// The callback behind a [`Replier`].
type Answer<T> = Box<dyn FnOnce(Result<T, RuntimeError>) + Send>;

impl<T> Replier<T> {
    /// A replier calling `answer` with the job's result.
    pub fn new(answer: impl FnOnce(Result<T, RuntimeError>) + Send + 'static) -> Replier<T> {
        Replier {
            answer: Some(Box::new(answer)),
        }
    }

    /// Answers with `result`.
    pub fn send(mut self, result: Result<T, RuntimeError>) {
        if let Some(answer) = self.answer.take() {
            answer(result);
        }
    }
}

impl<T> Drop for Replier<T> {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            answer(Err(RuntimeError::Paglet(PagletError::Failed(
                "the job was dropped before it ran".into(),
            ))));
        }
    }
}

/// Work for a paglet, run in order.
pub enum Job {
    /// A message.
    Message {
        kind: String,
        args: String,
        reply: Replier<String>,
        /// It may run on an HTTP worker, in an inline runner (see `inline.rs`).
        inline: bool,
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
    /// A lifecycle operation (deactivate, dispatch, clone) run on the paglet's turn, after
    /// the jobs queued before it, with its instance locked.
    Task(Task),
}

/// A lifecycle operation: see [`Job::Task`].
pub type Task = Box<dyn FnOnce(&Paglet, &mut Code) + Send>;

/// Where the jobs of a paglet that left go (another host, or the store).
pub type Reroute = Arc<dyn Fn(Job) + Send + Sync>;

/// How long [`Paglet::try_state`] waits for the instance lock while no job runs (well below
/// the 100 ms a detail must answer in).
const IDLE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// How long [`Paglet::try_state`] waits for an isolated paglet's worker to give its state.
const PEEK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Queued for Job {
    fn lane(&self) -> Lane {
        match self {
            Job::Migrate { .. } | Job::Checkpoint(_) => Lane::Background,
            Job::Message { .. } | Job::Dispose { .. } | Job::Task(_) => Lane::Urgent,
        }
    }

    fn is_migration(&self) -> bool {
        matches!(self, Job::Migrate { .. })
    }

    fn runs_inline(&self) -> bool {
        matches!(self, Job::Message { inline: true, .. })
    }
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
    /// Whether its next message may run inline: how long its last handler took.
    pace: Pace,
    code: Mutex<Arc<LoadedLib>>,
    instance: Mutex<Code>,
    mailbox: Mutex<Mailbox<Job>>,
    /// Changed since the checkpointer last read its state (interval mode).
    pub(super) dirty: AtomicBool,
    /// A hash of the state last handed to the store (sync mode skips unchanged states).
    pub(super) saved_state: AtomicU64,
    /// Where its state is saved, when the host has a store.
    saver: Option<Arc<Saver>>,
    /// Set once it left this host's memory (dispatched or deactivated): where its late jobs go.
    departed: OnceLock<Reroute>,
    /// A dispatch of it is unsettled: messages are refused until it is.
    pub(super) in_doubt: AtomicBool,
    /// A dispatch of it is waiting for the target's answer.
    pub(super) departing: AtomicBool,
    /// Oneway messages to it that failed.
    pub(super) oneway_failed: AtomicU64,
    /// Crashes of its worker before it was loaded here (none of its own).
    pub(super) crash_base: u64,
    /// Its code runs in a worker process.
    isolated: AtomicBool,
}

impl Paglet {
    /// A paglet whose instance was already created (and hooked) on `lib`.
    pub fn new(
        id: String,
        class: String,
        lib: Arc<LoadedLib>,
        instance: Code,
        saver: Option<Arc<Saver>>,
    ) -> Paglet {
        let crash_base = instance.isolated().map_or(0, |i| i.crashes().0);
        let isolated = AtomicBool::new(instance.isolated().is_some());
        Paglet {
            id,
            class,
            created_at: SystemTime::now(),
            handled: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            disposed: AtomicBool::new(false),
            pace: Pace::default(),
            code: Mutex::new(lib),
            instance: Mutex::new(instance),
            mailbox: Mutex::default(),
            dirty: AtomicBool::new(false),
            saved_state: AtomicU64::new(0),
            saver,
            departed: OnceLock::new(),
            in_doubt: AtomicBool::new(false),
            departing: AtomicBool::new(false),
            oneway_failed: AtomicU64::new(0),
            crash_base,
            isolated,
        }
    }

    /// Keeps the creation time (Unix seconds) and message count it had before it was stored
    /// or moved, instead of starting afresh.
    pub fn keep_history(&mut self, created_at: f64, messages_handled: u64) {
        self.created_at =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(created_at.max(0.0));
        self.handled = AtomicU64::new(messages_handled);
    }

    /// Marks it gone from this host's memory: from now on its jobs go to `reroute` instead
    /// of its instance, and nothing saves its state here any more. Returns the jobs queued
    /// until now, for the caller to reroute in order.
    pub fn depart(&self, reroute: Reroute) -> Vec<Job> {
        let _ = self.departed.set(reroute);
        self.disposed.store(true, Ordering::Release);
        lock(&self.mailbox).queue.drain(..).collect()
    }

    /// Takes the messages queued behind the running job (a transfer in doubt answers them).
    pub fn take_messages(&self) -> Vec<Job> {
        let mut mailbox = lock(&self.mailbox);
        let (messages, rest): (VecDeque<Job>, VecDeque<Job>) = mailbox
            .queue
            .drain(..)
            .partition(|job| matches!(job, Job::Message { .. }));
        mailbox.queue = rest;
        messages.into()
    }

    /// True when its code runs in a worker process.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
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

    /// The state, unless a job is running (then `None` at once, never waiting).
    pub fn try_state(&self) -> Option<Result<Value, RuntimeError>> {
        let instance = self.lock_idle()?;
        Some(instance.peek_state(PEEK_WAIT)?.and_then(|text| {
            serde_json::from_str(&text)
                .map_err(|e| PagletError::Failed(format!("state: {e}")).into())
        }))
    }

    /// Runs `f` on the instance, waiting for a running job to finish.
    pub fn with_instance<T>(&self, f: impl FnOnce(&Code) -> T) -> T {
        f(&lock(&self.instance))
    }

    /// Runs `f` on the instance unless a job is running (then `None` at once).
    pub fn try_with_instance<T>(&self, f: impl FnOnce(&Code) -> T) -> Option<T> {
        let instance = self.lock_idle()?;
        Some(f(&instance))
    }

    /// The instance, unless a job runs (then `None` at once). Without a job the lock is held
    /// only for a moment (a state read by the checkpointer or a detail, the end of a job that
    /// already answered), so this waits for it, briefly: a paglet that just answered is not
    /// reported busy.
    fn lock_idle(&self) -> Option<std::sync::MutexGuard<'_, Code>> {
        let deadline = Instant::now() + IDLE_LOCK_WAIT;
        loop {
            if self.is_busy() {
                return None;
            }
            match self.instance.try_lock() {
                Ok(instance) => return Some(instance),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
    }

    /// True once its disposing hook ran.
    pub fn is_disposed(&self) -> bool {
        self.disposed.load(Ordering::Acquire)
    }

    /// Queues a job and makes sure a worker drains the mailbox.
    pub fn push(self: &Arc<Self>, job: Job, at: QueueAt, pool: &Pool) {
        let mut mailbox = lock(&self.mailbox);
        let next = match mailbox.push(job, at) {
            // Only `push_inline`'s caller starts runners.
            Next::Inline => mailbox.hand_to_pool(),
            next => next,
        };
        drop(mailbox);
        self.follow(next, pool);
    }

    /// Queues a message that may run inline; `true`: the caller must start its inline
    /// runner (see `ask.rs`), else someone drains the mailbox already.
    pub fn push_inline(self: &Arc<Self>, job: Job, pool: &Pool) -> bool {
        let next = lock(&self.mailbox).push(job, QueueAt::Back);
        self.follow(next, pool)
    }

    /// Arranges what the mailbox said must come next; `true`: start an inline runner.
    fn follow(self: &Arc<Self>, next: Next, pool: &Pool) -> bool {
        match next {
            Next::Nothing => false,
            Next::Pool(lane) => {
                pool.submit(self.clone(), lane);
                false
            }
            Next::Inline => true,
        }
    }

    /// True unless its last handler was slow (or its code runs in a worker process, which
    /// an HTTP thread never waits for): its next message may run inline.
    pub fn runs_inline(&self) -> bool {
        !self.is_isolated() && self.pace.runs_inline()
    }

    /// Takes over draining if the mailbox is idle and empty, so a sender can run a job
    /// inline on its own thread. Pair with [`release`](Paglet::release).
    pub fn try_claim(&self) -> bool {
        lock(&self.mailbox).try_claim()
    }

    /// Gives up draining: the pool takes what is queued.
    pub fn release(self: &Arc<Self>, pool: &Pool) {
        let next = lock(&self.mailbox).settle(false);
        self.follow(next, pool);
    }

    /// An inline runner's job: the message at the front, unless something else came first
    /// (then the pool takes the mailbox, and `None`).
    pub fn next_inline(self: &Arc<Self>, pool: &Pool) -> Option<Job> {
        let mut mailbox = lock(&self.mailbox);
        let job = mailbox.next_inline();
        if job.is_none() {
            let next = mailbox.settle(false);
            drop(mailbox);
            self.follow(next, pool);
        }
        job
    }

    /// An inline runner is done; `true`: the next message runs inline too, start its runner.
    pub fn settle_inline(self: &Arc<Self>, pool: &Pool) -> bool {
        let next = lock(&self.mailbox).settle(true);
        self.follow(next, pool)
    }

    /// The inline runner that was due cannot start (no permit): the pool takes over.
    pub fn hand_to_pool(self: &Arc<Self>, pool: &Pool) {
        let next = lock(&self.mailbox).hand_to_pool();
        self.follow(next, pool);
    }

    /// A pool worker's turn: drains the mailbox unless someone else is already at it (this
    /// paglet was in both lanes, or a runner has it) or it is empty.
    pub fn turn(self: &Arc<Self>, pool: &Pool, budget: usize) {
        if !lock(&self.mailbox).claim_for_pool() {
            return;
        }
        self.drain(pool, budget);
    }

    /// Runs up to `budget` queued jobs (the caller drains: after [`try_claim`] or in a
    /// [`turn`]), then gives up draining.
    ///
    /// [`try_claim`]: Paglet::try_claim
    /// [`turn`]: Paglet::turn
    pub fn drain(self: &Arc<Self>, pool: &Pool, budget: usize) {
        for _ in 0..budget {
            let job = lock(&self.mailbox).next();
            match job {
                Some(job) => self.run(job),
                None => break,
            }
        }
        self.release(pool);
    }

    /// Runs one job now, on this thread.
    pub fn run(&self, job: Job) {
        if let Some(reroute) = self.departed.get() {
            match job {
                Job::Message { .. } | Job::Dispose { .. } | Job::Task(_) => reroute(job),
                // Its code and state live elsewhere now.
                Job::Migrate { done, .. } => done.send(Ok(())),
                Job::Checkpoint(_) => {}
            }
            return;
        }
        self.busy.store(true, Ordering::Release);
        let mut instance = lock(&self.instance);
        match job {
            // A sender that found the paglet just before its disposal: as if it had come
            // just after.
            Job::Message { reply, .. } if self.disposed.load(Ordering::Acquire) => {
                reply.send(Err(PagletError::NotFound(format!(
                    "no paglet with id '{}' (it was disposed)",
                    self.id
                ))
                .into()));
            }
            Job::Message {
                kind, args, reply, ..
            } => {
                let started = Instant::now();
                let result = instance.handle(&kind, &args);
                // An isolated paglet never runs on an HTTP thread: its call waits on another
                // process, for as long as the handler timeout.
                if instance.isolated().is_none() {
                    self.pace.note(started.elapsed());
                }
                self.handled.fetch_add(1, Ordering::Relaxed);
                // The handler is done: a detail asked once the caller has its answer must not
                // see the paglet busy (it waits the moment the lock is still held).
                self.busy.store(false, Ordering::Release);
                // Its worker died (or is quarantined): the instance that ran is gone, and the
                // one that comes back is its durable state; nothing changed to save.
                let gone = matches!(
                    result,
                    Err(RuntimeError::Crashed(_)
                        | RuntimeError::HandlerTimeout(_)
                        | RuntimeError::Quarantined(_))
                );
                match &self.saver {
                    Some(saver) if !gone => saver.after_change(self, &instance, result, reply),
                    _ => reply.send(result),
                }
            }
            Job::Migrate { lib, context, done } => {
                // Snapshot, re-create on the new code, run the arrival hook; on failure the old
                // instance is untouched and keeps serving.
                let migrated = instance.migrate_to(&lib, context);
                // As after a message: a detail asked once the rescan has its answer must not
                // see the paglet busy.
                self.busy.store(false, Ordering::Release);
                match migrated {
                    Ok(fresh) => {
                        self.isolated
                            .store(fresh.isolated().is_some(), Ordering::Relaxed);
                        *instance = fresh;
                        *lock(&self.code) = lib;
                        match &self.saver {
                            Some(saver) => saver.after_change(self, &instance, Ok(()), done),
                            None => done.send(Ok(())),
                        }
                    }
                    Err(e) => done.send(Err(e)),
                }
            }
            Job::Dispose { reply } => {
                self.disposed.store(true, Ordering::Release);
                let result = instance.hook(Hook::Disposing);
                match &self.saver {
                    Some(saver) => saver.after_dispose(&self.id, result, reply),
                    None => reply.send(result),
                }
            }
            Job::Checkpoint(save) => {
                if !self.is_disposed() {
                    save(self, &instance);
                }
            }
            Job::Task(task) => task(self, &mut instance),
        }
        drop(instance);
        self.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_replier_dropped_unanswered_answers_with_an_error() {
        let (tx, rx) = mpsc::channel();
        drop(Replier::<()>::new(move |r| drop(tx.send(r))));
        let answer = rx.try_recv().expect("an answer");
        assert!(
            matches!(answer, Err(RuntimeError::Paglet(PagletError::Failed(m))) if m.contains("dropped"))
        );
    }

    #[test]
    fn a_replier_answers_once() {
        let (tx, rx) = mpsc::channel();
        Replier::new(move |r| drop(tx.send(r))).send(Ok(7));
        let answers: Vec<_> = rx.try_iter().collect();
        assert!(matches!(answers[..], [Ok(7)]), "{answers:?}");
    }
}
