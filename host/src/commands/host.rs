//! `paglets host`: validate the settings, take the persistence dir, scan, restore, serve the
//! API and watch the folders until SIGINT or SIGTERM, then save and exit 0.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;

use super::{CommandResult, Exit, Failure};
use crate::api::{AppState, router};
use crate::cli::HostArgs;
use crate::config::HostConfig;
use crate::persist::{self, DirLock, LockError};
use crate::registry::Registry;
use crate::runtime::{Origin, Runtime};
use crate::update::Updater;

/// Set in the environment of a host re-executed because its startup build rebuilt it.
const STARTUP_REEXEC: &str = "PAGLETS_STARTUP_REEXEC";

/// The top-level entry point for `paglets host`.
pub fn run(args: Box<HostArgs>) -> CommandResult {
    let config = HostConfig::from_args(*args).map_err(|e| Failure::Usage(e.0))?;
    let _owner = DirLock::acquire(&config.persistence_dir).map_err(|e| match e {
        LockError::Owned { .. } => Failure::Usage(e.to_string()),
        other => Failure::Failed(other.into()),
    })?;
    let updater = match &config.auto_update {
        Some(settings) => {
            Some(Arc::new(Updater::start(settings.clone()).map_err(|e| {
                Failure::Verbatim(format!("paglets host: {e}"))
            })?))
        }
        None => None,
    };
    // Once only: a build that touches the binary every time must not loop.
    let restarted = std::env::var_os(STARTUP_REEXEC).is_some();
    if let Some(updater) = updater.as_ref().filter(|u| u.restart_now() && !restarted) {
        return Err(reexec(updater.exe(), true));
    }
    for path in &config.paths {
        if !path.is_dir() {
            tracing::warn!(folder = %path.display(), "does not exist yet; it is picked up when it appears");
        }
    }
    let registry = Registry::new(
        Some(config.persistence_dir.join("libs")),
        config.allow_insecure_paths,
    )
    .context("prepare the private library copies")?;
    let runtime = Runtime::new(
        config.name.clone(),
        config.paths.clone(),
        registry,
        config.workers,
    )
    .context("start the worker pool")?;
    // Each refused file or folder is logged by the registry as it is found.
    runtime.rescan();
    runtime.restore(persist::load(&config.persistence_dir)?);
    for entry in &config.startup {
        if runtime.exists(&entry.id) {
            continue;
        }
        match runtime.create(
            &entry.class,
            entry.state.as_ref(),
            Some(&entry.id),
            Origin::New,
        ) {
            Ok(id) => tracing::info!(paglet = %id, class = %entry.class, "created at startup"),
            Err(e) => tracing::error!(class = %entry.class, "startup paglet not created: {e}"),
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(serve(config, runtime, updater))
}

async fn serve(
    config: HostConfig,
    runtime: Arc<Runtime>,
    updater: Option<Arc<Updater>>,
) -> CommandResult {
    let listener = tokio::net::TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let url = format!("http://{}", listener.local_addr().context("local address")?);
    // Installed before the URL is printed: whoever starts us may signal right after.
    let mut signals = Signals::install().context("install the SIGINT and SIGTERM handlers")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "paglets host '{}' listening at {url}", config.name).context("stdout")?;
    stdout.flush().context("stdout")?;
    if config.watch {
        crate::watch::spawn(runtime.clone(), config.paths.clone()).context("watch the folders")?;
    }
    let config = Arc::new(config);
    let state = AppState {
        runtime: runtime.clone(),
        config: config.clone(),
        url: url.into(),
        api_key: config.api_key.as_deref().map(Arc::from),
        updater: updater.clone(),
        restart: Arc::new(tokio::sync::Notify::new()),
    };
    let restart = state.restart.clone();
    if let Some(updater) = &updater {
        announce(&config, &state.url, &updater.applied_head());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { drop(stop_rx.await) })
            .into_future(),
    );
    let restarting = tokio::select! {
        () = signals.recv() => false,
        () = restart.notified() => true,
    };
    tracing::info!(
        "shutting down: new requests get 503, running handlers get {:?}",
        config.shutdown_grace
    );
    runtime.begin_shutdown();
    let (rt, grace) = (runtime.clone(), config.shutdown_grace);
    let saved = tokio::task::spawn_blocking(move || rt.snapshot(grace))
        .await
        .context("snapshot")?;
    persist::save(&config.persistence_dir, &saved)?;
    tracing::info!(saved = saved.len(), dir = %config.persistence_dir.display(), "paglets saved");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    match (restarting, &updater) {
        (true, Some(updater)) => Err(reexec(updater.exe(), false)),
        _ => Ok(Exit::Ok),
    }
}

/// Replaces this process with the (rebuilt) executable recorded at start, with the same
/// arguments. Open descriptors (the persistence dir's lock, the listener) are close-on-exec.
fn reexec(exe: &std::path::Path, at_startup: bool) -> Failure {
    use std::os::unix::process::CommandExt;
    tracing::info!(exe = %exe.display(), "the host binary changed: re-executing");
    let mut command = std::process::Command::new(exe);
    command.args(std::env::args_os().skip(1));
    if at_startup {
        command.env(STARTUP_REEXEC, "1");
    } else {
        command.env_remove(STARTUP_REEXEC);
    }
    let err = command.exec();
    Failure::Failed(anyhow::anyhow!(
        "cannot re-execute {}: {err}",
        exe.display()
    ))
}

/// Sends this host's applied head to its peers, in the background, and logs each answer.
fn announce(config: &HostConfig, url: &str, head: &str) {
    let body =
        serde_json::json!({"target_hash": head, "source_name": config.name, "source_url": url});
    for peer in config.peers.clone() {
        let (body, key) = (body.clone(), config.api_key.clone());
        std::thread::spawn(move || {
            let endpoint = format!("{}/admin/git-update", peer.trim_end_matches('/'));
            let client = reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(1800))
                .build();
            let mut request = match client {
                Ok(client) => client.post(&endpoint).json(&body),
                Err(e) => return tracing::warn!(peer, "cannot build an HTTP client: {e}"),
            };
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            match request.send().and_then(|r| r.json::<serde_json::Value>()) {
                Ok(answer) if answer["status"] == "target-missing" => tracing::warn!(
                    peer,
                    "peer answered target-missing: commit may not have been pushed"
                ),
                Ok(answer) => {
                    tracing::info!(peer, status = %answer["status"], "peer answered the update")
                }
                Err(e) => tracing::warn!(peer, "cannot reach the peer: {e}"),
            }
        });
    }
}

/// SIGINT and SIGTERM, both meaning "shut down gracefully".
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}
