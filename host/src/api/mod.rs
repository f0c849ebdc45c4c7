//! The HTTP API: routes, the shared state, and the layers every request passes (the bearer
//! gate, the guard, the JSON error shape).

mod admin;
mod auth;
mod error;
mod extract;
mod guard;
pub mod listen;
mod mesh;
mod moving;
mod paglets;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::config::HostConfig;
use crate::runtime::Runtime;
pub use error::ApiError;
pub use extract::{JsonBody, PagletId};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The paglets.
    pub runtime: Arc<Runtime>,
    /// The host's settings.
    pub config: Arc<HostConfig>,
    /// The URL other hosts and clients reach this host at (`--public-url`).
    pub url: Arc<str>,
    /// The host part of that URL: a keyless host serves it besides loopback names.
    pub public_host: Option<Arc<str>>,
    /// The API key, when auth is on.
    pub api_key: Option<Arc<str>>,
    /// Git auto-update, when on.
    pub updater: Option<Arc<crate::update::Updater>>,
    /// Notified when an update needs the host to re-execute itself.
    pub restart: Arc<tokio::sync::Notify>,
    /// The mesh (membership off with `--no-mesh`).
    pub mesh: Arc<crate::mesh::Mesh>,
    /// Git alignment with the mesh, when auto-update is on.
    pub aligner: Option<Arc<crate::mesh::align::Aligner>>,
}

/// All routes, behind the bearer gate, the guard and the body limit; every error leaves
/// with the JSON shape.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body;
    Router::new()
        .route("/health", get(admin::health))
        .route("/classes", get(admin::classes))
        .route("/libraries", get(admin::libraries))
        .route("/admin/rescan", post(admin::rescan))
        .route("/admin/git-update", post(admin::git_update))
        .route("/mesh/hosts", get(mesh::hosts))
        .route("/mesh/identity", get(mesh::identity))
        .route(
            "/mesh/swim",
            post(mesh::swim).layer(DefaultBodyLimit::max(crate::mesh::MAX_BODY)),
        )
        .route("/paglets", post(paglets::create).get(paglets::list))
        .route(
            "/paglets/{id}",
            get(paglets::detail).delete(paglets::dispose),
        )
        .route("/paglets/{id}/messages", post(paglets::send))
        .route("/paglets/{id}/dispatch", post(moving::dispatch))
        .route("/paglets/{id}/clone", post(moving::clone))
        .route("/paglets/{id}/retract", post(moving::retract))
        .route("/paglets/{id}/deactivate", post(moving::deactivate))
        .route("/paglets/{id}/activate", post(moving::activate))
        .route(
            "/mesh/arrivals",
            post(moving::arrivals).layer(DefaultBodyLimit::max(state.config.max_transfer)),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            moving::forwarding,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::gate,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

/// Runs blocking work (paglet code, file I/O) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the worker task failed: {e}")))?
}
