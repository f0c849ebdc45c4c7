//! Worker processes for isolated libraries (`--isolate LIBRARY`, `[[isolate]]`).
//!
//! Each isolated library runs its paglets in one worker process, the `paglets worker`
//! subcommand of this same executable, over a Unix socket ([`wire`]). [`Isolated`] is one
//! library's worker as the host sees it (starting, running, quarantined), [`Remote`] one
//! instance in it with the methods of a loaded `Instance`. One supervisor thread starts
//! every worker (the parent-death signal follows the thread that forked), reaps them,
//! samples their memory and kills those past a limit or a handler timeout. A dead worker is
//! a crash: calls in flight fail, a new worker starts at once, and each instance comes back
//! from its durable state on its next call. Five crashes in 60 s quarantine the library
//! until it is reloaded.

mod conn;
mod spawn;
pub mod wire;
pub mod worker;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use plugin_api::loader::HostContext;
use plugin_api::{Arrival, ArrivalReason, Hook, PagletError};
use serde::Serialize;

use conn::{CallFailure, Conn, OnBack};
use wire::{Back, Call, Done, WireError};

/// Crashes within [`CRASH_WINDOW`] that quarantine a library.
const QUARANTINE_CRASHES: usize = 5;
/// See [`QUARANTINE_CRASHES`].
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// How often the supervisor looks at its workers (memory, deadlines, exits).
const TICK: Duration = Duration::from_millis(20);
/// How long a call waits for a worker to (re)start.
const START_WAIT: Duration = Duration::from_secs(10);

/// What `[[isolate]]` says about one library.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The library's name (as `/libraries` shows it) or its file's stem without `lib`.
    pub library: String,
    /// Resident memory past which the worker is killed.
    pub memory_limit: Option<u64>,
    /// How long a handler or hook may run before its worker is killed.
    pub handler_timeout: Option<Duration>,
}

/// Why a call to an isolated instance failed.
#[derive(Debug)]
pub enum IsolationError {
    /// The paglet answered with an error.
    Paglet(PagletError),
    /// The worker died while the call ran (or could not start).
    Crashed(String),
    /// The library is quarantined.
    Quarantined(String),
    /// The call ran past the handler timeout; the worker was killed.
    HandlerTimeout(String),
}

impl From<PagletError> for IsolationError {
    fn from(e: PagletError) -> Self {
        IsolationError::Paglet(e)
    }
}

/// One crash, as `GET /paglets/{id}` shows the last one.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    /// When, in Unix seconds.
    pub at: f64,
    /// `signal`, `exit`, `memory-limit`, `handler-timeout` or `start-failed`.
    pub reason: String,
    /// The signal that ended the worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Its exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Makes the host context of paglet `(id, class)`: what a worker's asks run against.
pub type Contexts = Arc<dyn Fn(&str, &str) -> Box<dyn HostContext> + Send + Sync>;
/// The durable state of paglet `id` and its state version, to bring it back after a crash.
pub type Recover = Arc<dyn Fn(&str) -> Option<(String, u32)> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No worker yet: the first call starts one.
    Idle,
    Starting,
    Running,
    Quarantined,
    /// The host is stopping.
    Stopped,
}

struct Inner {
    phase: Phase,
    conn: Option<Arc<Conn>>,
    /// +1 per worker started: instances of an older epoch are gone.
    epoch: u64,
    pid: Option<u32>,
    recent: VecDeque<Instant>,
    crashes: u64,
    last_crash: Option<Crash>,
    /// Why the host itself killed the running worker.
    kill_reason: Option<&'static str>,
}

