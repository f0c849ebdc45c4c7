//! Worker processes (`--isolate`, `[[isolate]]`): a paglet library that segfaults, aborts,
//! loops or eats memory takes down only its worker; the caller gets the documented error,
//! the host and its other paglets keep serving, and the paglet comes back with its state.
//! Crash loops quarantine the library until a reload; SIGTERM to the whole process group
//! still saves the isolated paglets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use paglets_e2e::{PluginDir, TestHost, example, fixed_crashy, fixture, wait_for};
use serde_json::{Value, json};

/// A host with `crashy` isolated next to the in-process `counter` (and `hello`), in `sync`
/// durability so that a crash loses nothing acknowledged.
fn isolated_host(plugins: &PluginDir, launch: Option<&str>) -> (TestHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["--durability", "sync", "--isolate", "crashy"];
    let config = dir.path().join("launch.toml");
    let config_text;
    if let Some(launch) = launch {
        std::fs::write(&config, launch).expect("write the launch config");
        config_text = config.display().to_string();
        args.extend(["--launch-config", config_text.as_str()]);
    }
    let persistence = dir.path().join("state");
    let host = TestHost::start_in(&[plugins.path()], &args, &persistence, &[]);
    (host, dir)
}

fn plugins() -> PluginDir {
    let plugins = PluginDir::new();
    plugins.add(&fixture("crashy"));
    plugins.add(&example("counter"));
    plugins.add(&example("hello"));
    plugins
}

fn count(host: &TestHost, id: &str) -> u64 {
    let answer = host.send(id, "get", Value::Null);
    assert_eq!(answer.status, 200, "{:?}\n{}", answer.json, host.log());
    answer.json["reply"]["count"].as_u64().expect("a count")
}

fn increment(host: &TestHost, id: &str, times: u64) {
    for _ in 0..times {
        let answer = host.send(id, "increment", Value::Null);
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }
}

/// The pid of the library's worker, as `/libraries` shows it.
fn worker_pid(host: &TestHost, library: &str) -> Option<i32> {
    let libraries = host.get("/libraries").json;
    libraries
        .as_array()?
        .iter()
        .find(|l| l["name"] == library)?["isolation"]["worker_pid"]
        .as_i64()
        .map(|pid| pid as i32)
}

fn assert_serving(host: &TestHost, counter: &str) {
    assert_eq!(host.get("/health").status, 200);
    let answer = host.send(counter, "increment", Value::Null);
    assert_eq!(answer.status, 200, "{:?}", answer.json);
}

#[test]
fn a_segfault_or_an_abort_takes_down_only_the_worker_and_the_paglet_comes_back() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let crashy = host.create("crashy::Crashy", json!({}));
    let counter = host.create("counter::Counter", json!({}));
    increment(&host, &crashy, 2);
    let first = worker_pid(&host, "crashy").expect("a worker runs");
    assert_ne!(first as u32, host.pid());
    for (n, (kind, signal)) in [("segfault", "SIGSEGV"), ("abort", "SIGABRT")]
        .into_iter()
        .enumerate()
    {
        let answer = host.send(&crashy, kind, Value::Null);
        assert_eq!(answer.status, 500, "{kind}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "paglet-crashed", "{kind}");
        assert_serving(&host, &counter);
        assert_eq!(count(&host, &crashy), 2, "{kind}: back with its state");
        let detail = host.get(&format!("/paglets/{crashy}")).json;
        assert_eq!(detail["crashes"], n as u64 + 1, "{detail}");
        assert_eq!(detail["last_crash"]["signal"], signal, "{detail}");
        assert_eq!(detail["last_crash"]["reason"], "signal", "{detail}");
        assert_eq!(detail["status"], "active", "{detail}");
        assert!(detail["last_crash"]["at"].as_f64().is_some(), "{detail}");
    }
    let last = worker_pid(&host, "crashy").expect("a new worker runs");
    assert_ne!(last, first);
    // The in-process paglet never crashed.
    assert_eq!(host.get(&format!("/paglets/{counter}")).json["crashes"], 0);
}

