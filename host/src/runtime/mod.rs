//! The runtime: the table of live paglets, create/send/dispose, reload migration and the
//! host context paglets talk to.

mod ask;
mod code;
mod context;
mod durable;
mod inline;
mod lifecycle;
mod mailbox;
mod moving;
mod paglet;
mod pool;
mod reload;
mod waits;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use plugin_api::{Arrival, ArrivalReason, Hook, PagletError};
use serde::Serialize;
use serde_json::Value;

use crate::registry::{ClassError, LoadedLib, Registry, unix_seconds};
use crate::store::Record;
pub use context::HostContext;
pub use inline::http_workers;
pub use lifecycle::StatusFilter;
use mailbox::QueueAt;
pub use moving::{ArrivalAnswer, ArrivalBody, Net};
use paglet::Job;
pub use paglet::Paglet;
pub use paglet::Replier;
use pool::Pool;
pub use reload::RescanReply;
use waits::{InFlight, WaitGraph};

/// How long a paglet-to-paglet send waits for its reply when there is no handler timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How many messages to isolated paglets may wait for their worker on the threads of the
/// requests that sent them, outside the async runtime's workers (see `send_isolated`).
const DIRECT_CALLS: usize = 8;
/// Jobs a direct call to an isolated paglet runs for it (what queued meanwhile), before
/// handing the rest of its queue to the pool.
const DIRECT_BUDGET: usize = 16;
/// How many bytes of arguments the paglet-to-paglet sends in flight may hold together.
const IN_FLIGHT_BUDGET: usize = 64 << 20;

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
    #[error("invalid paglet id '{0}': {ID_RULE}")]
    BadId(String),
    /// The paglet answered with an error.
    #[error(transparent)]
    Paglet(#[from] PagletError),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The change happened but its write to the store failed (`sync` mode).
    #[error("{0}")]
    NotPersisted(String),
    /// The paglet sleeps in the store; activate it first.
    #[error("paglet '{0}' is inactive")]
    Inactive(String),
    /// A dispatch of the paglet is unsettled.
    #[error("paglet '{0}' is being transferred and the outcome is not known yet; retry shortly")]
    InDoubt(String),
    /// The target host lacks the paglet's class.
    #[error("{0}")]
    ClassMissing(String),
    /// The target host's code is not compatible, or cannot take the state.
    #[error("{0}")]
    Incompatible(String),
    /// The target host cannot be reached; nothing was sent.
    #[error("{0}")]
    Unreachable(String),
    /// The request names something it cannot (this host as the target).
    #[error("{0}")]
    BadRequest(String),
    /// No mesh host by that name.
    #[error("{0}")]
    NoHost(String),
    /// Another host answered with an error, relayed as it was.
    #[error("{message}")]
    Remote {
        /// Its HTTP status.
        status: u16,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The operation needs the store, and this runtime has none.
    #[error("this host has no store to keep paglets in")]
    NoStore,
    /// The worker process running the paglet died during the call.
    #[error("{0}")]
    Crashed(String),
    /// The paglet's library is quarantined.
    #[error("{0}")]
    Quarantined(String),
    /// The handler ran past the handler timeout (an isolated one's worker was stopped; an
    /// in-process one runs on, see [`RuntimeError::waited_past`]).
    #[error("{0}")]
    HandlerTimeout(String),
}

impl RuntimeError {
    /// The caller waited for in-process paglet code longer than `limit`, the handler timeout.
    pub fn waited_past(limit: Duration) -> RuntimeError {
        RuntimeError::HandlerTimeout(format!(
            "the paglet did not answer within {}s (--handler-timeout); its code runs on and \
             the paglet stays busy until it returns",
            limit.as_secs_f64()
        ))
    }
}

/// The running paglets of one host.
pub struct Runtime {
    host_name: String,
    paths: Vec<PathBuf>,
    registry: Registry,
    paglets: RwLock<HashMap<String, Arc<Paglet>>>,
    pool: Pool,
    /// How many handlers may run on HTTP workers at once.
    permits: Arc<inline::Permits>,
    /// How long callers wait for paglet code.
    handler_timeout: OnceLock<Option<Duration>>,
    /// Who waits for whom among paglet-to-paglet sends (and creates) in flight.
    waits: WaitGraph,
    /// The argument bytes those sends hold.
    in_flight: InFlight,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Stored paglets waiting for their class; their ids are taken.
    waiting: Mutex<durable::Waiting>,
    /// Saves states to the store, once one is attached.
    saver: OnceLock<Arc<durable::Saver>>,
    /// Paglets sleeping in the store, by id: only what a listing shows.
    inactive: Mutex<HashMap<String, lifecycle::Sleeper>>,
    /// One activation at a time (a message and an activation may race for one paglet).
    activating: Mutex<()>,
    /// Oneway messages queued so far (their ids).
    next_message: AtomicU64,
    /// Talking to other hosts, once the async runtime is up.
    net: OnceLock<moving::Net>,
    /// Where paglets that left went, and until when that is said.
    forwards: RwLock<HashMap<String, (String, f64)>>,
    /// Transfers accepted here: their answers, by transfer id.
    accepted: Mutex<HashMap<String, ArrivalAnswer>>,
    /// One arrival at a time (a re-sent transfer must find the first one's record).
    arriving: Mutex<()>,
    /// Operations paglets asked for on themselves from a hook, before they were in the
    /// table (`ctx.dispatch` in `arrived`); they run once they are.
    deferred: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// The worker processes of isolated libraries, once set.
    isolation: OnceLock<crate::isolation::Isolation>,
    /// Messages to isolated paglets waiting on their request's thread now.
    direct_calls: AtomicUsize,
    me: Weak<Runtime>,
}

/// Locks `mutex`, taking it over if a panicking holder poisoned it: host code never panics
/// while holding these locks (plugin panics are caught in the plugin), and the data stays
/// consistent if it did.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True on a worker thread of tokio's multi-threaded runtime (an inline runner, or a handler
/// it runs): blocking there must tell tokio first.
pub(crate) fn on_tokio_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs `f`, which blocks, telling tokio first when this thread is one of its workers, so the
/// worker's other tasks move to another thread.
pub(crate) fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    if on_tokio_worker() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The paglet id rule in words, for error messages (host names follow it too).
pub const ID_RULE: &str = "use 1 to 128 of A-Z a-z 0-9 . _ -, and not '.' or '..'";

/// The paglet id rule, which host names (`--name`) follow too: `[A-Za-z0-9._-]{1,128}`,
/// and not `.` or `..` (a path segment that means "here" or "up" can neither travel in a URL
/// nor name a folder safely).
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The error for a send (or create) that would wait on itself along `cycle`.
fn deadlock(cycle: &[String]) -> PagletError {
    PagletError::Deadlock(format!(
        "{}: each waits for the next to answer",
        cycle.join(" -> ")
    ))
}

/// How a paglet comes into being: which hook runs once it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created by a request, a paglet or a startup entry: the creation hook runs.
    New,
    /// Restored from saved state: the arrival hook runs.
    Restored,
}

