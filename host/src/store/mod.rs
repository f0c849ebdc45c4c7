//! The durable store: every paglet's record in `<persistence-dir>/paglets.db` (SQLite, WAL).
//!
//! Owns all SQL and the database files; nothing else in the host knows there is a database.
//! One writer thread owns the connection and commits whatever is pending in one transaction
//! (group commit), then tells every waiter. A failed write keeps the changes pending, marks
//! the store degraded and is retried; the first commit that succeeds clears it. Opening
//! refuses a database it cannot read or check, and never overwrites it.
//!
//! When changes are written (after each message, on a checkpoint timer, or at shutdown) is
//! the runtime's business; see [`Durability`].

mod db;
mod import;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::runtime::lock;
pub use writer::Done;
use writer::{Request, Writer};

/// The database file's name in the persistence dir.
pub const DB_FILE: &str = "paglets.db";

/// When state changes reach the database (`--durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Dirty states are written within `--checkpoint-ms` of the message.
    #[default]
    Interval,
    /// A reply leaves only once the transaction holding its change committed.
    Sync,
    /// Only at graceful shutdown.
    Shutdown,
}

/// A stored paglet's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Running (or waiting for its class).
    Active,
    /// Deactivated: kept only in the store, with its queued messages.
    Inactive,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
        }
    }
}

/// One stored paglet.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its id (the key).
    pub id: String,
    /// Its class.
    pub class: String,
    /// Its state, as JSON text.
    pub state: String,
    /// The `STATE_VERSION` of the code that wrote the state.
    pub state_version: u32,
    /// The library's name.
    pub library: String,
    /// The library's version.
    pub library_version: String,
    /// SHA-256 of the library file the state was written by.
    pub library_sha256: String,
    /// Active or inactive.
    pub status: Status,
    /// Creation time, Unix seconds.
    pub created_at: f64,
    /// Messages handled so far.
    pub messages_handled: u64,
    /// Queued messages of an inactive paglet, as JSON text.
    pub queued: Option<String>,
}

/// A transfer of a moving paglet, as the store keeps it until it is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The transfer id (the key).
    pub transfer_id: String,
    /// `out`: this host sends the paglet (a departing record, kept until the target
    /// accepted or refused it); `in`: this host accepted it (kept so a re-send is answered
    /// "already accepted").
    pub direction: Direction,
    /// The paglet's id.
    pub paglet_id: String,
    /// The other host's mesh name, when known.
    pub peer_name: String,
    /// The other host's URL.
    pub peer_url: String,
    /// `out`: the whole arrival body as sent (JSON text), re-sent as it is; `in`: the answer.
    pub body: String,
    /// When it was recorded, Unix seconds.
    pub at: f64,
}

/// Which way a [`Transfer`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent from this host.
    Out,
    /// Accepted by this host.
    In,
}

/// Where a paglet that left this host went, kept for `--forward-ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The paglet's id (the key).
    pub paglet_id: String,
    /// The URL of the host it went to.
    pub url: String,
    /// Until when requests for it are forwarded, Unix seconds.
    pub until: f64,
}

/// A change besides paglet records, committed in the same transaction as them.
#[derive(Debug, Clone, PartialEq)]
pub enum Extra {
    /// Records a transfer.
    PutTransfer(Transfer),
    /// Forgets a transfer.
    RemoveTransfer(String),
    /// Records a forward.
    PutForward(Forward),
    /// Forgets the forward of a paglet id.
    RemoveForward(String),
}

/// What a store held at open besides paglet records.
#[derive(Debug, Clone, Default)]
pub struct Moving {
    /// Unsettled and accepted transfers.
    pub transfers: Vec<Transfer>,
    /// Forwards, expired ones included (the caller drops those).
    pub forwards: Vec<Forward>,
}

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or is damaged; it is left untouched.
    #[error("{}: cannot use the paglet database: {reason}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// A write failed; the change stays pending and is retried.
    #[error("not persisted: {0}")]
    Write(String),
    /// The writer stopped (the host is shutting down).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    fn io(path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

/// Whether writes reach the disk, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// The last write committed.
    Ok,
    /// The last write failed with this error; changes are kept and retried.
    Degraded(String),
}

