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
    code: std::borrow::Cow<'static, str>,
    message: String,
    /// A header the answer carries (`Location` of a 308, `Retry-After` of a 503).
    header: Option<Box<(header::HeaderName, HeaderValue)>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            header: None,
        }
    }

    /// 308 `moved`: the paglet lives at `location` now.
    pub fn moved(id: &str, location: &str) -> Self {
        let mut error = Self::new(
            StatusCode::PERMANENT_REDIRECT,
            "moved",
            format!("paglet '{id}' moved to another host: {location}"),
        );
        error.header = HeaderValue::from_str(location)
            .ok()
            .map(|v| Box::new((header::LOCATION, v)));
        error
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

    /// 403 `forbidden-host`: a keyless host asked under a name it does not serve.
    pub fn forbidden_host(host: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden-host",
            format!(
                "Host '{host}' is not this host's name: without an API key only loopback names \
                 (localhost, 127.0.0.1, [::1]) and the host of --public-url are served"
            ),
        )
    }

    /// 415 `unsupported-media-type`: the `Content-Type` header is not the one the route takes.
    pub fn unsupported_media_type(expected: &str, given: Option<&str>) -> Self {
        let given = given.map_or_else(|| "none".to_string(), |g| format!("'{g}'"));
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("this route needs the header Content-Type: {expected} (got {given})"),
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
            PagletError::InvalidArgs(_) | PagletError::DropsKeys { .. } => {
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
            RuntimeError::NotPersisted(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not-persisted", message)
            }
            RuntimeError::Inactive(_) => Self::conflict(message),
            RuntimeError::InDoubt(_) => {
                let mut error = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transfer-in-doubt",
                    message,
                );
                error.header = Some(Box::new((
                    header::RETRY_AFTER,
                    HeaderValue::from_static("1"),
                )));
                error
            }
            RuntimeError::ClassMissing(_) => {
                Self::new(StatusCode::CONFLICT, "class-missing", message)
            }
            RuntimeError::Incompatible(_) => {
                Self::new(StatusCode::CONFLICT, "incompatible-code", message)
            }
            RuntimeError::Unreachable(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "bad-gateway", message)
            }
            RuntimeError::BadRequest(_) => Self::bad_request(message),
            RuntimeError::NoHost(_) => Self::not_found(message),
            RuntimeError::NoStore => Self::internal(message),
            RuntimeError::Crashed(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "paglet-crashed", message)
            }
            RuntimeError::Quarantined(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "quarantined", message)
            }
            RuntimeError::HandlerTimeout(_) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "handler-timeout", message)
            }
            RuntimeError::Remote {
                status,
                code,
                message,
            } => ApiError {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                code: code.into(),
                message,
                header: None,
            },
        }
    }
}

/// Run on every answer (by the router's one layer, `checks` in `mod.rs`): an error that left
/// a handler or an extractor without the JSON shape (axum's own plain-text rejections, e.g.
/// for a path that is not UTF-8) gets it here, so the shape holds for every route, whoever
/// adds it.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    // Rejection texts are short; a larger body is cut, never waited for without bound.
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        s if s.is_client_error() => "bad-request",
        _ => "internal",
    };
    ApiError::new(status, code, text).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some((name, value)) = self.header.map(|h| *h) {
            response.headers_mut().insert(name, value);
        }
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
                PagletError::DropsKeys {
                    keys: vec!["extra".into()],
                },
                StatusCode::BAD_REQUEST,
                "invalid-args",
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
            assert_eq!((api.status, api.code.as_ref()), (status, code), "{err:?}");
            assert_eq!(api.message, err.to_string());
        }
    }

    async fn shaped(response: Response) -> (StatusCode, serde_json::Value) {
        let response = super::json_errors(response).await;
        let status = response.status();
        let kind = response.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(
            kind.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn plain_text_rejections_get_the_error_shape() {
        let plain = (
            StatusCode::BAD_REQUEST,
            "Failed to deserialize query string",
        )
            .into_response();
        let (status, body) = shaped(plain).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad-request");
        assert_eq!(
            body["error"]["message"],
            "Failed to deserialize query string"
        );
        let (status, body) = shaped(StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], "unsupported-media-type");
        assert_eq!(body["error"]["message"], "Unsupported Media Type");
        // Our own errors pass through untouched.
        let (_, body) = shaped(super::ApiError::conflict("taken").into_response()).await;
        assert_eq!(body["error"]["code"], "conflict");
    }
}
