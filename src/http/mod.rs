//! deriver's HTTP API (`../shared/spec/http-api.md`): search and document reads on the live index
//! generations, read-your-writes waits, the change feed (Server-Sent Events), health, readiness,
//! status, Prometheus metrics, and a small status and search page at `/`.
//!
//! `GET /openapi.json` describes both APIs ([`openapi`], OpenAPI 3.1, generated from the handlers).
//!
//! Every route but `/healthz` and `/openapi.json` needs `Authorization: Bearer <http.token>` when a token is set. A
//! browser opening `/` without it gets a small form (status 401) asking for the token; the form
//! keeps it in the tab's `sessionStorage`, loads the page with it as a bearer token, and the page
//! sends it with every API call. The Meilisearch-compatible read API ([`meili`], at the root:
//! `/indexes/…`, `/multi-search`, …) checks the same token itself, and also tenant tokens.
//!
//! Requests are limited to [`MAX_BODY_BYTES`] of body and [`REQUEST_TIME_LIMIT`] to answer (a
//! streaming answer — the change feed — counts until its headers). Searches run on the blocking
//! thread pool, at most [`MAX_CONCURRENT_SEARCHES`] at once.

pub mod admin;
pub mod changes;
pub mod client;
pub mod error;
pub mod filter;
pub mod freshness;
pub mod id_order;
pub mod meili;
pub mod openapi;
pub mod query;
pub mod ranking;
pub mod relevance;
pub mod search;
pub mod sort;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::health;
use crate::runtime::status::Shared;
use crate::sink::tantivy::SearchIndex;
use error::{ApiError, ApiResult};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A request that has not answered by then gets a 503.
pub const REQUEST_TIME_LIMIT: Duration = Duration::from_secs(30);
/// Searches running at once on the blocking pool; others wait their turn.
pub const MAX_CONCURRENT_SEARCHES: usize = 8;
/// Keep-alive comments on the change feed.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
    token: Option<String>,
    searches: Arc<Semaphore>,
    id_ords: Arc<ranking::IdOrdCache>,
    floors: Arc<changes::Floors>,
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        // The Meilisearch-compatible routes check their key (or tenant token) themselves.
        if !openapi::PUBLIC_PATHS.contains(&req.uri().path()) && !meili::owns(req.uri().path()) {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            if !ok {
                if req.uri().path() == "/" && req.method() == Method::GET && accepts_html(req.headers()) {
                    return page_response(StatusCode::UNAUTHORIZED, LOGIN);
                }
                return error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid `Authorization: Bearer <token>` header is required");
            }
        }
    }
    next.run(req).await
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers 503 when a request takes longer than `limit` ([`REQUEST_TIME_LIMIT`]).
/// The Meilisearch-compatible routes answer it in Meilisearch's error shape.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let meili = meili::owns(req.uri().path());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let mut e =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request_timeout", format!("the request did not finish within {} ms", limit.as_millis()));
            e.retry_after = Some(1);
            if meili {
                return meili::error::MeiliError::from_api(e, meili::error::Context::Search).into_response();
            }
            e.into_response()
        }
    }
}

/// Request counts and latency per route (the matched route pattern, never the raw path), and
/// search latency by index and status.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let index = search_index(&route, req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(index) = index {
        // Only live indexes name a series: a request for any name must not add one.
        let index = if state.shared.indexes.read().is_ok_and(|i| i.contains_key(&index)) { index } else { "(unknown)".to_string() };
        metrics::histogram!(crate::telemetry::SEARCH_SECONDS, "index" => index, "status" => status.clone()).record(elapsed);
    }
    metrics::counter!("deriver_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("deriver_http_request_duration_seconds", "method" => method, "route" => route).record(elapsed);
    resp
}

