//! The client commands: `classes`, `list`, `create`, `send`, `dispose`, `health`. Each is
//! one HTTP call to a running host, printed as a table or, with `--json`, as JSON.

use anyhow::anyhow;
use reqwest::Method;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::{CommandResult, Exit, Failure};
use crate::cli::{ClientArgs, CreateArgs, DisposeArgs, SendArgs};

fn api_key(args: &ClientArgs) -> Result<Option<String>, Failure> {
    crate::config::api_key(args.api_key_env.as_deref()).map_err(|e| Failure::Usage(e.0))
}

/// One call; a 2xx answer's JSON (or `null` for 204), anything else a failure with the
/// host's message.
fn call(
    args: &ClientArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let url = format!("{}{path}", args.host.trim_end_matches('/'));
    let mut request = Client::new().request(method, &url);
    if let Some(key) = api_key(args)? {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .map_err(|e| anyhow!("cannot reach the host at {}: {e}", args.host))?;
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

fn parse_json(flag: &str, text: Option<&str>) -> Result<Option<Value>, Failure> {
    text.map(|t| {
        serde_json::from_str(t).map_err(|e| Failure::Usage(format!("{flag} is not JSON: {e}")))
    })
    .transpose()
}

fn print(json: bool, value: &Value, table: impl FnOnce(&Value) -> String) -> CommandResult {
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
    let value = call(&args, Method::GET, "/classes", None)?;
    print(args.json, &value, |v| {
        rows(v, &["class", "library_version", "description"])
    })
}

/// The top-level entry point for `paglets list`.
pub fn list(args: ClientArgs) -> CommandResult {
    let value = call(&args, Method::GET, "/paglets", None)?;
    print(args.json, &value, |v| {
        rows(v, &["id", "class", "messages_handled"])
    })
}

/// The top-level entry point for `paglets create`.
pub fn create(args: CreateArgs) -> CommandResult {
    let state = parse_json("--state", args.state.as_deref())?;
    let body = json!({"class": args.class, "state": state, "id": args.id});
    let value = call(&args.client, Method::POST, "/paglets", Some(body))?;
    print(args.client.json, &value, |v| {
        format!("{}\n", v["id"].as_str().unwrap_or_default())
    })
}

/// The top-level entry point for `paglets send`.
pub fn send(args: SendArgs) -> CommandResult {
    let body = json!({"kind": args.kind, "args": parse_json("--args", args.args.as_deref())?});
    let value = call(
        &args.client,
        Method::POST,
        &format!("/paglets/{}/messages", args.id),
        Some(body),
    )?;
    print(args.client.json, &value, |v| {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&v["reply"]).unwrap_or_default()
        )
    })
}

/// The top-level entry point for `paglets dispose`.
pub fn dispose(args: DisposeArgs) -> CommandResult {
    call(
        &args.client,
        Method::DELETE,
        &format!("/paglets/{}", args.id),
        None,
    )?;
    if !args.client.json {
        println!("disposed {}", args.id);
    }
    Ok(Exit::Ok)
}

/// The top-level entry point for `paglets health`.
pub fn health(args: ClientArgs) -> CommandResult {
    let value = call(&args, Method::GET, "/health", None)?;
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
