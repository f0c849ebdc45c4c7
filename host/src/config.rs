//! Command-line flags plus the launch config (TOML) → one validated [`HostConfig`]. Every
//! usage error of `paglets host` is raised here; nothing later sees clap types.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::cli::HostArgs;

/// A usage error: exit 2 with this line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Everything `paglets host` runs with.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The host's name.
    pub name: String,
    /// Folders scanned for libraries, in order.
    pub paths: Vec<PathBuf>,
    /// Address to bind.
    pub bind: String,
    /// `--public-url`, when given (the default is derived from the bound address).
    pub public_url: Option<String>,
    /// Port to bind (0: any).
    pub port: u16,
    /// Trusted peers.
    pub peers: Vec<String>,
    /// The mesh version, when given.
    pub mesh_version: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// The API key; `None` means no auth.
    pub api_key: Option<String>,
    /// The persistence dir.
    pub persistence_dir: PathBuf,
    /// When state changes reach the database.
    pub durability: crate::store::Durability,
    /// In `interval` mode, the longest a change waits to be written.
    pub checkpoint: Duration,
    /// Watch the folders.
    pub watch: bool,
    /// Grace for running handlers at shutdown.
    pub shutdown_grace: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Time a connection has to send a request head (also its idle timeout).
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Load from folders other users can write.
    pub allow_insecure_paths: bool,
    /// Larger library files are refused before they are copied.
    pub max_library_size: u64,
    /// Worker threads for paglet code.
    pub workers: usize,
    /// How long a caller waits for paglet code before it gets 504 `handler-timeout`
    /// (`--handler-timeout`; `None` when 0: as long as it takes).
    pub handler_timeout: Option<Duration>,
    /// How long requests for a paglet that left are answered with 308.
    pub forward_ttl: Duration,
    /// Largest arriving paglet.
    pub max_transfer: usize,
    /// How long a dispatch waits for the target's answer.
    pub transfer_timeout: Duration,
    /// Git auto-update, when on.
    pub auto_update: Option<crate::update::UpdateSettings>,
    /// Paglets created at start when their id does not exist yet.
    pub startup: Vec<StartupEntry>,
    /// Mesh membership.
    pub mesh: crate::mesh::MeshSettings,
    /// Libraries whose paglets run in worker processes, with their limits.
    pub isolate: Vec<crate::isolation::Settings>,
}

/// `--handler-timeout` unless set.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// One `[[isolate]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolateEntry {
    library: String,
    memory_limit: Option<Size>,
    handler_timeout: Option<Timeout>,
}

/// A duration in the launch config: seconds (`30`, `0.5`), or a string with `ms` or `s`
/// (`"250ms"`); 0 turns the limit off.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timeout {
    Seconds(f64),
    Text(String),
}

impl Timeout {
    /// The duration (`None`: off); `key` names the setting in an error.
    fn duration(self, key: &str) -> Result<Option<Duration>, UsageError> {
        let bad = |text: &str| {
            UsageError(format!(
                "{key}: '{text}' is not a duration (e.g. 30, 0.5, \"250ms\", \"2s\")"
            ))
        };
        let seconds = match self {
            Timeout::Seconds(seconds) => seconds,
            Timeout::Text(text) => {
                let trimmed = text.trim();
                let (number, scale) = match trimmed.strip_suffix("ms") {
                    Some(number) => (number, 0.001),
                    None => (trimmed.strip_suffix('s').unwrap_or(trimmed), 1.0),
                };
                number.trim().parse::<f64>().map_err(|_| bad(&text))? * scale
            }
        };
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(bad(&seconds.to_string()));
        }
        Ok((seconds > 0.0).then(|| Duration::from_secs_f64(seconds)))
    }
}

