//! Durable state: what survives `kill -9` in each durability mode, creation and disposal,
//! a damaged or unwritable database, the import of `paglets.json`, a busy paglet at
//! shutdown, stored paglets whose class is missing, and the store's file modes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use paglets_e2e::{PluginDir, TestHost, host_command, run_to_exit, wait_for};
use serde_json::{Value, json};

/// Clients sending at once in the burst tests.
const CLIENTS: u64 = 4;

fn count(host: &TestHost, id: &str) -> u64 {
    let answer = host.send(id, "get", Value::Null);
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json["reply"]["count"].as_u64().expect("a count")
}

/// Increments `id` from [`CLIENTS`] threads until `stop`; returns the threads, each giving
/// back how many increments it saw acknowledged (200).
fn burst(
    host: &Arc<TestHost>,
    id: &str,
    acked: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (host, id, acked, stop) =
                (host.clone(), id.to_string(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let path = format!("/paglets/{id}/messages");
                while !stop.load(Ordering::Acquire) {
                    match host.try_post(&path, &json!({"kind": "increment"})) {
                        Ok(answer) if answer.status == 200 => {
                            acked.fetch_add(1, Ordering::AcqRel);
                        }
                        // The host is gone (killed): this client is done.
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

fn start(plugins: &PluginDir, persistence: &Path, args: &[&str]) -> Arc<TestHost> {
    Arc::new(TestHost::start_in(
        &[plugins.path()],
        args,
        persistence,
        &[],
    ))
}

fn unshare(host: Arc<TestHost>) -> TestHost {
    Arc::try_unwrap(host).unwrap_or_else(|_| panic!("the host is still shared"))
}

#[test]
fn sync_mode_keeps_every_acknowledged_increment_through_kill_9() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = start(&plugins, persistence.path(), &["--durability", "sync"]);
    let id = host.create("counter::Counter", json!({}));
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients = burst(&host, &id, &acked, &stop);
    wait_for("400 acknowledged increments", || {
        (acked.load(Ordering::Acquire) >= 400).then_some(())
    });
    // Killed while the clients are still sending: each has at most one request in flight.
    unshare_after_kill(host, &clients, &stop);
    let acked = acked.load(Ordering::Acquire);
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    let stored = count(&again, &id);
    assert!(
        stored >= acked && stored <= acked + CLIENTS,
        "{stored} stored, {acked} acknowledged, at most {CLIENTS} in flight"
    );
}

/// SIGKILLs the host while `clients` may still be sending, then waits for them.
fn unshare_after_kill(
    host: Arc<TestHost>,
    clients: &[std::thread::JoinHandle<()>],
    stop: &AtomicBool,
) {
    // SAFETY: SIGKILL to the host process this test started.
    unsafe { libc::kill(host.pid() as i32, libc::SIGKILL) };
    stop.store(true, Ordering::Release);
    wait_for("the clients to stop", || {
        clients.iter().all(|c| c.is_finished()).then_some(())
    });
    unshare(host).kill();
}

#[test]
fn interval_mode_loses_nothing_once_the_window_has_passed() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = start(
        &plugins,
        persistence.path(),
        &["--durability", "interval", "--checkpoint-ms", "50"],
    );
    let id = host.create("counter::Counter", json!({}));
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients = burst(&host, &id, &acked, &stop);
    wait_for("400 acknowledged increments", || {
        (acked.load(Ordering::Acquire) >= 400).then_some(())
    });
    stop.store(true, Ordering::Release);
    for client in clients {
        client.join().expect("client");
    }
    let acked = acked.load(Ordering::Acquire);
    assert_eq!(count(&host, &id), acked);
    // The window is 50 ms; 40 windows is the bound plus any scheduling delay of a loaded
    // machine. This wait is the property under test, not a synchronisation.
    std::thread::sleep(std::time::Duration::from_secs(2));
    unshare(host).kill();
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(
        count(&again, &id),
        acked,
        "acknowledged changes older than the window were lost"
    );
}

#[test]
fn interval_mode_never_stores_more_than_was_sent_through_kill_9() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = start(&plugins, persistence.path(), &["--checkpoint-ms", "20"]);
    let id = host.create("counter::Counter", json!({}));
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients = burst(&host, &id, &acked, &stop);
    wait_for("2000 acknowledged increments", || {
        (acked.load(Ordering::Acquire) >= 2000).then_some(())
    });
    unshare_after_kill(host, &clients, &stop);
    let acked = acked.load(Ordering::Acquire);
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    let stored = count(&again, &id);
    // Checkpoints ran during the burst (it lasted many windows), and nothing unsent appears.
    assert!(
        stored > 0 && stored <= acked + CLIENTS,
        "{stored} stored, {acked} acknowledged"
    );
}

#[test]
fn a_created_paglet_survives_kill_9_right_after_its_201() {
    let plugins = PluginDir::with_examples();
    for args in [
        // A window far longer than the test: only the commit before the reply can save it.
        &["--durability", "interval", "--checkpoint-ms", "600000"][..],
        &["--durability", "sync"][..],
    ] {
        let persistence = tempfile::tempdir().expect("temp dir");
        let host = TestHost::start_in(&[plugins.path()], args, persistence.path(), &[]);
        let id = host.create("counter::Counter", json!({"count": 17}));
        host.kill();
        let again = TestHost::start_in(&[plugins.path()], args, persistence.path(), &[]);
        assert_eq!(count(&again, &id), 17, "{args:?}");
    }
}

#[test]
fn a_disposed_paglet_stays_gone_after_kill_9() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let args = ["--checkpoint-ms", "600000"];
    let host = TestHost::start_in(&[plugins.path()], &args, persistence.path(), &[]);
    let id = host.create("counter::Counter", json!({}));
    let kept = host.create("counter::Counter", json!({"count": 3}));
    assert_eq!(host.delete(&format!("/paglets/{id}")).status, 204);
    host.kill();
    let again = TestHost::start_in(&[plugins.path()], &args, persistence.path(), &[]);
    assert_eq!(again.get(&format!("/paglets/{id}")).status, 404);
    assert_eq!(count(&again, &kept), 3);
}

#[test]
fn the_launch_config_sets_the_durability() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let config = persistence.path().join("launch.toml");
    std::fs::write(
        &config,
        "[host]\ndurability = \"sync\"\ncheckpoint_ms = 250\n",
    )
    .expect("write");
    let config = config.to_string_lossy().to_string();
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--launch-config", &config],
        persistence.path(),
        &[],
    );
    let health = host.get("/health").json;
    assert_eq!(health["durability"], "sync", "{health}");
    assert_eq!(health["persistence"], "ok", "{health}");
}