#[test]
fn a_handler_past_the_handler_timeout_gets_504_and_its_worker_restarts() {
    let plugins = plugins();
    let launch = "[[isolate]]\nlibrary = \"crashy\"\nhandler_timeout = \"500ms\"\n";
    let (host, _dir) = isolated_host(&plugins, Some(launch));
    let crashy = host.create("crashy::Crashy", json!({"count": 7}));
    let counter = host.create("counter::Counter", json!({}));
    let first = worker_pid(&host, "crashy").expect("a worker runs");
    let host = Arc::new(host);
    let spinning = {
        let (host, crashy) = (host.clone(), crashy.clone());
        std::thread::spawn(move || host.send(&crashy, "spin", Value::Null))
    };
    // The host serves meanwhile.
    assert_serving(&host, &counter);
    let answer = spinning.join().expect("the spinning call");
    assert_eq!(answer.status, 504, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "handler-timeout");
    assert_eq!(count(&host, &crashy), 7);
    let detail = host.get(&format!("/paglets/{crashy}")).json;
    assert_eq!(
        detail["last_crash"]["reason"], "handler-timeout",
        "{detail}"
    );
    assert_ne!(worker_pid(&host, "crashy").expect("a new worker"), first);
}

#[test]
fn a_worker_past_its_memory_limit_is_killed_and_the_paglet_comes_back() {
    let plugins = plugins();
    let launch = "[[isolate]]\nlibrary = \"crashy\"\nmemory_limit = \"64MiB\"\n";
    let (host, _dir) = isolated_host(&plugins, Some(launch));
    let crashy = host.create("crashy::Crashy", json!({}));
    let counter = host.create("counter::Counter", json!({}));
    increment(&host, &crashy, 3);
    let answer = host.send(&crashy, "hog", Value::Null);
    assert_eq!(answer.status, 500, "{:?}", answer.json);
    assert_eq!(answer.json["error"]["code"], "paglet-crashed");
    assert_serving(&host, &counter);
    assert_eq!(count(&host, &crashy), 3);
    let detail = host.get(&format!("/paglets/{crashy}")).json;
    assert_eq!(detail["last_crash"]["reason"], "memory-limit", "{detail}");
    assert_eq!(detail["last_crash"]["signal"], "SIGKILL", "{detail}");
    let libraries = host.get("/libraries").json;
    let crashy_lib = libraries
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "crashy"))
        .expect("crashy listed");
    assert_eq!(crashy_lib["isolation"]["memory_limit"], 64 << 20);
}

#[test]
fn a_crash_loop_quarantines_the_library_until_a_fixed_build_is_reloaded() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let crashy = host.create("crashy::Crashy", json!({}));
    let other = host.create("crashy::Crashy", json!({"count": 40}));
    let counter = host.create("counter::Counter", json!({}));
    increment(&host, &crashy, 1);
    for _ in 0..5 {
        let answer = host.send(&crashy, "segfault", Value::Null);
        assert_eq!(
            answer.json["error"]["code"], "paglet-crashed",
            "{:?}",
            answer.json
        );
    }
    // Quarantined: no worker, 503 for every paglet of the library, without starting one.
    for id in [&crashy, &other] {
        let answer = host.send(id, "get", Value::Null);
        assert_eq!(answer.status, 503, "{:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "quarantined");
        assert_eq!(
            host.get(&format!("/paglets/{id}")).json["status"],
            "quarantined"
        );
    }
    assert_eq!(worker_pid(&host, "crashy"), None);
    let listed = host.get("/paglets?status=quarantined").json;
    let mut ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![crashy.as_str(), other.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let active = host.get("/paglets").json;
    assert!(
        active
            .as_array()
            .expect("a list")
            .iter()
            .all(|p| p["status"] == "active"),
        "{active}"
    );
    let libraries = host.get("/libraries").json;
    let lib = libraries
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "crashy"))
        .expect("crashy listed")
        .clone();
    assert_eq!(lib["isolation"]["quarantined"], true, "{lib}");
    assert_serving(&host, &counter);
    // The fixed build, reloaded: the quarantine is lifted, the paglets come back on it.
    plugins.add_as(&fixed_crashy(), "libcrashy.so");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.status, 200, "{:?}", rescan.json);
    assert_eq!(count(&host, &crashy), 1);
    assert_eq!(count(&host, &other), 40);
    let fixed = host.send(&crashy, "segfault", Value::Null);
    assert_eq!(fixed.json["reply"]["fixed"], true, "{:?}", fixed.json);
    let detail = host.get(&format!("/paglets/{crashy}")).json;
    assert_eq!(detail["status"], "active", "{detail}");
    assert_eq!(detail["generation"], 1, "{detail}");
}

