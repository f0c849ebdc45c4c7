//! Errors: [`PagletError`] (what a paglet call returns) and [`LoadError`] (why a library was
//! refused).

use std::path::PathBuf;

/// What a paglet returns when it cannot answer, and what a caller gets when a call fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PagletError {
    /// The paglet does not handle this message kind (HTTP 422 `not-handled`).
    #[error("message kind '{kind}' is not handled")]
    NotHandled {
        /// The kind that was sent.
        kind: String,
    },
    /// The arguments or the state were rejected (HTTP 400 `invalid-args`). The message says
    /// what and why, e.g. `increment args: invalid type: string "two", expected u64`.
    #[error("{0}")]
    InvalidArgs(String),
    /// The paglet failed (HTTP 500 `paglet-failed`).
    #[error("{0}")]
    Failed(String),
    /// The paglet panicked; the panic was caught inside the library (HTTP 500
    /// `paglet-panicked`). Paglets never construct this themselves.
    #[error("{0}")]
    Panicked(String),
    /// Something the message names does not exist, e.g. "no item with id 42" (HTTP 404
    /// `not-found`).
    #[error("{0}")]
    NotFound(String),
    /// The call would wait on itself: a send whose target is already waiting, directly or
    /// through others, on the sender (HTTP 409 `deadlock`). The message names the cycle.
    #[error("{0}")]
    Deadlock(String),
    /// A state holds keys the class's state type would ignore, so they would be lost with the
    /// next save (HTTP 400 `invalid-args` on create; on a reload the paglet stays on its old
    /// code). Nested keys read `a.b`.
    #[error("the state has keys this code would drop: {}", keys.join(", "))]
    DropsKeys {
        /// The keys, sorted.
        keys: Vec<String>,
    },
}

impl PagletError {
    /// A failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        PagletError::Failed(message.into())
    }

    /// Rejected arguments, with the reason.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        PagletError::InvalidArgs(message.into())
    }

    /// Something the message names does not exist: `PagletError::not_found("no item with id
    /// 42")` answers HTTP 404 `not-found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        PagletError::NotFound(message.into())
    }
}

/// Why the loader refused a library file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is not a loadable shared library (text, empty, an executable, ...).
    #[error("{}: not a loadable library: {reason}", path.display())]
    NotLoadable {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file is an ELF library cut short: it may still be being written.
    #[error("{}: truncated library: {reason}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part lies past the end.
        reason: String,
    },
    /// A shared library, but not a paglet library: it exports no paglets root module.
    #[error("{}: not a paglet library: it exports no paglets root module", path.display())]
    NoRootModule {
        /// The file.
        path: PathBuf,
    },
    /// Built against another paglets ABI version.
    #[error("{}: built against paglets ABI {found}, this host speaks ABI {expected}; rebuild it against this plugin-api", path.display())]
    IncompatibleAbi {
        /// The file.
        path: PathBuf,
        /// The version the library declares.
        found: u32,
        /// The version this host speaks.
        expected: u32,
    },
    /// The root module does not match this host's `plugin-api` (version or layout).
    #[error("{}: incompatible plugin-api: {reason}", path.display())]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// abi_stable's reason, first line only.
        reason: String,
    },
    /// Built with `panic = "abort"`: a panic in a paglet would take the host down.
    #[error("{}: built with panic = \"abort\"; paglet libraries must unwind so panics can be contained", path.display())]
    PanicAbort {
        /// The file.
        path: PathBuf,
    },
    /// The library failed or panicked while describing itself.
    #[error("{}: failed while describing itself: {reason}", path.display())]
    DescribeFailed {
        /// The file.
        path: PathBuf,
        /// The failure.
        reason: String,
    },
    /// A class name is already provided by another library (the first one found wins).
    #[error("{}: class {class} is already provided by {}", path.display(), owner.display())]
    ClassTaken {
        /// The file that lost.
        path: PathBuf,
        /// The contested class.
        class: String,
        /// The file that provides it.
        owner: PathBuf,
    },
}

impl LoadError {
    /// The same refusal, naming `path` instead (e.g. the file a user dropped in rather than
    /// the private copy that was opened).
    pub fn with_path(self, path: &std::path::Path) -> LoadError {
        // dlopen's own messages name the file too.
        let (old, new) = (
            self.path().display().to_string(),
            path.display().to_string(),
        );
        let fix = |reason: String| reason.replace(&old, &new);
        let path = path.to_path_buf();
        match self {
            LoadError::NotLoadable { reason, .. } => LoadError::NotLoadable {
                path,
                reason: fix(reason),
            },
            LoadError::Truncated { reason, .. } => LoadError::Truncated {
                path,
                reason: fix(reason),
            },
            LoadError::NoRootModule { .. } => LoadError::NoRootModule { path },
            LoadError::IncompatibleAbi {
                found, expected, ..
            } => LoadError::IncompatibleAbi {
                path,
                found,
                expected,
            },
            LoadError::Incompatible { reason, .. } => LoadError::Incompatible {
                path,
                reason: fix(reason),
            },
            LoadError::PanicAbort { .. } => LoadError::PanicAbort { path },
            LoadError::DescribeFailed { reason, .. } => LoadError::DescribeFailed {
                path,
                reason: fix(reason),
            },
            LoadError::ClassTaken { class, owner, .. } => {
                LoadError::ClassTaken { path, class, owner }
            }
        }
    }

    /// The file the refusal is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            LoadError::NotLoadable { path, .. }
            | LoadError::Truncated { path, .. }
            | LoadError::NoRootModule { path }
            | LoadError::IncompatibleAbi { path, .. }
            | LoadError::Incompatible { path, .. }
            | LoadError::PanicAbort { path }
            | LoadError::DescribeFailed { path, .. }
            | LoadError::ClassTaken { path, .. } => path,
        }
    }

    /// True when the file may still be being written and is worth retrying.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LoadError::Truncated { .. })
    }
}
