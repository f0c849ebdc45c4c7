//! The listening side of a real host: binding before anything is copied, which binds need a
//! key, and the bounds on connections (header timeout, connection cap, running out of
//! descriptors).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use paglets_e2e::{PluginDir, TestHost, paglets_bin, wait_for};

/// Reads until the host closes `stream`; `Ok` with what it sent, or the read's error (the
/// harness deadline passing shows as a timeout error).
fn read_until_closed(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        // A reset is the host closing too (it had unread input).
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Err(e) => Err(e),
    }
}

/// `GET /health` on a new connection: a request that needs an `accept`.
fn health_on_a_new_connection(host: &TestHost) -> u16 {
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host.authority()
    );
    host.raw(&request).status
}

#[test]
fn slow_and_idle_connections_are_closed_by_the_host() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &["--header-timeout", "1"]);
    // Opens and says nothing.
    let mut silent = host.connect();
    // Starts a request head and never finishes it (a slow-loris client).
    let mut slow = host.connect();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .expect("write");
    // Finishes one request, then sits idle on a keep-alive connection.
    let mut idle = host.connect();
    let head = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", host.authority());
    idle.write_all(head.as_bytes()).expect("write");
    for (what, stream) in [
        ("silent", &mut silent),
        ("slow", &mut slow),
        ("idle", &mut idle),
    ] {
        let read = read_until_closed(stream);
        assert!(
            read.is_ok(),
            "the {what} connection was not closed: {read:?}"
        );
        if what == "idle" {
            let answer = read.unwrap_or_default();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    assert_eq!(host.get("/health").status, 200);
}

#[test]
fn past_the_connection_cap_idle_connections_make_room_for_new_clients() {
    let plugins = PluginDir::with_examples();
    // A header timeout far beyond the test: only the cap can free a place.
    let host = TestHost::start(
        &[plugins.path()],
        &["--max-connections", "4", "--header-timeout", "3600"],
    );
    let mut idle: Vec<TcpStream> = (0..12).map(|_| host.connect()).collect();
    for _ in 0..3 {
        assert_eq!(health_on_a_new_connection(&host), 200);
    }
    // The oldest idle connections were the ones closed.
    let first = read_until_closed(&mut idle[0]);
    assert!(first.is_ok(), "{first:?}");
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/<pid>/fd")
        .count()
}

#[test]
fn health_answers_while_the_host_is_out_of_descriptors() {
    let plugins = PluginDir::with_examples();
    let host = TestHost::start(&[plugins.path()], &["--header-timeout", "3600"]);
    let pid = host.pid();
    // Room for a handful of connections beyond what the host holds now.
    let limit = open_descriptors(pid) + 6;
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed: {status}");
    // Far more idle sockets than descriptors left: accept runs into EMFILE.
    let _idle: Vec<TcpStream> = (0..40).map(|_| host.connect()).collect();
    for _ in 0..3 {
        assert_eq!(health_on_a_new_connection(&host), 200);
    }
    wait_for("the host to log the descriptor shortage", || {
        host.log().contains("Too many open files").then_some(())
    });
}

#[test]
fn a_port_in_use_is_refused_before_any_library_is_copied() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let output = Command::new(paglets_bin())
        .args([
            "host",
            "--name",
            "t",
            "--no-watch",
            "--port",
            &port,
            "--paths",
        ])
        .arg(plugins.path())
        .arg("--persistence-dir")
        .arg(persistence.path())
        .env_remove("PAGLETS_API_KEY")
        .env("HOME", persistence.path())
        .output()
        .expect("run paglets host");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("--port"),
        "{stderr}"
    );
    let copies = persistence.path().join("libs");
    let left: Vec<_> = std::fs::read_dir(&copies)
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "copies left behind: {left:?}");
}

#[test]
fn a_blank_api_key_is_no_key_so_a_wildcard_bind_is_refused() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    for blank in [" ", "\t ", ""] {
        let mut child = paglets_e2e::host_command(
            &[plugins.path()],
            &["--host", "0.0.0.0"],
            persistence.path(),
        )
        .env("PAGLETS_API_KEY", blank)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
        let status = wait_for("the host to exit", || child.try_wait().ok().flatten());
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        assert_eq!(status.code(), Some(2), "key {blank:?}: {stderr}");
        assert!(stderr.contains("not a loopback address"), "{stderr}");
    }
}

#[test]
fn public_url_needs_a_key_and_a_url() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    for (url, key, says) in [
        ("http://paglets.example:8765", "", "needs an API key"),
        ("paglets.example:8765", "k", "--public-url"),
        ("ftp://paglets.example", "k", "http://"),
        ("https://paglets.example", "k", "plain HTTP"),
    ] {
        let output = paglets_e2e::host_command(
            &[plugins.path()],
            &["--public-url", url],
            persistence.path(),
        )
        .env("PAGLETS_API_KEY", key)
        .output()
        .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
    }
}

#[test]
fn an_https_peer_is_refused_with_the_reason() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let output = paglets_e2e::host_command(
        &[plugins.path()],
        &["--peer", "https://lab-b.example:8765"],
        persistence.path(),
    )
    .output()
    .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plain HTTP"), "{stderr}");
}

#[test]
fn a_wildcard_bind_with_a_key_is_allowed_and_answers_with_the_key() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let host = TestHost::start_in(
        &[plugins.path()],
        &["--host", "0.0.0.0"],
        persistence.path(),
        &[("PAGLETS_API_KEY", "k")],
    );
    let health = host.get("/health");
    assert_eq!(health.status, 200, "{:?}", health.json);
    // The public URL names an address others can reach, never the wildcard.
    let url = health.json["url"].as_str().expect("url");
    assert!(!url.contains("0.0.0.0"), "{url}");
    assert_eq!(
        host.request("GET", "/health", None, Some("wrong")).status,
        401
    );
}

/// The soft and hard `Max open files` of process `pid`.
fn descriptor_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().expect("soft").to_string();
    let hard = fields.next().expect("hard").to_string();
    (soft, hard)
}

#[test]
fn the_host_raises_its_soft_descriptor_limit_to_the_hard_one() {
    let plugins = PluginDir::with_examples();
    let persistence = tempfile::tempdir().expect("temp dir");
    let mut command = paglets_e2e::host_command(&[plugins.path()], &[], persistence.path());
    // SAFETY: `setrlimit` is async-signal-safe and changes only the child being set up.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 4096,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .env_remove("PAGLETS_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("the listening line");
    let limits = descriptor_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening at"), "{line}");
    assert_eq!(limits, ("4096".to_string(), "4096".to_string()));
}