/// The index a search request names: a route pattern whose last segment is `search` and whose
/// segment before it is a parameter (`/v1/indexes/{index}/search`, and the same shape on other
/// APIs), with the path's segment there.
fn search_index(route: &str, path: &str) -> Option<String> {
    let pattern: Vec<&str> = route.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    let n = pattern.len();
    if n < 2 || segments.len() != n || pattern[n - 1] != "search" || !pattern[n - 2].starts_with('{') {
        return None;
    }
    Some(percent_encoding::percent_decode_str(segments[n - 2]).decode_utf8_lossy().into_owned())
}

/// 200 while the process serves (no key needed).
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// 200 once this process owns the slot, every pipeline streams within its lag bound
/// (`runtime.ready_max_lag_secs`) and no dependency is failing; else 503 with the reason
/// (`runtime::status::readiness`).
/// With `?pipeline=<name>`, only that pipeline counts (`runtime::status::pipeline_readiness`): 404
/// for a pipeline that does not exist.
#[utoipa::path(get, path = "/readyz", params(("pipeline" = Option<String>, Query, description = "Only this pipeline counts")), responses(
    (status = 200, description = "Ready", body = openapi::native::Ready),
    (status = 404, description = "No such pipeline", body = openapi::native::NativeError),
    (status = 503, description = "Not ready, with the reason", body = openapi::native::NativeError),
))]
async fn readyz(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let pipeline = query.as_deref().and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "pipeline").map(|(_, v)| v.into_owned()));
    let readiness = match &pipeline {
        Some(name) => state.shared.pipeline_readiness(name),
        None => state.shared.readiness(),
    };
    match readiness {
        Ok(()) => Json(openapi::native::Ready { ready: true }).into_response(),
        Err(e) if e.code == "pipeline_not_found" => error(StatusCode::NOT_FOUND, e.code, &e.reason),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.code, &e.reason),
    }
}

/// `GET /v1/status/trends`: per pipeline, lag in seconds and changes applied per second over the
/// last 15 minutes, one sample a second (an addition to the spec, for the status page).
#[utoipa::path(get, path = "/v1/status/trends", responses((status = 200, description = "Trends per pipeline", body = openapi::native::Trends)))]
async fn trends(State(state): State<AppState>) -> Response {
    use crate::telemetry::history::{INTERVAL_MS, WINDOW_MS};
    Json(openapi::native::Trends { interval_ms: INTERVAL_MS, window_ms: WINDOW_MS, pipelines: state.shared.trend_columns() }).into_response()
}

/// The `deriver status --json` document, plus `role` and `dependencies`.
#[utoipa::path(get, path = "/v1/status", responses(
    (status = 200, description = "The status document", body = openapi::native::StatusDocument),
    (status = 503, description = "deriver is starting", body = openapi::native::NativeError),
))]
async fn status(State(state): State<AppState>) -> Response {
    if let Some(owner) = state.shared.standby() {
        // A standby process: the last status it had as owner (pipelines marked `standby`) when
        // nobody else owns the slot, else no pipelines of its own until it takes the slot over.
        let mut v = state
            .shared
            .snapshot()
            .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
            .unwrap_or_else(|| json!({ "server_lsn": null, "slot": null, "pipelines": [] }));
        if let Some(obj) = v.as_object_mut() {
            obj.insert("role".into(), json!("standby"));
            obj.insert("owner".into(), json!(owner));
            obj.insert("dependencies".into(), serde_json::to_value(health::snapshot()).unwrap_or(Value::Null));
        }
        return Json(v).into_response();
    }
    match state.shared.snapshot() {
        Some(doc) => {
            // The status document plus `role` and `dependencies` (additions to the spec's document).
            let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("role".into(), json!("owner"));
                obj.insert("dependencies".into(), serde_json::to_value(health::snapshot()).unwrap_or(Value::Null));
            }
            Json(v).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting"),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    state.shared.export_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

fn page_response(status: StatusCode, html: &'static str) -> Response {
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// The status and search page for people.
#[utoipa::path(get, path = "/", responses(
    (status = 200, description = "The page", content_type = "text/html", body = String),
    (status = 401, description = "No valid token: a browser (`Accept: text/html`) gets a form asking for it", content(
        (String = "text/html"), (openapi::native::NativeError = "application/json")
    )),
))]
async fn page() -> Response {
    page_response(StatusCode::OK, PAGE)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route (see ../shared/spec/http-api.md)")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}

/// A JSON request body; an empty body is `{}`.
fn json_body<T: DeserializeOwned>(body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the request body exceeds {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::bad_request("invalid_request", format!("cannot read the request body: {}", rejection.body_text()))
        }
    })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_request", format!("the request body is not valid: {e}")).with("line", e.line()).with("column", e.column()))
}

