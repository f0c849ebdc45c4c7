//! [`HostContext`]: what a host offers the paglet instances it creates through the loader.

use crate::error::PagletError;

/// What the host offers a paglet instance. The loader wraps it so that a panic in these
/// callbacks is caught on the host side too.
pub trait HostContext: Send + Sync + 'static {
    /// The instance's id.
    fn id(&self) -> String;
    /// The host's name.
    fn host_name(&self) -> String;
    /// Delivers a message from this instance to `to`; `args` and the reply are JSON text.
    fn send(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError>;
    /// Creates a paglet on behalf of this instance; returns its id.
    fn create(&self, class: &str, state: &str, id: Option<&str>) -> Result<String, PagletError>;
    /// Logs a line for this instance.
    fn log(&self, level: tracing::Level, target: &str, message: &str);
    /// Queues a message from this instance to `to` without waiting for the reply; returns
    /// the message id. The default refuses: a host without oneway messages.
    fn send_oneway(&self, to: &str, kind: &str, args: &str) -> Result<String, PagletError> {
        let _ = (to, kind, args);
        Err(PagletError::Failed(
            "this host does not deliver oneway messages".into(),
        ))
    }
    /// Asks for a lifecycle operation on this instance (`op`: `dispatch`, `clone`,
    /// `deactivate`, `dispose`; `args` JSON), to run after its current handler returns.
    /// The default refuses: a host without moving paglets.
    fn request(&self, op: &str, args: &str) -> Result<String, PagletError> {
        let _ = args;
        Err(PagletError::Failed(format!(
            "this host does not {op} paglets"
        )))
    }
}
