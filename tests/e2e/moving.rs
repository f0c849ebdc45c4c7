//! Moving paglets between real hosts on 127.0.0.1: dispatch by URL and by mesh name, its
//! refusals, forwarding with 308, messages sent while a paglet moves, clone and retract,
//! deactivate and activate, oneway messages, what `/mesh/arrivals` refuses, and the faults
//! (SIGKILL on either side, SIGSTOP past the transfer timeout) after which exactly one copy
//! must exist.
//!
//! The `journal` fixture writes down its hooks; its `hold` file lets a test act while a
//! target is inside `arrived`.

use std::path::Path;
use std::sync::Arc;

use paglets_e2e::mesh::{PROBE_MS, row, signal, wait, wait_all};
use paglets_e2e::moving::{
    Clients, Site, closed_url, dispatch, follow, holds, listed, request_url, send_following,
};
use paglets_e2e::{Answer, TestHost, example, fixture, paglets, wait_for};
use serde_json::{Value, json};

fn counter_site(name: &str, args: &[&str]) -> Site {
    Site::new(name, &[example("counter")], args)
}

fn journal_site(name: &str, args: &[&str]) -> Site {
    Site::new(name, &[fixture("journal")], args)
}

/// Creates paglet `id` of `class` from `state` on `host`.
fn create(host: &TestHost, class: &str, id: &str, state: Value) {
    let answer = host.post(
        "/paglets",
        &json!({"class": class, "id": id, "state": state}),
    );
    assert_eq!(answer.status, 201, "create {id}: {:?}", answer.json);
}

/// The state `host` shows for paglet `id`, which must be there and active; waits while it
/// is busy (a lifecycle call may answer just before the paglet's turn ends).
fn state_of(host: &TestHost, id: &str) -> Value {
    wait_for(&format!("the state of {id}"), || {
        let answer = host.get(&format!("/paglets/{id}"));
        assert_eq!(answer.status, 200, "GET /paglets/{id}: {:?}", answer.json);
        answer.json.get("state").cloned()
    })
}

/// `POST path` without a body.
fn post_empty(host: &TestHost, path: &str) -> Answer {
    host.request("POST", path, None, None)
}

/// The hook lines a journal wrote down.
fn hooks(host: &TestHost, id: &str) -> Vec<String> {
    serde_json::from_value(state_of(host, id)["hooks"].clone()).expect("hook lines")
}

/// Asserts that a refused move left paglet `id` on `host` with `count`, and `elsewhere`
/// without it.
fn stayed(what: &str, host: &TestHost, elsewhere: &TestHost, id: &str, count: u64) {
    assert_eq!(
        state_of(host, id)["count"],
        count,
        "{what}: the state changed"
    );
    assert!(holds(host, id), "{what}: the source lost {id}");
    assert!(!holds(elsewhere, id), "{what}: {id} is on the target too");
}

/// Dispatches `id` from `from` to `to` on another thread (the call may wait on a target
/// that is stopped or killed); the answer, or the transport error, comes back on join.
fn dispatch_in_background(
    from: &TestHost,
    id: &str,
    to: &str,
) -> std::thread::JoinHandle<Result<Answer, String>> {
    let url = format!("{}/paglets/{id}/dispatch", from.url);
    let (body, key) = (json!({ "to": to }), from.key.clone());
    std::thread::spawn(move || request_url("POST", &url, Some(&body), key.as_deref()))
}