/// `--isolate` and `[[isolate]]` together: an entry of the file gives a flag's library its
/// limits; a library without a handler timeout of its own has the host's, `handler_timeout`.
fn isolate(
    flags: Vec<String>,
    entries: Vec<IsolateEntry>,
    handler_timeout: Option<Duration>,
) -> Result<Vec<crate::isolation::Settings>, UsageError> {
    let mut settings: Vec<crate::isolation::Settings> = Vec::new();
    for entry in entries {
        if entry.library.is_empty() {
            return Err(UsageError("[[isolate]] library must not be empty".into()));
        }
        if settings.iter().any(|s| s.library == entry.library) {
            return Err(UsageError(format!(
                "[[isolate]] library '{}' appears twice",
                entry.library
            )));
        }
        let memory_limit = match entry.memory_limit {
            Some(size) => Some(
                size.bytes("memory_limit")
                    .map_err(|e| UsageError(e.0.replace("[host]", "[[isolate]]")))?,
            ),
            None => None,
        };
        let own_timeout = match entry.handler_timeout {
            Some(timeout) => timeout.duration("[[isolate]] handler_timeout")?,
            None => handler_timeout,
        };
        settings.push(crate::isolation::Settings {
            library: entry.library,
            memory_limit,
            handler_timeout: own_timeout,
        });
    }
    for library in flags {
        if library.is_empty() {
            return Err(UsageError("--isolate needs a library name".into()));
        }
        if !settings.iter().any(|s| s.library == library) {
            settings.push(crate::isolation::Settings {
                library,
                memory_limit: None,
                handler_timeout,
            });
        }
    }
    Ok(settings)
}

/// One `[[startup]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupEntry {
    /// The class.
    pub class: String,
    /// The id (required: an entry creates its paglet only when no paglet has this id).
    pub id: String,
    /// Initial state; fields it lacks take the class's defaults.
    pub state: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchFile {
    #[serde(default)]
    host: HostSection,
    #[serde(default)]
    discovery: DiscoverySection,
    #[serde(default)]
    auto_update: AutoUpdateSection,
    #[serde(default)]
    startup: Vec<StartupEntry>,
    #[serde(default)]
    mesh: MeshSection,
    #[serde(default)]
    isolate: Vec<IsolateEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshSection {
    #[serde(default)]
    peers: Vec<String>,
    probe_ms: Option<u64>,
    forget_after: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    name: Option<String>,
    paths: Option<Vec<PathBuf>>,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    peer: Vec<String>,
    no_mesh: Option<bool>,
    mesh_probe_ms: Option<u64>,
    mesh_forget_after: Option<u64>,
    mesh_version: Option<String>,
    #[serde(default)]
    tag: Vec<String>,
    #[serde(default)]
    property: Properties,
    api_key_env: Option<String>,
    allow_unauthenticated: Option<bool>,
    public_url: Option<String>,
    persistence_dir: Option<PathBuf>,
    durability: Option<crate::store::Durability>,
    checkpoint_ms: Option<u64>,
    watch: Option<bool>,
    auto_update_from_git: Option<bool>,
    build_command: Option<String>,
    build_timeout: Option<u64>,
    update_lock_timeout: Option<u64>,
    shutdown_grace: Option<u64>,
    max_body: Option<usize>,
    header_timeout: Option<u64>,
    max_connections: Option<usize>,
    allow_insecure_paths: Option<bool>,
    max_library_size: Option<Size>,
    workers: Option<usize>,
    handler_timeout: Option<Timeout>,
    forward_ttl: Option<u64>,
    max_transfer: Option<Size>,
}

/// A size in the launch config: bytes, or a string like the flag's (`"64MiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(self, key: &str) -> Result<u64, UsageError> {
        match self {
            Size::Bytes(n) => Ok(n),
            Size::Text(text) => {
                parse_size(&text).map_err(|e| UsageError(format!("[host] {key}: {e}")))
            }
        }
    }
}

/// Parses a size: bytes, or a number with `KiB`, `MiB` or `GiB` (`K`, `M`, `G` too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}' (use bytes, KiB, MiB or GiB)"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 536870912 or 512MiB)"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// `[host] property`: a table, or a list of `KEY=VALUE` strings like the flag.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Properties {
    Table(BTreeMap<String, String>),
    List(Vec<String>),
}

impl Default for Properties {
    fn default() -> Self {
        Properties::Table(BTreeMap::new())
    }
}

