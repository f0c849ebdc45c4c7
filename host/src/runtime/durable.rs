//! The runtime's side of durable state: when a paglet's state goes to the [`Store`].
//!
//! - `interval`: a message marks its paglet dirty; the checkpointer thread reads the dirty
//!   states (between two messages: under the instance lock when it is free, else as a job in
//!   the paglet's queue) and hands them to the store at most `--checkpoint-ms` after the mark.
//! - `sync`: right after a message, on the same thread, the state goes to the store and the
//!   reply waits for the commit (group commit, so waiting replies share one transaction).
//! - `shutdown`: nothing until graceful shutdown.
//!
//! Creation and disposal wait for their commit in `interval` and `sync`. Nothing here blocks
//! an HTTP worker on the disk: writes are queued to the store's writer thread.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use plugin_api::PagletError;
use serde_json::Value;

use super::Origin;
use super::code::Code;
use super::mailbox::QueueAt;
use super::paglet::{Job, Paglet, Replier};
use super::{Runtime, RuntimeError, lock};
use crate::registry::unix_seconds;
use crate::store::{Durability, Persistence, Record, Status, Store, StoreError};

/// What a paglet needs to save itself: the store, the mode, and the checkpointer's dirty list.
pub struct Saver {
    store: Arc<Store>,
    durability: Durability,
    checkpoint: Duration,
    dirty: Mutex<Vec<String>>,
    wake: Condvar,
}

impl Saver {
    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// After a message (or a migration) changed the paglet's state; `instance` is its locked
    /// instance. In `sync` mode `reply` is answered once the change committed; otherwise at
    /// once.
    pub fn after_change<T: Send + 'static>(
        &self,
        paglet: &Paglet,
        instance: &Code,
        result: Result<T, RuntimeError>,
        reply: Replier<T>,
    ) {
        match self.durability {
            Durability::Sync => match paglet.record(instance) {
                // Unchanged since it was last handed to the store (a read): nothing to wait for.
                Ok(record) if !paglet.note_saved(&record.state) => reply.send(result),
                Ok(record) => self.store.put(
                    record,
                    Some(Box::new(move |written| {
                        reply.send(written.map_err(not_persisted).and(result))
                    })),
                ),
                // Its worker died before the change was read: the change is lost with it, and
                // the paglet comes back from the state before.
                Err(e @ (RuntimeError::Crashed(_) | RuntimeError::HandlerTimeout(_))) => reply
                    .send(Err(RuntimeError::Crashed(format!(
                        "{e} (its change was lost before it was saved)"
                    )))),
                Err(e) => reply.send(Err(not_persisted(StoreError::Write(format!(
                    "the state of {} cannot be read: {e}",
                    paglet.id
                ))))),
            },
            Durability::Interval => {
                if !paglet.dirty.swap(true, Ordering::AcqRel) {
                    lock(&self.dirty).push(paglet.id.clone());
                    self.wake.notify_one();
                }
                reply.send(result);
            }
            Durability::Shutdown => reply.send(result),
        }
    }

    /// After the disposing hook ran (the paglet is out of the table): the record goes, and
    /// `reply` is answered once that committed (at once in `shutdown` mode).
    pub fn after_dispose(&self, id: &str, result: Result<(), RuntimeError>, reply: Replier<()>) {
        if self.durability == Durability::Shutdown {
            return reply.send(result);
        }
        self.store.remove(
            id,
            Some(Box::new(move |written| {
                reply.send(written.map_err(not_persisted).and(result))
            })),
        );
    }
}

/// A store error as the runtime reports it: the change is not durable (yet).
pub(super) fn not_persisted(e: StoreError) -> RuntimeError {
    RuntimeError::NotPersisted(e.to_string())
}

impl Paglet {
    /// Remembers `state` as the last one handed to the store; false when it is the same as
    /// the one before.
    pub fn note_saved(&self, state: &str) -> bool {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(state, &mut hasher);
        let hash = std::hash::Hasher::finish(&hasher);
        self.saved_state.swap(hash, Ordering::AcqRel) != hash
    }

    /// The record of this paglet with `instance`'s current state.
    pub fn record(&self, instance: &Code) -> Result<Record, RuntimeError> {
        let code = self.code();
        let info = code.library.info();
        Ok(Record {
            id: self.id.clone(),
            class: self.class.clone(),
            state: instance.state()?,
            state_version: instance.state_version(),
            library: info.name.clone(),
            library_version: info.version.clone(),
            library_sha256: code.sha256.clone(),
            status: Status::Active,
            created_at: unix_seconds(self.created_at),
            messages_handled: self.handled.load(Ordering::Relaxed),
            queued: None,
        })
    }
}

