//! Host side: turns a library file into checked, safe [`Library`] and [`Instance`] handles.
//!
//! The host and `plugin_api::testing` both go through here, so the harness exercises exactly
//! what the host does. Libraries are never unloaded: a [`Library`] stays mapped for the life
//! of the process.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::abi::{self, InstanceBox, Module};
pub use crate::describe::{ClassInfo, LibraryInfo};
use crate::error::{LoadError, PagletError};
pub use crate::host_context::HostContext;
use crate::message::{Arrival, ArrivalReason, Hook};

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
    pub(crate) fn in_process<L: crate::abi::Exports>(label: &str) -> Result<Library, LoadError> {
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

    /// Creates a new instance of `class` from `state` (a JSON object; fields it lacks take
    /// their defaults, at any depth; `None` or `null` is the class's default). A state with keys
    /// the class's state type would drop is refused ([`PagletError::DropsKeys`]). Runs no hook:
    /// the caller runs [`Hook::Created`].
    pub fn create<H: HostContext>(
        &self,
        class: &str,
        state: Option<&Value>,
        host: H,
    ) -> Result<Instance, PagletError> {
        let info = self.class_info(class)?;
        match state {
            None | Some(Value::Null) => self.instantiate(info, "", info.state_version, host),
            Some(state @ Value::Object(_)) => {
                self.instantiate(info, &state.to_string(), info.state_version, host)
            }
            Some(other) => Err(PagletError::InvalidArgs(format!(
                "state for {class} must be a JSON object, not {other}"
            ))),
        }
    }

    /// Creates an instance of `class` from a stored `state` that code with state version
    /// `version` wrote: the same version is read with the checks of
    /// [`state::read`](crate::state::read), an older one goes through the class's
    /// `Paglet::upgrade`, a newer one is refused (a paglet never moves back to older code).
    /// Runs no hook: the caller runs [`Hook::Arrived`].
    pub fn restore<H: HostContext>(
        &self,
        class: &str,
        state: &Value,
        version: u32,
        host: H,
    ) -> Result<Instance, PagletError> {
        let info = self.class_info(class)?;
        self.instantiate(info, &state.to_string(), version, host)
    }

    fn class_info(&self, class: &str) -> Result<&ClassInfo, PagletError> {
        self.class(class).ok_or_else(|| {
            PagletError::Failed(format!("library {} has no class {class}", self.info.name))
        })
    }

    fn instantiate<H: HostContext>(
        &self,
        info: &ClassInfo,
        state: &str,
        version: u32,
        host: H,
    ) -> Result<Instance, PagletError> {
        let obj = self
            .module
            .create(&info.class, state, version, abi::context_box(host))?;
        Ok(Instance {
            obj,
            class: info.class.clone(),
            state_version: info.state_version,
        })
    }
}

/// The id a host gives the `n`th paglet it names itself: the class's type name in lower case
/// and `n`, e.g. `counter-7`.
pub fn generated_id(class: &str, n: u64) -> String {
    let stem = class.rsplit("::").next().unwrap_or(class).to_lowercase();
    format!("{stem}-{n}")
}

/// One live paglet instance. Calls on it are answered by the library's code; a panic there
/// comes back as [`PagletError::Panicked`] and the instance stays usable.
pub struct Instance {
    obj: InstanceBox,
    class: String,
    state_version: u32,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("class", &self.class)
            .field("state_version", &self.state_version)
            .finish()
    }
}

impl Instance {
    /// The instance's class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The state version of the code this instance runs: the version its
    /// [`state`](Instance::state) is written in, to store beside it.
    pub fn state_version(&self) -> u32 {
        self.state_version
    }

    /// Handles one message; `args` and the reply are JSON text.
    pub fn handle(&mut self, kind: &str, args: &str) -> Result<String, PagletError> {
        abi::instance_handle(&mut self.obj, kind, args)
    }

    /// Runs a lifecycle hook.
    pub fn hook(&mut self, hook: Hook) -> Result<(), PagletError> {
        abi::instance_hook(&mut self.obj, &hook)
    }

    /// The instance's state as JSON text.
    pub fn state(&self) -> Result<String, PagletError> {
        abi::instance_state(&self.obj)
    }

    /// Moves this instance to `library`'s code: its state (and state version) re-created there
    /// as by [`Library::restore`], then the arrival hook. This instance is left untouched, so
    /// on any error (the new code would drop keys, cannot read the state, has no such class,
    /// its `arrived` fails) the caller keeps running it.
    pub fn migrate_to<H: HostContext>(
        &self,
        library: &Library,
        host: H,
    ) -> Result<Instance, PagletError> {
        let info = library.class(&self.class).ok_or_else(|| {
            PagletError::Failed(format!(
                "the new code of {} has no class {}",
                library.path().display(),
                self.class
            ))
        })?;
        let source = host.host_name();
        let state = self.state()?;
        let mut fresh = library.instantiate(info, &state, self.state_version, host)?;
        fresh.hook(Hook::Arrived(Arrival::new(ArrivalReason::Reload, source)))?;
        Ok(fresh)
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