/// One isolated library's worker.
pub struct Isolated {
    settings: Settings,
    inner: Mutex<Inner>,
    changed: Condvar,
    supervisor: Mutex<Sender<Request>>,
    on_back: OnBack,
    recover: Recover,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Request {
    Start(Arc<Isolated>),
    /// A caller saw the socket close: look at the worker now.
    Closed,
    Stop,
}

/// The isolated libraries of one host and their supervisor.
pub struct Isolation {
    libraries: Vec<Arc<Isolated>>,
    supervisor: Option<Sender<Request>>,
}

impl Isolation {
    /// The libraries `settings` name; a supervisor thread starts when there is one.
    pub fn new(
        settings: Vec<Settings>,
        contexts: Contexts,
        recover: Recover,
    ) -> std::io::Result<Isolation> {
        if settings.is_empty() {
            return Ok(Isolation {
                libraries: Vec::new(),
                supervisor: None,
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let on_back = on_back(contexts);
        let libraries = settings
            .into_iter()
            .map(|settings| {
                Arc::new(Isolated {
                    settings,
                    inner: Mutex::new(Inner {
                        phase: Phase::Idle,
                        conn: None,
                        epoch: 0,
                        pid: None,
                        recent: VecDeque::new(),
                        crashes: 0,
                        last_crash: None,
                        kill_reason: None,
                    }),
                    changed: Condvar::new(),
                    supervisor: Mutex::new(tx.clone()),
                    on_back: on_back.clone(),
                    recover: recover.clone(),
                })
            })
            .collect();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || supervise(&rx))?;
        Ok(Isolation {
            libraries,
            supervisor: Some(tx),
        })
    }

    /// The worker of the library named `name` (or whose file is `path`), when it is isolated.
    pub fn find(&self, name: &str, path: &Path) -> Option<Arc<Isolated>> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.strip_prefix("lib").unwrap_or(s));
        self.libraries
            .iter()
            .find(|l| l.settings.library == name || Some(l.settings.library.as_str()) == stem)
            .cloned()
    }

    /// Lifts the quarantine of the library named `name` (or whose file is `path`): it was
    /// reloaded.
    pub fn lift(&self, name: &str, path: &Path) {
        if let Some(library) = self.find(name, path) {
            library.lift();
        }
    }

    /// Tells every worker to leave (after the host saved its paglets).
    pub fn stop(&self) {
        for library in &self.libraries {
            let mut inner = lock(&library.inner);
            inner.phase = Phase::Stopped;
            if let Some(conn) = inner.conn.take() {
                conn.close();
            }
            drop(inner);
            library.changed.notify_all();
        }
        if let Some(tx) = &self.supervisor {
            let _ = tx.send(Request::Stop);
        }
    }
}

/// How the host answers a worker's asks: logs at once, the rest on a thread of their own
/// (a send may wait for other paglets, even ones in this same worker).
fn on_back(contexts: Contexts) -> OnBack {
    Arc::new(move |conn, seq, from, class, back| {
        let context = contexts(&from, &class);
        if let Back::Log {
            level,
            target,
            message,
        } = &back
        {
            return context.log(worker::level_of(*level), target, message);
        }
        let conn = conn.clone();
        let run = move || {
            let result = match back {
                Back::Send { to, kind, args } => context.send(&to, &kind, &args),
                Back::Create { class, state, id } => context.create(&class, &state, id.as_deref()),
                Back::Oneway { to, kind, args } => context.send_oneway(&to, &kind, &args),
                Back::Request { op, args } => context.request(&op, &args),
                Back::Log { .. } => Ok(String::new()),
            };
            conn.answer_back(seq, result.map_err(WireError::from));
        };
        let (answer, started) = {
            let run = Arc::new(Mutex::new(Some(run)));
            let again = run.clone();
            let started = std::thread::Builder::new()
                .name("paglet-ask".into())
                .spawn(move || {
                    if let Some(run) = lock(&again).take() {
                        run();
                    }
                });
            (run, started)
        };
        if let Err(e) = started {
            tracing::error!("cannot start a thread for a worker's call: {e}");
            // Answered here, on the reading thread: better late than a worker waiting forever.
            if let Some(run) = lock(&answer).take() {
                run();
            }
        }
    })
}

impl Isolated {
    /// The library this worker runs.
    pub fn name(&self) -> &str {
        &self.settings.library
    }

    /// How long a handler or hook may run before this worker is killed.
    pub fn handler_timeout(&self) -> Option<Duration> {
        self.settings.handler_timeout
    }

    /// True while quarantined.
    pub fn is_quarantined(&self) -> bool {
        lock(&self.inner).phase == Phase::Quarantined
    }

    /// Crashes so far and the last one.
    pub fn crashes(&self) -> (u64, Option<Crash>) {
        let inner = lock(&self.inner);
        (inner.crashes, inner.last_crash.clone())
    }