impl Runtime {
    /// Starts saving to `store` as `durability` says (`checkpoint` is the interval mode's
    /// window) and returns the paglets found in it, to be [restored](Runtime::restore).
    pub fn attach_store(&self, store: Arc<Store>, durability: Durability, checkpoint: Duration) {
        let saver = Arc::new(Saver {
            store,
            durability,
            checkpoint,
            dirty: Mutex::default(),
            wake: Condvar::new(),
        });
        if durability == Durability::Interval {
            let (me, saver) = (self.me.clone(), saver.clone());
            let spawned = std::thread::Builder::new()
                .name("checkpointer".into())
                .spawn(move || checkpointer(&me, &saver));
            if let Err(e) = spawned {
                tracing::error!(
                    "cannot start the checkpointer ({e}); states are saved at shutdown"
                );
            }
        }
        if self.saver.set(saver).is_err() {
            tracing::error!("a store was attached twice; the first one stays");
        }
    }

    /// The saver, once a store is attached.
    pub(super) fn saver(&self) -> Option<Arc<Saver>> {
        self.saver.get().cloned()
    }

    /// Whether writes reach the disk (`ok` without a store).
    pub fn persistence(&self) -> Persistence {
        self.saver
            .get()
            .map_or(Persistence::Ok, |s| s.store.persistence())
    }

    /// The durability mode (`shutdown` without a store).
    pub fn durability(&self) -> Durability {
        self.saver
            .get()
            .map_or(Durability::Shutdown, |s| s.durability)
    }

    /// Writes a new paglet's first record while holding the table's write lock (so no message
    /// can reach it first) and returns the wait for the commit, in `interval` and `sync`.
    pub(super) fn save_new(
        &self,
        paglet: &Paglet,
    ) -> Option<std::sync::mpsc::Receiver<Result<(), StoreError>>> {
        let saver = self.saver.get()?;
        if saver.durability == Durability::Shutdown {
            return None;
        }
        let record = paglet.with_instance(|instance| paglet.record(instance));
        let (tx, rx) = std::sync::mpsc::channel();
        match record {
            Ok(record) => {
                paglet.note_saved(&record.state);
                saver
                    .store
                    .put(record, Some(Box::new(move |r| drop(tx.send(r)))));
            }
            Err(e) => drop(tx.send(Err(StoreError::Write(format!(
                "the state of {} cannot be read: {e}",
                paglet.id
            ))))),
        }
        Some(rx)
    }

    /// What to tell the creator once the first record's commit is known: a failed commit is
    /// 503 `not-persisted` in `sync` mode; in `interval` mode `/health` shows it.
    pub(super) fn created(
        &self,
        id: String,
        commit: Option<std::sync::mpsc::Receiver<Result<(), StoreError>>>,
    ) -> Result<String, RuntimeError> {
        let Some(commit) = commit else {
            return Ok(id);
        };
        let wait = || commit.recv().unwrap_or(Err(StoreError::Closed));
        // A paglet creating another from an inline runner on an HTTP worker (see `ask.rs`):
        // tell tokio before blocking it on the disk, so the worker's other tasks move on.
        let written = super::blocking_here(wait);
        match written {
            Err(e) if self.durability() == Durability::Sync => Err(not_persisted(e)),
            _ => Ok(id),
        }
    }

    /// Restores stored paglets whose class is loaded; the others wait for their class (their
    /// ids stay taken) and come up when a rescan loads it.
    pub fn restore(&self, records: Vec<Record>) {
        let started = Instant::now();
        let total = records.len();
        let (asleep, records): (Vec<Record>, Vec<Record>) = records
            .into_iter()
            .partition(|r| r.status == Status::Inactive);
        let inactive = asleep.len();
        self.note_sleepers(asleep.into_iter());
        let mut waiting = lock(&self.waiting);
        waiting.extend(records.into_iter().map(|r| (r.id.clone(), r)));
        drop(waiting);
        let restored = self.restore_waiting();
        // The records read at start (states included, inactive paglets' too) are freed now;
        // give their memory back rather than keep it in the allocator's arenas.
        super::waits::give_back_memory();
        if total > 0 {
            tracing::info!(
                restored,
                inactive,
                waiting = total - restored - inactive,
                took_ms = started.elapsed().as_millis() as u64,
                "restored stored paglets"
            );
        }
    }

    /// Starts every waiting paglet whose class is now loaded; returns how many started.
    pub fn restore_waiting(&self) -> usize {
        let candidates: Vec<Record> = {
            let waiting = lock(&self.waiting);
            if waiting.is_empty() {
                return 0;
            }
            let registry = self.registry();
            waiting
                .values()
                .filter(|r| r.status == Status::Active && registry.class(&r.class).is_ok())
                .cloned()
                .collect()
        };
        let mut restored = 0;
        for record in candidates {
            match self.revive(&record) {
                Ok(()) => {
                    restored += 1;
                    tracing::debug!(paglet = %record.id, class = %record.class, "restored");
                }
                Err(e) => {
                    tracing::warn!(paglet = %record.id, class = %record.class, "not restored, kept in the store: {e}")
                }
            }
        }
        let waiting = lock(&self.waiting);
        let registry = self.registry();
        let missing = |r: &&Record| r.status == Status::Active && registry.class(&r.class).is_err();
        for record in waiting.values().filter(missing) {
            tracing::warn!(paglet = %record.id, class = %record.class, "not restored: its class is not loaded; it waits in the store and runs once the class appears");
        }
        restored
    }

