//! The persistence dir's owner: one host at a time.
//!
//! Layout: `owner.lock` (held with `flock` by the running host, holding its pid),
//! `paglets.db` (the store, see `store/`) and `libs/` (private copies).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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
