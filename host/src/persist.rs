//! The persistence dir: who owns it, and the paglets saved at shutdown.
//!
//! Layout: `owner.lock` (held with `flock` by the running host, holding its pid),
//! `paglets.json` (the saved paglets, written atomically) and `libs/` (private copies).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One saved paglet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// Its id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// Its state.
    pub state: Value,
}

/// Ownership of a persistence dir, released when the process ends.
pub struct DirLock {
    _file: File,
}

/// Why the dir could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live host owns it.
    #[error("{dir} is owned by another running host (pid {pid})")]
    Owned {
        /// The dir.
        dir: PathBuf,
        /// The owner's pid, as it wrote it.
        pid: String,
    },
    /// The lock file could not be used.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DirLock {
    /// Takes the dir for this process. The kernel drops the lock when the process exits, so
    /// a crashed owner never leaves a stale lock.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join("owner.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: `flock` on a descriptor we own; the result is checked.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Owned {
                dir: dir.into(),
                pid: pid.trim().to_string(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

/// Reads the saved paglets; none when nothing was saved.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Saved>> {
    let path = dir.join("paglets.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a saved-paglets file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Saves paglets atomically: a temp file, synced, then renamed over the old one.
pub fn save(dir: &Path, saved: &[Saved]) -> anyhow::Result<()> {
    let path = dir.join("paglets.json");
    let tmp = dir.join(".paglets.json.tmp");
    let bytes = serde_json::to_vec_pretty(saved).context("encode saved paglets")?;
    let mut file = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}
