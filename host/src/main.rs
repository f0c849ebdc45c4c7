//! `paglets`: the host and its command-line client.
//!
//! `main` parses the command line, starts logging and dispatches to one `run` per subcommand
//! in `commands/`. Errors become one line on stderr and an exit code: 0 ok, 1 failure,
//! 2 usage.

mod api;
mod cli;
mod commands;
mod config;
mod discovery;
mod isolation;
mod mesh;
mod persist;
mod registry;
mod runtime;
mod store;
mod update;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        cli::Command::Host(args) => commands::host::run(args),
        cli::Command::Discover(args) => commands::discover::run(args),
        cli::Command::Classes(args) => commands::client::classes(args),
        cli::Command::List(args) => commands::client::list(args),
        cli::Command::Create(args) => commands::client::create(args),
        cli::Command::Send(args) => commands::client::send(args),
        cli::Command::Dispose(args) => commands::client::dispose(args),
        cli::Command::Dispatch(args) => commands::moving::dispatch(args),
        cli::Command::Clone(args) => commands::moving::clone(args),
        cli::Command::Retract(args) => commands::moving::retract(args),
        cli::Command::Deactivate(args) => commands::moving::deactivate(args),
        cli::Command::Activate(args) => commands::moving::activate(args),
        cli::Command::Health(args) => commands::client::health(args),
        cli::Command::Mesh(args) => commands::client::mesh(args),
        cli::Command::Update(args) => commands::client::update(args),
        cli::Command::Worker(_) => isolation::worker::run(),
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("{}", failure.line());
            failure.exit_code().into()
        }
    }
}
