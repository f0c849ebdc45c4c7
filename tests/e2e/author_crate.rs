//! A plugin crate outside the workspace that depends on plugin-api by path builds and passes
//! its own tests with the harness, and `paglets discover` lists its class. The crate's files
//! are the ones `docs/src/quickstart.md` shows.

use std::path::Path;
use std::process::Command;

use paglets_e2e::{PluginDir, paglets, root, run_ok};
use serde_json::Value;

/// `src/lib.rs`, as in the quickstart.
const LIB_RS: &str = r#"//! `my_paglet::Greeter`: greets by name and remembers how often it did.

use plugin_api::{Context, Message, Paglet, PagletError, Reply};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The paglet. Its fields are its state: the host saves, shows and migrates them as JSON.
#[derive(Default, Serialize, Deserialize)]
pub struct Greeter {
    greeted: u64,
}

/// The arguments of `greet`.
#[derive(Deserialize)]
struct Greet {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".into()
}

impl Paglet for Greeter {
    const DESCRIPTION: &'static str = "Greets: greet {name?}.";

    fn handle_message(&mut self, _ctx: &Context, msg: Message) -> Result<Reply, PagletError> {
        match msg.kind.as_str() {
            "greet" => {
                let Greet { name } = msg.args()?;
                self.greeted += 1;
                let message = format!("Hello, {name}!");
                Reply::new(json!({ "message": message, "greeted": self.greeted }))
            }
            _ => Err(msg.not_handled()),
        }
    }
}

plugin_api::export_paglets!(Greeter);

#[cfg(test)]
mod tests {
    use super::Greeter;
    use plugin_api::{PagletError, testing::PagletTest};
    use serde_json::{Value, json};

    #[test]
    fn greets_and_counts() {
        let test = PagletTest::new::<Greeter>();
        let id = test.create(Greeter::default()).unwrap();
        let reply = test.send(&id, "greet", json!({"name": "Ada"})).unwrap();
        assert_eq!(reply, json!({"message": "Hello, Ada!", "greeted": 1}));
        assert_eq!(test.state(&id).unwrap(), json!({"greeted": 1}));
        let err = test.send(&id, "fly", Value::Null);
        assert_eq!(err, Err(PagletError::NotHandled { kind: "fly".into() }));
    }
}
"#;

/// `tests/library.rs`, as in the quickstart.
const LIBRARY_RS: &str = r#"//! The built cdylib, loaded through the host's own loader.

use plugin_api::testing::{PagletTest, built_library};
use serde_json::json;

#[test]
fn the_built_library_greets() {
    let path = built_library("my-paglet").unwrap();
    let test = PagletTest::from_library(&path).unwrap();
    let id = test
        .create_class("my_paglet::Greeter", json!({"greeted": 41}))
        .unwrap();
    let reply = test.send(&id, "greet", json!({})).unwrap();
    assert_eq!(reply, json!({"message": "Hello, world!", "greeted": 42}));
}
"#;

/// `Cargo.toml`, as in the quickstart, with `path` pointing at this checkout.
fn cargo_toml(plugin_api: &Path) -> String {
    let path = plugin_api.to_str().expect("a UTF-8 checkout path");
    assert!(!path.contains('\''), "{path} fits a TOML literal string");
    format!(
        r#"[package]
name = "my-paglet"
version = "0.1.0"
edition = "2024"
rust-version = "1.95"

# Not a member of any enclosing workspace: this crate is its own workspace root.
[workspace]

[lib]
# cdylib: the library a host loads; rlib: lets `cargo test` link the crate into tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
plugin-api = {{ package = "paglets-api", path = '{path}' }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
plugin-api = {{ package = "paglets-api", path = '{path}', features = ["testing"] }}
"#
    )
}

/// `cargo <args> --offline` in `dir`, into the fixtures' target dir: it shares compiled
/// dependencies with them and is not the dir the outer cargo holds locked.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    run_ok(
        Command::new(env!("CARGO"))
            .args(args)
            .arg("--offline")
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", root().join("tests/fixtures/target")),
    )
}

#[test]
fn an_outside_crate_builds_passes_its_tests_and_is_discovered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let krate = dir.path().join("my-paglet");
    std::fs::create_dir_all(krate.join("src")).expect("mkdir src");
    std::fs::create_dir_all(krate.join("tests")).expect("mkdir tests");
    // The workspace's lock file, so the same dependency versions are used (and are cached).
    std::fs::copy(root().join("Cargo.lock"), krate.join("Cargo.lock")).expect("copy Cargo.lock");
    std::fs::write(
        krate.join("Cargo.toml"),
        cargo_toml(&root().join("plugin-api")),
    )
    .expect("write Cargo.toml");
    std::fs::write(krate.join("src/lib.rs"), LIB_RS).expect("write src/lib.rs");
    std::fs::write(krate.join("tests/library.rs"), LIBRARY_RS).expect("write tests/library.rs");

    let tested = cargo(&krate, &["test"]);
    let stdout = String::from_utf8_lossy(&tested.stdout);
    let stderr = String::from_utf8_lossy(&tested.stderr);
    for line in [
        "test tests::greets_and_counts ... ok",
        "test the_built_library_greets ... ok",
    ] {
        assert!(
            stdout.contains(line),
            "missing `{line}`:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(
        stderr.contains("Running unittests src/lib.rs")
            && stderr.contains("Running tests/library.rs"),
        "{stderr}"
    );

    // Step 3: `cargo build` leaves the library in target/debug, and discover lists it.
    cargo(&krate, &["build"]);
    let built = root().join("tests/fixtures/target/debug/libmy_paglet.so");
    assert!(built.is_file(), "{} was not built", built.display());
    let plugins = PluginDir::new();
    plugins.add(&built);
    let folder = plugins.path().to_str().expect("utf-8");
    let output = paglets(&["discover", "--paths", folder, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is only JSON");
    let classes: Vec<&str> = report["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .filter_map(|c| c["class"].as_str())
        .collect();
    assert_eq!(classes, ["my_paglet::Greeter"], "{report}");
    assert_eq!(
        report["classes"][0]["state_template"],
        serde_json::json!({"greeted": 0})
    );
    assert_eq!(report["libraries"][0]["name"], "my_paglet", "{report}");
    let table = paglets(&["discover", "--paths", folder]);
    assert_eq!(table.status.code(), Some(0), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("my_paglet::Greeter")
            && text.contains("Greets: greet {name?}.")
            && text.contains("1 libraries, 1 classes, 0 errors"),
        "{text}"
    );
}
