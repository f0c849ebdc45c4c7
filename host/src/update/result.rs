//! What an update answers: its status and the result object of `POST /admin/git-update`
//! and `/health`'s `git_update`.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

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
    /// Built, but a changed library was refused or a paglet's migration failed; the old
    /// code keeps running where the new was refused, and the applied head stays.
    ReloadFailed,
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
    pub(super) ok: bool,
    /// The outcome.
    pub status: UpdateStatus,
    pub(super) repo_root: Option<PathBuf>,
    pub(super) before_head: Option<String>,
    pub(super) after_head: Option<String>,
    pub(super) process_start_head: Option<String>,
    pub(super) target_hash: Option<String>,
    pub(super) changed: bool,
    /// The host binary changed: the host re-executes itself after answering.
    pub restart_required: bool,
    pub(super) build_run: bool,
    pub(super) reloaded: Vec<PathBuf>,
    /// Paglets deliberately kept on their old code by the reload (the new code would drop
    /// keys of their state), with those keys: the rescan's `held` list. They do not make the
    /// update fail.
    pub(super) held: Vec<Value>,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) error: Option<String>,
}

impl UpdateResult {
    pub(super) fn new(status: UpdateStatus) -> Self {
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
            held: Vec::new(),
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

    pub(super) fn fail(mut self, status: UpdateStatus, error: impl Into<String>) -> Self {
        self.status = status;
        self.ok = false;
        self.error = Some(error.into());
        self
    }

    /// This request's answer for a commit whose build already failed: that failure again,
    /// without building.
    pub(super) fn repeat_failure(mut self, earlier: &UpdateResult, commit: &str) -> Self {
        self.stdout = earlier.stdout.clone();
        self.stderr = earlier.stderr.clone();
        self.build_run = false;
        let why = earlier.error.as_deref().unwrap_or("the build failed");
        self.fail(
            UpdateStatus::BuildFailed,
            format!(
                "{why} (the build of {commit} already failed on this host with the same build command; not built again: send \"force\": true to build it anyway)"
            ),
        )
    }
}

/// The paglets a rescan held on their old code, from its JSON (the rescan reply's `held`
/// list; empty while the reply has none).
pub(super) fn held(scan: &impl Serialize) -> Vec<Value> {
    match serde_json::to_value(scan) {
        Ok(Value::Object(mut reply)) => match reply.remove("held") {
            Some(Value::Array(held)) => held,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}
