//! Messages between paglets: deadlocks refused at once, creates from a handler, and the
//! bounded memory of sends in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paglets_e2e::{PluginDir, TestHost, example, fixture, wait_for};
use serde_json::{Value, json};

fn hello_host(extra: &[&std::path::Path]) -> (Arc<TestHost>, PluginDir) {
    let plugins = PluginDir::new();
    plugins.add(&example("hello"));
    for library in extra {
        plugins.add(library);
    }
    let host = Arc::new(TestHost::start(&[plugins.path()], &[]));
    (host, plugins)
}

fn create_hello(host: &TestHost, id: &str) {
    let answer = host.post("/paglets", &json!({"class": "hello::Hello", "id": id}));
    assert_eq!(answer.status, 201, "{:?}", answer.json);
}

#[test]
fn a_send_back_along_the_call_chain_is_a_deadlock_naming_the_cycle() {
    let (host, _plugins) = hello_host(&[]);
    create_hello(&host, "a");
    create_hello(&host, "b");
    let back = json!({"to": "b", "kind": "forward", "args": {"to": "a", "kind": "greet"}});
    let answer = host.send("a", "forward", back);
    assert_eq!(answer.status, 409, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "deadlock");
    let message = answer.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("b -> a -> b"), "{message}");
}

#[test]
fn opposing_forwards_from_many_clients_end_at_once_in_success_or_deadlock() {
    let (host, _plugins) = hello_host(&[]);
    create_hello(&host, "a");
    create_hello(&host, "b");
    let started = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|n| {
            let host = host.clone();
            std::thread::spawn(move || {
                let (from, to) = if n % 2 == 0 { ("a", "b") } else { ("b", "a") };
                (0..25)
                    .map(|_| {
                        let args = json!({"to": to, "kind": "greet"});
                        let answer = host.send(from, "forward", args);
                        (answer.status, answer.json)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut deadlocks = 0;
    for client in clients {
        for (status, json) in client.join().expect("client") {
            match status {
                200 => assert_eq!(json["reply"]["reply"]["message"], "Hello, world!"),
                409 => {
                    assert_eq!(json["error"]["code"], "deadlock", "{json:?}");
                    deadlocks += 1;
                }
                other => panic!("{other}: {json:?}"),
            }
        }
    }
    // Without cycle detection the opposing pairs wait out the 30 s send timeout.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "400 calls took {took:?} ({deadlocks} deadlocks)"
    );
}

#[test]
fn a_created_hook_that_calls_its_busy_creator_fails_at_once() {
    let (host, _plugins) = hello_host(&[&fixture("hooks")]);
    create_hello(&host, "parent");
    // Created over HTTP, the child's hook reaches a paglet that is free to answer.
    let answer = host.post(
        "/paglets",
        &json!({"class": "hooks::Child", "id": "calm", "state": {"parent": "parent"}}),
    );
    assert_eq!(answer.status, 201, "{:?}", answer.json);
    assert_eq!(
        host.get("/paglets/calm").json["state"]["answer"],
        json!({"from": "child"})
    );
    // Created from the parent's own handler, the hook would wait for the parent, which waits
    // for the hook: refused at once, and the child is not created.
    let spawn = json!({"class": "hooks::Child", "id": "child", "state": {"parent": "parent"}});
    let answer = host.send("parent", "spawn", spawn);
    assert_eq!(answer.status, 409, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "deadlock");
    let message = answer.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("child -> parent -> child"), "{message}");
    assert_eq!(host.get("/paglets/child").status, 404);
    // The parent is free again.
    assert_eq!(host.send("parent", "greet", Value::Null).status, 200);
}

/// Hello paglets `h0`..`h{depth-1}` forwarding `payload` down the chain to an echo at the end.
fn chain_message(prefix: &str, depth: usize, payload: &str) -> Value {
    let mut args = json!({"to": format!("{prefix}-echo"), "kind": "echo", "args": {"p": payload}});
    for n in (1..depth).rev() {
        args = json!({"to": format!("{prefix}{n}"), "kind": "forward", "args": args});
    }
    args
}

fn build_chain(host: &TestHost, prefix: &str, depth: usize) {
    for n in 0..depth {
        create_hello(host, &format!("{prefix}{n}"));
    }
    let echo = host.post(
        "/paglets",
        &json!({"class": "hello::Echo", "id": format!("{prefix}-echo")}),
    );
    assert_eq!(echo.status, 201, "{:?}", echo.json);
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn large_messages_through_deep_chains_are_bounded_and_their_memory_comes_back() {
    let (host, _plugins) = hello_host(&[]);
    let payload = "x".repeat(900 * 1024);
    build_chain(&host, "deep", 100);
    for c in 0..8 {
        build_chain(&host, &format!("c{c}-"), 12);
    }
    let baseline = resident_kib(host.pid());
    // 100 hops of 0.9 MiB each hold 90 MiB: past the 64 MiB budget of sends in flight.
    let answer = host.send("deep0", "forward", chain_message("deep", 100, &payload));
    assert_eq!(answer.status, 500, "{:?}", answer.json);
    let message = answer.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("budget"), "{message}");
    // A burst: 8 chains of 12 at once, 86 MiB wanted, within the budget or refused.
    let burst: Vec<_> = (0..8)
        .map(|c| {
            let (host, payload) = (host.clone(), payload.clone());
            std::thread::spawn(move || {
                let prefix = format!("c{c}-");
                let args = chain_message(&prefix, 12, &payload);
                host.send(&format!("{prefix}0"), "forward", args)
            })
        })
        .collect();
    let mut delivered = 0;
    for sender in burst {
        let answer = sender.join().expect("sender");
        match answer.status {
            200 => delivered += 1,
            500 => assert!(
                answer.json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("budget")),
                "{:?}",
                answer.json
            ),
            other => panic!("{other}: {:?}", answer.json),
        }
    }
    assert!(delivered > 0, "every chain was refused");
    // Generous: well above the few copies a single chain needs at a time, far below what
    // the burst held.
    let bound = baseline + 128 * 1024;
    eprintln!(
        "resident: {baseline} KiB before the burst, {} KiB after",
        resident_kib(host.pid())
    );
    wait_for("the host to give the burst's memory back", || {
        (resident_kib(host.pid()) < bound).then_some(())
    });
}
