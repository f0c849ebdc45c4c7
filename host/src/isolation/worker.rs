//! `paglets worker`: the process side of an isolated library. It runs the instances the host
//! asks for over the socket it inherited as descriptor 3 and forwards their context calls to
//! the host. It ignores SIGINT and SIGTERM (a service manager signals the whole group; the
//! host saves through it first) and leaves when the host closes the socket or dies.
//!
//! Threads follow the leader/followers pattern: one thread at a time reads the socket; one
//! that reads a call hands the reading to a follower and runs the call itself, so a message
//! costs no hand-off between threads. There is always one more thread than calls running.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use plugin_api::PagletError;
use plugin_api::loader::{self, Instance, Library};
use serde_json::Value;

use super::wire::{Back, Call, Done, Frame, WireError, read_frame, write_frame};

/// Followers kept waiting beyond the one that reads; more exit once their call is done.
const SPARE_THREADS: usize = 4;

struct Worker {
    reader: UnixStream,
    writer: Mutex<UnixStream>,
    /// Threads in the loop that run no call (the reader and the followers).
    idle: Mutex<usize>,
    read_turn: Mutex<()>,
    /// Answers to context calls, by their sequence number.
    answers: Mutex<HashMap<u64, Result<String, WireError>>>,
    answered: Condvar,
    next_seq: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Mutex<Instance>>>>,
    next_slot: AtomicU64,
    libraries: Mutex<HashMap<PathBuf, Arc<Library>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the worker on the socket at descriptor 3 until the host goes; never returns.
pub fn run() -> ! {
    if !inherited_socket() {
        eprintln!("paglets worker: only a paglets host starts workers (no socket on descriptor 3)");
        std::process::exit(2)
    }
    // SAFETY: descriptor 3 is an open socket, the one the host set up for this process (see
    // `spawn`); it is owned here from now on.
    let socket = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    ignore_stop_signals();
    let reader = match socket.try_clone() {
        Ok(reader) => reader,
        Err(e) => {
            tracing::error!("worker: cannot use its socket: {e}");
            std::process::exit(1)
        }
    };
    let worker = Arc::new(Worker {
        reader,
        writer: Mutex::new(socket),
        idle: Mutex::new(1),
        read_turn: Mutex::new(()),
        answers: Mutex::default(),
        answered: Condvar::new(),
        next_seq: AtomicU64::new(1),
        slots: Mutex::default(),
        next_slot: AtomicU64::new(1),
        libraries: Mutex::default(),
    });
    worker.serve();
    // The first thread ended its turn as a spare one; the others serve on.
    loop {
        std::thread::park();
    }
}

/// True when descriptor 3 is an open socket.
fn inherited_socket() -> bool {
    // SAFETY: fstat writes into the zeroed struct it is given; a closed descriptor is EBADF.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(3, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

/// SIGINT and SIGTERM are ignored (also set before `exec`, so none is lost in between).
fn ignore_stop_signals() {
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

impl Worker {
    /// One thread's loop: take the reading turn, read a frame, run it. Returns when the
    /// thread is a spare one too many.
    fn serve(self: &Arc<Self>) {
        loop {
            let frame = {
                let _turn = lock(&self.read_turn);
                read_frame(&self.reader)
            };
            let frame = match frame {
                Ok(frame) => frame,
                // The host closed the socket or died: nothing is left to serve.
                Err(_) => std::process::exit(0),
            };
            match frame {
                Frame::Call { seq, call } => {
                    self.take_a_thread();
                    if let Some(result) = self.call(call) {
                        self.write(&Frame::Answer { seq, result });
                    }
                    if !self.give_back_a_thread() {
                        // Enough followers: this thread ends. A thread never ends with the
                        // reading turn, so the socket is always read.
                        return;
                    }
                }
                Frame::BackAnswer { seq, result } => {
                    lock(&self.answers).insert(seq, result);
                    self.answered.notify_all();
                }
                Frame::Answer { .. } | Frame::Back { .. } => {
                    tracing::error!("worker: the host sent a frame only a worker sends");
                    std::process::exit(1)
                }
            }
        }
    }

    /// This thread runs a call now: if it was the last idle one, start a follower.
    fn take_a_thread(self: &Arc<Self>) {
        let mut idle = lock(&self.idle);
        *idle -= 1;
        if *idle == 0 {
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("paglet".into())
                .spawn(move || me.serve());
            match started {
                Ok(_) => *idle += 1,
                Err(e) => {
                    tracing::error!("worker: cannot start a thread: {e}");
                    std::process::exit(1)
                }
            }
        }
    }

    /// The call is done: false when this thread is one too many.
    fn give_back_a_thread(&self) -> bool {
        let mut idle = lock(&self.idle);
        if *idle > SPARE_THREADS {
            return false;
        }
        *idle += 1;
        true
    }

    fn write(&self, frame: &Frame) {
        let written = write_frame(&mut *lock(&self.writer), frame);
        if written.is_err() {
            // The host is gone.
            std::process::exit(0)
        }
    }

    fn slot(&self, slot: u64) -> Result<Arc<Mutex<Instance>>, WireError> {
        lock(&self.slots)
            .get(&slot)
            .cloned()
            .ok_or_else(|| WireError::Failed(format!("worker: no instance in slot {slot}")))
    }

    fn keep(&self, instance: Instance) -> Done {
        let state_version = instance.state_version();
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        lock(&self.slots).insert(slot, Arc::new(Mutex::new(instance)));
        Done::Instance {
            slot,
            state_version,
        }
    }

    fn library(&self, path: &Path) -> Result<Arc<Library>, WireError> {
        if let Some(library) = lock(&self.libraries).get(path) {
            return Ok(library.clone());
        }
        let library =
            Arc::new(Library::open(path).map_err(|e| WireError::Failed(format!("worker: {e}")))?);
        lock(&self.libraries).insert(path.into(), library.clone());
        Ok(library)
    }

    /// Runs one call; `None` for a call that is not answered.
    fn call(self: &Arc<Self>, call: Call) -> Option<Result<Done, WireError>> {
        let result = match call {
            Call::Create {
                library,
                class,
                state,
                version,
                id,
                host_name,
            } => (|| {
                let library = self.library(&library)?;
                let link = Link {
                    worker: self.clone(),
                    id,
                    class: class.clone(),
                    host_name,
                };
                let state: Option<Value> =
                    match state {
                        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                            WireError::InvalidArgs(format!("state is not JSON: {e}"))
                        })?),
                        None => None,
                    };
                let instance = match (version, state) {
                    (Some(version), Some(state)) => library.restore(&class, &state, version, link),
                    (_, state) => library.create(&class, state.as_ref(), link),
                };
                Ok(self.keep(instance.map_err(WireError::from)?))
            })(),
            Call::Handle { slot, kind, args } => self.slot(slot).and_then(|instance| {
                lock(&instance)
                    .handle(&kind, &args)
                    .map(Done::Text)
                    .map_err(WireError::from)
            }),
            Call::Hook { slot, hook } => self.slot(slot).and_then(|instance| {
                lock(&instance)
                    .hook(hook.into())
                    .map(|()| Done::Unit)
                    .map_err(WireError::from)
            }),
            Call::State { slot } => self.slot(slot).and_then(|instance| {
                lock(&instance)
                    .state()
                    .map(Done::Text)
                    .map_err(WireError::from)
            }),
            Call::Migrate {
                slot,
                library,
                id,
                host_name,
            } => (|| {
                let instance = self.slot(slot)?;
                let library = self.library(&library)?;
                let class = lock(&instance).class().to_string();
                let link = Link {
                    worker: self.clone(),
                    id,
                    class,
                    host_name,
                };
                let fresh = lock(&instance)
                    .migrate_to(&library, link)
                    .map_err(WireError::from)?;
                Ok(self.keep(fresh))
            })(),
            Call::Drop { slot } => {
                let instance = lock(&self.slots).remove(&slot);
                drop(instance);
                return None;
            }
        };
        Some(result)
    }

