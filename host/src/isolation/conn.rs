//! The host's end of one worker's socket.
//!
//! Callers wait for their own answers and read the socket themselves, one at a time (the
//! leader/followers pattern): a caller whose answer has not come takes the reading turn if
//! it is free, and hands every frame it reads to whoever waits for it. A lone caller reads
//! its own answer, so a message costs one round trip over the socket and no hand-off
//! between threads. The worker's own asks (its paglets' context calls) are answered on a
//! thread of their own, since they may wait on other paglets.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::wire::{Back, Call, Done, Frame, WireError, read_frame, write_frame};

/// What the host does with a worker's ask: `(conn, seq, from, class, back)`.
pub type OnBack = Arc<dyn Fn(&Arc<Conn>, u64, String, String, Back) + Send + Sync>;

/// Why a call got no answer.
#[derive(Debug)]
pub enum CallFailure {
    /// The worker is gone; `timed_out` when the host killed it because this call ran past
    /// its handler timeout.
    Closed { timed_out: bool },
    /// The worker answered with an error.
    Remote(WireError),
}

struct State {
    reading: bool,
    answers: HashMap<u64, Result<Done, WireError>>,
    closed: bool,
    /// Calls whose caller stopped waiting: their answers are dropped.
    abandoned: HashSet<u64>,
}

/// One worker's socket, host side.
pub struct Conn {
    stream: UnixStream,
    writer: Mutex<UnixStream>,
    state: Mutex<State>,
    changed: Condvar,
    next_seq: AtomicU64,
    on_back: OnBack,
    /// Calls under a handler timeout: their deadlines.
    deadlines: Mutex<HashMap<u64, Instant>>,
    /// Calls whose deadline passed (the worker is being killed for them).
    timed_out: Mutex<HashSet<u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    /// The host's end `stream` of a new worker's socket.
    pub fn new(stream: UnixStream, on_back: OnBack) -> std::io::Result<Arc<Conn>> {
        let writer = stream.try_clone()?;
        Ok(Arc::new(Conn {
            stream,
            writer: Mutex::new(writer),
            state: Mutex::new(State {
                reading: false,
                answers: HashMap::new(),
                closed: false,
                abandoned: HashSet::new(),
            }),
            changed: Condvar::new(),
            next_seq: AtomicU64::new(1),
            on_back,
            deadlines: Mutex::default(),
            timed_out: Mutex::default(),
        }))
    }

