//! Git auto-update: pull the checkout the host runs from, rebuild, reload in place.
//!
//! One update at a time per host (a second request is refused with 409) and per checkout
//! (the lock in `lock.rs`, shared by every host and worktree of the repository). The watcher
//! is paused while an update runs, so a half-built library is never loaded.

pub mod build;
pub mod git;
pub mod lock;

use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use serde::Serialize;

use crate::registry::{StatKey, stat_key};
use crate::runtime::{Runtime, lock};

/// The outcome of an update; its serde form is the contract's status string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStatus {
    /// The host runs without `--auto-update-from-git`.
    Disabled,
    /// Uncommitted or untracked changes; nothing was done.
    DirtyWorktree,
    /// git could not read the status.
    StatusFailed,
    /// git could not fetch (including: no upstream).
    FetchFailed,
    /// The requested commit is not there after fetch.
    TargetMissing,
    /// The fast-forward failed (diverged history, conflicts).
    PullFailed,
    /// The commit exists but HEAD is elsewhere after the pull.
    TargetNotCurrent,
    /// The code was updated but the build failed; the old libraries keep running.
    BuildFailed,
    /// HEAD equals the applied head; nothing to do.
    Current,
    /// Built and reloaded.
    Updated,
    /// Another process held the checkout's update lock past the lock timeout.
    LockTimeout,
    /// The update lock could not be taken or handed back: a file-system error.
    LockFailed,
}

/// The reply of `POST /admin/git-update` and `git_update` in `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateResult {
    ok: bool,
    /// The outcome.
    pub status: UpdateStatus,
    repo_root: Option<PathBuf>,
    before_head: Option<String>,
    after_head: Option<String>,
    process_start_head: Option<String>,
    target_hash: Option<String>,
    changed: bool,
    /// The host binary changed: the host re-executes itself after answering.
    pub restart_required: bool,
    build_run: bool,
    reloaded: Vec<PathBuf>,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

impl UpdateResult {
    fn new(status: UpdateStatus) -> Self {
        UpdateResult {
            ok: false,
            status,
            repo_root: None,
            before_head: None,
            after_head: None,
            process_start_head: None,
            target_hash: None,
            changed: false,
            restart_required: false,
            build_run: false,
            reloaded: Vec::new(),
            stdout: String::new(),
            stderr: String::new(),
            error: None,
        }
    }

    /// The answer of a host without `--auto-update-from-git`.
    pub fn disabled(target_hash: Option<String>) -> Self {
        UpdateResult {
            target_hash,
            error: Some("this host was not started with --auto-update-from-git".into()),
            ..UpdateResult::new(UpdateStatus::Disabled)
        }
    }

    fn fail(mut self, status: UpdateStatus, error: impl Into<String>) -> Self {
        self.status = status;
        self.ok = false;
        self.error = Some(error.into());
        self
    }
}

/// The status of an update that could not take the checkout's lock.
fn lock_status(error: &lock::UpdateLockError) -> UpdateStatus {
    match error {
        lock::UpdateLockError::Timeout { .. } | lock::UpdateLockError::Unowned { .. } => {
            UpdateStatus::LockTimeout
        }
        lock::UpdateLockError::Io { .. } | lock::UpdateLockError::PutBack { .. } => {
            UpdateStatus::LockFailed
        }
    }
}

/// The commit whose build is loaded, and the latest update result.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The applied head.
    pub head: String,
    /// The latest result, if any update ran.
    pub last: Option<UpdateResult>,
}

/// Settings of the updater.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    /// `sh -c` command run in the checkout root.
    pub build_command: String,
    /// Kill the build after this long.
    pub build_timeout: Duration,
    /// Wait this long for another process's update lock.
    pub lock_timeout: Duration,
}

/// Why the startup update stopped the start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The checkout has local changes.
    #[error("--auto-update-from-git requires a clean git checkout; startup cancelled.")]
    Dirty,
    /// Anything else, with the reason.
    #[error("{0}")]
    Failed(String),
}

