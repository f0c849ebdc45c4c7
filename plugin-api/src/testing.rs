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
//! let id = test.create(Counter { count: 41 }).unwrap();
//! assert_eq!(test.send(&id, "increment", serde_json::Value::Null).unwrap()["count"], 42);
//! // The same, by class name and JSON (fields left out take their defaults):
//! let id = test.create_class("rust_out::Counter", serde_json::json!({})).unwrap();
//! assert_eq!(test.send(&id, "increment", serde_json::Value::Null).unwrap()["count"], 1);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};

use serde_json::Value;

use crate::error::{LoadError, PagletError};
use crate::export::Single;
use crate::loader::{ClassInfo, HostContext, Instance, Library, generated_id};
use crate::message::{Arrival, ArrivalReason, Hook};
use crate::paglet::Paglet;

/// One log line a paglet emitted through its context or `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The instance's id.
    pub id: String,
    /// The level: the one given to `Context::log` (e.g. [`Level::INFO`](crate::Level::INFO)),
    /// or the `tracing` macro's (`tracing::warn!` is `Level::WARN`); a caught panic is
    /// `Level::ERROR`.
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
    requests: Mutex<Vec<LifecycleRequest>>,
    next_id: AtomicU64,
}

/// A lifecycle operation a paglet asked for on itself through its context
/// (`ctx.dispatch`, `ctx.clone_to`, `ctx.deactivate`). The harness records it; it moves
/// nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleRequest {
    /// The instance that asked.
    pub id: String,
    /// `dispatch`, `clone` or `deactivate`.
    pub op: String,
    /// Its arguments, e.g. `{"to": "lab-b"}`.
    pub args: Value,
}

/// The harness's host context: messages go to instances of the same harness, and an
/// instance already handling a message (anywhere up the call chain) refuses another.
struct HarnessContext {
    shared: Weak<Shared>,
    id: String,
}

