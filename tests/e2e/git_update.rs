//! Git auto-update on real repositories in temp folders (the harness is
//! `paglets_e2e::git`): statuses, the lock, the build, re-exec, remotes, mesh alignment.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use paglets_e2e::git::{
    BUILD, GitDaemon, LOCK, OwnBinaryHost, Repos, error_text, git, head, path_str, runs_old_code,
    update,
};
use paglets_e2e::{PluginDir, TestHost, host_command, run_ok, wait_for};
use serde_json::{Value, json};

/// The exact startup refusal from the contract.
const DIRTY_AT_START: &str =
    "paglets host: --auto-update-from-git requires a clean git checkout; startup cancelled.";

#[test]
fn a_dirty_checkout_is_refused_and_nothing_is_fetched() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let start = head(&a);
    repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    let tracking = git(&a, &["rev-parse", "origin/master"]);

    std::fs::write(a.join("build.sh"), format!("{BUILD}# local edit\n")).expect("edit");
    let result = update(&host, None);
    assert_eq!(result["status"], "dirty-worktree", "{result:?}");
    assert_eq!(result["ok"], false);
    assert!(error_text(&result).contains("build.sh"), "{result:?}");
    assert_eq!(
        (result["build_run"].clone(), result["changed"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(head(&a), start, "nothing pulled");
    assert_eq!(
        git(&a, &["rev-parse", "origin/master"]),
        tracking,
        "nothing fetched"
    );
    git(&a, &["checkout", "--quiet", "--", "build.sh"]);

    std::fs::write(a.join("notes.txt"), "scratch\n").expect("untracked file");
    let result = update(&host, None);
    assert_eq!(result["status"], "dirty-worktree", "{result:?}");
    assert!(error_text(&result).contains("notes.txt"), "{result:?}");
    assert_eq!(head(&a), start, "nothing pulled");
    assert_eq!(
        git(&a, &["rev-parse", "origin/master"]),
        tracking,
        "nothing fetched"
    );
    assert_eq!(host.get("/health").json["git_applied_head"], json!(start));

    // Clean again: the same request goes through.
    std::fs::remove_file(a.join("notes.txt")).expect("remove the untracked file");
    assert_eq!(update(&host, None)["status"], "updated");
}

#[test]
fn an_unknown_target_is_target_missing() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let result = update(&host, Some(missing));
    assert_eq!(result["status"], "target-missing", "{result:?}");
    assert_eq!(result["ok"], false);
    assert!(
        error_text(&result).contains("may not have been pushed"),
        "{result:?}"
    );
    assert!(error_text(&result).contains(missing), "{result:?}");
    assert_eq!(result["target_hash"], missing);
    assert_eq!(result["build_run"], false);
}

#[test]
fn a_target_that_is_not_4_to_64_hex_digits_is_a_bad_request() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let too_long = "a".repeat(65);
    for target in ["not-hex!", "abc", too_long.as_str(), "12 34", ""] {
        let answer = host.post("/admin/git-update", &json!({ "target_hash": target }));
        assert_eq!(answer.status, 400, "{target:?}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "bad-request", "{target:?}");
    }
    // The bounds themselves are accepted (and then simply not found). The 4-digit prefix is
    // one that no commit of this repository starts with.
    let commits = git(&a, &["rev-list", "--all"]);
    let short = ["abcd", "1234", "5678", "9abc"]
        .into_iter()
        .find(|p| !commits.lines().any(|c| c.starts_with(p)))
        .expect("an unused prefix");
    for target in [short.to_string(), "f".repeat(64)] {
        let target = target.as_str();
        let result = update(&host, Some(target));
        assert_eq!(result["status"], "target-missing", "{target}: {result:?}");
    }
}

#[test]
fn diverged_history_is_pull_failed() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    std::fs::write(a.join("local.txt"), "never pushed\n").expect("write");
    git(&a, &["add", "local.txt"]);
    git(&a, &["commit", "--quiet", "-m", "local only"]);
    let local = head(&a);
    repos.push(&[("variant", "libdup_counter.so\n")], "elsewhere");
    let result = update(&host, None);
    assert_eq!(result["status"], "pull-failed", "{result:?}");
    assert_eq!(result["ok"], false);
    assert!(error_text(&result).contains("diverged"), "{result:?}");
    assert_eq!(result["build_run"], false);
    assert_eq!(head(&a), local, "the local commit stays checked out");
}

