//! State evolution across real reloads: each test starts a host on one version of the
//! `evolve` library (`tests/fixtures/evolve-*`), creates a paglet, swaps the file for another
//! version and rescans. Also the author-surface answers over HTTP (`tests/fixtures/todo`).

use std::path::PathBuf;

use paglets_e2e::{PluginDir, TestHost, example, fixture, wait_for};
use serde_json::{Value, json};

const NOTE: &str = "evolve::Note";

/// A host serving `version` of the evolve library as `libevolve.so`, with one note `n`.
fn host_with_note(version: &str, state: Value) -> (TestHost, PluginDir, PathBuf) {
    let plugins = PluginDir::new();
    let file = plugins.add_as(&fixture(version), "libevolve.so");
    let host = TestHost::start(&[plugins.path()], &[]);
    let answer = host.post(
        "/paglets",
        &json!({"class": NOTE, "id": "n", "state": state}),
    );
    assert_eq!(answer.status, 201, "{:?}", answer.json);
    (host, plugins, file)
}

/// Replaces the library with `version` and rescans; returns the rescan reply.
fn swap_to(host: &TestHost, plugins: &PluginDir, version: &str) -> Value {
    plugins.add_as(&fixture(version), "libevolve.so");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.status, 200, "{:?}", rescan.json);
    assert_eq!(rescan.json["reloaded"].as_array().map(Vec::len), Some(1));
    rescan.json
}

fn state(host: &TestHost) -> Value {
    host.get("/paglets/n").json["state"].clone()
}

fn v1_state() -> Value {
    json!({"title": "t", "body": {"text": "hello"}, "extra": 7})
}

#[test]
fn a_rename_with_an_alias_and_a_nested_field_without_default_migrate() {
    let (host, plugins, _) = host_with_note("evolve-v1", v1_state());
    let rescan = swap_to(&host, &plugins, "evolve-alias");
    assert_eq!(rescan["migrated"], json!(["n"]), "{rescan}");
    assert_eq!(
        state(&host),
        json!({"name": "t", "body": {"text": "hello", "words": 0}, "extra": 7})
    );
}

#[test]
fn new_code_that_would_drop_a_key_holds_the_paglet_and_names_the_key() {
    let (host, plugins, _) = host_with_note("evolve-v1", v1_state());
    let rescan = swap_to(&host, &plugins, "evolve-drop");
    assert_eq!(
        rescan["held"],
        json!([{"id": "n", "keys": ["extra"]}]),
        "{rescan}"
    );
    assert_eq!(rescan["migrated"], json!([]));
    assert_eq!(rescan["migration_failed"], json!([]));
    // Still on its old code, with the key.
    assert_eq!(state(&host), v1_state());
    let libraries = host.get("/libraries").json;
    let errors = libraries[0]["migration_errors"].to_string();
    assert!(
        errors.contains("n:") && errors.contains("extra"),
        "{libraries}"
    );
    // The line is logged before the rescan answers; the harness reads the host's stderr on
    // its own thread, a moment later.
    wait_for("the log to name the held paglet and the key", || {
        host.log()
            .lines()
            .any(|l| l.contains("stays on its old code") && l.contains("extra") && l.contains('n'))
            .then_some(())
    });
}

#[test]
fn a_new_state_version_runs_the_upgrade() {
    let (host, plugins, _) = host_with_note("evolve-v1", v1_state());
    assert_eq!(host.get("/classes").json[0]["state_version"], 1);
    let rescan = swap_to(&host, &plugins, "evolve-v2");
    assert_eq!(host.get("/classes").json[0]["state_version"], 2);
    assert_eq!(rescan["migrated"], json!(["n"]), "{rescan}");
    assert_eq!(
        state(&host),
        json!({"name": "t", "body": {"text": "hello"}, "extras": [7]})
    );
}

#[test]
fn a_state_from_a_newer_version_is_not_moved_to_older_code() {
    let state_v2 = json!({"name": "t", "body": {"text": "x"}, "extras": [1]});
    let (host, plugins, _) = host_with_note("evolve-v2", state_v2.clone());
    let rescan = swap_to(&host, &plugins, "evolve-v1");
    let failed = &rescan["migration_failed"];
    assert_eq!(failed[0]["id"], "n", "{rescan}");
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("state version 2 is newer than this code's state version 1"),
        "{error}"
    );
    assert_eq!(state(&host), state_v2);
}

#[test]
fn creating_with_a_state_the_class_would_drop_is_refused_with_the_keys() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let answer = host.post(
        "/paglets",
        &json!({"class": "counter::Counter", "state": {"count": 1, "cuont": 2}}),
    );
    assert_eq!(answer.status, 400, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "invalid-args");
    let message = answer.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cuont"), "{message}");
    // A partial state still takes the defaults of the rest.
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.get(&format!("/paglets/{id}")).json["state"],
        json!({"count": 0})
    );
}

#[test]
fn the_author_error_kinds_have_their_http_answers() {
    let plugins = PluginDir::new();
    plugins.add(&fixture("todo"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("todo::Todo", json!({}));
    let added = host.send(&id, "add", json!({"text": "milk"}));
    assert_eq!((added.status, &added.json["reply"]), (200, &json!(1)));
    let done = host.send(&id, "done", json!({"id": 42}));
    assert_eq!(done.status, 404, "{:?}", done.json);
    assert_eq!(
        done.json["error"],
        json!({"code": "not-found", "message": "no item with id 42"})
    );
    let bad = host.send(&id, "done", json!({"id": "x"}));
    assert_eq!(bad.status, 400, "{:?}", bad.json);
    assert_eq!(bad.json["error"]["code"], "invalid-args");
    let message = bad.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("done args: invalid type") && !message.contains("invalid arguments"),
        "{message}"
    );
    let fly = host.send(&id, "fly", Value::Null);
    assert_eq!(fly.status, 422, "{:?}", fly.json);
    assert_eq!(fly.json["error"]["code"], "not-handled");
    let list = host.send(&id, "list", Value::Null);
    assert_eq!(list.json["reply"][0]["text"], "milk", "{:?}", list.json);
    wait_for("the paglet's log line", || {
        host.log().contains("added item 1").then_some(())
    });
}

#[test]
fn a_stored_state_is_upgraded_when_the_host_starts_on_newer_code() {
    let persistence = tempfile::tempdir().expect("temp dir");
    let plugins = PluginDir::new();
    plugins.add_as(&fixture("evolve-v1"), "libevolve.so");
    let first = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    let answer = first.post(
        "/paglets",
        &json!({"class": NOTE, "id": "n", "state": v1_state()}),
    );
    assert_eq!(answer.status, 201, "{:?}", answer.json);
    assert!(first.stop().success());
    // While the host is down, the library moves to state version 2.
    plugins.add_as(&fixture("evolve-v2"), "libevolve.so");
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(
        state(&again),
        json!({"name": "t", "body": {"text": "hello"}, "extras": [7]})
    );
}
