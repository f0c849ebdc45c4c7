//! The command line, as clap types. Only definitions: their doc comments are `--help`, and
//! `config.rs` turns them into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Native plugin host: load paglet libraries from folders, run their instances, serve them
/// over HTTP.
#[derive(Debug, Parser)]
#[command(name = "paglets", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a host: load the libraries in --paths and serve the HTTP API.
    Host(Box<HostArgs>),
    /// Show what a host would load from these folders, and every problem found.
    Discover(DiscoverArgs),
    /// List the classes a running host can create.
    Classes(ClientArgs),
    /// List a running host's paglets (the active ones unless --status says otherwise).
    List(ListArgs),
    /// Create a paglet on a running host.
    Create(CreateArgs),
    /// Send a message to a paglet and print its reply.
    Send(SendArgs),
    /// Dispose of a paglet.
    Dispose(PagletArgs),
    /// Move a paglet to another host (a mesh host name or a URL).
    Dispatch(DispatchArgs),
    /// Copy a paglet, on the same host or onto another one.
    Clone(CloneArgs),
    /// Bring a paglet here from another host (a mesh host name or a URL).
    Retract(RetractArgs),
    /// Store a paglet and free it; a message or `paglets activate` wakes it.
    Deactivate(PagletArgs),
    /// Wake an inactive paglet.
    Activate(PagletArgs),
    /// Show a running host's health.
    Health(ClientArgs),
    /// List the hosts of a running host's mesh: name, URL, state, compatibility.
    Mesh(ClientArgs),
    /// Ask a host started with --auto-update-from-git to pull, build and reload now.
    Update(UpdateArgs),
    /// Run an isolated library's paglets for the host that started this process (internal).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// `paglets worker`: started by a host only, with its socket as descriptor 3.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The isolated library (for the process list and logs).
    pub library: String,
}

/// `paglets host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// The host's name (required here or in the launch config).
    #[arg(long)]
    pub name: Option<String>,
    /// Folders to scan (not recursively) for paglet libraries.
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append)]
    pub paths: Vec<PathBuf>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind; 0 picks a free one [default: 8765].
    #[arg(long)]
    pub port: Option<u16>,
    /// A mesh seed: another host's URL to join the mesh through (repeatable).
    #[arg(long)]
    pub peer: Vec<String>,
    /// Do not join a mesh: /mesh/hosts lists only this host.
    #[arg(long)]
    pub no_mesh: bool,
    /// SWIM probe period in milliseconds [default: 1000]; suspicion lasts four periods.
    /// Short values are for tests on one machine.
    #[arg(long, hide = true)]
    pub mesh_probe_ms: Option<u64>,
    /// Seconds after which down and left mesh hosts are forgotten [default: 3600].
    #[arg(long, hide = true)]
    pub mesh_forget_after: Option<u64>,
    /// The code version peers compare.
    #[arg(long)]
    pub mesh_version: Option<String>,
    /// A tag shown in /health (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    /// A KEY=VALUE property shown in /health (repeatable).
    #[arg(long, value_parser = parse_property)]
    pub property: Vec<(String, String)>,
    /// Read the API key from this environment variable instead of PAGLETS_API_KEY.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Allow a non-loopback --host without an API key.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// The URL other hosts and clients reach this host at; needs an API key
    /// [default: http://HOST:PORT; for a wildcard --host, the first non-loopback IPv4].
    #[arg(long)]
    pub public_url: Option<String>,
    /// Launch config (TOML) [default: ~/.paglets/launch.toml when it exists].
    #[arg(long)]
    pub launch_config: Option<PathBuf>,
    /// Where private library copies and saved paglets live [default: ~/.paglets/hosts/NAME].
    #[arg(long)]
    pub persistence_dir: Option<PathBuf>,
    /// When state changes reach the database: within --checkpoint-ms (interval), before the
    /// reply (sync), or at graceful shutdown only (shutdown) [default: interval].
    #[arg(long, value_enum)]
    pub durability: Option<crate::store::Durability>,
    /// In interval mode, the longest a change waits to be written, in ms [default: 100].
    #[arg(long)]
    pub checkpoint_ms: Option<u64>,
    /// Watch the folders and reload changed libraries (the default).
    #[arg(long, overrides_with = "no_watch")]
    pub watch: bool,
    /// Do not watch the folders; rescan with POST /admin/rescan.
    #[arg(long, overrides_with = "watch")]
    pub no_watch: bool,
    /// Keep the checkout aligned with its upstream, rebuild and reload.
    #[arg(long)]
    pub auto_update_from_git: bool,
    /// The build command for auto-update [default: cargo build --release --locked].
    #[arg(long)]
    pub build_command: Option<String>,
    /// Seconds before a hung build is killed [default: 900].
    #[arg(long)]
    pub build_timeout: Option<u64>,
    /// Seconds to wait for another process's update lock [default: 300].
    #[arg(long)]
    pub update_lock_timeout: Option<u64>,
    /// Seconds running handlers get to finish at shutdown [default: 10].
    #[arg(long)]
    pub shutdown_grace: Option<u64>,
    /// Seconds a connection has to send a complete request head, after it opens or after its
    /// previous request; slow and idle connections are closed [default: 10].
    #[arg(long)]
    pub header_timeout: Option<u64>,
    /// Connections served at once; past it, the oldest idle one is closed [default: 1024].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long)]
    pub max_body: Option<usize>,
    /// Load from folders or files that other users can write to.
    #[arg(long)]
    pub allow_insecure_paths: bool,
    /// Refuse library files larger than this, before copying them: bytes, or with KiB, MiB,
    /// GiB [default: 512MiB].
    #[arg(long, value_parser = crate::config::parse_size)]
    pub max_library_size: Option<u64>,
    /// Threads that run paglet handlers [default: 8].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds a caller waits for a paglet's handler before it gets 504 handler-timeout; the
    /// handler itself runs on, its paglet busy, until it returns. 0 waits as long as it
    /// takes [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub handler_timeout: Option<f64>,
    /// Seconds a host answers requests for a paglet that left with 308 and its new host
    /// [default: 600].
    #[arg(long)]
    pub forward_ttl: Option<u64>,
    /// Largest arriving paglet (`POST /mesh/arrivals`) in bytes, or with KiB, MiB, GiB
    /// [default: 64MiB].
    #[arg(long, value_parser = crate::config::parse_size)]
    pub max_transfer: Option<u64>,
    /// Milliseconds a dispatch waits for the target's answer before the transfer is in doubt
    /// [default: 5000].
    #[arg(long, hide = true)]
    pub transfer_timeout_ms: Option<u64>,
    /// Run this library's paglets in a worker process of their own, so that a crash there
    /// (a segfault, an abort, running out of memory) takes down only that worker; the
    /// library's name or its file's name without `lib` and `.so` (repeatable). Limits per
    /// library go in the launch config's `[[isolate]]`.
    #[arg(long, value_name = "LIBRARY")]
    pub isolate: Vec<String>,
}

