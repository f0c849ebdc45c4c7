//! The client commands: `classes`, `list`, `create`, `send`, `dispose`, `health`, `mesh`,
//! `update`, and the HTTP call they share with `moving.rs`. Each is one HTTP call to a
//! running host (following a moved paglet's redirects), printed as a table or, with
//! `--json`, as JSON.

use std::time::Duration;

use anyhow::anyhow;
use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{CommandResult, Exit, Failure};
use crate::cli::{ClientArgs, CreateArgs, ListArgs, PagletArgs, SendArgs, UpdateArgs};

fn api_key(args: &ClientArgs) -> Result<Option<String>, Failure> {
    crate::config::api_key(args.api_key_env.as_deref()).map_err(|e| Failure::Usage(e.0))
}

/// How long a command waits for its answer unless `--timeout` says otherwise.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// A bounded call (listing, creating, disposing).
    Bounded,
    /// A message, which runs as long as the paglet's handler does.
    AsLongAsItTakes,
}

/// The default bound of [`Wait::Bounded`] calls.
const BOUNDED_WAIT: Duration = Duration::from_secs(30);

/// Connecting never takes long on a network that works; a dead address must not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The host's base URL: `--host` (or `PAGLETS_HOST`), `http://` when no scheme is given.
pub fn base_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

/// A paglet id as one URL path segment: every byte outside `A-Z a-z 0-9 - . _ ~`
/// percent-encoded, so an id can never name another route. `.` and `..` cannot travel in a
/// URL at all (clients and servers resolve them), and are never ids.
pub(super) fn id_segment(id: &str) -> Result<String, Failure> {
    if id == "." || id == ".." {
        return Err(Failure::Usage(format!(
            "invalid paglet id '{id}': {}",
            crate::runtime::ID_RULE
        )));
    }
    let mut segment = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(segment)
}

/// How many redirects one command follows: a paglet that moved answers 308 on its old host,
/// and may have moved on since.
const MAX_REDIRECTS: usize = 3;

/// One call; a 2xx answer's JSON (or `null` for 204), anything else a failure with the
/// host's message. A 307 or 308 (a paglet that moved) is followed here, up to
/// [`MAX_REDIRECTS`] times, with the same method, body and API key.
pub(super) fn call(
    args: &ClientArgs,
    wait: Wait,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let base = base_url(&args.host);
    let timeout = match (args.timeout, wait) {
        (Some(0), _) | (None, Wait::AsLongAsItTakes) => None,
        (Some(seconds), _) => Some(Duration::from_secs(seconds)),
        (None, Wait::Bounded) => Some(BOUNDED_WAIT),
    };
    let client = Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        // reqwest drops `Authorization` on a redirect to another host or port, so a moved
        // paglet on a keyed host would answer 401: redirects are followed below instead.
        .redirect(Policy::none())
        .build()
        .map_err(|e| anyhow!("cannot build an HTTP client: {e}"))?;
    let key = api_key(args)?;
    let mut url = Url::parse(&format!("{base}{path}"))
        .map_err(|e| Failure::Usage(format!("--host {base} is not a usable URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(Failure::Usage(format!(
            "--host {base}: the client speaks plain HTTP (no TLS in this build); give the \
             host's http:// URL"
        )));
    }
    let mut redirects = 0;
    loop {
        let response =
            send_once(&client, &method, &url, key.as_deref(), body.as_ref()).map_err(|e| {
                let tried = if redirects == 0 {
                    base.clone()
                } else {
                    url.origin().ascii_serialization()
                };
                unreachable(&tried, timeout, &e)
            })?;
        let status = response.status();
        if status == StatusCode::PERMANENT_REDIRECT || status == StatusCode::TEMPORARY_REDIRECT {
            let next = redirect_target(&url, &response)?;
            if redirects == MAX_REDIRECTS {
                return Err(anyhow!(
                    "{url} redirects to {next}, past the {MAX_REDIRECTS} redirects a command follows"
                )
                .into());
            }
            redirects += 1;
            url = next;
            continue;
        }
        return answer(&url, response);
    }
}

