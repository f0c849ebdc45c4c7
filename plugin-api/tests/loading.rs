//! The loader against bad and misbehaving library files: each is refused (or its panics are
//! contained) with the documented [`LoadError`] / [`PagletError`], and the process survives.
//!
//! The fixtures live in `tests/fixtures/` and are built once, on first use, by the end-to-end
//! harness (`paglets_e2e::fixtures_dir`) into `tests/fixtures/target`. Every test loads a
//! private copy of its file, because glibc deduplicates `dlopen` by path and libraries are
//! never unloaded.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use plugin_api::loader::{HostContext, Instance, Library};
use plugin_api::{Hook, LoadError, PAGLETS_ABI, PagletError};
use tempfile::TempDir;

/// A built fixture file, e.g. `debug/libpanicky.so`.
fn fixture(relative: &str) -> PathBuf {
    let path = paglets_e2e::fixtures_dir().join(relative);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A private copy of a fixture (or any file), named `name`, in its own temp dir.
struct TempFile {
    _dir: TempDir,
    path: PathBuf,
}

fn copy_of(source: &Path, name: &str) -> TempFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::copy(source, &path).expect("copy the library");
    TempFile { _dir: dir, path }
}

fn file_with(name: &str, contents: &[u8]) -> TempFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write the file");
    TempFile { _dir: dir, path }
}

fn open_fixture(relative: &str) -> Library {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    let copy = copy_of(&fixture(relative), name);
    Library::open(&copy.path).unwrap_or_else(|e| panic!("{relative} should load: {e}"))
}

/// Opens `file`, expects a refusal, and checks that its message names the file.
fn refused(file: &TempFile) -> LoadError {
    let err = Library::open(&file.path).expect_err("the loader should refuse the file");
    let shown = err.to_string();
    assert!(
        shown.contains(&file.path.display().to_string()),
        "the error does not name the file: {shown}"
    );
    err
}

