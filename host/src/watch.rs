//! Folder watching: `notify` events, debounced, trigger a rescan; a periodic rescan is the
//! safety net (missed events, folders that appear later, half-written files being retried).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::runtime::Runtime;

/// Quiet time after the last event before rescanning: cargo replaces outputs by unlink and
/// link, and `cp` writes in many steps.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Rescan at least this often.
const SAFETY_NET: Duration = Duration::from_secs(2);
/// ... and this often while a half-written file is being retried.
const RETRY: Duration = Duration::from_millis(500);

/// Starts the watcher thread.
pub fn spawn(runtime: Arc<Runtime>, paths: Vec<PathBuf>) -> notify::Result<()> {
    let (tx, rx) = channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let spawned = std::thread::Builder::new()
        .name("paglets-watch".into())
        .spawn(move || {
            // The inode each folder was watched under: a folder removed and re-created gets a
            // new watch.
            let mut armed: HashMap<PathBuf, Option<u64>> = HashMap::new();
            loop {
                for path in &paths {
                    let inode = std::fs::metadata(path).ok().map(|m| m.ino());
                    if armed.get(path) != Some(&inode) {
                        let _ = watcher.unwatch(path);
                        if inode.is_some()
                            && let Err(e) = watcher.watch(path, RecursiveMode::NonRecursive)
                        {
                            tracing::warn!(folder = %path.display(), "cannot watch: {e}");
                        }
                        armed.insert(path.clone(), inode);
                    }
                }
                let wait = if runtime.registry().retrying() {
                    RETRY
                } else {
                    SAFETY_NET
                };
                match rx.recv_timeout(wait) {
                    Ok(()) => while rx.recv_timeout(DEBOUNCE).is_ok() {},
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if runtime.is_shutting_down() {
                    return;
                }
                // Paused: an update is building; it rescans itself when done.
                let Some(reply) = runtime.rescan_unless_paused() else {
                    continue;
                };
                if reply.changed() {
                    let text = serde_json::to_string(&reply).unwrap_or_default();
                    tracing::info!("rescan: {text}");
                }
            }
        });
    spawned
        .map(drop)
        .map_err(|e| notify::Error::generic(&e.to_string()))
}