/// `?a=b&c=d` → (name, value) pairs.
fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn timeout_param(pairs: &[(String, String)]) -> ApiResult<Option<u64>> {
    match query_param(pairs, "timeout_ms") {
        None | Some("") => Ok(None),
        Some(t) => t
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request("invalid_request", "`timeout_ms` must be a whole number of milliseconds").with_field("timeout_ms")),
    }
}

fn live_index(shared: &Shared, name: &str) -> ApiResult<Arc<SearchIndex>> {
    let indexes = match shared.indexes.read() {
        Ok(i) => i,
        Err(p) => p.into_inner(),
    };
    indexes.get(name).cloned().ok_or_else(|| ApiError::unknown_index(name))
}

/// Runs blocking index work on the blocking pool, a bounded number at once.
async fn blocking<T: Send + 'static>(state: &AppState, f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    let permit = state.searches.clone().acquire_owned().await.map_err(|_| ApiError::internal("the server is stopping"))?;
    // The permit lives as long as the blocking work, even when the request gives up first.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "a search task failed");
        ApiError::internal("the search failed")
    })?
}

/// Search an index (`../shared/spec/http-api.md#search`).
#[utoipa::path(post, path = "/v1/indexes/{index}/search", params(("index" = String, Path)), request_body = search::SearchRequest, responses(
    (status = 200, description = "The hits", body = search::SearchResponse),
    (status = 400, description = "The request is not valid for this index", body = openapi::native::NativeError),
    (status = 404, description = "No such index", body = openapi::native::NativeError),
    (status = 413, description = "The body is over 1 MiB", body = openapi::native::NativeError),
    (status = 503, description = "`min_lsn` not reached within `timeout_ms` (`lsn_not_reached`, with `applied_lsn` and `Retry-After`)", body = openapi::native::NativeError),
))]
async fn search(
    State(state): State<AppState>,
    path: std::result::Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Path(name) = path.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let index = live_index(&state.shared, &name)?;
    let req: search::SearchRequest = json_body(body)?;
    freshness::require_index_lsn(&state.shared, &name, req.min_lsn.as_deref(), req.timeout_ms).await?;
    // The index may have been swapped while waiting: search the live one.
    let index = live_index(&state.shared, &name).unwrap_or(index);
    let plan = search::Plan::new(req, &index)?;
    // Read before taking the searcher, so the answer reflects at least this LSN.
    let applied = state.shared.index_applied(&name);
    let cache = state.id_ords.clone();
    let resp = blocking(&state, move || plan.run(&index, &cache, applied)).await?;
    metrics::counter!("deriver_http_searches_total", "index" => name).increment(1);
    Ok(Json(resp).into_response())
}

