//! Drop-in and hot reload: new files load while the host runs, changed files are reloaded
//! and live instances move to the new code with their state, without losing messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use paglets_e2e::{PluginDir, TestHost, example, fixture, wait_for};
use serde_json::{Value, json};

#[test]
fn a_library_dropped_into_a_watched_folder_becomes_available() {
    let plugins = PluginDir::new();
    let host = TestHost::start(&[plugins.path()], &["--watch"]);
    assert_eq!(
        host.post("/paglets", &json!({"class": "pi::Pi"})).status,
        404
    );
    plugins.add(&example("pi"));
    wait_for("pi::Pi to load", || {
        (host.post("/paglets", &json!({"class": "pi::Pi"})).status == 201).then_some(())
    });
}

#[test]
fn a_folder_that_appears_later_is_picked_up() {
    let parent = PluginDir::new();
    let later = parent.path().join("later");
    let host = TestHost::start(&[&later], &["--watch"]);
    std::fs::create_dir(&later).expect("mkdir");
    std::fs::copy(example("counter"), later.join("libcounter.so")).expect("copy");
    wait_for("counter to load", || {
        (host.get("/health").json["libraries"] == 1).then_some(())
    });
}

#[test]
fn a_half_written_library_is_retried_until_complete() {
    let plugins = PluginDir::new();
    let host = TestHost::start(&[plugins.path()], &["--watch"]);
    let bytes = std::fs::read(example("counter")).expect("read");
    let file = plugins.write("libcounter.so", &bytes[..bytes.len() / 2]);
    wait_for("the partial file to be seen", || {
        let libs = host.get("/libraries").json;
        (libs[0]["retrying"] == true).then_some(())
    });
    std::fs::write(&file, &bytes).expect("finish writing");
    wait_for("the completed file to load", || {
        (host.get("/health").json["libraries"] == 1).then_some(())
    });
}

#[test]
fn reload_migrates_state_and_loses_no_message_under_load() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("counter"));
    let host = Arc::new(TestHost::start(&[plugins.path()], &[]));
    let ids: Vec<String> = (0..20)
        .map(|n| {
            let id = format!("c{n}");
            assert_eq!(
                host.post(
                    "/paglets",
                    &json!({"class": "counter::Counter", "id": id, "state": {"count": 100}})
                )
                .status,
                201
            );
            id
        })
        .collect();
    let sha_before = host.get("/paglets/c0").json["sha256"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let (host, stop, sent, ids) = (host.clone(), stop.clone(), sent.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) || n < 40 {
                    let id = &ids[(t * 5 + n) % ids.len()];
                    let answer = host.send(id, "increment", Value::Null);
                    assert_eq!(
                        answer.status, 200,
                        "a message failed during the reload: {:?}",
                        answer.json
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    wait_for("some traffic", || {
        (sent.load(Ordering::Relaxed) > 50).then_some(())
    });
    // New code for the same class: the fixture's Counter answers `increment` only.
    plugins.add_as(
        &fixture("dup-counter"),
        file.file_name().and_then(|n| n.to_str()).expect("name"),
    );
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.json["reloaded"], json!([file]), "{:?}", rescan.json);
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("sender thread");
    }
    wait_for("every instance to migrate", || {
        ids.iter()
            .all(|id| host.get(&format!("/paglets/{id}")).json["generation"] == 1)
            .then_some(())
    });
    let total: u64 = ids
        .iter()
        .map(|id| {
            host.get(&format!("/paglets/{id}")).json["state"]["count"]
                .as_u64()
                .expect("count")
                - 100
        })
        .sum();
    assert_eq!(
        total,
        sent.load(Ordering::Relaxed),
        "every message counted exactly once"
    );
    let detail = host.get("/paglets/c0").json;
    assert_ne!(detail["sha256"], sha_before);
    // The new code is running: it does not know `get`.
    assert_eq!(host.send("c0", "get", Value::Null).status, 422);
    let lib = host.get("/libraries").json[0].clone();
    assert_eq!(
        (lib["generation"].clone(), lib["loaded_copies"].clone()),
        (json!(1), json!(2))
    );
}

