//! What a library says about itself: [`LibraryInfo`] and its [`ClassInfo`]s. The plugin side
//! builds them, the `describe` entry point carries them as JSON, the loader reads them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a library says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibraryInfo {
    /// The library name, the first half of its class names.
    pub name: String,
    /// The library's version (its crate version).
    pub version: String,
    /// The classes it exports.
    pub classes: Vec<ClassInfo>,
}

/// One class a library exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// `<library>::<Type>`.
    pub class: String,
    /// A one-line description.
    pub description: String,
    /// The JSON of the state's default.
    pub state_template: Value,
    /// The shape of the state this code writes (`Paglet::STATE_VERSION`, 1 unless the author
    /// declared another).
    pub state_version: u32,
}
