//! The Meilisearch-compatible read API, at the root of the HTTP listener beside `/v1/…`: the
//! routes Meilisearch's clients and UI kits (the `meilisearch` JS and Python clients,
//! `@meilisearch/instant-meilisearch`) call to search, with Meilisearch's parameters, responses
//! and errors. Searches go through deriver's own search machinery (`src/http/search.rs`).
//!
//! - Auth: `Authorization: Bearer <http.token>` (the one API key), or a tenant token signed with
//!   it (`token.rs`), which may only search, on its indexes, with its filter always applied.
//!   `GET /health` needs nothing, as in Meilisearch. Without `http.token`, nothing is needed.
//! - Read-your-writes: the search parameter `minLsn` (with `timeoutMs`), or the request header
//!   `X-Deriver-Min-Lsn` (with `X-Deriver-Timeout-Ms`), on searches and document reads: the
//!   answer waits until the index has applied that LSN, else 503 `lsn_not_reached`.
//! - Writes (documents, settings, indexes, keys, tasks) answer 405 `index_derived_from_postgres`:
//!   the index is derived from Postgres.
//! - CORS is open (any origin), as Meilisearch's: browsers call it from the application's pages
//!   with a bearer key, never with cookies.

pub mod documents;
pub mod error;
pub mod filter;
pub mod format;
pub mod info;
pub mod params;
pub mod search;
pub mod token;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use super::AppState;
use crate::sink::tantivy::SearchIndex;
use error::{Context, MeiliError, MeiliResult};
use params::SearchParams;
use token::Access;

/// The request header carrying `min_lsn` for read-your-writes (or the `minLsn` parameter).
pub const MIN_LSN_HEADER: &str = "x-deriver-min-lsn";
/// How long to wait for `min_lsn`, in milliseconds (or the `timeoutMs` parameter).
pub const TIMEOUT_HEADER: &str = "x-deriver-timeout-ms";
/// Queries of one multi-search.
pub const MAX_QUERIES: usize = 64;

/// Whether `path` belongs to this API (deriver's own auth leaves these to [`auth`]).
pub fn owns(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(
        first,
        "health"
            | "version"
            | "stats"
            | "indexes"
            | "multi-search"
            | "keys"
            | "tasks"
            | "batches"
            | "swap-indexes"
            | "dumps"
            | "snapshots"
            | "experimental-features"
    )
}

/// The routes a tenant token may call (also for route patterns).
pub fn is_search_route(path: &str) -> bool {
    path == "/multi-search" || (path.starts_with("/indexes/") && (path.ends_with("/search") || path.ends_with("/facet-search")))
}

/// Meilisearch's auth: the key, or a tenant token on the search routes.
async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(key) = state.token.clone() else {
        req.extensions_mut().insert(Access::Full);
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        req.extensions_mut().insert(Access::Full);
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return MeiliError::missing_authorization_header().into_response();
    };
    let Some(given) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
        return MeiliError::invalid_api_key().into_response();
    };
    let access = if super::constant_time_eq(given.as_bytes(), key.as_bytes()) {
        Access::Full
    } else if token::looks_like_jwt(given) {
        if !is_search_route(req.uri().path()) {
            return MeiliError::invalid_tenant_token("Tenant tokens may only search.").into_response();
        }
        let now = chrono::Utc::now().timestamp();
        match token::verify(given, &key, now) {
            Ok(rules) => Access::Tenant(rules),
            Err(why) => return MeiliError::invalid_tenant_token(&why).into_response(),
        }
    } else {
        return MeiliError::invalid_api_key().into_response();
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// The live index `uid`.
fn index_of(state: &AppState, uid: &str) -> MeiliResult<Arc<SearchIndex>> {
    super::live_index(&state.shared, uid).map_err(|_| MeiliError::index_not_found(uid))
}

/// The filter a request's access imposes on index `uid`; refused when it may not read it.
fn tenant_filter<'a>(access: &'a Access, uid: &str) -> MeiliResult<Option<&'a Value>> {
    match access {
        Access::Full => Ok(None),
        Access::Tenant(rules) => {
            rules.for_index(uid).ok_or_else(|| MeiliError::invalid_tenant_token(&format!("The token does not allow searching index `{uid}`.")))
        }
    }
}