/// A persistence dir holding a real database with 300 counters, written by a host that
/// stopped gracefully.
fn stored_dir(plugins: &PluginDir) -> tempfile::TempDir {
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    for n in 0..300 {
        host.create("counter::Counter", json!({"count": n}));
    }
    assert_eq!(host.stop().code(), Some(0));
    persistence
}

fn refused_start(plugins: &PluginDir, persistence: &Path, wrap: Option<&[&str]>) -> String {
    let host = host_command(&[plugins.path()], &[], persistence);
    let mut command = match wrap {
        Some(prefix) => {
            let mut command = Command::new(prefix[0]);
            command
                .args(&prefix[1..])
                .arg(host.get_program())
                .args(host.get_args());
            command.env("HOME", persistence);
            command
        }
        None => host,
    };
    let output = run_to_exit(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let db = persistence.join("paglets.db");
    assert!(
        stderr.contains(&db.display().to_string()),
        "the message names the file: {stderr}"
    );
    stderr
}

#[test]
fn a_damaged_database_stops_the_start_and_is_left_untouched() {
    let plugins = PluginDir::with_examples();
    let stored = stored_dir(&plugins);
    let good = std::fs::read(stored.path().join("paglets.db")).expect("read");
    assert!(good.len() > 16384, "{} bytes", good.len());
    let garbage: Vec<u8> = (0..good.len() as u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let damaged: [(&str, &[u8]); 3] = [
        ("truncated", &good[..good.len() / 2]),
        ("garbage", &garbage),
        // The header survives, the pages after it are zeroed.
        (
            "zeroed pages",
            &[&good[..4096], &vec![0u8; good.len() - 4096][..]].concat(),
        ),
    ];
    for (what, bytes) in damaged {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("paglets.db");
        std::fs::write(&db, bytes).expect("write");
        let stderr = refused_start(&plugins, dir.path(), None);
        assert_eq!(
            std::fs::read(&db).expect("read"),
            bytes,
            "{what}: the file changed"
        );
        assert!(!stderr.contains("listening"), "{what}: {stderr}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("paglets.db")).expect("mkdir");
    refused_start(&plugins, dir.path(), None);
    assert!(dir.path().join("paglets.db").is_dir());
}

#[test]
fn an_unreadable_database_stops_the_start_and_is_left_untouched() {
    // Root ignores file modes: run the host as nobody (65534) over a dir nobody owns and a
    // database only root may read (see CLARIFICATIONS, "Faults as root").
    if !is_root() {
        eprintln!("skipped: needs root to run the host as another user");
        return;
    }
    let plugins = PluginDir::new();
    let stored = stored_dir(&PluginDir::with_examples());
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("paglets.db");
    std::fs::copy(stored.path().join("paglets.db"), &db).expect("copy");
    let before = std::fs::read(&db).expect("read");
    chown(dir.path(), 65534);
    chown(plugins.path(), 65534);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let stderr = refused_start(
        &plugins,
        dir.path(),
        Some(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]),
    );
    assert!(stderr.contains("ermission denied"), "{stderr}");
    assert_eq!(std::fs::read(&db).expect("read"), before);
}

fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
}

/// Makes files immutable (`chattr +i`: even root cannot write them) until dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: &[PathBuf]) -> Result<Immutable, String> {
        let output = Command::new("chattr")
            .arg("+i")
            .args(files)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).to_string());
        }
        Ok(Immutable(files.to_vec()))
    }

    fn clear(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("chattr").arg("-i").args(&self.0).status();
            self.0.clear();
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

#[test]
fn an_unwritable_store_degrades_keeps_serving_answers_503_in_sync_mode_and_recovers() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--durability", "sync"],
        persistence.path(),
        &[],
    );
    let id = host.create("counter::Counter", json!({}));
    assert_eq!(host.send(&id, "increment", Value::Null).status, 200);
    let files: Vec<PathBuf> = ["paglets.db", "paglets.db-wal"]
        .iter()
        .map(|f| persistence.path().join(f))
        .collect();
    let mut frozen = match Immutable::set(&files) {
        Ok(frozen) => frozen,
        Err(e) => {
            eprintln!("skipped: cannot make the store read-only here ({e})");
            return;
        }
    };
    let refused = host.send(&id, "increment", Value::Null);
    assert_eq!(refused.status, 503, "{:?}", refused.json);
    assert_eq!(refused.json["error"]["code"], "not-persisted");
    let health = host.get("/health").json;
    assert_eq!(health["persistence"], "degraded", "{health}");
    assert!(
        health["persistence_error"]
            .as_str()
            .is_some_and(|e| e.contains("paglets.db")),
        "{health}"
    );
    // Serving goes on: reads answer, and the paglet still runs.
    assert_eq!(host.get(&format!("/paglets/{id}")).status, 200);
    assert_eq!(host.get("/paglets").status, 200);
    assert_eq!(count(&host, &id), 2);
    frozen.clear();
    wait_for("persistence to recover", || {
        (host.get("/health").json["persistence"] == "ok").then_some(())
    });
    assert_eq!(host.send(&id, "increment", Value::Null).status, 200);
    host.kill();
    // The change answered 503 was kept and written once the store recovered.
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(count(&again, &id), 3);
}

