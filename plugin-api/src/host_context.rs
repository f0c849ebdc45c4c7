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
}
