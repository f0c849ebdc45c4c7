//! Loaded libraries and their classes: private copies, generations, collisions, and the
//! per-file errors `GET /libraries` shows. Knows nothing of instances: a scan reports which
//! files were reloaded and the runtime migrates their instances.

mod copy;
mod views;

use copy::{hex, private_copy};

use crate::runtime::lock;
pub use views::{DiscoverReport, unix_seconds};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use plugin_api::LoadError;
use plugin_api::loader::Library;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A library loaded from one copy, shared by the instances running on it.
#[derive(Debug)]
pub struct LoadedLib {
    /// The checked library.
    pub library: Library,
    /// The file in the scanned folder it came from.
    pub source: PathBuf,
    /// SHA-256 of the loaded bytes.
    pub sha256: String,
    /// 0 at first load of `source`, +1 per reload.
    pub generation: u64,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// What a scan changed.
#[derive(Debug, Default, Serialize)]
pub struct ScanReport {
    /// Files loaded for the first time.
    pub loaded: Vec<PathBuf>,
    /// Files whose new contents were loaded (their instances need migrating).
    #[serde(serialize_with = "reload_paths")]
    pub reloaded: Vec<Arc<LoadedLib>>,
    /// Files that disappeared (their instances keep running).
    pub removed: Vec<PathBuf>,
    /// Files refused by this scan, with the reason.
    pub errors: Vec<FileError>,
}

fn reload_paths<S: serde::Serializer>(libs: &[Arc<LoadedLib>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(libs.iter().map(|l| &l.source))
}

/// A refused file.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: String,
    /// A scanned folder (refused or unreadable), not a library file.
    #[serde(skip)]
    pub folder: bool,
}

/// How long after its last change a truncated file is still expected to grow.
const RETRY_WINDOW: Duration = Duration::from_secs(10);

fn modified_within(path: &Path, window: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < window)
}

/// Identity of a file's contents as `stat` sees them: size, mtime and inode. Cheap next to
/// hashing, and replacing or rewriting a file changes it.
pub type StatKey = (u64, i64, i64, u64);

/// The [`StatKey`] of `path`, or `None` when it cannot be read.
pub fn stat_key(path: &Path) -> Option<StatKey> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

#[derive(Debug, Default)]
struct FileSlot {
    current: Option<Arc<LoadedLib>>,
    error: Option<String>,
    retrying: bool,
    /// Lost a class-name collision: retried when a file disappears.
    taken: bool,
    /// The stat of the contents last looked at; unchanged files are skipped.
    key: Option<StatKey>,
    /// Distinct contents this file has had loaded (each stays mapped).
    copies: BTreeSet<String>,
    /// Instances that could not move to the current code, and why.
    migration_errors: Vec<String>,
}

/// The libraries of a set of folders.
///
/// Two locks, so that a scan never holds what a request needs: `gate` is held for a whole
/// scan (one scan at a time, and the pause of the watcher's scans is decided under it), while
/// `state` (what requests read) is held only for short steps without file I/O. Copying,
/// hashing and opening a library happen with `state` free.
#[derive(Debug)]
pub struct Registry {
    /// Where private copies go; `None` loads files in place (for `paglets discover`).
    copies_dir: Option<PathBuf>,
    allow_insecure: bool,
    /// Larger candidate files are refused before anything is copied.
    max_size: u64,
    /// Log refusals as they are found (a host); `paglets discover` prints them itself.
    log: bool,
    gate: Mutex<()>,
    /// Set and cleared under `gate`: while set, [`Registry::scan_unless_paused`] does nothing.
    paused: AtomicBool,
    state: Mutex<State>,
}

/// What the registry knows; see [`Registry`] for its lock.
#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, FileSlot>,
    classes: BTreeMap<String, PathBuf>,
    gone: BTreeMap<String, String>,
    /// Files that disappeared with a library loaded, in case they come back.
    retired: BTreeMap<PathBuf, FileSlot>,
    /// Scanned folders refused or unreadable at the last scan, and why.
    folder_errors: BTreeMap<PathBuf, String>,
    by_sha: HashMap<String, Arc<LoadedLib>>,
}

/// Why a class cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum ClassError {
    /// No loaded library provides it.
    #[error("unknown class {0}")]
    Unknown(String),
    /// Its library file was removed.
    #[error("class {class} is unavailable: {why}")]
    Gone {
        /// The class.
        class: String,
        /// Why.
        why: String,
    },
}

