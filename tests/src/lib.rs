//! The end-to-end harness: the real `paglets` binary cargo built, real example libraries,
//! real processes on 127.0.0.1.
//!
//! - [`TestHost`] spawns `paglets host` on port 0, reads the URL it prints, waits for
//!   `/health`, and stops the process when dropped.
//! - [`PluginDir`] is a temp folder of library copies (glibc dedups `dlopen` by path, so
//!   every test gets its own files).
//! - [`fixture`] builds the misbehaving test libraries in `tests/fixtures/` once, into their
//!   own target dir.
//! - [`redirect::Redirector`] answers everything with 308, like a host a paglet has left.
//!
//! The binary and the examples come from `cargo build --workspace`, which the README's test
//! command runs first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod git;
pub mod mesh;
pub mod moving;
pub mod redirect;

/// How long anything in a test may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>/` of the running test binary (`.../deps/e2e-*` → `...`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<exe>")
        .to_path_buf()
}

/// The built `paglets` binary.
pub fn paglets_bin() -> PathBuf {
    let bin = target_dir().join("paglets");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// A built example library, e.g. `example("counter")` → `target/<profile>/libcounter.so`.
pub fn example(name: &str) -> PathBuf {
    let file = format!("lib{}.so", name.replace('-', "_"));
    let path = target_dir().join(&file);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// The example crates.
pub const EXAMPLES: [&str; 4] = ["counter", "hello", "server-info", "pi"];

/// The target dir of the fixture libraries, built once per test process:
/// `tests/fixtures/` (a cargo workspace of its own, in the dev profile and, for the `abort`
/// crate, the `abort` profile), the example `counter` through its own manifest, and
/// `plain-c/libplain.so` (a C library that is not a paglet library) with `cc`. A target dir of
/// their own, so the nested cargo never waits for the outer one's lock.
pub fn fixtures_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let fixtures = root().join("tests/fixtures");
        let target = fixtures.join("target");
        let cargo_build = |manifest: &Path, extra: &[&str]| {
            let mut command = Command::new(env!("CARGO"));
            command
                .args(["build", "--quiet", "--manifest-path"])
                .arg(manifest);
            command.arg("--target-dir").arg(&target).args(extra);
            command
        };
        let manifest = fixtures.join("Cargo.toml");
        run_ok(&mut cargo_build(&manifest, &[]));
        run_ok(&mut cargo_build(
            &manifest,
            &["--profile", "abort", "-p", "abort"],
        ));
        run_ok(&mut cargo_build(
            &root().join("example-paglets/counter/Cargo.toml"),
            &[],
        ));
        // `crashy` again, "fixed" (its crashes answer instead), in a target dir of its own.
        let fixed = target.join("fixed");
        run_ok(
            Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "crashy", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&fixed)
                .env("CRASHY_FIXED", "1"),
        );
        let plain = target.join("plain-c");
        std::fs::create_dir_all(&plain).expect("create the plain-c output dir");
        run_ok(
            Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(plain.join("libplain.so"))
                .arg(fixtures.join("plain-c/plain.c")),
        );
        target
    })
}

/// A misbehaving fixture library from `tests/fixtures/` (dev profile), e.g. `"panicky"`.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures_dir()
        .join("debug")
        .join(format!("lib{}.so", name.replace('-', "_")));
    assert!(path.is_file(), "fixture {} was not built", path.display());
    path
}

/// The `crashy` fixture built with `CRASHY_FIXED`: its crashes answer instead.
pub fn fixed_crashy() -> PathBuf {
    let path = fixtures_dir().join("fixed/debug/libcrashy.so");
    assert!(path.is_file(), "fixture {} was not built", path.display());
    path
}

/// Runs a command to completion and panics with its output unless it succeeded.
pub fn run_ok(command: &mut Command) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Polls `check` until it returns `Some`, or panics naming `what` after [`DEADLINE`].
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_for_within(what, DEADLINE, check)
}