#[test]
fn a_worker_killed_during_a_burst_from_four_clients_leaves_no_call_hanging() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let host = Arc::new(host);
    let ids: Vec<String> = (0..4)
        .map(|_| host.create("crashy::Crashy", json!({})))
        .collect();
    let (ok, crashed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = ids
        .iter()
        .map(|id| {
            let (host, id, ok, crashed, stop) = (
                host.clone(),
                id.clone(),
                ok.clone(),
                crashed.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let path = format!("/paglets/{id}/messages");
                let mut unexpected = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    // The harness's client times out long before a test would: a hanging
                    // call shows up as an error here.
                    match host.try_post(&path, &json!({"kind": "increment"})) {
                        Ok(a) if a.status == 200 => {
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(a) if a.status == 500 && a.json["error"]["code"] == "paglet-crashed" => {
                            crashed.fetch_add(1, Ordering::AcqRel);
                        }
                        other => unexpected.push(format!("{other:?}")),
                    }
                }
                unexpected
            })
        })
        .collect();
    wait_for("messages to flow", || {
        (ok.load(Ordering::Acquire) >= 100).then_some(())
    });
    let pid = worker_pid(&host, "crashy").expect("a worker runs");
    // SAFETY: SIGKILL to the worker process the host started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let before = ok.load(Ordering::Acquire);
    wait_for("messages to flow again after the crash", || {
        (ok.load(Ordering::Acquire) >= before + 100).then_some(())
    });
    stop.store(true, Ordering::Release);
    for client in clients {
        let unexpected = client.join().expect("a client");
        assert!(unexpected.is_empty(), "{unexpected:?}");
    }
    assert_ne!(worker_pid(&host, "crashy"), Some(pid));
    let detail = host.get(&format!("/paglets/{}", ids[0])).json;
    assert_eq!(detail["last_crash"]["signal"], "SIGKILL", "{detail}");
    assert_eq!(detail["crashes"], 1, "{detail}");
    // sync durability: every acknowledged increment survived the crash.
    let total: u64 = ids.iter().map(|id| count(&host, id)).sum();
    assert!(
        total >= ok.load(Ordering::Acquire),
        "{total} < {}",
        ok.load(Ordering::Acquire)
    );
}

#[test]
fn sigterm_to_the_whole_process_group_saves_the_isolated_paglets() {
    let plugins = plugins();
    let dir = tempfile::tempdir().expect("temp dir");
    // Shutdown durability: only the save on the way out writes the states.
    let args = ["--durability", "shutdown", "--isolate", "crashy"];
    let host = TestHost::start_in_own_group(&[plugins.path()], &args, dir.path());
    let crashy = host.create("crashy::Crashy", json!({}));
    increment(&host, &crashy, 3);
    let counter = host.create("counter::Counter", json!({}));
    increment(&host, &counter, 2);
    let worker = worker_pid(&host, "crashy").expect("a worker runs");
    let group = host.pid() as i32;
    // SAFETY: getpgid on a child process of this test.
    assert_eq!(
        unsafe { libc::getpgid(worker) },
        group,
        "the worker is in the group"
    );
    // SAFETY: SIGTERM to the process group of the host this test started.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGTERM) }, 0);
    let mut host = host;
    let status = host.wait_exit();
    assert!(status.success(), "{status:?}\n{}", host.log());
    assert!(host.log().contains("saved=2"), "{}", host.log());
    drop(host);
    let host = TestHost::start_in(&[plugins.path()], &args, dir.path(), &[]);
    assert_eq!(count(&host, &crashy), 3);
    assert_eq!(count(&host, &counter), 2);
}

#[test]
fn isolated_paglets_send_create_move_and_reload_like_in_process_ones() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let a = host.create("crashy::Crashy", json!({"count": 1}));
    let b = host.create("crashy::Crashy", json!({"count": 2}));
    let counter = host.create("counter::Counter", json!({}));
    increment(&host, &counter, 5);
    // Isolated to in-process, isolated to isolated (the same worker), in-process to isolated.
    let reply = host.send(&a, "forward", json!({"to": counter, "kind": "get"}));
    assert_eq!(reply.json["reply"]["reply"]["count"], 5, "{:?}", reply.json);
    let reply = host.send(&a, "forward", json!({"to": b, "kind": "get"}));
    assert_eq!(reply.json["reply"]["reply"]["count"], 2, "{:?}", reply.json);
    let hello = host.create("hello::Hello", json!({}));
    let reply = host.send(&hello, "forward", json!({"to": a, "kind": "increment"}));
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(count(&host, &a), 2);
    // A send back to itself through another is refused as a deadlock, not hung.
    let reply = host.send(&a, "forward", json!({"to": a, "kind": "get"}));
    assert_eq!(reply.json["error"]["code"], "deadlock", "{:?}", reply.json);
    // Hooks: deactivate and wake it, then dispose of b.
    let answer = host.post(&format!("/paglets/{a}/deactivate"), &json!({}));
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(count(&host, &a), 2);
    assert_eq!(host.delete(&format!("/paglets/{b}")).status, 204);
    // A reload migrates it inside its worker, with its state.
    plugins.add_as(&fixed_crashy(), "libcrashy.so");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.json["migrated"], json!([a]), "{:?}", rescan.json);
    assert_eq!(count(&host, &a), 2);
    let fixed = host.send(&a, "abort", Value::Null);
    assert_eq!(fixed.json["reply"]["fixed"], true, "{:?}", fixed.json);
    assert_eq!(host.get(&format!("/paglets/{a}")).json["crashes"], 0);
}