    /// What `/libraries` shows of it.
    pub fn view(&self) -> serde_json::Value {
        let inner = lock(&self.inner);
        serde_json::json!({
            "isolated": true,
            "quarantined": inner.phase == Phase::Quarantined,
            "worker_pid": inner.pid,
            "crashes": inner.crashes,
            "last_crash": inner.last_crash,
            "memory_limit": self.settings.memory_limit,
            "handler_timeout_ms": self.settings.handler_timeout.map(|t| t.as_millis() as u64),
        })
    }

    fn lift(&self) {
        let mut inner = lock(&self.inner);
        if inner.phase == Phase::Quarantined {
            tracing::info!(library = %self.name(), "reloaded: quarantine lifted");
            inner.phase = Phase::Idle;
            inner.recent.clear();
        }
    }

    fn send(&self, request: Request) {
        let _ = lock(&self.supervisor).send(request);
    }

    /// The running worker's socket and epoch, starting one (and waiting for it) when needed.
    fn live(self: &Arc<Self>) -> Result<(Arc<Conn>, u64), IsolationError> {
        let deadline = Instant::now() + START_WAIT;
        let mut inner = lock(&self.inner);
        loop {
            match inner.phase {
                Phase::Running => match &inner.conn {
                    Some(conn) if !conn.is_closed() => return Ok((conn.clone(), inner.epoch)),
                    // Gone; the supervisor is told and restarts it.
                    _ => {}
                },
                Phase::Idle => {
                    inner.phase = Phase::Starting;
                    self.send(Request::Start(self.clone()));
                }
                Phase::Starting => {}
                Phase::Quarantined => return Err(self.quarantined()),
                Phase::Stopped => {
                    return Err(IsolationError::Crashed(format!(
                        "the worker of library {} has stopped: the host is shutting down",
                        self.name()
                    )));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IsolationError::Crashed(format!(
                    "the worker of library {} did not start within {}s",
                    self.name(),
                    START_WAIT.as_secs()
                )));
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn quarantined(&self) -> IsolationError {
        IsolationError::Quarantined(format!(
            "library {} is quarantined after {QUARANTINE_CRASHES} crashes of its worker within \
             {}s; reload it to lift the quarantine",
            self.name(),
            CRASH_WINDOW.as_secs()
        ))
    }

    /// What a failed call answers.
    fn failure(&self, failure: CallFailure, id: &str) -> IsolationError {
        match failure {
            CallFailure::Remote(e) => IsolationError::Paglet(e.into()),
            CallFailure::Closed { timed_out } => {
                self.send(Request::Closed);
                if timed_out {
                    IsolationError::HandlerTimeout(format!(
                        "{id} ran past the handler timeout of {} ms; the worker of library {} \
                         was killed and restarts",
                        self.settings.handler_timeout.map_or(0, |t| t.as_millis()),
                        self.name()
                    ))
                } else {
                    IsolationError::Crashed(format!(
                        "the worker of library {} crashed while {id} was running; it restarts \
                         and {id} comes back from its durable state",
                        self.name()
                    ))
                }
            }
        }
    }

    /// The socket of the worker of `epoch`, if it still runs.
    fn conn_of(&self, epoch: u64) -> Option<Arc<Conn>> {
        let inner = lock(&self.inner);
        match (&inner.conn, inner.phase) {
            (Some(conn), Phase::Running) if inner.epoch == epoch => Some(conn.clone()),
            _ => None,
        }
    }

    /// A new worker runs.
    fn running(&self, conn: Arc<Conn>, pid: u32) {
        let mut inner = lock(&self.inner);
        if inner.phase == Phase::Stopped {
            conn.close();
            return;
        }
        inner.phase = Phase::Running;
        inner.conn = Some(conn);
        inner.epoch += 1;
        inner.pid = Some(pid);
        inner.kill_reason = None;
        drop(inner);
        self.changed.notify_all();
    }

    /// The worker died (or did not start); true when a new one should start now.
    fn crashed(&self, mut crash: Crash) -> bool {
        let mut inner = lock(&self.inner);
        if let Some(conn) = inner.conn.take() {
            conn.close();
        }
        inner.pid = None;
        if inner.phase == Phase::Stopped {
            return false;
        }
        if let Some(reason) = inner.kill_reason.take() {
            crash.reason = reason.into();
        }
        let now = Instant::now();
        inner.recent.push_back(now);
        while inner
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            inner.recent.pop_front();
        }
        inner.crashes += 1;
        let detail = match (&crash.signal, crash.exit_code) {
            (Some(signal), _) => signal.clone(),
            (None, Some(code)) => format!("exit code {code}"),
            (None, None) => String::new(),
        };
        let restart = inner.recent.len() < QUARANTINE_CRASHES;
        if restart {
            tracing::warn!(library = %self.name(), reason = %crash.reason, %detail, "worker crashed; restarting it");
            inner.phase = Phase::Starting;
        } else {
            tracing::error!(library = %self.name(), reason = %crash.reason, %detail, "worker crashed {QUARANTINE_CRASHES} times within {}s: library quarantined until it is reloaded", CRASH_WINDOW.as_secs());
            inner.phase = Phase::Quarantined;
        }
        inner.last_crash = Some(crash);
        drop(inner);
        self.changed.notify_all();
        restart
    }
}

/// A running worker, as the supervisor holds it.
struct Child_ {
    library: Arc<Isolated>,
    child: Child,
    conn: Arc<Conn>,
}

/// The supervisor: starts workers, reaps them, enforces limits. Never ends while the host
/// runs (the workers' parent-death signal is tied to this thread).
fn supervise(requests: &Receiver<Request>) {
    let mut children: Vec<Child_> = Vec::new();
    let mut to_start: Vec<Arc<Isolated>> = Vec::new();
    let mut stopping = false;
    loop {
        match requests.recv_timeout(TICK) {
            Ok(Request::Start(library)) => to_start.push(library),
            Ok(Request::Closed) => {
                // The worker is dying: give it a moment to be reaped, then look.
                let deadline = Instant::now() + Duration::from_millis(200);
                while Instant::now() < deadline
                    && children
                        .iter_mut()
                        .filter(|c| c.conn.is_closed())
                        .any(|c| matches!(c.child.try_wait(), Ok(None)))
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(Request::Stop) => stopping = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        let now = Instant::now();
        let mut index = 0;
        while index < children.len() {
            let running = &mut children[index];
            if let Some(reason) = past_a_limit(running, now) {
                lock(&running.library.inner).kill_reason = Some(reason);
                let _ = running.child.kill();
            }
            let status = match running.child.try_wait() {
                Ok(Some(status)) => Some(status),
                Ok(None) if running.conn.is_closed() && stopping => {
                    // Asked to leave: it goes on its own; wait a little, then make sure.
                    let _ = running.child.kill();
                    running.child.wait().ok()
                }
                Ok(None) => {
                    running.conn.pump();
                    None
                }
                Err(_) => Some(std::os::unix::process::ExitStatusExt::from_raw(0)),
            };
            let Some(status) = status else {
                index += 1;
                continue;
            };
            let gone = children.swap_remove(index);
            if gone.library.crashed(crash_of(status)) {
                to_start.push(gone.library);
            }
        }
        for library in to_start.drain(..) {
            if stopping {
                continue;
            }
            match start(&library) {
                Ok(running) => children.push(running),
                Err(e) => {
                    let crash = Crash {
                        at: crate::registry::unix_seconds(SystemTime::now()),
                        reason: "start-failed".into(),
                        signal: None,
                        exit_code: None,
                    };
                    tracing::error!(library = %library.name(), "cannot start its worker: {e}");
                    if library.crashed(crash) {
                        // Tried again on the next tick.
                        library.send(Request::Start(library.clone()));
                    }
                }
            }
        }
        if stopping && children.is_empty() {
            // The host is about to exit; this thread stays until it does.
            loop {
                std::thread::park();
            }
        }
    }
}

fn start(library: &Arc<Isolated>) -> std::io::Result<Child_> {
    let (child, stream) = spawn::worker(library.name())?;
    let conn = Conn::new(stream, library.on_back.clone())?;
    tracing::debug!(library = %library.name(), pid = child.id(), "worker started");
    library.running(conn.clone(), child.id());
    Ok(Child_ {
        library: library.clone(),
        child,
        conn,
    })
}

/// The limit a running worker is past, if any: its memory, or a call's handler timeout.
fn past_a_limit(running: &Child_, now: Instant) -> Option<&'static str> {
    if let Some(limit) = running.library.settings.memory_limit
        && spawn::resident(running.child.id()).is_some_and(|rss| rss > limit)
    {
        return Some("memory-limit");
    }
    running.conn.overdue(now).map(|_| "handler-timeout")
}

fn crash_of(status: std::process::ExitStatus) -> Crash {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal().map(spawn::signal_name);
    Crash {
        at: crate::registry::unix_seconds(SystemTime::now()),
        reason: if signal.is_some() { "signal" } else { "exit" }.into(),
        signal,
        exit_code: status.code(),
    }
}

/// One instance in a worker: the methods of a loaded `Instance`, over the socket.
pub struct Remote {
    library: Arc<Isolated>,
    id: String,
    class: String,
    path: PathBuf,
    host_name: String,
    state_version: u32,
    /// The worker epoch and the slot it lives in there.
    at: Mutex<(u64, u64)>,
    /// The last state read, for a host without durable states.
    last: Mutex<Option<(String, u32)>>,
}

/// Where a new remote instance comes from.
pub struct Origin<'a> {
    /// The private copy of its library.
    pub path: &'a Path,
    /// Its class.
    pub class: &'a str,
    /// Its id.
    pub id: &'a str,
    /// The host's name (what its context says).
    pub host_name: &'a str,
}

impl Remote {
    /// A new instance in `library`'s worker: from a partial `state` (JSON text) when
    /// `version` is `None`, else restored from a stored state of that version. Runs no hook.
    pub fn create(
        library: &Arc<Isolated>,
        origin: &Origin<'_>,
        state: Option<String>,
        version: Option<u32>,
    ) -> Result<Remote, IsolationError> {
        let (conn, epoch) = library.live()?;
        let last = match (&state, version) {
            (Some(state), Some(version)) => Some((state.clone(), version)),
            _ => None,
        };
        let call = Call::Create {
            library: origin.path.into(),
            class: origin.class.into(),
            state,
            version,
            id: origin.id.into(),
            host_name: origin.host_name.into(),
        };
        let done = conn
            .call(call, library.settings.handler_timeout)
            .map_err(|f| library.failure(f, origin.id))?;
        let Done::Instance {
            slot,
            state_version,
        } = done
        else {
            return Err(IsolationError::Crashed(format!(
                "the worker of library {} answered a create with {done:?}",
                library.name()
            )));
        };
        Ok(Remote {
            library: library.clone(),
            id: origin.id.into(),
            class: origin.class.into(),
            path: origin.path.into(),
            host_name: origin.host_name.into(),
            state_version,
            at: Mutex::new((epoch, slot)),
            last: Mutex::new(last),
        })
    }

    /// The isolated library it runs in.
    pub fn library(&self) -> &Arc<Isolated> {
        &self.library
    }

    /// The state version of its code.
    pub fn state_version(&self) -> u32 {
        self.state_version
    }

    /// Runs `call` on the instance's slot in the running worker, bringing the instance back
    /// first if the worker it lived in died.
    fn on_slot(&self, call: impl FnOnce(u64) -> Call) -> Result<Done, IsolationError> {
        let (conn, epoch) = self.library.live()?;
        let slot = {
            let mut at = lock(&self.at);
            if at.0 != epoch {
                let (slot, _) = self.revive(&conn, &self.path, ArrivalReason::Restore)?;
                *at = (epoch, slot);
            }
            at.1
        };
        conn.call(call(slot), self.library.settings.handler_timeout)
            .map_err(|f| self.library.failure(f, &self.id))
    }

    /// Re-creates the instance in a new worker from its durable state (else the last state
    /// read) on the code at `path`, and runs `arrived`; returns its slot and state version.
    fn revive(
        &self,
        conn: &Arc<Conn>,
        path: &Path,
        reason: ArrivalReason,
    ) -> Result<(u64, u32), IsolationError> {
        let (state, version) = (self.library.recover)(&self.id)
            .or_else(|| lock(&self.last).clone())
            .ok_or_else(|| {
                IsolationError::Crashed(format!(
                    "{} cannot come back after its worker crashed: no state of it was saved",
                    self.id
                ))
            })?;
        let timeout = self.library.settings.handler_timeout;
        let create = Call::Create {
            library: path.into(),
            class: self.class.clone(),
            state: Some(state),
            version: Some(version),
            id: self.id.clone(),
            host_name: self.host_name.clone(),
        };
        let (slot, state_version) = match conn.call(create, timeout) {
            Ok(Done::Instance {
                slot,
                state_version,
            }) => (slot, state_version),
            Ok(other) => {
                return Err(IsolationError::Crashed(format!(
                    "the worker answered a create with {other:?}"
                )));
            }
            Err(f) => return Err(self.library.failure(f, &self.id)),
        };
        let arrival = Arrival::new(reason, self.host_name.clone());
        let hook = Call::Hook {
            slot,
            hook: Hook::Arrived(arrival).into(),
        };
        conn.call(hook, timeout)
            .map_err(|f| self.library.failure(f, &self.id))?;
        tracing::info!(paglet = %self.id, library = %self.library.name(), "back from its durable state after its worker crashed");
        Ok((slot, state_version))
    }

    /// Handles one message.
    pub fn handle(&self, kind: &str, args: &str) -> Result<String, IsolationError> {
        match self.on_slot(|slot| Call::Handle {
            slot,
            kind: kind.into(),
            args: args.into(),
        })? {
            Done::Text(reply) => Ok(reply),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs a hook.
    pub fn hook(&self, hook: Hook) -> Result<(), IsolationError> {
        self.on_slot(|slot| Call::Hook {
            slot,
            hook: hook.into(),
        })
        .map(drop)
    }

    /// The state as JSON text if the worker gives it within `wait`; `None` when it does not,
    /// or when the instance is not in a running worker now (it is not brought back for a
    /// look).
    pub fn peek_state(&self, wait: Duration) -> Option<Result<String, IsolationError>> {
        let (epoch, slot) = *lock(&self.at);
        let conn = self.library.conn_of(epoch)?;
        match conn.call_within(Call::State { slot }, wait)? {
            Ok(Done::Text(state)) => {
                *lock(&self.last) = Some((state.clone(), self.state_version));
                Some(Ok(state))
            }
            Ok(other) => Some(Err(unexpected(&other))),
            Err(CallFailure::Remote(e)) => Some(Err(IsolationError::Paglet(e.into()))),
            Err(CallFailure::Closed { .. }) => None,
        }
    }

    /// The state as JSON text.
    pub fn state(&self) -> Result<String, IsolationError> {
        match self.on_slot(|slot| Call::State { slot })? {
            Done::Text(state) => {
                *lock(&self.last) = Some((state.clone(), self.state_version));
                Ok(state)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// The instance on the code at `path` (a reload in the same worker), with its state; then
    /// `arrived`. This instance is left as it is.
    pub fn migrate(&self, path: &Path) -> Result<Remote, IsolationError> {
        let (conn, epoch) = self.library.live()?;
        let stale = lock(&self.at).0 != epoch;
        let (slot, state_version) = if stale {
            // Its worker died (or the library was quarantined): it comes back on the new code.
            let (slot, version) = self.revive(&conn, path, ArrivalReason::Reload)?;
            (slot, Some(version))
        } else {
            let slot = lock(&self.at).1;
            let call = Call::Migrate {
                slot,
                library: path.into(),
                id: self.id.clone(),
                host_name: self.host_name.clone(),
            };
            match conn
                .call(call, self.library.settings.handler_timeout)
                .map_err(|f| self.library.failure(f, &self.id))?
            {
                Done::Instance {
                    slot,
                    state_version,
                } => (slot, Some(state_version)),
                other => return Err(unexpected(&other)),
            }
        };
        Ok(Remote {
            library: self.library.clone(),
            id: self.id.clone(),
            class: self.class.clone(),
            path: path.into(),
            host_name: self.host_name.clone(),
            state_version: state_version.unwrap_or(self.state_version),
            at: Mutex::new((epoch, slot)),
            last: Mutex::new(lock(&self.last).clone()),
        })
    }
}

fn unexpected(done: &Done) -> IsolationError {
    IsolationError::Crashed(format!("the worker answered out of turn: {done:?}"))
}

impl Drop for Remote {
    fn drop(&mut self) {
        let (epoch, slot) = *lock(&self.at);
        if let Some(conn) = self.library.conn_of(epoch) {
            conn.tell(Call::Drop { slot });
        }
    }
}
