//! In-process paglets inside long handlers: the API keeps answering, a caller waits at most
//! the handler timeout (504 `handler-timeout`), the handler runs on with its paglet busy and
//! completes later, and sends between paglets are bounded by the same timeout.
//!
//! `pi::Pi`'s `digits` is the long handler: its time grows with the square of `n`. The sizes
//! below take seconds in the debug build the tests run on (and still over a second in a
//! release build).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use paglets_e2e::{PluginDir, TestHost, example, wait_for, wait_for_within};
use serde_json::{Value, json};

/// Decimals of π that keep one core busy for seconds.
const LONG: u64 = if cfg!(debug_assertions) {
    30_000
} else {
    100_000
};
/// Decimals of π that take well past a one-second handler timeout.
const PAST_ONE_SECOND: u64 = if cfg!(debug_assertions) {
    60_000
} else {
    100_000
};
/// How long a request to the API may take before the test counts it as not answered:
/// generous, since this is not a latency figure (those are in docs/src/performance.md).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long a long computation may take on a machine busy with other tests.
const COMPUTE_WITHIN: Duration = Duration::from_secs(300);

fn host_with(examples: &[&str], args: &[&str]) -> (Arc<TestHost>, PluginDir) {
    let plugins = PluginDir::new();
    for name in examples {
        plugins.add(&example(name));
    }
    let host = Arc::new(TestHost::start(&[plugins.path()], args));
    (host, plugins)
}

/// Fast messages, the kind an in-process paglet runs on the HTTP worker that got them.
fn warm_up(host: &TestHost, id: &str) {
    for _ in 0..16 {
        assert_eq!(host.send(id, "digits", json!({"n": 10})).status, 200);
    }
}

/// Sends `digits` with `n` from another thread, waiting as long as it takes.
fn compute(host: &Arc<TestHost>, id: &str, n: u64) -> std::thread::JoinHandle<paglets_e2e::Answer> {
    let (host, id) = (host.clone(), id.to_string());
    std::thread::spawn(move || host.send_waiting(&id, "digits", json!({"n": n}), COMPUTE_WITHIN))
}

fn detail(host: &TestHost, id: &str) -> Value {
    let answer = host.get(&format!("/paglets/{id}"));
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json
}

#[test]
fn the_api_answers_while_eight_warmed_up_pi_paglets_compute() {
    let (host, _plugins) = host_with(&["pi"], &["--handler-timeout", "0"]);
    let ids: Vec<String> = (0..8).map(|_| host.create("pi::Pi", json!({}))).collect();
    for id in &ids {
        warm_up(&host, id);
    }
    let jobs: Vec<_> = ids.iter().map(|id| compute(&host, id, LONG)).collect();
    let mut seen_busy = BTreeSet::new();
    let mut rounds = 0;
    while jobs.iter().any(|job| !job.is_finished()) {
        let health = host
            .get_within("/health", ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("/health did not answer while the paglets computed: {e}"));
        assert_eq!(health.status, 200, "{:?}", health.json);
        for id in &ids {
            let path = format!("/paglets/{id}");
            let answer = host
                .get_within(&path, ANSWER_WITHIN)
                .unwrap_or_else(|e| panic!("{path} did not answer while it computed: {e}"));
            assert_eq!(answer.status, 200, "{:?}", answer.json);
            if answer.json["busy"] == true {
                assert!(answer.json.get("state").is_none(), "{:?}", answer.json);
                seen_busy.insert(id.clone());
            }
        }
        rounds += 1;
    }
    for job in jobs {
        let answer = job.join().expect("client");
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        assert_eq!(answer.json["reply"]["n"], LONG);
    }
    assert_eq!(
        seen_busy.len(),
        ids.len(),
        "every paglet was seen inside its handler ({rounds} rounds of polls)"
    );
}

