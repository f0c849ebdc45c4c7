//! The one-time import of `paglets.json`, the saved-paglets file of earlier versions: its
//! paglets go into the database (ids already stored win), then the file is renamed
//! `paglets.json.imported` (0600), so it is never imported twice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::Value;

use super::{Record, Status, StoreError, db};

/// The old file's name.
pub const JSON_FILE: &str = "paglets.json";

/// One paglet as the old file held it.
#[derive(Deserialize)]
struct Saved {
    id: String,
    class: String,
    state: Value,
}

/// Imports `<dir>/paglets.json` when it exists.
pub fn import_json(dir: &Path, conn: &mut Connection) -> Result<(), StoreError> {
    let path = dir.join(JSON_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let saved: Vec<Saved> = serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
        path: path.clone(),
        message: format!("not a saved-paglets file: {e}"),
    })?;
    let now = crate::registry::unix_seconds(std::time::SystemTime::now());
    let records: Vec<Record> = saved
        .into_iter()
        .map(|s| Record {
            id: s.id,
            class: s.class,
            state: s.state.to_string(),
            state_version: 1,
            library: String::new(),
            library_version: String::new(),
            library_sha256: String::new(),
            status: Status::Active,
            created_at: now,
            messages_handled: 0,
            queued: None,
        })
        .collect();
    let added = db::insert_missing(conn, &records).map_err(|e| StoreError::Write(e.to_string()))?;
    let done = dir.join(format!("{JSON_FILE}.imported"));
    std::fs::rename(&path, &done).map_err(|e| StoreError::io(&path, e))?;
    std::fs::set_permissions(&done, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::io(&done, e))?;
    tracing::info!(
        from = %path.display(),
        imported = added,
        skipped = records.len() - added,
        "imported the paglets saved by an earlier version"
    );
    Ok(())
}