#[test]
fn an_instance_whose_class_vanishes_from_the_new_code_stays_on_the_old() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("counter::Counter", json!({"count": 5}));
    plugins.add_as(
        &example("hello"),
        file.file_name().and_then(|n| n.to_str()).expect("name"),
    );
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(
        rescan.json["migration_failed"][0]["id"],
        json!(id),
        "{:?}",
        rescan.json
    );
    let lib = host.get("/libraries").json[0].clone();
    let why = lib["migration_errors"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("has no class counter::Counter"), "{lib:?}");
    assert_eq!(host.send(&id, "get", Value::Null).json["reply"]["count"], 5);
}

#[test]
fn a_busy_instance_answers_at_once_and_migrates_when_idle() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("pi"));
    let host = Arc::new(TestHost::start(&[plugins.path()], &[]));
    let id = host.create("pi::Pi", json!({}));
    // Long enough to outlast the rescan's wait for migrations (2 s).
    let busy = busy_for_seconds(&host, &id);
    // The API stays responsive while the handler runs.
    assert_eq!(host.get("/health").status, 200);
    let other = host.create("pi::Pi", json!({}));
    assert_eq!(
        host.send(&other, "digits", json!({"n": 5})).json["reply"]["digits"],
        "3.14159"
    );
    // Touch the library (same code, new bytes) to force a reload while busy.
    let mut bytes = std::fs::read(example("pi")).expect("read");
    bytes.extend_from_slice(b"\0paglets-e2e");
    std::fs::write(&file, &bytes).expect("write");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert!(
        !busy.is_finished(),
        "the handler must outlast the rescan for this test to mean anything"
    );
    // Still inside its handler: it cannot have moved yet, so it is listed as pending.
    assert_eq!(rescan.json["pending"], json!([id]), "{:?}", rescan.json);
    assert_eq!(rescan.json["migrated"], json!([other]), "{:?}", rescan.json);
    let answer = busy.join().expect("busy sender");
    assert_eq!(answer.status, 200);
    wait_for("the busy one to migrate", || {
        (host.get(&format!("/paglets/{id}")).json["generation"] == 1).then_some(())
    });
}

/// Sends `pi` a message that keeps it busy for several seconds (`keep_busy`'s is shorter).
fn busy_for_seconds(
    host: &Arc<TestHost>,
    id: &str,
) -> std::thread::JoinHandle<paglets_e2e::Answer> {
    let running = {
        let (host, id) = (host.clone(), id.to_string());
        std::thread::spawn(move || host.send(&id, "digits", json!({"n": 45000})))
    };
    wait_for("the paglet to be busy", || {
        (host.get(&format!("/paglets/{id}")).json["busy"] == true).then_some(())
    });
    running
}

#[test]
fn the_detail_of_a_busy_paglet_answers_while_its_handler_runs() {
    let plugins = PluginDir::new();
    plugins.add(&example("pi"));
    let host = Arc::new(TestHost::start(&[plugins.path()], &[]));
    let id = host.create("pi::Pi", json!({}));
    let busy = busy_for_seconds(&host, &id);
    let detail = host.get(&format!("/paglets/{id}"));
    assert!(
        !busy.is_finished(),
        "the handler must still run for this test to mean anything"
    );
    assert_eq!(detail.status, 200);
    assert_eq!(detail.json["busy"], true, "{:?}", detail.json);
    assert!(detail.json.get("state").is_none(), "{:?}", detail.json);
    assert_eq!(busy.join().expect("busy sender").status, 200);
    assert_eq!(host.get(&format!("/paglets/{id}")).json["busy"], false);
}

