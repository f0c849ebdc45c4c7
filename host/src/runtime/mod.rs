//! The runtime: the instance table, create/send/dispose, reload migration and the host
//! context paglets talk to.

mod context;
mod instance;
mod pool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use plugin_api::{Hook, PagletError};
use serde::Serialize;
use serde_json::Value;

use crate::persist::Saved;
use crate::registry::{ClassError, FileError, Registry, unix_seconds};
pub use context::HostCtx;
pub use instance::Slot;
use instance::{Job, Replier};
use pool::Pool;

/// Jobs an HTTP worker runs for an instance it ran a message for inline, before handing the
/// rest of its queue to the pool.
const INLINE_BUDGET: usize = 16;
/// How long a paglet-to-paglet send waits for its reply.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rescan waits for idle instances to migrate before listing them as pending.
const MIGRATION_WAIT: Duration = Duration::from_secs(2);

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No paglet with this id.
    #[error("no paglet with id '{0}'")]
    NoPaglet(String),
    /// The class cannot be created.
    #[error(transparent)]
    Class(#[from] ClassError),
    /// The id is taken.
    #[error("a paglet with id '{0}' already exists")]
    Duplicate(String),
    /// The id is malformed.
    #[error("invalid paglet id '{0}': use 1 to 128 of A-Z a-z 0-9 . _ - (not . or ..)")]
    BadId(String),
    /// The paglet answered with an error.
    #[error(transparent)]
    Paglet(#[from] PagletError),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// The running paglets of one host.
pub struct Runtime {
    host_name: String,
    paths: Vec<PathBuf>,
    registry: Mutex<Registry>,
    instances: RwLock<HashMap<String, Arc<Slot>>>,
    pool: Pool,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    watch_paused: AtomicBool,
    /// Saved paglets whose class is not loaded; kept and saved again.
    unrestored: Mutex<Vec<Saved>>,
    me: Weak<Runtime>,
}

/// Locks `mutex`, taking it over if a panicking holder poisoned it: host code never panics
/// while holding these locks (plugin panics are caught in the plugin), and the data stays
/// consistent if it did.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The id rule, for paglet ids and host names alike: `[A-Za-z0-9._-]{1,128}`, and not `.`
/// or `..` (either would name a folder other than its own when joined into a path or URL).
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One live paglet as `GET /paglets` lists it.
#[derive(Debug, Serialize)]
pub struct PagletSummary {
    id: String,
    class: String,
    created_at: f64,
    messages_handled: u64,
}

/// One paglet as `GET /paglets/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct PagletDetail {
    id: String,
    class: String,
    created_at: f64,
    messages_handled: u64,
    busy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Value>,
    generation: u64,
    sha256: String,
}

/// An instance that could not move to new code.
#[derive(Debug, Serialize)]
pub struct MigrationFailure {
    /// The instance.
    pub id: String,
    /// Why it stays on its old code.
    pub error: String,
}

/// What `POST /admin/rescan` returns.
#[derive(Debug, Serialize)]
pub struct RescanReply {
    loaded: Vec<PathBuf>,
    reloaded: Vec<PathBuf>,
    removed: Vec<PathBuf>,
    /// Files refused by this scan.
    pub errors: Vec<FileError>,
    migrated: Vec<String>,
    /// Instances that stay on their old code, and why.
    pub migration_failed: Vec<MigrationFailure>,
    /// Instances still busy; each migrates when it becomes idle.
    pending: Vec<String>,
}

impl RescanReply {
    /// True when a library was loaded, reloaded or removed.
    pub fn changed(&self) -> bool {
        !(self.loaded.is_empty() && self.reloaded.is_empty() && self.removed.is_empty())
    }
}

impl Runtime {
    /// A runtime over `registry`, with `workers` threads for paglet code.
    pub fn new(
        host_name: String,
        paths: Vec<PathBuf>,
        registry: Registry,
        workers: usize,
    ) -> std::io::Result<Arc<Runtime>> {
        let pool = Pool::new(workers)?;
        Ok(Arc::new_cyclic(|me| Runtime {
            host_name,
            paths,
            registry: Mutex::new(registry),
            instances: RwLock::default(),
            pool,
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            watch_paused: AtomicBool::new(false),
            unrestored: Mutex::default(),
            me: me.clone(),
        }))
    }

    /// The instance table, read-locked.
    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Slot>>> {
        self.instances
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry, locked.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, RuntimeError> {
        let instances = self.table();
        instances
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NoPaglet(id.into()))
    }

    fn ctx(&self, id: &str, class: &str) -> HostCtx {
        HostCtx {
            runtime: self.me.clone(),
            id: id.into(),
            class: class.into(),
        }
    }

    /// True when a paglet with `id` is live.
    pub fn exists(&self, id: &str) -> bool {
        self.slot(id).is_ok()
    }

    /// Number of live paglets.
    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// Creates a paglet and runs its creation hook (or, with `restored`, its arrival hook).
    /// Blocks while paglet code runs.
    pub fn create(
        &self,
        class: &str,
        state: Option<&Value>,
        id: Option<&str>,
        restored: bool,
    ) -> Result<String, RuntimeError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(RuntimeError::ShuttingDown);
        }
        let lib = self.registry().class(class)?;
        let id = match id {
            Some(id) if !valid_id(id) => return Err(RuntimeError::BadId(id.into())),
            Some(id) => id.to_string(),
            None => self.fresh_id(class),
        };
        if self.slot(&id).is_ok() {
            return Err(RuntimeError::Duplicate(id));
        }
        let mut paglet = lib.library.create(class, state, self.ctx(&id, class))?;
        paglet.hook(if restored {
            Hook::Arrived
        } else {
            Hook::Created
        })?;
        let slot = Arc::new(Slot::new(id.clone(), class.into(), lib, paglet));
        let mut instances = self
            .instances
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if instances.contains_key(&id) {
            return Err(RuntimeError::Duplicate(id));
        }
        instances.insert(id.clone(), slot);
        Ok(id)
    }

    fn fresh_id(&self, class: &str) -> String {
        let stem = class.rsplit("::").next().unwrap_or(class).to_lowercase();
        loop {
            let id = format!("{stem}-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
            if self.slot(&id).is_err() {
                return id;
            }
        }
    }

    /// Queues a message; the reply arrives through `reply`.
    pub fn send(
        &self,
        id: &str,
        kind: &str,
        args: String,
        reply: Replier<String>,
    ) -> Result<(), RuntimeError> {
        let slot = self.slot(id)?;
        let job = Job::Message {
            kind: kind.into(),
            args,
            chain: Vec::new(),
            reply,
        };
        if slot.runs_inline() && slot.try_claim() {
            // A proven-fast handler on an idle instance: two thread hand-offs would cost
            // more than the handler itself.
            slot.run(job);
            // Messages that arrived meanwhile (other connections) run here too, up to a
            // budget, rather than being handed to the pool one by one.
            slot.drain(&self.pool, INLINE_BUDGET);
        } else {
            slot.push(job, false, &self.pool);
        }
        Ok(())
    }

    /// Removes a paglet at once and runs its disposing hook after the messages queued before.
    pub fn dispose(&self, id: &str, reply: Replier<()>) -> Result<(), RuntimeError> {
        let slot = {
            let mut instances = self
                .instances
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            instances
                .remove(id)
                .ok_or_else(|| RuntimeError::NoPaglet(id.into()))?
        };
        slot.push(Job::Dispose { reply }, false, &self.pool);
        Ok(())
    }

    /// Every live paglet.
    pub fn list(&self) -> Vec<PagletSummary> {
        let instances = self.table();
        let mut list: Vec<_> = instances
            .values()
            .map(|s| PagletSummary {
                id: s.id.clone(),
                class: s.class.clone(),
                created_at: unix_seconds(s.created_at),
                messages_handled: s.handled.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// One paglet; never waits for a busy one.
    pub fn detail(&self, id: &str) -> Result<PagletDetail, RuntimeError> {
        let slot = self.slot(id)?;
        let state = slot.try_state().transpose()?;
        let code = slot.code();
        Ok(PagletDetail {
            id: slot.id.clone(),
            class: slot.class.clone(),
            created_at: unix_seconds(slot.created_at),
            messages_handled: slot.handled.load(Ordering::Relaxed),
            busy: state.is_none(),
            state,
            generation: code.generation,
            sha256: code.sha256.clone(),
        })
    }

    /// Scans the paths and migrates the instances of reloaded libraries.
    pub fn rescan(&self) -> RescanReply {
        let report = self.registry().scan(&self.paths);
        let (tx, rx) = std::sync::mpsc::channel::<(String, Result<(), PagletError>)>();
        let mut waiting = Vec::new();
        for lib in &report.reloaded {
            let slots: Vec<Arc<Slot>> = {
                let instances = self.table();
                instances
                    .values()
                    .filter(|s| s.code().source == lib.source)
                    .cloned()
                    .collect()
            };
            for slot in slots {
                let (id, tx, me) = (slot.id.clone(), tx.clone(), self.me.clone());
                let source = lib.source.clone();
                let ctx = self.ctx(&id, &slot.class);
                let done: Replier<()> = Box::new(move |result| {
                    if let Err(e) = &result {
                        tracing::warn!(paglet = %id, library = %source.display(), "stays on its old code: {e}");
                        if let Some(rt) = me.upgrade() {
                            rt.registry()
                                .note_migration_error(&source, format!("{id}: {e}"));
                        }
                    }
                    let _ = tx.send((id, result));
                });
                let ctx = Box::new(move || ctx);
                slot.push(
                    Job::Migrate {
                        lib: lib.clone(),
                        ctx,
                        done,
                    },
                    true,
                    &self.pool,
                );
                waiting.push(slot.id.clone());
            }
        }
        drop(tx);
        let deadline = Instant::now() + MIGRATION_WAIT;
        let (mut migrated, mut failed) = (Vec::new(), Vec::new());
        while migrated.len() + failed.len() < waiting.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((id, Ok(()))) => migrated.push(id),
                Ok((id, Err(e))) => failed.push(MigrationFailure {
                    id,
                    error: e.to_string(),
                }),
                Err(_) => break,
            }
        }
        let pending = waiting
            .into_iter()
            .filter(|id| !migrated.contains(id) && !failed.iter().any(|f| f.id == *id))
            .collect();
        RescanReply {
            loaded: report.loaded,
            reloaded: report.reloaded.iter().map(|l| l.source.clone()).collect(),
            removed: report.removed,
            errors: report.errors,
            migrated,
            migration_failed: failed,
            pending,
        }
    }

    /// Restores saved paglets whose class is loaded; keeps the others for the next save.
    pub fn restore(&self, saved: Vec<Saved>) {
        let mut missing = Vec::new();
        for item in saved {
            match self.create(&item.class, Some(&item.state), Some(&item.id), true) {
                Ok(_) => tracing::info!(paglet = %item.id, class = %item.class, "restored"),
                Err(e) => {
                    tracing::warn!(paglet = %item.id, class = %item.class, "not restored, kept on disk: {e}");
                    missing.push(item);
                }
            }
        }
        *lock(&self.unrestored) = missing;
    }

    /// Pauses (or resumes) rescans by the folder watcher, e.g. while a build runs.
    pub fn pause_watch(&self, paused: bool) {
        self.watch_paused.store(paused, Ordering::Release);
    }

    /// True while the watcher must not rescan.
    pub fn watch_paused(&self) -> bool {
        self.watch_paused.load(Ordering::Acquire)
    }

    /// Refuses new work from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Waits up to `grace` for running handlers, then snapshots every idle paglet. Busy ones
    /// are named in the log and left out.
    pub fn snapshot(&self, grace: Duration) -> Vec<Saved> {
        let deadline = Instant::now() + grace;
        let slots: Vec<Arc<Slot>> = {
            let instances = self.table();
            instances.values().cloned().collect()
        };
        while slots.iter().any(|s| !s.is_idle()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut saved = lock(&self.unrestored).clone();
        for slot in slots {
            match slot.try_state() {
                Some(Ok(state)) => saved.push(Saved {
                    id: slot.id.clone(),
                    class: slot.class.clone(),
                    state,
                }),
                Some(Err(e)) => {
                    tracing::warn!(paglet = %slot.id, "not saved: its state failed: {e}")
                }
                None => {
                    tracing::warn!(paglet = %slot.id, "not saved: still busy after the grace period")
                }
            }
        }
        saved
    }
}
