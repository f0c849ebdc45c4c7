//! The edges of the HTTP API against a real host: media types, the `Host` check of a keyless
//! host, the error shape of every rejection, the early 413, object bodies and the id rule.

use paglets_e2e::{PluginDir, RawAnswer, TestHost};
use serde_json::{Value, json};

/// A keyless host with the examples and a 4 KiB body limit.
fn host() -> (PluginDir, TestHost) {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &["--max-body", "4096"]);
    (plugins, host)
}

/// `method path` with `headers` (each `Name: value`) and `body`, on a raw connection.
fn raw(host: &TestHost, method: &str, path: &str, headers: &[&str], body: &str) -> RawAnswer {
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        request.push_str(&format!("Host: {}\r\n", host.authority()));
    }
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length:"))
    {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    host.raw(&request)
}

/// Asserts that `answer` is the error `status`/`code` in the contract's shape, with a message
/// containing `says`.
#[track_caller]
fn check(answer: &RawAnswer, status: u16, code: &str, says: &str) {
    let message = answer.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        answer.status == status && answer.json["error"]["code"] == code && message.contains(says),
        "expected {status} {code} saying {says:?}, got {} {:?}\n{}",
        answer.status,
        answer.json,
        answer.head
    );
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        answer.head
    );
}

const JSON: &str = "Content-Type: application/json";

#[test]
fn every_post_needs_the_json_media_type_with_or_without_a_body() {
    let (_plugins, host) = host();
    let id = host.create("counter::Counter", json!({}));
    let messages = format!("/paglets/{id}/messages");
    let create = r#"{"class":"counter::Counter","id":"made"}"#;
    for (path, body) in [
        ("/paglets", create),
        (messages.as_str(), r#"{"kind":"increment"}"#),
        ("/admin/rescan", ""),
        ("/admin/git-update", ""),
    ] {
        for headers in [
            &[][..],
            &["Content-Type: text/plain"][..],
            &["Content-Type: application/x-www-form-urlencoded"][..],
            &["Content-Type: multipart/form-data; boundary=x"][..],
        ] {
            let answer = raw(&host, "POST", path, headers, body);
            check(
                &answer,
                415,
                "unsupported-media-type",
                "Content-Type: application/json",
            );
        }
    }
    // Nothing happened: no paglet made, the counter untouched.
    assert_eq!(host.get("/paglets/made").status, 404);
    assert_eq!(
        host.send(&id, "get", Value::Null).json,
        json!({"reply": {"count": 0}})
    );
    // The right type, parameters and case aside, is served.
    for content_type in ["application/json", "Application/JSON; charset=utf-8"] {
        let header = format!("Content-Type: {content_type}");
        let answer = raw(
            &host,
            "POST",
            &messages,
            &[&header],
            r#"{"kind":"increment"}"#,
        );
        assert_eq!(answer.status, 200, "{content_type}: {:?}", answer.json);
    }
    assert_eq!(raw(&host, "POST", "/admin/rescan", &[JSON], "").status, 200);
    // GET and DELETE carry no body and need no type.
    assert_eq!(raw(&host, "GET", "/health", &[], "").status, 200);
}

#[test]
fn a_keyless_host_serves_only_loopback_names_and_its_public_host() {
    let (_plugins, host) = host();
    let port = host
        .authority()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string();
    for name in ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"] {
        for with_port in [true, false] {
            let value = if with_port {
                format!("{name}:{port}")
            } else {
                name.to_string()
            };
            let header = format!("Host: {value}");
            let answer = raw(&host, "GET", "/health", &[&header], "");
            assert_eq!(answer.status, 200, "Host: {value}: {:?}", answer.json);
        }
    }
    for value in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
        "10.1.2.3",
    ] {
        let header = format!("Host: {value}");
        for (method, path, body) in [
            ("GET", "/health", ""),
            (
                "POST",
                "/paglets",
                r#"{"class":"counter::Counter","id":"rebound"}"#,
            ),
            ("POST", "/admin/git-update", ""),
        ] {
            let answer = raw(&host, method, path, &[&header, JSON], body);
            check(&answer, 403, "forbidden-host", value);
        }
    }
    assert_eq!(host.get("/paglets/rebound").status, 404);
}