#[test]
fn a_failing_build_keeps_the_old_code_and_a_retry_after_a_fix_updates() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let start = head(&a);
    let id = host.create("counter::Counter", json!({"count": 3}));
    let broken = repos.push(&[("variant", "libmissing.so\n")], "broken");
    let result = update(&host, None);
    assert_eq!(result["status"], "build-failed", "{result:?}");
    assert_eq!(result["ok"], false);
    assert_eq!(result["build_run"], true);
    assert_eq!(
        result["after_head"],
        json!(broken),
        "the code itself was pulled"
    );
    assert!(
        error_text(&result).contains("the build command failed"),
        "{result:?}"
    );
    assert!(
        result["stderr"]
            .as_str()
            .is_some_and(|e| e.contains("libmissing.so")),
        "the build's stderr is in the result: {result:?}"
    );
    assert_eq!(result["reloaded"], json!([]));
    assert!(runs_old_code(&host, &id), "the old code keeps serving");
    assert_eq!(host.send(&id, "get", Value::Null).json["reply"]["count"], 3);
    let health = host.get("/health").json;
    assert_eq!(health["git_applied_head"], json!(start), "{health:?}");
    assert_eq!(health["code_version"], json!(start));
    assert_eq!(health["git_update"]["status"], "build-failed");

    // HEAD is already on the broken commit, but applied_head is not: a retry builds again.
    let fixed = repos.push(&[("variant", "libdup_counter.so\n")], "fixed");
    let result = update(&host, None);
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(
        (result["before_head"].clone(), result["after_head"].clone()),
        (json!(broken), json!(fixed))
    );
    assert!(!runs_old_code(&host, &id), "the new code runs");
    assert_eq!(host.get("/health").json["git_applied_head"], json!(fixed));
}

#[test]
fn a_build_past_the_timeout_is_killed_and_the_host_keeps_serving() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &["--build-timeout", "1"]);
    let start = head(&a);
    let id = host.create("counter::Counter", json!({"count": 1}));
    repos.push(&[("build.sh", "sleep 60\n")], "hangs");
    let result = update(&host, None);
    assert_eq!(result["status"], "build-failed", "{result:?}");
    assert_eq!(result["build_run"], true);
    assert!(error_text(&result).contains("timed out"), "{result:?}");
    assert!(runs_old_code(&host, &id), "the old code keeps serving");
    assert_eq!(host.get("/health").json["git_applied_head"], json!(start));
}

#[test]
fn a_second_update_while_one_runs_on_the_host_is_409() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = Arc::new(repos.host(&a, "state-a", &[]));
    let id = host.create("counter::Counter", json!({"count": 2}));
    // The next build blocks until the test writes a line into a FIFO.
    let gate = repos.libsrc().join("gate");
    run_ok(Command::new("mkfifo").arg(&gate));
    let gated = format!("read line < \"$LIBSRC/gate\"\n{BUILD}");
    let new_head = repos.push(
        &[
            ("build.sh", gated.as_str()),
            ("variant", "libdup_counter.so\n"),
        ],
        "gated build",
    );
    let first = {
        let host = host.clone();
        std::thread::spawn(move || update(&host, None))
    };
    // The build is waiting on the FIFO once it has opened it for reading.
    let mut writer = wait_for("the build to wait on the gate", || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&gate)
            .ok()
    });
    let second = host.post("/admin/git-update", &json!({}));
    assert_eq!(second.status, 409, "{:?}", second.json);
    assert_eq!(second.json["error"]["code"], "conflict");
    // A manual rescan could load a half-built library: refused while the update runs.
    let rescan = host.post("/admin/rescan", &json!({}));
    assert_eq!(rescan.status, 409, "{:?}", rescan.json);
    // While the build runs, the old code keeps serving.
    assert!(runs_old_code(&host, &id));
    std::io::Write::write_all(&mut writer, b"go\n").expect("open the gate");
    drop(writer);
    let result = first.join().expect("the first update");
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(result["after_head"], json!(new_head));
    assert!(!runs_old_code(&host, &id));
}

