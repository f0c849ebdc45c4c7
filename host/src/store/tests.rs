//! Unit tests of the store on real database files in temp dirs.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn record(id: &str, state: &str) -> Record {
    Record {
        id: id.into(),
        class: "counter::Counter".into(),
        state: state.into(),
        state_version: 1,
        library: "counter".into(),
        library_version: "0.1.0".into(),
        library_sha256: "ab".repeat(32),
        status: Status::Active,
        created_at: 1.5,
        messages_handled: 7,
        queued: None,
    }
}

fn dir() -> tempfile::TempDir {
    // A fresh, private temp dir; creating one cannot fail on a working machine.
    #[allow(clippy::unwrap_used)]
    tempfile::tempdir().unwrap()
}

fn open(dir: &Path) -> (Store, Vec<Record>) {
    match Store::open(dir, Durability::Sync) {
        Ok(opened) => opened,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

#[test]
fn records_survive_a_reopen_with_every_field() {
    let d = dir();
    let (store, records) = open(d.path());
    assert!(records.is_empty());
    let mut inactive = record("b", r#"{"count":2}"#);
    inactive.status = Status::Inactive;
    inactive.queued = Some(r#"[{"kind":"inc"}]"#.into());
    store.put(record("a", r#"{"count":1}"#), None);
    store.put(inactive.clone(), None);
    store.flush().expect("flush");
    store.close();
    let (_store, records) = open(d.path());
    assert_eq!(records, vec![record("a", r#"{"count":1}"#), inactive]);
}

#[test]
fn the_latest_change_per_id_wins_and_every_waiter_is_answered() {
    let d = dir();
    let (store, _) = open(d.path());
    let (tx, rx) = std::sync::mpsc::channel();
    for n in 0..200 {
        let tx = tx.clone();
        store.put(
            record("c", &format!(r#"{{"count":{n}}}"#)),
            Some(Box::new(move |r| drop(tx.send(r)))),
        );
    }
    store.remove("c", None);
    store.put(record("d", "{}"), None);
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(Result::is_ok));
    store.close();
    let (_store, records) = open(d.path());
    assert_eq!(
        records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
}

#[test]
fn save_all_removes_what_it_does_not_keep() {
    let d = dir();
    let (store, _) = open(d.path());
    for id in ["gone", "kept", "busy"] {
        store.put(record(id, "{}"), None);
    }
    let keep: HashSet<String> = ["busy".to_string()].into();
    store
        .save_all(vec![record("kept", r#"{"count":9}"#)], Some(keep))
        .expect("save");
    store.close();
    let (_store, records) = open(d.path());
    let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["busy", "kept"]);
    assert_eq!(records[1].state, r#"{"count":9}"#);
}

#[test]
fn store_files_are_private() {
    let d = dir();
    let (store, _) = open(d.path());
    store.put(record("a", "{}"), None);
    store.flush().expect("flush");
    for name in ["paglets.db", "paglets.db-wal", "paglets.db-shm"] {
        let mode = std::fs::metadata(d.path().join(name))
            .expect(name)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {mode:o}");
    }
}

#[test]
fn an_old_saved_file_is_imported_once() {
    let d = dir();
    let json = d.path().join("paglets.json");
    std::fs::write(
        &json,
        r#"[{"id":"old","class":"counter::Counter","state":{"count":5}}]"#,
    )
    .expect("write");
    let (store, records) = open(d.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, "old");
    assert_eq!(records[0].state, r#"{"count":5}"#);
    assert!(!json.exists());
    let imported = d.path().join("paglets.json.imported");
    let mode = std::fs::metadata(&imported)
        .expect("imported")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    store.remove("old", None);
    store.close();
    let (_store, records) = open(d.path());
    assert!(records.is_empty(), "imported again: {records:?}");
}

fn refused(d: &Path) -> String {
    match Store::open(d, Durability::Interval) {
        Ok(_) => panic!("a damaged database was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_damaged_database_is_refused_and_left_as_it_was() {
    let d = dir();
    let (store, _) = open(d.path());
    for n in 0..500 {
        store.put(
            record(&format!("p{n}"), &format!(r#"{{"count":{n}}}"#)),
            None,
        );
    }
    store.flush().expect("flush");
    store.close();
    let db = d.path().join(DB_FILE);
    let good = std::fs::read(&db).expect("read");
    assert!(good.len() > 8192, "{} bytes", good.len());

    std::fs::write(&db, &good[..good.len() / 2]).expect("truncate");
    let message = refused(d.path());
    assert!(
        message.contains("paglets.db") && message.contains("truncated"),
        "{message}"
    );
    assert_eq!(std::fs::read(&db).expect("read"), &good[..good.len() / 2]);

    let garbage: Vec<u8> = (0..10_000u32).map(|n| (n * 7919 % 251) as u8).collect();
    std::fs::write(&db, &garbage).expect("garbage");
    let message = refused(d.path());
    assert!(message.contains("not an SQLite database"), "{message}");
    assert_eq!(std::fs::read(&db).expect("read"), garbage);

    std::fs::remove_file(&db).expect("remove");
    std::fs::create_dir(&db).expect("dir");
    let message = refused(d.path());
    assert!(message.contains("not a regular file"), "{message}");
    assert!(db.is_dir());
}

#[test]
fn a_failed_write_degrades_is_kept_and_is_written_once_writes_succeed() {
    let d = dir();
    let (store, _) = open(d.path());
    store.put(record("small", "{}"), None);
    store.flush().expect("flush");
    // A full disk, as SQLite sees it: no page may be added.
    store
        .exec("PRAGMA max_page_count = 1")
        .expect("limit the database");
    let big = format!(r#"{{"items":"{}"}}"#, "x".repeat(200_000));
    let (tx, rx) = std::sync::mpsc::channel();
    store.put(
        record("big", &big),
        Some(Box::new(move |r| drop(tx.send(r)))),
    );
    let failed = rx.recv().expect("an answer");
    assert!(matches!(failed, Err(StoreError::Write(_))), "{failed:?}");
    match store.persistence() {
        Persistence::Degraded(e) => assert!(e.contains("paglets.db"), "{e}"),
        Persistence::Ok => panic!("not degraded after a failed write"),
    }
    store
        .exec("PRAGMA max_page_count = 1073741823")
        .expect("lift the limit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.persistence() != Persistence::Ok {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    store.close();
    let (_store, records) = open(d.path());
    let ids: Vec<_> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["big", "small"], "the failed write was not retried");
    assert_eq!(records[0].state, big);
}
