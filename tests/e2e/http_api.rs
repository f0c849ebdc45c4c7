//! Every route of the HTTP API, its error shapes and auth, against a real host.

use paglets_e2e::{PluginDir, TestHost, fixture};
use serde_json::{Value, json};

fn error_code(answer: &paglets_e2e::Answer) -> &str {
    answer.json["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {:?}", answer.json))
}

#[test]
fn health_classes_and_libraries_describe_the_loaded_examples() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(
        &[plugins.path()],
        &[
            "--tag",
            "lab",
            "--property",
            "room=42",
            "--mesh-version",
            "m1",
            "--peer",
            "http://127.0.0.1:9",
        ],
    );
    let health = host.get("/health");
    assert_eq!(health.status, 200);
    for (key, expected) in [
        ("name", json!("test")),
        ("status", json!("ok")),
        ("url", json!(host.url)),
        ("libraries", json!(4)),
        ("paglets", json!(0)),
        ("tags", json!(["lab"])),
        ("properties", json!({"room": "42"})),
        ("mesh_version", json!("m1")),
        ("peers", json!(["http://127.0.0.1:9"])),
        ("code_version", json!("m1")),
        ("abi_version", json!(3)),
        ("auto_update_from_git", json!(false)),
        ("git_update", Value::Null),
    ] {
        assert_eq!(
            health.json[key], expected,
            "health.{key} in {:?}",
            health.json
        );
    }
    let classes: Vec<String> = host
        .get("/classes")
        .json
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["class"].as_str().expect("class").to_string())
        .collect();
    for class in [
        "counter::Counter",
        "hello::Hello",
        "hello::Echo",
        "server_info::ServerInfo",
        "pi::Pi",
    ] {
        assert!(
            classes.contains(&class.to_string()),
            "{class} missing from {classes:?}"
        );
    }
    let counter = host
        .get("/classes")
        .json
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["class"] == "counter::Counter")
        .cloned()
        .expect("counter");
    assert_eq!(counter["state_template"], json!({"count": 0}));
    assert_eq!(counter["library"], "counter");
    let libraries = host.get("/libraries").json;
    let libcounter = libraries
        .as_array()
        .expect("array")
        .iter()
        .find(|l| l["name"] == "counter")
        .cloned()
        .expect("libcounter");
    assert_eq!(libcounter["generation"], 0);
    assert_eq!(libcounter["loaded_copies"], 1);
    assert_eq!(libcounter["sha256"].as_str().map(str::len), Some(64));
    let loaded_from = libcounter["loaded_from"].as_str().expect("loaded_from");
    assert!(
        loaded_from.starts_with(host.persistence.to_str().expect("utf-8")),
        "{loaded_from}"
    );
}

