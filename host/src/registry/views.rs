//! How the registry shows itself: `GET /libraries`, `GET /classes` and `paglets discover`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::{FileError, Registry};

impl Registry {
    /// Every file seen, for `GET /libraries`, then every folder that could not be scanned.
    pub fn library_views(&self) -> Vec<LibraryView> {
        let state = self.state();
        let folders = state.folder_errors.iter().map(|(path, error)| LibraryView {
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
        state
            .files
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
        let state = self.state();
        state
            .classes
            .iter()
            .filter_map(|(class, path)| {
                let lib = state.files.get(path)?.current.as_ref()?;
                let info = lib.library.class(class)?;
                Some(ClassView {
                    class: class.clone(),
                    library: lib.library.info().name.clone(),
                    library_version: lib.library.info().version.clone(),
                    description: info.description.clone(),
                    state_template: info.state_template.clone(),
                    state_version: info.state_version,
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
    state_version: u32,
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

/// Seconds since the Unix epoch.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
