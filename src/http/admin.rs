//! The admin endpoint the CLI uses to ask a running daemon for work only the single writer of an
//! index may do: `POST /v1/admin/reindex {"pipelines": [...]}` (or `{"all": true}`) → 202
//! `{"started": [...]}`, and `POST /v1/admin/rollback {"pipeline": "films"}` → 200
//! `{"generations": [...]}`. Progress shows in `/v1/status` (`state: rebuilding`, `reindex`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::error::{ApiError, ApiResult};
use crate::runtime::status::{AdminRequest, Shared};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexRequest {
    #[serde(default)]
    pub pipelines: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub pipeline: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    pub pipeline: String,
    pub keys: Vec<String>,
}

/// `POST /v1/admin/repair {"pipeline", "keys"}`: re-derive those keys now (audit repairs).
pub async fn repair(shared: &Shared, req: RepairRequest) -> ApiResult<Response> {
    let (reply, rx) = oneshot::channel();
    send(shared, AdminRequest::Repair { pipeline: req.pipeline, keys: req.keys, reply }).await?;
    match rx.await {
        Ok(Ok(n)) => Ok(Json(json!({ "repaired": n })).into_response()),
        Ok(Err(e)) => Err(refused("repair_refused", e)),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "deriver stopped before answering")),
    }
}

/// A request the daemon refused or could not carry out: a request naming something that does not
/// exist or cannot be done is the client's (400); a dependency that is down is 503; anything else
/// is deriver's own failure (500).
fn refused(code: &'static str, e: crate::error::Error) -> ApiError {
    use crate::runtime::error_policy::{action, Action};
    match (e.kind, action(&e)) {
        (crate::error::ErrorKind::Config, _) => ApiError::bad_request(code, e.to_string()),
        (_, Action::Retry) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

async fn send(shared: &Shared, req: AdminRequest) -> ApiResult<()> {
    let tx = shared.admin.lock().expect("admin lock").clone();
    let Some(tx) = tx else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting; try again shortly"));
    };
    tx.send(req).await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "deriver is stopping"))
}

pub async fn reindex(shared: &Shared, req: ReindexRequest) -> ApiResult<Response> {
    let pipelines = if req.all { shared.snapshot().map(|d| d.pipelines.iter().map(|p| p.name.clone()).collect()).unwrap_or_default() } else { req.pipelines };
    if pipelines.is_empty() {
        return Err(ApiError::bad_request("invalid_request", "name at least one pipeline, or send \"all\": true"));
    }
    let (reply, rx) = oneshot::channel();
    send(shared, AdminRequest::Reindex { pipelines, reply }).await?;
    match rx.await {
        Ok(Ok(started)) => Ok((StatusCode::ACCEPTED, Json(json!({ "started": started }))).into_response()),
        Ok(Err(e)) => Err(refused("reindex_refused", e)),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "deriver stopped before answering")),
    }
}

/// `POST /v1/admin/reload`: re-read the pipeline files and apply them, as `SIGHUP` does. 200 with
/// what changed; 400 `reload_refused` when a file has errors or a pipeline cannot run (nothing
/// changed), with the problems one per line in `problems`.
pub async fn reload(shared: &Shared) -> ApiResult<Response> {
    let (reply, rx) = oneshot::channel();
    send(shared, AdminRequest::Reload { reply }).await?;
    match rx.await {
        Ok(Ok(report)) => Ok(Json(report).into_response()),
        Ok(Err(e)) => {
            let problems: Vec<String> = e.detail.as_deref().map(|d| d.lines().map(str::to_string).collect()).unwrap_or_default();
            let message = e.message.clone();
            let mut err = refused("reload_refused", e);
            if err.status == StatusCode::BAD_REQUEST {
                err.message = message;
                err = err.with("problems", problems);
            }
            Err(err)
        }
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "deriver stopped before answering")),
    }
}

pub async fn rollback(shared: &Shared, req: RollbackRequest) -> ApiResult<Response> {
    let (reply, rx) = oneshot::channel();
    send(shared, AdminRequest::Rollback { pipeline: req.pipeline, reply }).await?;
    match rx.await {
        Ok(Ok(gens)) => Ok(Json(json!({ "generations": gens })).into_response()),
        Ok(Err(e)) => Err(refused("rollback_refused", e)),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "deriver stopped before answering")),
    }
}