/// One stored document, by id.
#[utoipa::path(get, path = "/v1/indexes/{index}/documents/{id}", params(
    ("index" = String, Path), ("id" = String, Path),
    ("min_lsn" = Option<String>, Query, description = "Answer once the index has applied this LSN (`X/Y`)"),
    ("timeout_ms" = Option<u64>, Query, minimum = 0, description = "How long to wait for `min_lsn` (default 1000)"),
), responses(
    (status = 200, description = "The document", body = openapi::native::DocumentResponse),
    (status = 400, description = "A parameter is not valid", body = openapi::native::NativeError),
    (status = 404, description = "No such index, or no such document", body = openapi::native::NativeError),
    (status = 503, description = "`min_lsn` not reached in time", body = openapi::native::NativeError),
))]
async fn document(
    State(state): State<AppState>,
    path: std::result::Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let Path((name, id)) = path.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let index = live_index(&state.shared, &name)?;
    let pairs = query_pairs(raw);
    let timeout = timeout_param(&pairs)?;
    freshness::require_index_lsn(&state.shared, &name, query_param(&pairs, "min_lsn"), timeout).await?;
    let index = live_index(&state.shared, &name).unwrap_or(index);
    let applied = state.shared.index_applied(&name);
    let generation = index.generation;
    let lookup_id = id.clone();
    match blocking(&state, move || search::lookup(&index, &lookup_id)).await? {
        Some(doc) => Ok(Json(openapi::native::DocumentResponse { id, doc, applied_lsn: applied, generation }).into_response()),
        None => Err(ApiError::not_found("not_found", format!("index `{name}` has no document `{}`", error::shorten(&id)))
            .with("applied_lsn", applied.map(|l| l.to_string()))),
    }
}

/// `GET /v1/indexes`: the live indexes and their declared fields (for the page and for tools).
#[utoipa::path(get, path = "/v1/indexes", responses((status = 200, description = "The live indexes", body = openapi::native::IndexList)))]
async fn list_indexes(State(state): State<AppState>) -> Response {
    let indexes: Vec<Arc<SearchIndex>> = match state.shared.indexes.read() {
        Ok(i) => i.values().cloned().collect(),
        Err(p) => p.into_inner().values().cloned().collect(),
    };
    let doc = state.shared.snapshot();
    let indexes = indexes
        .iter()
        .map(|ix| {
            let label = format!("search:{}", ix.name);
            let pipeline = doc.as_ref().and_then(|d| d.pipelines.iter().find(|p| p.targets.contains_key(&label)).map(|p| p.name.clone()));
            openapi::native::IndexInfo {
                name: ix.name.clone(),
                pipeline,
                generation: ix.generation,
                // Live documents in the searcher of this moment (deleted ones not counted).
                documents: ix.reader.searcher().num_docs(),
                applied_lsn: state.shared.index_applied(&ix.name),
                id: ix.target.id.clone(),
                default_search_fields: ix.target.default_search_fields.clone(),
                fields: ix.target.fields.clone(),
            }
        })
        .collect();
    Json(openapi::native::IndexList { indexes }).into_response()
}

#[utoipa::path(post, path = "/v1/admin/reindex", request_body = admin::ReindexRequest, responses(
    (status = 202, description = "The rebuilds started (progress in `/v1/status`)", body = openapi::native::ReindexStarted),
    (status = 400, description = "Not valid, or refused (names a pipeline that does not exist…)", body = openapi::native::NativeError),
    (status = 413, description = "The body is over 1 MiB", body = openapi::native::NativeError),
    (status = 500, description = "The daemon failed to carry it out", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting or stopping, or a dependency is down", body = openapi::native::NativeError),
))]
async fn admin_reindex(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    admin::reindex(&state.shared, json_body(body)?).await
}

#[utoipa::path(post, path = "/v1/admin/rollback", request_body = admin::RollbackRequest, responses(
    (status = 200, description = "The generations now live", body = openapi::native::RolledBack),
    (status = 400, description = "Not valid, or refused (names a pipeline that does not exist…)", body = openapi::native::NativeError),
    (status = 413, description = "The body is over 1 MiB", body = openapi::native::NativeError),
    (status = 500, description = "The daemon failed to carry it out", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting or stopping, or a dependency is down", body = openapi::native::NativeError),
))]
async fn admin_rollback(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    admin::rollback(&state.shared, json_body(body)?).await
}

/// Re-read the pipeline files and apply them (what `SIGHUP` does).
#[utoipa::path(post, path = "/v1/admin/reload", responses(
    (status = 200, description = "Applied: what was added, changed, removed; the pipelines building in the background", body = openapi::native::Reloaded),
    (status = 400, description = "A file has errors or a pipeline cannot run; nothing changed (`problems`: one per line, with file:line:col)", body = openapi::native::NativeError),
    (status = 500, description = "The daemon failed to carry it out", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting or stopping, or a reload is in progress", body = openapi::native::NativeError),
))]
async fn admin_reload(State(state): State<AppState>) -> ApiResult<Response> {
    admin::reload(&state.shared).await
}