impl HostContext for HarnessContext {
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
        Shared::create(&self.shared()?, class, id, &state, None)
    }

    fn send_oneway(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        // Delivered at once in the harness; the reply is dropped as a host drops it.
        let shared = self.shared()?;
        shared.send_raw(to, kind, args)?;
        Ok(format!(
            "oneway-{}",
            shared.next_id.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn request(&self, op: &str, args: &str) -> Result<String, PagletError> {
        let shared = self.shared()?;
        let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
        let answer = match op {
            "clone" => {
                let id = args["id"].as_str().map(str::to_string).unwrap_or_else(|| {
                    format!(
                        "{}-clone-{}",
                        self.id,
                        shared.next_id.fetch_add(1, Ordering::Relaxed)
                    )
                });
                serde_json::json!({ "id": id })
            }
            _ => serde_json::json!({ "id": self.id }),
        };
        shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LifecycleRequest {
                id: self.id.clone(),
                op: op.into(),
                args,
            });
        Ok(answer.to_string())
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

impl HarnessContext {
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
            .ok_or_else(|| PagletError::NotFound(format!("no paglet with id '{id}'")))
    }

    fn send_raw(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        let target = self.instance(to)?;
        let mut instance = match target.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(PagletError::Deadlock(format!(
                    "{to} is already handling a message in this call chain"
                )));
            }
        };
        instance.handle(kind, args)
    }

    fn library(&self, class: &str) -> Result<&Library, PagletError> {
        self.libraries
            .iter()
            .find(|l| l.class(class).is_some())
            .ok_or_else(|| PagletError::Failed(format!("unknown class {class}")))
    }

    /// Creates a paglet from `state`: a new one (`version` `None`, creation hook), or one
    /// restored from a state of that version (arrival hook).
    fn create(
        shared: &Arc<Shared>,
        class: &str,
        id: Option<&str>,
        state: &Value,
        version: Option<u32>,
    ) -> Result<String, PagletError> {
        let library = shared.library(class)?;
        let id = match id {
            Some(id) => id.to_string(),
            None => generated_id(class, shared.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        if shared
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
        {
            return Err(PagletError::Failed(format!("a paglet with id {id} exists")));
        }
        let host = HarnessContext {
            shared: Arc::downgrade(shared),
            id: id.clone(),
        };
        let instance = match version {
            None => {
                let mut instance = library.create(class, Some(state), host)?;
                instance.hook(Hook::Created)?;
                instance
            }
            Some(version) => {
                let mut instance = library.restore(class, state, version, host)?;
                instance.hook(Hook::Arrived(Arrival::new(ArrivalReason::Restore, "test")))?;
                instance
            }
        };
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
                requests: Mutex::default(),
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

    /// Creates a paglet of type `P` with `state`, runs its creation hook, and returns its id:
    /// `test.create(Counter { count: 41 })`. The class is the one the harness has for `P`
    /// (the in-process class of [`new::<P>`](PagletTest::new), or the built library's class
    /// with `P`'s type name).
    pub fn create<P: Paglet>(&self, state: P) -> Result<String, PagletError> {
        let class = self.class_of::<P>()?;
        let state = serde_json::to_value(&state)
            .map_err(|e| PagletError::InvalidArgs(format!("state does not serialize: {e}")))?;
        Shared::create(&self.shared, &class, None, &state, None)
    }

    /// Creates a paglet of `class` (by name) from `state`, a JSON object whose missing fields
    /// take their defaults, runs its creation hook, and returns its id.
    pub fn create_class(&self, class: &str, state: Value) -> Result<String, PagletError> {
        Shared::create(&self.shared, class, None, &state, None)
    }

    /// Like [`create_class`](PagletTest::create_class), with the id given.
    pub fn create_with_id(
        &self,
        class: &str,
        id: &str,
        state: Value,
    ) -> Result<String, PagletError> {
        Shared::create(&self.shared, class, Some(id), &state, None)
    }

    /// Creates a paglet of `class` from a state that code with state version `version`
    /// wrote, as the host restores a stored paglet or moves one to new code: an older version
    /// goes through `Paglet::upgrade`, a newer one is refused. Runs the arrival hook and
    /// returns the id. This is how an upgrade is tested:
    /// `test.restore("todo::Todo", json!({"items": ["old"]}), 1)`.
    pub fn restore(&self, class: &str, state: Value, version: u32) -> Result<String, PagletError> {
        Shared::create(&self.shared, class, None, &state, Some(version))
    }

    /// The state version of the code the paglet runs (what a host stores beside its state).
    pub fn state_version(&self, id: &str) -> Result<u32, PagletError> {
        let instance = self.shared.instance(id)?;
        let version = instance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state_version();
        Ok(version)
    }

    /// The class this harness has for type `P`: the one whose type name is `P`'s.
    fn class_of<P: Paglet>(&self) -> Result<String, PagletError> {
        let full = std::any::type_name::<P>();
        let name = full.rsplit("::").next().unwrap_or(full);
        let mut found = self
            .classes()
            .into_iter()
            .filter(|c| c.class.rsplit("::").next() == Some(name));
        match (found.next(), found.next()) {
            (Some(class), None) => Ok(class.class),
            (None, _) => Err(PagletError::Failed(format!(
                "the harness has no class {name}"
            ))),
            (Some(_), Some(_)) => Err(PagletError::Failed(format!(
                "the harness has several classes named {name}: use create_class"
            ))),
        }
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
    /// hook, as a host reload does (`Instance::migrate_to`). On an error it stays as it was.
    pub fn reload(&self, id: &str) -> Result<(), PagletError> {
        let slot = self.shared.instance(id)?;
        let mut current = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let library = self.shared.library(current.class())?;
        let host = HarnessContext {
            shared: Arc::downgrade(&self.shared),
            id: id.to_string(),
        };
        *current = current.migrate_to(library, host)?;
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

    /// Runs a lifecycle hook on paglet `id`, as the host would before or after the operation
    /// it announces, e.g. `Hook::Dispatching { to: "lab-b".into() }`; the harness moves
    /// nothing itself.
    pub fn run_hook(&self, id: &str, hook: Hook) -> Result<(), PagletError> {
        let slot = self.shared.instance(id)?;
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hook(hook)
    }

    /// Every lifecycle operation paglets asked for on themselves so far, in order.
    pub fn requests(&self) -> Vec<LifecycleRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::{Value, json};

    use super::PagletTest;
    use crate::{Context, Level, Message, Paglet, PagletError, Reply};

    /// Version 2 of a note: `title` renamed `name` (alias), `tags` added, `extra` became
    /// `extras` through `upgrade`.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Note {
        #[serde(alias = "title")]
        name: String,
        body: Body,
        extras: Vec<u32>,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Body {
        text: String,
        words: u32,
    }

    const NOTE: &str = "plugin_api::Note";

    impl Paglet for Note {
        const STATE_VERSION: u32 = 2;

        fn upgrade(mut old: Value, from_version: u32) -> Result<Self, PagletError> {
            assert_eq!(from_version, 1, "only version 1 is older");
            let extra = old
                .as_object_mut()
                .and_then(|o| o.remove("extra"))
                .unwrap_or(json!(0));
            old["extras"] = json!([extra]);
            crate::state::read(old)
        }

        fn handle_message(&mut self, ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
            ctx.log(
                Level::WARN,
                format_args!("{} has {} extras", self.name, self.extras.len()),
            );
            Err(msg.not_handled())
        }
    }

    #[test]
    fn a_typed_create_uses_the_value_as_the_state() {
        let test = PagletTest::new::<Note>();
        let note = Note {
            name: "n".into(),
            ..Note::default()
        };
        let id = test.create(note).expect("create");
        assert_eq!(test.state(&id).expect("state")["name"], "n");
        assert_eq!(test.state_version(&id), Ok(2));
    }

    #[test]
    fn a_state_of_this_version_is_read_with_aliases_and_nested_defaults() {
        let test = PagletTest::new::<Note>();
        let id = test
            .restore(
                NOTE,
                json!({"title": "t", "body": {"text": "x"}, "extras": []}),
                2,
            )
            .expect("restore");
        assert_eq!(
            test.state(&id),
            Ok(json!({"name": "t", "body": {"text": "x", "words": 0}, "extras": []}))
        );
    }

    #[test]
    fn an_older_state_goes_through_upgrade() {
        let test = PagletTest::new::<Note>();
        let id = test
            .restore(
                NOTE,
                json!({"title": "t", "body": {"text": "x"}, "extra": 7}),
                1,
            )
            .expect("restore");
        assert_eq!(
            test.state(&id),
            Ok(json!({"name": "t", "body": {"text": "x", "words": 0}, "extras": [7]}))
        );
        assert_eq!(test.state_version(&id), Ok(2));
    }

    #[test]
    fn keys_the_type_would_drop_are_refused_on_restore_and_create() {
        let test = PagletTest::new::<Note>();
        let dropping = json!({"name": "t", "extra": 7, "body": {"old": 1}});
        let expected = PagletError::DropsKeys {
            keys: vec!["body.old".into(), "extra".into()],
        };
        assert_eq!(
            test.restore(NOTE, dropping.clone(), 2),
            Err(expected.clone())
        );
        assert_eq!(test.create_class(NOTE, dropping), Err(expected));
    }

    #[test]
    fn a_state_from_a_newer_version_is_refused() {
        let test = PagletTest::new::<Note>();
        let err = test.restore(NOTE, json!({}), 3).expect_err("newer");
        assert!(
            matches!(&err, PagletError::InvalidArgs(m) if m.contains("state version 3 is newer than this code's state version 2")),
            "{err:?}"
        );
    }

    #[test]
    fn context_log_takes_a_level_and_any_display() {
        let test = PagletTest::new::<Note>();
        let id = test.create(Note::default()).expect("create");
        let _ = test.send(&id, "anything", Value::Null);
        let logs = test.logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].level, Level::WARN);
        assert_eq!(logs[0].message, " has 0 extras");
        assert_eq!(logs[0].target, NOTE);
    }
}
