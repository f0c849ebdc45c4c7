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

    /// Queues a message to the paglet `to` and returns at once with its message id; the
    /// reply is dropped. Messages from one sender arrive in the order sent; a delivery that
    /// fails is logged and counted on the target (`oneway_failed`).
    pub fn send_oneway(
        &self,
        to: &str,
        kind: &str,
        args: impl Serialize,
    ) -> Result<String, PagletError> {
        let args = serde_json::to_string(&args)
            .map_err(|e| PagletError::InvalidArgs(format!("args do not serialize: {e}")))?;
        self.inner.link.send_oneway(to, kind, &args)
    }

    /// Asks the host to move this paglet to `to` (a mesh host name or a URL) once the
    /// current handler returns: its `dispatching` hook runs then, and a failure there or on
    /// the way leaves it here (and is logged).
    pub fn dispatch(&self, to: &str) -> Result<(), PagletError> {
        self.request("dispatch", serde_json::json!({ "to": to }))
            .map(drop)
    }

    /// Asks the host for a copy of this paglet, on this host (`to` `None`) or another, once
    /// the current handler returns; returns the copy's id (`id`, or one the host picks).
    pub fn clone_to(&self, to: Option<&str>, id: Option<&str>) -> Result<String, PagletError> {
        let answer = self.request("clone", serde_json::json!({ "to": to, "id": id }))?;
        Ok(answer["id"].as_str().unwrap_or_default().to_string())
    }

    /// Asks the host to put this paglet to sleep in its store once the current handler
    /// returns; the next message (or an activation) wakes it.
    pub fn deactivate(&self) -> Result<(), PagletError> {
        self.request("deactivate", Value::Null).map(drop)
    }

    fn request(&self, op: &str, args: Value) -> Result<Value, PagletError> {
        let answer = self.inner.link.request(op, &args.to_string())?;
        Ok(serde_json::from_str(&answer).unwrap_or(Value::Null))
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
