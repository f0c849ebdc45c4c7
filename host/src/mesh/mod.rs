//! The mesh: hosts that share an API key find each other, watch each other's health and
//! compare code versions.
//!
//! Owns membership (foca's SWIM carried over `POST /mesh/swim`, in `swim.rs`), the member
//! table `/mesh/hosts` shows (`view.rs`), the metadata hosts spread about themselves
//! (`meta.rs`), the wire format (`wire.rs`), outbound requests (`transport.rs`), joining
//! through seeds (`seeds.rs`) and git alignment between hosts (`align.rs`). It knows nothing
//! of HTTP routing (the handlers in `api/mesh.rs` call [`Mesh`]) and nothing of paglets
//! beyond the count the host hands it.

pub mod align;
mod identity;
mod meta;
mod seeds;
mod swim;
mod transport;
mod view;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub use identity::HostId;
pub use meta::{HostMeta, normalize_tags};
pub use view::{HostRow, HostState};
pub use wire::{MAX_BODY, WireError};

use crate::runtime::lock;
use swim::Event;
use transport::Transport;
use view::View;

/// How long the membership task's inbox is; past it, packets are dropped like lost UDP.
const INBOX: usize = 1024;
/// How often our own metadata is checked for changes (and broadcast when it changed).
const META_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between two announcements to the seeds.
const SEED_EVERY: Duration = Duration::from_secs(5);

/// Mesh settings from the command line and the launch config.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// Membership on (off with `--no-mesh`).
    pub enabled: bool,
    /// Seed URLs (`--peer`, `[mesh] peers`).
    pub seeds: Vec<String>,
    /// SWIM probe period (LAN default 1 s; tests shorten it).
    pub probe_period: Duration,
    /// Down and left hosts are forgotten after this long (default one hour).
    pub forget_after: Duration,
}

/// Computes this host's metadata (seq 0) from its live state.
pub type LocalMeta = Arc<dyn Fn() -> HostMeta + Send + Sync>;

/// What the mesh's tasks share.
pub(crate) struct Shared {
    view: Arc<Mutex<View>>,
    transport: Arc<Transport>,
    tx: mpsc::Sender<Event>,
    /// Our current identity (a renewal changes its generation).
    me: Mutex<HostId>,
}

impl Shared {
    /// Reads `id`'s `/health` in the background and stores its metadata.
    fn fetch_meta(self: &Arc<Self>, id: HostId) {
        let shared = self.clone();
        tokio::spawn(async move {
            let Some(health) = shared.transport.health(&id.url).await else {
                return;
            };
            match HostMeta::from_health(&health) {
                Some(meta) if meta.name == id.name => {
                    lock(&shared.view).offer_meta(meta);
                }
                _ => tracing::debug!(host = %id.name, "its /health does not describe it"),
            }
        });
    }
}

/// Why `POST /mesh/swim` refused a body.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The host runs with `--no-mesh`.
    #[error("this host runs with --no-mesh")]
    Disabled,
    /// The body is not a packet this host reads.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The mesh of one host: a handle the API and the shutdown path use.
pub struct Mesh {
    settings: MeshSettings,
    local: LocalMeta,
    /// Our own metadata as last announced (its seq is what `/health` reports).
    own: Mutex<HostMeta>,
    shared: Option<Arc<Shared>>,
    generation: u64,
    /// When a refused mesh request was last logged.
    refused_logged: Mutex<Option<Instant>>,
    /// Wire versions already logged.
    versions_logged: Mutex<Vec<u8>>,
    /// Mesh requests received (`/mesh/swim` and `/mesh/identity`).
    received: AtomicU64,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A generation that grows across starts: microseconds since the epoch.
fn start_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

impl Mesh {
    /// Starts the mesh (when enabled) for the host `name` serving at `url`: the membership
    /// task, the seed announcer, the metadata and forgetting timers. Call inside the tokio
    /// runtime.
    pub fn start(
        settings: MeshSettings,
        name: &str,
        url: &str,
        key: Option<Arc<str>>,
        local: LocalMeta,
    ) -> Result<Arc<Mesh>, reqwest::Error> {
        let generation = start_generation();
        let me = HostId {
            name: name.to_string(),
            url: url.to_string(),
            generation,
        };
        let mut own = local();
        own.generation = generation;
        let mut inbox = None;
        let shared = if settings.enabled {
            let (tx, rx) = mpsc::channel(INBOX);
            inbox = Some(rx);
            Some(Arc::new(Shared {
                view: Arc::new(Mutex::new(View::new(name))),
                transport: Arc::new(Transport::new(key)?),
                tx,
                me: Mutex::new(me.clone()),
            }))
        } else {
            None
        };
        let mesh = Arc::new(Mesh {
            settings: settings.clone(),
            local,
            own: Mutex::new(own),
            shared: shared.clone(),
            generation,
            refused_logged: Mutex::new(None),
            versions_logged: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
        });
        if let (Some(shared), Some(rx)) = (shared, inbox) {
            let config = swim::config(settings.probe_period, settings.forget_after);
            tokio::spawn(swim::run(shared.clone(), me, config, rx));
            let seed_every = SEED_EVERY.min(settings.probe_period * 5);
            tokio::spawn(seeds::run(
                shared,
                settings.seeds,
                name.to_string(),
                seed_every,
            ));
            tokio::spawn(mesh.clone().tick());
        }
        Ok(mesh)
    }