/// [`wait_for`] with a deadline of its own, for work that takes long on a busy machine.
pub fn wait_for_within<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A temp folder of library files for a host to scan.
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// An empty folder.
    pub fn new() -> PluginDir {
        PluginDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A folder holding copies of every example library.
    pub fn with_examples() -> PluginDir {
        let dir = PluginDir::new();
        for name in EXAMPLES {
            dir.add(&example(name));
        }
        dir
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `library` in under its own file name; returns the new path.
    pub fn add(&self, library: &Path) -> PathBuf {
        let name = library.file_name().expect("a file name");
        self.add_as(library, &name.to_string_lossy())
    }

    /// Copies `library` in as `name`, atomically (a temp name, then a rename).
    pub fn add_as(&self, library: &Path, name: &str) -> PathBuf {
        let tmp = self.path().join(format!(".{name}.tmp"));
        std::fs::copy(library, &tmp).expect("copy the library");
        let dest = self.path().join(name);
        std::fs::rename(&tmp, &dest).expect("rename into place");
        dest
    }

    /// Writes raw bytes as `name`.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let dest = self.path().join(name);
        std::fs::write(&dest, bytes).expect("write");
        dest
    }
}

impl Default for PluginDir {
    fn default() -> Self {
        PluginDir::new()
    }
}

/// A running `paglets host`.
pub struct TestHost {
    child: Child,
    /// The URL it printed.
    pub url: String,
    /// The API key it was started with, sent by the request helpers.
    pub key: Option<String>,
    /// Its persistence dir (kept across restarts when given to [`TestHost::start_in`]).
    pub persistence: PathBuf,
    _persistence: Option<tempfile::TempDir>,
    _kept: Vec<Box<dyn std::any::Any + Send + Sync>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    http: reqwest::blocking::Client,
}

/// An HTTP answer: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// The `WWW-Authenticate` header, if any.
    pub www_authenticate: Option<String>,
    /// The `Location` header, if any (a 308 for a paglet that moved).
    pub location: Option<String>,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Answer {
    /// Reads a response: status, the headers the tests look at, the body as JSON (`Null`
    /// when empty, an error when it is not JSON).
    pub fn read(response: reqwest::blocking::Response) -> Result<Answer, String> {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (www_authenticate, location, retry_after) = (
            header("www-authenticate"),
            header("location"),
            header("retry-after"),
        );
        let text = response.text().map_err(|e| e.to_string())?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?
        };
        Ok(Answer {
            status,
            json,
            www_authenticate,
            location,
            retry_after,
        })
    }

    /// The error code of an error answer (`""` for any other).
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }
}

/// The harness's HTTP client: a total timeout of [`DEADLINE`], a new connection per request,
/// and redirects never followed, so a test sees a 308 and decides (the contract's clients
/// follow them themselves, sending the key again).
pub fn http_client() -> reqwest::blocking::Client {
    http_client_within(DEADLINE)
}

/// [`http_client`] with a total timeout of its own.
pub fn http_client_within(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        // A new connection per request: the host closes idle ones after its header
        // timeout (1 s in some tests), and reusing one just as it closes would fail
        // a request for a reason no test is about.
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// An answer read off a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body as JSON (`Null` when empty).
    pub json: Value,
}

impl TestHost {
    /// Starts a host (named `test` unless `args` has `--name`) over `paths` with extra `args`,
    /// in a fresh persistence dir.
    pub fn start(paths: &[&Path], args: &[&str]) -> TestHost {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut host = TestHost::spawn(None, paths, args, dir.path(), &[]);
        host._persistence = Some(dir);
        host
    }

    /// Starts a host with `persistence` as its persistence dir and `env` set.
    pub fn start_in(
        paths: &[&Path],
        args: &[&str],
        persistence: &Path,
        env: &[(&str, &str)],
    ) -> TestHost {
        TestHost::spawn(None, paths, args, persistence, env)
    }

    /// Starts a host (as [`TestHost::start_in`]) as the leader of a process group of its own,
    /// so that a test can signal the whole group, as a service manager does.
    pub fn start_in_own_group(paths: &[&Path], args: &[&str], persistence: &Path) -> TestHost {
        let mut command = host_command(paths, args, persistence);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        TestHost::spawn_command(command, None, &[])
    }