    /// One stored paglet back to life (arrival hook), with its creation time and count.
    fn revive(&self, record: &Record) -> Result<(), RuntimeError> {
        let state: Value = serde_json::from_str(&record.state)
            .map_err(|e| RuntimeError::Paglet(PagletError::Failed(format!("stored state: {e}"))))?;
        let lib = self.registry().class(&record.class)?;
        self.start(
            lib,
            &record.class,
            Some(&state),
            record.id.clone(),
            Origin::Restored,
            Some(record),
        )?;
        lock(&self.waiting).remove(&record.id);
        Ok(())
    }

    /// True when `id` is stored but waits for its class.
    pub(super) fn is_waiting(&self, id: &str) -> bool {
        lock(&self.waiting).contains_key(id)
    }

    /// Forgets a waiting paglet (`DELETE` of a paglet whose class is missing); false when
    /// `id` is not waiting.
    pub(super) fn dispose_waiting(&self, id: &str, reply: Replier<()>) -> bool {
        if lock(&self.waiting).remove(id).is_none() {
            return false;
        }
        match self.saver() {
            Some(saver) => saver.after_dispose(id, Ok(()), reply),
            None => reply.send(Ok(())),
        }
        true
    }

    /// Graceful shutdown: waits up to `grace` for running handlers, then writes every idle
    /// paglet in one transaction and closes the store. A paglet still busy keeps its last
    /// durable state (its record is left as it is); records of paglets that are gone are
    /// removed. Returns how many states were written.
    pub fn save_at_shutdown(&self, grace: Duration) -> Result<usize, StoreError> {
        let Some(saver) = self.saver() else {
            return Ok(0);
        };
        let deadline = Instant::now() + grace;
        let paglets: Vec<Arc<Paglet>> = self.table().values().cloned().collect();
        while paglets.iter().any(|s| !s.is_idle()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut keep: HashSet<String> = lock(&self.waiting).keys().cloned().collect();
        keep.extend(lock(&self.inactive).keys().cloned());
        let mut records = Vec::with_capacity(paglets.len());
        for paglet in paglets {
            keep.insert(paglet.id.clone());
            match paglet.try_with_instance(|instance| paglet.record(instance)) {
                Some(Ok(record)) => records.push(record),
                Some(Err(e)) => {
                    tracing::warn!(paglet = %paglet.id, "not saved, keeps its last durable state: its state failed: {e}")
                }
                None => {
                    tracing::warn!(paglet = %paglet.id, "not saved, keeps its last durable state: still busy after the grace period")
                }
            }
        }
        let written = records.len();
        let result = saver.store.save_all(records, Some(keep));
        saver.store.close();
        result.map(|()| written)
    }
}

/// The interval mode's thread: waits for a dirty mark, then saves every dirty paglet, then
/// waits `checkpoint` before the next round, so a change is written at most that long after
/// its message and a busy paglet costs at most one write per window.
fn checkpointer(runtime: &Weak<Runtime>, saver: &Saver) {
    loop {
        let ids = {
            let mut dirty = lock(&saver.dirty);
            while dirty.is_empty() {
                dirty = saver
                    .wake
                    .wait(dirty)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            std::mem::take(&mut *dirty)
        };
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        if runtime.is_shutting_down() {
            return;
        }
        let paglets: Vec<Arc<Paglet>> = {
            let table = runtime.table();
            ids.iter().filter_map(|id| table.get(id).cloned()).collect()
        };
        for paglet in paglets {
            paglet.dirty.store(false, Ordering::Release);
            // Idle: read it here, between two messages. Busy: as a job after the running one.
            let saved = paglet.try_with_instance(|instance| {
                if !paglet.is_disposed() {
                    checkpoint_one(&saver.store, &paglet, instance);
                }
            });
            if saved.is_none() {
                let store = saver.store.clone();
                let job: Checkpoint =
                    Box::new(move |paglet, instance| checkpoint_one(&store, paglet, instance));
                paglet.push(Job::Checkpoint(job), QueueAt::Back, &runtime.pool);
            }
        }
        drop(runtime);
        std::thread::sleep(saver.checkpoint);
    }
}

fn checkpoint_one(store: &Store, paglet: &Paglet, instance: &Code) {
    match paglet.record(instance) {
        Ok(record) => store.put(record, None),
        Err(e) => tracing::warn!(paglet = %paglet.id, "not checkpointed: its state failed: {e}"),
    }
}

/// A checkpoint job: reads the state between two messages and hands it to the store.
pub type Checkpoint = Box<dyn FnOnce(&Paglet, &Code) + Send>;

/// Paglets stored but not running, by id.
pub type Waiting = HashMap<String, Record>;
