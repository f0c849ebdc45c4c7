//! What every request must satisfy before a handler runs, checked before the body is read
//! (after the bearer gate): the `Host` of a keyless host, the `Content-Type` of a POST, and
//! a declared `Content-Length` within the body limit.
//!
//! The media type each route takes is decided here, in [`media_type`], and nowhere else.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{Method, header};

use super::AppState;
use super::error::ApiError;

/// The `Content-Type` a POST to `path` must carry: binary membership packets on
/// `/mesh/swim`, JSON everywhere else.
pub fn media_type(path: &str) -> &'static str {
    match path {
        "/mesh/swim" => "application/octet-stream",
        _ => "application/json",
    }
}

/// Refuses a keyless host's requests under a foreign `Host` (403), a POST without the
/// route's media type (415), and a declared body over the limit (413).
pub fn admit(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    if state.api_key.is_none() {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        if !host_allowed(host, state.public_host.as_deref()) {
            return Err(ApiError::forbidden_host(host));
        }
    }
    if request.method() == Method::POST {
        let expected = media_type(request.uri().path());
        let given = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        if !given.is_some_and(|g| essence_is(g, expected)) {
            return Err(ApiError::unsupported_media_type(expected, given));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Arriving paglets have their own, larger limit.
    let limit = if request.uri().path() == "/mesh/arrivals" {
        state.config.max_transfer
    } else {
        state.config.max_body
    };
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(())
}

/// `application/json; charset=utf-8` is `application/json`; case does not matter.
fn essence_is(content_type: &str, expected: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

/// The host part of a `Host` header value: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    value.rsplit_once(':').map_or(value, |(name, _port)| name)
}

/// Whether a keyless host serves a request addressed to `host`: loopback names and
/// addresses on any port, or the host of the public URL.
pub fn host_allowed(host: &str, public_host: Option<&str>) -> bool {
    let name = host_name(host.trim());
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback
        || public_host.is_some_and(|public| !name.is_empty() && name.eq_ignore_ascii_case(public))
}

#[cfg(test)]
mod tests {
    use super::{essence_is, host_allowed, media_type};

    #[test]
    fn loopback_names_on_any_port_and_the_public_host_are_served() {
        for host in [
            "localhost",
            "localhost:8765",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8765",
            "[::1]",
            "[::1]:8765",
            "10.0.0.5:8765",
            "paglets.lan",
        ] {
            let public = if host.starts_with("paglets") {
                "paglets.lan"
            } else {
                "10.0.0.5"
            };
            assert!(host_allowed(host, Some(public)), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8765",
            "localhost.evil.example",
            "10.0.0.6:8765",
            "[::2]:1",
        ] {
            assert!(!host_allowed(host, Some("10.0.0.5")), "{host}");
        }
        assert!(!host_allowed("10.0.0.5", None));
        assert!(!host_allowed("", Some("")));
    }

    #[test]
    fn media_types_are_compared_by_essence() {
        assert!(essence_is("application/json", "application/json"));
        assert!(essence_is(
            "Application/JSON; charset=utf-8",
            "application/json"
        ));
        assert!(!essence_is("text/plain", "application/json"));
        assert!(!essence_is("application/jsonx", "application/json"));
        assert_eq!(media_type("/mesh/swim"), "application/octet-stream");
        assert_eq!(media_type("/paglets"), "application/json");
    }
}
