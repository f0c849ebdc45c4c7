//! Bearer auth and the shutdown gate, checked before any body is read.

use axum::extract::Request;
use axum::http::header;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Refuses requests without the right `Authorization: Bearer <key>` (when a key is set),
/// and every request once shutdown began.
pub fn gate(state: &AppState, request: &Request) -> Result<(), ApiError> {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            if request.uri().path().starts_with("/mesh/") {
                state.mesh.note_refused(request.uri().path());
            }
            return Err(ApiError::unauthorized());
        }
    }
    if state.runtime.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    Ok(())
}
