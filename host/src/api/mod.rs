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
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::config::HostConfig;
use crate::runtime::{Runtime, RuntimeError};
pub use error::ApiError;
pub use extract::{JsonBody, PagletId};

/// What every handler shares: one `Arc`, cloned for every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), checks))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// What every request passes, in order: the bearer gate (`auth.rs`), the guard (`guard.rs`)
/// and the 308 of a paglet that left (`moving.rs`), all before the body is read; then its
/// handler; then the JSON shape for any error that left without it (`error.rs`). One layer
/// rather than several: each layer clones the route on every request.
async fn checks(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let refused = auth::gate(&app, &request)
        .and_then(|()| guard::admit(&app, &request))
        .err()
        .or_else(|| moving::forwarded(&app, &request));
    match refused {
        Some(error) => error.into_response(),
        None => error::json_errors(next.run(request).await).await,
    }
}

/// Waits for `work` that waits for paglet code (a hook, or a disposal queued behind
/// messages) at most the handler timeout; past it, 504 `handler-timeout` (the code runs on).
pub async fn within_handler_timeout<T>(
    app: &AppState,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match app.runtime.handler_timeout() {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(RuntimeError::waited_past(limit).into())),
        None => work.await,
    }
}

/// Runs blocking work (paglet code, file I/O) off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the worker task failed: {e}")))?
}
