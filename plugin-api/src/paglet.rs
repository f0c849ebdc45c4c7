//! The author's trait: [`Paglet`]. Nothing here knows about the ABI; `export.rs` connects a
//! paglet type to `abi.rs`.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::context::Context;
use crate::error::PagletError;
use crate::message::{Arrival, Message, Reply};

/// A stateful agent. The implementing type *is* its state: the host stores, migrates and
/// shows it through its serde representation, and [`Default`] is the class's state template.
///
/// Only [`handle_message`](Paglet::handle_message) is required; the lifecycle hooks default
/// to doing nothing, and state evolution to the checks of [`state::read`](crate::state::read).
pub trait Paglet: Serialize + DeserializeOwned + Default + Send + 'static {
    /// A one-line description of the class, shown by `paglets discover` and `GET /classes`.
    const DESCRIPTION: &'static str = "";

    /// The shape of the state this code writes. Raise it when a change needs
    /// [`upgrade`](Paglet::upgrade) (a key removed or transformed); adding fields and renaming
    /// with `#[serde(alias)]` need no new version. The host never moves a state to code with a
    /// lower version.
    const STATE_VERSION: u32 = 1;

    /// Builds the paglet from a state written by code with an older
    /// [`STATE_VERSION`](Paglet::STATE_VERSION) (`from_version`). Whatever it leaves out is
    /// dropped on purpose. The default reads the state with the same checks as a reload
    /// within one version: new fields take their defaults, and keys this type would drop are
    /// refused ([`state::read`](crate::state::read)).
    fn upgrade(old: Value, from_version: u32) -> Result<Self, PagletError> {
        let _ = from_version;
        crate::state::read(old)
    }

    /// Handles one message. Answer kinds you do not know with `Err(msg.not_handled())`.
    fn handle_message(&mut self, ctx: &Context, msg: Message) -> Result<Reply, PagletError>;

    /// Runs once after the instance is created from its initial state.
    fn created(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs after the instance arrived with its state: moved to new code (a reload),
    /// dispatched or retracted from another host, cloned, or restored from the store.
    /// `arrival` says which, and from which host. Failing refuses the arrival: a reload keeps
    /// the old code, a dispatch leaves the paglet where it was.
    fn arrived(&mut self, _ctx: &Context, _arrival: &Arrival) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs before the instance leaves this host for `to` (a mesh host name or a URL).
    /// Failing cancels the dispatch.
    fn dispatching(&mut self, _ctx: &Context, _to: &str) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs on the original before a copy is made. Failing cancels the clone.
    fn cloning(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs before the instance goes to the store and its memory is freed. Failing keeps
    /// it active.
    fn deactivating(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs after the instance came back from the store (an activation, or a message to it).
    fn activated(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }

    /// Runs before the instance is disposed of.
    fn disposing(&mut self, _ctx: &Context) -> Result<(), PagletError> {
        Ok(())
    }
}

/// Builds a `P` from a stored state written by code with `version`: the same version is read
/// with [`state::read`](crate::state::read)'s checks, an older one goes through
/// [`Paglet::upgrade`], a newer one is refused (no downgrade).
pub(crate) fn restore<P: Paglet>(state: Value, version: u32) -> Result<P, PagletError> {
    use std::cmp::Ordering;
    match version.cmp(&P::STATE_VERSION) {
        Ordering::Equal => crate::state::read(state),
        Ordering::Less if version > 0 => P::upgrade(state, version),
        Ordering::Less => Err(PagletError::InvalidArgs(
            "state version 0 does not exist; versions start at 1".into(),
        )),
        Ordering::Greater => Err(PagletError::InvalidArgs(format!(
            "state version {version} is newer than this code's state version {}; a paglet \
             never moves back to older code",
            P::STATE_VERSION
        ))),
    }
}
