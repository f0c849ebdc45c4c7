//! Loaded libraries and their classes: private copies, generations, collisions, and the
//! per-file errors `GET /libraries` shows. Knows nothing of instances: a scan reports which
//! files were reloaded and the runtime migrates their instances.

mod copy;
mod views;

pub use copy::sha256_file;
use copy::{hex, private_copy};
pub use views::{DiscoverReport, unix_seconds};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
#[derive(Debug)]
pub struct Registry {
    /// Where private copies go; `None` loads files in place (for `paglets discover`).
    copies_dir: Option<PathBuf>,
    allow_insecure: bool,
    /// Log refusals as they are found (a host); `paglets discover` prints them itself.
    log: bool,
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

impl Registry {
    /// An empty registry. With `copies_dir`, every library is loaded from a private copy
    /// kept there; the folder's leftovers from earlier runs are pruned.
    pub fn new(copies_dir: Option<PathBuf>, allow_insecure: bool) -> std::io::Result<Self> {
        if let Some(dir) = &copies_dir {
            std::fs::create_dir_all(dir)?;
            copy::prune(dir)?;
        }
        Ok(Registry {
            copies_dir,
            allow_insecure,
            log: true,
            files: BTreeMap::new(),
            classes: BTreeMap::new(),
            gone: BTreeMap::new(),
            retired: BTreeMap::new(),
            folder_errors: BTreeMap::new(),
            by_sha: HashMap::new(),
        })
    }

    /// Stops logging refusals (the caller reports them).
    pub fn quiet(mut self) -> Self {
        self.log = false;
        self
    }

