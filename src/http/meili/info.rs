//! The descriptive routes of the Meilisearch-compatible API: health, version, indexes, stats,
//! settings (what the pipeline file declares), keys (deriver's one key and its uid, for tenant
//! tokens), tasks (there are none: nothing is written through this API), and the write routes,
//! which answer that the index is derived from Postgres.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tantivy::collector::Count;

use super::error::{ErrorType, MeiliError, MeiliResult};
use super::params::{MAX_TOTAL_HITS, MAX_VALUES_PER_FACET};
use super::search::{filterable_attributes, sortable_attributes};
use super::{blocking, index_of, query_pairs, token};
use crate::http::filter::{compile, Filter, Op};
use crate::http::AppState;
use crate::pipeline::relevance::PrefixSearch;
use crate::pipeline::SearchType;
use crate::sink::tantivy::SearchIndex;

/// When this process began serving (the `createdAt` / `updatedAt` of its indexes: a generation
/// is rebuilt from Postgres, so it has no older creation date to tell).
static STARTED: OnceLock<String> = OnceLock::new();

fn started() -> String {
    STARTED.get_or_init(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).clone()
}

/// Records the start time (called when the router is built).
pub fn mark_started() {
    started();
}

#[utoipa::path(get, path = "/health", responses((status = 200, description = "Available", body = crate::http::openapi::meili::Health)))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "available" }))
}

#[utoipa::path(get, path = "/version", responses((status = 200, description = "deriver's version", body = crate::http::openapi::meili::Version)))]
async fn version() -> Json<Value> {
    Json(json!({ "commitSha": "deriver", "commitDate": "unknown", "pkgVersion": env!("CARGO_PKG_VERSION") }))
}

fn index_object(index: &SearchIndex) -> Value {
    let at = started();
    json!({ "uid": index.name, "primaryKey": index.target.id, "createdAt": at, "updatedAt": at })
}

fn all_indexes(state: &AppState) -> Vec<Arc<SearchIndex>> {
    match state.shared.indexes.read() {
        Ok(i) => i.values().cloned().collect(),
        Err(p) => p.into_inner().values().cloned().collect(),
    }
}

fn page_params(raw: Option<String>, default_limit: usize) -> MeiliResult<(usize, usize)> {
    let pairs = query_pairs(raw);
    let get = |name: &str, default: usize, code: &'static str| -> MeiliResult<usize> {
        match pairs.iter().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, v)) => v
                .trim()
                .parse()
                .map_err(|_| MeiliError::bad_request(code, format!("Invalid value in parameter `{name}`: could not parse `{v}` as a positive integer"))),
        }
    };
    Ok((get("offset", 0, "invalid_index_offset")?, get("limit", default_limit, "invalid_index_limit")?))
}

#[utoipa::path(get, path = "/indexes", params(crate::http::openapi::meili::PageQuery), responses(
    (status = 200, description = "The live indexes", body = crate::http::openapi::meili::MeiliIndexList),
    (status = 400, description = "`offset` or `limit` is not a positive integer", body = crate::http::openapi::meili::MeiliError),
))]
async fn list_indexes(State(state): State<AppState>, RawQuery(raw): RawQuery) -> MeiliResult<Response> {
    let (offset, limit) = page_params(raw, 20)?;
    let all = all_indexes(&state);
    let results: Vec<Value> = all.iter().skip(offset).take(limit).map(|i| index_object(i)).collect();
    Ok(Json(json!({ "results": results, "offset": offset, "limit": limit, "total": all.len() })).into_response())
}

#[utoipa::path(get, path = "/indexes/{uid}", params(("uid" = String, Path)), responses((status = 200, description = "The index", body = crate::http::openapi::meili::Index), (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError)))]
async fn get_index(State(state): State<AppState>, Path(uid): Path<String>) -> MeiliResult<Response> {
    Ok(Json(index_object(&*index_of(&state, &uid)?)).into_response())
}

