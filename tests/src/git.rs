//! The auto-update harness: real git repositories in a temp folder (a bare "remote", clones
//! the hosts run in, a "seed" clone that pushes), a `git daemon` for a remote that is not a
//! local path, and a host run from its own copy of the binary so that a "build" can replace
//! it. The build command copies the library named by the tracked file `variant` from
//! `$LIBSRC` into `plugins/` (ignored by git), so flipping `variant` between the counter
//! example and the `dup-counter` fixture (same class and state, but no `get`) is a code
//! change a test can see.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::{TestHost, example, fixture, host_command, run_ok, wait_for};

/// The build every checkout starts with.
pub const BUILD: &str = "set -e\nmkdir -p plugins\ncp \"$LIBSRC/$(cat variant)\" plugins/.tmp.so\nmv plugins/.tmp.so plugins/libcounter.so\n";

/// The update lock's directory inside the git common dir.
pub const LOCK: &str = ".git/paglets-auto-update.lock";

/// Runs `git -C dir args` with a fixed identity and no user or system config; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=paglets e2e",
                "-c",
                "user.email=e2e@paglets.invalid",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null"),
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

/// A bare remote, the prebuilt libraries, and a seed clone that made the first commit.
pub struct Repos {
    dir: tempfile::TempDir,
}

impl Repos {
    pub fn new() -> Repos {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        git(
            root,
            &["init", "--quiet", "--bare", "-b", "master", "remote.git"],
        );
        let libsrc = root.join("libsrc");
        std::fs::create_dir(&libsrc).expect("mkdir libsrc");
        std::fs::copy(example("counter"), libsrc.join("libcounter.so")).expect("copy counter");
        std::fs::copy(fixture("dup-counter"), libsrc.join("libdup_counter.so"))
            .expect("copy dup-counter");
        std::fs::copy(fixture("old-abi"), libsrc.join("libold_abi.so")).expect("copy old-abi");
        git(root, &["init", "--quiet", "-b", "master", "seed"]);
        let repos = Repos { dir };
        let seed = repos.seed();
        git(
            &seed,
            &["remote", "add", "origin", path_str(&repos.remote())],
        );
        repos.push(
            &[
                (".gitignore", "plugins/\n"),
                ("variant", "libcounter.so\n"),
                ("build.sh", BUILD),
            ],
            "initial",
        );
        git(&seed, &["branch", "--quiet", "-u", "origin/master"]);
        repos
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn remote(&self) -> PathBuf {
        self.root().join("remote.git")
    }

    pub fn seed(&self) -> PathBuf {
        self.root().join("seed")
    }

    pub fn libsrc(&self) -> PathBuf {
        self.root().join("libsrc")
    }

    /// A fresh clone of the remote (its branch tracks origin/master).
    pub fn clone(&self, name: &str) -> PathBuf {
        git(
            self.root(),
            &["clone", "--quiet", path_str(&self.remote()), name],
        );
        self.root().join(name)
    }

    /// Commits `files` in the seed clone and pushes; returns the new commit.
    pub fn push(&self, files: &[(&str, &str)], message: &str) -> String {
        let seed = self.seed();
        for (name, text) in files {
            std::fs::write(seed.join(name), text).expect("write a tracked file");
        }
        git(&seed, &["add", "--all"]);
        git(&seed, &["commit", "--quiet", "-m", message]);
        git(&seed, &["push", "--quiet", "origin", "master"]);
        head(&seed)
    }

    /// Starts an auto-updating host in `checkout` over its `plugins/`, persisting to `state`.
    pub fn host(&self, checkout: &Path, state: &str, args: &[&str]) -> TestHost {
        let persistence = self.root().join(state);
        std::fs::create_dir_all(&persistence).expect("mkdir persistence");
        let mut all = vec!["--auto-update-from-git", "--build-command", "sh build.sh"];
        all.extend_from_slice(args);
        TestHost::start_in_dir(
            checkout,
            &[Path::new("plugins")],
            &all,
            &persistence,
            &[("LIBSRC", path_str(&self.libsrc()))],
        )
    }
}

impl Default for Repos {
    fn default() -> Self {
        Repos::new()
    }
}

/// `path` as text (temp paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// `POST /admin/git-update`, asserting the contract's 200.
pub fn update(host: &TestHost, target: Option<&str>) -> Value {
    let body = match target {
        Some(target) => json!({ "target_hash": target }),
        None => json!({}),
    };
    let answer = host.post("/admin/git-update", &body);
    assert_eq!(
        answer.status,
        200,
        "{:?}\nhost log:\n{}",
        answer.json,
        host.log()
    );
    answer.json
}

pub fn error_text(result: &Value) -> String {
    result["error"].as_str().unwrap_or_default().to_string()
}

/// A counter on the counter example's code answers `get`; the dup-counter code does not.
pub fn runs_old_code(host: &TestHost, id: &str) -> bool {
    let answer = host.send(id, "get", Value::Null);
    match answer.status {
        200 => true,
        422 => false,
        other => panic!(
            "get on {id}: unexpected status {other}: {:?}\nhost log:\n{}",
            answer.json,
            host.log()
        ),
    }
}

/// A host run from its own copy of the `paglets` binary, so that a "build" can replace that
/// binary. After a re-exec the same process prints a new URL (`--port 0`), which `TestHost`
/// does not follow, hence this small driver.
pub struct OwnBinaryHost {
    /// The host process: the same pid across its re-executions.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Arc<std::sync::Mutex<String>>,
    http: reqwest::blocking::Client,
}

/// Spawns a binary the test just copied. Another test thread forking at the moment the copy
/// was still open for writing leaves a writable descriptor in its child until that child
/// execs, and the kernel refuses to run a file open for writing (ETXTBSY): retried, bounded.
fn spawn_fresh_binary(command: &mut Command) -> std::process::Child {
    const ETXTBSY: i32 = 26;
    let deadline = std::time::Instant::now() + crate::DEADLINE;
    loop {
        match command.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("spawn the copied paglets binary: {e}"),
        }
    }
}