#[test]
fn paglets_are_created_messaged_inspected_and_disposed() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let created = host.post(
        "/paglets",
        &json!({"class": "counter::Counter", "id": "c.1", "state": {"count": 40}}),
    );
    assert_eq!(
        (created.status, created.json.clone()),
        (201, json!({"id": "c.1", "class": "counter::Counter"}))
    );
    assert_eq!(
        host.send("c.1", "increment", json!({"by": 2})).json,
        json!({"reply": {"count": 42}})
    );
    assert_eq!(
        host.send("c.1", "get", Value::Null).json,
        json!({"reply": {"count": 42}})
    );
    let detail = host.get("/paglets/c.1").json;
    assert_eq!(detail["state"], json!({"count": 42}));
    assert_eq!(detail["busy"], false);
    assert_eq!(detail["generation"], 0);
    let list = host.get("/paglets").json;
    assert_eq!(list[0]["id"], "c.1");
    assert_eq!(list[0]["messages_handled"], 2);
    // A generated id, and the hello paglet talking to another one through the host.
    let echo = host.create("hello::Echo", json!({}));
    let hello = host.create("hello::Hello", json!({}));
    let forwarded = host.send(
        &hello,
        "forward",
        json!({"to": echo, "kind": "echo", "args": {"x": 1}}),
    );
    assert_eq!(forwarded.status, 200, "{:?}", forwarded.json);
    assert_eq!(forwarded.json["reply"]["reply"], json!({"x": 1}));
    let cycle = host.send(&hello, "forward", json!({"to": hello, "kind": "echo"}));
    assert_eq!((cycle.status, error_code(&cycle)), (409, "deadlock"));
    assert!(
        cycle.json["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("{hello} -> {hello}")),
        "{:?}",
        cycle.json
    );
    let spawned = host.send(
        &hello,
        "spawn",
        json!({"class": "counter::Counter", "id": "child"}),
    );
    assert_eq!(spawned.status, 200, "{:?}", spawned.json);
    assert_eq!(host.get("/paglets/child").status, 200);
    // Logs from inside a paglet reach the host's log, tagged with the instance.
    host.send(&hello, "greet", json!({"name": "e2e"}));
    paglets_e2e::wait_for("the paglet's log line", || {
        host.log()
            .contains(&format!("paglet=\"{hello}\""))
            .then_some(())
    });
    assert_eq!(host.delete("/paglets/c.1").status, 204);
    assert_eq!(host.get("/paglets/c.1").status, 404);
    assert_eq!(
        error_code(&host.send("c.1", "get", Value::Null)),
        "not-found"
    );
}

