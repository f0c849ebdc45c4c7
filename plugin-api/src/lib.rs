//! `plugin-api`: build paglets — stateful agents a `paglets` host loads from a `cdylib` — and
//! test them the way the host runs them.
//!
//! A paglet is a type that is its own serde state and handles messages:
//!
//! ```
//! use plugin_api::{Context, Message, Paglet, PagletError, Reply};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     count: u64,
//! }
//!
//! impl Paglet for Counter {
//!     const DESCRIPTION: &'static str = "counts";
//!
//!     fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
//!         match msg.kind.as_str() {
//!             "increment" => {
//!                 self.count += 1;
//!                 Reply::new(&*self)
//!             }
//!             _ => Err(msg.not_handled()),
//!         }
//!     }
//! }
//!
//! // In a `crate-type = ["cdylib", "rlib"]` crate: exports `<crate>::Counter`.
//! plugin_api::export_paglets!(Counter);
//! # fn main() {}
//! ```
//!
//! The author surface is [`Paglet`], [`Context`], [`Message`], [`Reply`], [`PagletError`],
//! [`state`] (reading an older state) and [`export_paglets!`]; `testing` (feature `testing`)
//! is the harness. [`loader`] is the host's side of the boundary.
#![deny(missing_docs)]

mod abi;
mod context;
mod describe;
mod error;
mod export;
mod guard;
mod host_context;
pub mod loader;
mod message;
mod paglet;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

// The author surface. Semver: everything re-exported here is public API; the ABI types stay
// private so that a move to another stable-ABI crate touches `abi.rs` only.
pub use abi::PAGLETS_ABI;
pub use context::Context;
pub use error::{LoadError, PagletError};
pub use message::{Arrival, ArrivalReason, Hook, Message, Reply};
pub use paglet::Paglet;
/// Log levels for [`Context::log`], re-exported so a paglet needs no `tracing` dependency.
pub use tracing::Level;

/// What `export_paglets!` expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{PAGLETS_ABI, lib_header};
    pub use crate::export::{ClassEntry, ClassSet};
    pub use abi_stable::library::LibHeader;
}
