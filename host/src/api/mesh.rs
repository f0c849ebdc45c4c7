//! `/mesh/hosts`, `/mesh/identity` and `/mesh/swim`: thin handlers over [`crate::mesh::Mesh`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::mesh::{MAX_BODY, MeshError};

/// `GET /mesh/hosts`: this host and every other host it knows.
pub async fn hosts(State(app): State<AppState>) -> Json<Value> {
    Json(json!({"hosts": app.mesh.hosts()}))
}

/// `GET /mesh/identity`: what a joining host announces itself to.
pub async fn identity(State(app): State<AppState>) -> Json<Value> {
    app.mesh.count_request();
    Json(json!(app.mesh.identity(&app.url)))
}

/// `POST /mesh/swim`: checks the packet's header and hands it to the membership task;
/// 204 at once.
pub async fn swim(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(MAX_BODY)
        } else {
            ApiError::bad_request(format!("cannot read the body: {rejection}"))
        }
    })?;
    match app.mesh.receive(&body) {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e @ MeshError::Disabled) => Err(ApiError::not_found(e.to_string())),
        Err(e @ MeshError::Wire(_)) => Err(ApiError::bad_request(e.to_string())),
    }
}