    fn spawn(
        cwd: Option<&Path>,
        paths: &[&Path],
        args: &[&str],
        persistence: &Path,
        env: &[(&str, &str)],
    ) -> TestHost {
        let command = host_command(paths, args, persistence);
        let mut host = TestHost::spawn_command(command, cwd, env);
        host.persistence = persistence.to_path_buf();
        host
    }

    fn spawn_command(mut command: Command, cwd: Option<&Path>, env: &[(&str, &str)]) -> TestHost {
        let persistence = command
            .get_args()
            .skip_while(|a| *a != "--persistence-dir")
            .nth(1)
            .map(PathBuf::from)
            .unwrap_or_default();
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command.env_remove("PAGLETS_API_KEY");
        let mut key = None;
        for (name, value) in env {
            command.env(name, value);
            if *name == "PAGLETS_API_KEY" && !value.is_empty() {
                key = Some(value.to_string());
            }
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn paglets host");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_str(&(line + "\n"));
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("the host printed no URL within {DEADLINE:?}; stderr:\n{log}");
            }
        };
        assert!(
            line.contains("listening at http://"),
            "unexpected first line: {line}"
        );
        // A wildcard bind is reached over loopback.
        let url = line
            .rsplit(' ')
            .next()
            .expect("a URL")
            .replace("://0.0.0.0:", "://127.0.0.1:");
        let host = TestHost {
            child,
            url,
            key,
            persistence,
            _persistence: None,
            _kept: Vec::new(),
            stderr,
            http: http_client(),
        };
        wait_for("/health to answer 200", || {
            (host.get("/health").status == 200).then_some(())
        });
        host
    }

    /// Keeps `plugins` and `dir` (temp folders the host uses) alive as long as the host.
    pub fn keep(mut self, plugins: PluginDir, dir: tempfile::TempDir) -> TestHost {
        self._kept.push(Box::new(plugins));
        self._kept.push(Box::new(dir));
        self
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends a request with the host's key; `body` is sent as raw text when given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> Answer {
        self.try_request(&self.http, method, path, body, key)
            .unwrap_or_else(|e| panic!("{path}: {e}\nhost log:\n{}", self.log()))
    }

    /// `GET path`, answered within `timeout`, or an `Err` saying why not.
    pub fn get_within(&self, path: &str, timeout: Duration) -> Result<Answer, String> {
        self.try_request(&http_client_within(timeout), "GET", path, None, None)
    }

    /// Sends a message and waits up to `timeout` for the answer (longer than [`DEADLINE`],
    /// for handlers that compute long on a busy machine).
    pub fn send_waiting(&self, id: &str, kind: &str, args: Value, timeout: Duration) -> Answer {
        let path = format!("/paglets/{id}/messages");
        let body = serde_json::json!({"kind": kind, "args": args}).to_string();
        self.try_request(
            &http_client_within(timeout),
            "POST",
            &path,
            Some(&body),
            None,
        )
        .unwrap_or_else(|e| panic!("{path}: {e}\nhost log:\n{}", self.log()))
    }

    fn try_request(
        &self,
        http: &reqwest::blocking::Client,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(key) = key.or(self.key.as_deref()) {
            request = request.bearer_auth(key);
        }
        if method == reqwest::Method::POST {
            request = request.header("content-type", "application/json");
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().map_err(|e| e.to_string())?;
        Answer::read(response)
    }

    /// Sends `request` as it is (HTTP/1.1 text, head and body) on a new connection and reads
    /// the answer until the host closes it; for what an HTTP client would not send.
    pub fn raw(&self, request: &str) -> RawAnswer {
        use std::io::{Read, Write};
        let mut stream = self.connect();
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        let mut bytes = Vec::new();
        // A reset after the answer (the host closing with unread input) ends the read too.
        let _ = stream.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = body.trim();
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        RawAnswer {
            status,
            head: head.to_string(),
            json,
        }
    }

    /// A new TCP connection to the host, with [`DEADLINE`] as its read timeout.
    pub fn connect(&self) -> std::net::TcpStream {
        let addr = self.url.trim_start_matches("http://");
        let stream = std::net::TcpStream::connect(addr).expect("connect to the host");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("set a read timeout");
        stream
    }

    /// The `host:port` the host listens on, as a `Host` header names it.
    pub fn authority(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.request("POST", path, Some(&body.to_string()), None)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, None, None)
    }

    /// Creates a paglet and returns its id, asserting 201.
    pub fn create(&self, class: &str, state: Value) -> String {
        let answer = self.post(
            "/paglets",
            &serde_json::json!({"class": class, "state": state}),
        );
        assert_eq!(answer.status, 201, "create {class}: {:?}", answer.json);
        answer.json["id"].as_str().expect("an id").to_string()
    }

    /// Sends a message and returns the answer.
    pub fn send(&self, id: &str, kind: &str, args: Value) -> Answer {
        self.post(
            &format!("/paglets/{id}/messages"),
            &serde_json::json!({"kind": kind, "args": args}),
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the host to exit by itself, e.g. after a signal the test sent.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the host to exit", || self.child.try_wait().ok().flatten())
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: `kill` on the pid of a child we own and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_for("the host to exit", || self.child.try_wait().ok().flatten())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `paglets host` with `--port 0` (unless `args` name a port), the paths, a name and the
/// persistence dir.
pub fn host_command(paths: &[&Path], args: &[&str], persistence: &Path) -> Command {
    let mut command = Command::new(paglets_bin());
    // A test that panics while another thread still holds its `TestHost` must not leave the
    // host running: it dies with the thread that started it.
    // SAFETY: `prctl` is async-signal-safe and touches only the child being set up.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.args(["host", "--no-watch"]);
    if !args.contains(&"--port") {
        command.args(["--port", "0"]);
    }
    if !args.contains(&"--name") {
        command.args(["--name", "test"]);
    }
    if !paths.is_empty() {
        command.arg("--paths").args(paths);
    }
    command.arg("--persistence-dir").arg(persistence);
    // Tests that want the watcher pass --watch, which overrides --no-watch.
    command.args(args);
    command.env("RUST_LOG", "info").env("HOME", persistence);
    command
}

/// Runs `paglets` with `args` to completion, without `PAGLETS_API_KEY` or `PAGLETS_HOST`
/// from the test's own environment.
pub fn paglets(args: &[&str]) -> std::process::Output {
    paglets_with_env(args, &[])
}

/// Runs `paglets` with `args` and `env` set to completion.
pub fn paglets_with_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(paglets_bin());
    command
        .args(args)
        .env_remove("PAGLETS_API_KEY")
        .env_remove("PAGLETS_HOST");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run paglets")
}

impl TestHost {
    /// Starts a host whose working directory is `cwd` (for `--auto-update-from-git`, a git
    /// checkout), with `persistence` as its persistence dir and `env` set. Relative `paths`
    /// are relative to `cwd`.
    pub fn start_in_dir(
        cwd: &Path,
        paths: &[&Path],
        args: &[&str],
        persistence: &Path,
        env: &[(&str, &str)],
    ) -> TestHost {
        TestHost::spawn(Some(cwd), paths, args, persistence, env)
    }
}

/// Sends `pi::Pi` paglet `id` a long computation from another thread and returns once the
/// paglet is busy with it; join the handle for the answer.
pub fn keep_busy(host: &std::sync::Arc<TestHost>, id: &str) -> std::thread::JoinHandle<Answer> {
    let running = {
        let (host, id) = (host.clone(), id.to_string());
        std::thread::spawn(move || host.send(&id, "digits", serde_json::json!({"n": 15000})))
    };
    wait_for("the paglet to be busy", || {
        (host.get(&format!("/paglets/{id}")).json["busy"] == true).then_some(())
    });
    running
}

impl TestHost {
    /// `POST path` with a JSON body; a transport failure (the host is gone) is an `Err`
    /// instead of a panic.
    pub fn try_post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        Answer::read(request.send().map_err(|e| e.to_string())?)
    }

    /// Kills the host with SIGKILL (a crash: nothing runs on the way out) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` (a host expected to stop by itself) to its exit, killing it if it still
/// runs after [`DEADLINE`]; returns its output.
pub fn run_to_exit(command: &mut Command) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || drop(tx.send(child.wait_with_output())));
    match rx.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("wait for the process"),
        Err(_) => {
            // SAFETY: SIGKILL to the child this function spawned and has not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the process did not exit within {DEADLINE:?}");
        }
    }
}
