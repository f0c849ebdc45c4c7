//! Host side: turns a library file into checked, safe [`Library`] and [`Instance`] handles.
//!
//! The host and `plugin_api::testing` both go through here, so the harness exercises exactly
//! what the host does. Libraries are never unloaded: a [`Library`] stays mapped for the life
//! of the process.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::abi::{self, HostSide, InstanceBox, Module};
use crate::error::{LoadError, PagletError};
use crate::paglet::Hook;

/// What a library says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibraryInfo {
    /// The library name, the first half of its class names.
    pub name: String,
    /// The library's version (its crate version).
    pub version: String,
    /// The classes it exports.
    pub classes: Vec<ClassInfo>,
}

/// One class a library exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// `<library>::<Type>`.
    pub class: String,
    /// A one-line description.
    pub description: String,
    /// The JSON of the state's default.
    pub state_template: Value,
}

/// What the host offers a paglet instance. The loader wraps it so that a panic in these
/// callbacks is caught on the host side too.
pub trait HostContext: Send + Sync + 'static {
    /// The instance's id.
    fn id(&self) -> String;
    /// The host's name.
    fn host_name(&self) -> String;
    /// Delivers a message from this instance to `to`; `args` and the reply are JSON text.
    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError>;
    /// Creates a paglet on behalf of this instance; returns its id.
    fn create(&self, class: &str, state: &str, id: Option<&str>) -> Result<String, PagletError>;
    /// Logs a line for this instance.
    fn log(&self, level: tracing::Level, target: &str, message: &str);
}

struct Guarded<H>(H);

fn caught<T>(what: &str, f: impl FnOnce() -> Result<T, PagletError>) -> Result<T, PagletError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(PagletError::Failed(format!("host panicked in {what}"))))
}

impl<H: HostContext> HostSide for Guarded<H> {
    fn id(&self) -> String {
        caught("id", || Ok(self.0.id())).unwrap_or_default()
    }

    fn host_name(&self) -> String {
        caught("host_name", || Ok(self.0.host_name())).unwrap_or_default()
    }

    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        caught("send", || self.0.send(to, kind, args))
    }

    fn create(&self, class: &str, state: &str, id: &str) -> Result<String, PagletError> {
        let id = (!id.is_empty()).then_some(id);
        caught("create", || self.0.create(class, state, id))
    }

    fn log(&self, level: tracing::Level, target: &str, message: &str) {
        let _ = caught("log", || {
            self.0.log(level, target, message);
            Ok(())
        });
    }
}

