//! The client commands against a real host: tables, JSON, and failures.

use paglets_e2e::redirect::Redirector;
use paglets_e2e::{PluginDir, TestHost, mesh, paglets, paglets_with_env};
use serde_json::{Value, json};

fn ok(args: &[&str]) -> String {
    ok_with_env(args, &[])
}

fn ok_with_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = paglets_with_env(args, env);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn ok_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(&all)).expect("json")
}

/// The `status` column of `id`'s row in a `paglets list` table, if it has a row.
fn status_in(table: &str, id: &str) -> Option<String> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = header.iter().position(|c| *c == "STATUS")?;
    lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
        .and_then(|cells| cells.get(column).map(|c| c.to_string()))
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
fn an_https_host_is_refused_with_the_reason() {
    let output = paglets(&["health", "--host", "https://127.0.0.1:9"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain HTTP"), "{stderr}");
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

#[test]
fn deactivate_activate_and_list_by_status_from_the_command_line() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let url = host.url.as_str();
    ok(&[
        "create",
        "counter::Counter",
        "--id",
        "c1",
        "--state",
        "{\"count\":4}",
        "--host",
        url,
    ]);
    let table = ok(&["list", "--host", url]);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        status_in(&table, "c1").as_deref(),
        Some("active"),
        "{table}"
    );

    assert_eq!(ok(&["deactivate", "c1", "--host", url]), "deactivated c1\n");
    let active = ok(&["list", "--host", url]);
    assert_eq!(status_in(&active, "c1"), None, "{active}");
    let inactive = ok(&["list", "--status", "inactive", "--host", url]);
    assert_eq!(
        status_in(&inactive, "c1").as_deref(),
        Some("inactive"),
        "{inactive}"
    );
    let all = ok_json(&["list", "--status", "all", "--host", url]);
    let rows = all.as_array().expect("a list");
    assert_eq!(rows.len(), 1, "{all}");
    assert_eq!(rows[0]["id"], "c1");
    assert_eq!(rows[0]["status"], "inactive");
    assert_eq!(
        ok_json(&["list", "--status", "quarantined", "--host", url]),
        json!([])
    );

    assert_eq!(
        ok_json(&["activate", "c1", "--host", url]),
        json!({"id": "c1", "status": "active"})
    );
    let inactive = ok(&["list", "--status", "inactive", "--host", url]);
    assert_eq!(status_in(&inactive, "c1"), None, "{inactive}");
    assert_eq!(
        ok_json(&["send", "c1", "get", "--host", url])["reply"],
        json!({"count": 4})
    );

    // A message wakes an inactive paglet too, with its state.
    assert_eq!(
        ok_json(&["deactivate", "c1", "--host", url]),
        json!({"id": "c1", "status": "inactive"})
    );
    assert_eq!(
        ok_json(&["send", "c1", "increment", "--host", url])["reply"],
        json!({"count": 5})
    );
    let table = ok(&["list", "--host", url]);
    assert_eq!(
        status_in(&table, "c1").as_deref(),
        Some("active"),
        "{table}"
    );

    let missing = paglets(&["deactivate", "nobody", "--host", url]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404 not-found"),
        "{missing:?}"
    );
    let bad = paglets(&["list", "--status", "sleeping", "--host", url]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn a_oneway_send_prints_its_message_id_and_is_handled_in_order() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &[]);
    let url = host.url.as_str();
    ok(&["create", "counter::Counter", "--id", "c1", "--host", url]);
    let first = ok(&["send", "c1", "increment", "--oneway", "--host", url]);
    let first = first.trim();
    assert!(
        !first.is_empty() && !first.contains(char::is_whitespace) && !first.starts_with('{'),
        "one message id on one line: {first:?}"
    );
    let second = ok_json(&[
        "send",
        "c1",
        "increment",
        "--args",
        "{\"by\":2}",
        "--oneway",
        "--host",
        url,
    ]);
    let second_id = second["message_id"].as_str().expect("a message id");
    assert_ne!(second_id, first, "{second}");
    // Queued in order with the others: a later message sees both.
    assert_eq!(
        ok_json(&["send", "c1", "get", "--host", url])["reply"],
        json!({"count": 3})
    );
    let missing = paglets(&["send", "nobody", "get", "--oneway", "--host", url]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
}

#[test]
fn the_client_follows_up_to_three_redirects_sending_the_key_again() {
    let plugins = PluginDir::with_examples();
    let key = [("PAGLETS_API_KEY", "s3cret")];
    let dir = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(&[plugins.path()], &[], dir.path(), &key);
    // Each on its own port: reqwest would drop the key on every one of these hops.
    let third = Redirector::to(&host.url);
    let second = Redirector::to(&third.url);
    let first = Redirector::to(&second.url);

    let id = ok_with_env(
        &[
            "create",
            "counter::Counter",
            "--id",
            "c1",
            "--host",
            &first.url,
        ],
        &key,
    );
    assert_eq!(id, "c1\n");
    let reply = ok_with_env(
        &[
            "send",
            "c1",
            "increment",
            "--args",
            "{\"by\":2}",
            "--host",
            &first.url,
            "--json",
        ],
        &key,
    );
    let reply: Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(reply["reply"], json!({"count": 2}));
    for redirector in [&first, &second, &third] {
        let heads = redirector.heads();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(
            heads[1].starts_with("POST /paglets/c1/messages ")
                && heads[1]
                    .to_ascii_lowercase()
                    .contains("authorization: bearer s3cret"),
            "{heads:?}"
        );
    }

    let fourth = Redirector::to(&first.url);
    let output = paglets_with_env(&["list", "--host", &fourth.url], &key);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 redirects"), "{stderr}");
    // fourth → first → second → third, whose redirect to the host is one too many.
    assert_eq!(third.heads().len(), 3, "{:?}", third.heads());
}

#[test]
fn dispatch_moves_a_paglet_and_the_client_follows_it_to_its_new_host() {
    let key = [("PAGLETS_API_KEY", "k")];
    let plugins_a = PluginDir::with_examples();
    let plugins_b = PluginDir::with_examples();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let a = mesh::start_in("lab-a", plugins_a.path(), dir_a.path(), &[], &key, &[]);
    let b = mesh::start_in(
        "lab-b",
        plugins_b.path(),
        dir_b.path(),
        &[&a.url],
        &key,
        &[],
    );
    mesh::wait_all(&[&a, &b], &["lab-a", "lab-b"], "alive");
    ok_with_env(
        &["create", "counter::Counter", "--id", "c1", "--host", &a.url],
        &key,
    );
    let moved = ok_with_env(&["dispatch", "c1", "lab-b", "--host", &a.url], &key);
    assert_eq!(moved, format!("c1 moved to lab-b ({})\n", b.url));
    // The old host answers 308; the client follows it with the key.
    let reply: Value = serde_json::from_str(&ok_with_env(
        &["send", "c1", "increment", "--host", &a.url, "--json"],
        &key,
    ))
    .expect("json");
    assert_eq!(reply["reply"], json!({"count": 1}));
    assert!(ok_with_env(&["list", "--host", &b.url], &key).contains("c1"));
    assert!(!ok_with_env(&["list", "--host", &a.url], &key).contains("c1"));

    let back = ok_with_env(&["retract", "c1", "lab-b", "--host", &a.url], &key);
    assert_eq!(
        back,
        format!("c1 retracted from lab-b to lab-a ({})\n", a.url)
    );
    let copy: Value = serde_json::from_str(&ok_with_env(
        &[
            "clone", "c1", "lab-b", "--id", "c2", "--host", &a.url, "--json",
        ],
        &key,
    ))
    .expect("json");
    assert_eq!(copy, json!({"id": "c2", "host": "lab-b", "url": b.url}));
    let reply: Value = serde_json::from_str(&ok_with_env(
        &["send", "c2", "get", "--host", &b.url, "--json"],
        &key,
    ))
    .expect("json");
    assert_eq!(reply["reply"], json!({"count": 1}));
}