/// Waits for `min_lsn` (parameter, else header) on index `uid`; then the live index.
async fn fresh_index(state: &AppState, uid: &str, min_lsn: Option<&str>, timeout_ms: Option<u64>, headers: &HeaderMap) -> MeiliResult<Arc<SearchIndex>> {
    index_of(state, uid)?;
    let header_lsn = headers.get(MIN_LSN_HEADER).and_then(|v| v.to_str().ok());
    let header_timeout = headers.get(TIMEOUT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    super::freshness::require_index_lsn(&state.shared, uid, min_lsn.or(header_lsn), timeout_ms.or(header_timeout))
        .await
        .map_err(|e| MeiliError::from_api(e, Context::Search))?;
    index_of(state, uid)
}

/// A JSON object body (empty: `{}`), with Meilisearch's errors.
fn object_body(body: Result<Bytes, BytesRejection>) -> MeiliResult<Map<String, Value>> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            MeiliError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                error::ErrorType::InvalidRequest,
                format!("The provided payload reached the size limit. The maximum accepted payload size is {} bytes.", super::MAX_BODY_BYTES),
            )
        } else {
            MeiliError::bad_request("malformed_payload", format!("The json payload provided is malformed. `{}`.", r.body_text()))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(MeiliError::bad_request("bad_request", "Invalid value type at `.`: expected an object.")),
        Err(e) => Err(MeiliError::bad_request("malformed_payload", format!("The json payload provided is malformed. `{e}`."))),
    }
}

fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    super::query_pairs(raw)
}

/// Runs blocking work on deriver's bounded search pool.
async fn blocking<T: Send + 'static>(state: &AppState, f: impl FnOnce() -> MeiliResult<T> + Send + 'static) -> MeiliResult<T> {
    super::blocking(state, move || Ok(f())).await.map_err(|e| MeiliError::from_api(e, Context::Search))?
}

async fn search_index(state: &AppState, uid: String, params: SearchParams, access: &Access, headers: &HeaderMap) -> MeiliResult<Value> {
    let tenant = tenant_filter(access, &uid)?.cloned();
    let index = fresh_index(state, &uid, params.min_lsn.as_deref(), params.timeout_ms, headers).await?;
    let prepared = search::Prepared::new(index, params, tenant.as_ref())?;
    let cache = state.id_ords.clone();
    let v = blocking(state, move || prepared.run(&cache)).await?;
    metrics::counter!("deriver_http_searches_total", "index" => uid).increment(1);
    Ok(v)
}