/// The default of `--max-library-size`: 512 MiB.
pub const DEFAULT_MAX_LIBRARY_SIZE: u64 = 512 * 1024 * 1024;

/// How [`State::install`] ended.
enum Installed {
    /// Loaded (or already current).
    Yes,
    /// Refused: one of its classes belongs to another file.
    Taken,
}

impl Registry {
    /// An empty registry. With `copies_dir`, every library is loaded from a private copy
    /// kept there; the copies an earlier run left there are pruned.
    pub fn new(copies_dir: Option<PathBuf>, allow_insecure: bool) -> std::io::Result<Self> {
        if let Some(dir) = &copies_dir {
            std::fs::create_dir_all(dir)?;
            copy::prune(dir)?;
        }
        Ok(Registry {
            copies_dir,
            allow_insecure,
            max_size: DEFAULT_MAX_LIBRARY_SIZE,
            log: true,
            gate: Mutex::new(()),
            paused: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        })
    }

    /// Stops logging refusals (the caller reports them).
    pub fn quiet(mut self) -> Self {
        self.log = false;
        self
    }

    /// Refuses candidate files larger than `bytes`, before copying them.
    pub fn max_library_size(mut self, bytes: u64) -> Self {
        self.max_size = bytes;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Scans `dirs` in order: loads new files, reloads changed ones, forgets removed ones.
    /// The first file to provide a class keeps it. Waits for a scan already running.
    pub fn scan(&self, dirs: &[PathBuf]) -> ScanReport {
        let _gate = lock(&self.gate);
        self.scan_gated(dirs)
    }

    /// [`Registry::scan`], unless scans are paused (then `None`). The check and the scan are
    /// one critical section with [`Registry::pause`]: once `pause(true)` returned, no such
    /// scan runs or starts.
    pub fn scan_unless_paused(&self, dirs: &[PathBuf]) -> Option<ScanReport> {
        let _gate = lock(&self.gate);
        if self.paused.load(Ordering::Acquire) {
            return None;
        }
        Some(self.scan_gated(dirs))
    }

    /// Pauses (or resumes) [`Registry::scan_unless_paused`]. Pausing waits for a scan that is
    /// running to end.
    pub fn pause(&self, paused: bool) {
        let _gate = lock(&self.gate);
        self.paused.store(paused, Ordering::Release);
    }

    fn scan_gated(&self, dirs: &[PathBuf]) -> ScanReport {
        let mut report = ScanReport::default();
        let (seen, held) = self.list(dirs, &mut report);
        // `stat` before taking the state lock: it is file I/O too. A file gone since the
        // listing has no key: it is left as it is, and the next scan forgets it.
        let keys: Vec<(PathBuf, StatKey)> = seen
            .iter()
            .filter_map(|path| stat_key(path).map(|key| (path.clone(), key)))
            .collect();
        let todo: Vec<PathBuf> = {
            let mut state = self.state();
            let removed: Vec<PathBuf> = state
                .files
                .keys()
                .filter(|p| {
                    !seen.contains(p) && !held.iter().any(|dir| p.parent() == Some(dir.as_path()))
                })
                .cloned()
                .collect();
            for path in removed {
                state.forget(&path);
                report.removed.push(path);
            }
            let retry_taken = !report.removed.is_empty();
            keys.into_iter()
                .filter(|(path, key)| state.needs_look(path, *key, retry_taken))
                .map(|(path, _)| path)
                .collect()
        };
        for path in todo {
            self.scan_file(&path, &mut report);
        }
        report
    }

    /// The candidate files of `dirs`, and the folders refused or unreadable this time (their
    /// known files are left as they are).
    fn list(&self, dirs: &[PathBuf], report: &mut ScanReport) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut seen = Vec::new();
        let mut held = Vec::new();
        let mut errors = BTreeMap::new();
        for dir in dirs {
            let listed = if !self.allow_insecure && dir.exists() {
                crate::discovery::check_secure(dir)
            } else {
                Ok(())
            }
            .and_then(|()| {
                crate::discovery::candidates(dir).map_err(|e| {
                    // Only a missing folder is expected to appear later; a refused one
                    // (EACCES) or a host out of descriptors (EMFILE) is an error as it is.
                    let later = if e.kind() == std::io::ErrorKind::NotFound {
                        " (it is picked up when it appears)"
                    } else {
                        ""
                    };
                    format!("{}: cannot list the folder: {e}{later}", dir.display())
                })
            });
            match listed {
                Ok(files) => seen.extend(files),
                Err(error) => {
                    report.errors.push(FileError {
                        path: dir.clone(),
                        error: error.clone(),
                        folder: true,
                    });
                    errors.insert(dir.clone(), error);
                    held.push(dir.clone());
                }
            }
        }
        let before = std::mem::replace(&mut self.state().folder_errors, errors.clone());
        for (dir, error) in &errors {
            if self.log && before.get(dir) != Some(error) {
                tracing::warn!("{error}");
            }
        }
        (seen, held)
    }