/// One live paglet as `GET /paglets` lists it.
#[derive(Debug, Serialize)]
pub struct PagletSummary {
    id: String,
    class: String,
    status: &'static str,
    created_at: f64,
    messages_handled: u64,
}

/// One paglet as `GET /paglets/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct PagletDetail {
    id: String,
    class: String,
    /// `active` or `inactive`.
    status: &'static str,
    created_at: f64,
    messages_handled: u64,
    busy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<Value>,
    /// The library generation it runs on (absent while inactive).
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// The library file it runs on (absent while inactive).
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    /// Oneway messages to it that failed since it was last loaded here.
    oneway_failed: u64,
    /// Crashes of its worker process since it was loaded here (isolated libraries).
    crashes: u64,
    /// The last of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_crash: Option<crate::isolation::Crash>,
}

impl Runtime {
    /// A runtime over `registry`, with `workers` threads for paglet code.
    pub fn new(
        host_name: String,
        paths: Vec<PathBuf>,
        registry: Registry,
        workers: usize,
    ) -> std::io::Result<Arc<Runtime>> {
        waits::map_large_blocks();
        let pool = Pool::new(workers)?;
        Ok(Arc::new_cyclic(|me| Runtime {
            host_name,
            paths,
            registry,
            paglets: RwLock::default(),
            pool,
            permits: inline::Permits::new(inline::inline_permits()),
            handler_timeout: OnceLock::new(),
            waits: WaitGraph::default(),
            in_flight: InFlight::new(IN_FLIGHT_BUDGET),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            waiting: Mutex::default(),
            saver: OnceLock::new(),
            inactive: Mutex::default(),
            activating: Mutex::default(),
            next_message: AtomicU64::new(1),
            net: OnceLock::new(),
            forwards: RwLock::default(),
            accepted: Mutex::default(),
            arriving: Mutex::default(),
            deferred: Mutex::default(),
            isolation: OnceLock::new(),
            direct_calls: AtomicUsize::new(0),
            me: me.clone(),
        }))
    }

