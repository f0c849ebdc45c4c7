//! Git through `git2`: find the checkout, read HEAD and the status, fetch the current
//! branch's upstream, resolve a target, fast-forward.
//!
//! libgit2 is built here without its ssh and https transports, and it ignores
//! `~/.ssh/config` and `core.sshCommand` anyway: local and `file://` remotes are fetched
//! through libgit2, every other remote by running `git fetch`, so ssh-agent, key files and
//! credential helpers work exactly as they do for `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{ErrorCode, Repository, StatusOptions, build::CheckoutBuilder};

/// How long `git fetch` may take before it is killed.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Where a checkout lives.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The work tree root.
    pub root: PathBuf,
    /// The git common dir (shared by worktrees): the lock lives here.
    pub common_dir: PathBuf,
}

/// Finds the checkout containing `dir`.
pub fn discover(dir: &Path) -> Result<Checkout, String> {
    let repo = Repository::discover(dir)
        .map_err(|_| format!("{} is not inside a git checkout", dir.display()))?;
    let root = repo
        .workdir()
        .ok_or_else(|| {
            format!(
                "{} is a bare repository, not a checkout",
                repo.path().display()
            )
        })?
        // libgit2 ends the work dir with a '/'; the reports name the folder without it.
        .components()
        .collect::<PathBuf>();
    Ok(Checkout {
        root,
        common_dir: repo.commondir().to_path_buf(),
    })
}

fn open(root: &Path) -> Result<Repository, String> {
    Repository::open(root).map_err(|e| format!("cannot open {}: {}", root.display(), e.message()))
}

/// The commit HEAD points at.
pub fn head(root: &Path) -> Result<String, String> {
    let repo = open(root)?;
    let commit = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| format!("HEAD: {}", e.message()))?;
    Ok(commit.id().to_string())
}

/// The first uncommitted or untracked path (ignored files do not count), if any.
pub fn dirty(root: &Path) -> Result<Option<String>, String> {
    let repo = open(root)?;
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(false)
        .recurse_untracked_dirs(false);
    let statuses = repo
        .statuses(Some(&mut options))
        .map_err(|e| e.message().to_string())?;
    Ok(statuses
        .iter()
        .next()
        .map(|entry| entry.path().unwrap_or("?").to_string()))
}

/// The current branch's ref, its upstream's remote and the upstream ref.
fn upstream(repo: &Repository) -> Result<(String, String, String), String> {
    let head = repo.head().map_err(|e| format!("HEAD: {}", e.message()))?;
    let branch = head.shorthand().unwrap_or("HEAD").to_string();
    if !head.is_branch() {
        return Err("HEAD is detached: there is no branch whose upstream to follow".into());
    }
    let local = head.name().unwrap_or_default().to_string();
    let no_upstream = |_| {
        format!("branch {branch} has no upstream (git branch --set-upstream-to=<remote>/<branch>)")
    };
    let remote = repo.branch_upstream_remote(&local).map_err(no_upstream)?;
    let upstream = repo.branch_upstream_name(&local).map_err(no_upstream)?;
    let text = |buf: git2::Buf| buf.as_str().unwrap_or_default().to_string();
    Ok((local, text(remote), text(upstream)))
}

/// Fetches the current branch's upstream remote.
pub fn fetch(root: &Path) -> Result<(), String> {
    let repo = open(root)?;
    let (_, remote_name, _) = upstream(&repo)?;
    let mut remote = repo
        .find_remote(&remote_name)
        .map_err(|e| format!("remote {remote_name}: {}", e.message()))?;
    let url = remote.url().unwrap_or_default().to_string();
    let local = url.starts_with('/')
        || url.starts_with("file://")
        || url.starts_with('.')
        || !url.contains(':');
    if local {
        return remote
            .fetch(&[] as &[&str], None, None)
            .map_err(|e| format!("fetch from {remote_name} ({url}): {}", e.message()));
    }
    let mut git = Command::new("git");
    git.arg("-C")
        .arg(root)
        .args(["fetch", "--quiet", &remote_name]);
    // A host cannot answer git's username/password prompt: fail instead of waiting on the
    // terminal the host was started from.
    git.env("GIT_TERMINAL_PROMPT", "0");
    let outcome = super::build::run_command(git, "git fetch", FETCH_TIMEOUT);
    match outcome.error {
        None => Ok(()),
        Some(error) => Err(format!(
            "{error} from {remote_name} ({url}): {}",
            outcome.stderr.trim()
        )),
    }
}

/// Resolves a (short) commit hash after fetch; an unknown or ambiguous prefix is an error.
pub fn resolve(root: &Path, prefix: &str) -> Result<String, String> {
    let repo = open(root)?;
    match repo.find_commit_by_prefix(prefix) {
        Ok(commit) => Ok(commit.id().to_string()),
        Err(e) if e.code() == ErrorCode::Ambiguous => {
            Err(format!("{prefix} names more than one commit"))
        }
        Err(_) => Err(format!(
            "commit {prefix} is not in the repository after fetch; it may not have been pushed yet"
        )),
    }
}

/// Fast-forwards the current branch to its upstream. `Ok(true)` when HEAD moved.
pub fn fast_forward(root: &Path) -> Result<bool, String> {
    let repo = open(root)?;
    let (local, _, upstream_ref) = upstream(&repo)?;
    let target = repo
        .refname_to_id(&upstream_ref)
        .map_err(|e| format!("{upstream_ref}: {}", e.message()))?;
    let annotated = repo
        .find_annotated_commit(target)
        .map_err(|e| e.message().to_string())?;
    let (analysis, _) = repo
        .merge_analysis(&[&annotated])
        .map_err(|e| e.message().to_string())?;
    if analysis.is_up_to_date() {
        return Ok(false);
    }
    if !analysis.is_fast_forward() {
        return Err(format!(
            "{local} and {upstream_ref} have diverged; only fast-forward pulls are made"
        ));
    }
    let object = repo
        .find_object(target, None)
        .map_err(|e| e.message().to_string())?;
    repo.checkout_tree(&object, Some(CheckoutBuilder::new().safe()))
        .map_err(|e| format!("checkout of {target}: {}", e.message()))?;
    repo.find_reference(&local)
        .and_then(|mut r| {
            r.set_target(target, "paglets: fast-forward to upstream")
                .map(drop)
        })
        .map_err(|e| format!("moving {local}: {}", e.message()))?;
    Ok(true)
}
