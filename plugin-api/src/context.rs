//! [`Context`]: what a paglet may ask of its host, on the plugin side of the boundary.

use std::fmt::Display;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::abi::HostLink;
use crate::error::PagletError;

/// What a paglet may ask of its host: who it is, messaging other paglets, creating paglets
/// and logging. `tracing` events inside a hook or handler reach the host too, tagged with the
/// class and id.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) link: HostLink,
    pub(crate) id: String,
    pub(crate) host_name: String,
    pub(crate) class: String,
}

impl Context {
    pub(crate) fn new(link: HostLink, class: &str) -> Self {
        let id = link.id();
        let host_name = link.host_name();
        Context {
            inner: Arc::new(ContextInner {
                link,
                id,
                host_name,
                class: class.into(),
            }),
        }
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The name of the host running this instance.
    pub fn host_name(&self) -> &str {
        &self.inner.host_name
    }

    /// This instance's class name, `<library>::<Type>`.
    pub fn class(&self) -> &str {
        &self.inner.class
    }

    /// Sends a message to the paglet `to` and waits for its reply. A send that would wait on
    /// itself (to yourself, or to a paglet already waiting on you) fails with
    /// [`PagletError::Deadlock`]; the host also bounds the wait.
    pub fn send(&self, to: &str, kind: &str, args: impl Serialize) -> Result<Value, PagletError> {
        let args = serde_json::to_string(&args)
            .map_err(|e| PagletError::InvalidArgs(format!("args do not serialize: {e}")))?;
        let reply = self.inner.link.send(to, kind, &args)?;
        serde_json::from_str(&reply)
            .map_err(|e| PagletError::Failed(format!("reply from {to} is not JSON: {e}")))
    }

    /// Creates a paglet of `class` from `state` (fields it lacks take their defaults), and
    /// returns its id (`id`, or one the host picks).
    pub fn create(
        &self,
        class: &str,
        state: impl Serialize,
        id: Option<&str>,
    ) -> Result<String, PagletError> {
        let state = serde_json::to_string(&state)
            .map_err(|e| PagletError::InvalidArgs(format!("state does not serialize: {e}")))?;
        self.inner.link.create(class, &state, id.unwrap_or(""))
    }

    /// Logs a line on the host, tagged with this instance and its class:
    /// `ctx.log(Level::INFO, format_args!("greeted {name}"))`, or any `Display` value.
    /// [`Level`](crate::Level) is re-exported, so this needs no `tracing` dependency.
    pub fn log(&self, level: tracing::Level, message: impl Display) {
        self.inner
            .link
            .log(level, self.class(), &message.to_string());
    }

    pub(crate) fn inner(&self) -> &Arc<ContextInner> {
        &self.inner
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id())
            .field("class", &self.class())
            .finish()
    }
}
