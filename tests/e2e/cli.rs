//! The client commands against a real host: tables, JSON, and failures.

use paglets_e2e::{PluginDir, TestHost, paglets, paglets_with_env};
use serde_json::Value;

fn ok(args: &[&str]) -> String {
    let output = paglets(args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn create_send_list_dispose_and_health_from_the_command_line() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let url = host.url.as_str();
    let id = ok(&[
        "create",
        "counter::Counter",
        "--state",
        "{\"count\":1}",
        "--host",
        url,
    ])
    .trim()
    .to_string();
    assert!(id.starts_with("counter-"), "{id}");
    let reply: Value = serde_json::from_str(&ok(&[
        "send",
        &id,
        "increment",
        "--args",
        "{\"by\":2}",
        "--host",
        url,
        "--json",
    ]))
    .expect("json");
    assert_eq!(reply["reply"]["count"], 3);
    let table = ok(&["list", "--host", url]);
    assert!(
        table.starts_with("ID") && table.contains(&id) && table.contains("counter::Counter"),
        "{table}"
    );
    let classes = ok(&["classes", "--host", url]);
    assert!(classes.contains("hello::Echo"), "{classes}");
    let health: Value =
        serde_json::from_str(&ok(&["health", "--host", url, "--json"])).expect("json");
    assert_eq!(health["paglets"], 1);
    assert!(ok(&["dispose", &id, "--host", url]).contains(&id));
    let gone = paglets(&["send", &id, "get", "--host", url]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("404 not-found"),
        "{gone:?}"
    );
    let bad = paglets(&["send", "x", "get", "--args", "{oops", "--host", url]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn an_unreachable_host_is_exit_1_naming_the_url_and_how_to_pick_another() {
    // A port that was free a moment ago: bind, read the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for output in [
        paglets(&["list", "--host", &url]),
        paglets_with_env(&["list"], &[("PAGLETS_HOST", &url)]),
    ] {
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot reach the host")
                && stderr.contains(&url)
                && stderr.contains("--host")
                && stderr.contains("PAGLETS_HOST"),
            "{stderr}"
        );
    }
}

#[test]
fn the_host_comes_from_paglets_host_and_may_omit_the_scheme() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let bare = host.authority();
    for output in [
        paglets(&["classes", "--host", bare]),
        paglets_with_env(&["classes"], &[("PAGLETS_HOST", bare)]),
        paglets_with_env(&["classes"], &[("PAGLETS_HOST", &host.url)]),
        // The flag wins over the variable.
        paglets_with_env(
            &["classes", "--host", &host.url],
            &[("PAGLETS_HOST", "http://127.0.0.1:9")],
        ),
    ] {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("counter::Counter"),
            "{output:?}"
        );
    }
}

#[test]
fn ids_travel_percent_encoded_so_a_path_in_an_id_reaches_nothing_else() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let url = host.url.as_str();
    ok(&["create", "counter::Counter", "--id", "foo", "--host", url]);
    for id in ["../paglets/foo", "x/../foo", "foo?x=1", "foo#x"] {
        let output = paglets(&["dispose", id, "--host", url]);
        assert_eq!(output.status.code(), Some(1), "{id}: {output:?}");
        let output = paglets(&["send", id, "get", "--host", url]);
        assert_eq!(output.status.code(), Some(1), "{id}: {output:?}");
    }
    for id in [".", ".."] {
        let output = paglets(&["dispose", id, "--host", url]);
        assert_eq!(output.status.code(), Some(2), "{id}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("invalid paglet id"),
            "{output:?}"
        );
    }
    assert_eq!(host.get("/paglets/foo").status, 200, "foo was reached");
    assert!(ok(&["dispose", "foo", "--host", url]).contains("foo"));
}

#[test]
fn timeout_bounds_the_wait_for_an_answer() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let url = host.url.as_str();
    let id = ok(&["create", "pi::Pi", "--host", url]).trim().to_string();
    let output = paglets(&[
        "send",
        &id,
        "digits",
        "--args",
        "{\"n\":100000}",
        "--timeout",
        "1",
        "--host",
        url,
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no answer from") && stderr.contains("--timeout"),
        "{stderr}"
    );
}
