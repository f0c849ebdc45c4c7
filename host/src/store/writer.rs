//! The writer thread: owns the connection and commits in groups. It takes every request
//! waiting at the moment, keeps the latest change per id, commits them in one transaction and
//! then answers every waiter. A failed commit keeps the changes pending (newer ones replace
//! them), marks the store degraded and is retried every [`RETRY`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use super::{Extra, Record, StoreError, db};
use crate::runtime::lock;

/// How often a failed write is tried again while nothing new arrives.
const RETRY: Duration = Duration::from_millis(500);

/// Called once a change committed (`Ok`) or its commit failed.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What the writer is asked to do.
pub enum Request {
    /// Put (`Some`) or remove (`None`) one record.
    Change {
        id: String,
        record: Option<Record>,
        done: Option<Done>,
    },
    /// Put many records and, with `keep`, remove every other id.
    Batch {
        records: Vec<Record>,
        keep: Option<HashSet<String>>,
        done: Done,
    },
    /// Record changes and other changes, in one transaction.
    Atomic {
        records: Vec<(String, Option<Record>)>,
        extras: Vec<Extra>,
        done: Option<Done>,
    },
    /// Read one record, pending changes included.
    Get {
        id: String,
        done: Box<dyn FnOnce(Result<Option<Record>, StoreError>) + Send>,
    },
    /// Commit what is pending and stop.
    Stop,
    /// Run SQL on the connection (tests stage faults this way).
    #[cfg(test)]
    Exec(String, Done),
}

impl Request {
    /// Answers the request's waiter with `error` without writing anything.
    pub fn fail(self, error: StoreError) {
        match self {
            Request::Change { done: Some(d), .. } | Request::Atomic { done: Some(d), .. } => {
                d(Err(error))
            }
            Request::Batch { done, .. } => done(Err(error)),
            Request::Get { done, .. } => done(Err(error)),
            _ => {}
        }
    }
}

/// The handle on the writer thread.
pub struct Writer {
    tx: Sender<Request>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub fn spawn(
        conn: Connection,
        path: PathBuf,
        degraded: Arc<Mutex<Option<String>>>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                Group {
                    conn,
                    path,
                    degraded,
                    changes: HashMap::new(),
                    extras: Vec::new(),
                    keep: None,
                    waiters: Vec::new(),
                }
                .run(&rx)
            })?;
        Ok(Writer { tx, thread })
    }

    /// Queues a request.
    pub fn submit(&self, request: Request) {
        if let Err(e) = self.tx.send(request) {
            e.into_inner().fail(StoreError::Closed);
        }
    }

    /// Commits what is pending, stops the thread and closes the database.
    pub fn stop(self) {
        let _ = self.tx.send(Request::Stop);
        if self.thread.join().is_err() {
            tracing::error!("the store's writer thread panicked");
        }
    }
}

/// The writer's pending group.
struct Group {
    conn: Connection,
    path: PathBuf,
    degraded: Arc<Mutex<Option<String>>>,
    /// The latest change per id not yet committed.
    changes: HashMap<String, Option<Record>>,
    /// Transfer and forward changes not yet committed, in order.
    extras: Vec<Extra>,
    /// Ids to keep when a batch asked to remove the others.
    keep: Option<HashSet<String>>,
    waiters: Vec<Done>,
}

impl Group {
    fn run(mut self, rx: &Receiver<Request>) {
        let mut stopping = false;
        while !stopping {
            let first = if self.is_clean() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(RETRY)
            };
            match first {
                Ok(request) => stopping |= self.absorb(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            // Group commit: everything that arrived meanwhile goes in the same transaction.
            while let Ok(request) = rx.try_recv() {
                stopping |= self.absorb(request);
            }
            self.commit();
        }
        if !self.is_clean() {
            tracing::error!(
                database = %self.path.display(),
                changes = self.changes.len(),
                "stopping with changes that could not be written"
            );
        }
        for request in rx.try_iter() {
            request.fail(StoreError::Closed);
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(database = %self.path.display(), "closing the database: {e}");
        }
    }

    /// True when nothing waits to be committed.
    fn is_clean(&self) -> bool {
        self.changes.is_empty() && self.extras.is_empty() && self.keep.is_none()
    }

    /// Adds a request to the group; true for `Stop`.
    fn absorb(&mut self, request: Request) -> bool {
        match request {
            Request::Atomic {
                records,
                extras,
                done,
            } => {
                for (id, record) in records {
                    if let (Some(keep), Some(_)) = (self.keep.as_mut(), &record) {
                        keep.insert(id.clone());
                    }
                    self.changes.insert(id, record);
                }
                self.extras.extend(extras);
                self.waiters.extend(done);
            }
            Request::Get { id, done } => match self.changes.get(&id) {
                Some(pending) => done(Ok(pending.clone())),
                None => {
                    done(db::get(&self.conn, &id).map_err(|e| StoreError::Write(e.to_string())))
                }
            },
            Request::Change { id, record, done } => {
                if let (Some(keep), Some(_)) = (self.keep.as_mut(), &record) {
                    keep.insert(id.clone());
                }
                self.changes.insert(id, record);
                self.waiters.extend(done);
            }
            Request::Batch {
                records,
                keep,
                done,
            } => {
                if let Some(mut keep) = keep {
                    // What the batch puts is kept; what earlier changes put but the batch
                    // does not keep goes.
                    keep.extend(records.iter().map(|r| r.id.clone()));
                    self.changes.retain(|id, _| keep.contains(id));
                    self.keep = Some(keep);
                }
                for record in records {
                    self.changes.insert(record.id.clone(), Some(record));
                }
                self.waiters.push(done);
            }
            Request::Stop => return true,
            #[cfg(test)]
            Request::Exec(sql, done) => done(
                self.conn
                    .execute_batch(&sql)
                    .map_err(|e| StoreError::Write(e.to_string())),
            ),
        }
        false
    }

    fn commit(&mut self) {
        if self.is_clean() {
            self.answer(Ok(()));
            return;
        }
        match db::apply(
            &mut self.conn,
            &self.changes,
            &self.extras,
            self.keep.as_ref(),
        ) {
            Ok(()) => {
                self.changes.clear();
                self.extras.clear();
                self.keep = None;
                if lock(&self.degraded).take().is_some() {
                    tracing::info!(database = %self.path.display(), "writes succeed again");
                }
                self.answer(Ok(()));
            }
            Err(e) => {
                let message = format!("{}: {e}", self.path.display());
                let mut degraded = lock(&self.degraded);
                if degraded.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        "cannot write the paglet database ({message}); changes are kept and retried"
                    );
                }
                *degraded = Some(message.clone());
                drop(degraded);
                self.answer(Err(StoreError::Write(message)));
            }
        }
    }

    fn answer(&mut self, result: Result<(), StoreError>) {
        for done in self.waiters.drain(..) {
            done(result.clone());
        }
    }
}