#[test]
fn a_host_with_a_key_skips_the_host_check_and_its_public_url_is_served() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--public-url", "http://paglets.example:9999/"],
        persistence.path(),
        &[("PAGLETS_API_KEY", "k")],
    );
    assert_eq!(
        host.get("/health").json["url"],
        "http://paglets.example:9999"
    );
    let answer = raw(
        &host,
        "GET",
        "/health",
        &["Host: anything.example", "Authorization: Bearer k"],
        "",
    );
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    // Without the key the bearer gate answers first, whatever the Host.
    let answer = raw(&host, "GET", "/health", &["Host: anything.example"], "");
    assert_eq!(answer.status, 401);
}

#[test]
fn every_rejection_has_the_error_shape() {
    let (_plugins, host) = host();
    let id = host.create("counter::Counter", json!({}));
    let messages = format!("/paglets/{id}/messages");
    let bad_requests = [
        ("GET", "/paglets/%FF", "", "invalid paglet id"),
        ("DELETE", "/paglets/%FF%FE", "", "invalid paglet id"),
        (
            "POST",
            "/paglets/%C3%28/messages",
            r#"{"kind":"get"}"#,
            "invalid paglet id",
        ),
        ("POST", "/paglets", "{not json", "invalid JSON"),
        ("POST", "/paglets", "{}", "class"),
        ("POST", &messages, r#"{"args":{}}"#, "kind"),
        ("POST", &messages, r#"{"kind":3}"#, "invalid JSON"),
    ];
    for (method, path, body, says) in bad_requests {
        check(
            &raw(&host, method, path, &[JSON], body),
            400,
            "bad-request",
            says,
        );
    }
    check(
        &raw(&host, "PUT", "/paglets", &[JSON], "{}"),
        405,
        "method-not-allowed",
        "method",
    );
    check(
        &raw(&host, "PATCH", &format!("/paglets/{id}"), &[], ""),
        405,
        "method-not-allowed",
        "method",
    );
    check(
        &raw(&host, "GET", "/no/such/route", &[], ""),
        404,
        "not-found",
        "route",
    );
}

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_body_arrives() {
    let (_plugins, host) = host();
    // Only the head is sent: an answer can only come from the declared length. Were the host
    // to wait for the body, `raw` would wait until the harness deadline and fail.
    for path in ["/paglets", "/paglets/x/messages", "/admin/git-update"] {
        let answer = raw(
            &host,
            "POST",
            path,
            &[JSON, "Content-Length: 99999999999"],
            "",
        );
        check(&answer, 413, "payload-too-large", "4096");
    }
    let answer = raw(
        &host,
        "POST",
        "/paglets",
        &[JSON, "Content-Length: 4097"],
        "",
    );
    check(&answer, 413, "payload-too-large", "4096");
    assert_eq!(host.get("/health").status, 200);
}

#[test]
fn bodies_the_contract_gives_as_objects_must_be_objects() {
    let (_plugins, host) = host();
    let id = host.create("counter::Counter", json!({}));
    for (path, body) in [
        ("/paglets", r#"["counter::Counter"]"#),
        ("/paglets", r#"["counter::Counter", null, "arr"]"#),
        (
            &format!("/paglets/{id}/messages") as &str,
            r#"["increment"]"#,
        ),
        ("/admin/git-update", r#"["abcd"]"#),
        ("/paglets", r#""counter::Counter""#),
        ("/paglets", "42"),
    ] {
        check(
            &raw(&host, "POST", path, &[JSON], body),
            400,
            "bad-request",
            "JSON object",
        );
    }
    assert_eq!(host.get("/paglets").json.as_array().map(Vec::len), Some(1));
    assert_eq!(
        host.send(&id, "get", Value::Null).json,
        json!({"reply": {"count": 0}})
    );
}

#[test]
fn dot_ids_are_refused_on_create_and_in_every_path() {
    let (_plugins, host) = host();
    for id in [".", ".."] {
        let body = json!({"class": "counter::Counter", "id": id}).to_string();
        check(
            &raw(&host, "POST", "/paglets", &[JSON], &body),
            400,
            "bad-request",
            "invalid paglet id",
        );
    }
    // Percent-encoded, so no client resolves them before the host sees them.
    for segment in ["%2E", "%2E%2E", "%2e%2e"] {
        let detail = format!("/paglets/{segment}");
        let messages = format!("/paglets/{segment}/messages");
        for (method, path, body) in [
            ("GET", detail.as_str(), ""),
            ("DELETE", detail.as_str(), ""),
            ("POST", messages.as_str(), r#"{"kind":"get"}"#),
        ] {
            check(
                &raw(&host, method, path, &[JSON], body),
                400,
                "bad-request",
                "invalid paglet id",
            );
        }
    }
    assert_eq!(host.get("/paglets").json, json!([]));
}