#[test]
fn a_counter_dispatched_by_url_arrives_with_its_state_and_its_old_host_answers_308() {
    let (sa, sb) = (counter_site("a", &[]), counter_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(&a, "counter::Counter", "c", json!({"count": 3}));

    let moved = dispatch(&a, "c", &b.url);
    assert_eq!(moved.status, 200, "{:?}", moved.json);
    assert_eq!(moved.json, json!({"id": "c", "host": "b", "url": b.url}));
    assert_eq!(state_of(&b, "c")["count"], 3);
    assert!(!holds(&a, "c"), "{:?}", listed(&a, "all"));

    for (method, path) in [
        ("GET", "/paglets/c"),
        ("GET", "/paglets/c?probe=1"),
        ("POST", "/paglets/c/messages"),
    ] {
        let body = json!({"kind": "increment"}).to_string();
        let body = (method == "POST").then_some(body.as_str());
        let answer = a.request(method, path, body, None);
        assert_eq!(
            (answer.status, answer.code()),
            (308, "moved"),
            "{method} {path}: {:?}",
            answer.json
        );
        assert_eq!(
            answer.location,
            Some(format!("{}{path}", b.url)),
            "{method} {path}"
        );
    }
    // Nothing was delivered through a 308; a client that follows it gets there.
    let followed = send_following(&a, "c", "increment", json!({"by": 2})).expect("answer");
    assert_eq!(followed.status, 200, "{:?}", followed.json);
    assert_eq!(followed.json["reply"]["count"], 5);

    // The CLI follows by itself, and dispatches.
    let sent = paglets(&["send", "c", "get", "--host", &a.url]);
    assert!(sent.status.success(), "{sent:?}");
    let reply: Value = serde_json::from_slice(&sent.stdout).expect("JSON on stdout");
    assert_eq!(reply["count"], 5, "{reply}");
    let home = paglets(&["dispatch", "c", &a.url, "--host", &b.url]);
    assert!(home.status.success(), "{home:?}");
    // Back home: a answers for it again, b forwards.
    assert_eq!(state_of(&a, "c")["count"], 5);
    let forwarded = b.get("/paglets/c");
    assert_eq!(forwarded.status, 308, "{:?}", forwarded.json);
    assert_eq!(forwarded.location, Some(format!("{}/paglets/c", a.url)));
}

#[test]
fn on_a_mesh_a_paglet_goes_to_a_compatible_host_by_name_and_never_to_an_incompatible_one() {
    let mesh = |version: &'static str, peer: Option<&str>| {
        let mut args = vec!["--mesh-version", version, "--mesh-probe-ms", PROBE_MS];
        args.extend(peer.map(|p| ["--peer", p]).into_iter().flatten());
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let sa = counter_site("a", &to_strs(&mesh("m1", None)));
    let a = sa.start();
    let sb = counter_site("b", &to_strs(&mesh("m1", Some(&a.url))));
    let sc = counter_site("c", &to_strs(&mesh("m2", Some(&a.url))));
    let (b, c) = (sb.start(), sc.start());
    wait_all(&[&a], &["b", "c"], "alive");
    wait("b compatible and c incompatible on a", || {
        let (rb, rc) = (row(&a, "b")?, row(&a, "c")?);
        (rb["compatible"] == true && rc["compatible"] == false).then_some(())
    });
    create(&a, "counter::Counter", "c1", json!({"count": 1}));
    create(&a, "counter::Counter", "c2", json!({"count": 2}));

    let moved = dispatch(&a, "c1", "b");
    assert_eq!(moved.status, 200, "{:?}", moved.json);
    assert_eq!(moved.json, json!({"id": "c1", "host": "b", "url": b.url}));
    assert_eq!(state_of(&b, "c1")["count"], 1);
    assert_eq!(
        a.get("/paglets/c1").location,
        Some(format!("{}/paglets/c1", b.url))
    );

    let refused = dispatch(&a, "c2", "c");
    assert_eq!(
        (refused.status, refused.code()),
        (409, "incompatible-code"),
        "{:?}",
        refused.json
    );
    stayed("an incompatible host", &a, &c, "c2", 2);
    let unknown = dispatch(&a, "c2", "nowhere");
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "not-found"),
        "{:?}",
        unknown.json
    );
    let itself = dispatch(&a, "c2", "a");
    assert_eq!(
        (itself.status, itself.code()),
        (400, "bad-request"),
        "{:?}",
        itself.json
    );
    stayed("an unknown host and itself", &a, &b, "c2", 2);
}

fn to_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn refused_dispatches_leave_the_paglet_where_and_as_it_was() {
    let sa = Site::new("a", &[example("counter"), fixture("journal")], &[]);
    let sb = Site::new("b", &[example("hello"), fixture("journal")], &[]);
    let (a, b) = (sa.start(), sb.start());
    create(&a, "counter::Counter", "c", json!({"count": 4}));
    for (what, to, status, code) in [
        (
            "a host without the class",
            b.url.clone(),
            409,
            "class-missing",
        ),
        ("a host that is down", closed_url(), 502, "bad-gateway"),
        ("itself by URL", a.url.clone(), 400, "bad-request"),
        ("itself by name", "a".to_string(), 400, "bad-request"),
    ] {
        let answer = dispatch(&a, "c", &to);
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{what}: {:?}",
            answer.json
        );
        stayed(what, &a, &b, "c", 4);
    }
    let unknown = dispatch(&a, "nobody", &b.url);
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "not-found"),
        "{:?}",
        unknown.json
    );

    // A hook that fails cancels the move, on either side.
    create(
        &a,
        "journal::Journal",
        "j1",
        json!({"count": 1, "fail": ["dispatching"]}),
    );
    let answer = dispatch(&a, "j1", &b.url);
    assert!(
        answer.status >= 400,
        "a failing dispatching hook: {answer:?}"
    );
    stayed("a failing dispatching hook", &a, &b, "j1", 1);
    create(
        &a,
        "journal::Journal",
        "j2",
        json!({"count": 2, "fail": ["arrived:dispatch"]}),
    );
    let answer = dispatch(&a, "j2", &b.url);
    assert!(answer.status >= 400, "a failing arrived hook: {answer:?}");
    assert_ne!(a.get("/paglets/j2").status, 503, "a refusal is not a doubt");
    stayed("a failing arrived hook", &a, &b, "j2", 2);

    // The same journal without the failure moves, and its hooks ran in order.
    create(&a, "journal::Journal", "j3", json!({"count": 3}));
    let moved = dispatch(&a, "j3", &b.url);
    assert_eq!(moved.status, 200, "{:?}", moved.json);
    assert_eq!(
        hooks(&b, "j3"),
        [
            format!("dispatching:{}", b.url),
            "arrived:dispatch:a".to_string()
        ]
    );
}