impl Properties {
    fn into_map(self) -> Result<BTreeMap<String, String>, UsageError> {
        match self {
            Properties::Table(map) => Ok(map),
            Properties::List(items) => items
                .into_iter()
                .map(|item| match item.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => Err(UsageError(format!(
                        "[host] property '{item}' is not KEY=VALUE"
                    ))),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverySection {
    paths: Option<Vec<PathBuf>>,
    watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoUpdateSection {
    build_command: Option<String>,
    build_timeout: Option<u64>,
    update_lock_timeout: Option<u64>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn read_launch_file(explicit: Option<&Path>) -> Result<(LaunchFile, PathBuf), UsageError> {
    let (path, must_exist) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => (home().join(".paglets/launch.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok((LaunchFile::default(), PathBuf::from(".")));
        }
        Err(e) => return Err(UsageError(format!("launch config {}: {e}", path.display()))),
    };
    let file: LaunchFile = toml::from_str(&text).map_err(|e| {
        let message = e.message().trim().to_string();
        UsageError(format!("launch config {}: {message}", path.display()))
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((file, base))
}

/// The API key, for the host and the clients alike: from the variable `--api-key-env` names
/// (which must be set), else from `PAGLETS_API_KEY`. Surrounding whitespace is not part of
/// the key (an HTTP header could not carry it), so a value that is blank means no key.
pub fn api_key(api_key_env: Option<&str>) -> Result<Option<String>, UsageError> {
    let key = match api_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            UsageError(format!(
                "--api-key-env {var}: the environment variable is not set"
            ))
        })?),
        None => std::env::var("PAGLETS_API_KEY").ok(),
    };
    Ok(key
        .map(|key| key.trim().to_string())
        .filter(|key| !key.is_empty()))
}

/// `--public-url` must be an `http` URL with a host, and needs an API key (a keyless host
/// serves only loopback names and this URL's host: a public name without a key would invite
/// every page on that network). Hosts talk to each other in plain HTTP (this build has no TLS
/// client), so an `https` URL, which other hosts could not reach, is refused.
fn check_public_url(url: &str, has_key: bool) -> Result<(), UsageError> {
    if !has_key {
        return Err(UsageError(format!(
            "--public-url {url} needs an API key; set PAGLETS_API_KEY"
        )));
    }
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "https" => Err(UsageError(format!(
            "--public-url {url}: hosts reach each other in plain HTTP (no TLS client in this \
             build); give the http:// URL other hosts reach this one at, on a private network \
             or a tunnel"
        ))),
        Ok(parsed) if parsed.scheme() == "http" && parsed.host().is_some() => Ok(()),
        Ok(_) => Err(UsageError(format!(
            "--public-url {url} must be an http:// URL with a host"
        ))),
        Err(e) => Err(UsageError(format!("--public-url {url} is not a URL: {e}"))),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl HostConfig {
    /// Validates the flags against the launch config; flags win.
    pub fn from_args(mut args: HostArgs) -> Result<HostConfig, UsageError> {
        let (file, base) = read_launch_file(args.launch_config.as_deref())?;
        let mut host = file.host;
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let name = host_name(args.name.take().or(host.name.take()))?;
        let paths = scan_paths(
            std::mem::take(&mut args.paths),
            file.discovery
                .paths
                .or(host.paths.take())
                .map(|paths| paths.into_iter().map(rel).collect()),
        )?;
        let auto_update = auto_update(&mut args, &mut host, file.auto_update);
        let access = access(&mut args, &mut host)?;
        let mut properties = std::mem::take(&mut host.property).into_map()?;
        properties.extend(std::mem::take(&mut args.property));
        let watch = if args.no_watch {
            false
        } else if args.watch {
            true
        } else {
            file.discovery.watch.or(host.watch).unwrap_or(true)
        };
        let persistence_dir = args
            .persistence_dir
            .take()
            .or(host.persistence_dir.take().map(rel))
            .unwrap_or_else(|| home().join(".paglets/hosts").join(&name));
        let mesh = mesh_settings(&mut args, &mut host, file.mesh)?;
        let handler_timeout = match (args.handler_timeout, host.handler_timeout.take()) {
            (Some(seconds), _) => handler_timeout(seconds)?,
            (None, Some(timeout)) => timeout.duration("[host] handler_timeout")?,
            (None, None) => Some(DEFAULT_HANDLER_TIMEOUT),
        };
        let isolate = isolate(
            std::mem::take(&mut args.isolate),
            file.isolate,
            handler_timeout,
        )?;
        let checkpoint_ms = args.checkpoint_ms.or(host.checkpoint_ms).unwrap_or(100);
        if checkpoint_ms == 0 {
            return Err(UsageError("--checkpoint-ms must be at least 1".into()));
        }
        Ok(HostConfig {
            name,
            paths,
            bind: access.bind,
            public_url: access.public_url,
            port: args.port.or(host.port).unwrap_or(8765),
            peers: mesh.seeds.clone(),
            mesh_version: args.mesh_version.or(host.mesh_version),
            tags: crate::mesh::normalize_tags(if args.tag.is_empty() {
                &host.tag
            } else {
                &args.tag
            }),
            properties,
            api_key: access.api_key,
            persistence_dir,
            durability: args.durability.or(host.durability).unwrap_or_default(),
            checkpoint: Duration::from_millis(checkpoint_ms),
            watch,
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace.or(host.shutdown_grace).unwrap_or(10),
            ),
            max_body: args.max_body.or(host.max_body).unwrap_or(1024 * 1024),
            forward_ttl: Duration::from_secs(args.forward_ttl.or(host.forward_ttl).unwrap_or(600)),
            max_transfer: match (args.max_transfer, host.max_transfer) {
                (Some(bytes), _) => bytes,
                (None, Some(size)) => size.bytes("max_transfer")?,
                (None, None) => 64 << 20,
            }
            .try_into()
            .unwrap_or(usize::MAX),
            transfer_timeout: Duration::from_millis(
                args.transfer_timeout_ms.unwrap_or(5000).max(1),
            ),
            header_timeout: Duration::from_secs(
                args.header_timeout
                    .or(host.header_timeout)
                    .unwrap_or(10)
                    .max(1),
            ),
            max_connections: args
                .max_connections
                .or(host.max_connections)
                .unwrap_or(1024)
                .clamp(1, 1 << 20),
            allow_insecure_paths: args.allow_insecure_paths
                || host.allow_insecure_paths.unwrap_or(false),
            max_library_size: match (args.max_library_size, host.max_library_size) {
                (Some(bytes), _) => bytes,
                (None, Some(size)) => size.bytes("max_library_size")?,
                (None, None) => crate::registry::DEFAULT_MAX_LIBRARY_SIZE,
            },
            workers: args.workers.or(host.workers).unwrap_or(8),
            handler_timeout,
            auto_update,
            startup: file.startup,
            mesh,
            isolate,
        })
    }
}

/// `--handler-timeout`: seconds (fractions allowed); 0 turns it off.
fn handler_timeout(seconds: f64) -> Result<Option<Duration>, UsageError> {
    if seconds == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(seconds).map(Some).map_err(|_| {
        UsageError(format!(
            "--handler-timeout {seconds}: use a number of seconds (0 turns it off)"
        ))
    })
}

/// `--name`: required, and following the id rule (it becomes a folder name).
fn host_name(name: Option<String>) -> Result<String, UsageError> {
    let name = name.ok_or_else(|| {
        UsageError("--name is required (or [host] name in the launch config)".into())
    })?;
    if !crate::runtime::valid_id(&name) {
        return Err(UsageError(format!(
            "--name '{name}': use 1 to 128 of A-Z a-z 0-9 . _ - (not . or ..); the name is a folder of the persistence dir"
        )));
    }
    Ok(name)
}

/// The folders to scan: the flag's (made absolute, so a re-executed host and the reports
/// name the same files), else the launch config's (already resolved against its folder).
fn scan_paths(
    flag: Vec<PathBuf>,
    from_file: Option<Vec<PathBuf>>,
) -> Result<Vec<PathBuf>, UsageError> {
    let paths: Vec<PathBuf> = if !flag.is_empty() {
        flag.into_iter()
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .collect()
    } else {
        from_file.unwrap_or_default()
    };
    if paths.is_empty() {
        return Err(UsageError(
            "--paths is required (or [discovery] paths in the launch config)".into(),
        ));
    }
    Ok(paths)
}

/// The auto-update settings when it is on: flags, then `[host]`, then `[auto_update]`.
fn auto_update(
    args: &mut HostArgs,
    host: &mut HostSection,
    section: AutoUpdateSection,
) -> Option<crate::update::UpdateSettings> {
    let on = args.auto_update_from_git || host.auto_update_from_git == Some(true);
    on.then(|| crate::update::UpdateSettings {
        build_command: args
            .build_command
            .take()
            .or(host.build_command.take())
            .or(section.build_command)
            .unwrap_or_else(|| "cargo build --release --locked".into()),
        build_timeout: Duration::from_secs(
            args.build_timeout
                .or(host.build_timeout)
                .or(section.build_timeout)
                .unwrap_or(900),
        ),
        lock_timeout: Duration::from_secs(
            args.update_lock_timeout
                .or(host.update_lock_timeout)
                .or(section.update_lock_timeout)
                .unwrap_or(300),
        ),
    })
}

/// Who may reach the host: the bind address, the API key and the public URL, with the
/// combinations the contract rejects.
struct Access {
    bind: String,
    api_key: Option<String>,
    public_url: Option<String>,
}

fn access(args: &mut HostArgs, host: &mut HostSection) -> Result<Access, UsageError> {
    let api_key_env = args.api_key_env.take().or(host.api_key_env.take());
    let api_key = api_key(api_key_env.as_deref())?;
    let bind = args
        .host
        .take()
        .or(host.host.take())
        .unwrap_or_else(|| "127.0.0.1".into());
    let allow_unauthenticated =
        args.allow_unauthenticated || host.allow_unauthenticated.unwrap_or(false);
    if api_key.is_none() && !is_loopback(&bind) && !allow_unauthenticated {
        return Err(UsageError(format!(
            "--host {bind} is not a loopback address and no API key is set; set PAGLETS_API_KEY or pass --allow-unauthenticated"
        )));
    }
    let public_url = args.public_url.take().or(host.public_url.take());
    if let Some(url) = &public_url {
        check_public_url(url, api_key.is_some())?;
    }
    Ok(Access {
        bind,
        api_key,
        public_url,
    })
}

/// The mesh settings: seeds from `--peer`, else `[mesh] peers`, else `[host] peer`.
fn mesh_settings(
    args: &mut HostArgs,
    host: &mut HostSection,
    section: MeshSection,
) -> Result<crate::mesh::MeshSettings, UsageError> {
    let seeds = if !args.peer.is_empty() {
        std::mem::take(&mut args.peer)
    } else if !section.peers.is_empty() {
        section.peers
    } else {
        std::mem::take(&mut host.peer)
    };
    if let Some(peer) = seeds.iter().find(|p| p.starts_with("https://")) {
        return Err(UsageError(format!(
            "--peer {peer}: hosts reach each other in plain HTTP (no TLS client in this build); \
             give the peer's http:// URL"
        )));
    }
    let probe_ms = args
        .mesh_probe_ms
        .or(host.mesh_probe_ms)
        .or(section.probe_ms)
        .unwrap_or(1000);
    if probe_ms < 10 {
        return Err(UsageError(format!(
            "--mesh-probe-ms {probe_ms}: use at least 10"
        )));
    }
    Ok(crate::mesh::MeshSettings {
        enabled: !(args.no_mesh || host.no_mesh == Some(true)),
        seeds,
        probe_period: Duration::from_millis(probe_ms),
        forget_after: Duration::from_secs(
            args.mesh_forget_after
                .or(host.mesh_forget_after)
                .or(section.forget_after)
                .unwrap_or(3600),
        ),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names_follow_the_id_rule() {
        for good in ["alpha", "a.b-c_d", &"n".repeat(128)] {
            assert_eq!(
                super::host_name(Some(good.into())).ok().as_deref(),
                Some(good)
            );
        }
        for bad in [".", "..", "", "a/b", "white space", &"n".repeat(129)] {
            let err = super::host_name(Some(bad.into())).expect_err(bad);
            assert!(err.to_string().contains("--name"), "{err}");
        }
        assert!(super::host_name(None).is_err());
    }

    #[test]
    fn flag_paths_win_and_are_made_absolute() {
        let etc = vec![std::path::PathBuf::from("/etc/plugins")];
        let paths = super::scan_paths(vec!["plugins".into()], Some(etc.clone())).expect("ok");
        assert!(
            paths[0].is_absolute() && paths[0].ends_with("plugins"),
            "{paths:?}"
        );
        assert_eq!(
            super::scan_paths(Vec::new(), Some(etc.clone())).expect("ok"),
            etc
        );
        assert!(super::scan_paths(Vec::new(), None).is_err());
    }

    #[test]
    fn sizes_are_bytes_or_binary_units() {
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(super::parse_size("64K"), Ok(64 << 10));
        for bad in ["", "MiB", "12XB", "-1", "99999999999999999999G"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
        let file: super::LaunchFile =
            toml::from_str("[host]\nmax_library_size = \"1KiB\"\n").expect("parses");
        let size = file.host.max_library_size.expect("set");
        assert_eq!(size.bytes("max_library_size").expect("valid"), 1024);
    }

    #[test]
    fn isolate_entries_take_limits_and_flags_add_libraries() {
        let file: super::LaunchFile = toml::from_str(
            "[[isolate]]\nlibrary = \"pi\"\nmemory_limit = \"64MiB\"\nhandler_timeout = \"250ms\"\n\
             [[isolate]]\nlibrary = \"hello\"\nhandler_timeout = 0\n",
        )
        .expect("parses");
        let host = Some(std::time::Duration::from_secs(7));
        let settings =
            super::isolate(vec!["pi".into(), "counter".into()], file.isolate, host).expect("valid");
        let by_name = |name: &str| {
            settings
                .iter()
                .find(|s| s.library == name)
                .expect("listed")
                .clone()
        };
        assert_eq!(settings.len(), 3);
        assert_eq!(by_name("pi").memory_limit, Some(64 << 20));
        assert_eq!(
            by_name("pi").handler_timeout,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(by_name("hello").handler_timeout, None);
        assert_eq!(
            by_name("counter").handler_timeout,
            host,
            "the host's handler timeout, without one of its own"
        );
        let twice: super::LaunchFile =
            toml::from_str("[[isolate]]\nlibrary = \"pi\"\n[[isolate]]\nlibrary = \"pi\"\n")
                .expect("parses");
        assert!(super::isolate(Vec::new(), twice.isolate, host).is_err());
        let bad: super::LaunchFile =
            toml::from_str("[[isolate]]\nlibrary = \"pi\"\nhandler_timeout = \"soon\"\n")
                .expect("parses");
        let err = super::isolate(Vec::new(), bad.isolate, host).expect_err("not a duration");
        assert!(err.to_string().contains("handler_timeout"), "{err}");
    }

    #[test]
    fn loopback_addresses() {
        for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"] {
            assert!(super::is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "10.0.0.1", "example.org"] {
            assert!(!super::is_loopback(host), "{host}");
        }
    }

    #[test]
    fn unknown_launch_keys_name_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("paglets-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("launch.toml");
        std::fs::write(&file, "[host]\nname = \"a\"\ncolour = \"red\"\n").expect("write");
        let err = super::read_launch_file(Some(&file)).expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.contains("colour") && text.contains("launch.toml"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn properties_are_a_table_or_a_list_of_key_value() {
        let table: super::LaunchFile =
            toml::from_str("[host]\nproperty = { room = \"42\" }\n").expect("table");
        let list: super::LaunchFile =
            toml::from_str("[host]\nproperty = [\"room=42\"]\n").expect("list");
        for file in [table, list] {
            let map = file.host.property.into_map().expect("valid");
            assert_eq!(map.get("room").map(String::as_str), Some("42"));
        }
        let bad: super::LaunchFile =
            toml::from_str("[host]\nproperty = [\"room\"]\n").expect("parses");
        let err = bad.host.property.into_map().expect_err("not KEY=VALUE");
        assert!(err.to_string().contains("'room'"), "{err}");
    }

    #[test]
    fn the_handler_timeout_is_seconds_0_turns_it_off_and_the_file_takes_durations() {
        use std::time::Duration;
        assert_eq!(super::handler_timeout(0.0).expect("off"), None);
        assert_eq!(
            super::handler_timeout(1.5).expect("fractions"),
            Some(Duration::from_millis(1500))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let err = super::handler_timeout(bad).expect_err("refused");
            assert!(err.to_string().contains("--handler-timeout"), "{err}");
        }
        for (text, expected) in [
            ("5", Some(Duration::from_secs(5))),
            ("0.25", Some(Duration::from_millis(250))),
            ("\"250ms\"", Some(Duration::from_millis(250))),
            ("0", None),
        ] {
            let file: super::LaunchFile =
                toml::from_str(&format!("[host]\nhandler_timeout = {text}\n")).expect("parses");
            let timeout = file.host.handler_timeout.expect("set");
            assert_eq!(
                timeout.duration("[host] handler_timeout").expect("valid"),
                expected,
                "{text}"
            );
        }
    }
}