/// One request: the API key, and for a POST the JSON content type, on every one.
fn send_once(
    client: &Client,
    method: &Method,
    url: &Url,
    key: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Result<Response> {
    let mut request = client.request(method.clone(), url.clone());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if method == Method::POST {
        // Every POST says it is JSON, body or not: the host refuses anything else.
        request = request.header(CONTENT_TYPE, "application/json");
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    request.send()
}

/// Where a redirect points: its `Location`, relative to the URL that answered.
fn redirect_target(url: &Url, response: &Response) -> Result<Url, Failure> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| {
            anyhow!(
                "{url} answered {} without a usable Location header",
                response.status().as_u16()
            )
        })?;
    url.join(location)
        .map_err(|e| anyhow!("{url} redirects to '{location}', which is not a URL: {e}").into())
}

/// A final answer: its JSON (or `null` when empty) on success, else the host's error.
fn answer(url: &Url, response: Response) -> Result<Value, Failure> {
    let status = response.status();
    let text = response
        .text()
        .map_err(|e| anyhow!("reading the answer from {url}: {e}"))?;
    let value: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        return Ok(value);
    }
    let code = value["error"]["code"].as_str().unwrap_or("error");
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    Err(anyhow!("the host answered {} {code}: {message}", status.as_u16()).into())
}

/// Why no answer came, naming the URL tried and how to pick another.
fn unreachable(base: &str, timeout: Option<Duration>, error: &reqwest::Error) -> Failure {
    let cause = std::error::Error::source(error)
        .map_or_else(|| error.to_string(), |source| source.to_string());
    if error.is_timeout() {
        let waited = timeout.map_or_else(String::new, |t| format!(" within {}s", t.as_secs()));
        return anyhow!("no answer from {base}{waited} ({cause}); wait longer with --timeout SECONDS (0: no limit)").into();
    }
    if error.is_builder() {
        return Failure::Usage(format!("--host {base} is not a usable URL: {cause}"));
    }
    anyhow!(
        "cannot reach the host at {base} ({cause}); is it running? pick another host with --host URL or PAGLETS_HOST"
    )
    .into()
}

fn parse_json(flag: &str, text: Option<&str>) -> Result<Option<Value>, Failure> {
    text.map(|t| {
        serde_json::from_str(t).map_err(|e| Failure::Usage(format!("{flag} is not JSON: {e}")))
    })
    .transpose()
}

pub(super) fn print(
    json: bool,
    value: &Value,
    table: impl FnOnce(&Value) -> String,
) -> CommandResult {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", table(value));
    }
    Ok(Exit::Ok)
}

fn rows(value: &Value, columns: &[&str]) -> String {
    let items = value.as_array().cloned().unwrap_or_default();
    let cell = |item: &Value, col: &str| match &item[col] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            items
                .iter()
                .map(|i| cell(i, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
    for item in &items {
        out.push_str(&line(columns.iter().map(|c| cell(item, c)).collect()));
    }
    out
}

/// The top-level entry point for `paglets classes`.
pub fn classes(args: ClientArgs) -> CommandResult {
    let value = call(&args, Wait::Bounded, Method::GET, "/classes", None)?;
    print(args.json, &value, |v| {
        rows(v, &["class", "library_version", "description"])
    })
}

/// The top-level entry point for `paglets list`.
pub fn list(args: ListArgs) -> CommandResult {
    let path = match args.status {
        Some(status) => format!("/paglets?status={}", status.name()),
        None => "/paglets".to_string(),
    };
    let value = call(&args.client, Wait::Bounded, Method::GET, &path, None)?;
    print(args.client.json, &value, |v| {
        rows(v, &["id", "class", "status", "messages_handled"])
    })
}

/// The top-level entry point for `paglets create`.
pub fn create(args: CreateArgs) -> CommandResult {
    let state = parse_json("--state", args.state.as_deref())?;
    let body = json!({"class": args.class, "state": state, "id": args.id});
    let value = call(
        &args.client,
        Wait::Bounded,
        Method::POST,
        "/paglets",
        Some(body),
    )?;
    print(args.client.json, &value, |v| {
        format!("{}\n", v["id"].as_str().unwrap_or_default())
    })
}

/// The top-level entry point for `paglets send`: waits for the reply and prints it, or with
/// `--oneway` prints the id of the queued message.
pub fn send(args: SendArgs) -> CommandResult {
    let mut body = json!({"kind": args.kind, "args": parse_json("--args", args.args.as_deref())?});
    // A oneway message is answered once queued, so its wait is bounded like a listing's.
    let wait = if args.oneway {
        body["oneway"] = json!(true);
        Wait::Bounded
    } else {
        Wait::AsLongAsItTakes
    };
    let path = format!("/paglets/{}/messages", id_segment(&args.id)?);
    let value = call(&args.client, wait, Method::POST, &path, Some(body))?;
    print(args.client.json, &value, |v| {
        if args.oneway {
            format!("{}\n", v["message_id"].as_str().unwrap_or_default())
        } else {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&v["reply"]).unwrap_or_default()
            )
        }
    })
}

