//! `ApiError`: the only place error JSON is built. Every error leaves the API as
//! `{"error": {"code": "<kebab-case>", "message": "<text>"}}` with a fitting status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use plugin_api::PagletError;

use crate::registry::ClassError;
use crate::runtime::RuntimeError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad-request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        )
    }

    /// 404 `not-found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 405, as `bad-request`-shaped JSON with its own status.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "method not allowed on this route",
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413 `payload-too-large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 500 `internal`: a host fault (never a paglet's).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 `shutting-down`.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the host is shutting down",
        )
    }
}

impl From<PagletError> for ApiError {
    fn from(err: PagletError) -> Self {
        let message = err.to_string();
        match err {
            PagletError::NotHandled { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "not-handled", message)
            }
            PagletError::InvalidArgs(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid-args", message)
            }
            PagletError::Panicked(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "paglet-panicked",
                message,
            ),
            PagletError::NotFound(_) => Self::not_found(message),
            PagletError::Deadlock(_) => Self::new(StatusCode::CONFLICT, "deadlock", message),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "paglet-failed", message),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        let message = err.to_string();
        match err {
            RuntimeError::NoPaglet(_) => Self::not_found(message),
            RuntimeError::Class(ClassError::Unknown(_)) => Self::not_found(message),
            RuntimeError::Class(ClassError::Gone { .. }) => Self::not_found(message),
            RuntimeError::Duplicate(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            RuntimeError::BadId(_) => Self::bad_request(message),
            RuntimeError::Paglet(e) => e.into(),
            RuntimeError::ShuttingDown => Self::shutting_down(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paglet_error_kind_has_its_status_and_code() {
        for (err, status, code) in [
            (
                PagletError::NotHandled { kind: "fly".into() },
                StatusCode::UNPROCESSABLE_ENTITY,
                "not-handled",
            ),
            (
                PagletError::invalid_args("by: negative"),
                StatusCode::BAD_REQUEST,
                "invalid-args",
            ),
            (
                PagletError::not_found("no item with id 42"),
                StatusCode::NOT_FOUND,
                "not-found",
            ),
            (
                PagletError::Deadlock("a -> b -> a".into()),
                StatusCode::CONFLICT,
                "deadlock",
            ),
            (
                PagletError::failed("disk full"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "paglet-failed",
            ),
            (
                PagletError::Panicked("boom".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "paglet-panicked",
            ),
        ] {
            let api = ApiError::from(err.clone());
            assert_eq!((api.status, api.code), (status, code), "{err:?}");
            assert_eq!(api.message, err.to_string());
        }
    }
}
