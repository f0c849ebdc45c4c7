//! `/health`, `/classes`, `/libraries`, `/admin/*` and `/mesh/hosts`.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, JsonBody, blocking};

/// `GET /health`.
pub async fn health(State(app): State<AppState>) -> Json<Value> {
    let config = &app.config;
    let (libraries, digest) = {
        let registry = app.runtime.registry();
        (registry.loaded_count(), registry.digest())
    };
    Json(json!({
        "name": config.name,
        "url": &*app.url,
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "abi_version": plugin_api::PAGLETS_ABI,
        "mesh_version": config.mesh_version,
        "code_version": config.mesh_version.clone().unwrap_or(digest),
        "tags": config.tags,
        "properties": config.properties,
        "paglets": app.runtime.count(),
        "libraries": libraries,
        "auto_update_from_git": false,
        "git_head": null,
        "git_process_start_head": null,
        "git_applied_head": null,
        "git_update": null,
    }))
}

/// `GET /classes`.
pub async fn classes(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.runtime.registry().class_views()))
}

/// `GET /libraries`.
pub async fn libraries(State(app): State<AppState>) -> Json<Value> {
    Json(json!(app.runtime.registry().library_views()))
}

/// `POST /admin/rescan`: what changed, and which instances moved.
pub async fn rescan(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rt = app.runtime.clone();
    let reply = blocking(move || Ok(rt.rescan())).await?;
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
}

/// `POST /admin/git-update`: this host runs without `--auto-update-from-git`, so every
/// valid request answers `disabled`.
pub async fn git_update(JsonBody(body): JsonBody<GitUpdateBody>) -> Result<Json<Value>, ApiError> {
    if let Some(target) = &body.target_hash {
        let hex = target.bytes().all(|b| b.is_ascii_hexdigit());
        if !(4..=64).contains(&target.len()) || !hex {
            return Err(ApiError::bad_request(format!(
                "target_hash '{target}' must be 4 to 64 hex digits"
            )));
        }
    }
    let _ = (&body.source_name, &body.source_url);
    Ok(Json(json!({
        "ok": false,
        "status": "disabled",
        "repo_root": null,
        "before_head": null,
        "after_head": null,
        "process_start_head": null,
        "target_hash": body.target_hash,
        "changed": false,
        "restart_required": false,
        "build_run": false,
        "reloaded": [],
        "stdout": "",
        "stderr": "",
        "error": "this host was not started with --auto-update-from-git",
    })))
}

/// `GET /mesh/hosts`: the configured peers; this version does not probe them yet.
pub async fn mesh_hosts(State(app): State<AppState>) -> Json<Value> {
    let hosts: Vec<Value> = app
        .config
        .peers
        .iter()
        .map(|url| json!({"name": null, "url": url, "code_version": null, "mesh_version": null, "compatible": null, "last_seen": null}))
        .collect();
    Json(json!(hosts))
}