/// `paglets discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Folders to scan (not recursively).
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append, required = true)]
    pub paths: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Accept a folder that holds no library (exit 0 instead of 1).
    #[arg(long)]
    pub allow_empty: bool,
}

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The host's URL; without a scheme, http:// is meant.
    #[arg(long, env = "PAGLETS_HOST", default_value = "http://127.0.0.1:8765")]
    pub host: String,
    /// Seconds to wait for the answer; 0 waits as long as it takes
    /// [default: none for send without --oneway, 30 for the others].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Read the API key from this environment variable instead of PAGLETS_API_KEY.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `paglets create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The class, e.g. counter::Counter.
    pub class: String,
    /// Initial state (JSON); fields it lacks take the class's defaults.
    #[arg(long)]
    pub state: Option<String>,
    /// The id to give the paglet (the host picks one otherwise).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Which paglets to list, by status [default: active].
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The statuses `paglets list --status` selects (`GET /paglets?status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    /// Running paglets.
    Active,
    /// Paglets stored by a deactivation.
    Inactive,
    /// Paglets the host stopped running.
    Quarantined,
    /// Every paglet, whatever its status.
    All,
}

impl StatusFilter {
    /// The filter as the host's query parameter spells it.
    pub fn name(self) -> &'static str {
        match self {
            StatusFilter::Active => "active",
            StatusFilter::Inactive => "inactive",
            StatusFilter::Quarantined => "quarantined",
            StatusFilter::All => "all",
        }
    }
}

/// `paglets send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The paglet's id.
    pub id: String,
    /// The message kind.
    pub kind: String,
    /// Arguments (JSON).
    #[arg(long)]
    pub args: Option<String>,
    /// Queue the message and print its id instead of waiting for the reply.
    #[arg(long)]
    pub oneway: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets dispatch`.
#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// The paglet's id.
    pub id: String,
    /// Where it goes: a mesh host's name or a host's URL.
    pub to: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The id of the paglet to copy.
    pub id: String,
    /// Where the copy goes: a mesh host's name or a host's URL [default: the same host].
    pub to: Option<String>,
    /// The copy's id (the target host picks one otherwise).
    #[arg(long = "id", value_name = "NEW_ID")]
    pub new_id: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets retract`.
#[derive(Debug, Args)]
pub struct RetractArgs {
    /// The paglet's id.
    pub id: String,
    /// The host it is on now: a mesh host's name or a host's URL.
    pub from: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The commit to reach (4 to 64 hex digits) [default: the upstream's head].
    pub target_hash: Option<String>,
    /// Build even a commit whose build already failed on that host.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `paglets dispose`, `deactivate` and `activate`: one paglet.
#[derive(Debug, Args)]
pub struct PagletArgs {
    /// The paglet's id.
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}
