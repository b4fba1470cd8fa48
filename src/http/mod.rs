//! deriver's HTTP API (first slice): health, readiness, status and Prometheus metrics.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::runtime::status::Shared;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
    token: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        if req.uri().path() != "/healthz" {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            if !ok {
                return error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid `Authorization: Bearer <token>` header is required");
            }
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.shared.snapshot() {
        None => error(StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting"),
        Some(doc) => {
            let not_ready: Vec<String> =
                doc.pipelines.iter().filter(|p| p.state != "streaming").map(|p| format!("{} is {}", p.name, p.state)).collect();
            if not_ready.is_empty() {
                (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
            } else {
                error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", &not_ready.join("; "))
            }
        }
    }
}

async fn status(State(state): State<AppState>) -> Response {
    match state.shared.snapshot() {
        Some(doc) => Json(doc).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting"),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

pub fn router(shared: Arc<Shared>, metrics: PrometheusHandle, token: Option<String>) -> Router {
    let state = AppState { shared, metrics, token };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Binds `listen` and serves until `cancel`.
pub async fn serve(listen: &str, app: Router, cancel: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::config(format!("cannot listen on {listen} (http.listen)")).with_detail(e))?;
    tracing::info!(%listen, "HTTP API listening");
    tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
