//! Mesh helpers: hosts with short SWIM periods (loopback timing), reading `/mesh/hosts`,
//! signals, raw membership packets, and polling with a deadline generous enough for a
//! loaded machine.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{PluginDir, TestHost};

/// SWIM probe period for tests: suspicion lasts four periods (1.2 s).
pub const PROBE_MS: &str = "300";

/// How long a mesh change may take in a test before it counts as lost. SWIM on a loaded
/// two-core machine with a dozen processes can be slow; the figures are in the book.
pub const MESH_DEADLINE: Duration = Duration::from_secs(60);

/// Starts a host named `name` over an empty plugin folder, joining through `peers`, with
/// `env` (e.g. the API key) and extra `args`.
pub fn start(name: &str, peers: &[&str], env: &[(&str, &str)], args: &[&str]) -> TestHost {
    let plugins = PluginDir::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let host = start_in(name, plugins.path(), dir.path(), peers, env, args);
    host.keep(plugins, dir)
}

/// Starts a host named `name` scanning `plugins`, with `persistence` as its persistence dir.
pub fn start_in(
    name: &str,
    plugins: &Path,
    persistence: &Path,
    peers: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
) -> TestHost {
    let mut all = vec!["--name", name, "--mesh-probe-ms", PROBE_MS];
    for peer in peers {
        all.extend(["--peer", peer]);
    }
    all.extend(args);
    TestHost::start_in(&[plugins], &all, persistence, env)
}

/// `GET /mesh/hosts` → the host rows.
pub fn hosts(host: &TestHost) -> Vec<Value> {
    let answer = host.get("/mesh/hosts");
    assert_eq!(answer.status, 200, "/mesh/hosts: {:?}", answer.json);
    answer.json["hosts"].as_array().cloned().unwrap_or_default()
}

/// The row for `name` in `host`'s list.
pub fn row(host: &TestHost, name: &str) -> Option<Value> {
    hosts(host).into_iter().find(|h| h["name"] == name)
}

/// The state `host` shows for `name`.
pub fn state(host: &TestHost, name: &str) -> Option<String> {
    row(host, name).and_then(|h| h["state"].as_str().map(str::to_string))
}

/// Polls `check` until it returns `Some`, or panics naming `what` after [`MESH_DEADLINE`].
pub fn wait<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < MESH_DEADLINE,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until every host in `hosts` lists every name in `names` as `state`.
pub fn wait_all(hosts: &[&TestHost], names: &[&str], wanted: &str) {
    wait(&format!("{names:?} {wanted} on every host"), || {
        hosts
            .iter()
            .all(|h| {
                let rows = self::hosts(h);
                names
                    .iter()
                    .all(|n| rows.iter().any(|r| r["name"] == *n && r["state"] == wanted))
            })
            .then_some(())
    });
}

/// Sends `signal` to `host`'s process.
pub fn signal(host: &TestHost, signal: i32) {
    // SAFETY: `kill` on the pid of a child the host handle owns and has not reaped.
    let rc = unsafe { libc::kill(host.pid() as i32, signal) };
    assert_eq!(rc, 0, "kill {signal}");
}

/// `POST path` with raw bytes and a content type; returns the status.
pub fn post_bytes(host: &TestHost, path: &str, body: Vec<u8>, content_type: &str) -> u16 {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{}{path}", host.url))
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = &host.key {
        request = request.bearer_auth(key);
    }
    request.send().expect("post").status().as_u16()
}

/// How often `needle` occurs in `host`'s log.
pub fn log_count(host: &TestHost, needle: &str) -> usize {
    host.log().matches(needle).count()
}