/// An index's stats (blocking): documents, size, and how many documents hold each attribute
/// that deriver can count (those declared filterable, facet or sortable, and keywords).
pub fn stats(index: &SearchIndex) -> MeiliResult<Value> {
    let searcher = index.reader.searcher();
    let docs = searcher.num_docs();
    let usage = searcher.space_usage().map_err(|e| MeiliError::internal(format!("index size: {e}")))?;
    let bytes = usage.total().get_bytes();
    let store: u64 = usage.segments().iter().map(|s| s.store().total().get_bytes()).sum();
    let mut dist = Map::new();
    for f in &index.target.fields {
        if !crate::http::filter::filterable(f) {
            continue;
        }
        let Ok(q) = compile(&Filter::Cond { field: f.name.clone(), op: Op::Exists(true) }, index) else { continue };
        dist.insert(f.name.clone(), Value::from(searcher.search(&*q, &Count)?));
    }
    Ok(json!({
        "numberOfDocuments": docs,
        "rawDocumentDbSize": bytes,
        "avgDocumentSize": store.checked_div(docs).unwrap_or(0),
        "isIndexing": false,
        "numberOfEmbeddings": 0,
        "numberOfEmbeddedDocuments": 0,
        "fieldDistribution": dist,
    }))
}

#[utoipa::path(get, path = "/indexes/{uid}/stats", params(("uid" = String, Path)), responses((status = 200, description = "The index's stats", body = crate::http::openapi::meili::IndexStats), (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError)))]
async fn index_stats(State(state): State<AppState>, Path(uid): Path<String>) -> MeiliResult<Response> {
    let index = index_of(&state, &uid)?;
    Ok(Json(blocking(&state, move || stats(&index)).await?).into_response())
}

#[utoipa::path(get, path = "/stats", responses((status = 200, description = "Stats of every index", body = crate::http::openapi::meili::Stats)))]
async fn global_stats(State(state): State<AppState>) -> MeiliResult<Response> {
    let indexes = all_indexes(&state);
    let v = blocking(&state, move || {
        let mut by_index = Map::new();
        let mut size = 0u64;
        for ix in &indexes {
            let s = stats(ix)?;
            size += s["rawDocumentDbSize"].as_u64().unwrap_or(0);
            by_index.insert(ix.name.clone(), s);
        }
        Ok(json!({ "databaseSize": size, "usedDatabaseSize": size, "lastUpdate": null, "indexes": by_index }))
    })
    .await?;
    Ok(Json(v).into_response())
}

/// The index's settings, as the pipeline file declares them.
pub fn settings(index: &SearchIndex) -> Value {
    let fields = &index.target.fields;
    let rel = &index.target.relevance;
    let typos = &rel.typo_tolerance;
    // Text fields declared `fuzzy: 0` are exact too.
    let mut exact_fields: Vec<&str> = typos.disable_on_attributes.iter().map(String::as_str).collect();
    for f in fields.iter().filter(|f| f.ty == SearchType::Text && f.fuzzy == Some(0)) {
        if !exact_fields.contains(&f.name.as_str()) {
            exact_fields.push(&f.name);
        }
    }
    json!({
        "displayedAttributes": ["*"],
        "searchableAttributes": index.target.default_search_fields,
        "filterableAttributes": filterable_attributes(index),
        "sortableAttributes": sortable_attributes(index),
        "rankingRules": ["sort", "words", "attribute"],
        "stopWords": rel.stop_words,
        "nonSeparatorTokens": [],
        "separatorTokens": [],
        "dictionary": [],
        "synonyms": rel.synonyms,
        "distinctAttribute": rel.distinct,
        "proximityPrecision": "byWord",
        "typoTolerance": {
            "enabled": typos.enabled,
            "minWordSizeForTypos": { "oneTypo": typos.one_typo, "twoTypos": typos.two_typos },
            "disableOnWords": typos.disable_on_words,
            "disableOnAttributes": exact_fields,
            "disableOnNumbers": typos.disable_on_numbers,
        },
        "faceting": { "maxValuesPerFacet": MAX_VALUES_PER_FACET, "sortFacetValuesBy": { "*": "alpha" } },
        "pagination": { "maxTotalHits": MAX_TOTAL_HITS },
        "searchCutoffMs": null,
        "localizedAttributes": null,
        "facetSearch": true,
        // deriver matches prefixes at query time; Meilisearch's name for "on".
        "prefixSearch": if rel.prefix_search == PrefixSearch::LastWord { "indexingTime" } else { "disabled" },
        "embedders": {},
    })
}