    fn scan_file(&self, path: &Path, report: &mut ScanReport) {
        let lib = match self.load(path) {
            Ok(lib) => lib,
            Err(err) => {
                // Read before the lock: it is a `stat`.
                let recent = modified_within(path, RETRY_WINDOW);
                return self.state().refuse(path, err, recent, self.log, report);
            }
        };
        let installed = self.state().install(path, lib.clone(), self.log, report);
        if let Installed::Taken = installed {
            self.delete_unused_copy(&lib.sha256, lib.library.path());
        }
    }

    /// Removes a private copy that no loaded library uses (its file was refused). Files
    /// loaded in place are never touched.
    fn delete_unused_copy(&self, sha256: &str, copy: &Path) {
        if self.copies_dir.is_none() || self.state().by_sha.contains_key(sha256) {
            return;
        }
        if let Err(e) = std::fs::remove_file(copy) {
            tracing::warn!(copy = %copy.display(), "cannot delete the copy of a refused library: {e}");
        }
    }

    /// Checks, copies and opens `path`; every file-system and `dlopen` step runs without the
    /// state lock.
    fn load(&self, path: &Path) -> Result<Arc<LoadedLib>, LoadError> {
        let not_loadable = |reason: String| LoadError::NotLoadable {
            path: path.into(),
            reason,
        };
        if !self.allow_insecure {
            crate::discovery::check_secure(path).map_err(not_loadable)?;
        }
        let source = copy::open_candidate(path, self.max_size).map_err(not_loadable)?;
        let (from, sha256) = match &self.copies_dir {
            Some(dir) => private_copy(source, path, dir, self.max_size).map_err(not_loadable)?,
            None => (
                path.to_path_buf(),
                copy::sha256_reader(source).map_err(|e| not_loadable(e.to_string()))?,
            ),
        };
        let (current, earlier) = {
            let state = self.state();
            let current = state.files.get(path).and_then(|s| s.current.clone());
            (current, state.by_sha.get(&sha256).cloned())
        };
        if let Some(current) = &current
            && current.sha256 == sha256
        {
            return Ok(current.clone());
        }
        let generation = current.map_or(0, |c| c.generation + 1);
        let opened = match &earlier {
            // Same bytes as a copy already mapped: glibc would hand back that handle anyway.
            Some(earlier) => Library::open(earlier.library.path()),
            None => Library::open(&from),
        };
        let library = match opened {
            Ok(library) => library,
            Err(e) => {
                if earlier.is_none() {
                    self.delete_unused_copy(&sha256, &from);
                }
                return Err(e.with_path(path));
            }
        };
        Ok(Arc::new(LoadedLib {
            library,
            source: path.into(),
            sha256,
            generation,
            loaded_at: SystemTime::now(),
        }))
    }

    /// The library providing `class`.
    pub fn class(&self, class: &str) -> Result<Arc<LoadedLib>, ClassError> {
        let state = self.state();
        if let Some(why) = state.gone.get(class) {
            return Err(ClassError::Gone {
                class: class.into(),
                why: why.clone(),
            });
        }
        state
            .classes
            .get(class)
            .and_then(|path| state.files.get(path))
            .and_then(|slot| slot.current.clone())
            .ok_or_else(|| ClassError::Unknown(class.into()))
    }

    /// Records that an instance stayed on the old code of `path`.
    pub fn note_migration_error(&self, path: &Path, error: String) {
        if let Some(slot) = self.state().files.get_mut(path) {
            slot.migration_errors.push(error);
        }
    }

    /// The sha256 loaded for each file.
    pub fn loaded_shas(&self) -> BTreeMap<PathBuf, String> {
        self.state()
            .files
            .iter()
            .filter_map(|(path, slot)| Some((path.clone(), slot.current.as_ref()?.sha256.clone())))
            .collect()
    }

