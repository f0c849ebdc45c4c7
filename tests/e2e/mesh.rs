//! The mesh: real hosts on 127.0.0.1 finding each other through seeds, failure detection,
//! graceful leaving, keys, and what a peer may send.

use std::io::{Read, Write};

use paglets_e2e::mesh::{
    log_count, post_bytes, row, signal, start, start_in, state, wait, wait_all,
};
use paglets_e2e::{PluginDir, TestHost};
use serde_json::json;

fn names(host: &TestHost) -> Vec<String> {
    paglets_e2e::mesh::hosts(host)
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn three_hosts_where_each_knows_one_other_all_list_all_three_with_their_tags() {
    let a = start("a", &[], &[], &[]);
    let b = start("b", &[&a.url], &[], &[]);
    let c = start(
        "c",
        &[&b.url],
        &[],
        &["--tag", " GPU", "--property", "room=7"],
    );
    wait_all(&[&a, &b, &c], &["a", "b", "c"], "alive");

    let me = row(&a, "a").expect("a lists itself");
    assert_eq!(me["self"], true);
    let c_on_a = wait("c's tags on a", || {
        row(&a, "c").filter(|r| r["tags"] == json!(["gpu"]))
    });
    assert_eq!(c_on_a["self"], false);
    assert_eq!(c_on_a["url"], json!(c.url));
    assert_eq!(c_on_a["properties"], json!({"room": "7"}));
    assert_eq!(
        c_on_a["compatible"], true,
        "same (empty) libraries: {c_on_a:?}"
    );
    let health = a.get("/health").json;
    assert_eq!(
        health["mesh"]["enabled"], true,
        "mesh in /health: {health:?}"
    );
    assert_eq!(health["mesh"]["alive"], 2, "{health:?}");

    let table = paglets_e2e::paglets(&["mesh", "--host", &a.url]);
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "URL",
        "STATE",
        "COMPATIBLE",
        "CODE VERSION",
        "TAGS",
        "LAST SEEN",
    ] {
        assert!(header.contains(column), "{column} in {text}");
    }
    assert!(text.contains("a (self)") && text.contains(&c.url), "{text}");
    let json = paglets_e2e::paglets(&["mesh", "--json", "--host", &a.url]);
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        listed["hosts"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
}

#[test]
fn a_changed_code_version_reaches_every_host_and_makes_it_incompatible() {
    let a = start("a", &[], &[], &[]);
    let plugins = PluginDir::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let b = start_in("b", plugins.path(), dir.path(), &[&a.url], &[], &[]);
    wait_all(&[&a, &b], &["a", "b"], "alive");
    wait("b compatible on a", || {
        (row(&a, "b")?["compatible"] == true).then_some(())
    });
    plugins.add(&paglets_e2e::example("counter"));
    assert_eq!(b.post("/admin/rescan", &json!({})).status, 200);
    let code = b.get("/health").json["code_version"].clone();
    let seen = wait("b's new code version on a", || {
        row(&a, "b").filter(|r| r["code_version"] == code)
    });
    assert_eq!(seen["compatible"], false, "{seen:?}");
    assert_eq!(seen["paglets"], 0);
}

#[test]
fn a_killed_host_is_suspect_then_down_and_its_restart_under_the_name_is_one_entry_with_the_new_url()
{
    let a = start("a", &[], &[], &[]);
    let b = start("b", &[&a.url], &[], &[]);
    let c = start("c", &[&a.url], &[], &[]);
    wait_all(&[&a, &b, &c], &["a", "b", "c"], "alive");
    let before = row(&a, "c").expect("c on a");

    signal(&c, libc::SIGKILL);
    let mut saw_suspect = false;
    wait("c down on a and b", || {
        let states = [state(&a, "c"), state(&b, "c")];
        saw_suspect |= states.iter().any(|s| s.as_deref() == Some("suspect"));
        states
            .iter()
            .all(|s| s.as_deref() == Some("down"))
            .then_some(())
    });
    assert!(saw_suspect, "c went through suspect before down");
    drop(c);

    let c = start("c", &[&b.url], &[], &[]);
    wait_all(&[&a, &b, &c], &["a", "b", "c"], "alive");
    for host in [&a, &b] {
        let rows: Vec<_> = paglets_e2e::mesh::hosts(host)
            .into_iter()
            .filter(|r| r["name"] == "c")
            .collect();
        assert_eq!(rows.len(), 1, "one entry for c: {rows:?}");
        assert_eq!(rows[0]["url"], json!(c.url), "the new URL");
        assert_ne!(rows[0]["url"], before["url"], "another port");
        assert!(
            rows[0]["generation"].as_u64() > before["generation"].as_u64(),
            "a new incarnation: {rows:?} after {before:?}"
        );
    }
}

#[test]
fn a_frozen_host_is_declared_down_and_after_waking_is_alive_again_without_a_restart() {
    let a = start("a", &[], &[], &[]);
    let b = start("b", &[&a.url], &[], &[]);
    wait_all(&[&a, &b], &["a", "b"], "alive");
    let pid = b.pid();

    signal(&b, libc::SIGSTOP);
    wait("b down on a", || (state(&a, "b")? == "down").then_some(()));
    signal(&b, libc::SIGCONT);
    wait_all(&[&a, &b], &["a", "b"], "alive");
    assert_eq!(b.pid(), pid, "the same process");
    let row = row(&a, "b").expect("b on a");
    assert_eq!(row["url"], json!(b.url));
}

#[test]
fn a_gracefully_stopped_host_is_listed_as_left_at_once() {
    let a = start("a", &[], &[], &[]);
    let b = start("b", &[&a.url], &[], &[]);
    let c = start("c", &[&a.url], &[], &[]);
    wait_all(&[&a, &b, &c], &["a", "b", "c"], "alive");

    assert_eq!(c.stop().code(), Some(0));
    // Without the leave notice, c would go suspect and then down (four probe periods later);
    // with it, c is left at once. (A moment of suspect on a loaded machine proves nothing.)
    for host in [&a, &b] {
        let first = wait("c left or down", || {
            state(host, "c").filter(|s| s == "left" || s == "down")
        });
        assert_eq!(first, "left", "left, never down first");
    }
    let health = a.get("/health").json;
    assert_eq!(health["mesh"]["alive"], 1, "{health:?}");
}

#[test]
fn hosts_with_another_key_or_none_never_join_and_are_logged_once() {
    let keyed = [("PAGLETS_API_KEY", "k1")];
    let a = start("a", &[], &keyed, &[]);
    let stranger = start("stranger", &[&a.url], &[("PAGLETS_API_KEY", "k2")], &[]);
    let keyless = start("keyless", &[&a.url], &[], &[]);
    // The control: a host with the right key joins in the same time.
    let b = start("b", &[&a.url], &keyed, &[]);
    wait_all(&[&a, &b], &["a", "b"], "alive");
    for host in [&stranger, &keyless] {
        wait("the seed's refusal in the log", || {
            (log_count(host, "refused our API key") >= 1).then_some(())
        });
        // Several more announcement rounds (one every 1.5 s here) after the first refusal.
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert_eq!(log_count(host, "refused our API key"), 1, "{}", host.log());
        assert_eq!(names(host).len(), 1, "it lists only itself");
    }
    assert_eq!(names(&a), ["a", "b"]);
    assert_eq!(names(&b), ["b", "a"]);
    assert_eq!(
        log_count(&a, "refused a mesh request"),
        1,
        "logged once: {}",
        a.log()
    );
    // The mesh routes themselves want the key.
    for path in ["/mesh/hosts", "/mesh/identity"] {
        assert_eq!(a.request("GET", path, None, Some("k2")).status, 401);
    }
}

/// A plain HTTP server that is not a paglets host: every request gets `200 hello`.
fn not_a_paglets_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    url
}

