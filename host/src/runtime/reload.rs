//! Rescans and reload migration: after a scan, every paglet running on a reloaded library
//! gets a migration job ahead of its queued messages; the rescan waits a little for them and
//! reports which moved, which failed and which are still pending.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use plugin_api::PagletError;
use serde::Serialize;

use super::mailbox::QueueAt;
use super::paglet::{Job, Paglet, Replier};
use super::{Runtime, RuntimeError};
use crate::registry::{FileError, LoadedLib, ScanReport};

/// How long a rescan waits for idle paglets to migrate before listing them as pending.
const MIGRATION_WAIT: Duration = Duration::from_secs(2);

/// A paglet that could not move to new code.
#[derive(Debug, Serialize)]
pub struct MigrationFailure {
    /// The paglet.
    pub id: String,
    /// Why it stays on its old code.
    pub error: String,
}

/// A paglet deliberately kept on its old code: the new code would drop these keys of its
/// state (the author removes them on purpose with a new `STATE_VERSION` and `upgrade`).
#[derive(Debug, Clone, Serialize)]
pub struct HeldPaglet {
    /// The paglet.
    pub id: String,
    /// The keys the new code would drop (`a.b` for nested ones).
    pub keys: Vec<String>,
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
    /// Paglets that stay on their old code because the migration failed, and why.
    pub migration_failed: Vec<MigrationFailure>,
    /// Paglets that stay on their old code because the new code would drop keys.
    pub held: Vec<HeldPaglet>,
    /// Paglets still busy; each migrates when it becomes idle.
    pending: Vec<String>,
}

impl RescanReply {
    /// True when a library was loaded, reloaded or removed.
    pub fn changed(&self) -> bool {
        !(self.loaded.is_empty() && self.reloaded.is_empty() && self.removed.is_empty())
    }
}

/// One migration's outcome, as its job reports it.
type Outcome = (String, Result<(), RuntimeError>);

/// How the migrations of one rescan ended (so far).
#[derive(Default)]
struct Migrations {
    migrated: Vec<String>,
    failed: Vec<MigrationFailure>,
    held: Vec<HeldPaglet>,
    pending: Vec<String>,
}

impl Runtime {
    /// Scans the paths and migrates the paglets of reloaded libraries.
    pub fn rescan(&self) -> RescanReply {
        self.reload(self.registry().scan(&self.paths))
    }

    /// [`Runtime::rescan`] unless the watcher is paused (an update is building): `None` then.
    /// The check and the scan are one critical section with [`Runtime::pause_watch`].
    pub fn rescan_unless_paused(&self) -> Option<RescanReply> {
        let report = self.registry().scan_unless_paused(&self.paths)?;
        Some(self.reload(report))
    }

    /// Migrates the paglets of the libraries `report` reloaded.
    fn reload(&self, report: ScanReport) -> RescanReply {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut queued = Vec::new();
        for lib in &report.reloaded {
            // New code: a quarantined library gets another chance.
            self.lift_quarantine(lib);
            queued.extend(self.queue_migrations(lib, &tx));
        }
        drop(tx);
        let migrations = wait_for_migrations(queued, &rx, Instant::now() + MIGRATION_WAIT);
        // A stored paglet waiting for its class runs as soon as a scan loads it.
        if !(report.loaded.is_empty() && report.reloaded.is_empty()) {
            self.restore_waiting();
        }
        RescanReply {
            loaded: report.loaded,
            reloaded: report.reloaded.iter().map(|l| l.source.clone()).collect(),
            removed: report.removed,
            errors: report.errors,
            migrated: migrations.migrated,
            migration_failed: migrations.failed,
            held: migrations.held,
            pending: migrations.pending,
        }
    }