#[test]
fn a_full_disk_degrades_and_recovers() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256M", "tmpfs"])
        .arg(persistence.path())
        .output();
    match mounted {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipped: cannot mount a tmpfs ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run mount ({e})");
            return;
        }
    }
    let _unmount = Unmount(persistence.path().to_path_buf());
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--durability", "sync"],
        persistence.path(),
        &[],
    );
    let id = host.create("counter::Counter", json!({}));
    // Fill the disk (the private library copies live there too), then write new records
    // until a write fails.
    let filler = persistence.path().join("filler");
    fill(&filler);
    let failed = (0..2000).find_map(|n| {
        let answer = host.post(
            "/paglets",
            &json!({"class": "counter::Counter", "id": format!("fill-{n}")}),
        );
        (answer.status == 503).then_some(answer)
    });
    let failed = failed.expect("a write failed on the full disk");
    assert_eq!(failed.json["error"]["code"], "not-persisted");
    assert_eq!(host.get("/health").json["persistence"], "degraded");
    assert_eq!(host.send(&id, "get", Value::Null).status, 200);
    std::fs::remove_file(&filler).expect("free the disk");
    wait_for("persistence to recover", || {
        (host.get("/health").json["persistence"] == "ok").then_some(())
    });
    assert_eq!(host.send(&id, "increment", Value::Null).status, 200);
    assert_eq!(host.stop().code(), Some(0));
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_paglets_json_from_an_older_version_is_imported_once() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let saved = json!([{"id": "old.counter", "class": "counter::Counter", "state": {"count": 12}}]);
    let json_file = persistence.path().join("paglets.json");
    std::fs::write(&json_file, saved.to_string()).expect("write");
    let host = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(count(&host, "old.counter"), 12);
    assert!(!json_file.exists());
    let imported = persistence.path().join("paglets.json.imported");
    assert_eq!(mode(&imported), 0o600);
    // Disposed, then a crash: the import does not run again, so it stays gone.
    assert_eq!(host.delete("/paglets/old.counter").status, 204);
    host.kill();
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    assert_eq!(again.get("/paglets/old.counter").status, 404);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_store_files_are_0600() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &["--durability", "sync"]);
    host.create("counter::Counter", json!({}));
    for file in ["paglets.db", "paglets.db-wal", "paglets.db-shm"] {
        assert_eq!(mode(&host.persistence.join(file)), 0o600, "{file}");
    }
}

