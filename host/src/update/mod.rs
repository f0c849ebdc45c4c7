//! Git auto-update: pull the checkout the host runs from, rebuild, reload in place.
//!
//! One update at a time per host (a second request is refused with 409) and per checkout
//! (the lock in `lock.rs`, shared by every host and worktree of the repository). The watcher
//! is paused while an update runs, so a half-built library is never loaded.

pub mod build;
pub mod git;
pub mod lock;
mod result;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

pub use result::{UpdateResult, UpdateStatus};

use crate::registry::{StatKey, stat_key};
use crate::runtime::{RescanReply, Runtime, lock};

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

/// Why a reload after a good build failed: libraries the rescan refused (not folders: a
/// refused folder keeps what it had loaded and is reported on every scan) and paglets whose
/// migration failed. `None` when everything changed loaded and moved.
fn reload_failure(scan: &RescanReply) -> Option<String> {
    let refused = scan
        .errors
        .iter()
        .filter(|e| !e.folder)
        .map(|e| e.error.clone());
    let stayed = scan
        .migration_failed
        .iter()
        .map(|f| format!("paglet {} stays on its old code: {}", f.id, f.error));
    let reasons: Vec<String> = refused.chain(stayed).collect();
    (!reasons.is_empty()).then(|| {
        format!(
            "the build passed but the reload failed; the old code keeps running: {}",
            reasons.join("; ")
        )
    })
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

/// One update request.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// The commit to reach (a 4 to 64 digit prefix), if any.
    pub target: Option<String>,
    /// Build even a commit whose build already failed on this host.
    pub force: bool,
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
    /// Commits whose build failed in this process, with that result. The build command is
    /// fixed for the life of the process, so "same commit" means "same commit and command".
    failed_builds: Mutex<HashMap<String, UpdateResult>>,
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
            failed_builds: Mutex::default(),
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
    pub fn update(&self, runtime: &Runtime, request: &UpdateRequest) -> Option<UpdateResult> {
        let _running = match self.running.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        runtime.pause_watch(true);
        let result = self.update_locked(runtime, request);
        runtime.pause_watch(false);
        tracing::info!(status = ?result.status, error = ?result.error, "git update finished");
        let mut state = lock(&self.state);
        if result.status == UpdateStatus::Updated {
            state.head = result.after_head.clone().unwrap_or_default();
        }
        state.last = Some(result.clone());
        Some(result)
    }

    /// The update under the host's update mutex, with the watcher paused: lock the checkout,
    /// pull, then build and reload unless there is nothing new.
    fn update_locked(&self, runtime: &Runtime, request: &UpdateRequest) -> UpdateResult {
        let root = &self.checkout.root;
        let mut result = UpdateResult {
            repo_root: Some(root.clone()),
            process_start_head: Some(self.process_start_head.clone()),
            target_hash: request.target.clone(),
            before_head: git::head(root).ok(),
            ..UpdateResult::new(UpdateStatus::Current)
        };
        let _lock =
            match lock::acquire(&self.checkout.common_dir, self.settings.lock_timeout, false) {
                Ok(lock) => lock,
                Err(e) => return result.fail(lock_status(&e), e.to_string()),
            };
        // Read again under the lock: another host or worktree may have pulled while we waited.
        result.before_head = git::head(root).ok();
        let head = match self.pull(&mut result, request.target.as_deref()) {
            Ok(head) => head,
            Err((status, why)) => return result.fail(status, why),
        };
        if head == self.applied_head() {
            result.ok = true;
            result.status = UpdateStatus::Current;
            return result;
        }
        let earlier = lock(&self.failed_builds).get(&head).cloned();
        match earlier {
            Some(earlier) if !request.force => result.repeat_failure(&earlier, &head),
            _ => self.build_and_reload(runtime, result, &head),
        }
    }

    /// Refuses a dirty checkout, fetches, resolves the target and fast-forwards; the new
    /// HEAD, or the failure's status and reason.
    fn pull(
        &self,
        result: &mut UpdateResult,
        target: Option<&str>,
    ) -> Result<String, (UpdateStatus, String)> {
        let root = &self.checkout.root;
        match git::dirty(root) {
            Ok(Some(path)) => {
                let why = format!(
                    "uncommitted or untracked changes ({path}); nothing fetched, pulled, built or reloaded"
                );
                return Err((UpdateStatus::DirtyWorktree, why));
            }
            Ok(None) => {}
            Err(e) => return Err((UpdateStatus::StatusFailed, e)),
        }
        git::fetch(root).map_err(|e| (UpdateStatus::FetchFailed, e))?;
        let target = target
            .map(|t| git::resolve(root, t))
            .transpose()
            .map_err(|e| (UpdateStatus::TargetMissing, e))?;
        if target.is_some() {
            result.target_hash = target.clone();
        }
        git::fast_forward(root).map_err(|e| (UpdateStatus::PullFailed, e))?;
        let head = git::head(root).map_err(|e| (UpdateStatus::StatusFailed, e))?;
        result.after_head = Some(head.clone());
        result.changed = result.before_head.as_deref() != Some(head.as_str());
        if let Some(target) = &target
            && *target != head
        {
            let why = format!("{target} exists but HEAD is {head} after the pull");
            return Err((UpdateStatus::TargetNotCurrent, why));
        }
        Ok(head)
    }

    /// Builds `head`, rescans and judges the reload. A failed build is remembered, so that
    /// the same commit is not built again unless forced.
    fn build_and_reload(
        &self,
        runtime: &Runtime,
        mut result: UpdateResult,
        head: &str,
    ) -> UpdateResult {
        let before = runtime.registry().loaded_shas();
        let outcome = build::run(
            &self.settings.build_command,
            &self.checkout.root,
            self.settings.build_timeout,
        );
        result.build_run = true;
        result.stdout = outcome.stdout;
        result.stderr = outcome.stderr;
        if !outcome.ok {
            let failed = result.fail(UpdateStatus::BuildFailed, outcome.error.unwrap_or_default());
            lock(&self.failed_builds).insert(head.to_string(), failed.clone());
            return failed;
        }
        lock(&self.failed_builds).remove(head);
        let scan = runtime.rescan();
        let after = runtime.registry().loaded_shas();
        result.reloaded = after
            .iter()
            .filter(|(path, sha)| before.get(*path) != Some(sha))
            .map(|(p, _)| p.clone())
            .collect();
        result.held = result::held(&scan);
        if let Some(why) = reload_failure(&scan) {
            return result.fail(UpdateStatus::ReloadFailed, why);
        }
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