    /// Queues a migration to `lib` for every paglet on an older copy of its file; each reports
    /// to `outcomes`. Returns their ids.
    fn queue_migrations(&self, lib: &Arc<LoadedLib>, outcomes: &Sender<Outcome>) -> Vec<String> {
        let paglets: Vec<Arc<Paglet>> = self
            .table()
            .values()
            .filter(|p| p.code().source == lib.source)
            .cloned()
            .collect();
        let mut ids = Vec::with_capacity(paglets.len());
        for paglet in paglets {
            let job = Job::Migrate {
                lib: lib.clone(),
                context: self.context(&paglet.id, &paglet.class),
                done: self.migration_done(&paglet.id, lib, outcomes.clone()),
            };
            paglet.push(job, QueueAt::AfterMigrations, &self.pool);
            ids.push(paglet.id.clone());
        }
        ids
    }

    /// What a migration job calls when it ends: a failure is logged and noted on the library.
    fn migration_done(&self, id: &str, lib: &LoadedLib, outcomes: Sender<Outcome>) -> Replier<()> {
        let (id, source, runtime) = (id.to_string(), lib.source.clone(), self.me.clone());
        Replier::new(move |result| {
            if let Err(e) = &result {
                tracing::warn!(paglet = %id, library = %source.display(), "stays on its old code: {e}");
                if let Some(runtime) = runtime.upgrade() {
                    runtime
                        .registry()
                        .note_migration_error(&source, format!("{id}: {e}"));
                }
            }
            // The rescan may have stopped waiting: then nobody listens, and that is fine.
            let _ = outcomes.send((id, result));
        })
    }
}

/// Collects outcomes until every queued migration reported or `deadline` passed; the rest are
/// pending.
fn wait_for_migrations(
    queued: Vec<String>,
    outcomes: &Receiver<Outcome>,
    deadline: Instant,
) -> Migrations {
    let mut done = Migrations::default();
    while done.migrated.len() + done.failed.len() + done.held.len() < queued.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match outcomes.recv_timeout(left) {
            Ok((id, Ok(()))) => done.migrated.push(id),
            Ok((id, Err(RuntimeError::Paglet(PagletError::DropsKeys { keys })))) => {
                done.held.push(HeldPaglet { id, keys })
            }
            Ok((id, Err(e))) => done.failed.push(MigrationFailure {
                id,
                error: e.to_string(),
            }),
            Err(_) => break,
        }
    }
    let finished: std::collections::HashSet<&str> = done
        .migrated
        .iter()
        .map(String::as_str)
        .chain(done.failed.iter().map(|f| f.id.as_str()))
        .chain(done.held.iter().map(|h| h.id.as_str()))
        .collect();
    let pending = queued
        .iter()
        .filter(|id| !finished.contains(id.as_str()))
        .cloned()
        .collect();
    done.pending = pending;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_not_reported_by_the_deadline_are_pending() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(("a".to_string(), Ok(()))).expect("send");
        tx.send((
            "b".to_string(),
            Err(PagletError::Failed("no".into()).into()),
        ))
        .expect("send");
        let queued = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let done = wait_for_migrations(queued, &rx, Instant::now());
        assert_eq!(done.migrated, ["a"]);
        assert_eq!(done.failed.len(), 1);
        assert_eq!(done.failed[0].id, "b");
        assert_eq!(done.pending, ["c"]);
    }

    #[test]
    fn a_migration_that_would_drop_keys_is_held_with_its_keys() {
        let (tx, rx) = std::sync::mpsc::channel();
        let keys = vec!["extra".to_string(), "inner.old".to_string()];
        tx.send((
            "a".to_string(),
            Err(RuntimeError::Paglet(PagletError::DropsKeys {
                keys: keys.clone(),
            })),
        ))
        .expect("send");
        let far = Instant::now() + Duration::from_secs(3600);
        let done = wait_for_migrations(vec!["a".to_string()], &rx, far);
        assert_eq!(done.held.len(), 1);
        assert_eq!((done.held[0].id.as_str(), &done.held[0].keys), ("a", &keys));
        assert!(done.failed.is_empty() && done.pending.is_empty());
    }

    #[test]
    fn waiting_ends_when_every_migration_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(("a".to_string(), Ok(()))).expect("send");
        let far = Instant::now() + Duration::from_secs(3600);
        let done = wait_for_migrations(vec!["a".to_string()], &rx, far);
        assert_eq!((done.migrated.len(), done.pending.len()), (1, 0));
    }
}