#[test]
fn a_seed_that_is_not_a_paglets_host_is_logged_and_ignored() {
    let other = not_a_paglets_host();
    let a = start("a", &[&other], &[], &[]);
    wait("the refusal in the log", || {
        a.log().contains("not a paglets host").then_some(())
    });
    assert_eq!(names(&a), ["a"]);
    assert_eq!(a.get("/health").status, 200);
}

#[test]
fn a_seed_that_is_down_at_start_is_joined_when_it_comes_up() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").port()
    };
    let seed_url = format!("http://127.0.0.1:{port}");
    let b = start("b", &[&seed_url], &[], &[]);
    wait("b to notice the seed is down", || {
        b.log().contains("not reachable").then_some(())
    });
    assert_eq!(names(&b), ["b"]);
    let port = port.to_string();
    let a = start("a", &[], &[], &["--port", &port]);
    assert_eq!(a.url, seed_url);
    wait_all(&[&a, &b], &["a", "b"], "alive");
}

#[test]
fn garbage_and_oversized_membership_packets_are_refused_and_the_host_keeps_serving() {
    let a = start("a", &[], &[], &[]);
    let b = start("b", &[&a.url], &[], &[]);
    wait_all(&[&a, &b], &["a", "b"], "alive");
    let octets = "application/octet-stream";
    for (what, body, status) in [
        ("empty", vec![], 400),
        (
            "garbage",
            b"\x01\x00\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            400,
        ),
        ("another wire version", vec![99, 0, 1, 2, 3], 400),
        ("an unknown kind", vec![1, 77], 400),
        ("oversized", vec![1u8; 100 * 1024], 413),
    ] {
        assert_eq!(post_bytes(&a, "/mesh/swim", body, octets), status, "{what}");
    }
    assert!(a.log().contains("wire version 99"), "{}", a.log());
    assert_eq!(a.get("/health").status, 200);
    wait_all(&[&a, &b], &["a", "b"], "alive");
}

#[test]
fn without_the_mesh_a_host_lists_only_itself() {
    let a = start("a", &[], &[], &[]);
    let solo = start("solo", &[&a.url], &[], &["--no-mesh"]);
    let rows = paglets_e2e::mesh::hosts(&solo);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["name"].clone(), rows[0]["self"].clone()),
        (json!("solo"), json!(true))
    );
    assert_eq!(solo.get("/health").json["mesh"]["enabled"], false);
    // Nothing to wait for: long enough for several announcement rounds (1.5 s apart here) of
    // a meshed host, which would have joined a by then.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(names(&a), ["a"]);
}