#[test]
fn dispatching_a_busy_paglet_waits_for_its_message_and_takes_the_result_along() {
    let (sa, sb) = (journal_site("a", &[]), journal_site("b", &[]));
    let a = Arc::new(sa.start());
    let b = sb.start();
    create(&a, "journal::Journal", "j", json!({}));
    let busy = {
        let a = a.clone();
        std::thread::spawn(move || a.send("j", "busy", json!({"ms": 1500})))
    };
    wait_for("the journal to be busy", || {
        (a.get("/paglets/j").json["busy"] == true).then_some(())
    });
    let moved = dispatch(&a, "j", &b.url);
    assert_eq!(moved.status, 200, "{:?}", moved.json);
    let busy = busy.join().expect("the busy message");
    assert_eq!(busy.status, 200, "{:?}", busy.json);
    assert_eq!(busy.json["reply"]["count"], 1);
    assert_eq!(
        state_of(&b, "j")["count"],
        1,
        "the busy message's change moved"
    );
}

#[test]
fn four_clients_messaging_a_counter_while_it_moves_have_every_increment_counted_once() {
    let (sa, sb) = (counter_site("a", &[]), counter_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(&a, "counter::Counter", "c", json!({}));
    let clients = Clients::start(4, &a, "c");
    clients.wait_for_more(40);
    let moved = dispatch(&a, "c", &b.url);
    assert_eq!(moved.status, 200, "{:?}", moved.json);
    clients.wait_for_more(40);
    assert!(clients.forwarded() > 0, "no increment went through a's 308");
    let acked = clients.finish();
    assert!(!holds(&a, "c"));
    assert_eq!(state_of(&b, "c")["count"], acked);
}

#[test]
fn a_paglet_dispatched_round_a_b_c_a_keeps_every_message_sent_through_a() {
    let sites = [
        counter_site("a", &[]),
        counter_site("b", &[]),
        counter_site("c", &[]),
    ];
    let [a, b, c] = [&sites[0], &sites[1], &sites[2]].map(Site::start);
    create(&a, "counter::Counter", "p", json!({}));
    let clients = Clients::start(1, &a, "p");
    clients.wait_for_more(10);
    for (from, to, name) in [(&a, &b, "b"), (&b, &c, "c"), (&c, &a, "a")] {
        let moved = dispatch(from, "p", &to.url);
        assert_eq!(moved.status, 200, "to {name}: {:?}", moved.json);
        assert_eq!(moved.json["host"], name);
        clients.wait_for_more(10);
    }
    assert!(clients.forwarded() > 0, "no message went through a forward");
    let acked = clients.finish();
    assert!(holds(&a, "p") && !holds(&b, "p") && !holds(&c, "p"));
    assert_eq!(state_of(&a, "p")["count"], acked);
    // b still forwards to c, and c to a.
    let (found, url) = follow("GET", &format!("{}/paglets/p", b.url), None, None).expect("GET");
    assert_eq!(found.status, 200, "{:?}", found.json);
    assert_eq!(url, format!("{}/paglets/p", a.url));
}

#[test]
fn clones_arrive_by_clone_here_or_elsewhere_and_a_taken_id_is_refused() {
    let (sa, sb) = (journal_site("a", &[]), journal_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(&a, "journal::Journal", "j", json!({"count": 5}));
    create(&b, "journal::Journal", "taken", json!({"count": 9}));

    let here = a.post("/paglets/j/clone", &json!({"id": "j2"}));
    assert_eq!(here.status, 201, "{:?}", here.json);
    assert_eq!(here.json, json!({"id": "j2", "host": "a", "url": a.url}));
    assert_eq!(state_of(&a, "j")["count"], 5);
    assert_eq!(state_of(&a, "j2")["count"], 5);
    assert!(
        hooks(&a, "j2").contains(&"arrived:clone:a".to_string()),
        "{:?}",
        hooks(&a, "j2")
    );
    assert!(
        hooks(&a, "j").contains(&"cloning".to_string()),
        "{:?}",
        hooks(&a, "j")
    );
    let again = a.post("/paglets/j/clone", &json!({"id": "j2"}));
    assert_eq!(
        (again.status, again.code()),
        (409, "conflict"),
        "{:?}",
        again.json
    );

    let there = a.post("/paglets/j/clone", &json!({"to": b.url}));
    assert_eq!(there.status, 201, "{:?}", there.json);
    assert_eq!(
        (&there.json["host"], &there.json["url"]),
        (&json!("b"), &json!(b.url))
    );
    let id = there.json["id"].as_str().expect("the clone's id");
    assert_ne!(id, "j");
    assert_eq!(state_of(&b, id)["count"], 5);
    assert!(
        hooks(&b, id).contains(&"arrived:clone:a".to_string()),
        "{:?}",
        hooks(&b, id)
    );

    let taken = a.post("/paglets/j/clone", &json!({"to": b.url, "id": "taken"}));
    assert_eq!(
        (taken.status, taken.code()),
        (409, "conflict"),
        "{:?}",
        taken.json
    );
    assert_eq!(state_of(&b, "taken")["count"], 9);
    assert!(holds(&a, "j"));

    // From its own handler, after the handler returns.
    let asked = a.send("j", "copy", json!({"id": "j3"}));
    assert_eq!(asked.status, 200, "{:?}", asked.json);
    assert_eq!(asked.json["reply"]["clone"], "j3");
    wait_for("the clone asked for by the handler", || {
        holds(&a, "j3").then_some(())
    });
}

#[test]
fn retract_brings_a_paglet_home_a_missing_one_is_404_and_a_paglet_can_dispatch_itself() {
    let (sa, sb) = (journal_site("a", &[]), journal_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(&a, "journal::Journal", "j", json!({"count": 6}));
    assert_eq!(dispatch(&a, "j", &b.url).status, 200);

    let back = a.post("/paglets/j/retract", &json!({"from": b.url}));
    assert_eq!(back.status, 200, "{:?}", back.json);
    assert_eq!(back.json, json!({"id": "j", "host": "a", "url": a.url}));
    assert_eq!(state_of(&a, "j")["count"], 6);
    assert!(
        hooks(&a, "j").contains(&"arrived:retract:b".to_string()),
        "{:?}",
        hooks(&a, "j")
    );
    assert!(!holds(&b, "j"));
    assert_eq!(
        b.get("/paglets/j").location,
        Some(format!("{}/paglets/j", a.url))
    );

    let missing = a.post("/paglets/nobody/retract", &json!({"from": b.url}));
    assert_eq!(
        (missing.status, missing.code()),
        (404, "not-found"),
        "{:?}",
        missing.json
    );

    // The handler asks; the move happens after it returned.
    let asked = a.send("j", "go", json!({"to": b.url}));
    assert_eq!(asked.status, 200, "{:?}", asked.json);
    wait_for("the journal to leave by itself", || {
        holds(&b, "j").then_some(())
    });
    assert_eq!(state_of(&b, "j")["count"], 6);
    // b holds it a moment before a reads b's answer and lets it go.
    wait_for("a to forward the journal", || {
        (a.get("/paglets/j").status == 308).then_some(())
    });
}

#[test]
fn a_deactivated_paglet_is_listed_inactive_woken_by_a_message_and_stays_inactive_across_a_restart()
{
    let site = Site::new("a", &[example("counter"), fixture("journal")], &[]);
    let mut host = site.start();
    create(&host, "counter::Counter", "c", json!({"count": 2}));

    let asleep = post_empty(&host, "/paglets/c/deactivate");
    assert_eq!(asleep.status, 200, "{:?}", asleep.json);
    assert_eq!(asleep.json, json!({"id": "c", "status": "inactive"}));
    let inactive = listed(&host, "inactive");
    assert!(
        inactive
            .iter()
            .any(|r| r["id"] == "c" && r["status"] == "inactive"),
        "{inactive:?}"
    );
    assert!(!listed(&host, "active").iter().any(|r| r["id"] == "c"));
    let detail = host.get("/paglets/c");
    assert_eq!(
        (detail.status, &detail.json["status"]),
        (200, &json!("inactive"))
    );
    assert!(detail.json.get("state").is_none(), "{:?}", detail.json);

    let woken = host.send("c", "increment", Value::Null);
    assert_eq!(woken.status, 200, "{:?}", woken.json);
    assert_eq!(woken.json["reply"]["count"], 3);
    assert_eq!(host.get("/paglets/c").json["status"], "active");

    assert_eq!(post_empty(&host, "/paglets/c/deactivate").status, 200);
    let awake = post_empty(&host, "/paglets/c/activate");
    assert_eq!(
        awake.json,
        json!({"id": "c", "status": "active"}),
        "{awake:?}"
    );
    assert_eq!(state_of(&host, "c")["count"], 3);
    assert_eq!(post_empty(&host, "/paglets/c/deactivate").status, 200);

    assert!(host.stop().success());
    host = site.start();
    assert!(
        listed(&host, "inactive").iter().any(|r| r["id"] == "c"),
        "{:?}",
        listed(&host, "all")
    );
    // A message queued for the sleeping paglet just before a restart is not lost.
    let queued = host.post(
        "/paglets/c/messages",
        &json!({"kind": "increment", "oneway": true}),
    );
    assert_eq!(queued.status, 202, "{:?}", queued.json);
    assert!(host.stop().success());
    host = site.start();
    wait_for("the queued increment", || {
        (host.send("c", "get", Value::Null).json["reply"]["count"] == 4).then_some(())
    });

    // A deactivation asked for by the paglet's own handler, and the hooks it runs.
    create(&host, "journal::Journal", "j", json!({}));
    assert_eq!(host.send("j", "sleep", Value::Null).status, 200);
    wait_for("the journal to sleep", || {
        listed(&host, "inactive")
            .iter()
            .any(|r| r["id"] == "j")
            .then_some(())
    });
    let reply = host.send("j", "get", Value::Null);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let lines: Vec<String> =
        serde_json::from_value(reply.json["reply"]["hooks"].clone()).expect("hooks");
    let at = |line: &str| lines.iter().position(|l| l == line);
    assert!(
        matches!((at("deactivating"), at("activated")), (Some(d), Some(a)) if d < a),
        "{lines:?}"
    );
}

#[test]
fn deactivate_and_activate_read_their_body_so_a_keep_alive_connection_goes_on() {
    use std::io::{Read, Write};
    let site = counter_site("a", &[]);
    let host = site.start();
    create(&host, "counter::Counter", "c", json!({"count": 1}));
    // Three requests on one connection, the first two with a `{}` body: a body left unread
    // would make the host close the connection after the first answer.
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}",
            host.authority()
        )
    };
    let requests = format!(
        "{}{}GET /paglets/c HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        post("/paglets/c/deactivate"),
        post("/paglets/c/activate"),
        host.authority()
    );
    let mut stream = host.connect();
    stream.write_all(requests.as_bytes()).expect("send");
    let mut answers = String::new();
    let _ = stream.read_to_string(&mut answers);
    assert_eq!(
        answers.matches("HTTP/1.1 200").count(),
        3,
        "three answers on one connection: {answers}"
    );
    assert!(
        answers.contains(r#"{"id":"c","status":"inactive"}"#),
        "{answers}"
    );
    assert!(answers.contains(r#""status":"active""#), "{answers}");
    // A field these routes do not take is refused.
    let odd = host.post("/paglets/c/deactivate", &json!({"now": true}));
    assert_eq!(odd.status, 400, "{:?}", odd.json);
}

#[test]
fn deactivating_a_busy_paglet_waits_for_its_message() {
    let site = journal_site("a", &[]);
    let host = Arc::new(site.start());
    create(&host, "journal::Journal", "j", json!({}));
    let busy = {
        let host = host.clone();
        std::thread::spawn(move || host.send("j", "busy", json!({"ms": 1500})))
    };
    wait_for("the journal to be busy", || {
        (host.get("/paglets/j").json["busy"] == true).then_some(())
    });
    let asleep = post_empty(&host, "/paglets/j/deactivate");
    assert_eq!(
        asleep.json,
        json!({"id": "j", "status": "inactive"}),
        "{asleep:?}"
    );
    let busy = busy.join().expect("the busy message");
    assert_eq!(busy.status, 200, "{:?}", busy.json);
    assert!(listed(&host, "inactive").iter().any(|r| r["id"] == "j"));
    assert_eq!(post_empty(&host, "/paglets/j/activate").status, 200);
    assert_eq!(
        state_of(&host, "j")["count"],
        1,
        "the busy message's change was stored"
    );
}

#[test]
fn oneway_messages_answer_202_arrive_in_order_and_failures_are_counted() {
    const N: u64 = 40;
    let site = Site::new("a", &[example("counter"), fixture("journal")], &[]);
    let host = site.start();
    create(&host, "counter::Counter", "c", json!({}));
    create(&host, "journal::Journal", "j", json!({}));
    let oneway = |id: &str, kind: &str, args: Value| {
        let answer = host.post(
            &format!("/paglets/{id}/messages"),
            &json!({"kind": kind, "args": args, "oneway": true}),
        );
        assert_eq!(answer.status, 202, "{kind}: {:?}", answer.json);
        answer.json["message_id"]
            .as_str()
            .expect("a message id")
            .to_string()
    };
    let mut ids = std::collections::HashSet::new();
    for n in 0..N {
        ids.insert(oneway("c", "increment", Value::Null));
        ids.insert(oneway("j", "note", json!({ "n": n })));
    }
    assert_eq!(ids.len() as u64, 2 * N, "message ids are distinct");
    wait_for("every increment", || {
        (host.send("c", "get", Value::Null).json["reply"]["count"] == N).then_some(())
    });
    let notes = wait_for("every note", || {
        let notes = state_of(&host, "j")["notes"].clone();
        (notes.as_array().map_or(0, Vec::len) as u64 == N).then_some(notes)
    });
    assert_eq!(
        notes,
        json!((0..N).collect::<Vec<_>>()),
        "delivered in order"
    );
    assert_eq!(host.get("/paglets/c").json["oneway_failed"], 0);

    oneway("c", "fly", Value::Null);
    oneway("c", "increment", json!({"by": "many"}));
    wait_for("two failed oneway messages counted", || {
        (host.get("/paglets/c").json["oneway_failed"] == 2).then_some(())
    });
    assert_eq!(state_of(&host, "c")["count"], N);
}

/// Waits until `source` settled paglet `id` (a `get` sent to it, following 308s, is
/// answered 200), asserts that exactly one of `hosts` holds it, with `count`, and returns
/// which.
fn one_copy(hosts: [&TestHost; 2], id: &str, count: u64) -> usize {
    let url = format!("{}/paglets/{id}/messages", hosts[0].url);
    let get = json!({"kind": "get"});
    wait_for("the transfer to settle", || {
        let (answer, _) = follow("POST", &url, Some(&get), None).expect("the source answers");
        (answer.status == 200).then_some(())
    });
    let holders: Vec<usize> = (0..2).filter(|&i| holds(hosts[i], id)).collect();
    assert_eq!(holders.len(), 1, "holders of {id}: {holders:?}");
    let holder = holders[0];
    assert_eq!(
        state_of(hosts[holder], id)["count"],
        count,
        "the copy's state"
    );
    assert_ne!(hosts[1 - holder].get(&format!("/paglets/{id}")).status, 200);
    holder
}

/// Waits until a message to paglet `id` on `host` is refused because its transfer is in
/// doubt; then returns what `GET /paglets/{id}` says meanwhile.
fn in_doubt(host: &TestHost, id: &str) -> Answer {
    let refused = wait_for("the source to hold the transfer in doubt", || {
        let answer = host.send(id, "get", Value::Null);
        (answer.status == 503).then_some(answer)
    });
    assert_eq!(refused.code(), "transfer-in-doubt", "{refused:?}");
    assert!(refused.retry_after.is_some(), "no Retry-After: {refused:?}");
    host.get(&format!("/paglets/{id}"))
}

/// Asserts that `GET /paglets/{id}` answered 503 `transfer-in-doubt` with `Retry-After`
/// during the doubt (checked last, so that the rest of a fault test runs either way).
fn get_was_in_doubt(shown: &Answer) {
    assert_eq!(
        (shown.status, shown.code(), shown.retry_after.is_some()),
        (503, "transfer-in-doubt", true),
        "GET during the doubt: {shown:?}"
    );
}

/// [`one_copy`], then both hosts restarted gracefully and the same again; asserts that the
/// target ended with the paglet.
fn one_copy_on_the_target_after_restarts(
    sites: [&Site; 2],
    hosts: [TestHost; 2],
    id: &str,
    count: u64,
) {
    let [source, target] = hosts;
    assert_eq!(
        one_copy([&source, &target], id, count),
        1,
        "the target has it"
    );
    assert!(source.stop().success() && target.stop().success());
    let [source, target] = sites.map(Site::start);
    assert_eq!(one_copy([&source, &target], id, count), 1, "after restarts");
}

#[test]
fn a_target_killed_inside_arrived_ends_with_exactly_one_copy_after_restarts() {
    let files = tempfile::tempdir().expect("temp dir");
    let hold = files.path().join("arriving");
    let (sa, sb) = (journal_site("a", &[]), journal_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(
        &a,
        "journal::Journal",
        "j",
        json!({"count": 5, "hold": hold, "hold_ms": 20000}),
    );
    let sending = dispatch_in_background(&a, "j", &b.url);
    wait_for("the target inside arrived", || hold.exists().then_some(()));
    b.kill();
    let shown = in_doubt(&a, "j");
    let b = sb.start();
    let answered = sending.join().expect("the dispatch thread");
    one_copy_on_the_target_after_restarts([&sa, &sb], [a, b], "j", 5);
    // Whatever the interrupted call said, it did not claim success for a dead target.
    assert_ne!(answered.map(|a| a.status).ok(), Some(200));
    get_was_in_doubt(&shown);
}

#[test]
fn a_source_killed_right_after_sending_ends_with_exactly_one_copy_after_restarts() {
    let files = tempfile::tempdir().expect("temp dir");
    let hold = files.path().join("arriving");
    let (sa, sb) = (journal_site("a", &[]), journal_site("b", &[]));
    let (a, b) = (sa.start(), sb.start());
    create(
        &a,
        "journal::Journal",
        "j",
        json!({"count": 5, "hold": hold, "hold_ms": 20000}),
    );
    let sending = dispatch_in_background(&a, "j", &b.url);
    wait_for("the target inside arrived", || hold.exists().then_some(()));
    a.kill();
    release(&hold);
    assert!(
        sending.join().expect("the dispatch thread").is_err(),
        "the source was killed"
    );
    let a = sa.start();
    one_copy_on_the_target_after_restarts([&sa, &sb], [a, b], "j", 5);
}

fn release(hold: &Path) {
    let mut release = hold.as_os_str().to_owned();
    release.push(".release");
    std::fs::write(release, b"").expect("write the release file");
}

#[test]
fn a_target_frozen_past_the_transfer_timeout_leaves_the_transfer_in_doubt_until_it_thaws() {
    let sa = journal_site("a", &["--transfer-timeout-ms", "1000"]);
    let sb = journal_site("b", &[]);
    let (a, b) = (sa.start(), sb.start());
    create(&a, "journal::Journal", "j", json!({"count": 5}));
    signal(&b, libc::SIGSTOP);
    let sending = dispatch_in_background(&a, "j", &b.url);
    let shown = in_doubt(&a, "j");
    // A message meanwhile is refused with 503, or held and delivered: never lost or doubled.
    let message = {
        let url = format!("{}/paglets/j/messages", a.url);
        std::thread::spawn(move || {
            follow("POST", &url, Some(&json!({"kind": "increment"})), None).map(|(a, _)| a)
        })
    };
    signal(&b, libc::SIGCONT);
    let dispatched = sending
        .join()
        .expect("the dispatch thread")
        .expect("an answer");
    assert!(
        dispatched.status == 200 || dispatched.code() == "transfer-in-doubt",
        "{dispatched:?}"
    );
    let message = message
        .join()
        .expect("the message thread")
        .expect("an answer");
    let delivered = match (message.status, message.code()) {
        (200, _) => 1,
        (503, "transfer-in-doubt") => 0,
        _ => panic!("the message during the doubt: {message:?}"),
    };
    one_copy_on_the_target_after_restarts([&sa, &sb], [a, b], "j", 5 + delivered);
    get_was_in_doubt(&shown);
}

/// A transfer body as a source sends it, for paglet `id` of `class` with `state`, of the
/// library `library` (a row of the target's `/libraries`).
fn transfer(transfer_id: &str, id: &str, class: &str, state: Value, library: &Value) -> Value {
    json!({
        "transfer_id": transfer_id,
        "reason": "dispatch",
        "source": {"name": "elsewhere", "url": closed_url()},
        "paglet": {
            "id": id,
            "class": class,
            "state": state,
            "state_version": 1,
            "library": library["name"],
            "library_version": library["version"],
            "library_sha256": library["sha256"],
            "created_at": 1.7e9,
            "messages_handled": 0,
        },
    })
}

/// The `/libraries` row of library `name` on `host`.
fn library(host: &TestHost, name: &str) -> Value {
    let libraries = host.get("/libraries").json;
    libraries
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no library {name}: {libraries:?}"))
}

#[test]
fn the_same_transfer_sent_twice_makes_one_paglet_even_across_a_restart() {
    let site = counter_site("b", &[]);
    let mut b = site.start();
    let counter = library(&b, "counter");
    let body = transfer(
        "t-1",
        "c",
        "counter::Counter",
        json!({"count": 7}),
        &counter,
    );
    let first = b.post("/mesh/arrivals", &body);
    assert_eq!(first.status, 200, "{:?}", first.json);
    assert_eq!(
        (
            &first.json["id"],
            &first.json["host"],
            &first.json["accepted"]
        ),
        (&json!("c"), &json!("b"), &json!("new"))
    );
    let second = b.post("/mesh/arrivals", &body);
    assert_eq!(
        (second.status, &second.json["accepted"]),
        (200, &json!("already")),
        "{second:?}"
    );
    assert!(b.stop().success());
    b = site.start();
    let third = b.post("/mesh/arrivals", &body);
    assert_eq!(
        (third.status, &third.json["accepted"]),
        (200, &json!("already")),
        "{third:?}"
    );
    let copies = listed(&b, "all").iter().filter(|r| r["id"] == "c").count();
    assert_eq!(copies, 1);
    assert_eq!(state_of(&b, "c")["count"], 7);

    let other = transfer(
        "t-2",
        "c",
        "counter::Counter",
        json!({"count": 8}),
        &counter,
    );
    let taken = b.post("/mesh/arrivals", &other);
    assert_eq!(
        (taken.status, taken.code()),
        (409, "conflict"),
        "{:?}",
        taken.json
    );
    assert_eq!(state_of(&b, "c")["count"], 7);
}

#[test]
fn arrivals_refuse_what_is_not_a_paglet_and_what_is_too_large() {
    let sa = Site::new("a", &[example("hello")], &[]);
    let sb = Site::new("b", &[example("hello")], &["--max-transfer", "4096"]);
    let (a, b) = (sa.start(), sb.start());
    for (what, body) in [
        ("not JSON", "a paglet".to_string()),
        ("an array", "[1, 2, 3]".to_string()),
        (
            "no paglet",
            json!({"transfer_id": "t-1", "reason": "dispatch"}).to_string(),
        ),
        (
            "a paglet without a class",
            json!({"transfer_id": "t-2", "reason": "dispatch",
                   "source": {"name": "x", "url": closed_url()}, "paglet": {"id": "p"}})
            .to_string(),
        ),
    ] {
        let answer = b.request("POST", "/mesh/arrivals", Some(&body), None);
        assert_eq!(
            (answer.status, answer.code()),
            (400, "bad-request"),
            "{what}: {:?}",
            answer.json
        );
    }
    let big = json!({"greeting": "x".repeat(8192)});
    let hello = library(&b, "hello");
    let oversized = b.post(
        "/mesh/arrivals",
        &transfer("t-3", "big", "hello::Hello", big.clone(), &hello),
    );
    assert_eq!(
        (oversized.status, oversized.code()),
        (413, "payload-too-large"),
        "{:?}",
        oversized.json
    );
    assert!(!holds(&b, "big"));

    // The same paglet dispatched there: refused, and it stays at home as it was.
    create(&a, "hello::Hello", "big", big.clone());
    let refused = dispatch(&a, "big", &b.url);
    assert!(refused.status >= 400, "{refused:?}");
    let home = a.get("/paglets/big");
    assert_eq!(home.status, 200, "a refusal leaves no doubt: {home:?}");
    assert_eq!(home.json["state"]["greeting"], big["greeting"]);
    assert!(!holds(&b, "big"));
}

#[test]
fn an_arrival_from_a_host_with_another_key_is_refused_with_401() {
    let sa = counter_site("a", &[]).with_key("key-of-a");
    let sb = counter_site("b", &[]).with_key("key-of-b");
    let (a, b) = (sa.start(), sb.start());
    let counter = library(&b, "counter");
    let body = transfer(
        "t-1",
        "c",
        "counter::Counter",
        json!({"count": 1}),
        &counter,
    )
    .to_string();
    let foreign = b.request("POST", "/mesh/arrivals", Some(&body), Some("key-of-a"));
    assert_eq!(
        (foreign.status, foreign.code()),
        (401, "unauthorized"),
        "{:?}",
        foreign.json
    );
    assert!(!holds(&b, "c"));

    create(&a, "counter::Counter", "c", json!({"count": 3}));
    let refused = dispatch(&a, "c", &b.url);
    assert!(refused.status >= 400, "{refused:?}");
    let home = a.get("/paglets/c");
    assert_eq!(home.status, 200, "a refusal leaves no doubt: {home:?}");
    stayed("another key", &a, &b, "c", 3);
}