#[test]
fn a_message_to_a_paglet_whose_migration_is_pending_does_not_wait_for_the_whole_reload() {
    let plugins = PluginDir::new();
    let file = plugins.add(&fixture("hooks"));
    // Two workers, 200 paglets whose arrival takes 50 ms: the reload keeps the pool busy for
    // about 5 s.
    let host = Arc::new(TestHost::start(&[plugins.path()], &["--workers", "2"]));
    let total = 200;
    let ids: Vec<String> = (0..total)
        .map(|n| {
            let id = format!("s{n}");
            let answer = host.post(
                "/paglets",
                &json!({"class": "hooks::Sleepy", "id": id, "state": {"arrive_ms": 50}}),
            );
            assert_eq!(answer.status, 201, "{:?}", answer.json);
            id
        })
        .collect();
    let mut bytes = std::fs::read(fixture("hooks")).expect("read");
    bytes.extend_from_slice(b"\0reload");
    std::fs::write(&file, &bytes).expect("write");
    let rescan = {
        let host = host.clone();
        std::thread::spawn(move || host.post("/admin/rescan", &json!({})))
    };
    wait_for("the new code to load", || {
        (host.get("/libraries").json[0]["generation"] == 1).then_some(())
    });
    // Messages to paglets spread over the migration queue. In arrival order, the last of
    // them would wait for most of the reload; each is answered after its own migration, with
    // most of the others still pending.
    let senders: Vec<_> = ids
        .iter()
        .step_by(20)
        .map(|id| {
            let (host, id) = (host.clone(), id.clone());
            std::thread::spawn(move || host.send(&id, "arrivals", Value::Null))
        })
        .collect();
    for sender in senders {
        let answer = sender.join().expect("sender");
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        let arrivals = answer.json["reply"]["arrivals"].as_u64().expect("arrivals");
        assert!(
            arrivals < total / 2,
            "answered only after {arrivals} of {total} migrations"
        );
    }
    let rescan = rescan.join().expect("rescan");
    assert_eq!(rescan.status, 200, "{:?}", rescan.json);
    wait_for("every paglet to migrate", || {
        let answer = host.send("s0", "arrivals", Value::Null);
        (answer.json["reply"]["arrivals"] == total).then_some(())
    });
}

#[test]
fn two_reloads_while_busy_leave_the_instance_on_the_newest_code() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("pi"));
    let host = Arc::new(TestHost::start(&[plugins.path()], &[]));
    let id = host.create("pi::Pi", json!({}));
    let busy = paglets_e2e::keep_busy(&host, &id);
    let original = std::fs::read(example("pi")).expect("read");
    for n in 1..=2 {
        let mut bytes = original.clone();
        bytes.extend_from_slice(format!("\0reload-{n}").as_bytes());
        std::fs::write(&file, &bytes).expect("write");
        host.post("/admin/rescan", &json!({}));
    }
    assert_eq!(busy.join().expect("busy sender").status, 200);
    let newest = host.get("/libraries").json[0]["sha256"].clone();
    wait_for("the instance to reach the newest code", || {
        let detail = host.get(&format!("/paglets/{id}")).json;
        (detail["generation"] == 2 && detail["sha256"] == newest).then_some(())
    });
}

#[test]
fn a_library_file_that_comes_back_continues_its_generations() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("counter::Counter", json!({"count": 3}));
    std::fs::remove_file(&file).expect("remove");
    host.post("/admin/rescan", &json!({}));
    plugins.add_as(&fixture("dup-counter"), "libcounter.so");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.json["reloaded"], json!([file]), "{:?}", rescan.json);
    let detail = host.get(&format!("/paglets/{id}")).json;
    assert_eq!(
        (detail["generation"].clone(), detail["state"].clone()),
        (json!(1), json!({"count": 3}))
    );
    assert_eq!(
        host.send(&id, "get", Value::Null).status,
        422,
        "runs the new code"
    );
    assert_eq!(host.get("/libraries").json[0]["loaded_copies"], 2);
}