    /// Scans `dirs` in order: loads new files, reloads changed ones, forgets removed ones.
    /// The first file to provide a class keeps it.
    pub fn scan(&mut self, dirs: &[PathBuf]) -> ScanReport {
        let mut report = ScanReport::default();
        let mut seen = Vec::new();
        // Folders refused or unreadable this time: their known files are left as they are.
        let mut held = Vec::new();
        let before = std::mem::take(&mut self.folder_errors);
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
                    });
                    if self.log && before.get(dir) != Some(&error) {
                        tracing::warn!("{error}");
                    }
                    self.folder_errors.insert(dir.clone(), error);
                    held.push(dir.clone());
                }
            }
        }
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| {
                !seen.contains(p) && !held.iter().any(|dir| p.parent() == Some(dir.as_path()))
            })
            .cloned()
            .collect();
        for path in removed {
            self.forget(&path);
            report.removed.push(path);
        }
        let retry_taken = !report.removed.is_empty();
        for path in seen {
            self.scan_file(&path, retry_taken, &mut report);
        }
        report
    }

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

    fn scan_file(&mut self, path: &Path, retry_taken: bool, report: &mut ScanReport) {
        let Some(key) = stat_key(path) else {
            return; // vanished since the listing; the next scan forgets it
        };
        if !self.files.contains_key(path) {
            let mut slot = self.retired.remove(path).unwrap_or_default();
            slot.key = None;
            self.files.insert(path.to_path_buf(), slot);
        }
        let slot = self.files.entry(path.to_path_buf()).or_default();
        if slot.key == Some(key) && !(slot.taken && retry_taken) {
            return;
        }
        slot.key = Some(key);
        match self.load(path) {
            Ok(lib) => self.install(path, lib, report),
            Err(err) => self.refuse(path, err, report),
        }
    }

    fn load(&mut self, path: &Path) -> Result<Arc<LoadedLib>, LoadError> {
        if !self.allow_insecure {
            crate::discovery::check_secure(path).map_err(|reason| LoadError::NotLoadable {
                path: path.into(),
                reason,
            })?;
        }
        let (from, sha256) = match &self.copies_dir {
            Some(dir) => private_copy(path, dir).map_err(|e| LoadError::NotLoadable {
                path: path.into(),
                reason: e.to_string(),
            })?,
            None => {
                let sha = sha256_file(path).map_err(|e| LoadError::NotLoadable {
                    path: path.into(),
                    reason: e.to_string(),
                })?;
                (path.to_path_buf(), sha)
            }
        };
        let current = self.files.get(path).and_then(|s| s.current.clone());
        if let Some(current) = &current
            && current.sha256 == sha256
        {
            return Ok(current.clone());
        }
        let generation = current.map_or(0, |c| c.generation + 1);
        let library = match self.by_sha.get(&sha256) {
            // Same bytes as a copy already mapped: glibc would hand back that handle anyway.
            Some(earlier) => Library::open(earlier.library.path()),
            None => Library::open(&from),
        }
        .map_err(|e| e.with_path(path))?;
        Ok(Arc::new(LoadedLib {
            library,
            source: path.into(),
            sha256,
            generation,
            loaded_at: SystemTime::now(),
        }))
    }

    fn install(&mut self, path: &Path, lib: Arc<LoadedLib>, report: &mut ScanReport) {
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
            return;
        }
        for class in &lib.library.info().classes {
            if let Some(owner) = self
                .classes
                .get(&class.class)
                .filter(|o| o.as_path() != path)
            {
                let err = LoadError::ClassTaken {
                    path: path.into(),
                    class: class.class.clone(),
                    owner: owner.clone(),
                };
                let slot = self.files.entry(path.to_path_buf()).or_default();
                slot.taken = true;
                slot.error = Some(err.to_string());
                if self.log {
                    tracing::warn!("{err}");
                }
                report.errors.push(FileError {
                    path: path.into(),
                    error: err.to_string(),
                });
                return;
            }
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
    }

    fn refuse(&mut self, path: &Path, err: LoadError, report: &mut ScanReport) {
        let slot = self.files.entry(path.to_path_buf()).or_default();
        // A cut-short file is retried while it is still being written; one left alone for a
        // while is final until it changes.
        slot.retrying = err.is_retryable() && modified_within(path, RETRY_WINDOW);
        if slot.retrying {
            // Looked at again on the next scan even if `stat` does not change.
            slot.key = None;
        }
        if slot.retrying {
            tracing::debug!("{err} (retrying)");
        } else if self.log {
            tracing::warn!("{err}");
        }
        slot.error = Some(err.to_string());
        report.errors.push(FileError {
            path: path.into(),
            error: err.to_string(),
        });
    }

    /// The library providing `class`.
    pub fn class(&self, class: &str) -> Result<Arc<LoadedLib>, ClassError> {
        if let Some(why) = self.gone.get(class) {
            return Err(ClassError::Gone {
                class: class.into(),
                why: why.clone(),
            });
        }
        self.classes
            .get(class)
            .and_then(|path| self.files.get(path))
            .and_then(|slot| slot.current.clone())
            .ok_or_else(|| ClassError::Unknown(class.into()))
    }

    /// Records that an instance stayed on the old code of `path`.
    pub fn note_migration_error(&mut self, path: &Path, error: String) {
        if let Some(slot) = self.files.get_mut(path) {
            slot.migration_errors.push(error);
        }
    }

    /// The sha256 loaded for each file.
    pub fn loaded_shas(&self) -> BTreeMap<PathBuf, String> {
        self.files
            .iter()
            .filter_map(|(path, slot)| Some((path.clone(), slot.current.as_ref()?.sha256.clone())))
            .collect()
    }

    /// The number of files with a library loaded.
    pub fn loaded_count(&self) -> usize {
        self.files.values().filter(|s| s.current.is_some()).count()
    }

    /// True while some file is being retried (half written).
    pub fn retrying(&self) -> bool {
        self.files.values().any(|s| s.retrying)
    }

    /// A digest of the loaded libraries' contents: the code version without git.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for slot in self.files.values() {
            if let Some(lib) = &slot.current {
                hasher.update(lib.sha256.as_bytes());
            }
        }
        hex(&hasher.finalize())[..16].to_string()
    }
}
