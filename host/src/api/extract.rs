//! Extractors whose every rejection is an [`ApiError`]: the JSON body and the paglet id of
//! the path.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::runtime::{ID_RULE, valid_id};

/// A JSON object body (the guard already checked its `Content-Type`); an empty body reads
/// as `{}`. Malformed JSON, a body that is not an object, and wrong fields are 400
/// `bad-request`, an oversized body 413.
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
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let bytes: &[u8] = match first {
            None => b"{}",
            Some(b'{') => &bytes,
            // serde reads a struct from an array too: refuse anything but an object first.
            Some(_) => return Err(ApiError::bad_request("the body must be a JSON object")),
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The `{id}` of a paglet route, checked against the id rule (400 otherwise), so `.`, `..`
/// and undecodable segments never reach the runtime.
pub struct PagletId(pub String);

impl FromRequestParts<AppState> for PagletId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid paglet id in the path: {e}")))?;
        if !valid_id(&id) {
            return Err(ApiError::bad_request(format!(
                "invalid paglet id '{id}': {ID_RULE}"
            )));
        }
        Ok(PagletId(id))
    }
}