    /// The table of live paglets, read-locked.
    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Paglet>>> {
        self.paglets.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry, locked.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn paglet(&self, id: &str) -> Result<Arc<Paglet>, RuntimeError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NoPaglet(id.into()))
    }

    fn context(&self, id: &str, class: &str) -> HostContext {
        HostContext {
            runtime: self.me.clone(),
            id: id.into(),
            class: class.into(),
        }
    }

    /// True when a paglet with `id` is here: live, inactive, or waiting for its class.
    pub fn exists(&self, id: &str) -> bool {
        self.paglet(id).is_ok() || self.is_waiting(id) || self.is_inactive(id)
    }

    /// Number of live paglets.
    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// Creates a paglet and runs its creation hook (or, when restored, its arrival hook).
    /// Blocks while paglet code runs.
    pub fn create(
        &self,
        class: &str,
        state: Option<&Value>,
        id: Option<&str>,
        origin: Origin,
    ) -> Result<String, RuntimeError> {
        self.create_for(None, class, state, id, origin)
    }

    /// [`create`](Runtime::create), by paglet `creator` (inside its handler) when given: the
    /// creator waits for the new paglet's hooks, so a hook that sends to the creator is a
    /// deadlock, refused at once.
    fn create_for(
        &self,
        creator: Option<&str>,
        class: &str,
        state: Option<&Value>,
        id: Option<&str>,
        origin: Origin,
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
        let _waiting = match creator {
            Some(creator) => Some(
                self.waits
                    .wait(creator, &id)
                    .map_err(|cycle| RuntimeError::Paglet(deadlock(&cycle)))?,
            ),
            None => None,
        };
        self.start(lib, class, state, id, origin, None)
    }

    /// Creates the instance, runs its hook and puts it in the table. A `stored` paglet (being
    /// restored) keeps its creation time and message count and is not written again; any
    /// other is written to the store before it is answered (see `durable.rs`).
    fn start(
        &self,
        lib: Arc<LoadedLib>,
        class: &str,
        state: Option<&Value>,
        id: String,
        origin: Origin,
        stored: Option<&Record>,
    ) -> Result<String, RuntimeError> {
        // A stored paglet is restored from the waiting list, which holds its id.
        let taken = |paglets: &HashMap<String, Arc<Paglet>>| {
            paglets.contains_key(&id)
                || (stored.is_none() && (self.is_waiting(&id) || self.is_inactive(&id)))
        };
        if taken(&self.table()) {
            return Err(RuntimeError::Duplicate(id));
        }
        let context = self.context(&id, class);
        // A stored state is read as the code that wrote it left it: its version decides
        // whether the class's `upgrade` runs (a newer version than the code's is refused).
        let version = stored.filter(|_| state.is_some()).map(|r| r.state_version);
        let mut instance = self.instantiate(&lib, class, state, version, context)?;
        instance.hook(match origin {
            Origin::New => Hook::Created,
            Origin::Restored => {
                Hook::Arrived(Arrival::new(ArrivalReason::Restore, self.host_name.clone()))
            }
        })?;
        let mut paglet = Paglet::new(id.clone(), class.into(), lib, instance, self.saver());
        if let Some(record) = stored {
            paglet.keep_history(record.created_at, record.messages_handled);
        }
        let paglet = Arc::new(paglet);
        let commit = {
            let mut paglets = self.paglets.write().unwrap_or_else(PoisonError::into_inner);
            if taken(&paglets) {
                return Err(RuntimeError::Duplicate(id));
            }
            paglets.insert(id.clone(), paglet.clone());
            // Queued while no message can reach the paglet yet, so its first record is never
            // written after a newer one.
            match stored {
                None => self.save_new(&paglet),
                Some(_) => None,
            }
        };
        let answer = self.created(id, commit);
        if let Ok(id) = &answer {
            self.run_deferred(id);
        }
        answer
    }

    fn fresh_id(&self, class: &str) -> String {
        loop {
            let id = plugin_api::loader::generated_id(
                class,
                self.next_id.fetch_add(1, Ordering::Relaxed),
            );
            if !self.exists(&id) {
                return id;
            }
        }
    }

    /// The live paglet `id`, to send a message to.
    fn for_message(&self, id: &str) -> Result<Arc<Paglet>, RuntimeError> {
        let paglet = match self.paglet(id) {
            Ok(paglet) => paglet,
            Err(_) if self.is_inactive(id) => return Err(RuntimeError::Inactive(id.into())),
            Err(e) => return Err(e),
        };
        if paglet.in_doubt.load(Ordering::Acquire) {
            return Err(RuntimeError::InDoubt(id.into()));
        }
        Ok(paglet)
    }

    /// Limits how long callers wait for paglet code (`--handler-timeout`; `None`: as long as
    /// it takes). Set once, before serving.
    pub fn limit_handlers(&self, timeout: Option<Duration>) {
        let _ = self.handler_timeout.set(timeout);
    }

    /// How long a caller waits for paglet code.
    pub fn handler_timeout(&self) -> Option<Duration> {
        self.handler_timeout.get().copied().flatten()
    }

    /// How long a caller waits for `paglet`'s code: its isolated library's own handler
    /// timeout (its worker is stopped past it), else the host's.
    pub(super) fn handler_timeout_of(&self, paglet: &Paglet) -> Option<Duration> {
        if paglet.is_isolated()
            && let Some(isolated) = self.isolated(&paglet.code())
        {
            return isolated.handler_timeout();
        }
        self.handler_timeout()
    }

    /// How long a paglet-to-paglet send to `target` waits for its reply: its handler
    /// timeout, or [`SEND_TIMEOUT`] when that is off.
    fn send_timeout(&self, target: &Paglet) -> Duration {
        self.handler_timeout_of(target).unwrap_or(SEND_TIMEOUT)
    }

    /// A message to an isolated paglet. Its handler runs in another process, so this thread
    /// only waits: when the paglet is idle and fewer than [`DIRECT_CALLS`] such waits are
    /// under way, the request's own thread sends it and reads the answer (taken out of the
    /// async runtime's workers first, so that HTTP keeps all of them), saving the two thread
    /// hand-offs of the pool; otherwise it queues like any message.
    pub(super) fn send_isolated(&self, paglet: &Arc<Paglet>, job: Job) {
        let taken = self
            .direct_calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < DIRECT_CALLS).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            paglet.push(job, QueueAt::Back, &self.pool);
            return;
        }
        if paglet.try_claim() {
            let run = || {
                paglet.run(job);
                paglet.drain(&self.pool, DIRECT_BUDGET);
            };
            blocking_here(run);
        } else {
            paglet.push(job, QueueAt::Back, &self.pool);
        }
        self.direct_calls.fetch_sub(1, Ordering::AcqRel);
    }

    /// Removes a paglet at once and runs its disposing hook after the messages queued before.
    pub fn dispose(&self, id: &str, reply: Replier<()>) -> Result<(), RuntimeError> {
        let removed = self
            .paglets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let paglet = match removed {
            Some(paglet) => paglet,
            None if self.is_inactive(id) => return Err(RuntimeError::Inactive(id.into())),
            None if self.dispose_waiting(id, reply) => return Ok(()),
            None => return Err(RuntimeError::NoPaglet(id.into())),
        };
        paglet.push(Job::Dispose { reply }, QueueAt::Back, &self.pool);
        Ok(())
    }

    /// The paglets with a status `filter` lets through, by id.
    pub fn list(&self, filter: StatusFilter) -> Vec<PagletSummary> {
        let mut list: Vec<_> = Vec::new();
        if filter.active() || filter.quarantined() {
            list.extend(self.table().values().filter_map(|p| {
                let status = self.status_of(p);
                let shown = match status {
                    "quarantined" => filter.quarantined(),
                    _ => filter.active(),
                };
                shown.then(|| PagletSummary {
                    id: p.id.clone(),
                    class: p.class.clone(),
                    status,
                    created_at: unix_seconds(p.created_at),
                    messages_handled: p.handled.load(Ordering::Relaxed),
                })
            }));
        }
        if filter.inactive() {
            list.extend(self.sleepers());
        }
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// One paglet; never waits for a busy one.
    pub fn detail(&self, id: &str) -> Result<PagletDetail, RuntimeError> {
        let paglet = match self.paglet(id) {
            Ok(paglet) => paglet,
            Err(e) => return self.sleeper_detail(id).ok_or(e),
        };
        if paglet.in_doubt.load(Ordering::Acquire) {
            return Err(RuntimeError::InDoubt(id.into()));
        }
        let status = self.status_of(&paglet);
        let (state, busy) = match paglet.try_state() {
            None => (None, status != "quarantined"),
            Some(Ok(state)) => (Some(state), false),
            // Its worker is gone for now: no state to show, the rest still is.
            Some(Err(RuntimeError::Quarantined(_) | RuntimeError::Crashed(_))) => (None, false),
            Some(Err(e)) => return Err(e),
        };
        let code = paglet.code();
        let (crashes, last_crash) = self.crashes_of(&paglet);
        Ok(PagletDetail {
            id: paglet.id.clone(),
            class: paglet.class.clone(),
            status,
            created_at: unix_seconds(paglet.created_at),
            messages_handled: paglet.handled.load(Ordering::Relaxed),
            busy,
            state,
            generation: Some(code.generation),
            sha256: Some(code.sha256.clone()),
            oneway_failed: paglet.oneway_failed.load(Ordering::Relaxed),
            crashes,
            last_crash,
        })
    }

    /// Pauses (or resumes) rescans by the folder watcher and `POST /admin/rescan`, e.g. while
    /// a build runs. Pausing waits for a rescan that is scanning to end.
    pub fn pause_watch(&self, paused: bool) {
        self.registry.pause(paused);
    }

    /// Refuses new work from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn the_id_rule_takes_names_and_refuses_paths_and_dot_segments() {
        for id in [
            "a",
            "counter-1",
            "service.counter",
            "A_b-9",
            "...",
            ".hidden",
            "a..b",
        ] {
            assert!(valid_id(id), "{id}");
        }
        let long = "x".repeat(129);
        for id in ["", ".", "..", "a/b", "../x", "bad id", "é", long.as_str()] {
            assert!(!valid_id(id), "{id}");
        }
        assert!(valid_id(&"x".repeat(128)));
    }
}

