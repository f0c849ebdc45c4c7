//! Starting and stopping: usage errors, the launch config, graceful shutdown with saved
//! paglets, restore, and ownership of the persistence dir.

use std::path::Path;
use std::sync::Arc;

use paglets_e2e::{PluginDir, TestHost, host_command, wait_for};
use serde_json::{Value, json};

fn refused(args: &[&str], persistence: &Path, env: &[(&str, &str)]) -> String {
    let plugins = PluginDir::with_examples();
    let mut command = host_command(&[plugins.path()], args, persistence);
    command.env_remove("PAGLETS_API_KEY");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run");
    assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn rejected_combinations_exit_2_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    assert!(refused(&["--host", "0.0.0.0"], p, &[]).contains("not a loopback address"));
    assert!(refused(&["--property", "novalue"], p, &[]).contains("KEY=VALUE"));
    assert!(refused(&["--api-key-env", "PAGLETS_E2E_UNSET"], p, &[]).contains("PAGLETS_E2E_UNSET"));
    assert!(
        refused(&["--launch-config", "/nonexistent/launch.toml"], p, &[])
            .contains("/nonexistent/launch.toml")
    );
    let config = p.join("launch.toml");
    std::fs::write(&config, "[host]\nname = \"a\"\ncolour = \"red\"\n").expect("write");
    let stderr = refused(
        &["--launch-config", config.to_str().expect("utf-8")],
        p,
        &[],
    );
    assert!(
        stderr.contains("colour") && stderr.contains("launch.toml"),
        "{stderr}"
    );
    // Names follow the id rule: `.` would make the persistence dir another host's folder.
    for name in [".", "..", "a/b", "", &"n".repeat(129), "white space"] {
        let stderr = refused(&["--name", name], p, &[]);
        assert!(stderr.contains("--name"), "{name:?}: {stderr}");
    }
}

#[test]
fn the_launch_config_creates_startup_paglets_and_flags_win() {
    let plugins = PluginDir::with_examples();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("launch.toml");
    let text = format!(
        "[host]\nname = \"from-file\"\ntag = [\"file\"]\n[discovery]\npaths = [{:?}]\n\n[[startup]]\nclass = \"counter::Counter\"\nid = \"service.counter\"\nstate = {{ count = 7 }}\n",
        plugins.path()
    );
    std::fs::write(&config, text).expect("write");
    let host = TestHost::start(
        &[],
        &[
            "--launch-config",
            config.to_str().expect("utf-8"),
            "--name",
            "from-flag",
        ],
    );
    let health = host.get("/health").json;
    assert_eq!(
        (health["name"].clone(), health["tags"].clone()),
        (json!("from-flag"), json!(["file"]))
    );
    assert_eq!(
        host.send("service.counter", "get", Value::Null).json["reply"]["count"],
        7
    );
}

#[test]
fn sigterm_lets_the_running_handler_finish_saves_and_the_next_start_restores() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = Arc::new(TestHost::start_in(
        &[plugins.path()],
        &[],
        persistence.path(),
        &[],
    ));
    let counter = host.create("counter::Counter", json!({"count": 41}));
    host.send(&counter, "increment", Value::Null);
    let pi = host.create("pi::Pi", json!({}));
    let running = paglets_e2e::keep_busy(&host, &pi);
    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(host.pid() as i32, libc::SIGTERM) };
    let answer = running.join().expect("sender");
    assert_eq!(
        answer.status, 200,
        "the running handler finished: {:?}",
        answer.json
    );
    let host = Arc::try_unwrap(host).unwrap_or_else(|_| panic!("the host is still shared"));
    let status = host.stop();
    assert_eq!(status.code(), Some(0));
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(
        again.send(&counter, "get", Value::Null).json["reply"]["count"],
        42
    );
    assert_eq!(again.get(&format!("/paglets/{pi}")).status, 200);
}

#[test]
fn one_host_owns_a_persistence_dir() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let first = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    let output = host_command(&[plugins.path()], &["--name", "second"], persistence.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert_eq!(first.get("/health").status, 200);
}

#[test]
fn new_requests_during_shutdown_get_503() {
    let plugins = PluginDir::with_examples();
    let host = Arc::new(TestHost::start(
        &[plugins.path()],
        &["--shutdown-grace", "20"],
    ));
    let pi = host.create("pi::Pi", json!({}));
    let running = paglets_e2e::keep_busy(&host, &pi);
    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(host.pid() as i32, libc::SIGTERM) };
    let answer = wait_for("a 503", || {
        let answer = host.get("/paglets");
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(answer.json["error"]["code"], "shutting-down");
    assert_eq!(running.join().expect("sender").status, 200);
}

#[test]
fn a_saved_paglet_whose_class_is_missing_stays_on_disk() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let saved = json!([
        {"id": "lost.one", "class": "gone::Gone", "state": {"kept": [1, 2, 3]}},
        {"id": "kept.counter", "class": "counter::Counter", "state": {"count": 9}},
    ]);
    std::fs::write(persistence.path().join("paglets.json"), saved.to_string())
        .expect("write paglets.json");
    let host = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(
        host.send("kept.counter", "get", Value::Null).json["reply"]["count"],
        9
    );
    assert_eq!(host.get("/paglets/lost.one").status, 404);
    wait_for("the lost paglet in the log", || {
        let log = host.log();
        (log.contains("lost.one") && log.contains("gone::Gone") && log.contains("not restored"))
            .then_some(())
    });
    assert_eq!(host.stop().code(), Some(0));
    // Still stored: it comes back (still waiting) and still holds its id.
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(
        again.send("kept.counter", "get", Value::Null).json["reply"]["count"],
        9
    );
    let taken = again.post(
        "/paglets",
        &json!({"class": "counter::Counter", "id": "lost.one"}),
    );
    assert_eq!(taken.status, 409, "{:?}", taken.json);
}

#[test]
fn a_start_prunes_only_the_copies_it_made() {
    let persistence = tempfile::tempdir().expect("temp dir");
    let libs = persistence.path().join("libs");
    std::fs::create_dir_all(&libs).expect("mkdir libs");
    let stale = libs.join("libcounter-0123456789abcdef.so");
    std::fs::write(&stale, b"a copy an earlier run left").expect("write");
    let foreign = libs.join("notes.txt");
    std::fs::write(&foreign, b"not a copy").expect("write");
    let plugins = PluginDir::new();
    plugins.add(&paglets_e2e::example("counter"));
    let host = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert!(!stale.exists(), "the old copy is pruned");
    assert!(foreign.is_file(), "a file the host did not make stays");
    assert_eq!(host.stop().code(), Some(0));
}