#[test]
fn bad_requests_get_the_contract_error_shapes() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &["--max-body", "4096"]);
    let id = host.create("counter::Counter", json!({}));
    let messages = format!("/paglets/{id}/messages");
    let check = |method: &str, path: &str, body: Option<&str>, status: u16, code: &str| {
        let answer = host.request(method, path, body, None);
        assert_eq!(
            (answer.status, error_code(&answer)),
            (status, code),
            "{method} {path} {:?} answered {:?}",
            body.map(|b| b.chars().take(80).collect::<String>()),
            answer.json
        );
        let message = answer.json["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{method} {path}: no message");
    };
    let bad = |body: &str| check("POST", "/paglets", Some(body), 400, "bad-request");
    bad("{not json");
    bad("{}");
    bad(r#"{"class":"counter::Counter","colour":1}"#);
    bad(r#"{"class":"counter::Counter","state":[1]}"#);
    bad(r#"{"class":"counter::Counter","id":"bad id!"}"#);
    let duplicate = format!(r#"{{"class":"counter::Counter","id":"{id}"}}"#);
    check("POST", "/paglets", Some(&duplicate), 409, "conflict");
    check(
        "POST",
        "/paglets",
        Some(r#"{"class":"nope::Nope"}"#),
        404,
        "not-found",
    );
    check("GET", "/paglets/ghost", None, 404, "not-found");
    check("DELETE", "/paglets/ghost", None, 404, "not-found");
    check("GET", "/no/such/route", None, 404, "not-found");
    check(
        "POST",
        &messages,
        Some(r#"{"kind":"fly"}"#),
        422,
        "not-handled",
    );
    let negative = r#"{"kind":"increment","args":{"by":-1}}"#;
    check("POST", &messages, Some(negative), 400, "invalid-args");
    check(
        "POST",
        &messages,
        Some(r#"{"args":{}}"#),
        400,
        "bad-request",
    );
    let huge = format!(r#"{{"kind":"{}"}}"#, "x".repeat(8000));
    check("POST", &messages, Some(&huge), 413, "payload-too-large");
    for target in ["xyz", "abc"] {
        let body = format!(r#"{{"target_hash":"{target}"}}"#);
        check("POST", "/admin/git-update", Some(&body), 400, "bad-request");
    }
    // Still serving, state untouched.
    assert_eq!(
        host.send(&id, "get", Value::Null).json,
        json!({"reply": {"count": 0}})
    );
    let update = host.post("/admin/git-update", &json!({"target_hash": "abcd1234"}));
    assert_eq!(
        (update.status, update.json["status"].clone()),
        (200, json!("disabled"))
    );
}

#[test]
fn a_panicking_handler_is_a_500_and_the_instance_keeps_working() {
    let plugins = PluginDir::with_examples();
    plugins.add(&fixture("panicky"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("panicky::Panicky", json!({}));
    let answer = host.send(&id, "panic", Value::Null);
    assert_eq!(
        (answer.status, error_code(&answer)),
        (500, "paglet-panicked"),
        "{:?}",
        answer.json
    );
    let message = answer.json["error"]["message"].as_str().expect("message");
    assert!(message.contains("panicky::Panicky"), "{message}");
    let again = host.send(&id, "hello", Value::Null);
    assert_eq!(again.status, 200, "{:?}\n{}", again.json, host.log());
    assert_eq!(host.get("/health").status, 200);
    // A panic in the creation hook refuses the creation and nothing else.
    let refused = host.post(
        "/paglets",
        &json!({"class": "panicky::Panicky", "state": {"panic_in": "created"}}),
    );
    assert_eq!(
        (refused.status, error_code(&refused)),
        (500, "paglet-panicked")
    );
    let disposed = host.post(
        "/paglets",
        &json!({"class": "panicky::Panicky", "id": "d", "state": {"panic_in": "disposing"}}),
    );
    assert_eq!(disposed.status, 201);
    assert_eq!(host.delete("/paglets/d").status, 500);
    assert_eq!(host.get("/paglets/d").status, 404);
    assert_eq!(host.get("/health").status, 200);
}

#[test]
fn with_an_api_key_every_route_needs_the_bearer() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(
        &[plugins.path()],
        &[],
        persistence.path(),
        &[("PAGLETS_API_KEY", "s3cret")],
    );
    assert_eq!(host.get("/health").status, 200);
    for key in ["wrong", ""] {
        for (method, path) in [
            ("GET", "/health"),
            ("GET", "/paglets"),
            ("POST", "/paglets"),
            ("GET", "/nowhere"),
        ] {
            let mut request = reqwest::blocking::Client::new().request(
                method.parse().expect("method"),
                format!("{}{path}", host.url),
            );
            if !key.is_empty() {
                request = request.bearer_auth(key);
            }
            let response = request
                .body("{\"class\":\"counter::Counter\"}")
                .send()
                .expect("send");
            assert_eq!(
                response.status().as_u16(),
                401,
                "{method} {path} with key {key:?}"
            );
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer")
            );
            let body: Value = response.json().expect("json");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // Nothing was created by the refused requests.
    assert_eq!(host.get("/paglets").json, json!([]));
}

#[test]
fn a_fast_paglet_waiting_for_a_busy_one_does_not_stall_the_api() {
    let plugins = PluginDir::with_examples();
    let host = std::sync::Arc::new(TestHost::start(&[plugins.path()], &[]));
    let hello = host.create("hello::Hello", json!({}));
    // Enough quick messages for the host to run hello's handlers on its HTTP workers.
    for _ in 0..20 {
        assert_eq!(host.send(&hello, "echo", json!({})).status, 200);
    }
    let pi = host.create("pi::Pi", json!({}));
    let busy = paglets_e2e::keep_busy(&host, &pi);
    let forward = {
        let (host, hello, pi) = (host.clone(), hello.clone(), pi.clone());
        std::thread::spawn(move || {
            host.send(
                &hello,
                "forward",
                json!({"to": pi, "kind": "digits", "args": {"n": 3}}),
            )
        })
    };
    // While hello waits for pi, the API keeps answering.
    for _ in 0..20 {
        assert_eq!(host.get("/health").status, 200);
        assert_eq!(host.get(&format!("/paglets/{pi}")).status, 200);
    }
    assert_eq!(busy.join().expect("pi sender").status, 200);
    let forwarded = forward.join().expect("forward sender");
    assert_eq!(
        forwarded.json["reply"]["reply"]["digits"], "3.141",
        "{:?}",
        forwarded.json
    );
}
