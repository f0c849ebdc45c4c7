//! [`Code`]: what runs a paglet's code, a loaded [`Instance`] in this process or a
//! [`Remote`] instance in the worker process of an isolated library. Both have the same
//! methods; the runtime does not care which it holds, except for what a crash adds.

use std::sync::Arc;

use plugin_api::loader::Instance;
use plugin_api::{Arrival, ArrivalReason, Hook};
use serde_json::Value;

use super::context::HostContext;
use super::{Runtime, RuntimeError};
use crate::isolation::{self, Isolated, IsolationError, Remote};
use crate::registry::LoadedLib;

/// A paglet's running code.
pub enum Code {
    /// In this process.
    Local(Instance),
    /// In a worker process.
    Remote(Remote),
}

impl From<IsolationError> for RuntimeError {
    fn from(e: IsolationError) -> Self {
        match e {
            IsolationError::Paglet(e) => RuntimeError::Paglet(e),
            IsolationError::Crashed(m) => RuntimeError::Crashed(m),
            IsolationError::Quarantined(m) => RuntimeError::Quarantined(m),
            IsolationError::HandlerTimeout(m) => RuntimeError::HandlerTimeout(m),
        }
    }
}

impl Code {
    /// Handles one message; `args` and the reply are JSON text.
    pub fn handle(&mut self, kind: &str, args: &str) -> Result<String, RuntimeError> {
        match self {
            Code::Local(instance) => Ok(instance.handle(kind, args)?),
            Code::Remote(remote) => Ok(remote.handle(kind, args)?),
        }
    }

    /// Runs a lifecycle hook.
    pub fn hook(&mut self, hook: Hook) -> Result<(), RuntimeError> {
        match self {
            Code::Local(instance) => Ok(instance.hook(hook)?),
            Code::Remote(remote) => Ok(remote.hook(hook)?),
        }
    }

    /// The state as JSON text.
    pub fn state(&self) -> Result<String, RuntimeError> {
        match self {
            Code::Local(instance) => Ok(instance.state()?),
            Code::Remote(remote) => Ok(remote.state()?),
        }
    }

    /// The state for a look that must not wait (a detail): an isolated instance's worker has
    /// `wait` to give it, and one that is not running now gives none.
    pub fn peek_state(&self, wait: std::time::Duration) -> Option<Result<String, RuntimeError>> {
        match self {
            Code::Local(instance) => Some(instance.state().map_err(RuntimeError::from)),
            Code::Remote(remote) => remote
                .peek_state(wait)
                .map(|r| r.map_err(RuntimeError::from)),
        }
    }

    /// The state version its state is written in.
    pub fn state_version(&self) -> u32 {
        match self {
            Code::Local(instance) => instance.state_version(),
            Code::Remote(remote) => remote.state_version(),
        }
    }

    /// The isolated library it runs in, if it is isolated.
    pub fn isolated(&self) -> Option<&Arc<Isolated>> {
        match self {
            Code::Local(_) => None,
            Code::Remote(remote) => Some(remote.library()),
        }
    }

    /// This paglet on `lib`'s code (a reload) with its state, after `arrived`; this one is
    /// left untouched, so on any error the caller keeps running it.
    pub fn migrate_to(
        &self,
        lib: &Arc<LoadedLib>,
        context: HostContext,
    ) -> Result<Code, RuntimeError> {
        let runtime = context
            .runtime
            .upgrade()
            .ok_or(RuntimeError::ShuttingDown)?;
        let target = runtime.isolated(lib);
        match (self, &target) {
            (Code::Local(instance), None) => {
                Ok(Code::Local(instance.migrate_to(&lib.library, context)?))
            }
            (Code::Remote(remote), Some(target)) if Arc::ptr_eq(remote.library(), target) => {
                Ok(Code::Remote(remote.migrate(lib.library.path())?))
            }
            // In or out of isolation: through its state, as a restore would.
            _ => {
                let state: Value = serde_json::from_str(&self.state()?).map_err(|e| {
                    RuntimeError::Paglet(plugin_api::PagletError::Failed(format!("state: {e}")))
                })?;
                let class = context.class.clone();
                let arrival = Arrival::new(ArrivalReason::Reload, runtime.host_name.clone());
                let mut fresh = runtime.instantiate(
                    lib,
                    &class,
                    Some(&state),
                    Some(self.state_version()),
                    context,
                )?;
                fresh.hook(Hook::Arrived(arrival))?;
                Ok(fresh)
            }
        }
    }
}

