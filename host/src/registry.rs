//! Loaded libraries and their classes: private copies, generations, collisions, and the
//! per-file errors `GET /libraries` shows. Knows nothing of instances: a scan reports which
//! files were reloaded and the runtime migrates their instances.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugin_api::LoadError;
use plugin_api::loader::Library;
use serde::Serialize;
use serde_json::Value;
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

/// Identity of a file's contents as `stat` sees them: size, mtime and inode.
type StatKey = (u64, i64, i64, u64);

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
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
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
                    format!(
                        "{}: cannot list the folder: {e} (it is picked up when it appears)",
                        dir.display()
                    )
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
        let key = match std::fs::metadata(path) {
            Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino()),
            Err(_) => return, // vanished since the listing; the next scan forgets it
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
        if let Some(current) = &current {
            if current.sha256 == sha256 {
                return Ok(current.clone());
            }
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

    /// Every file seen, for `GET /libraries`, then every folder that could not be scanned.
    pub fn library_views(&self) -> Vec<LibraryView> {
        let folders = self.folder_errors.iter().map(|(path, error)| LibraryView {
            path: path.clone(),
            loaded_from: None,
            sha256: None,
            name: None,
            version: None,
            classes: Vec::new(),
            loaded_at: None,
            generation: None,
            loaded_copies: 0,
            error: Some(error.clone()),
            retrying: Some(false),
            migration_errors: Vec::new(),
        });
        self.files
            .iter()
            .map(|(path, slot)| {
                let lib = slot.current.as_deref();
                LibraryView {
                    path: path.clone(),
                    loaded_from: lib.map(|l| l.library.path().to_path_buf()),
                    sha256: lib.map(|l| l.sha256.clone()),
                    name: lib.map(|l| l.library.info().name.clone()),
                    version: lib.map(|l| l.library.info().version.clone()),
                    classes: lib
                        .map(|l| {
                            l.library
                                .info()
                                .classes
                                .iter()
                                .map(|c| c.class.clone())
                                .collect()
                        })
                        .unwrap_or_default(),
                    loaded_at: lib.map(|l| unix_seconds(l.loaded_at)),
                    generation: lib.map(|l| l.generation),
                    loaded_copies: slot.copies.len(),
                    error: slot.error.clone(),
                    retrying: slot.error.as_ref().map(|_| slot.retrying),
                    migration_errors: slot.migration_errors.clone(),
                }
            })
            .chain(folders)
            .collect()
    }

    /// Every loadable class, for `GET /classes`.
    pub fn class_views(&self) -> Vec<ClassView> {
        self.classes
            .iter()
            .filter_map(|(class, path)| {
                let lib = self.files.get(path)?.current.as_ref()?;
                let info = lib.library.class(class)?;
                Some(ClassView {
                    class: class.clone(),
                    library: lib.library.info().name.clone(),
                    library_version: lib.library.info().version.clone(),
                    description: info.description.clone(),
                    state_template: info.state_template.clone(),
                    path: path.clone(),
                })
            })
            .collect()
    }
}

/// A file as `GET /libraries` shows it.
#[derive(Debug, Serialize)]
pub struct LibraryView {
    path: PathBuf,
    loaded_from: Option<PathBuf>,
    sha256: Option<String>,
    name: Option<String>,
    version: Option<String>,
    classes: Vec<String>,
    loaded_at: Option<f64>,
    generation: Option<u64>,
    loaded_copies: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retrying: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    migration_errors: Vec<String>,
}

impl LibraryView {
    /// True when a library is loaded from this file.
    pub fn is_loaded(&self) -> bool {
        self.loaded_from.is_some()
    }
}

/// A class as `GET /classes` shows it.
#[derive(Debug, Serialize)]
pub struct ClassView {
    class: String,
    library: String,
    library_version: String,
    description: String,
    state_template: Value,
    path: PathBuf,
}

/// What `paglets discover --json` prints.
#[derive(Debug, Serialize)]
pub struct DiscoverReport {
    /// The libraries that loaded.
    pub libraries: Vec<LibraryView>,
    /// Their classes.
    pub classes: Vec<ClassView>,
    /// Every refused file.
    pub errors: Vec<FileError>,
}

impl DiscoverReport {
    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for lib in &self.libraries {
            let name = lib.name.as_deref().unwrap_or("?");
            let version = lib.version.as_deref().unwrap_or("?");
            out.push_str(&format!("{name} {version}  {}\n", lib.path.display()));
            for class in self.classes.iter().filter(|c| c.path == lib.path) {
                out.push_str(&format!("    {:<28} {}\n", class.class, class.description));
            }
        }
        for err in &self.errors {
            out.push_str(&format!("error: {}\n", err.error));
        }
        let classes = self.classes.len();
        let libraries = self.libraries.len();
        out.push_str(&format!(
            "{libraries} libraries, {classes} classes, {} errors\n",
            self.errors.len()
        ));
        out
    }
}

/// Copies `src` into `dir` under a temporary name, hashes the copy (the source may change
/// meanwhile) and renames it to its content address. A real copy, never a hard link: glibc
/// would hand back an old handle for another path to the same inode.
fn private_copy(src: &Path, dir: &Path) -> std::io::Result<(PathBuf, String)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".copy-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(src, &tmp)?;
    let sha = sha256_file(&tmp)?;
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir.join(format!(
        "{stem}-{}{}",
        &sha[..16],
        std::env::consts::DLL_SUFFIX
    ));
    if dest.exists() {
        std::fs::remove_file(&tmp)?;
    } else {
        std::fs::rename(&tmp, &dest)?;
    }
    Ok((dest, sha))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