/// The top-level entry point for `paglets dispose`.
pub fn dispose(args: PagletArgs) -> CommandResult {
    let path = format!("/paglets/{}", id_segment(&args.id)?);
    call(&args.client, Wait::Bounded, Method::DELETE, &path, None)?;
    if !args.client.json {
        println!("disposed {}", args.id);
    }
    Ok(Exit::Ok)
}

/// The top-level entry point for `paglets health`.
pub fn health(args: ClientArgs) -> CommandResult {
    let value = call(&args, Wait::Bounded, Method::GET, "/health", None)?;
    print(args.json, &value, |v| {
        let mut out = String::new();
        for key in [
            "name",
            "url",
            "status",
            "version",
            "abi_version",
            "code_version",
            "paglets",
            "libraries",
        ] {
            let shown = match &v[key] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("{key:<13} {shown}\n"));
        }
        out
    })
}

/// The top-level entry point for `paglets mesh`.
pub fn mesh(args: ClientArgs) -> CommandResult {
    let value = call(&args, Wait::Bounded, Method::GET, "/mesh/hosts", None)?;
    print(args.json, &value, |v| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
        let table: Vec<Value> = hosts
            .iter()
            .map(|h| {
                let tags: Vec<&str> = h["tags"]
                    .as_array()
                    .map(|t| t.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let name = h["name"].as_str().unwrap_or_default();
                let last_seen = match h["last_seen"].as_u64() {
                    _ if h["self"] == true => "now".to_string(),
                    Some(t) => format!("{}s ago", now.saturating_sub(t)),
                    None => String::new(),
                };
                json!({
                    "name": if h["self"] == true { format!("{name} (self)") } else { name.to_string() },
                    "url": h["url"],
                    "state": h["state"],
                    "compatible": if h["compatible"] == true { "yes" } else { "no" },
                    "code version": h["code_version"],
                    "tags": tags.join(","),
                    "last seen": last_seen,
                })
            })
            .collect();
        rows(
            &Value::Array(table),
            &[
                "name",
                "url",
                "state",
                "compatible",
                "code version",
                "tags",
                "last seen",
            ],
        )
    })
}

/// The top-level entry point for `paglets update`: `POST /admin/git-update`, which answers
/// when the build and the reload are done. Exit 0 when the result is `ok`, 1 otherwise.
pub fn update(args: UpdateArgs) -> CommandResult {
    let mut body = json!({});
    if let Some(target) = &args.target_hash {
        body["target_hash"] = json!(target);
    }
    if args.force {
        body["force"] = json!(true);
    }
    let client = &args.client;
    let path = "/admin/git-update";
    let value = call(
        client,
        Wait::AsLongAsItTakes,
        Method::POST,
        path,
        Some(body),
    )?;
    print(client.json, &value, |v| {
        let mut out = String::new();
        for key in [
            "status",
            "before_head",
            "after_head",
            "build_run",
            "reloaded",
            "error",
        ] {
            let shown = match &v[key] {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("{key:<12} {shown}\n"));
        }
        out
    })?;
    Ok(if value["ok"] == true {
        Exit::Ok
    } else {
        Exit::Failed
    })
}