#[test]
fn a_stale_lock_whose_owner_is_gone_is_removed() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let lock = a.join(LOCK);
    std::fs::create_dir(&lock).expect("lock dir");
    // A pid above Linux's pid_max: it cannot be running.
    std::fs::write(lock.join("owner"), "pid=99999999\ntime=1\n").expect("owner");
    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    let result = update(&host, None);
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(result["after_head"], json!(new_head));
    assert!(!lock.exists(), "the lock is released after the update");
}

#[test]
fn a_lock_without_a_readable_owner_is_removed_after_the_grace_period() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &["--update-lock-timeout", "1"]);
    let lock = a.join(LOCK);
    std::fs::create_dir(&lock).expect("lock dir without an owner file");
    // Younger than the 5 s grace: respected (it may be a lock whose owner is being written),
    // so a lock timeout shorter than the grace runs out first.
    let result = update(&host, None);
    assert_eq!(result["status"], "lock-timeout", "{result:?}");
    assert!(
        error_text(&result).contains("no readable owner"),
        "{result:?}"
    );
    assert!(
        lock.is_dir(),
        "a lock inside its grace period is left alone"
    );
    // Past the grace (its folder last changed 10 s ago): removed, and the update runs.
    let ten_seconds_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    std::fs::File::open(&lock)
        .and_then(|dir| dir.set_modified(ten_seconds_ago))
        .expect("age the lock");
    let result = update(&host, None);
    assert_eq!(result["status"], "current", "{result:?}");
    assert_eq!(result["ok"], true);
    assert!(!lock.exists(), "the lock is released after the update");
}

#[test]
fn a_lock_held_by_a_live_process_times_out_naming_the_owner() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &["--update-lock-timeout", "1"]);
    let lock = a.join(LOCK);
    std::fs::create_dir(&lock).expect("lock dir");
    // This test process is alive and started before `time`.
    let me = std::process::id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    std::fs::write(lock.join("owner"), format!("pid={me}\ntime={now}\n")).expect("owner");
    repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    let before = head(&a);
    let result = update(&host, None);
    assert_eq!(result["status"], "lock-timeout", "{result:?}");
    assert_eq!(result["ok"], false);
    assert!(
        error_text(&result).contains(&format!("pid {me}")),
        "{result:?}"
    );
    assert_eq!(head(&a), before, "nothing pulled without the lock");
    assert!(lock.exists(), "a live owner's lock is left alone");
    std::fs::remove_dir_all(&lock).expect("release the lock");
    assert_eq!(update(&host, None)["status"], "updated");
}

#[test]
fn two_hosts_on_one_checkout_update_at_once() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let hosts = [
        Arc::new(repos.host(&a, "state-1", &["--name", "one"])),
        Arc::new(repos.host(&a, "state-2", &["--name", "two"])),
    ];
    let ids: Vec<String> = hosts
        .iter()
        .map(|h| h.create("counter::Counter", json!({"count": 10})))
        .collect();
    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    let threads: Vec<_> = hosts
        .iter()
        .map(|host| {
            let host = host.clone();
            std::thread::spawn(move || update(&host, None))
        })
        .collect();
    let results: Vec<Value> = threads
        .into_iter()
        .map(|t| t.join().expect("an update thread"))
        .collect();
    for result in &results {
        // Each host applies the new head once: whoever pulled second still has to build
        // and load it for itself.
        assert_eq!(result["status"], "updated", "{results:?}");
        assert_eq!(result["after_head"], json!(new_head), "{results:?}");
    }
    let changed = results.iter().filter(|r| r["changed"] == true).count();
    assert_eq!(changed, 1, "exactly one host moved HEAD: {results:?}");
    for (host, id) in hosts.iter().zip(&ids) {
        let detail = host.get(&format!("/paglets/{id}")).json;
        assert_eq!(
            (
                detail["generation"].clone(),
                detail["state"]["count"].clone()
            ),
            (json!(1), json!(10)),
            "{detail:?}"
        );
        assert!(!runs_old_code(host, id), "the new code runs");
        assert_eq!(
            host.get("/health").json["git_applied_head"],
            json!(new_head)
        );
    }
    assert!(!a.join(LOCK).exists());
}