#[test]
fn an_isolated_paglet_is_dispatched_to_another_host_and_cloned_there_with_its_state() {
    let key = [("PAGLETS_API_KEY", "k")];
    let (plugins_a, plugins_b) = (plugins(), plugins());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let args = ["--isolate", "crashy", "--no-mesh"];
    let a = TestHost::start_in(&[plugins_a.path()], &args, dir_a.path(), &key);
    let b = TestHost::start_in(&[plugins_b.path()], &args, dir_b.path(), &key);
    let id = a.create("crashy::Crashy", json!({"count": 3}));
    let moved = a.post(&format!("/paglets/{id}/dispatch"), &json!({"to": b.url}));
    assert_eq!(moved.status, 200, "{:?}\n{}", moved.json, a.log());
    assert_eq!(count(&b, &id), 3);
    let copy = b.post(&format!("/paglets/{id}/clone"), &json!({"id": "copy"}));
    assert!(copy.status == 200 || copy.status == 201, "{:?}", copy.json);
    assert_eq!(count(&b, "copy"), 3);
    let detail = b.get("/paglets/copy").json;
    assert_eq!(detail["status"], "active", "{detail}");
    assert!(worker_pid(&b, "crashy").is_some());
}

#[test]
fn an_isolated_paglet_creates_queues_logs_and_deactivates_itself_through_its_context() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let a = host.create("crashy::Crashy", json!({}));
    let counter = host.create("counter::Counter", json!({}));
    let spawned = host.send(&a, "spawn", json!({"id": "born"}));
    assert_eq!(
        spawned.json["reply"]["created"], "born",
        "{:?}",
        spawned.json
    );
    assert_eq!(count(&host, "born"), 100);
    let queued = host.send(&a, "oneway", json!({"to": counter, "kind": "increment"}));
    assert_eq!(queued.status, 200, "{:?}", queued.json);
    wait_for("the oneway message to arrive", || {
        let answer = host.send(&counter, "get", Value::Null);
        (answer.json["reply"]["count"] == 1).then_some(())
    });
    let logged = host.send(&a, "log", json!({"message": "written in a worker"}));
    assert_eq!(logged.status, 200, "{:?}", logged.json);
    wait_for("the log line", || {
        host.log()
            .lines()
            .any(|l| l.contains("written in a worker") && l.contains(a.as_str()))
            .then_some(())
    });
    let napping = host.send(&a, "nap", Value::Null);
    assert_eq!(napping.status, 200, "{:?}", napping.json);
    wait_for("it to be inactive", || {
        (host.get(&format!("/paglets/{a}")).json["status"] == "inactive").then_some(())
    });
    // A message wakes it, in a worker again.
    assert_eq!(count(&host, &a), 0);
}

#[test]
fn the_detail_of_a_paglet_whose_worker_is_stopped_answers_without_its_state() {
    let plugins = plugins();
    let (host, _dir) = isolated_host(&plugins, None);
    let crashy = host.create("crashy::Crashy", json!({"count": 5}));
    let counter = host.create("counter::Counter", json!({}));
    let pid = worker_pid(&host, "crashy").expect("a worker runs");
    // SAFETY: SIGSTOP, then SIGCONT, to the worker process the host started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let detail = host.get(&format!("/paglets/{crashy}")).json;
    // SAFETY: as above.
    let resumed = unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(resumed, 0);
    assert_eq!(detail["busy"], true, "{detail}");
    assert!(detail.get("state").is_none(), "{detail}");
    assert_serving(&host, &counter);
    wait_for("its state again", || {
        let detail = host.get(&format!("/paglets/{crashy}")).json;
        (detail["state"]["count"] == 5).then_some(())
    });
    assert_eq!(count(&host, &crashy), 5);
}
