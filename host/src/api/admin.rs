//! `/health`, `/classes`, `/libraries` and `/admin/*`.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, JsonBody, blocking};
use crate::update::{UpdateRequest, UpdateResult, UpdateStatus};

/// `GET /health`.
pub async fn health(State(app): State<AppState>) -> Json<Value> {
    let config = &app.config;
    let updater = app.updater.as_deref();
    let applied = updater.map(|u| u.applied());
    let libraries = app.runtime.registry().loaded_count();
    let me = app.mesh.own_meta();
    let persistence = app.runtime.persistence();
    Json(json!({
        "name": config.name,
        "url": &*app.url,
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "abi_version": plugin_api::PAGLETS_ABI,
        "mesh_version": me.mesh_version,
        "code_version": me.code_version,
        "tags": me.tags,
        "properties": me.properties,
        "peers": config.peers,
        "paglets": me.paglets,
        "libraries": libraries,
        "durability": app.config.durability,
        "persistence": persistence.label(),
        "persistence_error": persistence.error(),
        "auto_update_from_git": me.auto_update_from_git,
        "git_head": updater.and_then(|u| u.head()),
        "git_process_start_head": updater.map(|u| u.process_start_head()),
        "git_applied_head": applied.as_ref().map(|a| &a.head),
        "git_update": applied.as_ref().and_then(|a| a.last.as_ref()),
        "mesh": app.mesh.health(),
    }))
}

/// `GET /classes`.
pub async fn classes(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.runtime.registry().class_views()))
}

/// `GET /libraries`.
pub async fn libraries(State(app): State<AppState>) -> Json<Value> {
    let mut views = json!(app.runtime.registry().library_views());
    // An isolated library also shows its worker: quarantined or not, its crashes.
    for view in views.as_array_mut().into_iter().flatten() {
        let name = view["name"].as_str().unwrap_or_default().to_string();
        let path = std::path::PathBuf::from(view["path"].as_str().unwrap_or_default());
        if let Some(isolation) = app.runtime.isolation_view(&name, &path) {
            view["isolation"] = isolation;
        }
    }
    Json(views)
}

/// `POST /admin/rescan`: what changed, and which instances moved.
pub async fn rescan(
    State(app): State<AppState>,
    JsonBody(super::moving::NoFields {}): JsonBody<super::moving::NoFields>,
) -> Result<Json<Value>, ApiError> {
    let rt = app.runtime.clone();
    let reply = blocking(move || {
        // A git update is building: a rescan now could load a half-built library.
        rt.rescan_unless_paused().ok_or_else(|| {
            ApiError::conflict("a git update is running; it rescans when its build is done")
        })
    })
    .await?;
    Ok(Json(json!(reply)))
}

/// `POST /admin/git-update` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitUpdateBody {
    #[serde(default)]
    target_hash: Option<String>,
    #[serde(default)]
    source_name: Option<String>,
    #[serde(default)]
    source_url: Option<String>,
    /// Build even a commit whose build already failed on this host.
    #[serde(default)]
    force: bool,
}

/// `POST /admin/git-update`: synchronous; every outcome is 200 with the result, a second
/// request while one runs on this host is 409.
pub async fn git_update(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<GitUpdateBody>,
) -> Result<Json<Value>, ApiError> {
    if let Some(target) = &body.target_hash {
        let hex = target.bytes().all(|b| b.is_ascii_hexdigit());
        if !(4..=64).contains(&target.len()) || !hex {
            return Err(ApiError::bad_request(format!(
                "target_hash '{target}' must be 4 to 64 hex digits"
            )));
        }
    }
    if let Some(source) = &body.source_name {
        tracing::info!(source, url = ?body.source_url, target = ?body.target_hash, "update requested by a peer");
    }
    let Some(updater) = app.updater.clone() else {
        return Ok(Json(json!(UpdateResult::disabled(body.target_hash))));
    };
    let runtime = app.runtime.clone();
    let request = UpdateRequest {
        target: body.target_hash,
        force: body.force,
    };
    let result = blocking(move || {
        updater.update(&runtime, &request).ok_or_else(|| {
            ApiError::conflict("an update is already running on this host (status: running)")
        })
    })
    .await?;
    if result.status == UpdateStatus::Updated
        && let Some(aligner) = &app.aligner
    {
        aligner.announce_updated();
    }
    if result.restart_required {
        app.restart.notify_one();
    }
    Ok(Json(json!(result)))
}