    /// Asks the host on behalf of paglet `from` and waits for the answer.
    fn ask(&self, from: &str, class: &str, back: Back) -> Result<String, PagletError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.write(&Frame::Back {
            seq,
            from: from.into(),
            class: class.into(),
            back,
        });
        let mut answers = lock(&self.answers);
        loop {
            if let Some(result) = answers.remove(&seq) {
                return result.map_err(PagletError::from);
            }
            answers = self
                .answered
                .wait(answers)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The context of an instance in the worker: its calls go to the host.
struct Link {
    worker: Arc<Worker>,
    id: String,
    class: String,
    host_name: String,
}

impl loader::HostContext for Link {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn host_name(&self) -> String {
        self.host_name.clone()
    }

    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        let back = Back::Send {
            to: to.into(),
            kind: kind.into(),
            args: args.into(),
        };
        self.worker.ask(&self.id, &self.class, back)
    }

    fn create(&self, class: &str, state: &str, id: Option<&str>) -> Result<String, PagletError> {
        let back = Back::Create {
            class: class.into(),
            state: state.into(),
            id: id.map(str::to_string),
        };
        self.worker.ask(&self.id, &self.class, back)
    }

    fn send_oneway(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        let back = Back::Oneway {
            to: to.into(),
            kind: kind.into(),
            args: args.into(),
        };
        self.worker.ask(&self.id, &self.class, back)
    }

    fn request(&self, op: &str, args: &str) -> Result<String, PagletError> {
        let back = Back::Request {
            op: op.into(),
            args: args.into(),
        };
        self.worker.ask(&self.id, &self.class, back)
    }

    fn log(&self, level: tracing::Level, target: &str, message: &str) {
        self.worker.write(&Frame::Back {
            seq: 0,
            from: self.id.clone(),
            class: self.class.clone(),
            back: Back::Log {
                level: level_number(level),
                target: target.into(),
                message: message.into(),
            },
        });
    }
}

/// A tracing level as a number on the wire (1 error … 5 trace).
pub fn level_number(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        _ => 5,
    }
}

/// The tracing level a number on the wire stands for.
pub fn level_of(number: u8) -> tracing::Level {
    match number {
        1 => tracing::Level::ERROR,
        2 => tracing::Level::WARN,
        3 => tracing::Level::INFO,
        4 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    }
}