/// The test's host context: records log lines, refuses sending and creating.
#[derive(Clone, Default)]
struct Host {
    logs: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl HostContext for Host {
    fn id(&self) -> String {
        "it-1".into()
    }

    fn host_name(&self) -> String {
        "loading-test".into()
    }

    fn send(&self, to: &str, _kind: &str, _args: &str) -> Result<String, PagletError> {
        Err(PagletError::failed(format!("no paglet {to} here")))
    }

    fn create(&self, class: &str, _state: &str, _id: Option<&str>) -> Result<String, PagletError> {
        Err(PagletError::failed(format!("cannot create {class} here")))
    }

    fn log(&self, level: tracing::Level, target: &str, message: &str) {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{level} {target}: {message}"));
    }
}

fn create(library: &Library, class: &str, state: serde_json::Value) -> (Instance, Host) {
    let host = Host::default();
    let instance = library
        .create(class, Some(&state), host.clone())
        .unwrap_or_else(|e| panic!("create {class}: {e}"));
    (instance, host)
}

fn panicked(result: Result<impl std::fmt::Debug, PagletError>) -> String {
    match result {
        Err(PagletError::Panicked(message)) => message,
        other => panic!("expected PagletError::Panicked, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bad files: each is refused with its variant. `all_bad_files` lists them for the last test.

fn text_file() -> TempFile {
    file_with("libx.so", b"this is not a library\n")
}

fn empty_file() -> TempFile {
    file_with("libempty.so", b"")
}

fn executable() -> TempFile {
    let exe = std::env::current_exe().expect("the test binary");
    copy_of(&exe, "libexe.so")
}

fn plain_c() -> TempFile {
    copy_of(&fixture("plain-c/libplain.so"), "libplain.so")
}

/// The counter library cut to `1/divisor` of its length. A third of a debug build still holds
/// every loadable segment (most of the file is debug info); a hundredth cuts into them, which
/// would make `dlopen` fault with SIGBUS if the loader did not check first.
fn truncated_counter(divisor: usize) -> TempFile {
    let bytes = std::fs::read(fixture("debug/libcounter.so")).expect("read counter");
    file_with("libcounter.so", &bytes[..bytes.len() / divisor])
}

fn old_abi() -> TempFile {
    copy_of(&fixture("debug/libold_abi.so"), "libold_abi.so")
}

fn bad_describe() -> TempFile {
    copy_of(&fixture("debug/libbad_describe.so"), "libbad_describe.so")
}

fn abort() -> TempFile {
    copy_of(&fixture("abort/libabort.so"), "libabort.so")
}

#[test]
fn a_text_file_is_not_loadable() {
    let err = refused(&text_file());
    assert!(matches!(err, LoadError::NotLoadable { .. }), "{err:?}");
}

#[test]
fn an_empty_file_is_not_loadable() {
    let err = refused(&empty_file());
    assert!(matches!(err, LoadError::NotLoadable { .. }), "{err:?}");
}

#[test]
fn an_executable_is_not_loadable() {
    let err = refused(&executable());
    assert!(matches!(err, LoadError::NotLoadable { .. }), "{err:?}");
}

#[test]
fn a_plain_c_library_has_no_root_module() {
    let err = refused(&plain_c());
    assert!(matches!(err, LoadError::NoRootModule { .. }), "{err:?}");
}

#[test]
fn a_truncated_library_is_refused_before_dlopen_and_retryable() {
    for divisor in [3, 100] {
        let err = refused(&truncated_counter(divisor));
        assert!(
            matches!(err, LoadError::Truncated { .. }),
            "1/{divisor}: {err:?}"
        );
        assert!(err.is_retryable());
    }
}

#[test]
fn the_previous_abi_version_is_refused_in_one_line_with_both_numbers() {
    assert_eq!(
        PAGLETS_ABI, 3,
        "the old-abi fixture declares the version before this one"
    );
    let err = refused(&old_abi());
    assert!(
        matches!(
            err,
            LoadError::IncompatibleAbi {
                found: 2,
                expected: PAGLETS_ABI,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(
        text.contains("built against paglets ABI 2, this host speaks ABI 3"),
        "{text}"
    );
}

#[test]
fn a_library_whose_description_panics_is_refused() {
    let err = refused(&bad_describe());
    assert!(matches!(err, LoadError::DescribeFailed { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("BadDefault::default always panics"),
        "{err}"
    );
}

#[test]
fn a_library_built_with_panic_abort_is_refused() {
    let err = refused(&abort());
    assert!(matches!(err, LoadError::PanicAbort { .. }), "{err:?}");
}

#[test]
fn a_panic_in_handle_message_is_contained_and_the_instance_stays_usable() {
    let library = open_fixture("debug/libpanicky.so");
    let (mut instance, host) = create(&library, "panicky::Panicky", serde_json::json!({}));
    let message = panicked(instance.handle("panic", "null"));
    assert!(
        message.contains("panicky::Panicky") && message.contains("Panicky was asked to panic"),
        "{message}"
    );
    assert_eq!(
        instance.handle("ping", "null").as_deref(),
        Ok(r#"{"ok":true}"#)
    );
    assert!(
        host.logs().iter().any(|l| l.contains("asked to panic")),
        "the panic is not in the log: {:?}",
        host.logs()
    );
}

#[test]
fn panics_in_hooks_are_contained() {
    let library = open_fixture("debug/libpanicky.so");
    for (hook, name) in [
        (Hook::Created, "created"),
        (
            Hook::Arrived(plugin_api::Arrival::new(
                plugin_api::ArrivalReason::Restore,
                "loading-test",
            )),
            "arrived",
        ),
        (Hook::Disposing, "disposing"),
    ] {
        let state = serde_json::json!({ "panic_in": name });
        let (mut instance, _host) = create(&library, "panicky::Panicky", state);
        let message = panicked(instance.hook(hook));
        assert!(
            message.contains(&format!("Panicky panics in {name}")),
            "{message}"
        );
        assert_eq!(
            instance.handle("ping", "null").as_deref(),
            Ok(r#"{"ok":true}"#),
            "after a panic in {name}"
        );
    }
}

#[test]
fn a_panic_in_drop_is_contained() {
    let library = open_fixture("debug/libpanicky.so");
    let (instance, host) = create(
        &library,
        "panicky::Panicky",
        serde_json::json!({"panic_in": "drop"}),
    );
    drop(instance);
    assert!(
        host.logs()
            .iter()
            .any(|l| l.contains("while dropping") && l.contains("Panicky panics in drop")),
        "the panic is not in the log: {:?}",
        host.logs()
    );
}

#[test]
fn a_panic_while_serialising_the_state_is_contained() {
    let library = open_fixture("debug/libpanicky.so");
    let (mut instance, _host) = create(&library, "panicky::BadState", serde_json::json!({}));
    assert_eq!(instance.state().as_deref(), Ok(r#"{"boom":false}"#));
    instance.handle("boom", "null").expect("boom");
    let message = panicked(instance.state());
    assert!(
        message.contains("panicky::BadState") && message.contains("cannot serialise itself"),
        "{message}"
    );
}

#[test]
fn two_libraries_declaring_the_same_class_both_load() {
    // The loader checks one file at a time; refusing the second owner of a class is the
    // registry's job (`discover`, the host). Here: both really do declare it.
    let example = open_fixture("debug/libcounter.so");
    let duplicate = open_fixture("debug/libdup_counter.so");
    for library in [&example, &duplicate] {
        assert_eq!(library.info().name, "counter");
        assert!(
            library.class("counter::Counter").is_some(),
            "{:?}",
            library.info()
        );
    }
}

#[test]
fn the_good_library_still_loads_after_all_the_bad_ones() {
    for bad in [
        text_file(),
        empty_file(),
        executable(),
        plain_c(),
        truncated_counter(3),
        truncated_counter(100),
        old_abi(),
        bad_describe(),
        abort(),
    ] {
        refused(&bad);
    }
    let panicky = open_fixture("debug/libpanicky.so");
    let (mut instance, _host) = create(&panicky, "panicky::Panicky", serde_json::json!({}));
    panicked(instance.handle("panic", "null"));

    let counter = open_fixture("debug/libcounter.so");
    let (mut instance, _host) = create(&counter, "counter::Counter", serde_json::json!({}));
    instance.hook(Hook::Created).expect("created");
    assert_eq!(
        instance.handle("increment", r#"{"by": 2}"#).as_deref(),
        Ok(r#"{"count":2}"#)
    );
}
