//! Broken files in a scanned folder: each is reported with a reason, the host keeps serving
//! the good libraries beside them.

use std::os::unix::fs::PermissionsExt;

use paglets_e2e::{PluginDir, TestHost, example, fixture, wait_for};
use serde_json::{Value, json};

fn library_error(host: &TestHost, file: &str) -> Option<String> {
    let libraries = host.get("/libraries").json;
    libraries
        .as_array()?
        .iter()
        .find(|l| l["path"].as_str().is_some_and(|p| p.ends_with(file)))
        .and_then(|l| l["error"].as_str().map(str::to_string))
}

#[test]
fn broken_files_are_reported_and_the_good_libraries_load() {
    let plugins = PluginDir::with_examples();
    plugins.write("libtext.so", b"this is not a library\n");
    plugins.write("libempty.so", b"");
    plugins.add_as(&paglets_e2e::paglets_bin(), "libexe.so");
    let counter = std::fs::read(example("counter")).expect("read libcounter");
    plugins.write("libcut.so", &counter[..counter.len() / 3]);
    plugins.add(&fixture("old-abi"));
    plugins.add_as(&fixture("dup-counter"), "libzz_dup_counter.so");
    let host = TestHost::start(&[plugins.path()], &[]);
    for (file, reason) in [
        ("libtext.so", "not an ELF file"),
        ("libempty.so", "empty"),
        ("libexe.so", "not a loadable library"),
        ("libcut.so", "truncated"),
        ("libold_abi.so", "ABI 999"),
        (
            "libzz_dup_counter.so",
            "class counter::Counter is already provided by",
        ),
    ] {
        let error = library_error(&host, file).unwrap_or_else(|| panic!("no error for {file}"));
        assert!(
            error.contains(file) && error.contains(reason),
            "{file}: {error}"
        );
    }
    assert_eq!(host.get("/health").json["libraries"], 4);
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
}

#[test]
fn a_library_replaced_by_garbage_keeps_the_old_code_serving() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("counter::Counter", json!({}));
    host.send(&id, "increment", Value::Null);
    std::fs::write(&file, b"garbage").expect("overwrite");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.status, 200);
    assert_eq!(rescan.json["errors"][0]["path"], json!(file));
    assert!(library_error(&host, "libcounter.so").is_some_and(|e| e.contains("not an ELF file")));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        2
    );
    // The loaded code is still listed, so new instances work too.
    assert_eq!(
        host.post("/paglets", &json!({"class": "counter::Counter"}))
            .status,
        201
    );
}

#[test]
fn a_removed_library_keeps_its_instances_and_refuses_new_ones() {
    let plugins = PluginDir::new();
    let file = plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("counter::Counter", json!({"count": 7}));
    std::fs::remove_file(&file).expect("remove");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.json["removed"], json!([file]));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        8
    );
    let refused = host.post("/paglets", &json!({"class": "counter::Counter"}));
    assert_eq!(refused.status, 404);
    let message = refused.json["error"]["message"].as_str().expect("message");
    assert!(message.contains("removed"), "{message}");
    // Dropping the file back in makes the class available again.
    plugins.add(&example("counter"));
    host.post("/admin/rescan", &json!({}));
    assert_eq!(
        host.post("/paglets", &json!({"class": "counter::Counter"}))
            .status,
        201
    );
}

#[test]
fn the_loser_of_a_collision_loads_when_the_winner_disappears() {
    let plugins = PluginDir::new();
    let winner = plugins.add(&example("counter"));
    plugins.add_as(&fixture("dup-counter"), "libzz_dup_counter.so");
    let host = TestHost::start(&[plugins.path()], &[]);
    assert!(library_error(&host, "libzz_dup_counter.so").is_some());
    std::fs::remove_file(&winner).expect("remove the winner");
    host.post("/admin/rescan", &json!({}));
    assert_eq!(library_error(&host, "libzz_dup_counter.so"), None);
    let classes = host.get("/classes").json;
    assert!(
        classes[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("libzz_dup_counter.so")),
        "{classes:?}"
    );
}

#[test]
fn a_world_writable_folder_is_refused_unless_insecure_paths_are_allowed() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    std::fs::set_permissions(plugins.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777");
    let host = TestHost::start(&[plugins.path()], &[]);
    assert_eq!(host.get("/health").json["libraries"], 0);
    assert_eq!(
        host.post("/paglets", &json!({"class": "counter::Counter"}))
            .status,
        404
    );
    let folder = plugins.path().to_str().expect("utf-8");
    wait_for("the refusal in the log", || {
        let log = host.log();
        (log.contains(folder) && log.contains("writable by every user")).then_some(())
    });
    let libraries = host.get("/libraries").json;
    assert_eq!(libraries[0]["path"], json!(folder), "{libraries:?}");
    assert!(
        libraries[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("writable by every user"))
    );
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(
        rescan.json["errors"][0]["path"],
        json!(folder),
        "{:?}",
        rescan.json
    );
    assert!(
        rescan.json["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("writable by every user")),
        "{:?}",
        rescan.json
    );
    assert_eq!(host.stop().code(), Some(0));

    let host = TestHost::start(&[plugins.path()], &["--allow-insecure-paths"]);
    assert_eq!(host.get("/health").json["libraries"], 1);
    assert!(
        !host.log().contains("writable by every user"),
        "{}",
        host.log()
    );
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
}

#[test]
fn a_folder_that_turns_world_writable_keeps_what_it_had_loaded() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    let host = TestHost::start(&[plugins.path()], &[]);
    let id = host.create("counter::Counter", json!({}));
    std::fs::set_permissions(plugins.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod 0777");
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.json["removed"], json!([]), "{:?}", rescan.json);
    assert!(
        rescan.json["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("writable by every user")),
        "{:?}",
        rescan.json
    );
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
    assert_eq!(
        host.post("/paglets", &json!({"class": "counter::Counter"}))
            .status,
        201
    );
}