    /// True once the socket failed or was closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Closes the host's end: every caller waiting gets [`CallFailure::Closed`], and the
    /// worker sees the end of its input.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(state);
        self.changed.notify_all();
    }

    fn write(&self, frame: &Frame) -> bool {
        let written = write_frame(&mut *lock(&self.writer), frame);
        if written.is_err() {
            self.close();
        }
        written.is_ok()
    }

    /// Sends a call that is not answered.
    pub fn tell(&self, call: Call) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.write(&Frame::Call { seq, call });
    }

    /// Answers the worker's ask `seq`.
    pub fn answer_back(&self, seq: u64, result: Result<String, WireError>) {
        self.write(&Frame::BackAnswer { seq, result });
    }

    /// Sends `call` and waits for its answer; past `timeout` the supervisor kills the worker
    /// (see [`Conn::overdue`]).
    pub fn call(
        self: &Arc<Self>,
        call: Call,
        timeout: Option<Duration>,
    ) -> Result<Done, CallFailure> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if let Some(timeout) = timeout {
            lock(&self.deadlines).insert(seq, Instant::now() + timeout);
        }
        let result = if self.write(&Frame::Call { seq, call }) {
            self.wait(seq)
        } else {
            Err(CallFailure::Closed { timed_out: false })
        };
        if timeout.is_some() {
            lock(&self.deadlines).remove(&seq);
        }
        match result {
            Err(CallFailure::Closed { .. }) => Err(CallFailure::Closed {
                timed_out: lock(&self.timed_out).contains(&seq),
            }),
            other => other,
        }
    }

    fn wait(self: &Arc<Self>, seq: u64) -> Result<Done, CallFailure> {
        loop {
            if let Some(result) = self.wait_until(seq, None) {
                return result;
            }
        }
    }

    /// Sends `call` and waits for its answer until `wait` has passed (then `None`, and the
    /// answer is dropped when it comes): for a look that must not hold its caller, such as
    /// a detail's state.
    pub fn call_within(
        self: &Arc<Self>,
        call: Call,
        wait: Duration,
    ) -> Option<Result<Done, CallFailure>> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if !self.write(&Frame::Call { seq, call }) {
            return Some(Err(CallFailure::Closed { timed_out: false }));
        }
        let answer = self.wait_until(seq, Some(Instant::now() + wait));
        if answer.is_none() {
            let mut state = lock(&self.state);
            if state.answers.remove(&seq).is_none() {
                state.abandoned.insert(seq);
            }
        }
        answer
    }

    /// Waits for the answer to `seq`, reading the socket when it is this caller's turn;
    /// `None` once `deadline` passed.
    fn wait_until(
        self: &Arc<Self>,
        seq: u64,
        deadline: Option<Instant>,
    ) -> Option<Result<Done, CallFailure>> {
        let mut state = lock(&self.state);
        loop {
            if let Some(result) = state.answers.remove(&seq) {
                return Some(result.map_err(CallFailure::Remote));
            }
            if state.closed {
                return Some(Err(CallFailure::Closed { timed_out: false }));
            }
            let left = match deadline {
                Some(deadline) => Some(deadline.checked_duration_since(Instant::now())?),
                None => None,
            };
            if state.reading {
                state = match left {
                    Some(left) => {
                        self.changed
                            .wait_timeout(state, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner),
                };
                continue;
            }
            state.reading = true;
            drop(state);
            // With a deadline, read only what comes within it.
            if let Some(left) = left
                && !readable_within(&self.stream, left)
            {
                state = lock(&self.state);
                state.reading = false;
                self.changed.notify_all();
                continue;
            }
            self.read_one();
            state = lock(&self.state);
        }
    }

    /// Reads one frame (the caller took the reading turn) and hands it on.
    fn read_one(self: &Arc<Self>) {
        let frame = read_frame(&self.stream);
        let mut back = None;
        {
            let mut state = lock(&self.state);
            state.reading = false;
            match frame {
                Ok(Frame::Answer { seq, result }) => {
                    if !state.abandoned.remove(&seq) {
                        state.answers.insert(seq, result);
                    }
                }
                Ok(Frame::Back {
                    seq,
                    from,
                    class,
                    back: ask,
                }) => back = Some((seq, from, class, ask)),
                Ok(other) => {
                    tracing::error!("a worker sent a frame only a host sends: {other:?}");
                    state.closed = true;
                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                }
                Err(_) => {
                    state.closed = true;
                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        // Someone else's answer, or the turn to read is free again.
        self.changed.notify_all();
        if let Some((seq, from, class, ask)) = back {
            (self.on_back)(self, seq, from, class, ask);
        }
    }

    /// Reads what the worker sent while no call waits (a paglet's thread logging between
    /// messages), so the worker never blocks on a full socket. Called by the supervisor.
    pub fn pump(self: &Arc<Self>) {
        loop {
            let mut state = lock(&self.state);
            if state.reading || state.closed || !readable(&self.stream) {
                return;
            }
            state.reading = true;
            drop(state);
            self.read_one();
        }
    }

    /// The first call past its deadline, marked as timed out.
    pub fn overdue(&self, now: Instant) -> Option<u64> {
        let deadlines = lock(&self.deadlines);
        let (&seq, _) = deadlines.iter().find(|(_, deadline)| **deadline <= now)?;
        lock(&self.timed_out).insert(seq);
        Some(seq)
    }
}

/// True when `stream` has bytes to read (or its end), waiting up to `wait` for them.
fn readable_within(stream: &UnixStream, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, ms) };
    ready > 0
}

/// True when `stream` has bytes to read (or its end), without waiting.
fn readable(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0
}
