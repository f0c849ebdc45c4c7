//! Broken files in a scanned folder: each is reported with a reason, the host keeps serving
//! the good libraries beside them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use paglets_e2e::{PluginDir, TestHost, example, fixture, paglets, run_ok, wait_for};
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
        (
            "libold_abi.so",
            "built against paglets ABI 2, this host speaks ABI 3",
        ),
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

#[test]
fn group_writable_and_foreign_files_and_folders_are_refused_and_the_rest_served() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    let group = plugins.add(&example("hello"));
    let mode = std::fs::metadata(&group)
        .expect("stat")
        .permissions()
        .mode();
    std::fs::set_permissions(&group, std::fs::Permissions::from_mode(mode | 0o020))
        .expect("chmod g+w");
    let foreign = plugins.add(&example("pi"));
    std::os::unix::fs::chown(&foreign, Some(65534), None).expect("chown");
    let others = PluginDir::new();
    others.add(&example("server-info"));
    std::os::unix::fs::chown(others.path(), Some(65534), None).expect("chown");
    let refusals = |errors: &Value| {
        let errors = errors.as_array().cloned().unwrap_or_default();
        let find = |path: &Path| {
            errors
                .iter()
                .find(|e| e["path"] == json!(path))
                .and_then(|e| e["error"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        (find(&group), find(&foreign), find(others.path()))
    };
    let check = |(group_err, foreign_err, folder_err): (String, String, String)| {
        assert!(group_err.contains("writable by its group"), "{group_err:?}");
        assert!(
            foreign_err.contains("another user (uid 65534)"),
            "{foreign_err:?}"
        );
        assert!(
            folder_err.contains("another user (uid 65534)"),
            "{folder_err:?}"
        );
    };

    let host = TestHost::start(&[plugins.path(), others.path()], &[]);
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
    for class in ["hello::Hello", "pi::Pi", "server_info::ServerInfo"] {
        let answer = host.post("/paglets", &json!({"class": class}));
        assert_eq!(answer.status, 404, "{class}: {:?}", answer.json);
    }
    let libraries: Value = host
        .get("/libraries")
        .json
        .as_array()
        .expect("a list")
        .iter()
        .filter(|l| l.get("error").is_some())
        .map(|l| json!({"path": l["path"], "error": l["error"]}))
        .collect();
    check(refusals(&libraries));
    // Logged before the scan answered; the harness reads stderr a moment later.
    wait_for(
        "the log to name the group-writable file and its owner",
        || {
            let log = host.log();
            (log.contains("writable by its group") && log.contains("uid 65534")).then_some(())
        },
    );

    let output = paglets(&[
        "discover",
        "--paths",
        plugins.path().to_str().expect("utf-8"),
        others.path().to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    check(refusals(&report["errors"]));
}

fn mkfifo(path: &Path) {
    run_ok(Command::new("mkfifo").arg(path));
}

#[test]
fn a_fifo_named_like_a_library_blocks_nothing() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    mkfifo(&plugins.path().join("libx.so"));
    // Before the fix the first scan opened the FIFO and waited for a writer forever.
    let host = TestHost::start(&[plugins.path()], &["--watch"]);
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
    // One more FIFO, then a library after it: the watcher's scan gets past the FIFO.
    mkfifo(&plugins.path().join("liby.so"));
    plugins.add(&example("hello"));
    wait_for("the watcher to load hello past the FIFO", || {
        let classes = host.get("/classes").json;
        classes
            .as_array()?
            .iter()
            .any(|c| c["class"] == "hello::Hello")
            .then_some(())
    });
    assert_eq!(host.get("/health").status, 200);
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        2
    );
    let libraries = host.get("/libraries").json;
    let paths: Vec<&str> = libraries
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["path"].as_str())
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| !p.ends_with("libx.so") && !p.ends_with("liby.so")),
        "{libraries}"
    );
}

#[test]
fn big_junk_and_refused_files_are_checked_before_copying_and_leave_no_copies() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    // 3 GiB that start like an ELF file, sparse: nothing is written but the first bytes.
    let big = plugins.write("libbig.so", b"\x7fELF");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .and_then(|f| f.set_len(3 << 30))
        .expect("a sparse 3 GiB file");
    plugins.write("libjunk.so", b"junk that is no library");
    // Pass the checks before copying, and are refused after: their copies are deleted.
    plugins.add(&fixture("dup-counter"));
    plugins.add(&fixture("old-abi"));
    let host = TestHost::start(&[plugins.path()], &["--max-library-size", "64MiB"]);
    let error = |file: &str| library_error(&host, file).unwrap_or_default();
    assert!(
        error("libbig.so")
            .contains("3221225472 bytes, more than the --max-library-size of 67108864 bytes"),
        "{}",
        error("libbig.so")
    );
    assert!(
        error("libjunk.so").contains("not an ELF file"),
        "{}",
        error("libjunk.so")
    );
    assert!(
        error("libdup_counter.so").contains("already provided by"),
        "{}",
        error("libdup_counter.so")
    );
    assert!(
        error("libold_abi.so").contains("ABI"),
        "{}",
        error("libold_abi.so")
    );
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        1
    );
    // The copies folder holds the counter's copy, and nothing of the refused files.
    let copies: Vec<String> = std::fs::read_dir(host.persistence.join("libs"))
        .expect("the copies folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].starts_with("libcounter-"), "{copies:?}");
}