    /// The number of files with a library loaded.
    pub fn loaded_count(&self) -> usize {
        self.state()
            .files
            .values()
            .filter(|s| s.current.is_some())
            .count()
    }

    /// True while some file is being retried (half written).
    pub fn retrying(&self) -> bool {
        self.state().files.values().any(|s| s.retrying)
    }

    /// A digest of the loaded libraries' contents: the code version without git.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for slot in self.state().files.values() {
            if let Some(lib) = &slot.current {
                hasher.update(lib.sha256.as_bytes());
            }
        }
        hex(&hasher.finalize())[..16].to_string()
    }
}

impl State {
    fn forget(&mut self, path: &Path) {
        let Some(slot) = self.files.remove(path) else {
            return;
        };
        if let Some(lib) = &slot.current {
            for class in &lib.library.info().classes {
                if self.classes.get(&class.class).map(PathBuf::as_path) == Some(path) {
                    self.classes.remove(&class.class);
                    let why = format!("its library file {} was removed", path.display());
                    self.gone.insert(class.class.clone(), why);
                }
            }
            // Kept so that a file coming back continues the generations (and its live
            // instances move to it) instead of starting over.
            self.retired.insert(path.to_path_buf(), slot);
        }
    }

    /// True when `path` (now with stat `key`) must be looked at: new, changed, or a loser of
    /// a collision while some file disappeared. Records `key` as looked at.
    fn needs_look(&mut self, path: &Path, key: StatKey, retry_taken: bool) -> bool {
        if !self.files.contains_key(path) {
            let mut slot = self.retired.remove(path).unwrap_or_default();
            slot.key = None;
            self.files.insert(path.to_path_buf(), slot);
        }
        let slot = self.files.entry(path.to_path_buf()).or_default();
        if slot.key == Some(key) && !(slot.taken && retry_taken) {
            return false;
        }
        slot.key = Some(key);
        true
    }

