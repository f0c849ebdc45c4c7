//! Folder watching: `notify` events, debounced, trigger a rescan; a periodic rescan is the
//! safety net (missed events, folders that appear later, half-written files being retried).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
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
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let mut folders = Folders {
        watcher,
        paths,
        armed: HashMap::new(),
    };
    let spawned = std::thread::Builder::new()
        .name("paglets-watch".into())
        .spawn(move || {
            loop {
                folders.arm();
                if !wait_for_change(&runtime, &rx) || runtime.is_shutting_down() {
                    return;
                }
                rescan(&runtime);
            }
        });
    spawned
        .map(drop)
        .map_err(|e| notify::Error::generic(&e.to_string()))
}

/// The watched folders, and the inode each was watched under: a folder removed and
/// re-created gets a new watch.
struct Folders<W: Watcher> {
    watcher: W,
    paths: Vec<PathBuf>,
    armed: HashMap<PathBuf, Option<u64>>,
}

impl<W: Watcher> Folders<W> {
    /// Watches each folder that appeared or was re-created since the last call.
    fn arm(&mut self) {
        for path in &self.paths {
            let inode = std::fs::metadata(path).ok().map(|m| m.ino());
            if self.armed.get(path) == Some(&inode) {
                continue;
            }
            let _ = self.watcher.unwatch(path);
            if inode.is_some()
                && let Err(e) = self.watcher.watch(path, RecursiveMode::NonRecursive)
            {
                tracing::warn!(folder = %path.display(), "cannot watch: {e}");
            }
            self.armed.insert(path.clone(), inode);
        }
    }
}

/// Waits for events and then for the debounce's quiet time, or for the safety net's period.
/// False when the event source is gone.
fn wait_for_change(runtime: &Runtime, events: &Receiver<()>) -> bool {
    let wait = if runtime.registry().retrying() {
        RETRY
    } else {
        SAFETY_NET
    };
    match events.recv_timeout(wait) {
        Ok(()) => {
            while events.recv_timeout(DEBOUNCE).is_ok() {}
            true
        }
        Err(RecvTimeoutError::Timeout) => true,
        Err(RecvTimeoutError::Disconnected) => false,
    }
}

/// Rescans unless an update paused the watcher (it rescans itself when its build is done),
/// and logs what changed.
fn rescan(runtime: &Runtime) {
    if let Some(reply) = runtime.rescan_unless_paused()
        && reply.changed()
    {
        let text = serde_json::to_string(&reply).unwrap_or_default();
        tracing::info!("rescan: {text}");
    }
}