#[test]
fn a_paglet_busy_past_the_grace_keeps_its_state_from_before_the_busy_message() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = start(
        &plugins,
        persistence.path(),
        &["--durability", "sync", "--shutdown-grace", "0"],
    );
    let pi = host.create("pi::Pi", json!({}));
    assert_eq!(host.send(&pi, "digits", json!({"n": 10})).status, 200);
    let running = paglets_e2e::keep_busy(&host, &pi);
    // SAFETY: SIGTERM to the host process this test started.
    unsafe { libc::kill(host.pid() as i32, libc::SIGTERM) };
    wait_for("the log to name the busy paglet", || {
        let log = host.log();
        log.lines()
            .any(|l| l.contains(&pi) && l.contains("still busy"))
            .then_some(())
    });
    let _ = running.join();
    assert_eq!(unshare(host).stop().code(), Some(0));
    let again = TestHost::start_in(&[plugins.path()], &[], persistence.path(), &[]);
    let detail = again.get(&format!("/paglets/{pi}"));
    assert_eq!(
        detail.status, 200,
        "the busy paglet was dropped: {:?}",
        detail.json
    );
    assert_eq!(
        detail.json["state"],
        json!({"computed": 1}),
        "the in-flight change was saved"
    );
}

#[test]
fn a_stored_paglet_waits_for_its_class_keeps_its_id_and_runs_when_the_class_appears() {
    let persistence = tempfile::tempdir().expect("temp dir");
    {
        let all = PluginDir::with_examples();
        let host = TestHost::start_in(&[all.path()], &[], persistence.path(), &[]);
        let answer = host.post(
            "/paglets",
            &json!({"class": "counter::Counter", "id": "c.keep", "state": {"count": 5}}),
        );
        assert_eq!(answer.status, 201, "{:?}", answer.json);
        assert_eq!(host.stop().code(), Some(0));
    }
    let plugins = PluginDir::new();
    plugins.add(&paglets_e2e::example("pi"));
    let config = persistence.path().join("launch.toml");
    std::fs::write(
        &config,
        "[[startup]]\nclass = \"pi::Pi\"\nid = \"c.keep\"\n",
    )
    .expect("write");
    let config = config.to_string_lossy().to_string();
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--launch-config", &config],
        persistence.path(),
        &[],
    );
    // The startup entry was skipped and the id stays taken while the class is missing.
    assert_eq!(host.get("/paglets/c.keep").status, 404);
    let taken = host.post("/paglets", &json!({"class": "pi::Pi", "id": "c.keep"}));
    assert_eq!(taken.status, 409, "{:?}", taken.json);
    wait_for("the log to name the waiting paglet", || {
        host.log().contains("c.keep").then_some(())
    });
    // The class appears: the paglet runs, without a restart.
    plugins.add(&paglets_e2e::example("counter"));
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.status, 200, "{:?}", rescan.json);
    assert_eq!(count(&host, "c.keep"), 5);
    assert_eq!(
        host.get("/paglets/c.keep").json["class"],
        "counter::Counter"
    );
    assert_eq!(host.stop().code(), Some(0));
    // One id, stored once: after a restart it is still the counter.
    let again = TestHost::start_in(
        &[plugins.path()],
        &["--launch-config", &config],
        persistence.path(),
        &[],
    );
    assert_eq!(count(&again, "c.keep"), 5);
    let ids: Vec<Value> = again
        .get("/paglets")
        .json
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("c.keep")]);
}