impl OwnBinaryHost {
    pub fn start(exe: &Path, checkout: &Path, persistence: &Path, env: &[(&str, &Path)]) -> Self {
        Self::start_with(exe, checkout, persistence, env, &[])
    }

    /// [`OwnBinaryHost::start`] with more host flags.
    pub fn start_with(
        exe: &Path,
        checkout: &Path,
        persistence: &Path,
        env: &[(&str, &Path)],
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "--auto-update-from-git",
            "--build-command",
            "sh build.sh",
            "--name",
            "reexec",
        ];
        args.extend_from_slice(extra);
        let template = host_command(&[Path::new("plugins")], &args, persistence);
        let mut command = Command::new(exe);
        command.args(template.get_args()).current_dir(checkout);
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        for (key, value) in env {
            command.env(key, value);
        }
        command
            .env_remove("PAGLETS_API_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = spawn_fresh_binary(&mut command);
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (sink, err) = (stderr.clone(), child.stderr.take().expect("piped stderr"));
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&(line + "\n"));
                }
            }
        });
        let http = reqwest::blocking::Client::builder()
            .timeout(crate::DEADLINE)
            .build()
            .expect("client");
        OwnBinaryHost {
            child,
            lines,
            stderr,
            http,
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next URL the process prints, once its `/health` answers.
    pub fn next_url(&self) -> String {
        let line = self
            .lines
            .recv_timeout(crate::DEADLINE)
            .unwrap_or_else(|_| panic!("no URL printed; host log:\n{}", self.log()));
        let url = line
            .split_once("listening at ")
            .map(|(_, url)| url.to_string())
            .unwrap_or_else(|| panic!("unexpected line: {line}"));
        wait_for("/health to answer", || self.get(&url, "/health"));
        url
    }

    /// `GET`, `None` while nothing answers.
    pub fn get(&self, url: &str, path: &str) -> Option<Value> {
        let response = self.http.get(format!("{url}{path}")).send().ok()?;
        (response.status() == 200).then(|| response.json().expect("JSON"))
    }

    pub fn post(&self, url: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{url}{path}"))
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("{path}: {e}; host log:\n{}", self.log()));
        let status = response.status().as_u16();
        (status, response.json().expect("JSON"))
    }
}

impl Drop for OwnBinaryHost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `git daemon` serving the repositories' folder read-only on a loopback port.
pub struct GitDaemon {
    child: std::process::Child,
    /// The remote's `git://` URL.
    pub url: String,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        // `git daemon` would run `git-daemon` as a child of the `git` wrapper, out of reach of
        // `kill`: start the daemon itself.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn git daemon");
        let daemon = GitDaemon {
            child,
            url: format!("git://127.0.0.1:{port}/remote.git"),
        };
        wait_for("git daemon to serve", || {
            Command::new("git")
                .args(["ls-remote", &daemon.url])
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .ok()
                .filter(|o| o.status.success())
        });
        daemon
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
