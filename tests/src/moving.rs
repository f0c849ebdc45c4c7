//! Moving paglets: hosts that come back on their own port and persistence dir after a kill
//! (a source keeps its target's URL in the departing record), requests that follow 308 by
//! hand as the contract's clients do, and where a paglet is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};

use crate::{Answer, PluginDir, TestHost, wait_for};

/// Hops a client follows before it gives up, as the contract's clients do.
pub const MAX_HOPS: usize = 3;

/// A host that can be stopped, killed and started again as the same host: one name, one
/// plugin folder, one persistence dir, and after its first start one port.
pub struct Site {
    name: String,
    plugins: PluginDir,
    persistence: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// 0 until the first start picked one.
    port: AtomicU16,
}

impl Site {
    /// A host named `name` over copies of `libraries`, started with `args`.
    pub fn new(name: &str, libraries: &[PathBuf], args: &[&str]) -> Site {
        let plugins = PluginDir::new();
        for library in libraries {
            plugins.add(library);
        }
        Site {
            name: name.to_string(),
            plugins,
            persistence: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            port: AtomicU16::new(0),
        }
    }

    /// The same, started with `PAGLETS_API_KEY=key`.
    pub fn with_key(mut self, key: &str) -> Site {
        self.env.push(("PAGLETS_API_KEY".into(), key.into()));
        self
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its persistence dir.
    pub fn persistence(&self) -> &Path {
        self.persistence.path()
    }

    /// Starts the host: on a free port the first time, on that same port afterwards.
    pub fn start(&self) -> TestHost {
        let port = self.port.load(Ordering::Acquire).to_string();
        let mut args = vec!["--name", &self.name, "--port", &port];
        args.extend(self.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let host = TestHost::start_in(&[self.plugins.path()], &args, self.persistence.path(), &env);
        let bound: u16 = host
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL");
        self.port.store(bound, Ordering::Release);
        host
    }
}

/// The URL of a loopback port that nothing listens on (bound, then closed again).
pub fn closed_url() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("address").port();
    format!("http://127.0.0.1:{port}")
}

fn client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(crate::http_client)
}

/// Sends `method url` (a JSON body for a POST) with `key` once, following nothing; a
/// transport failure (a host that is gone) is an `Err`.
pub fn request_url(
    method: &str,
    url: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Result<Answer, String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client().request(method.clone(), url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if method == reqwest::Method::POST {
        request = request
            .header("content-type", "application/json")
            .body(body.map(Value::to_string).unwrap_or_default());
    }
    Answer::read(request.send().map_err(|e| format!("{url}: {e}"))?)
}

/// [`request_url`], following 308 answers by hand up to [`MAX_HOPS`] and sending the key
/// again each time. Returns the last answer and the URL that gave it.
pub fn follow(
    method: &str,
    url: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Result<(Answer, String), String> {
    let mut url = url.to_string();
    let mut hops = 0;
    loop {
        let answer = request_url(method, &url, body, key)?;
        if answer.status != 308 || hops == MAX_HOPS {
            return Ok((answer, url));
        }
        hops += 1;
        let location = answer
            .location
            .clone()
            .ok_or_else(|| format!("{url}: 308 without Location: {:?}", answer.json))?;
        url = if location.starts_with('/') {
            format!("{}{location}", origin(&url))
        } else {
            location
        };
    }
}

/// `http://host:port` of a URL.
fn origin(url: &str) -> &str {
    let rest = url.trim_start_matches("http://");
    let end = rest
        .find('/')
        .map_or(url.len(), |i| i + url.len() - rest.len());
    &url[..end]
}

/// Sends message `kind` with `args` to paglet `id` through `host`, following 308s.
pub fn send_following(
    host: &TestHost,
    id: &str,
    kind: &str,
    args: Value,
) -> Result<Answer, String> {
    let url = format!("{}/paglets/{id}/messages", host.url);
    let body = json!({"kind": kind, "args": args});
    follow("POST", &url, Some(&body), host.key.as_deref()).map(|(answer, _)| answer)
}

/// `POST /paglets/{id}/dispatch {"to": to}` on `host`.
pub fn dispatch(host: &TestHost, id: &str, to: &str) -> Answer {
    host.post(&format!("/paglets/{id}/dispatch"), &json!({ "to": to }))
}

/// The ids `host` lists with `?status=status`, with their rows.
pub fn listed(host: &TestHost, status: &str) -> Vec<Value> {
    let answer = host.get(&format!("/paglets?status={status}"));
    assert_eq!(
        answer.status, 200,
        "/paglets?status={status}: {:?}",
        answer.json
    );
    answer.json.as_array().cloned().unwrap_or_default()
}

/// Whether `host` holds paglet `id` in any status.
pub fn holds(host: &TestHost, id: &str) -> bool {
    listed(host, "all").iter().any(|row| row["id"] == id)
}

/// Clients that send `increment` to one paglet through one host's URL, following 308s,
/// until told to stop: each 200 is counted (and whether it came from another host),
/// anything else is written down.
pub struct Clients {
    acked: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Starts `n` clients sending to paglet `id` through `host`.
    pub fn start(n: usize, host: &TestHost, id: &str) -> Clients {
        let clients = Clients {
            acked: Arc::default(),
            forwarded: Arc::default(),
            stop: Arc::default(),
            failures: Arc::default(),
            threads: Vec::new(),
        };
        let threads = (0..n)
            .map(|_| {
                let url = format!("{}/paglets/{id}/messages", host.url);
                let key = host.key.clone();
                let (acked, forwarded, stop, failures) = (
                    clients.acked.clone(),
                    clients.forwarded.clone(),
                    clients.stop.clone(),
                    clients.failures.clone(),
                );
                std::thread::spawn(move || {
                    let body = json!({"kind": "increment"});
                    while !stop.load(Ordering::Acquire) {
                        match follow("POST", &url, Some(&body), key.as_deref()) {
                            Ok((answer, last)) if answer.status == 200 => {
                                acked.fetch_add(1, Ordering::AcqRel);
                                if last != url {
                                    forwarded.fetch_add(1, Ordering::AcqRel);
                                }
                            }
                            other => {
                                let mut failures = failures.lock().expect("failures");
                                failures.push(format!("{other:?}"));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Clients { threads, ..clients }
    }

    /// Increments answered 200 so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Increments answered 200 by another host than the first, after a 308.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Acquire)
    }

    /// Waits until `more` further increments were answered 200 (or a client failed).
    pub fn wait_for_more(&self, more: u64) {
        let target = self.acked() + more;
        wait_for(&format!("{target} increments answered"), || {
            let failed = !self.failures.lock().expect("failures").is_empty();
            (failed || self.acked() >= target).then_some(())
        });
    }

    /// Stops the clients, asserts that every request was answered 200, and returns how many
    /// there were.
    pub fn finish(self) -> u64 {
        let Clients {
            acked,
            stop,
            forwarded: _,
            failures,
            threads,
        } = self;
        stop.store(true, Ordering::Release);
        for thread in threads {
            thread.join().expect("a client thread");
        }
        let failures = failures.lock().expect("failures");
        assert!(
            failures.is_empty(),
            "requests not answered 200: {failures:?}"
        );
        acked.load(Ordering::Acquire)
    }
}
