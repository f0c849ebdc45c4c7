//! The harness plugin authors use from `cargo test` (feature `testing`).
//!
//! Two levels, one API:
//! - in-process: [`PagletTest::new::<T>()`](PagletTest::new) drives a paglet type through the
//!   same shims its library exports, so panics, JSON round trips and hook order are the host's;
//! - real library: [`PagletTest::from_library`] loads the built `cdylib` through the host's
//!   loader (find it with [`built_library`]).
//!
//! An in-process class is named after the crate its type lives in (`rust_out` in this
//! example, which is a crate of its own).
//!
//! ```standalone_crate
//! use plugin_api::{Context, Message, Paglet, PagletError, Reply, testing::PagletTest};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { count: u64 }
//!
//! impl Paglet for Counter {
//!     fn handle_message(&mut self, _: &Context, msg: Message) -> Result<Reply, PagletError> {
//!         match msg.kind.as_str() {
//!             "increment" => { self.count += 1; Reply::new(&*self) }
//!             _ => Err(msg.not_handled()),
//!         }
//!     }
//! }
//!
//! let test = PagletTest::new::<Counter>();
//! let id = test.create("rust_out::Counter", serde_json::json!({})).unwrap();
//! assert_eq!(test.send(&id, "increment", serde_json::Value::Null).unwrap()["count"], 1);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};

use serde_json::Value;

use crate::error::{LoadError, PagletError};
use crate::loader::{ClassInfo, HostContext, Instance, Library};
use crate::paglet::{Hook, Paglet, Single};

/// One log line a paglet emitted through its context or `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The instance's id.
    pub id: String,
    /// The level.
    pub level: tracing::Level,
    /// The event's target (the paglet's module path, or its class for `Context::log`).
    pub target: String,
    /// The text.
    pub message: String,
}

/// Runs paglets the way the host does, in a test.
pub struct PagletTest {
    shared: Arc<Shared>,
}

struct Shared {
    libraries: Vec<Library>,
    instances: Mutex<BTreeMap<String, Arc<Mutex<Instance>>>>,
    logs: Mutex<Vec<LogLine>>,
    next_id: AtomicU64,
}

/// The harness's host context: messages go to instances of the same harness, and an
/// instance already handling a message (anywhere up the call chain) refuses another.
struct TestHost {
    shared: Weak<Shared>,
    id: String,
}

impl HostContext for TestHost {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn host_name(&self) -> String {
        "test".into()
    }

    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        self.shared()?.send_raw(to, kind, args)
    }

    fn create(&self, class: &str, state: &str, id: Option<&str>) -> Result<String, PagletError> {
        let state: Value = serde_json::from_str(state)
            .map_err(|e| PagletError::InvalidArgs(format!("state is not JSON: {e}")))?;
        Shared::create(&self.shared()?, class, id, &state)
    }

    fn log(&self, level: tracing::Level, target: &str, message: &str) {
        if let Some(shared) = self.shared.upgrade() {
            let line = LogLine {
                id: self.id.clone(),
                level,
                target: target.into(),
                message: message.into(),
            };
            shared
                .logs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    }
}

impl TestHost {
    fn shared(&self) -> Result<Arc<Shared>, PagletError> {
        self.shared
            .upgrade()
            .ok_or_else(|| PagletError::Failed("the harness is gone".into()))
    }
}

impl Shared {
    fn instance(&self, id: &str) -> Result<Arc<Mutex<Instance>>, PagletError> {
        let instances = self
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        instances
            .get(id)
            .cloned()
            .ok_or_else(|| PagletError::Failed(format!("no paglet {id}")))
    }

    fn send_raw(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        let target = self.instance(to)?;
        let mut instance = match target.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(PagletError::Failed(format!(
                    "cycle: {to} is already handling a message in this call chain"
                )));
            }
        };
        instance.handle(kind, args)
    }

    fn create(
        shared: &Arc<Shared>,
        class: &str,
        id: Option<&str>,
        state: &Value,
    ) -> Result<String, PagletError> {
        let library = shared
            .libraries
            .iter()
            .find(|l| l.class(class).is_some())
            .ok_or_else(|| PagletError::Failed(format!("unknown class {class}")))?;
        let id = match id {
            Some(id) => id.to_string(),
            None => {
                let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
                format!(
                    "{}-{n}",
                    class.rsplit("::").next().unwrap_or(class).to_lowercase()
                )
            }
        };
        if shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
        {
            return Err(PagletError::Failed(format!("a paglet with id {id} exists")));
        }
        let host = TestHost {
            shared: Arc::downgrade(shared),
            id: id.clone(),
        };
        let mut instance = library.create(class, Some(state), host)?;
        instance.hook(Hook::Created)?;
        let mut instances = shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        instances.insert(id.clone(), Arc::new(Mutex::new(instance)));
        Ok(id)
    }
}

