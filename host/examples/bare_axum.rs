//! The floor the host's HTTP figures are measured against (`host/benches/http_figures.py`): a
//! bare axum server on tokio's default runtime doing the JSON work of a message to a
//! `counter::Counter`, with nothing else (no paglet, no mailbox, no threads but tokio's).
//!
//! `POST /paglets/{id}/messages` parses `{"kind", "args"}`, turns `args` into text and parses
//! that text again (as a paglet parses its arguments), increments a counter under a lock and
//! answers `{"reply": {"count": n}}` from the reply's serialised text, as the host does.
//! `GET /health` answers `{"status": "ok"}`.
//!
//! Run: `cargo run --release -p paglets --example bare_axum -- [PORT]` (0, the default, picks
//! a free port); it prints `listening at http://ADDR` like `paglets host` does.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

/// A message body, as the host reads it.
#[derive(Deserialize)]
struct SendBody {
    kind: String,
    #[serde(default)]
    args: Option<Value>,
}

/// What `counter`'s `increment` takes.
#[derive(Deserialize, Default)]
struct Increment {
    #[serde(default)]
    by: Option<i64>,
}

async fn message(
    State(count): State<Arc<Mutex<i64>>>,
    Path(_id): Path<String>,
    Json(body): Json<SendBody>,
) -> impl IntoResponse {
    let args = body.args.map(|a| a.to_string()).unwrap_or_default();
    let by = if args.is_empty() || body.kind != "increment" {
        1
    } else {
        serde_json::from_str::<Increment>(&args)
            .unwrap_or_default()
            .by
            .unwrap_or(1)
    };
    let count = {
        let mut count = count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *count += by;
        *count
    };
    let reply = json!({ "count": count }).to_string();
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"reply\":{reply}}}"),
    )
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let app = Router::new()
                .route("/health", get(health))
                .route("/paglets/{id}/messages", post(message))
                .with_state(Arc::new(Mutex::new(0i64)));
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            println!("bare axum listening at http://{}", listener.local_addr()?);
            axum::serve(listener, app).await
        })
}