/// Search an index.
#[utoipa::path(post, path = "/indexes/{uid}/search", params(("uid" = String, Path), crate::http::openapi::meili::FreshnessHeaders), request_body = crate::http::openapi::meili::MeiliSearchRequest, responses(
    (status = 200, description = "The hits", body = crate::http::openapi::meili::MeiliSearchResponse),
    (status = 400, description = "A parameter is not valid (its Meilisearch code: `invalid_search_filter`, …)", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time (`lsn_not_reached`, `Retry-After`)", body = crate::http::openapi::meili::MeiliError),
    (status = 413, description = "The body is over 1 MiB", body = crate::http::openapi::meili::MeiliError),
))]
async fn search_post(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> MeiliResult<Response> {
    let params = SearchParams::from_object(&object_body(body)?, &[])?;
    Ok(Json(search_index(&state, uid, params, &access, &headers).await?).into_response())
}

/// Search an index, parameters in the query string.
#[utoipa::path(get, path = "/indexes/{uid}/search", params(("uid" = String, Path), crate::http::openapi::meili::SearchQuery, crate::http::openapi::meili::FreshnessHeaders), responses(
    (status = 200, description = "The hits", body = crate::http::openapi::meili::MeiliSearchResponse),
    (status = 400, description = "A parameter is not valid (its Meilisearch code: `invalid_search_filter`, …)", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time (`lsn_not_reached`, `Retry-After`)", body = crate::http::openapi::meili::MeiliError),
))]
async fn search_get(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> MeiliResult<Response> {
    let params = SearchParams::from_query(&query_pairs(raw))?;
    Ok(Json(search_index(&state, uid, params, &access, &headers).await?).into_response())
}

/// `POST /multi-search`: `{"queries": [{"indexUid": …, …}]}` → `{"results": […]}`; with
/// `federation` (`limit`, `offset`), one merged list of hits ranked by `_rankingScore` times
/// the query's `federationOptions.weight`.
#[utoipa::path(post, path = "/multi-search", params(crate::http::openapi::meili::FreshnessHeaders), request_body = crate::http::openapi::meili::MultiSearchRequest, responses(
    (status = 200, description = "One result per query, or the merged hits with `federation`", body = crate::http::openapi::meili::MultiSearchResponse),
    (status = 400, description = "A query is not valid (the message names it: `Inside .queries[i]`)", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "A query names an index that does not exist", body = crate::http::openapi::meili::MeiliError),
    (status = 413, description = "The body is over 1 MiB", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time", body = crate::http::openapi::meili::MeiliError),
))]
async fn multi_search(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> MeiliResult<Response> {
    let body = object_body(body)?;
    let Some(Value::Array(queries)) = body.get("queries") else {
        return Err(MeiliError::bad_request("missing_multi_search_queries", "Missing field `queries`: expected an array of queries."));
    };
    if queries.len() > MAX_QUERIES {
        return Err(MeiliError::bad_request("invalid_multi_search_queries", format!("At most {MAX_QUERIES} queries per multi-search.")));
    }
    let federation = match body.get("federation") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => Some(f.clone()),
        Some(_) => return Err(MeiliError::bad_request("invalid_multi_search_federation", "`federation` must be an object.")),
    };
    for k in body.keys() {
        if k != "queries" && k != "federation" {
            return Err(MeiliError::bad_request("bad_request", format!("Unknown field `{k}`: expected one of `queries`, `federation`")));
        }
    }
    let mut parsed = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let Value::Object(obj) = q else {
            return Err(MeiliError::bad_request("bad_request", format!("Invalid value type at `.queries[{i}]`: expected an object.")));
        };
        let uid = match obj.get("indexUid") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(MeiliError::bad_request("missing_index_uid", format!("Missing field `indexUid` in `.queries[{i}]`"))),
        };
        let weight = obj.get("federationOptions").and_then(|f| f.get("weight")).and_then(Value::as_f64).unwrap_or(1.0);
        let mut params = SearchParams::from_object(obj, &["indexUid", "federationOptions"]).map_err(|e| e.in_query(i))?;
        if federation.is_some() {
            params.show_ranking_score = true;
        }
        parsed.push((uid, weight, params));
    }
    let Some(fed) = federation else {
        let mut results = Vec::new();
        for (i, (uid, _, params)) in parsed.into_iter().enumerate() {
            let mut v = search_index(&state, uid.clone(), params, &access, &headers).await.map_err(|e| e.in_query(i))?;
            if let Value::Object(obj) = &mut v {
                obj.shift_insert(0, "indexUid".into(), Value::String(uid));
            }
            results.push(v);
        }
        return Ok(Json(json!({ "results": results })).into_response());
    };
    let num = |name: &str, default: usize| -> MeiliResult<usize> {
        match fed.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| MeiliError::bad_request("invalid_multi_search_federation", format!("`federation.{name}` must be a positive integer."))),
        }
    };
    let (offset, limit) = (num("offset", 0)?, num("limit", params::DEFAULT_LIMIT)?);
    let started = std::time::Instant::now();
    let mut merged: Vec<(f64, usize, Value)> = Vec::new();
    let mut estimated = 0u64;
    for (i, (uid, weight, mut params)) in parsed.into_iter().enumerate() {
        params.offset = Some(0);
        params.limit = Some(offset.saturating_add(limit).min(params::MAX_TOTAL_HITS));
        params.page = None;
        params.hits_per_page = None;
        let v = search_index(&state, uid.clone(), params, &access, &headers).await.map_err(|e| e.in_query(i))?;
        estimated += v["estimatedTotalHits"].as_u64().unwrap_or(0);
        for mut hit in v["hits"].as_array().cloned().unwrap_or_default() {
            let score = hit["_rankingScore"].as_f64().unwrap_or(0.0) * weight;
            if let Value::Object(h) = &mut hit {
                h.insert("_federation".into(), json!({ "indexUid": uid, "queriesPosition": i, "weightedRankingScore": score }));
            }
            merged.push((score, i, hit));
        }
    }
    merged.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // A document several queries found is listed once, where it scored best (as Meilisearch).
    let mut seen = std::collections::HashSet::new();
    merged.retain(|(_, _, h)| {
        let doc: Map<String, Value> =
            h.as_object().map(|o| o.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        seen.insert((h["_federation"]["indexUid"].to_string(), Value::Object(doc).to_string()))
    });
    let hits: Vec<Value> = merged.into_iter().skip(offset).take(limit).map(|(_, _, h)| h).collect();
    Ok(Json(json!({
        "hits": hits, "processingTimeMs": started.elapsed().as_millis() as u64, "limit": limit, "offset": offset, "estimatedTotalHits": estimated,
    }))
    .into_response())
}

