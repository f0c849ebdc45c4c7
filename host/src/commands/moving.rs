//! The client commands that move a paglet or change its status: `dispatch`, `clone`,
//! `retract`, `deactivate`, `activate`. Each is one POST to a running host (through
//! `client::call`, which follows the redirects of a paglet that moved), printed as one line
//! or, with `--json`, as the host's JSON answer.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::CommandResult;
use super::client::{Wait, call, id_segment, print};
use crate::cli::{ClientArgs, CloneArgs, DispatchArgs, PagletArgs, RetractArgs};

/// `POST /paglets/{id}/{action}` with `body`; the host's answer.
fn post(client: &ClientArgs, id: &str, action: &str, body: Value) -> Result<Value, super::Failure> {
    let path = format!("/paglets/{}/{action}", id_segment(id)?);
    call(client, Wait::Bounded, Method::POST, &path, Some(body))
}

/// Where an answer `{"id", "host", "url"}` says the paglet is: `lab-b (http://...)`.
fn place(answer: &Value) -> String {
    let host = answer["host"].as_str().unwrap_or_default();
    let url = answer["url"].as_str().unwrap_or_default();
    format!("{host} ({url})")
}

/// The top-level entry point for `paglets dispatch`.
pub fn dispatch(args: DispatchArgs) -> CommandResult {
    let value = post(&args.client, &args.id, "dispatch", json!({ "to": args.to }))?;
    print(args.client.json, &value, |v| {
        format!("{} moved to {}\n", args.id, place(v))
    })
}

/// The top-level entry point for `paglets clone`.
pub fn clone(args: CloneArgs) -> CommandResult {
    // Absent, not null: no `to` means a copy on this host, no `id` one the host picks.
    let mut body = Map::new();
    if let Some(to) = &args.to {
        body.insert("to".into(), json!(to));
    }
    if let Some(new_id) = &args.new_id {
        body.insert("id".into(), json!(new_id));
    }
    let value = post(&args.client, &args.id, "clone", Value::Object(body))?;
    print(args.client.json, &value, |v| {
        let copy = v["id"].as_str().unwrap_or_default();
        format!("{} cloned as {copy} on {}\n", args.id, place(v))
    })
}

/// The top-level entry point for `paglets retract`.
pub fn retract(args: RetractArgs) -> CommandResult {
    let value = post(
        &args.client,
        &args.id,
        "retract",
        json!({ "from": args.from }),
    )?;
    print(args.client.json, &value, |v| {
        format!("{} retracted from {} to {}\n", args.id, args.from, place(v))
    })
}

/// The top-level entry point for `paglets deactivate`.
pub fn deactivate(args: PagletArgs) -> CommandResult {
    let value = post(&args.client, &args.id, "deactivate", json!({}))?;
    print(args.client.json, &value, |_| {
        format!("deactivated {}\n", args.id)
    })
}

/// The top-level entry point for `paglets activate`.
pub fn activate(args: PagletArgs) -> CommandResult {
    let value = post(&args.client, &args.id, "activate", json!({}))?;
    print(args.client.json, &value, |_| {
        format!("activated {}\n", args.id)
    })
}
