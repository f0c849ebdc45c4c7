//! `paglets host`: validate the settings, take the persistence dir, scan, restore, serve the
//! API and watch the folders until SIGINT or SIGTERM, then save and exit 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{CommandResult, Exit, Failure};
use crate::api::{AppState, Shared, listen, router};
use crate::cli::HostArgs;
use crate::config::HostConfig;
use crate::mesh::align::Aligner;
use crate::mesh::{HostMeta, LocalMeta, Mesh};
use crate::persist::{DirLock, LockError};
use crate::registry::Registry;
use crate::runtime::Net;
use crate::runtime::{Origin, Runtime};
use crate::store::Store;
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
    // Before anything else touches the dir: a damaged database stops the start untouched.
    let (store, stored) = Store::open(&config.persistence_dir, config.durability)
        .map_err(|e| Failure::Failed(e.into()))?;
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
    report_missing_folders(&config.paths);
    if let Some(limit) = listen::raise_descriptor_limit() {
        tracing::debug!(limit, "open descriptor limit");
    }
    // Before any library is copied: a port conflict must leave nothing behind.
    let listener = listen::bind(&config.bind, config.port).map_err(anyhow::Error::msg)?;
    let registry = Registry::new(
        Some(config.persistence_dir.join("libs")),
        config.allow_insecure_paths,
    )
    .context("prepare the private library copies")?
    .max_library_size(config.max_library_size);
    let runtime = Runtime::new(
        config.name.clone(),
        config.paths.clone(),
        registry,
        config.workers,
    )
    .context("start the worker pool")?;
    runtime.attach_store(Arc::new(store), config.durability, config.checkpoint);
    runtime
        .isolate(config.isolate.clone())
        .context("start the supervisor of worker processes")?;
    runtime.limit_handlers(config.handler_timeout);
    // Each refused file or folder is logged by the registry as it is found.
    runtime.rescan();
    runtime.restore(stored);
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
        .worker_threads(crate::runtime::http_workers())
        .enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(serve(config, listener, runtime, updater))
}

/// Logs each `--paths` folder that cannot be listed, saying why: only a missing one is
/// picked up when it appears; a refused or exhausted one (EACCES, EMFILE) is an error.
fn report_missing_folders(paths: &[std::path::PathBuf]) {
    for path in paths {
        match std::fs::read_dir(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(folder = %path.display(), "does not exist yet; it is picked up when it appears");
            }
            Err(e) => tracing::error!(folder = %path.display(), "cannot list the folder: {e}"),
        }
    }
}

async fn serve(
    config: HostConfig,
    listener: std::net::TcpListener,
    runtime: Arc<Runtime>,
    updater: Option<Arc<Updater>>,
) -> CommandResult {
    let listener = tokio::net::TcpListener::from_std(listener).context("listen")?;
    let bound = listener.local_addr().context("local address")?;
    let url = format!("http://{bound}");
    let public_url = listen::public_url(config.public_url.as_deref(), bound);
    // Installed before the URL is printed: whoever starts us may signal right after.
    let mut signals = Signals::install().context("install the SIGINT and SIGTERM handlers")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "paglets host '{}' listening at {url}", config.name).context("stdout")?;
    stdout.flush().context("stdout")?;
    if config.watch {
        crate::watch::spawn(runtime.clone(), config.paths.clone()).context("watch the folders")?;
    }
    let config = Arc::new(config);
    let api_key: Option<Arc<str>> = config.api_key.as_deref().map(Arc::from);
    // Other hosts reach us at the public URL (a reverse proxy's, with --public-url).
    let local = local_meta(&config, &runtime, updater.as_ref(), &public_url);
    let mesh = Mesh::start(
        config.mesh.clone(),
        &config.name,
        &public_url,
        api_key.clone(),
        local,
    )
    .context("start the mesh")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .context("build the HTTP client for moving paglets")?;
    runtime.attach_net(Net {
        handle: tokio::runtime::Handle::current(),
        client,
        name: config.name.clone(),
        url: public_url.clone(),
        api_key: api_key.clone(),
        mesh: mesh.clone(),
        transfer_timeout: config.transfer_timeout,
        forward_ttl: config.forward_ttl,
    });
    let aligner = match (&updater, &config.auto_update) {
        (Some(updater), Some(settings)) => {
            let timeout = settings.build_timeout + settings.lock_timeout + Duration::from_secs(60);
            let aligner = Aligner::start(
                mesh.clone(),
                updater.clone(),
                &public_url,
                api_key.clone(),
                timeout,
            )
            .context("start git alignment")?;
            Some(aligner)
        }
        _ => None,
    };
    let state = AppState::from(Shared {
        runtime: runtime.clone(),
        config: config.clone(),
        public_host: listen::url_host(&public_url).map(Arc::from),
        url: public_url.into(),
        api_key,
        updater: updater.clone(),
        restart: Arc::new(tokio::sync::Notify::new()),
        mesh: mesh.clone(),
        aligner,
    });
    let restart = state.restart.clone();
    let limits = listen::Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(listen::serve(listener, router(state), limits, stop_rx));
    let restarting = tokio::select! {
        () = signals.recv() => false,
        () = restart.notified() => true,
    };
    // First, so peers list this host as `left` at once rather than suspecting it.
    mesh.leave().await;
    tracing::info!(
        "shutting down: new requests get 503, running handlers get {:?}",
        config.shutdown_grace
    );
    runtime.begin_shutdown();
    let (rt, grace) = (runtime.clone(), config.shutdown_grace);
    let saved = tokio::task::spawn_blocking(move || rt.save_at_shutdown(grace))
        .await
        .context("save the paglets")?;
    match saved {
        Ok(saved) => {
            tracing::info!(saved, dir = %config.persistence_dir.display(), "paglets saved")
        }
        Err(e) => tracing::error!("paglets not saved at shutdown: {e}"),
    }
    // The workers served the save above; now they may go.
    runtime.stop_workers();
    let _ = stop_tx.send(true);
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

/// How this host describes itself to the mesh (and in `/health`): `code_version` is the
/// `--mesh-version` label, else the applied head with auto-update, else a digest of the
/// loaded libraries.
fn local_meta(
    config: &Arc<HostConfig>,
    runtime: &Arc<Runtime>,
    updater: Option<&Arc<Updater>>,
    url: &str,
) -> LocalMeta {
    let (config, runtime, updater) = (config.clone(), runtime.clone(), updater.cloned());
    let url = url.to_string();
    Arc::new(move || {
        let digest = || runtime.registry().digest();
        let code_version = config
            .mesh_version
            .clone()
            .or_else(|| updater.as_ref().map(|u| u.applied_head()))
            .unwrap_or_else(digest);
        HostMeta {
            name: config.name.clone(),
            url: url.clone(),
            generation: 0,
            seq: 0,
            code_version: Some(code_version),
            mesh_version: config.mesh_version.clone(),
            tags: config.tags.clone(),
            properties: config.properties.clone(),
            paglets: runtime.count() as u64,
            auto_update_from_git: updater.is_some(),
        }
    })
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