#[test]
fn a_handler_past_the_handler_timeout_is_a_504_and_its_paglet_stays_busy_until_it_returns() {
    let (host, _plugins) = host_with(&["pi"], &["--handler-timeout", "1"]);
    let pi = host.create("pi::Pi", json!({}));
    warm_up(&host, &pi);
    let answer = host.send(&pi, "digits", json!({"n": PAST_ONE_SECOND}));
    assert_eq!(answer.status, 504, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "handler-timeout");
    // The handler cannot be stopped: it runs on, and the paglet says so.
    let busy = detail(&host, &pi);
    assert_eq!(busy["busy"], true, "{busy:?}");
    assert!(busy.get("state").is_none(), "{busy:?}");
    // A later message queues behind it, and its caller too waits at most the timeout.
    let queued = host.send(&pi, "digits", json!({"n": 5}));
    assert_eq!(queued.status, 504, "{:?}", queued.json);
    // Both complete later.
    let done = wait_for_within("both messages to complete", COMPUTE_WITHIN, || {
        let json = detail(&host, &pi);
        (json["busy"] == false && json["state"]["computed"] == 18).then_some(json)
    });
    assert_eq!(done["messages_handled"], 18, "{done:?}");
    let answer = host.send(&pi, "digits", json!({"n": 5}));
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["reply"]["digits"], "3.14159");
}

#[test]
fn the_handler_timeout_is_a_launch_config_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("launch.toml");
    std::fs::write(&config, "[host]\nhandler_timeout = 1\n").expect("write the launch config");
    let config = config.to_string_lossy().into_owned();
    let (host, _plugins) = host_with(&["pi"], &["--launch-config", &config]);
    let pi = host.create("pi::Pi", json!({}));
    let answer = host.send(&pi, "digits", json!({"n": PAST_ONE_SECOND}));
    assert_eq!(answer.status, 504, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "handler-timeout");
}

#[test]
fn a_send_to_a_busy_paglet_waits_at_most_the_handler_timeout() {
    let (host, _plugins) = host_with(&["pi", "hello"], &["--handler-timeout", "1"]);
    let pi = host.create("pi::Pi", json!({}));
    let hello = host.create("hello::Hello", json!({}));
    let long = compute(&host, &pi, PAST_ONE_SECOND);
    wait_for("pi to be busy", || {
        (detail(&host, &pi)["busy"] == true).then_some(())
    });
    // Oneway, so that no HTTP caller's timeout is in the way: hello's send waits in pi's
    // queue, gives up after the handler timeout, and hello's handler fails with that.
    let forward = json!({"to": pi, "kind": "digits", "args": {"n": 5}});
    let queued = host.post(
        &format!("/paglets/{hello}/messages"),
        &json!({"kind": "forward", "args": forward, "oneway": true}),
    );
    assert_eq!(queued.status, 202, "{:?}", queued.json);
    wait_for("hello's send to give up", || {
        (detail(&host, &hello)["oneway_failed"] == 1).then_some(())
    });
    // Logged before the failure is counted; the harness reads stderr a moment later.
    wait_for("the log to say the send gave up", || {
        host.log()
            .contains(&format!("no reply from {pi} within 1s"))
            .then_some(())
    });
    assert_eq!(detail(&host, &pi)["busy"], true, "pi is still computing");
    assert_eq!(
        host.send(&hello, "greet", Value::Null).status,
        200,
        "hello is free again"
    );
    assert_eq!(long.join().expect("client").status, 504);
}

#[test]
fn a_send_to_an_idle_paglet_runs_inside_the_senders_handler_and_its_timeout() {
    let (host, _plugins) = host_with(&["pi", "hello"], &["--handler-timeout", "1"]);
    let pi = host.create("pi::Pi", json!({}));
    let hello = host.create("hello::Hello", json!({}));
    let forward = json!({"to": pi, "kind": "digits", "args": {"n": PAST_ONE_SECOND}});
    let answer = host.send(&hello, "forward", forward);
    assert_eq!(answer.status, 504, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "handler-timeout");
    assert_eq!(detail(&host, &hello)["busy"], true);
    assert_eq!(detail(&host, &pi)["busy"], true);
    wait_for_within("the send to complete", COMPUTE_WITHIN, || {
        let (hello, pi) = (detail(&host, &hello), detail(&host, &pi));
        (hello["busy"] == false && pi["state"]["computed"] == 1).then_some(())
    });
}