    /// True when membership runs.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The settings it started with.
    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// Our identity as `GET /mesh/identity` serves it.
    pub fn identity(&self, url: &str) -> HostId {
        match &self.shared {
            Some(shared) => lock(&shared.me).clone(),
            None => HostId {
                name: lock(&self.own).name.clone(),
                url: url.to_string(),
                generation: self.generation,
            },
        }
    }

    /// Counts one mesh request received from another host.
    pub fn count_request(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands one `POST /mesh/swim` body to the membership task, after checking it.
    pub fn receive(&self, body: &[u8]) -> Result<(), MeshError> {
        self.count_request();
        let Some(shared) = &self.shared else {
            return Err(MeshError::Disabled);
        };
        let packet = wire::decode(body).inspect_err(|e| {
            if let WireError::Version(v) = e {
                let mut logged = lock(&self.versions_logged);
                if !logged.contains(v) {
                    logged.push(*v);
                    tracing::warn!("dropped a membership packet: {e}");
                }
            }
        })?;
        let event = match packet {
            wire::Packet::Swim(data) => Event::Packet(data),
            wire::Packet::Leave(id) => {
                tracing::info!(host = %id.name, "mesh host left");
                Event::Left(id)
            }
        };
        // A full inbox drops the packet, as a busy network would; SWIM retries.
        let _ = shared.tx.try_send(event);
        Ok(())
    }

    /// Logs a mesh request refused for its key, at most once a minute.
    pub fn note_refused(&self, path: &str) {
        let mut last = lock(&self.refused_logged);
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(
                path,
                "refused a mesh request with a wrong or missing API key (a host with another key?); further ones within a minute are not logged"
            );
        }
    }

    /// This host's metadata now, with the latest announced seq.
    pub fn own_meta(&self) -> HostMeta {
        let seq = lock(&self.own).seq;
        HostMeta {
            generation: self.generation,
            seq,
            ..(self.local)()
        }
    }

    /// `GET /mesh/hosts`: this host first, then every other host known.
    pub fn hosts(&self) -> Vec<HostRow> {
        let me = self.own_meta();
        match &self.shared {
            Some(shared) => lock(&shared.view).rows(&me, unix_now()),
            None => View::new(&me.name).rows(&me, unix_now()),
        }
    }

    /// `mesh` in `/health`.
    pub fn health(&self) -> Value {
        let counts = self
            .shared
            .as_ref()
            .map(|s| lock(&s.view).counts())
            .unwrap_or_default();
        json!({
            "enabled": self.enabled(),
            "alive": counts.alive,
            "suspect": counts.suspect,
            "down": counts.down,
            "left": counts.left,
            "generation": self.generation,
            "seq": lock(&self.own).seq,
            "requests_sent": self.shared.as_ref().map_or(0, |s| s.transport.sent()),
            "requests_received": self.received.load(Ordering::Relaxed),
        })
    }

    /// Every other alive host, with its metadata when known.
    pub fn alive(&self) -> Vec<(HostId, Option<HostMeta>)> {
        let Some(shared) = &self.shared else {
            return Vec::new();
        };
        let view = lock(&shared.view);
        view.in_state(HostState::Alive)
            .into_iter()
            .map(|id| {
                let meta = view.meta(&id.name).cloned();
                (id, meta)
            })
            .collect()
    }

    /// Graceful exit: a leave notice to every alive host (so they list us as `left` at
    /// once), then foca's own leave. Bounded by the request timeout.
    pub async fn leave(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let me = lock(&shared.me).clone();
        let notices: Vec<_> = self
            .alive()
            .into_iter()
            .map(|(to, _)| tokio::spawn(shared.transport.clone().send_leave(to, me.clone())))
            .collect();
        for notice in notices {
            let _ = notice.await;
        }
        let (done, left) = oneshot::channel();
        if shared.tx.send(Event::Stop(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
        }
        tracing::info!("left the mesh");
    }

    /// Every second: broadcast our metadata when it changed; now and then forget hosts down
    /// or gone for longer than `forget_after`.
    async fn tick(self: Arc<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut interval = tokio::time::interval(META_EVERY);
        loop {
            interval.tick().await;
            let local = self.local.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || local()).await else {
                continue;
            };
            let changed = {
                let mut own = lock(&self.own);
                let candidate = HostMeta {
                    generation: self.generation,
                    seq: own.seq,
                    ..now
                };
                if own.seq == 0 || !candidate.same_content(&own) {
                    *own = HostMeta {
                        seq: own.seq + 1,
                        ..candidate
                    };
                    Some(own.clone())
                } else {
                    None
                }
            };
            if let Some(meta) = changed
                && shared.tx.send(Event::Meta(meta)).await.is_err()
            {
                return;
            }
            lock(&shared.view).forget(unix_now(), self.settings.forget_after);
        }
    }
}