impl PagletTest {
    /// A harness running paglet type `P` in-process, as the library `<crate>` would.
    pub fn new<P: Paglet>() -> PagletTest {
        PagletTest::with_libraries(Vec::new()).with::<P>()
    }

    /// Adds paglet type `P` to this harness, e.g. the second class of a library. Call it
    /// before creating paglets.
    pub fn with<P: Paglet>(mut self) -> PagletTest {
        let label = format!("in-process {}", std::any::type_name::<P>());
        // Describing an in-process class only fails if the paglet's own `Default` or
        // `Serialize` fails, which is the bug the test is about to show.
        let library = Library::in_process::<Single<P>>(&label).expect("describe the paglet type");
        Arc::get_mut(&mut self.shared)
            .expect("PagletTest::with is called before any paglet is created")
            .libraries
            .push(library);
        self
    }

    /// A harness running the built library at `path`, loaded through the host's loader.
    pub fn from_library(path: impl AsRef<Path>) -> Result<PagletTest, LoadError> {
        Ok(PagletTest::with_libraries(vec![Library::open(
            path.as_ref(),
        )?]))
    }

    fn with_libraries(libraries: Vec<Library>) -> PagletTest {
        PagletTest {
            shared: Arc::new(Shared {
                libraries,
                instances: Mutex::default(),
                logs: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Every class the harness can create.
    pub fn classes(&self) -> Vec<ClassInfo> {
        self.shared
            .libraries
            .iter()
            .flat_map(|l| l.info().classes.clone())
            .collect()
    }

    /// Creates a paglet of `class` with `state` merged over its default, runs its creation
    /// hook, and returns its id.
    pub fn create(&self, class: &str, state: Value) -> Result<String, PagletError> {
        Shared::create(&self.shared, class, None, &state)
    }

    /// Like [`create`](PagletTest::create), with the id given.
    pub fn create_with_id(
        &self,
        class: &str,
        id: &str,
        state: Value,
    ) -> Result<String, PagletError> {
        Shared::create(&self.shared, class, Some(id), &state)
    }

    /// Sends a message and returns the reply.
    pub fn send(&self, id: &str, kind: &str, args: Value) -> Result<Value, PagletError> {
        let reply = self.shared.send_raw(id, kind, &args.to_string())?;
        serde_json::from_str(&reply)
            .map_err(|e| PagletError::Failed(format!("reply is not JSON: {e}")))
    }

    /// The paglet's state.
    pub fn state(&self, id: &str) -> Result<Value, PagletError> {
        let instance = self.shared.instance(id)?;
        let text = instance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()?;
        serde_json::from_str(&text).map_err(|e| PagletError::Failed(format!("state: {e}")))
    }

    /// Moves the paglet to a fresh instance of its code with its state and runs its arrival
    /// hook, as a host reload does.
    pub fn reload(&self, id: &str) -> Result<(), PagletError> {
        let slot = self.shared.instance(id)?;
        let mut current = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let state: Value = serde_json::from_str(&current.state()?)
            .map_err(|e| PagletError::Failed(format!("state: {e}")))?;
        let library = self
            .shared
            .libraries
            .iter()
            .find(|l| l.class(current.class()).is_some())
            .ok_or_else(|| PagletError::Failed(format!("unknown class {}", current.class())))?;
        let host = TestHost {
            shared: Arc::downgrade(&self.shared),
            id: id.to_string(),
        };
        let mut fresh = library.create(current.class(), Some(&state), host)?;
        fresh.hook(Hook::Arrived)?;
        *current = fresh;
        Ok(())
    }

    /// Runs the disposing hook and removes the paglet.
    pub fn dispose(&self, id: &str) -> Result<(), PagletError> {
        let slot = self.shared.instance(id)?;
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hook(Hook::Disposing)?;
        self.shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Finds the `cdylib` cargo built for crate `name` next to the running test.
///
/// For a `crate-type = ["cdylib", "rlib"]` crate, cargo builds the library when it builds an
/// integration test (`tests/*.rs`), into `target/<profile>/deps/`; unit tests alone never
/// build it. So call this from an integration test.
pub fn built_library(name: &str) -> Result<PathBuf, String> {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(format!(
        "{file} not found (looked at {}); build it with `cargo build`, or call this from an \
         integration test of a crate with crate-type = [\"cdylib\", \"rlib\"]",
        tried.join(", ")
    ))
}