#[utoipa::path(post, path = "/v1/admin/repair", request_body = admin::RepairRequest, responses(
    (status = 200, description = "The keys re-derived", body = openapi::native::Repaired),
    (status = 400, description = "Not valid, or refused (names a pipeline that does not exist…)", body = openapi::native::NativeError),
    (status = 413, description = "The body is over 1 MiB", body = openapi::native::NativeError),
    (status = 500, description = "The daemon failed to carry it out", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting or stopping, or a dependency is down", body = openapi::native::NativeError),
))]
async fn admin_repair(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    admin::repair(&state.shared, json_body(body)?).await
}

/// Wait until pipelines have applied an LSN.
#[utoipa::path(post, path = "/v1/wait", request_body = freshness::WaitRequest, responses(
    (status = 200, description = "Every named pipeline has applied `lsn`", body = openapi::native::WaitResponse),
    (status = 400, description = "Not valid", body = openapi::native::NativeError),
    (status = 404, description = "No such pipeline", body = openapi::native::NativeError),
    (status = 413, description = "The body is over 1 MiB", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting", body = openapi::native::NativeError),
    (status = 504, description = "`lsn` not reached within `timeout_ms`", body = openapi::native::NativeError),
))]
async fn wait(State(state): State<AppState>, body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let req: freshness::WaitRequest = json_body(body)?;
    let applied = freshness::wait(&state.shared, req).await?;
    Ok(Json(openapi::native::WaitResponse { applied_lsn: applied }).into_response())
}

/// The change feed of a pipeline: Server-Sent Events, one per applied batch
/// (`data: {"lsn", "keys", "deleted"}`), resumable from `since` or `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/pipelines/{pipeline}/changes", params(
    ("pipeline" = String, Path),
    ("since" = Option<String>, Query, description = "Resume after this LSN (`X/Y`)"),
    ("Last-Event-ID" = Option<String>, Header, description = "Resume after this LSN (what an EventSource sends)"),
), responses(
    (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
    (status = 400, description = "`since` is not an LSN", body = openapi::native::NativeError),
    (status = 404, description = "No such pipeline", body = openapi::native::NativeError),
    (status = 503, description = "deriver is starting", body = openapi::native::NativeError),
))]
async fn changes(
    State(state): State<AppState>,
    path: std::result::Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Path(pipeline) = path.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let Some(doc) = state.shared.snapshot() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting"));
    };
    if !doc.pipelines.iter().any(|p| p.name == pipeline) {
        return Err(ApiError::unknown_pipeline(&pipeline));
    }
    let pairs = query_pairs(raw);
    let since = match query_param(&pairs, "since").filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(error::parse_lsn("since", s)?),
        None => match headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(error::parse_lsn("Last-Event-ID", s)?),
            None => None,
        },
    };
    let stream = changes::stream(state.shared.clone(), state.floors.clone(), pipeline, since);
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

