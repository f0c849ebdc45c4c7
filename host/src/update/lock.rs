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

/// A held lock; released (removed) on drop, but only while its owner file still names this
/// process and the time it was taken: a lock someone else judged stale and took over is
/// theirs.
#[derive(Debug)]
pub struct UpdateLock {
    dir: PathBuf,
    owner: (u32, f64),
}

impl Drop for UpdateLock {
    fn drop(&mut self) {
        match read_owner(&self.dir) {
            Some(owner) if owner == self.owner => {
                if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                    tracing::warn!(lock = %self.dir.display(), "cannot release the update lock: {e}");
                }
            }
            Some((pid, _)) => {
                tracing::warn!(lock = %self.dir.display(), pid, "the update lock was taken over by another process; left to it");
            }
            None => {
                tracing::warn!(lock = %self.dir.display(), "the update lock no longer names this process; left as it is");
            }
        }
    }
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UpdateLockError {
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
    /// A lock without a readable owner, still inside its grace period, outlasted the timeout.
    #[error("the update lock {} has no readable owner and is younger than {UNREADABLE_GRACE:?}; gave up after {waited:?}", dir.display())]
    Unowned {
        /// The lock dir.
        dir: PathBuf,
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
    /// A fresh lock of another process was moved aside while removing a stale one, and could
    /// not be put back.
    #[error("moved the update lock {} aside to {} and could not put it back: {source}", dir.display(), aside.display())]
    PutBack {
        /// The lock dir.
        dir: PathBuf,
        /// Where it is now.
        aside: PathBuf,
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

/// True when a process with this pid exists. EPERM means it exists under another user; a pid
/// that is not a positive `i32` names no process (`kill` would read it as a process group,
/// or as "every process").
fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    if unsafe { libc::kill(raw, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// True when `pid` runs and was started no later than `time` (+ slack).
fn owner_alive(pid: u32, time: f64) -> bool {
    if !pid_exists(pid) {
        return false;
    }
    let Ok(mut system) = System::new() else {
        // Without a process table the start time is unknown: the pid exists, so it is alive.
        return true;
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
) -> Result<UpdateLock, UpdateLockError> {
    let dir = common_dir.join(LOCK_NAME);
    let io = |source| UpdateLockError::Io {
        dir: dir.clone(),
        source,
    };
    let start = Instant::now();
    let me = std::process::id();
    let mut reported = false;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let time = format!("{:.3}", now());
                let tmp = dir.join(".owner.tmp");
                std::fs::write(&tmp, format!("pid={me}\ntime={time}\n")).map_err(io)?;
                std::fs::rename(&tmp, dir.join("owner")).map_err(io)?;
                // Read back as `read_owner` will, so `Drop` compares like with like.
                let time = time.parse().unwrap_or_default();
                return Ok(UpdateLock {
                    dir,
                    owner: (me, time),
                });
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
                    return Err(UpdateLockError::Timeout {
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
                if start.elapsed() >= timeout {
                    return Err(UpdateLockError::Unowned {
                        dir,
                        waited: start.elapsed(),
                    });
                }
                if !reported {
                    tracing::info!(lock = %dir.display(), "an update lock without a readable owner: respected for {UNREADABLE_GRACE:?}");
                    reported = true;
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
fn remove_stale(dir: &Path, judged: Option<(u32, f64)>) -> Result<(), UpdateLockError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = dir.with_file_name(format!("{LOCK_NAME}.stale-{}-{n}", std::process::id()));
    let io = |source| UpdateLockError::Io {
        dir: dir.into(),
        source,
    };
    match std::fs::rename(dir, &aside) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(()) => {}
    }
    if read_owner(&aside) != judged {
        // Someone else's fresh lock: hand it back.
        return put_back(&aside, dir);
    }
    match std::fs::remove_dir_all(&aside) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

/// Moves a lock that was moved aside by mistake back into place. This fails when yet another
/// lock was taken in between: then two processes believe they hold the checkout, which is
/// reported, never ignored.
fn put_back(aside: &Path, dir: &Path) -> Result<(), UpdateLockError> {
    std::fs::rename(aside, dir).map_err(|source| UpdateLockError::PutBack {
        dir: dir.into(),
        aside: aside.into(),
        source,
    })
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

#[cfg(test)]
mod ownership_tests {
    use std::time::Duration;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("paglets-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn drop_leaves_a_lock_that_another_process_took_over() {
        let dir = scratch("takeover");
        let lock = dir.join(super::LOCK_NAME);
        let held = super::acquire(&dir, Duration::ZERO, false).expect("free");
        // Someone judged us stale and took the lock.
        std::fs::write(lock.join("owner"), "pid=1\ntime=5\n").expect("owner");
        drop(held);
        assert!(
            lock.join("owner").is_file(),
            "another process's lock was removed"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_failed_put_back_is_reported() {
        let dir = scratch("putback");
        let (aside, lock) = (dir.join("aside"), dir.join(super::LOCK_NAME));
        for d in [&aside, &lock] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::write(d.join("owner"), "pid=1\ntime=5\n").expect("owner");
        }
        let err = super::put_back(&aside, &lock).expect_err("the place is taken");
        assert!(err.to_string().contains("could not put it back"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn io_errors_are_io_errors() {
        let missing = std::env::temp_dir().join("paglets-lock-no-such-dir/deeper");
        let err = super::acquire(&missing, Duration::ZERO, false).expect_err("no folder");
        assert!(matches!(err, super::UpdateLockError::Io { .. }), "{err:?}");
    }

    #[test]
    fn pids_that_overflow_i32_or_are_not_positive_are_not_alive() {
        // As an i32, u32::MAX is -1: `kill(-1, 0)` asks about every process and succeeds.
        for pid in [u32::MAX, 1 << 31, 0] {
            assert!(!super::pid_exists(pid), "{pid}");
        }
        assert!(super::pid_exists(std::process::id()));
    }

    /// Set in the environment of the unprivileged probe this test starts.
    const PROBE: &str = "PAGLETS_LOCK_PROBE_PID";

    #[test]
    fn a_process_of_another_user_is_alive() {
        if let Ok(pid) = std::env::var(PROBE) {
            // The probe: running as uid 65534, asking about a process of root.
            let pid: u32 = pid.parse().expect("a pid");
            println!("probe: alive={}", super::owner_alive(pid, super::now()));
            return;
        }
        // SAFETY: `geteuid` has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Not root: this process is itself of another user than init's.
            assert!(super::pid_exists(1));
            return;
        }
        let exe = std::env::current_exe().expect("own path");
        let output = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(exe)
            .args([
                "--exact",
                "update::lock::ownership_tests::a_process_of_another_user_is_alive",
                "--nocapture",
            ])
            .env(PROBE, std::process::id().to_string())
            .output()
            .expect("run setpriv");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("probe: alive=true"), "{output:?}");
    }
}