impl Runtime {
    /// The isolated library `lib` belongs to, if it is isolated.
    pub(super) fn isolated(&self, lib: &LoadedLib) -> Option<Arc<Isolated>> {
        self.isolation
            .get()?
            .find(&lib.library.info().name, &lib.source)
    }

    /// A new instance of `class` on `lib`: created from a partial `state` when `version` is
    /// `None`, else restored from a stored state that code of that state version wrote. In
    /// this process, or in the library's worker when it is isolated. Runs no hook.
    pub(super) fn instantiate(
        &self,
        lib: &Arc<LoadedLib>,
        class: &str,
        state: Option<&Value>,
        version: Option<u32>,
        context: HostContext,
    ) -> Result<Code, RuntimeError> {
        let Some(isolated) = self.isolated(lib) else {
            let instance = match (version, state) {
                (Some(version), Some(state)) => {
                    lib.library.restore(class, state, version, context)?
                }
                (_, state) => lib.library.create(class, state, context)?,
            };
            return Ok(Code::Local(instance));
        };
        let origin = isolation::Origin {
            path: lib.library.path(),
            class,
            id: &context.id,
            host_name: &self.host_name,
        };
        let state = state.map(Value::to_string);
        Ok(Code::Remote(Remote::create(
            &isolated, &origin, state, version,
        )?))
    }
}

impl Runtime {
    /// Runs the libraries `settings` name in worker processes from now on.
    pub fn isolate(&self, settings: Vec<isolation::Settings>) -> std::io::Result<()> {
        let me = self.me.clone();
        let contexts: isolation::Contexts = Arc::new(move |id: &str, class: &str| {
            Box::new(HostContext {
                runtime: me.clone(),
                id: id.into(),
                class: class.into(),
            }) as Box<dyn plugin_api::loader::HostContext>
        });
        let me = self.me.clone();
        let recover: isolation::Recover = Arc::new(move |id: &str| {
            let runtime = me.upgrade()?;
            if runtime.durability() == crate::store::Durability::Shutdown {
                return None;
            }
            let record = runtime.saver()?.store().get(id).ok()??;
            Some((record.state, record.state_version))
        });
        let isolation = isolation::Isolation::new(settings, contexts, recover)?;
        if self.isolation.set(isolation).is_err() {
            tracing::error!("isolation was set up twice; the first one stays");
        }
        Ok(())
    }

    /// Tells the workers to leave (after the paglets were saved).
    pub fn stop_workers(&self) {
        if let Some(isolation) = self.isolation.get() {
            isolation.stop();
        }
    }

    /// Lifts the quarantine of a library that was reloaded.
    pub(super) fn lift_quarantine(&self, lib: &LoadedLib) {
        if let Some(isolation) = self.isolation.get() {
            isolation.lift(&lib.library.info().name, &lib.source);
        }
    }

    /// What `/libraries` adds for the isolated library `name` at `path`.
    pub fn isolation_view(&self, name: &str, path: &std::path::Path) -> Option<Value> {
        Some(self.isolation.get()?.find(name, path)?.view())
    }

    /// The paglet's status: `active`, or `quarantined` when its library is.
    pub(super) fn status_of(&self, paglet: &super::Paglet) -> &'static str {
        match self.isolated(&paglet.code()) {
            Some(isolated) if isolated.is_quarantined() => "quarantined",
            _ => "active",
        }
    }

    /// Crashes of the paglet's worker since the paglet was loaded here, and the last one.
    pub(super) fn crashes_of(&self, paglet: &super::Paglet) -> (u64, Option<isolation::Crash>) {
        match self.isolated(&paglet.code()) {
            Some(isolated) => {
                let (total, last) = isolated.crashes();
                let since = total.saturating_sub(paglet.crash_base);
                (since, last.filter(|_| since > 0))
            }
            None => (0, None),
        }
    }
}
