//! The SQL: checking and opening `paglets.db`, its schema, reading every record, and
//! applying one batch of changes in one transaction. Only this file speaks SQL.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::{Direction, Durability, Extra, Forward, Moving, Record, Status, StoreError, Transfer};

/// The schema's version, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 2;
/// How long a statement waits for a lock held by another connection (there is none in
/// normal running; a stray reader such as the `sqlite3` shell may hold one briefly).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The first 16 bytes of every SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paglets (
    id               TEXT PRIMARY KEY NOT NULL,
    class            TEXT NOT NULL,
    state            TEXT NOT NULL,
    state_version    INTEGER NOT NULL,
    library          TEXT NOT NULL,
    library_version  TEXT NOT NULL,
    library_sha256   TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at       REAL NOT NULL,
    messages_handled INTEGER NOT NULL,
    queued           TEXT
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    paglet_id   TEXT NOT NULL,
    peer_name   TEXT NOT NULL,
    peer_url    TEXT NOT NULL,
    body        TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forwards (
    paglet_id TEXT PRIMARY KEY NOT NULL,
    url       TEXT NOT NULL,
    until     REAL NOT NULL
);";

/// Checks an existing database file before SQLite touches it: a regular, readable file that
/// starts like a database and is not shorter than its own header says. SQLite would take a
/// truncated file for a smaller database, and a zero-length one for a new database.
pub fn precheck(path: &Path) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::Corrupt {
        path: path.into(),
        reason,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| bad(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut header = [0u8; 100];
    let mut file = File::open(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    // Opening for writing too: a file we may read but not write would fail on the first
    // checkpoint instead of now.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| bad(format!("cannot open it for writing: {e}")))?;
    file.read_exact(&mut header).map_err(|_| {
        bad(format!(
            "{} bytes, shorter than a database header",
            meta.len()
        ))
    })?;
    if &header[..16] != MAGIC {
        return Err(bad("not an SQLite database (wrong header)".into()));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([
        header[28], header[29], header[30], header[31],
    ]));
    // The page count is valid when the change counter matches "version valid for". With a
    // write-ahead log beside it, a checkpoint cut short by a crash may have written the
    // header before the pages: SQLite's own recovery and check decide then.
    let valid = header[24..28] == header[92..96];
    let wal_len = std::fs::metadata(side_file(path, "-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    if valid && wal_len == 0 && meta.len() < pages * page_size {
        return Err(bad(format!(
            "truncated: {} bytes where the header says {} pages of {page_size}",
            meta.len(),
            pages
        )));
    }
    Ok(())
}

/// Opens (creating when absent) the database with the settings of `durability`, checks it
/// and makes sure the schema is there. Files are created 0600.
pub fn open(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    // A zero-length file is what a crash between creating the file and SQLite's first write
    // leaves: SQLite, too, takes it for a new database.
    let fresh = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.is_file() && meta.len() == 0 && !side_file(path, "-wal").exists(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: format!("cannot stat it: {e}"),
            });
        }
    };
    if !path.exists() {
        // Created by us with mode 0600; SQLite gives the -wal and -shm files the same mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
    } else {
        precheck(path)?;
    }
    let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(corrupt)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(corrupt)?;
    if !fresh {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: format!("integrity check: {check}"),
            });
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                path: path.into(),
                reason: format!(
                    "written by a newer paglets (schema {version}, this one knows {SCHEMA_VERSION})"
                ),
            });
        }
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(corrupt)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.into(),
            reason: format!("cannot switch to WAL mode (journal mode is {mode})"),
        });
    }
    // WAL with NORMAL survives a crash of the process; FULL also a power cut, which
    // `interval` promises too (its writes are one transaction per window, plus creations,
    // disposals and moves, so the fsync per commit costs little).
    let sync = match durability {
        Durability::Sync | Durability::Interval => "FULL",
        Durability::Shutdown => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(corrupt)?;
    restrict_modes(path)?;
    Ok(conn)
}