impl Persistence {
    /// `"ok"` or `"degraded"`.
    pub fn label(&self) -> &'static str {
        match self {
            Persistence::Ok => "ok",
            Persistence::Degraded(_) => "degraded",
        }
    }

    /// The failed write's error, when degraded.
    pub fn error(&self) -> Option<&str> {
        match self {
            Persistence::Ok => None,
            Persistence::Degraded(e) => Some(e),
        }
    }
}

/// The open store. Writes are queued to the writer thread; nothing here touches the disk on
/// the caller's thread.
pub struct Store {
    writer: Mutex<Option<Writer>>,
    degraded: Arc<Mutex<Option<String>>>,
    /// Transfers and forwards read at open, until the runtime takes them.
    moving: Mutex<Option<Moving>>,
}

impl Store {
    /// Opens `<dir>/paglets.db` (creating it when absent), imports an older `paglets.json`
    /// once, and returns the store with every stored record.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Store, Vec<Record>), StoreError> {
        let path = dir.join(DB_FILE);
        let mut conn = db::open(&path, durability)?;
        import::import_json(dir, &mut conn)?;
        let records = db::load(&conn).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let moving = db::load_moving(&conn).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let degraded = Arc::new(Mutex::new(None));
        let writer = Writer::spawn(conn, path.clone(), degraded.clone())
            .map_err(|e| StoreError::io(&path, e))?;
        Ok((
            Store {
                writer: Mutex::new(Some(writer)),
                degraded,
                moving: Mutex::new(Some(moving)),
            },
            records,
        ))
    }

    /// Whether writes currently succeed.
    pub fn persistence(&self) -> Persistence {
        match lock(&self.degraded).as_ref() {
            None => Persistence::Ok,
            Some(e) => Persistence::Degraded(e.clone()),
        }
    }

    fn submit(&self, request: Request) {
        match lock(&self.writer).as_ref() {
            Some(writer) => writer.submit(request),
            None => request.fail(StoreError::Closed),
        }
    }

    /// Queues `record` for writing; `done` (if any) runs once it committed or failed.
    pub fn put(&self, record: Record, done: Option<Done>) {
        self.submit(Request::Change {
            id: record.id.clone(),
            record: Some(record),
            done,
        });
    }

    /// Queues the removal of `id`; `done` (if any) runs once it committed or failed.
    pub fn remove(&self, id: &str, done: Option<Done>) {
        self.submit(Request::Change {
            id: id.into(),
            record: None,
            done,
        });
    }

    /// The transfers and forwards stored at open (once; later calls get none).
    pub fn take_moving(&self) -> Moving {
        lock(&self.moving).take().unwrap_or_default()
    }

    /// Queues record changes (`None` removes) and other changes to commit in one
    /// transaction; `done` (if any) runs once they committed or failed.
    pub fn change(
        &self,
        records: Vec<(String, Option<Record>)>,
        extras: Vec<Extra>,
        done: Option<Done>,
    ) {
        self.submit(Request::Atomic {
            records,
            extras,
            done,
        });
    }

    /// Like [`change`](Store::change), waiting for the commit.
    pub fn change_and_wait(
        &self,
        records: Vec<(String, Option<Record>)>,
        extras: Vec<Extra>,
    ) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.change(records, extras, Some(Box::new(move |r| drop(tx.send(r)))));
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Reads the record of `id` as it will be once what is queued committed.
    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(Request::Get {
            id: id.into(),
            done: Box::new(move |r| drop(tx.send(r))),
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Writes `records` in one batch, with every record not in `keep` removed, and waits for
    /// the commit (graceful shutdown in `shutdown` mode, and the final save in any mode).
    pub fn save_all(
        &self,
        records: Vec<Record>,
        keep: Option<HashSet<String>>,
    ) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(Request::Batch {
            records,
            keep,
            done: Box::new(move |r| drop(tx.send(r))),
        });
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Waits until everything queued so far committed (or failed).
    #[cfg(test)]
    pub fn flush(&self) -> Result<(), StoreError> {
        self.save_all(Vec::new(), None)
    }

    /// Runs `sql` on the writer's connection (to stage faults in tests).
    #[cfg(test)]
    pub fn exec(&self, sql: &str) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(Request::Exec(
            sql.into(),
            Box::new(move |r| drop(tx.send(r))),
        ));
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Stops the writer after what is queued, and closes the database.
    pub fn close(&self) {
        if let Some(writer) = lock(&self.writer).take() {
            writer.stop();
        }
    }
}

#[cfg(test)]
mod tests;
