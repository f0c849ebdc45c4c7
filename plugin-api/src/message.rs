//! The data a paglet handles: [`Message`], [`Reply`] and the lifecycle [`Hook`]s.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::error::PagletError;

/// Why an instance arrived: what [`Paglet::arrived`](crate::Paglet::arrived) is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalReason {
    /// It moved to new code of its library (a hot reload or a git update).
    Reload,
    /// It was dispatched here from another host.
    Dispatch,
    /// It is a clone of another paglet (on this host or another).
    Clone,
    /// It was called back here from another host.
    Retract,
    /// It was restored from the host's store (a restart, or its class appeared).
    Restore,
}

impl ArrivalReason {
    /// The reason's name, as the host's API and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            ArrivalReason::Reload => "reload",
            ArrivalReason::Dispatch => "dispatch",
            ArrivalReason::Clone => "clone",
            ArrivalReason::Retract => "retract",
            ArrivalReason::Restore => "restore",
        }
    }
}

/// How an instance arrived: the reason and the host it came from (this host's own name for
/// a reload, a restore or a local clone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Arrival {
    /// Why it arrived.
    pub reason: ArrivalReason,
    /// The name of the host it came from.
    pub source: String,
}

impl Arrival {
    /// An arrival for `reason` from the host named `source`.
    pub fn new(reason: ArrivalReason, source: impl Into<String>) -> Arrival {
        Arrival {
            reason,
            source: source.into(),
        }
    }
}

/// The lifecycle hooks. A hook that fails cancels what it announces: the paglet stays where
/// and as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// After creation from the initial state.
    Created,
    /// After it arrived with its state: new code, another host, a clone, a restore.
    Arrived(Arrival),
    /// Before it leaves for the host `to` (a mesh host name or a URL).
    Dispatching {
        /// Where it goes.
        to: String,
    },
    /// Before a copy of it is made (on the original).
    Cloning,
    /// Before it goes to the store and its memory is freed.
    Deactivating,
    /// After it came back from the store.
    Activated,
    /// Before disposal.
    Disposing,
}

impl Hook {
    /// The hook's name, as the `Paglet` method that runs it.
    pub fn name(&self) -> &'static str {
        match self {
            Hook::Created => "created",
            Hook::Arrived(_) => "arrived",
            Hook::Dispatching { .. } => "dispatching",
            Hook::Cloning => "cloning",
            Hook::Deactivating => "deactivating",
            Hook::Activated => "activated",
            Hook::Disposing => "disposing",
        }
    }
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
        serde_json::from_value(args).map_err(|e| self.bad_args(e))
    }

    /// Decodes the whole message into an enum with one variant per kind, declared with
    /// `#[serde(tag = "kind", content = "args")]`: a kind with no variant is
    /// [`PagletError::NotHandled`], arguments that do not fit their variant are
    /// [`PagletError::InvalidArgs`]. Absent arguments (`null`) and an empty object are taken
    /// as each other where that fits: both fit a unit variant, and a struct variant whose
    /// fields all have defaults.
    ///
    /// ```
    /// use plugin_api::{Message, PagletError};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// #[serde(tag = "kind", content = "args", rename_all = "snake_case")]
    /// enum TodoMsg {
    ///     Add { text: String },
    ///     Done { id: u64 },
    ///     List,
    /// }
    ///
    /// let msg = Message::new("done", serde_json::json!({"id": 42}));
    /// assert!(matches!(msg.parse::<TodoMsg>(), Ok(TodoMsg::Done { id: 42 })));
    /// assert!(matches!(Message::new("list", serde_json::Value::Null).parse(), Ok(TodoMsg::List)));
    /// assert!(matches!(Message::new("list", serde_json::json!({})).parse(), Ok(TodoMsg::List)));
    /// let fly = Message::new("fly", serde_json::Value::Null).parse::<TodoMsg>();
    /// assert!(matches!(fly, Err(PagletError::NotHandled { .. })));
    /// let bad = Message::new("done", serde_json::json!({"id": "x"})).parse::<TodoMsg>();
    /// assert!(matches!(bad, Err(PagletError::InvalidArgs(_))));
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, PagletError> {
        let mut whole = serde_json::Map::new();
        whole.insert("kind".into(), Value::String(self.kind.clone()));
        if !self.args.is_null() {
            whole.insert("args".into(), self.args.clone());
        }
        let mut whole = Value::Object(whole);
        let first = match T::deserialize(&whole) {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if first.to_string().starts_with("unknown variant") {
            return Err(self.not_handled());
        }
        let empty_object = self.args.as_object().is_some_and(|args| args.is_empty());
        if !self.args.is_null() && !empty_object {
            return Err(self.bad_args(first));
        }
        if let Value::Object(fields) = &mut whole {
            if self.args.is_null() {
                // A struct variant whose fields all have defaults, sent without args.
                fields.insert("args".into(), Value::Object(Default::default()));
            } else {
                // A unit variant, sent with `{}`.
                fields.remove("args");
            }
        }
        T::deserialize(&whole).map_err(|_| self.bad_args(first))
    }

    /// The answer to a kind this paglet does not handle.
    pub fn not_handled(&self) -> PagletError {
        PagletError::NotHandled {
            kind: self.kind.clone(),
        }
    }

    fn bad_args(&self, err: serde_json::Error) -> PagletError {
        PagletError::InvalidArgs(format!("{} args: {err}", self.kind))
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