/// A loaded, checked paglet library.
pub struct Library {
    path: PathBuf,
    module: Module,
    info: LibraryInfo,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl Library {
    /// Opens `path` and checks it: a complete ELF file, a loadable library, the paglets root
    /// module, the same ABI version and layout, built to unwind, and a description that
    /// neither fails nor panics.
    pub fn open(path: &Path) -> Result<Library, LoadError> {
        check_elf(path)?;
        let module = abi::open_module(path)?;
        Library::from_module(path, module)
    }

    /// A library made of class set `L` in this process, through the same shims a built
    /// library exports.
    #[cfg(feature = "testing")]
    pub(crate) fn in_process<L: crate::paglet::ClassSet>(
        label: &str,
    ) -> Result<Library, LoadError> {
        Library::from_module(Path::new(label), Module(abi::root_module::<L>()))
    }

    fn from_module(path: &Path, module: Module) -> Result<Library, LoadError> {
        if !module.panic_unwind() {
            return Err(LoadError::PanicAbort { path: path.into() });
        }
        let described = module.describe().map_err(|e| LoadError::DescribeFailed {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let info = serde_json::from_str(&described).map_err(|e| LoadError::DescribeFailed {
            path: path.into(),
            reason: format!("description is not valid: {e}"),
        })?;
        Ok(Library {
            path: path.into(),
            module,
            info,
        })
    }

    /// The file this library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the library says about itself.
    pub fn info(&self) -> &LibraryInfo {
        &self.info
    }

    /// The class named `class`, if this library exports it.
    pub fn class(&self, class: &str) -> Option<&ClassInfo> {
        self.info.classes.iter().find(|c| c.class == class)
    }

    /// Creates an instance of `class` from `state` merged over the class's template. Runs no
    /// hook: the caller runs [`Hook::Created`] or [`Hook::Arrived`] as fits.
    pub fn create<H: HostContext>(
        &self,
        class: &str,
        state: Option<&Value>,
        host: H,
    ) -> Result<Instance, PagletError> {
        let info = self.class(class).ok_or_else(|| {
            PagletError::Failed(format!("library {} has no class {class}", self.info.name))
        })?;
        let mut merged = info.state_template.clone();
        match state {
            None | Some(Value::Null) => {}
            Some(state @ Value::Object(_)) => merge(&mut merged, state),
            Some(other) => {
                return Err(PagletError::InvalidArgs(format!(
                    "state for {class} must be a JSON object, not {other}"
                )));
            }
        }
        let state = serde_json::to_string(&merged)
            .map_err(|e| PagletError::InvalidArgs(format!("state: {e}")))?;
        let obj = self
            .module
            .create(class, &state, abi::context_box(Guarded(host)))?;
        Ok(Instance {
            obj,
            class: class.to_string(),
        })
    }
}

/// Lays `over` onto `base`: objects merge key by key (recursively), anything else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// One live paglet instance. Calls on it are answered by the library's code; a panic there
/// comes back as [`PagletError::Panicked`] and the instance stays usable.
pub struct Instance {
    obj: InstanceBox,
    class: String,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("class", &self.class)
            .finish()
    }
}

impl Instance {
    /// The instance's class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Handles one message; `args` and the reply are JSON text.
    pub fn handle(&mut self, kind: &str, args: &str) -> Result<String, PagletError> {
        abi::instance_handle(&mut self.obj, kind, args)
    }

    /// Runs a lifecycle hook.
    pub fn hook(&mut self, hook: Hook) -> Result<(), PagletError> {
        abi::instance_hook(&mut self.obj, hook)
    }

    /// The instance's state as JSON text.
    pub fn state(&self) -> Result<String, PagletError> {
        abi::instance_state(&self.obj)
    }
}

/// Refuses files that would crash `dlopen`: empty or non-ELF files, and ELF files whose
/// loadable segments lie past the end of the file (a library cut short, or one still being
/// written: mapping it faults with SIGBUS).
#[cfg(target_os = "linux")]
fn check_elf(path: &Path) -> Result<(), LoadError> {
    use object::read::elf::{FileHeader, ProgramHeader};

    let not_loadable = |reason: String| LoadError::NotLoadable {
        path: path.into(),
        reason,
    };
    let truncated = |reason: String| LoadError::Truncated {
        path: path.into(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| not_loadable(format!("cannot read it: {e}")))?;
    if data.is_empty() {
        return Err(not_loadable("the file is empty".into()));
    }
    if !data.starts_with(b"\x7fELF") {
        return Err(not_loadable("not an ELF file".into()));
    }
    if data.len() < 64 {
        return Err(truncated(format!(
            "only {} bytes, shorter than an ELF header",
            data.len()
        )));
    }
    if data[4] != 2 {
        // EI_CLASS: 2 is ELFCLASS64.
        return Err(not_loadable(
            "a 32-bit ELF file; this host is 64-bit".into(),
        ));
    }
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data)
        .map_err(|e| truncated(format!("ELF header: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| not_loadable(format!("ELF header: {e}")))?;
    if header.e_type(endian) != object::elf::ET_DYN {
        return Err(not_loadable(
            "an ELF file that is not a shared library".into(),
        ));
    }
    let segments = header
        .program_headers(endian, &*data)
        .map_err(|e| truncated(format!("program headers: {e}")))?;
    let len = data.len() as u64;
    for segment in segments {
        let kind = segment.p_type(endian);
        if kind != object::elf::PT_LOAD && kind != object::elf::PT_DYNAMIC {
            continue;
        }
        let start = segment.p_offset(endian);
        let end = start.saturating_add(segment.p_filesz(endian));
        if end > len {
            return Err(truncated(format!(
                "a segment ends at byte {end} but the file has {len} bytes (still being written?)"
            )));
        }
    }
    // The section header table comes last in the file: a library whose loadable segments are
    // complete but which is cut short after them (most of a debug build is debug info) is
    // still being written, too.
    header.section_headers(endian, &*data).map_err(|e| {
        truncated(format!(
            "the section header table lies past the end of the file ({len} bytes; still being \
             written?): {e}"
        ))
    })?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn check_elf(_path: &Path) -> Result<(), LoadError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn check(base: serde_json::Value, over: serde_json::Value, expected: serde_json::Value) {
        let mut merged = base;
        super::merge(&mut merged, &over);
        assert_eq!(merged, expected);
    }

    #[test]
    fn merge_overlays_objects_and_replaces_the_rest() {
        check(
            json!({"count": 0}),
            json!({"count": 5}),
            json!({"count": 5}),
        );
        check(
            json!({"a": 1, "b": {"c": 2, "d": 3}}),
            json!({"b": {"c": 9}}),
            json!({"a": 1, "b": {"c": 9, "d": 3}}),
        );
        check(
            json!({"a": 1}),
            json!({"x": [1]}),
            json!({"a": 1, "x": [1]}),
        );
        check(json!({"a": 1}), json!(7), json!(7));
    }
}