/// `POST /indexes/{uid}/facet-search`: the values of a facet, among the documents matching `q`
/// and `filter`, that start with `facetQuery` (any word of them; case-insensitive), most
/// frequent first.
#[utoipa::path(post, path = "/indexes/{uid}/facet-search", params(("uid" = String, Path), crate::http::openapi::meili::FreshnessHeaders), request_body = crate::http::openapi::meili::FacetSearchRequest, responses(
    (status = 200, description = "The facet's values that match", body = crate::http::openapi::meili::FacetSearchResponse),
    (status = 400, description = "A parameter is not valid (its Meilisearch code: `invalid_search_filter`, …)", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time (`lsn_not_reached`, `Retry-After`)", body = crate::http::openapi::meili::MeiliError),
    (status = 413, description = "The body is over 1 MiB", body = crate::http::openapi::meili::MeiliError),
))]
async fn facet_search(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(uid): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> MeiliResult<Response> {
    let mut body = object_body(body)?;
    let facet_name = match body.remove("facetName") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(MeiliError::bad_request("missing_facet_search_facet_name", "Missing field `facetName`")),
        Some(_) => return Err(MeiliError::bad_request("invalid_facet_search_facet_name", "`facetName` must be a string.")),
    };
    let facet_query = match body.remove("facetQuery") {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => None,
        Some(_) => return Err(MeiliError::bad_request("invalid_facet_search_facet_query", "`facetQuery` must be a string.")),
    };
    body.remove("exhaustiveFacetCount");
    let mut params = SearchParams::from_object(&body, &[])?;
    let index = index_of(&state, &uid)?;
    if !index.target.fields.iter().any(|f| f.name == facet_name && f.ty == crate::pipeline::SearchType::Keyword && (f.facet || f.filterable || f.sortable)) {
        let available: Vec<String> = search::filterable_attributes(&index).into_iter().map(|f| format!("`{f}`")).collect();
        return Err(MeiliError::bad_request(
            "invalid_facet_search_facet_name",
            format!("Attribute `{}` is not facet-searchable. Available facet-searchable attributes are: {}.", error_name(&facet_name), available.join(", ")),
        ));
    }
    params.facets = Some(vec![facet_name.clone()]);
    params.limit = Some(0);
    params.offset = Some(0);
    let started = std::time::Instant::now();
    let v = search_index(&state, uid, params, &access, &headers).await?;
    let needle = facet_query.as_deref().unwrap_or("").to_lowercase();
    let mut hits: Vec<(String, u64)> =
        v["facetDistribution"][&facet_name].as_object().map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect()).unwrap_or_default();
    hits.retain(|(value, _)| {
        let lower = value.to_lowercase();
        needle.is_empty() || lower.starts_with(&needle) || lower.split(|c: char| !c.is_alphanumeric()).any(|w| w.starts_with(&needle))
    });
    hits.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    hits.truncate(params::MAX_VALUES_PER_FACET);
    let facet_hits: Vec<Value> = hits.into_iter().map(|(value, count)| json!({ "value": value, "count": count })).collect();
    Ok(Json(json!({ "facetHits": facet_hits, "facetQuery": facet_query, "processingTimeMs": started.elapsed().as_millis() as u64 })).into_response())
}