/// The updater of one host.
#[derive(Debug)]
pub struct Updater {
    checkout: git::Checkout,
    settings: UpdateSettings,
    process_start_head: String,
    /// The applied head and the latest result, changed together.
    state: Mutex<Applied>,
    running: Mutex<()>,
    exe: PathBuf,
    /// The executable's identity after the startup build: a change means the binary was
    /// rebuilt.
    exe_id: Option<StatKey>,
    /// The startup build rebuilt the binary: re-execute before serving.
    restart_now: bool,
}

impl Updater {
    /// Finds the checkout around the working directory and brings it up to date before the
    /// host serves: under the lock, refuse a dirty checkout, fetch and fast-forward (failures
    /// there are logged, the local code still runs), then build once.
    pub fn start(settings: UpdateSettings) -> Result<Updater, StartupError> {
        let cwd = std::env::current_dir()
            .map_err(|e| StartupError::Failed(format!("working directory: {e}")))?;
        let checkout = git::discover(&cwd)
            .map_err(|e| StartupError::Failed(format!("--auto-update-from-git: {e}")))?;
        let exe = std::env::current_exe()
            .map_err(|e| StartupError::Failed(format!("own executable: {e}")))?;
        let exe_before = stat_key(&exe);
        let process_start_head = git::head(&checkout.root).map_err(StartupError::Failed)?;
        let _lock = lock::acquire(&checkout.common_dir, settings.lock_timeout, true)
            .map_err(|e| StartupError::Failed(e.to_string()))?;
        match git::dirty(&checkout.root) {
            Ok(Some(path)) => {
                tracing::error!(repo = %checkout.root.display(), path, "the checkout has local changes");
                return Err(StartupError::Dirty);
            }
            Ok(None) => {}
            Err(e) => return Err(StartupError::Failed(format!("git status: {e}"))),
        }
        if let Err(e) = git::fetch(&checkout.root).and_then(|()| git::fast_forward(&checkout.root))
        {
            tracing::warn!(repo = %checkout.root.display(), "startup pull skipped, running the local code: {e}");
        }
        let outcome = build::run(
            &settings.build_command,
            &checkout.root,
            settings.build_timeout,
        );
        if !outcome.ok {
            let reason = outcome.error.unwrap_or_default();
            return Err(StartupError::Failed(format!(
                "startup build failed: {reason}\n{}",
                outcome.stderr
            )));
        }
        let head = git::head(&checkout.root).map_err(StartupError::Failed)?;
        tracing::info!(repo = %checkout.root.display(), head, "checkout up to date and built");
        let exe_id = stat_key(&exe);
        Ok(Updater {
            checkout,
            settings,
            process_start_head,
            state: Mutex::new(Applied { head, last: None }),
            running: Mutex::new(()),
            exe,
            restart_now: exe_id != exe_before,
            exe_id,
        })
    }

    /// True when the startup build rebuilt the host binary: the caller re-executes it.
    pub fn restart_now(&self) -> bool {
        self.restart_now
    }

    /// The commit whose build is loaded.
    pub fn applied_head(&self) -> String {
        lock(&self.state).head.clone()
    }

    /// HEAD at process start.
    pub fn process_start_head(&self) -> &str {
        &self.process_start_head
    }

    /// HEAD now.
    pub fn head(&self) -> Option<String> {
        git::head(&self.checkout.root).ok()
    }

    /// The applied head and the latest result, read together.
    pub fn applied(&self) -> Applied {
        lock(&self.state).clone()
    }

    /// True while an update runs on this host.
    pub fn is_running(&self) -> bool {
        matches!(self.running.try_lock(), Err(TryLockError::WouldBlock))
    }

    /// Runs one update; `None` when another update is running on this host (409).
    pub fn update(&self, runtime: &Runtime, target: Option<&str>) -> Option<UpdateResult> {
        let _running = match self.running.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        runtime.pause_watch(true);
        let result = self.update_locked(runtime, target);
        runtime.pause_watch(false);
        tracing::info!(status = ?result.status, error = ?result.error, "git update finished");
        let mut state = lock(&self.state);
        if result.status == UpdateStatus::Updated {
            state.head = result.after_head.clone().unwrap_or_default();
        }
        state.last = Some(result.clone());
        Some(result)
    }

