//! The client commands against a real host: tables, JSON, and failures.

use paglets_e2e::{PluginDir, TestHost, paglets};
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
fn an_unreachable_host_is_exit_1_with_a_clear_message() {
    // A port that was free a moment ago: bind, read the port, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let output = paglets(&["list", "--host", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach the host"),
        "{output:?}"
    );
}