#[utoipa::path(get, path = "/indexes/{uid}/settings", params(("uid" = String, Path)), responses((status = 200, description = "The settings", body = crate::http::openapi::meili::Settings), (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError)))]
async fn get_settings(State(state): State<AppState>, Path(uid): Path<String>) -> MeiliResult<Response> {
    Ok(Json(settings(&*index_of(&state, &uid)?)).into_response())
}

/// `GET /indexes/{uid}/settings/{name}`: one setting (kebab-case name, as Meilisearch's routes).
#[utoipa::path(get, path = "/indexes/{uid}/settings/{name}", params(("uid" = String, Path), ("name" = String, Path, example = "filterable-attributes")), responses(
    (status = 200, description = "The setting's value", body = serde_json::Value),
    (status = 404, description = "No such index, or no such setting", body = crate::http::openapi::meili::MeiliError),
))]
async fn get_setting(State(state): State<AppState>, Path((uid, name)): Path<(String, String)>) -> MeiliResult<Response> {
    let all = settings(&*index_of(&state, &uid)?);
    match all.get(camel_case(&name)) {
        Some(v) => Ok(Json(v.clone()).into_response()),
        None => Err(MeiliError::not_found_route()),
    }
}

/// `filterable-attributes` → `filterableAttributes` (any text: a name is user input).
fn camel_case(name: &str) -> String {
    name.split('-')
        .enumerate()
        .map(|(i, w)| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) if i > 0 => first.to_uppercase().chain(chars).collect(),
                _ => w.to_string(),
            }
        })
        .collect()
}

async fn write_settings() -> MeiliError {
    MeiliError::derived_index("Changing settings")
}

async fn write_index() -> MeiliError {
    MeiliError::derived_index("Creating, changing, swapping or deleting indexes")
}

async fn write_other() -> MeiliError {
    MeiliError::derived_index("This operation")
}

fn key_object(key: &str) -> Value {
    let at = started();
    json!({
        "name": "deriver http.token",
        "description": "deriver's API key (http.token); tenant tokens are signed with it",
        "key": key,
        "uid": token::key_uid(key),
        "actions": ["search", "documents.get", "indexes.get", "settings.get", "stats.get", "version", "keys.get"],
        "indexes": ["*"],
        "expiresAt": null,
        "createdAt": at,
        "updatedAt": at,
    })
}

#[utoipa::path(get, path = "/keys", responses((status = 200, description = "deriver's one key (none without `http.token`)", body = crate::http::openapi::meili::KeyList)))]
async fn list_keys(State(state): State<AppState>) -> MeiliResult<Response> {
    let results: Vec<Value> = state.token.iter().map(|k| key_object(k)).collect();
    let total = results.len();
    Ok(Json(json!({ "results": results, "offset": 0, "limit": 20, "total": total })).into_response())
}

#[utoipa::path(get, path = "/keys/{id}", params(("id" = String, Path, description = "The key, or its uid")), responses(
    (status = 200, description = "The key", body = crate::http::openapi::meili::Key),
    (status = 404, description = "No such key", body = crate::http::openapi::meili::MeiliError),
))]
async fn get_key(State(state): State<AppState>, Path(id): Path<String>) -> MeiliResult<Response> {
    match &state.token {
        Some(k) if id == *k || id == token::key_uid(k) => Ok(Json(key_object(k)).into_response()),
        _ => Err(MeiliError::new(
            axum::http::StatusCode::NOT_FOUND,
            "api_key_not_found",
            ErrorType::InvalidRequest,
            format!("API key `{}` not found.", crate::http::error::shorten(&id)),
        )),
    }
}

async fn write_keys() -> MeiliError {
    MeiliError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "index_derived_from_postgres",
        ErrorType::InvalidRequest,
        "deriver has one API key, `http.token` in its configuration; it is not managed through this API. Hand out tenant tokens signed with it instead.",
    )
}

#[utoipa::path(get, path = "/tasks", params(crate::http::openapi::meili::PageQuery), responses(
    (status = 200, description = "No tasks: nothing is written through this API", body = crate::http::openapi::meili::TaskList),
    (status = 400, description = "`limit` is not a positive integer", body = crate::http::openapi::meili::MeiliError),
))]
async fn list_tasks(RawQuery(raw): RawQuery) -> MeiliResult<Response> {
    let (_, limit) = page_params(raw, 20)?;
    Ok(Json(json!({ "results": [], "total": 0, "limit": limit, "from": null, "next": null })).into_response())
}

