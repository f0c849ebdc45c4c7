//! The cost of the ABI boundary: one message, and opening a library.
//!
//! `cargo bench -p paglets-api --features testing --bench abi`
//!
//! - `message/in-process`: one `increment` to `counter::Counter` through
//!   [`PagletTest::send`], i.e. through the same `extern "C"` shims a library exports (JSON
//!   encoding of args and reply, panic guard, the harness's instance lookup and lock).
//! - `message/library`: the same through the built `libcounter.so`, one level lower:
//!   [`Instance::handle`] with JSON text, no harness around it.
//! - `open/same-path`: [`Library::open`] of a path already opened. glibc deduplicates `dlopen`
//!   by path (it only bumps a reference count), so this measures the loader's own checks:
//!   reading the file for the ELF check, the symbol lookup, the ABI and layout checks and the
//!   library describing itself.
//! - `open/fresh-copy`: [`Library::open`] of a new copy of the library each iteration (the
//!   copy is made outside the timing): a real `dlopen` with relocation and initialisers, plus
//!   the checks. This is what a reload costs. Libraries are never unloaded, so every iteration
//!   leaves one more library mapped: the group keeps the run short.
//!
//! - `migrate/1000-instances`: [`Instance::migrate_to`] of 1,000 counters of one copy of
//!   `libcounter.so` to a second copy: what a reload does per library once it is loaded
//!   (state out, the checked read of `state::read` with its dropped-key check, the arrival
//!   hook), without the host's job queues.
//! - `read/plain` and `read/checked`: one counter state read with `serde_json::from_value`
//!   (the reference) and with `plugin_api::state::read` (the dropped-key check through
//!   `serde_ignored` and `serde_path_to_error`), in the same run.
//!
//! The `library`, `open` and `migrate` benchmarks need `libcounter.so`. cargo builds it next to this
//! bench because `counter` (a `["cdylib", "rlib"]` crate) is a dev-dependency; when it is
//! missing they are skipped with a note.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use plugin_api::PagletError;
use plugin_api::loader::{HostContext, Library};
use plugin_api::testing::{PagletTest, built_library};
use serde_json::Value;

/// A host that answers nothing: the counter never calls it.
struct NoHost;

impl HostContext for NoHost {
    fn id(&self) -> String {
        "bench-1".into()
    }

    fn host_name(&self) -> String {
        "bench".into()
    }

    fn send(&self, _: &str, _: &str, _: &str) -> Result<String, PagletError> {
        Err(PagletError::failed("no host"))
    }

    fn create(&self, _: &str, _: &str, _: Option<&str>) -> Result<String, PagletError> {
        Err(PagletError::failed("no host"))
    }

    fn log(&self, _: tracing::Level, _: &str, _: &str) {}
}

/// The built counter library, if cargo left it next to this bench.
fn counter_library() -> Option<PathBuf> {
    match built_library("counter") {
        Ok(path) => Some(path),
        Err(e) => {
            eprintln!("skipping the benchmarks that need libcounter.so: {e}");
            None
        }
    }
}

/// A private copy of `library` in a fresh temp dir (a path `dlopen` has not seen).
fn fresh_copy(library: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("libcounter.so");
    std::fs::copy(library, &path).expect("copy libcounter.so");
    (dir, path)
}

fn message(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");

    let test = PagletTest::new::<counter::Counter>();
    let id = test
        .create_class("counter::Counter", serde_json::json!({}))
        .expect("create an in-process counter");
    group.bench_function("in-process", |b| {
        b.iter(|| test.send(&id, "increment", Value::Null).expect("increment"))
    });

    if let Some(built) = counter_library() {
        let (_dir, path) = fresh_copy(&built);
        let library = Library::open(&path).expect("open libcounter.so");
        let mut instance = library
            .create("counter::Counter", None, NoHost)
            .expect("create a counter");
        group.bench_function("library", |b| {
            b.iter(|| instance.handle("increment", "null").expect("increment"))
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let Some(built) = counter_library() else {
        return;
    };
    let mut group = c.benchmark_group("open");

    let (_dir, path) = fresh_copy(&built);
    Library::open(&path).expect("open libcounter.so");
    group.bench_function("same-path", |b| {
        b.iter(|| Library::open(&path).expect("open libcounter.so"))
    });

    // Every iteration maps one more copy (about 1 MB) for good: flat sampling and short
    // times keep it to a couple of hundred copies at ~0.7 ms each.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(50))
        .measurement_time(Duration::from_millis(150));
    group.bench_function("fresh-copy", |b| {
        b.iter_batched(
            || fresh_copy(&built),
            |(dir, path)| (dir, Library::open(&path).expect("open a fresh copy")),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn migrate(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    let state = serde_json::json!({"count": 41});
    group.bench_function("plain", |b| {
        b.iter(|| {
            serde_json::from_value::<counter::Counter>(state.clone()).expect("read the state")
        })
    });
    group.bench_function("checked", |b| {
        b.iter(|| plugin_api::state::read::<counter::Counter>(state.clone()).expect("read"))
    });
    group.finish();

    let Some(built) = counter_library() else {
        return;
    };
    let (_old_dir, old_path) = fresh_copy(&built);
    let (_new_dir, new_path) = fresh_copy(&built);
    let old = Library::open(&old_path).expect("open libcounter.so");
    let new = Library::open(&new_path).expect("open the second copy");
    let state = serde_json::json!({"count": 41});
    let instances: Vec<_> = (0..1000)
        .map(|_| {
            old.create("counter::Counter", Some(&state), NoHost)
                .expect("create a counter")
        })
        .collect();
    let mut group = c.benchmark_group("migrate");
    group.sample_size(20);
    group.bench_function("1000-instances", |b| {
        b.iter(|| {
            for instance in &instances {
                instance.migrate_to(&new, NoHost).expect("migrate");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, message, open, migrate);
criterion_main!(benches);