async fn method_not_allowed() -> MeiliError {
    MeiliError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", error::ErrorType::InvalidRequest, "This route does not take that method.")
}

fn error_name(name: &str) -> String {
    super::error::shorten(name)
}

/// The routes of this API (its own auth and CORS), to be merged at the root of deriver's router.
pub(super) fn router(state: AppState) -> Router<AppState> {
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any)
        .expose_headers(tower_http::cors::Any)
        .max_age(std::time::Duration::from_secs(86_400));
    Router::new()
        .route("/indexes/{uid}/search", post(search_post).get(search_get))
        .route("/multi-search", post(multi_search))
        .route("/indexes/{uid}/facet-search", post(facet_search))
        .merge(documents::routes())
        .merge(info::routes())
        .route("/indexes/{uid}/{*rest}", any(info::unknown_index_route))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state, auth))
        .layer(cors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const KEY: &str = "master-key";

    fn app(token: Option<&str>) -> Router {
        let shared = crate::http::testing::shared_with(Some(crate::source::Lsn(0x10)));
        shared.indexes.write().unwrap().insert("films".into(), Arc::new(crate::http::search::tests::films(12)));
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
        crate::http::router(shared, handle, token.map(str::to_string))
    }

    async fn call(app: &Router, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (StatusCode, HeaderMap, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = app.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn tenant(rules: Value, exp: Option<i64>) -> String {
        let mut claims = json!({ "searchRules": rules, "apiKeyUid": token::key_uid(KEY) });
        if let Some(e) = exp {
            claims["exp"] = json!(e);
        }
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes())).unwrap()
    }

    #[tokio::test]
    async fn routes_answer_meilisearch_shapes() {
        let app = app(None);
        assert_eq!(call(&app, "GET", "/health", None, None).await.2, json!({ "status": "available" }));
        let (s, _, v) = call(&app, "POST", "/indexes/films/search", None, Some(json!({ "q": "robot", "filter": ["rating = G"] }))).await;
        assert_eq!((s, v["estimatedTotalHits"].as_u64()), (StatusCode::OK, Some(4)), "{v}");
        let (s, _, v) = call(&app, "GET", "/indexes/films/search?q=robot&limit=2&facets=rating", None, None).await;
        assert_eq!((s, v["hits"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{v}");
        assert_eq!(v["facetDistribution"]["rating"]["G"], 4);
        let (s, _, v) = call(&app, "POST", "/indexes/nope/search", None, Some(json!({}))).await;
        assert_eq!((s, v["code"].as_str(), v["type"].as_str()), (StatusCode::NOT_FOUND, Some("index_not_found"), Some("invalid_request")));
        let (s, _, v) = call(&app, "POST", "/indexes/films/documents", None, Some(json!([{ "film_id": 1 }]))).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("index_derived_from_postgres")));
        assert!(v["message"].as_str().unwrap().contains("derived from PostgreSQL"), "{v}");
        let (s, _, v) = call(&app, "PATCH", "/indexes/films/settings", None, Some(json!({}))).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("index_derived_from_postgres")));
        let (s, _, v) = call(&app, "GET", "/indexes/films/documents/3?fields=title", None, None).await;
        assert_eq!((s, v), (StatusCode::OK, json!({ "title": "Film 3 Robot" })));
        let (s, _, v) = call(&app, "GET", "/indexes/films/documents/99", None, None).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("document_not_found")));
        let (s, _, v) = call(
            &app,
            "POST",
            "/multi-search",
            None,
            Some(json!({ "queries": [{ "indexUid": "films", "q": "robot" }, { "indexUid": "films", "q": "drama", "limit": 1 }] })),
        )
        .await;
        assert_eq!(
            (s, v["results"][0]["indexUid"].as_str(), v["results"][1]["hits"].as_array().map(Vec::len)),
            (StatusCode::OK, Some("films"), Some(1)),
            "{v}"
        );
        let fed = json!({ "federation": { "limit": 5 }, "queries": [{ "indexUid": "films", "q": "robot" }, { "indexUid": "films", "q": "drama" }] });
        let (s, _, v) = call(&app, "POST", "/multi-search", None, Some(fed)).await;
        assert_eq!((s, v["hits"].as_array().map(Vec::len), v["estimatedTotalHits"].as_u64()), (StatusCode::OK, Some(5), Some(20)), "{v}");
        let ids: std::collections::HashSet<String> = v["hits"].as_array().unwrap().iter().map(|h| h["film_id"].to_string()).collect();
        assert_eq!(ids.len(), 5, "a film both queries found is listed once: {v}");
        assert!(v["hits"][0]["_federation"]["weightedRankingScore"].as_f64().unwrap() > 0.0);
        let (s, _, v) = call(&app, "POST", "/indexes/films/facet-search", None, Some(json!({ "facetName": "rating", "facetQuery": "p" }))).await;
        assert_eq!((s, v["facetHits"].clone()), (StatusCode::OK, json!([{ "value": "PG", "count": 4 }])));
        let (s, _, v) = call(&app, "GET", "/indexes/films/whatever", None, None).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (s, _, v) = call(&app, "GET", "/indexes/films/settings/filterable-attributes", None, None).await;
        assert_eq!((s, v), (StatusCode::OK, json!(["rating", "rate", "year", "tags"])));
        // deriver's own API is where it was.
        assert_eq!(call(&app, "POST", "/v1/indexes/films/search", None, Some(json!({}))).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn keys_and_tenant_tokens() {
        let app = app(Some(KEY));
        assert_eq!(call(&app, "GET", "/health", None, None).await.0, StatusCode::OK);
        let (s, _, v) = call(&app, "GET", "/indexes", None, None).await;
        assert_eq!((s, v["code"].as_str(), v["type"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_authorization_header"), Some("auth")));
        let (s, _, v) = call(&app, "GET", "/indexes", Some("wrong"), None).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("invalid_api_key")));
        let (s, _, v) = call(&app, "GET", "/indexes", Some(KEY), None).await;
        assert_eq!((s, v["results"][0]["uid"].as_str(), v["results"][0]["primaryKey"].as_str()), (StatusCode::OK, Some("films"), Some("film_id")));
        let (_, _, keys) = call(&app, "GET", "/keys", Some(KEY), None).await;
        assert_eq!(keys["results"][0]["uid"], json!(token::key_uid(KEY)));
        // A tenant token: its filter holds on every search, and it may do nothing else.
        let t = tenant(json!({ "films": { "filter": "rating = PG" } }), None);
        let (s, _, v) = call(&app, "POST", "/indexes/films/search", Some(&t), Some(json!({ "limit": 50 }))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["estimatedTotalHits"], 4);
        assert!(v["hits"].as_array().unwrap().iter().all(|h| h["rating"] == "PG"));
        let (_, _, v) = call(&app, "POST", "/indexes/films/search", Some(&t), Some(json!({ "filter": "rating = G" }))).await;
        assert_eq!(v["estimatedTotalHits"], 0, "the user's filter cannot widen the token's");
        let (_, _, v) = call(&app, "POST", "/multi-search", Some(&t), Some(json!({ "queries": [{ "indexUid": "films" }] }))).await;
        assert_eq!(v["results"][0]["estimatedTotalHits"], 4);
        let (s, _, v) = call(&app, "GET", "/indexes/films/documents/3", Some(&t), None).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("invalid_api_key")));
        let other = tenant(json!(["actors"]), None);
        let (s, _, _) = call(&app, "POST", "/indexes/films/search", Some(&other), Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let expired = tenant(json!(["*"]), Some(1_000));
        let (s, _, v) = call(&app, "POST", "/indexes/films/search", Some(&expired), Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
        // CORS: a browser's preflight is answered without a key.
        let pre = axum::http::Request::builder()
            .method("OPTIONS")
            .uri("/multi-search")
            .header(header::ORIGIN, "http://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization, content-type")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(pre).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        // deriver's own routes still want the key itself.
        assert_eq!(call(&app, "GET", "/v1/status", Some(&t), None).await.0, StatusCode::UNAUTHORIZED);
    }
}
