//! Routes of moving paglets: dispatch, clone, retract, deactivate, activate, the arrivals
//! other hosts send, and the 308 forwarding of paglets that left.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plugin_api::{ArrivalReason, PagletError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::paglets::wake;
use super::{ApiError, AppState, JsonBody, PagletId, blocking, within_handler_timeout};
use crate::runtime::{ArrivalAnswer, ArrivalBody, Replier, RuntimeError};

/// `POST /paglets/{id}/dispatch` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchBody {
    to: String,
    /// `retract` when the target asked for the paglet (host to host).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /paglets/{id}/clone` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneBody {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// The body of `deactivate` and `activate`: nothing, or `{}`. (Reading it also keeps the
/// connection usable: a body left unread makes the server close it.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// `POST /paglets/{id}/retract` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetractBody {
    from: String,
}

fn answer_json(answer: &ArrivalAnswer) -> Value {
    json!({"id": answer.id, "host": answer.host, "url": answer.url})
}

async fn answered<T>(rx: oneshot::Receiver<Result<T, RuntimeError>>) -> Result<T, ApiError> {
    Ok(rx.await.unwrap_or_else(|_| {
        Err(PagletError::failed("the operation was lost before it answered").into())
    })?)
}

/// `POST /paglets/{id}/dispatch`: 200 `{"id", "host", "url"}` once the target holds it.
pub async fn dispatch(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(body): JsonBody<DispatchBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = match body.reason.as_deref() {
        None | Some("dispatch") => ArrivalReason::Dispatch,
        Some("retract") => ArrivalReason::Retract,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "reason '{other}': use dispatch or retract"
            )));
        }
    };
    let (rt, to) = (app.runtime.clone(), body.to.clone());
    let (tx, rx) = oneshot::channel();
    blocking(move || {
        let target = rt.resolve(&to)?;
        rt.dispatch(
            &id,
            target,
            &to,
            reason,
            Replier::new(move |r| drop(tx.send(r))),
        )?;
        Ok(())
    })
    .await?;
    Ok(Json(answer_json(&answered(rx).await?)))
}

/// `POST /paglets/{id}/clone`: 201 `{"id", "host", "url"}` of the copy.
pub async fn clone(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(body): JsonBody<CloneBody>,
) -> Result<Response, ApiError> {
    let rt = app.runtime.clone();
    let (tx, rx) = oneshot::channel();
    blocking(move || {
        let target = body.to.as_deref().map(|to| rt.resolve(to)).transpose()?;
        rt.clone_paglet(
            &id,
            target,
            body.id,
            Replier::new(move |r| drop(tx.send(r))),
        )?;
        Ok(())
    })
    .await?;
    let answer = answered(rx).await?;
    Ok((StatusCode::CREATED, Json(answer_json(&answer))).into_response())
}

/// `POST /paglets/{id}/retract`: asks the host `from` to dispatch the paglet here.
pub async fn retract(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(body): JsonBody<RetractBody>,
) -> Result<Json<Value>, ApiError> {
    let from = app.runtime.resolve(&body.from)?;
    let answer = app.runtime.retract(&id, from).await?;
    Ok(Json(answer_json(&answer)))
}

/// `POST /paglets/{id}/deactivate`: 200 once it sleeps in the store.
pub async fn deactivate(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<Value>, ApiError> {
    let (tx, rx) = oneshot::channel();
    app.runtime
        .deactivate(&id, Replier::new(move |r| drop(tx.send(r))))?;
    within_handler_timeout(&app, answered(rx)).await?;
    Ok(Json(json!({"id": id, "status": "inactive"})))
}

/// `POST /paglets/{id}/activate`: 200 once it runs again.
pub async fn activate(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(NoFields {}): JsonBody<NoFields>,
) -> Result<Json<Value>, ApiError> {
    wake(&app, &id).await?;
    Ok(Json(json!({"id": id, "status": "active"})))
}

/// `POST /mesh/arrivals`: one arriving paglet (host to host).
pub async fn arrivals(State(app): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: ArrivalBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a paglet transfer: {e}")))?;
    let rt = app.runtime.clone();
    let answer = blocking(move || Ok(rt.arrive(body)?)).await?;
    Ok(Json(json!(answer)))
}

/// 308 `moved` for a request about a paglet that left this host (while `--forward-ttl`
/// lasts): the same path and query on its new host.
pub fn forwarded(app: &AppState, req: &Request) -> Option<ApiError> {
    let path = req.uri().path();
    // A retract is asked of the host the paglet comes back to: never forwarded.
    let rest = path
        .strip_prefix("/paglets/")
        .filter(|rest| !rest.ends_with("/retract"))?;
    let id = rest.split('/').next().unwrap_or_default();
    let url = app
        .runtime
        .forward_url(id)
        .filter(|_| !app.runtime.exists(id))?;
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = format!("{}{path}{query}", url.trim_end_matches('/'));
    Some(ApiError::moved(id, &location))
}