    fn install(
        &mut self,
        path: &Path,
        lib: Arc<LoadedLib>,
        log: bool,
        report: &mut ScanReport,
    ) -> Installed {
        let registered = lib
            .library
            .info()
            .classes
            .iter()
            .all(|c| self.classes.get(&c.class).map(PathBuf::as_path) == Some(path));
        let slot = self.files.entry(path.to_path_buf()).or_default();
        if registered && slot.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &lib)) {
            slot.error = None;
            slot.retrying = false;
            return Installed::Yes;
        }
        let classes = lib.library.info().classes.iter().map(|c| c.class.as_str());
        if let Some((class, owner)) = self.collision(path, classes) {
            let err = LoadError::ClassTaken {
                path: path.into(),
                class,
                owner,
            };
            let slot = self.files.entry(path.to_path_buf()).or_default();
            slot.taken = true;
            slot.error = Some(err.to_string());
            if log {
                tracing::warn!("{err}");
            }
            report.errors.push(FileError {
                path: path.into(),
                error: err.to_string(),
                folder: false,
            });
            return Installed::Taken;
        }
        let slot = self.files.entry(path.to_path_buf()).or_default();
        let previous = slot.current.replace(lib.clone());
        slot.error = None;
        slot.retrying = false;
        slot.taken = false;
        slot.copies.insert(lib.sha256.clone());
        slot.migration_errors.clear();
        if let Some(previous) = &previous {
            for class in &previous.library.info().classes {
                if lib.library.class(&class.class).is_none() {
                    self.classes.remove(&class.class);
                }
            }
        }
        for class in &lib.library.info().classes {
            self.classes.insert(class.class.clone(), path.into());
            self.gone.remove(&class.class);
        }
        self.by_sha
            .entry(lib.sha256.clone())
            .or_insert_with(|| lib.clone());
        match previous {
            Some(previous) if !Arc::ptr_eq(&previous, &lib) => report.reloaded.push(lib),
            _ => report.loaded.push(path.into()),
        }
        Installed::Yes
    }

    /// The first of `classes` (those of a library in `path`) that another file already
    /// provides, with that file. A file never collides with its own earlier generation.
    fn collision<'a>(
        &self,
        path: &Path,
        classes: impl IntoIterator<Item = &'a str>,
    ) -> Option<(String, PathBuf)> {
        classes.into_iter().find_map(|class| {
            let owner = self.classes.get(class)?;
            (owner.as_path() != path).then(|| (class.to_string(), owner.clone()))
        })
    }

    /// Records a refusal; `recent`: the file changed within the retry window.
    fn refuse(
        &mut self,
        path: &Path,
        err: LoadError,
        recent: bool,
        log: bool,
        report: &mut ScanReport,
    ) {
        let slot = self.files.entry(path.to_path_buf()).or_default();
        // A cut-short file is retried while it is still being written; one left alone for a
        // while is final until it changes.
        slot.retrying = err.is_retryable() && recent;
        if slot.retrying {
            // Looked at again on the next scan even if `stat` does not change.
            slot.key = None;
            tracing::debug!("{err} (retrying)");
        } else if log {
            tracing::warn!("{err}");
        }
        slot.error = Some(err.to_string());
        report.errors.push(FileError {
            path: path.into(),
            error: err.to_string(),
            folder: false,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::State;

    fn owned(state: &mut State, class: &str, path: &str) {
        state.classes.insert(class.into(), PathBuf::from(path));
    }

    #[test]
    fn the_first_file_keeps_a_class_and_a_file_never_collides_with_itself() {
        let mut state = State::default();
        owned(&mut state, "counter::Counter", "/p/liba.so");
        let b = Path::new("/p/libb.so");
        assert_eq!(
            state.collision(b, ["other::Other", "counter::Counter"]),
            Some(("counter::Counter".into(), PathBuf::from("/p/liba.so")))
        );
        assert_eq!(state.collision(b, ["other::Other"]), None);
        // A new generation of liba.so with the same class is no collision.
        assert_eq!(
            state.collision(Path::new("/p/liba.so"), ["counter::Counter"]),
            None
        );
    }

    #[test]
    fn unchanged_files_are_skipped_and_a_collision_loser_is_retried_when_a_file_goes() {
        let mut state = State::default();
        let (a, key) = (Path::new("/p/liba.so"), (1, 2, 3, 4));
        assert!(state.needs_look(a, key, false), "a new file is looked at");
        assert!(
            !state.needs_look(a, key, false),
            "an unchanged file is skipped"
        );
        assert!(
            state.needs_look(a, (2, 2, 3, 4), false),
            "a changed file is looked at"
        );
        let b = Path::new("/p/libb.so");
        assert!(state.needs_look(b, key, false));
        state.files.get_mut(b).expect("known").taken = true;
        assert!(
            !state.needs_look(b, key, false),
            "a loser waits while nothing went"
        );
        assert!(
            state.needs_look(b, key, true),
            "a loser is retried when a file went"
        );
    }

    #[test]
    fn pausing_waits_for_a_running_scan_and_stops_the_next() {
        let registry = std::sync::Arc::new(super::Registry::new(None, false).expect("registry"));
        let dirs: Vec<PathBuf> = Vec::new();
        assert!(registry.scan_unless_paused(&dirs).is_some());
        // A scan in progress holds the gate for its whole length.
        let scanning = super::lock(&registry.gate);
        let (tx, rx) = std::sync::mpsc::channel();
        let pauser = {
            let registry = registry.clone();
            std::thread::spawn(move || {
                registry.pause(true);
                let _ = tx.send(());
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "pause returned while a scan was running"
        );
        drop(scanning);
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("pause returns once the scan ended");
        pauser.join().expect("no panic");
        assert!(registry.scan_unless_paused(&dirs).is_none(), "paused");
        assert!(
            registry.scan(&dirs).errors.is_empty(),
            "an explicit scan still runs"
        );
        registry.pause(false);
        assert!(registry.scan_unless_paused(&dirs).is_some());
    }

    #[test]
    fn a_folder_that_cannot_be_listed_says_why_and_only_a_missing_one_is_awaited() {
        let base = std::env::temp_dir().join(format!("paglets-scan-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("mkdir");
        let file = base.join("not-a-folder");
        std::fs::write(&file, b"x").expect("write");
        let missing = base.join("missing");
        let registry = super::Registry::new(None, true).expect("registry");
        let report = registry.scan(&[file.clone(), missing.clone()]);
        let error = |path: &Path| {
            report
                .errors
                .iter()
                .find(|e| e.path == path)
                .map(|e| e.error.clone())
                .unwrap_or_default()
        };
        // ENOTDIR stands for any reason but absence (EACCES, EMFILE): said as it is.
        let unlistable = error(&file);
        assert!(
            unlistable.contains("cannot list the folder"),
            "{unlistable}"
        );
        assert!(!unlistable.contains("picked up"), "{unlistable}");
        assert!(error(&missing).contains("picked up when it appears"));
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