#[utoipa::path(get, path = "/tasks/{id}", params(("id" = String, Path)), responses((status = 404, description = "There are no tasks", body = crate::http::openapi::meili::MeiliError)))]
async fn get_task(Path(id): Path<String>) -> MeiliError {
    MeiliError::new(
        axum::http::StatusCode::NOT_FOUND,
        "task_not_found",
        ErrorType::InvalidRequest,
        format!("Task `{}` not found.", crate::http::error::shorten(&id)),
    )
}

#[utoipa::path(get, path = "/batches", params(crate::http::openapi::meili::PageQuery), responses(
    (status = 200, description = "No batches: nothing is written through this API", body = crate::http::openapi::meili::TaskList),
    (status = 400, description = "`limit` is not a positive integer", body = crate::http::openapi::meili::MeiliError),
))]
async fn list_batches(raw: RawQuery) -> MeiliResult<Response> {
    list_tasks(raw).await
}

/// A path under an index that this API does not have: the index's 404 first.
pub(super) async fn unknown_index_route(State(state): State<AppState>, Path((uid, _)): Path<(String, String)>) -> MeiliError {
    match index_of(&state, &uid) {
        Err(e) => e,
        Ok(_) => MeiliError::not_found_route(),
    }
}

pub(super) fn routes() -> Router<AppState> {
    mark_started();
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/stats", get(global_stats))
        .route("/indexes", get(list_indexes).post(write_index))
        .route("/indexes/{uid}", get(get_index).patch(write_index).delete(write_index))
        .route("/indexes/{uid}/stats", get(index_stats))
        .route("/indexes/{uid}/settings", get(get_settings).patch(write_settings).put(write_settings).delete(write_settings))
        .route("/indexes/{uid}/settings/{name}", get(get_setting).patch(write_settings).put(write_settings).delete(write_settings))
        .route("/keys", get(list_keys).post(write_keys))
        .route("/keys/{id}", get(get_key).patch(write_keys).delete(write_keys))
        .route("/tasks", get(list_tasks).delete(write_other))
        .route("/tasks/cancel", post(write_other))
        .route("/tasks/{id}", get(get_task))
        .route("/batches", get(list_batches))
        .route("/swap-indexes", post(write_index))
        .route("/dumps", post(write_other))
        .route("/snapshots", post(write_other))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::search::tests::films;

    #[test]
    fn settings_and_stats_follow_the_pipeline() {
        let idx = films(9);
        let s = settings(&idx);
        assert_eq!(s["filterableAttributes"], json!(["rating", "rate", "year", "tags"]));
        assert_eq!(s["sortableAttributes"], json!(["rate", "year"]));
        assert_eq!(s["searchableAttributes"], json!(["title", "description"]));
        assert_eq!(s["typoTolerance"]["disableOnAttributes"], json!([]));
        assert_eq!(s["typoTolerance"]["enabled"], json!(true));
        assert_eq!(s["typoTolerance"]["minWordSizeForTypos"], json!({ "oneTypo": 5, "twoTypos": 9 }));
        assert_eq!((s["synonyms"].clone(), s["stopWords"].clone(), s["distinctAttribute"].clone()), (json!({}), json!([]), Value::Null));
        assert_eq!(s["prefixSearch"], "indexingTime");
        let st = stats(&idx).unwrap();
        assert_eq!(st["numberOfDocuments"], 9);
        assert_eq!(st["fieldDistribution"]["rating"], 9);
        assert!(st["rawDocumentDbSize"].as_u64().unwrap() > 0);
    }

    #[test]
    fn setting_names_are_kebab_case_of_any_text() {
        assert_eq!(camel_case("filterable-attributes"), "filterableAttributes");
        assert_eq!(camel_case("typo-tolerance"), "typoTolerance");
        assert_eq!(camel_case("a-é-"), "aÉ", "a name that cuts a character in two must not panic");
        assert_eq!(camel_case("--"), "");
    }
}
