//! `/paglets` routes: create, list, inspect, message and dispose paglets.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use plugin_api::PagletError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{ApiError, AppState, JsonBody, PagletId, blocking, within_handler_timeout};
use crate::runtime::{Origin, Replier, RuntimeError, StatusFilter};

/// Wakes an inactive paglet (off the async workers: it reads the store and runs its code).
pub(super) async fn wake(app: &AppState, id: &str) -> Result<(), ApiError> {
    let (rt, id) = (app.runtime.clone(), id.to_string());
    let woken = blocking(move || rt.activate(&id).map(drop).map_err(ApiError::from));
    within_handler_timeout(app, woken).await
}

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
    #[serde(default)]
    oneway: bool,
}

/// `GET /paglets` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    status: StatusFilter,
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
    let created = blocking(move || {
        Ok(rt.create(
            &body.class,
            body.state.as_ref(),
            body.id.as_deref(),
            Origin::New,
        )?)
    });
    let id = within_handler_timeout(&app, created).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "class": class}))).into_response())
}

/// `GET /paglets?status=`.
pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; status is one of active, inactive, quarantined, all",
            e.body_text()
        ))
    })?;
    Ok(Json(json!(app.runtime.list(query.status))))
}

/// `GET /paglets/{id}`: never waits for a busy paglet.
pub async fn detail(
    State(app): State<AppState>,
    PagletId(id): PagletId,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.runtime.detail(&id)?)))
}

/// `POST /paglets/{id}/messages`: 200 `{"reply": ...}`, or with `oneway` 202
/// `{"message_id"}` once queued. A message to an inactive paglet wakes it first.
pub async fn send(
    State(app): State<AppState>,
    PagletId(id): PagletId,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let args = body.args.map(|a| a.to_string()).unwrap_or_default();
    if body.oneway {
        let message_id = match app.runtime.send_oneway(&id, &body.kind, args.clone()) {
            Err(RuntimeError::Inactive(_)) => {
                wake(&app, &id).await?;
                app.runtime.send_oneway(&id, &body.kind, args)?
            }
            other => other?,
        };
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"message_id": message_id})),
        )
            .into_response());
    }
    let reply = match app.runtime.ask(&id, &body.kind, args.clone()).await {
        Err(RuntimeError::Inactive(_)) => {
            wake(&app, &id).await?;
            app.runtime.ask(&id, &body.kind, args).await?
        }
        other => other?,
    };
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
    let replier = Replier::new(move |r| drop(tx.send(r)));
    if app.runtime.is_inactive(&id) {
        wake(&app, &id).await?;
    }
    app.runtime.dispose(&id, replier)?;
    // No answer means the disposing hook's outcome is unknown: never a 204 then.
    let disposed = async {
        rx.await.unwrap_or_else(|_| {
            Err(PagletError::failed("the disposal was lost before it answered").into())
        })?;
        Ok(())
    };
    within_handler_timeout(&app, disposed).await?;
    Ok(StatusCode::NO_CONTENT)
}
