//! The HTTP API: routes, the shared state, and the JSON body extractor.

mod admin;
mod auth;
mod error;
mod paglets;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::config::HostConfig;
use crate::runtime::Runtime;
pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The paglets.
    pub runtime: Arc<Runtime>,
    /// The host's settings.
    pub config: Arc<HostConfig>,
    /// The URL the host serves at.
    pub url: Arc<str>,
    /// The API key, when auth is on.
    pub api_key: Option<Arc<str>>,
    /// Git auto-update, when on.
    pub updater: Option<Arc<crate::update::Updater>>,
    /// Notified when an update needs the host to re-execute itself.
    pub restart: Arc<tokio::sync::Notify>,
}

/// All routes, behind the auth gate and the body limit.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body;
    Router::new()
        .route("/health", get(admin::health))
        .route("/classes", get(admin::classes))
        .route("/libraries", get(admin::libraries))
        .route("/admin/rescan", post(admin::rescan))
        .route("/admin/git-update", post(admin::git_update))
        .route("/mesh/hosts", get(admin::mesh_hosts))
        .route("/paglets", post(paglets::create).get(paglets::list))
        .route(
            "/paglets/{id}",
            get(paglets::detail).delete(paglets::dispose),
        )
        .route("/paglets/{id}/messages", post(paglets::send))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::gate,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A JSON body, read whatever its content type; an empty body reads as `{}`. Malformed JSON
/// and wrong fields are 400 `bad-request`, an oversized body 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(state.config.max_body)
            } else {
                ApiError::bad_request(format!("cannot read the body: {rejection}"))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
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
