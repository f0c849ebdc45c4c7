//! One module per subcommand, and the exit codes they share.

pub mod client;
pub mod discover;
pub mod host;
pub mod moving;

/// How a command ended, as an exit code: 0 ok, 1 failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Ok,
    /// The command ran but something failed (e.g. a library was refused).
    Failed,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Ok => std::process::ExitCode::SUCCESS,
            Exit::Failed => std::process::ExitCode::from(1),
        }
    }
}

/// Why a command stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A usage error: bad flags, a missing folder, a rejected combination (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
    /// A failure whose whole stderr line is fixed by the contract (exit 1).
    #[error("{0}")]
    Verbatim(String),
}

impl Failure {
    /// The line printed on stderr.
    pub fn line(&self) -> String {
        match self {
            Failure::Verbatim(line) => line.clone(),
            other => format!("paglets: {other}"),
        }
    }

    /// The exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Failed(_) | Failure::Verbatim(_) => 1,
        }
    }
}

/// The result every command returns.
pub type CommandResult = Result<Exit, Failure>;
