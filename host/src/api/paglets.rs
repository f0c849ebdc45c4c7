//! `/paglets` routes: create, list, inspect, message and dispose paglets.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use plugin_api::PagletError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{ApiError, AppState, JsonBody, PagletId, blocking};
use crate::runtime::{Origin, Replier};

/// `POST /paglets` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    class: String,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

/// `POST /paglets/{id}/messages` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    kind: String,
    #[serde(default)]
    args: Option<Value>,
}

/// `POST /paglets`: 201 `{"id", "class"}`.
pub async fn create(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    if body.state.as_ref().is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request("state must be a JSON object"));
    }
    let rt = app.runtime.clone();
    let class = body.class.clone();
    let id = blocking(move || {
        Ok(rt.create(
            &body.class,
            body.state.as_ref(),
            body.id.as_deref(),
            Origin::New,
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "class": class}))).into_response())
}

/// `GET /paglets`.
pub async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.runtime.list()))
}

/// `GET /paglets/{id}`: never waits for a busy paglet.
pub async fn detail(
    State(app): State<AppState>,
    PagletId(id): PagletId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.runtime.detail(&id)?)))
}

/// `POST /paglets/{id}/messages`: 200 `{"reply": ...}`.
pub async fn send(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let (tx, rx) = oneshot::channel();
    let args = body.args.map(|a| a.to_string()).unwrap_or_default();
    app.runtime.send(
        &id,
        &body.kind,
        args,
        Replier::new(move |r| drop(tx.send(r))),
    )?;
    let reply = rx
        .await
        .unwrap_or_else(|_| Err(PagletError::failed("the reply was dropped").into()))?;
    // The reply is JSON text serialised by the paglet's serde_json; wrap it without a re-parse.
    let body = format!("{{\"reply\":{reply}}}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `DELETE /paglets/{id}`: 204 once the disposing hook ran.
pub async fn dispose(
    State(app): State<AppState>,
    PagletId(id): PagletId,
) -> Result<StatusCode, ApiError> {
    let (tx, rx) = oneshot::channel();
    app.runtime
        .dispose(&id, Replier::new(move |r| drop(tx.send(r))))?;
    // No answer means the disposing hook's outcome is unknown: never a 204 then.
    rx.await.unwrap_or_else(|_| {
        Err(PagletError::failed("the disposal was lost before it answered").into())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