pub fn router(shared: Arc<Shared>, metrics: PrometheusHandle, token: Option<String>) -> Router {
    let floors = Arc::new(changes::Floors::default());
    floors.observe(&shared);
    floors.spawn_watcher(shared.clone());
    let state = AppState {
        shared,
        metrics,
        token,
        searches: Arc::new(Semaphore::new(MAX_CONCURRENT_SEARCHES)),
        id_ords: Arc::new(ranking::IdOrdCache::default()),
        floors,
    };
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/status/trends", get(trends))
        .route("/metrics", get(metrics_text))
        .route("/v1/indexes", get(list_indexes))
        .route("/v1/indexes/{index}/search", post(search))
        .route("/v1/indexes/{index}/documents/{id}", get(document))
        .route("/v1/wait", post(wait))
        .route("/v1/pipelines/{pipeline}/changes", get(changes))
        .route("/v1/admin/reindex", post(admin_reindex))
        .route("/v1/admin/rollback", post(admin_rollback))
        .route("/v1/admin/repair", post(admin_repair))
        .route("/v1/admin/reload", post(admin_reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // After the fallbacks: the compatible API keeps its own (and its CORS preflights).
        .merge(meili::router(state.clone()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(REQUEST_TIME_LIMIT, time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Binds `listen` and serves until `cancel`.
pub async fn serve(listen: &str, app: Router, cancel: CancellationToken) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        // Taken by another process: not a configuration mistake (exit 1); anything else about
        // the address is (exit 2).
        let kind = if e.kind() == std::io::ErrorKind::AddrInUse { ErrorKind::Fatal } else { ErrorKind::Config };
        Error::new(kind, format!("cannot listen on {listen} (http.listen)")).with_detail(e)
    })?;
    tracing::info!(%listen, "HTTP API listening");
    tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

/// Test helpers: a `Shared` holding a status document with one pipeline.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::runtime::status::Shared;
    use crate::source::Lsn;
    use crate::status::StatusDoc;

    /// A `Shared` whose status has pipeline `films` with target `search:films` at `applied`.
    /// (Built from JSON so that new optional status fields need no change here.)
    pub fn shared_with(applied: Option<Lsn>) -> Arc<Shared> {
        let shared = Arc::new(Shared::default());
        let doc = serde_json::json!({
            "server_lsn": null,
            "slot": null,
            "pipelines": [{
                "name": "films", "state": "streaming", "generation": 1, "definition_hash": "",
                "applied_lsn": null, "targets": { "search:films": applied }, "lag_bytes": null, "dead_letters": 0
            }]
        });
        let mut doc: StatusDoc = serde_json::from_value(doc).expect("a status document");
        for p in &mut doc.pipelines {
            p.refresh(None);
        }
        *shared.status.write().unwrap() = Some(doc);
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn shared() -> Arc<Shared> {
        let shared = testing::shared_with(Some(crate::source::Lsn(0x10)));
        let index = Arc::new(search::tests::films(12));
        shared.indexes.write().unwrap().insert("films".into(), index);
        shared
    }

    fn app(token: Option<&str>) -> Router {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
        router(shared(), handle, token.map(str::to_string))
    }

    async fn call(app: &Router, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(path).body(Body::empty()).unwrap()
    }

    fn post(path: &str, body: impl Into<Body>) -> axum::http::Request<Body> {
        axum::http::Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
    }

    fn code(body: &str) -> String {
        serde_json::from_str::<Value>(body).unwrap()["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn routes_answer_json() {
        let app = app(None);
        let (s, _, body) = call(&app, post("/v1/indexes/films/search", r#"{"q": "robot", "limit": 2}"#)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["hits"].as_array().unwrap().len(), 2);
        assert_eq!(v["applied_lsn"], "0/10");
        let (s, _, _) = call(&app, post("/v1/indexes/films/search", "")).await;
        assert_eq!(s, StatusCode::OK, "an empty body is {{}}");
        let (s, _, body) = call(&app, post("/v1/indexes/nope/search", "{}")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::NOT_FOUND, "unknown_index"));
        let (s, _, body) = call(&app, post("/v1/indexes/films/search", "[1, 2")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::BAD_REQUEST, "invalid_request"));
        let (s, _, body) = call(&app, get("/v1/indexes/films/documents/3")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (s, _, body) = call(&app, get("/nope")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::NOT_FOUND, "not_found"));
        let (s, _, body) = call(&app, get("/v1/wait")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
        let (s, _, body) = call(&app, get("/v1/indexes")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains(r#""name":"films""#), "{body}");
        assert!(body.contains(r#""documents":"#), "{body}");
        // The change feed streams: look at its head only.
        let resp = app.clone().oneshot(get("/v1/pipelines/films/changes?since=0/10")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
        let (s, _, body) = call(&app, get("/v1/pipelines/films/changes?since=x")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::BAD_REQUEST, "invalid_lsn"));
    }

    #[test]
    fn search_routes_name_their_index() {
        assert_eq!(search_index("/v1/indexes/{index}/search", "/v1/indexes/films/search").as_deref(), Some("films"));
        assert_eq!(search_index("/indexes/{index_uid}/search", "/indexes/a%20b/search").as_deref(), Some("a b"));
        assert_eq!(search_index("/v1/indexes/{index}/documents/{id}", "/v1/indexes/films/documents/3"), None);
        assert_eq!(search_index("/v1/search", "/v1/search"), None);
        assert_eq!(search_index("unmatched", "/v1/indexes/films/search"), None);
    }

    #[tokio::test]
    async fn readyz_and_metrics_follow_the_lag() {
        let recorder = crate::telemetry::builder().build_recorder();
        let handle = recorder.handle();
        let shared = shared();
        let app = router(shared.clone(), handle.clone(), None);
        *shared.meter() = crate::telemetry::lag::Meter::new(["films".to_string()]);
        // (Other tests of this binary report dependencies failing now and then: the 200 cases are
        // checked without them.)
        let ready = |shared: &Shared| crate::runtime::status::readiness(None, shared.snapshot().as_ref(), &[], &shared.lags(), shared.ready_max_lag);
        assert_eq!(ready(&shared), Ok(()));
        // A change committed 60 s ago and not yet durable: over the 10 s bound.
        shared.meter_change(0);
        shared.meter_commit(crate::source::Lsn(0x20), std::time::SystemTime::now() - Duration::from_secs(60));
        let (s, _, body) = call(&app, get("/readyz")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not_ready"));
        assert!(body.contains("films lags 60"), "{body}");
        let (s, _, _) = call(&app, get("/healthz")).await;
        assert_eq!(s, StatusCode::OK, "healthz stays 200");
        let text = metrics::with_local_recorder(&recorder, || {
            shared.export_gauges();
            handle.render()
        });
        assert!(text.contains("deriver_lag_seconds{pipeline=\"films\"} 60"), "{text}");
        assert!(text.contains("deriver_ready 0"), "{text}");
        shared.meter().durable(0, 0x20);
        assert_eq!(ready(&shared), Ok(()));
        let (s, _, body) = call(&app, get("/v1/status/trends")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains(r#""interval_ms":1000"#), "{body}");
    }

    #[tokio::test]
    async fn bodies_are_limited() {
        let app = app(None);
        let big = format!(r#"{{"q": "{}"}}"#, "x".repeat(MAX_BODY_BYTES + 10));
        let (s, _, body) = call(&app, post("/v1/indexes/films/search", big)).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    }

    #[tokio::test]
    async fn slow_requests_get_a_503() {
        let app: Router = Router::new()
            .route("/slow", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
            .layer(middleware::from_fn_with_state(Duration::from_millis(50), time_limit));
        let (s, h, body) = call(&app, get("/slow")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"));
        assert!(h.contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn the_token_guards_everything_but_healthz() {
        let app = app(Some("t0k"));
        assert_eq!(call(&app, get("/healthz")).await.0, StatusCode::OK);
        let (s, _, body) = call(&app, get("/v1/status")).await;
        assert_eq!((s, code(&body).as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
        let authed = axum::http::Request::get("/v1/status").header(header::AUTHORIZATION, "Bearer t0k").body(Body::empty()).unwrap();
        assert_eq!(call(&app, authed).await.0, StatusCode::OK);
        let browser = axum::http::Request::get("/").header(header::ACCEPT, "text/html").body(Body::empty()).unwrap();
        let (s, _, html) = call(&app, browser).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(html.contains("<form id=\"login\">"), "the token form");
        let page = axum::http::Request::get("/").header(header::AUTHORIZATION, "Bearer t0k").body(Body::empty()).unwrap();
        let (s, h, html) = call(&app, page).await;
        assert_eq!(s, StatusCode::OK);
        assert!(html.contains("id=\"pipelines\""));
        assert!(h.contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
