//! The author surface: the [`Paglet`] trait, [`Message`], [`Reply`] and [`Context`].
//!
//! Nothing here knows about the ABI; `export.rs` connects these types to `abi.rs`.

use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::abi::HostLink;
use crate::error::PagletError;

/// A stateful agent. The implementing type *is* its state: the host stores, migrates and
/// shows it through its serde representation, and [`Default`] is the class's state template.
///
/// Only [`handle_message`](Paglet::handle_message) is required; the lifecycle hooks default
/// to doing nothing.
pub trait Paglet: Serialize + DeserializeOwned + Default + Send + 'static {
    /// A one-line description of the class, shown by `paglets discover` and `GET /classes`.
    const DESCRIPTION: &'static str = "";

    /// Handles one message. Answer kinds you do not know with `Err(msg.not_handled())`.
    fn handle_message(&mut self, ctx: &Context, msg: Message) -> Result<Reply, PagletError>;

    /// Runs once after the instance is created from its initial state.
    fn created(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs after the instance moved to new code (a reload) with its state.
    fn arrived(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs before the instance is disposed of.
    fn disposing(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }
}

/// The lifecycle hooks, in the order an instance meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After creation from the initial state.
    Created,
    /// After a move to new code, with the state it had.
    Arrived,
    /// Before disposal.
    Disposing,
}

/// One message: a kind and JSON arguments (`null` when none were given).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// What the sender asks for, e.g. `"increment"`.
    pub kind: String,
    /// The arguments, `Value::Null` when absent.
    pub args: Value,
}

impl Message {
    /// Builds a message.
    pub fn new(kind: impl Into<String>, args: Value) -> Self {
        Message {
            kind: kind.into(),
            args,
        }
    }

    /// Decodes the arguments into `T`; a mismatch is [`PagletError::InvalidArgs`].
    /// Absent arguments decode as an empty object, so optional fields work without args.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, PagletError> {
        let args = match &self.args {
            Value::Null => Value::Object(Default::default()),
            other => other.clone(),
        };
        serde_json::from_value(args)
            .map_err(|e| PagletError::InvalidArgs(format!("{} args: {e}", self.kind)))
    }

    /// The answer to a kind this paglet does not handle.
    pub fn not_handled(&self) -> PagletError {
        PagletError::NotHandled {
            kind: self.kind.clone(),
        }
    }
}

/// A reply: any JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(pub Value);

impl Reply {
    /// Replies with the serde representation of `value`.
    pub fn new(value: impl Serialize) -> Result<Reply, PagletError> {
        serde_json::to_value(value)
            .map(Reply)
            .map_err(|e| PagletError::Failed(format!("reply does not serialize: {e}")))
    }

    /// Replies with `null`.
    pub fn empty() -> Reply {
        Reply(Value::Null)
    }
}

impl From<Value> for Reply {
    fn from(value: Value) -> Self {
        Reply(value)
    }
}

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

    /// Sends a message to the paglet `to` and waits for its reply. Sending to a paglet that
    /// is already part of the current call chain (yourself included) is an error, not a
    /// deadlock; the host also bounds the wait.
    pub fn send(&self, to: &str, kind: &str, args: impl Serialize) -> Result<Value, PagletError> {
        let args = serde_json::to_string(&args)
            .map_err(|e| PagletError::InvalidArgs(format!("args do not serialize: {e}")))?;
        let reply = self.inner.link.send(to, kind, &args)?;
        serde_json::from_str(&reply)
            .map_err(|e| PagletError::Failed(format!("reply from {to} is not JSON: {e}")))
    }

    /// Creates a paglet of `class` with `state` merged over the class's default, and returns
    /// its id (`id`, or one the host picks).
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

    /// Logs a line on the host, tagged with this instance.
    pub fn log(&self, level: tracing::Level, message: &str) {
        self.inner.link.log(level, self.class(), message);
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

/// A set of paglet classes exported together; `export_paglets!` implements it.
#[doc(hidden)]
pub trait ClassSet: 'static {
    /// The interface version declared; only test fixtures change it.
    const ABI: u32 = crate::abi::PAGLETS_ABI;
    /// The library name, the first half of every class name.
    fn library() -> String;
    /// The library's version.
    fn version() -> String;
    /// The classes.
    fn classes() -> Vec<ClassEntry>;
}

/// One class of a [`ClassSet`]: its type name and the functions that serve it.
#[doc(hidden)]
pub struct ClassEntry {
    pub(crate) type_name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) template: fn() -> Result<String, PagletError>,
    pub(crate) create:
        fn(&str, &str, crate::abi::ContextBox) -> Result<crate::abi::InstanceBox, PagletError>,
}

impl ClassEntry {
    /// The entry for `P`, named `type_name` within its library.
    pub fn of<P: Paglet>(type_name: &'static str) -> ClassEntry {
        ClassEntry {
            type_name,
            description: P::DESCRIPTION,
            template: crate::export::template::<P>,
            create: crate::export::create_instance::<P>,
        }
    }
}

/// A single paglet type as a class set; its library name is the crate the type lives in.
/// Only the harness uses it.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub struct Single<P>(std::marker::PhantomData<P>);

#[cfg(feature = "testing")]
impl<P: Paglet> ClassSet for Single<P> {
    fn library() -> String {
        let full = std::any::type_name::<P>();
        full.split("::").next().unwrap_or(full).to_string()
    }

    fn version() -> String {
        "0.0.0-in-process".into()
    }

    fn classes() -> Vec<ClassEntry> {
        let full = std::any::type_name::<P>();
        vec![ClassEntry::of::<P>(
            full.rsplit("::").next().unwrap_or(full),
        )]
    }
}