    fn update_locked(&self, runtime: &Runtime, target: Option<&str>) -> UpdateResult {
        let root = &self.checkout.root;
        let mut result = UpdateResult {
            repo_root: Some(root.clone()),
            process_start_head: Some(self.process_start_head.clone()),
            target_hash: target.map(str::to_string),
            ..UpdateResult::new(UpdateStatus::Current)
        };
        result.before_head = git::head(root).ok();
        let _lock =
            match lock::acquire(&self.checkout.common_dir, self.settings.lock_timeout, false) {
                Ok(lock) => lock,
                Err(e) => return result.fail(lock_status(&e), e.to_string()),
            };
        // Read again under the lock: another host or worktree may have pulled while we waited.
        result.before_head = git::head(root).ok();
        match git::dirty(root) {
            Ok(Some(path)) => {
                return result.fail(UpdateStatus::DirtyWorktree, format!("uncommitted or untracked changes ({path}); nothing fetched, pulled, built or reloaded"));
            }
            Ok(None) => {}
            Err(e) => return result.fail(UpdateStatus::StatusFailed, e),
        }
        if let Err(e) = git::fetch(root) {
            return result.fail(UpdateStatus::FetchFailed, e);
        }
        let target = match target.map(|t| git::resolve(root, t)).transpose() {
            Ok(target) => target,
            Err(e) => return result.fail(UpdateStatus::TargetMissing, e),
        };
        result.target_hash = target.clone().or(result.target_hash);
        if let Err(e) = git::fast_forward(root) {
            return result.fail(UpdateStatus::PullFailed, e);
        }
        let head = match git::head(root) {
            Ok(head) => head,
            Err(e) => return result.fail(UpdateStatus::StatusFailed, e),
        };
        result.after_head = Some(head.clone());
        result.changed = result.before_head.as_deref() != Some(head.as_str());
        if let Some(target) = &target
            && *target != head
        {
            let why = format!("{target} exists but HEAD is {head} after the pull");
            return result.fail(UpdateStatus::TargetNotCurrent, why);
        }
        if head == self.applied_head() {
            result.ok = true;
            result.status = UpdateStatus::Current;
            return result;
        }
        let before = runtime.registry().loaded_shas();
        let outcome = build::run(
            &self.settings.build_command,
            root,
            self.settings.build_timeout,
        );
        result.build_run = true;
        result.stdout = outcome.stdout;
        result.stderr = outcome.stderr;
        if !outcome.ok {
            return result.fail(UpdateStatus::BuildFailed, outcome.error.unwrap_or_default());
        }
        let scan = runtime.rescan();
        if !scan.migration_failed.is_empty() {
            tracing::warn!(
                "some instances stay on their old code: {:?}",
                scan.migration_failed
            );
        }
        let after = runtime.registry().loaded_shas();
        result.reloaded = after
            .iter()
            .filter(|(path, sha)| before.get(*path) != Some(sha))
            .map(|(p, _)| p.clone())
            .collect();
        result.restart_required = stat_key(&self.exe) != self.exe_id;
        result.ok = true;
        result.status = UpdateStatus::Updated;
        result
    }

    /// The executable recorded at start (cargo may replace the file; this path is re-run).
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }
}

#[cfg(test)]
mod tests {
    use super::{UpdateStatus, lock};

    #[test]
    fn lock_io_errors_are_not_reported_as_timeouts() {
        let io = lock::UpdateLockError::Io {
            dir: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(super::lock_status(&io), UpdateStatus::LockFailed);
        let timeout = lock::UpdateLockError::Timeout {
            dir: "/x".into(),
            pid: 1,
            time: 0.0,
            waited: std::time::Duration::ZERO,
        };
        assert_eq!(super::lock_status(&timeout), UpdateStatus::LockTimeout);
    }
}