#[test]
fn a_branch_without_an_upstream_is_fetch_failed() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    git(&a, &["branch", "--unset-upstream"]);
    let result = update(&host, None);
    assert_eq!(result["status"], "fetch-failed", "{result:?}");
    assert!(error_text(&result).contains("no upstream"), "{result:?}");
}

#[test]
fn startup_outside_a_checkout_or_in_a_dirty_one_exits_1() {
    let repos = Repos::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let state = tempfile::tempdir().expect("temp dir");
    let refused = |cwd: &Path| {
        let output = host_command(
            &[Path::new("plugins")],
            &["--auto-update-from-git", "--build-command", "sh build.sh"],
            state.path(),
        )
        .current_dir(cwd)
        .env("LIBSRC", repos.libsrc())
        .env_remove("PAGLETS_API_KEY")
        .output()
        .expect("run paglets host");
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let stderr = refused(outside.path());
    assert!(stderr.contains("not inside a git checkout"), "{stderr}");

    let a = repos.clone("a");
    std::fs::write(a.join("notes.txt"), "scratch\n").expect("untracked file");
    let stderr = refused(&a);
    assert!(
        stderr.lines().any(|line| line == DIRTY_AT_START),
        "{stderr}"
    );
    assert!(!a.join("plugins").exists(), "nothing was built");
}

#[test]
fn an_update_to_a_short_hash_reloads_the_changed_library_and_keeps_state() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let start = head(&a);
    let id = host.create("counter::Counter", json!({"count": 5}));
    host.send(&id, "increment", Value::Null);
    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");

    let result = update(&host, Some(&new_head[..8]));
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(result["ok"], true);
    assert_eq!(
        result["target_hash"],
        json!(new_head),
        "resolved to the full hash"
    );
    assert_eq!(
        (result["before_head"].clone(), result["after_head"].clone()),
        (json!(start), json!(new_head))
    );
    assert_eq!(
        (result["changed"].clone(), result["build_run"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(result["restart_required"], false);
    assert_eq!(result["process_start_head"], json!(start));
    let checkout = std::fs::canonicalize(&a).expect("canonical checkout");
    assert_eq!(result["repo_root"], json!(checkout));
    assert_eq!(
        result["reloaded"],
        json!([checkout.join("plugins/libcounter.so")]),
        "{result:?}"
    );
    assert_eq!(result["error"], Value::Null);

    let detail = host.get(&format!("/paglets/{id}")).json;
    assert_eq!(
        (
            detail["generation"].clone(),
            detail["state"]["count"].clone()
        ),
        (json!(1), json!(6)),
        "{detail:?}"
    );
    assert!(!runs_old_code(&host, &id), "the new code runs");
    assert_eq!(
        host.send(&id, "increment", Value::Null).json["reply"]["count"],
        7
    );

    let health = host.get("/health").json;
    assert_eq!(health["auto_update_from_git"], true);
    assert_eq!(health["git_applied_head"], json!(new_head), "{health:?}");
    assert_eq!(health["code_version"], json!(new_head));
    assert_eq!(health["git_head"], json!(new_head));
    assert_eq!(health["git_process_start_head"], json!(start));
    assert_eq!(health["git_update"]["status"], "updated");

    let again = update(&host, None);
    assert_eq!(again["status"], "current", "{again:?}");
    assert_eq!(again["ok"], true);
    assert_eq!(
        (again["changed"].clone(), again["build_run"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(again["reloaded"], json!([]));
}

#[test]
fn a_restarted_host_announces_its_head_and_the_peer_follows() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let b = repos.clone("b");
    let host_a = repos.host(&a, "state-a", &["--name", "a"]);
    let host_b = repos.host(&b, "state-b", &["--name", "b"]);
    let id = host_b.create("counter::Counter", json!({"count": 7}));
    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");

    assert_eq!(host_a.stop().code(), Some(0));
    let host_a = repos.host(&a, "state-a", &["--name", "a", "--peer", &host_b.url]);
    let health_a = host_a.get("/health").json;
    assert_eq!(
        health_a["git_applied_head"],
        json!(new_head),
        "the startup update pulled and built: {health_a:?}"
    );
    // `git_update` is published just after `git_applied_head` moves: wait for both.
    let health_b = wait_for("b to follow a's announcement", || {
        let health = host_b.get("/health").json;
        (health["git_applied_head"] == json!(new_head) && !health["git_update"].is_null())
            .then_some(health)
    });
    assert_eq!(health_b["git_update"]["status"], "updated", "{health_b:?}");
    assert_eq!(health_b["git_update"]["target_hash"], json!(new_head));
    let detail = host_b.get(&format!("/paglets/{id}")).json;
    assert_eq!(
        (
            detail["generation"].clone(),
            detail["state"]["count"].clone()
        ),
        (json!(1), json!(7)),
        "{detail:?}"
    );
    assert!(!runs_old_code(&host_b, &id), "b runs the new code");

    // A host without the flag answers `disabled`.
    let plugins = PluginDir::new();
    let plain = TestHost::start(&[plugins.path()], &[]);
    let result = update(&plain, Some(&new_head));
    assert_eq!(result["status"], "disabled", "{result:?}");
    assert_eq!(result["ok"], false);
}

#[test]
fn a_changed_host_binary_makes_the_host_re_execute_itself_keeping_its_paglets() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let bin = repos.root().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    let exe = bin.join("paglets");
    std::fs::copy(paglets_e2e::paglets_bin(), &exe).expect("copy the host binary");
    let persistence = repos.root().join("state-a");
    std::fs::create_dir(&persistence).expect("mkdir persistence");
    let mut host = OwnBinaryHost::start(
        &exe,
        &a,
        &persistence,
        &[("LIBSRC", &repos.libsrc()), ("HOST_BIN", &exe)],
    );
    let url = host.next_url();
    let start = head(&a);
    let (status, created) = host.post(
        &url,
        "/paglets",
        &json!({"class": "counter::Counter", "id": "kept", "state": {"count": 4}}),
    );
    assert_eq!(status, 201, "{created:?}");
    // The new build also "rebuilds" the host: a new file (extra bytes at the end of the ELF
    // change its sha256, not its code) replaces the binary the way cargo does.
    let rebuild_host = format!(
        "{BUILD}cp \"$HOST_BIN\" \"$HOST_BIN.new\"\necho rebuilt >> \"$HOST_BIN.new\"\nmv \"$HOST_BIN.new\" \"$HOST_BIN\"\n"
    );
    let new_head = repos.push(
        &[
            ("build.sh", rebuild_host.as_str()),
            ("variant", "libdup_counter.so\n"),
        ],
        "new host binary",
    );
    let (status, result) = host.post(&url, "/admin/git-update", &json!({}));
    assert_eq!(status, 200, "{result:?}");
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(result["restart_required"], true, "{result:?}");
    assert_eq!(result["process_start_head"], json!(start));

    // The same process (exec in place, never spawn-and-exit) serves again on a new port.
    let url = host.next_url();
    assert!(
        matches!(host.child.try_wait(), Ok(None)),
        "the process the test started is still the host"
    );
    let health = host.get(&url, "/health").expect("health");
    assert_eq!(
        health["git_process_start_head"],
        json!(new_head),
        "a new process image read HEAD at its start: {health:?}"
    );
    assert_eq!(health["git_applied_head"], json!(new_head));
    let detail = host
        .get(&url, "/paglets/kept")
        .expect("the paglet was restored");
    assert_eq!(detail["state"]["count"], 4, "{detail:?}");
    let (status, _) = host.post(
        &url,
        "/paglets/kept/messages",
        &json!({"kind": "get", "args": null}),
    );
    assert_eq!(status, 422, "the restored paglet runs the new code");
    assert!(!a.join(LOCK).exists(), "the lock was released before exec");

    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
    let exit = wait_for("the host to exit", || host.child.try_wait().ok().flatten());
    assert_eq!(exit.code(), Some(0), "host log:\n{}", host.log());
}

#[test]
fn a_remote_that_is_not_a_local_path_is_fetched_by_running_git() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let daemon = GitDaemon::start(repos.root());
    // git:// is not a local remote: the host runs `git fetch` for it.
    git(&a, &["remote", "set-url", "origin", &daemon.url]);
    let host = repos.host(&a, "state-a", &[]);
    let id = host.create("counter::Counter", json!({"count": 8}));
    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    let result = update(&host, Some(&new_head));
    assert_eq!(result["status"], "updated", "{result:?}");
    assert_eq!(result["after_head"], json!(new_head));
    assert!(!runs_old_code(&host, &id), "the new code runs");

    // With the remote gone, git's own error comes back.
    let url = daemon.url.clone();
    drop(daemon);
    repos.push(&[("variant", "libcounter.so\n")], "flip back");
    let result = update(&host, None);
    assert_eq!(result["status"], "fetch-failed", "{result:?}");
    assert!(error_text(&result).contains(&url), "{result:?}");
}

#[test]
fn a_pushed_commit_reaches_every_auto_updating_host_of_the_mesh_including_non_seeds() {
    use paglets_e2e::mesh::{PROBE_MS, row, wait, wait_all};
    let repos = Repos::new();
    let (a, b, c) = (repos.clone("a"), repos.clone("b"), repos.clone("c"));
    let probe = ["--mesh-probe-ms", PROBE_MS];
    let host_a = repos.host(&a, "state-a", &[&["--name", "a"][..], &probe].concat());
    let host_b = repos.host(
        &b,
        "state-b",
        &[&["--name", "b", "--peer", &host_a.url][..], &probe].concat(),
    );
    // c knows only b: a is not its seed.
    let c_args = [&["--name", "c", "--peer", &host_b.url][..], &probe].concat();
    let host_c = repos.host(&c, "state-c", &c_args);
    wait_all(&[&host_a, &host_b, &host_c], &["a", "b", "c"], "alive");

    let new_head = repos.push(&[("variant", "libdup_counter.so\n")], "flip");
    assert_eq!(host_c.stop().code(), Some(0));
    let host_c = repos.host(&c, "state-c", &c_args);
    assert_eq!(
        host_c.get("/health").json["git_applied_head"],
        json!(new_head)
    );
    for host in [&host_a, &host_b] {
        wait("the pushed commit applied on every host", || {
            (host.get("/health").json["git_applied_head"] == json!(new_head)).then_some(())
        });
    }
    wait("every host compatible again on c", || {
        ["a", "b"]
            .iter()
            .all(|name| row(&host_c, name).is_some_and(|r| r["compatible"] == true))
            .then_some(())
    });
    assert!(
        host_c
            .log()
            .contains("alignment: the host answered the update"),
        "c logged the answers: {}",
        host_c.log()
    );
}

#[test]
fn a_reload_that_refuses_the_new_library_is_reload_failed_and_a_retry_reloads_again() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let start = head(&a);
    let id = host.create("counter::Counter", json!({"count": 4}));
    // The build passes, but what it builds is refused (built against an older ABI).
    let refused = repos.push(&[("variant", "libold_abi.so\n")], "old abi");
    let result = update(&host, None);
    assert_eq!(result["status"], "reload-failed", "{result:?}");
    assert_eq!(result["ok"], false);
    assert_eq!(result["build_run"], true);
    assert_eq!(result["after_head"], json!(refused));
    assert!(
        error_text(&result).contains("libcounter.so") && error_text(&result).contains("ABI"),
        "{result:?}"
    );
    assert!(runs_old_code(&host, &id), "the old code keeps serving");
    assert_eq!(host.send(&id, "get", Value::Null).json["reply"]["count"], 4);
    let health = host.get("/health").json;
    assert_eq!(health["git_applied_head"], json!(start), "{health:?}");
    assert_eq!(health["code_version"], json!(start));
    assert_eq!(health["git_update"]["status"], "reload-failed");
    // Not `current`: the applied head did not move, so the same commit is built and
    // reloaded again.
    let result = update(&host, None);
    assert_eq!(result["status"], "reload-failed", "{result:?}");
    assert_eq!(result["build_run"], true);
    let fixed = repos.push(&[("variant", "libdup_counter.so\n")], "fixed");
    let result = update(&host, None);
    assert_eq!(result["status"], "updated", "{result:?}");
    assert!(!runs_old_code(&host, &id), "the new code runs");
    assert_eq!(host.get("/health").json["git_applied_head"], json!(fixed));
}

#[test]
fn a_commit_whose_build_failed_is_not_built_again_unless_forced() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let broken = repos.push(&[("variant", "libmissing.so\n")], "broken");
    let first = update(&host, None);
    assert_eq!(first["status"], "build-failed", "{first:?}");
    assert_eq!(first["build_run"], true);
    // The same commit again (as alignment would send it): the failure again, at once.
    let again = update(&host, Some(&broken[..12]));
    assert_eq!(again["status"], "build-failed", "{again:?}");
    assert_eq!(again["ok"], false);
    assert_eq!(again["build_run"], false, "not built again: {again:?}");
    assert_eq!(
        again["stderr"], first["stderr"],
        "the earlier failure's output"
    );
    assert!(error_text(&again).contains("already failed"), "{again:?}");
    assert_eq!(
        host.log().matches("building").count(),
        2,
        "the startup build and the first update's build only:\n{}",
        host.log()
    );
    // Forced through the HTTP body, and through the CLI.
    let forced = host.post(
        "/admin/git-update",
        &json!({"target_hash": broken, "force": true}),
    );
    assert_eq!(forced.status, 200, "{:?}", forced.json);
    assert_eq!(forced.json["build_run"], true, "{:?}", forced.json);
    assert_eq!(forced.json["status"], "build-failed");
    let cli = |args: &[&str]| {
        let output = Command::new(paglets_e2e::paglets_bin())
            .args(["update", "--host", &host.url, "--json"])
            .args(args)
            .env_remove("PAGLETS_API_KEY")
            .output()
            .expect("run paglets update");
        let result: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {output:?}"));
        (output.status.code(), result)
    };
    let (code, result) = cli(&[&broken]);
    assert_eq!(code, Some(1), "a failed update exits 1: {result:?}");
    assert_eq!(
        (result["status"].clone(), result["build_run"].clone()),
        (json!("build-failed"), json!(false))
    );
    let (code, result) = cli(&["--force"]);
    assert_eq!(code, Some(1), "{result:?}");
    assert_eq!(result["build_run"], true, "{result:?}");
    // A newer commit is built as usual.
    let fixed = repos.push(&[("variant", "libdup_counter.so\n")], "fixed");
    let (code, result) = cli(&[&fixed[..8]]);
    assert_eq!(code, Some(0), "{result:?}");
    assert_eq!(result["status"], "updated", "{result:?}");
}

#[test]
fn a_build_that_leaves_a_daemon_holding_its_output_does_not_hang_the_update() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let host = repos.host(&a, "state-a", &[]);
    let id = host.create("counter::Counter", json!({"count": 2}));
    // Like a compiler cache server: it leaves the build's process group with `setsid` and
    // keeps stdout and stderr open for ten minutes.
    let pidfile = repos.root().join("daemon.pid");
    let daemon = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 600' &\n",
        path_str(&pidfile)
    );
    repos.push(
        &[
            ("build.sh", &format!("{daemon}{BUILD}")),
            ("variant", "libdup_counter.so\n"),
        ],
        "a build with a daemon",
    );
    let result = update(&host, None);
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: `kill` on the daemon this test's build started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert_eq!(result["status"], "updated", "{result:?}");
    assert!(!runs_old_code(&host, &id), "the new code runs");
    wait_for("the log to say the build's output stayed open", || {
        host.log()
            .contains("still holds its output open")
            .then_some(())
    });
}