/// Tests on a runtime with a real library loaded.
#[cfg(test)]
mod with_counter {
    use std::sync::mpsc;

    use super::*;

    /// A runtime with the example `counter` loaded (built by `cargo build --workspace`).
    fn runtime_with_counter() -> (Arc<Runtime>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            paglets_e2e::example("counter"),
            dir.path().join("libcounter.so"),
        )
        .expect("copy counter");
        let registry = Registry::new(None, false).expect("registry");
        let runtime =
            Runtime::new("test".into(), vec![dir.path().into()], registry, 2).expect("runtime");
        let scan = runtime.rescan();
        assert!(scan.errors.is_empty(), "{:?}", scan.errors);
        (runtime, dir)
    }

    fn answer<T: Send + 'static>() -> (Replier<T>, mpsc::Receiver<Result<T, RuntimeError>>) {
        let (tx, rx) = mpsc::channel();
        (Replier::new(move |r| drop(tx.send(r))), rx)
    }

    #[test]
    fn a_message_that_reaches_a_disposed_paglet_is_not_found() {
        let (runtime, _dir) = runtime_with_counter();
        let id = runtime
            .create("counter::Counter", None, Some("c"), Origin::New)
            .expect("create");
        // A sender that looked the paglet up just before the disposal removed it.
        let paglet = runtime.paglet(&id).expect("live");
        let (disposed, disposal) = answer();
        runtime.dispose(&id, disposed).expect("dispose");
        let wait = Duration::from_secs(30);
        disposal
            .recv_timeout(wait)
            .expect("disposed")
            .expect("hook ran");
        let (reply, answered) = answer();
        let job = Job::Message {
            kind: "increment".into(),
            args: String::new(),
            reply,
            inline: false,
        };
        paglet.push(job, QueueAt::Back, &runtime.pool);
        let result = answered.recv_timeout(wait).expect("an answer");
        assert!(
            matches!(result, Err(RuntimeError::Paglet(PagletError::NotFound(_)))),
            "{result:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn messages_from_many_requests_each_run_once() {
        let (runtime, _dir) = runtime_with_counter();
        let id = runtime
            .create("counter::Counter", None, Some("c"), Origin::New)
            .expect("create");
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let (runtime, id) = (runtime.clone(), id.clone());
                tokio::spawn(async move {
                    let mut counts = Vec::new();
                    for _ in 0..50 {
                        let reply = runtime.ask(&id, "increment", String::new()).await;
                        let reply: Value =
                            serde_json::from_str(&reply.expect("answered")).expect("JSON");
                        counts.push(reply["count"].as_u64().expect("a count"));
                    }
                    counts
                })
            })
            .collect();
        let mut counts = Vec::new();
        for request in requests {
            counts.extend(request.await.expect("request"));
        }
        counts.sort_unstable();
        assert_eq!(
            counts,
            (1..=400).collect::<Vec<u64>>(),
            "one at a time, each once"
        );
    }
}
