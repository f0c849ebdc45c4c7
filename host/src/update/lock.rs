//! The update lock: one update at a time per checkout, across hosts and worktrees.
//!
//! A directory `<git common dir>/paglets-auto-update.lock` made with `mkdir` (atomic), holding
//! an `owner` file `pid=<pid>` / `time=<unix seconds>`. A lock whose owner is gone, or whose
//! pid now belongs to a process started after the lock was written, is stale and removed. A
//! lock without a readable owner is removed after a grace period. A live owner is waited for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// The lock directory's name in the git common dir.
pub const LOCK_NAME: &str = "paglets-auto-update.lock";
/// How long a lock without a readable owner is respected.
const UNREADABLE_GRACE: Duration = Duration::from_secs(5);
/// Slack between a process's start time and the lock's time.
const START_SLACK: f64 = 1.0;

/// A held lock; released (removed) on drop.
#[derive(Debug)]
pub struct UpdateLock {
    dir: PathBuf,
}

impl Drop for UpdateLock {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(lock = %self.dir.display(), "cannot release the update lock: {e}");
        }
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live owner kept it past the timeout.
    #[error("the update lock {} is held by pid {pid} (taken at {time:.0}); gave up after {waited:?}", dir.display())]
    Timeout {
        /// The lock dir.
        dir: PathBuf,
        /// Its owner.
        pid: u32,
        /// When the owner took it (unix seconds).
        time: f64,
        /// How long we waited.
        waited: Duration,
    },
    /// The file system refused.
    #[error("update lock {}: {source}", dir.display())]
    Io {
        /// The lock dir.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads `pid=` and `time=` from the owner file.
fn read_owner(dir: &Path) -> Option<(u32, f64)> {
    let text = std::fs::read_to_string(dir.join("owner")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .map(str::to_string)
    };
    Some((field("pid=")?.parse().ok()?, field("time=")?.parse().ok()?))
}

/// True when `pid` runs and was started no later than `time` (+ slack).
fn owner_alive(pid: u32, time: f64) -> bool {
    let Ok(mut system) = System::new() else {
        // Without a process table, fall back to asking the kernel whether the pid exists.
        // SAFETY: signal 0 only checks that the process exists.
        return unsafe { libc::kill(pid as i32, 0) } == 0;
    };
    let pid = Pid::from_u32(pid);
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    match system.process(pid) {
        Some(process) => (process.start_time() as f64) <= time + START_SLACK,
        None => false,
    }
}

/// Takes the lock in `common_dir`, waiting up to `timeout` for a live owner. With
/// `own_pid_is_stale` (at startup), a lock naming this very pid is stale: it was left by the
/// process this one replaced with `exec`.
pub fn acquire(
    common_dir: &Path,
    timeout: Duration,
    own_pid_is_stale: bool,
) -> Result<UpdateLock, LockError> {
    let dir = common_dir.join(LOCK_NAME);
    let io = |source| LockError::Io {
        dir: dir.clone(),
        source,
    };
    let start = Instant::now();
    let me = std::process::id();
    let mut reported = false;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let owner = format!("pid={me}\ntime={:.3}\n", now());
                let tmp = dir.join(".owner.tmp");
                std::fs::write(&tmp, owner).map_err(io)?;
                std::fs::rename(&tmp, dir.join("owner")).map_err(io)?;
                return Ok(UpdateLock { dir });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        match read_owner(&dir) {
            Some((pid, time))
                if (pid == me && own_pid_is_stale) || (pid != me && !owner_alive(pid, time)) =>
            {
                tracing::warn!(lock = %dir.display(), pid, "removing a stale update lock");
                remove_stale(&dir, Some((pid, time)))?;
                continue;
            }
            Some((pid, time)) => {
                if start.elapsed() >= timeout {
                    return Err(LockError::Timeout {
                        dir,
                        pid,
                        time,
                        waited: start.elapsed(),
                    });
                }
                if !reported {
                    tracing::info!(lock = %dir.display(), pid, "waiting for another update to finish");
                    reported = true;
                }
            }
            None => {
                let age = std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if age >= UNREADABLE_GRACE {
                    tracing::warn!(lock = %dir.display(), "removing an update lock without a readable owner");
                    remove_stale(&dir, None)?;
                    continue;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes a lock judged stale because its owner was `judged`. Two processes may judge the
/// same lock stale at once: the lock is first renamed aside (only one rename can win), and if
/// what was moved is no longer the judged lock (another process removed the stale one and
/// took a fresh lock meanwhile), it is put back.
fn remove_stale(dir: &Path, judged: Option<(u32, f64)>) -> Result<(), LockError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = dir.with_file_name(format!("{LOCK_NAME}.stale-{}-{n}", std::process::id()));
    let io = |source| LockError::Io {
        dir: dir.into(),
        source,
    };
    match std::fs::rename(dir, &aside) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(()) => {}
    }
    if read_owner(&aside) != judged {
        // Someone else's fresh lock: hand it back (the rename fails only if yet another lock
        // was taken in between, which then owns the checkout).
        let _ = std::fs::rename(&aside, dir);
        return Ok(());
    }
    match std::fs::remove_dir_all(&aside) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_dead_owner_is_stale_and_a_live_one_times_out() {
        let dir = std::env::temp_dir().join(format!("paglets-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let lock = dir.join(super::LOCK_NAME);
        // A pid that cannot exist on Linux (above pid_max).
        std::fs::create_dir(&lock).expect("lock dir");
        std::fs::write(lock.join("owner"), "pid=99999999\ntime=1\n").expect("owner");
        let held = super::acquire(&dir, Duration::ZERO, false).expect("stale lock removed");
        let owner = std::fs::read_to_string(lock.join("owner")).expect("owner");
        assert!(
            owner.starts_with(&format!("pid={}\n", std::process::id())),
            "{owner}"
        );
        // Our own live pid, not at startup: held, so a zero timeout fails naming us.
        let err = super::acquire(&dir, Duration::ZERO, false).expect_err("held");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(!lock.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