/// The inode of the executable a process runs (a binary replaced on disk keeps its own).
fn exe_of(pid: i64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe")).map_or(0, |m| m.ino())
}

/// True while process `pid` runs (not gone, not a zombie).
fn running(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[test]
fn an_isolated_library_s_worker_runs_its_host_s_build_before_and_after_a_git_update_re_exec() {
    let repos = Repos::new();
    let a = repos.clone("a");
    let bin = repos.root().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    let exe = bin.join("paglets");
    std::fs::copy(paglets_e2e::paglets_bin(), &exe).expect("copy the host binary");
    let persistence = repos.root().join("state-a");
    std::fs::create_dir(&persistence).expect("mkdir persistence");
    let mut host = OwnBinaryHost::start_with(
        &exe,
        &a,
        &persistence,
        &[("LIBSRC", &repos.libsrc()), ("HOST_BIN", &exe)],
        &["--isolate", "counter", "--no-mesh"],
    );
    let url = host.next_url();
    let (status, created) = host.post(
        &url,
        "/paglets",
        &json!({"class": "counter::Counter", "id": "kept", "state": {"count": 4}}),
    );
    assert_eq!(status, 201, "{created:?}");
    let worker_pid = |host: &OwnBinaryHost, url: &str| {
        host.get(url, "/libraries")
            .and_then(|l| {
                l.as_array()?.iter().find(|l| l["name"] == "counter")?["isolation"]["worker_pid"]
                    .as_i64()
            })
            .expect("the counter's worker runs")
    };
    let old = worker_pid(&host, &url);
    let old_build = exe_of(old);
    assert_eq!(
        old_build,
        exe_of(i64::from(host.child.id())),
        "the host's own build"
    );
    // The update's build replaces the binary (as cargo does: a new file renamed over it).
    let rebuild_host = format!(
        "{BUILD}cp \"$HOST_BIN\" \"$HOST_BIN.new\"\necho rebuilt >> \"$HOST_BIN.new\"\nmv \"$HOST_BIN.new\" \"$HOST_BIN\"\n"
    );
    repos.push(&[("build.sh", rebuild_host.as_str())], "new host binary");
    let (status, result) = host.post(&url, "/admin/git-update", &json!({}));
    assert_eq!(status, 200, "{result:?}");
    assert_eq!(result["restart_required"], true, "{result:?}");
    // The host re-executes: it saves the isolated paglet through the old worker, which then
    // leaves; the new image starts a worker of the new build.
    let url = host.next_url();
    let detail = host.get(&url, "/paglets/kept").expect("restored");
    assert_eq!(detail["state"]["count"], 4, "{detail:?}\n{}", host.log());
    let new = worker_pid(&host, &url);
    assert_ne!(new, old);
    // The host's startup build may have replaced the file once more: what counts is that
    // the worker runs the build the host runs now, not the one it ran before.
    let host_build = exe_of(i64::from(host.child.id()));
    assert_eq!(exe_of(new), host_build, "the worker runs the host's build");
    assert_ne!(host_build, old_build, "a new build");
    wait_for("the old worker to leave", || (!running(old)).then_some(()));
    let (status, _) = host.post(
        &url,
        "/paglets/kept/messages",
        &json!({"kind": "increment"}),
    );
    assert_eq!(status, 200);
    // SAFETY: signalling the child process this test started.
    unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
    let exit = wait_for("the host to exit", || host.child.try_wait().ok().flatten());
    assert_eq!(exit.code(), Some(0), "host log:\n{}", host.log());
}
