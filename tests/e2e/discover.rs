//! `paglets discover`: exit codes and the JSON shape, on the built examples.

use paglets_e2e::{EXAMPLES, PluginDir, example, fixture, paglets};
use serde_json::Value;

#[test]
fn the_examples_discover_cleanly() {
    let plugins = PluginDir::with_examples();
    let dir = plugins.path().to_str().expect("utf-8");
    let output = paglets(&["discover", "--paths", dir, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is only JSON");
    assert_eq!(
        report["libraries"].as_array().map(Vec::len),
        Some(EXAMPLES.len())
    );
    assert_eq!(report["errors"], serde_json::json!([]));
    let classes: Vec<&str> = report["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .filter_map(|c| c["class"].as_str())
        .collect();
    assert_eq!(
        classes,
        [
            "counter::Counter",
            "hello::Echo",
            "hello::Hello",
            "pi::Pi",
            "server_info::ServerInfo"
        ]
    );
    for key in [
        "class",
        "library",
        "library_version",
        "description",
        "state_template",
        "path",
    ] {
        assert!(report["classes"][0].get(key).is_some(), "classes[].{key}");
    }
    for key in [
        "path",
        "loaded_from",
        "sha256",
        "name",
        "version",
        "classes",
        "loaded_at",
        "generation",
        "loaded_copies",
    ] {
        assert!(
            report["libraries"][0].get(key).is_some(),
            "libraries[].{key}"
        );
    }
    let table = paglets(&["discover", "--paths", dir]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("counter::Counter") && text.contains("0 errors"),
        "{text}"
    );
}

#[test]
fn a_broken_file_is_exit_1_and_named() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    plugins.write("libbroken.so", b"text");
    let output = paglets(&[
        "discover",
        "--paths",
        plugins.path().to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["libraries"].as_array().map(Vec::len), Some(1));
    let error = &report["errors"][0];
    assert!(
        error["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("libbroken.so"))
    );
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("not an ELF file"))
    );
}

#[test]
fn a_missing_folder_is_a_usage_error() {
    let output = paglets(&["discover", "--paths", "/nonexistent/paglets"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/paglets"));
    assert_eq!(paglets(&["discover"]).status.code(), Some(2));
}

#[test]
fn a_library_that_prints_while_loading_leaves_the_json_clean() {
    let plugins = PluginDir::new();
    plugins.add(&example("counter"));
    plugins.add(&fixture("noisy"));
    let output = paglets(&[
        "discover",
        "--paths",
        plugins.path().to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not only JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let mut names: Vec<&str> = report["libraries"]
        .as_array()
        .expect("libraries")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["counter", "noisy"], "{report}");
    assert!(
        report["classes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["class"] == "noisy::Noisy")),
        "{report}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("noisy default"), "stderr: {stderr}");
}

#[test]
fn a_folder_without_libraries_is_exit_1_unless_empty_is_allowed() {
    let empty = PluginDir::new();
    empty.write("notes.txt", b"no libraries here");
    let full = PluginDir::new();
    full.add(&example("counter"));
    let (empty_dir, full_dir) = (
        empty.path().to_str().expect("utf-8"),
        full.path().to_str().expect("utf-8"),
    );
    let output = paglets(&["discover", "--paths", full_dir, empty_dir, "--json"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["errors"][0]["path"], empty_dir, "{report}");
    let error = report["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("no paglet libraries in {empty_dir}")),
        "{report}"
    );
    let table = paglets(&["discover", "--paths", empty_dir]);
    assert_eq!(table.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&table.stdout).contains("no paglet libraries in"));
    let allowed = paglets(&["discover", "--paths", full_dir, empty_dir, "--allow-empty"]);
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
}