/// Makes the database and its side files 0600 (a database from an older version, or side
/// files created before the database had its mode).
pub fn restrict_modes(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let file = side_file(path, suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(&file, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`paglets.db-wal`).
pub fn side_file(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

const SELECT_RECORD: &str = "SELECT id, class, state, state_version, library, library_version,
    library_sha256, status, created_at, messages_handled, queued FROM paglets";

/// Every record, in id order.
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = conn.prepare(&format!("{SELECT_RECORD} ORDER BY id"))?;
    let rows = stmt.query_map([], read_record)?;
    rows.collect()
}

/// The record of `id`, if stored.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Record>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT_RECORD} WHERE id = ?1"))?;
    let mut rows = stmt.query_map([id], read_record)?;
    rows.next().transpose()
}

/// Every transfer and forward.
pub fn load_moving(conn: &Connection) -> rusqlite::Result<Moving> {
    let transfers = conn
        .prepare(
            "SELECT transfer_id, direction, paglet_id, peer_name, peer_url, body, at
             FROM transfers ORDER BY at",
        )?
        .query_map([], |r| {
            Ok(Transfer {
                transfer_id: r.get(0)?,
                direction: if r.get_ref(1)?.as_str()? == "out" {
                    Direction::Out
                } else {
                    Direction::In
                },
                paglet_id: r.get(2)?,
                peer_name: r.get(3)?,
                peer_url: r.get(4)?,
                body: r.get(5)?,
                at: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let forwards = conn
        .prepare("SELECT paglet_id, url, until FROM forwards")?
        .query_map([], |r| {
            Ok(Forward {
                paglet_id: r.get(0)?,
                url: r.get(1)?,
                until: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Moving {
        transfers,
        forwards,
    })
}

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        id: r.get(0)?,
        class: r.get(1)?,
        state: r.get(2)?,
        state_version: r.get(3)?,
        library: r.get(4)?,
        library_version: r.get(5)?,
        library_sha256: r.get(6)?,
        status: if r.get_ref(7)?.as_str()? == "inactive" {
            Status::Inactive
        } else {
            Status::Active
        },
        created_at: r.get(8)?,
        messages_handled: r.get::<_, i64>(9)?.try_into().unwrap_or(0),
        queued: r.get(10)?,
    })
}

/// One batch: the latest change per id (`None` removes), then, when `keep` is given, every
/// record whose id is not in it is removed. One transaction.
pub fn apply(
    conn: &mut Connection,
    changes: &HashMap<String, Option<Record>>,
    extras: &[Extra],
    keep: Option<&std::collections::HashSet<String>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for extra in extras {
        match extra {
            Extra::PutTransfer(t) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO transfers
                        (transfer_id, direction, paglet_id, peer_name, peer_url, body, at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    t.transfer_id,
                    match t.direction {
                        Direction::Out => "out",
                        Direction::In => "in",
                    },
                    t.paglet_id,
                    t.peer_name,
                    t.peer_url,
                    t.body,
                    t.at,
                ])?;
            }
            Extra::RemoveTransfer(id) => {
                tx.prepare_cached("DELETE FROM transfers WHERE transfer_id = ?1")?
                    .execute([id])?;
            }
            Extra::PutForward(f) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO forwards (paglet_id, url, until) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![f.paglet_id, f.url, f.until])?;
            }
            Extra::RemoveForward(id) => {
                tx.prepare_cached("DELETE FROM forwards WHERE paglet_id = ?1")?
                    .execute([id])?;
            }
        }
    }
    {
        let mut put = tx.prepare_cached(&format!("INSERT OR REPLACE {INSERT_RECORD}"))?;
        let mut remove = tx.prepare_cached("DELETE FROM paglets WHERE id = ?1")?;
        for (id, change) in changes {
            match change {
                Some(r) => {
                    write_record(&mut put, r)?;
                }
                None => {
                    remove.execute([id])?;
                }
            }
        }
        if let Some(keep) = keep {
            let stored: Vec<String> = tx
                .prepare("SELECT id FROM paglets")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in stored.iter().filter(|id| !keep.contains(*id)) {
                remove.execute([id])?;
            }
        }
    }
    tx.commit()
}

/// The column list and placeholders of a record write, after `INSERT OR …`.
const INSERT_RECORD: &str = "INTO paglets (id, class, state, state_version, library,
    library_version, library_sha256, status, created_at, messages_handled, queued)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Runs a record write prepared from [`INSERT_RECORD`] for `r`; returns the rows changed.
fn write_record(stmt: &mut rusqlite::Statement<'_>, r: &Record) -> rusqlite::Result<usize> {
    stmt.execute(params![
        r.id,
        r.class,
        r.state,
        r.state_version,
        r.library,
        r.library_version,
        r.library_sha256,
        r.status.as_str(),
        r.created_at,
        i64::try_from(r.messages_handled).unwrap_or(i64::MAX),
        r.queued,
    ])
}

/// Inserts records that are not stored yet (an import), in one transaction; returns how many
/// were new.
pub fn insert_missing(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut added = 0;
    {
        let mut insert = tx.prepare(&format!("INSERT OR IGNORE {INSERT_RECORD}"))?;
        for r in records {
            added += write_record(&mut insert, r)?;
        }
    }
    tx.commit()?;
    Ok(added)
}
