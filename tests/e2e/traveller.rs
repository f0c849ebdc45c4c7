//! The traveller example on two real hosts: a paglet that dispatches itself from its
//! `arrived` hook, stop after stop, and comes home with what it saw.

use std::time::{Duration, Instant};

use paglets_e2e::mesh::{start_in, wait_all};
use paglets_e2e::{DEADLINE, PluginDir, TestHost, example};
use serde_json::{Value, json};

/// A folder with the traveller and server-info libraries.
fn plugins() -> PluginDir {
    let plugins = PluginDir::new();
    plugins.add(&example("traveller"));
    plugins.add(&example("server-info"));
    plugins
}

/// The traveller's report once it is back home on `home`; panics with its last report (where
/// it got stuck) after [`DEADLINE`].
fn back_home(home: &TestHost, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let answer = home.send(id, "report", Value::Null);
        if answer.status == 200 && answer.json["reply"]["done"] == true {
            return answer.json["reply"].clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{id} is not back home; its last answer: {} {}",
            answer.status,
            answer.json
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The ids listed on `host`, whatever their status.
fn ids(host: &TestHost) -> Vec<String> {
    let answer = host.get("/paglets?status=all");
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer
        .json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn travellers_go_back_and_forth_between_two_hosts_and_come_home() {
    let (plugins_a, plugins_b) = (plugins(), plugins());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let a = start_in("lab-a", plugins_a.path(), dir_a.path(), &[], &[], &[]);
    let b = start_in("lab-b", plugins_b.path(), dir_b.path(), &[&a.url], &[], &[]);
    wait_all(&[&a, &b], &["lab-a", "lab-b"], "alive");
    let info = b.post(
        "/paglets",
        &json!({"class": "server_info::ServerInfo", "id": "server-info"}),
    );
    assert_eq!(info.status, 201, "{:?}", info.json);

    // Each leg leaves from the host the previous one just arrived on, by name or by URL.
    let travellers: Vec<String> = (0..6)
        .map(|i| {
            let id = a.create("traveller::Traveller", json!({}));
            let hosts = if i % 2 == 0 {
                json!(["lab-b", "lab-a", "lab-b"])
            } else {
                json!([b.url, a.url, b.url])
            };
            let home = if i % 2 == 0 {
                json!("lab-a")
            } else {
                json!(a.url)
            };
            let started = a.send(&id, "start", json!({"hosts": hosts, "home": home}));
            assert_eq!(started.status, 200, "{:?}", started.json);
            id
        })
        .collect();

    for id in &travellers {
        let report = back_home(&a, id);
        let legs: Vec<(&str, &str)> = report["visits"]
            .as_array()
            .expect("visits")
            .iter()
            .map(|v| {
                (
                    v["host"].as_str().unwrap_or_default(),
                    v["arrived_from"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            legs,
            [("lab-b", "lab-a"), ("lab-a", "lab-b"), ("lab-b", "lab-a")],
            "{id}: {report}"
        );
        let visits = &report["visits"];
        assert!(
            visits[0]["server_info"]["logical_cpus"].is_u64(),
            "{report}"
        );
        assert_eq!(visits[1]["server_info"], Value::Null, "{report}");
        assert_eq!(report["heading"], Value::Null, "{report}");
    }
    // Home, and only home.
    let (on_a, on_b) = (ids(&a), ids(&b));
    for id in &travellers {
        assert!(
            on_a.contains(id) && !on_b.contains(id),
            "{id}: {on_a:?} {on_b:?}"
        );
    }
}
