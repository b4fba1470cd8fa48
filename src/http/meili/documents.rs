//! Documents of the Meilisearch-compatible API: one by id, and browsing (`GET …/documents`,
//! `POST …/documents/fetch`) with `offset`, `limit`, `fields` and `filter`, in id order (integer
//! ids by value). Writes answer that the index is derived from Postgres.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tantivy::collector::Count;

use super::error::{Context, MeiliError, MeiliResult};
use super::search::combined_filter;
use super::{blocking, fresh_index, object_body, query_pairs};
use crate::http::error::shorten;
use crate::http::ranking::IdOrdCache;
use crate::http::search::{lookup, Plan, SearchRequest, MAX_WINDOW};
use crate::http::AppState;
use crate::sink::tantivy::SearchIndex;

/// Documents of one browse request at most (Meilisearch sets no limit; deriver reads them in
/// pages of [`MAX_WINDOW`] and keeps the answer bounded).
pub const MAX_BROWSE_LIMIT: usize = 10_000;
const DEFAULT_BROWSE_LIMIT: usize = 20;

/// A browse request.
#[derive(Debug, Default, Clone)]
pub struct Browse {
    pub offset: usize,
    pub limit: usize,
    pub fields: Option<Vec<String>>,
    pub filter: Option<Value>,
}

fn invalid(code: &'static str, name: &str, expected: &str, got: &Value) -> MeiliError {
    MeiliError::bad_request(code, format!("Invalid value type at `.{name}`: expected {expected}, but found `{}`", shorten(&got.to_string())))
}

impl Browse {
    /// From a `documents/fetch` body.
    pub fn from_object(obj: &Map<String, Value>) -> MeiliResult<Browse> {
        let mut b = Browse { limit: DEFAULT_BROWSE_LIMIT, ..Browse::default() };
        for (k, v) in obj {
            match k.as_str() {
                "offset" => b.offset = v.as_u64().ok_or_else(|| invalid("invalid_document_offset", k, "a positive integer", v))? as usize,
                "limit" => b.limit = v.as_u64().ok_or_else(|| invalid("invalid_document_limit", k, "a positive integer", v))? as usize,
                "fields" => {
                    b.fields = match v {
                        Value::Null => None,
                        Value::Array(items) => Some(
                            items
                                .iter()
                                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| invalid("invalid_document_fields", k, "an array of strings", v)))
                                .collect::<MeiliResult<_>>()?,
                        ),
                        _ => return Err(invalid("invalid_document_fields", k, "an array", v)),
                    }
                }
                "filter" => b.filter = (!v.is_null()).then(|| v.clone()),
                "retrieveVectors" => {}
                other => {
                    return Err(MeiliError::bad_request(
                        "bad_request",
                        format!("Unknown field `{}`: expected one of `offset`, `limit`, `fields`, `filter`, `retrieveVectors`", shorten(other)),
                    ))
                }
            }
        }
        b.limit = b.limit.min(MAX_BROWSE_LIMIT);
        Ok(b)
    }

    /// From a `GET …/documents` query string (`fields` comma-separated).
    pub fn from_query(pairs: &[(String, String)]) -> MeiliResult<Browse> {
        let mut obj = Map::new();
        for (k, v) in pairs {
            let value = match k.as_str() {
                "offset" | "limit" => match v.trim().parse::<u64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        let code = if k == "offset" { "invalid_document_offset" } else { "invalid_document_limit" };
                        return Err(MeiliError::bad_request(
                            code,
                            format!("Invalid value in parameter `{k}`: could not parse `{}` as a positive integer", shorten(v)),
                        ));
                    }
                },
                "fields" => Value::Array(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect()),
                _ => Value::String(v.clone()),
            };
            obj.insert(k.clone(), value);
        }
        Browse::from_object(&obj)
    }
}

/// A document with only `fields` (all with none or `*`).
pub fn project(doc: Value, fields: Option<&[String]>) -> Value {
    match (fields, doc) {
        (Some(fields), Value::Object(obj)) if !fields.iter().any(|f| f == "*") => {
            Value::Object(fields.iter().filter_map(|f| obj.get(f).map(|v| (f.clone(), v.clone()))).collect())
        }
        (_, doc) => doc,
    }
}

fn request(filter: Option<Value>, offset: usize, limit: usize, cursor: Option<String>) -> SearchRequest {
    SearchRequest { filter, limit: Some(limit), offset: Some(offset), cursor, ..SearchRequest::default() }
}

/// Browses (blocking): `{"results", "offset", "limit", "total"}`.
pub fn browse(index: &SearchIndex, b: &Browse, cache: &IdOrdCache) -> MeiliResult<Value> {
    let filter = combined_filter(index, b.filter.as_ref(), None, "invalid_document_filter")?;
    let plan =
        |offset, limit, cursor| Plan::new(request(filter.clone(), offset, limit, cursor), index).map_err(|e| MeiliError::from_api(e, Context::Documents));
    let first = plan(0, 0, None)?;
    let total = index.reader.searcher().search(&*first.query(index).map_err(|e| MeiliError::from_api(e, Context::Documents))?, &Count)?;
    let mut results = Vec::new();
    let end = b.offset.saturating_add(b.limit);
    if end <= MAX_WINDOW {
        let resp = plan(b.offset, b.limit, None)?.run(index, cache, None).map_err(|e| MeiliError::from_api(e, Context::Documents))?;
        results.extend(resp.hits.into_iter().map(|h| project(h.doc, b.fields.as_deref())));
    } else if b.limit > 0 && b.offset < total {
        // Deeper: walk pages of MAX_WINDOW with cursors (search-after), keeping [offset, end).
        let mut pos = 0usize;
        let mut cursor = None;
        loop {
            let resp = plan(0, MAX_WINDOW, cursor)?.run(index, cache, None).map_err(|e| MeiliError::from_api(e, Context::Documents))?;
            for h in resp.hits {
                if pos >= b.offset && pos < end {
                    results.push(project(h.doc, b.fields.as_deref()));
                }
                pos += 1;
            }
            match resp.next_cursor {
                Some(c) if pos < end => cursor = Some(c),
                _ => break,
            }
        }
    }
    Ok(json!({ "results": results, "offset": b.offset, "limit": b.limit, "total": total }))
}

async fn run_browse(state: &AppState, uid: &str, b: Browse, headers: &HeaderMap, min_lsn: Option<&str>) -> MeiliResult<Response> {
    let index: Arc<SearchIndex> = fresh_index(state, uid, min_lsn, None, headers).await?;
    let cache = state.id_ords.clone();
    let v = blocking(state, move || browse(&index, &b, &cache)).await?;
    Ok(Json(v).into_response())
}

/// Browse an index's documents, in id order.
#[utoipa::path(get, path = "/indexes/{uid}/documents", params(("uid" = String, Path), crate::http::openapi::meili::BrowseQuery, crate::http::openapi::meili::FreshnessHeaders), responses(
    (status = 200, description = "A page of documents", body = crate::http::openapi::meili::DocumentPage),
    (status = 400, description = "A parameter is not valid", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time", body = crate::http::openapi::meili::MeiliError),
))]
async fn list(State(state): State<AppState>, Path(uid): Path<String>, headers: HeaderMap, RawQuery(raw): RawQuery) -> MeiliResult<Response> {
    let mut pairs = query_pairs(raw);
    let min_lsn = pairs.iter().position(|(k, _)| k == "minLsn").map(|i| pairs.remove(i).1);
    run_browse(&state, &uid, Browse::from_query(&pairs)?, &headers, min_lsn.as_deref()).await
}

/// Browse an index's documents, parameters in the body.
#[utoipa::path(post, path = "/indexes/{uid}/documents/fetch", params(("uid" = String, Path), crate::http::openapi::meili::FreshnessHeaders), request_body = crate::http::openapi::meili::BrowseRequest, responses(
    (status = 200, description = "A page of documents", body = crate::http::openapi::meili::DocumentPage),
    (status = 400, description = "A parameter is not valid", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index", body = crate::http::openapi::meili::MeiliError),
    (status = 413, description = "The body is over 1 MiB", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time", body = crate::http::openapi::meili::MeiliError),
))]
async fn fetch(State(state): State<AppState>, Path(uid): Path<String>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> MeiliResult<Response> {
    let mut obj = object_body(body)?;
    let min_lsn = match obj.remove("minLsn") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    run_browse(&state, &uid, Browse::from_object(&obj)?, &headers, min_lsn.as_deref()).await
}

/// One document, by id.
#[utoipa::path(get, path = "/indexes/{uid}/documents/{id}", params(("uid" = String, Path), ("id" = String, Path), crate::http::openapi::meili::DocumentQuery, crate::http::openapi::meili::FreshnessHeaders), responses(
    (status = 200, description = "The document (its `fields`)", body = Object),
    (status = 400, description = "A parameter is not valid", body = crate::http::openapi::meili::MeiliError),
    (status = 404, description = "No such index, or no such document", body = crate::http::openapi::meili::MeiliError),
    (status = 503, description = "`minLsn` not reached in time", body = crate::http::openapi::meili::MeiliError),
))]
async fn one(State(state): State<AppState>, Path((uid, id)): Path<(String, String)>, headers: HeaderMap, RawQuery(raw): RawQuery) -> MeiliResult<Response> {
    let pairs = query_pairs(raw);
    let min_lsn = pairs.iter().find(|(k, _)| k == "minLsn").map(|(_, v)| v.clone());
    let fields: Option<Vec<String>> =
        pairs.iter().find(|(k, _)| k == "fields").map(|(_, v)| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect());
    let index = fresh_index(&state, &uid, min_lsn.as_deref(), None, &headers).await?;
    let lookup_id = id.clone();
    let doc = blocking(&state, move || lookup(&index, &lookup_id).map_err(|e| MeiliError::from_api(e, Context::Documents))).await?;
    match doc {
        Some(doc) => Ok(Json(project(doc, fields.as_deref())).into_response()),
        None => Err(MeiliError::document_not_found(&id)),
    }
}

async fn write_documents() -> MeiliError {
    MeiliError::derived_index("Changing documents")
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/indexes/{uid}/documents", get(list).post(write_documents).put(write_documents).delete(write_documents))
        .route("/indexes/{uid}/documents/fetch", post(fetch))
        .route("/indexes/{uid}/documents/delete-batch", post(write_documents))
        .route("/indexes/{uid}/documents/delete", post(write_documents))
        .route("/indexes/{uid}/documents/edit", post(write_documents))
        .route("/indexes/{uid}/documents/{id}", get(one).delete(write_documents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::search::tests::films;

    fn ids(v: &Value) -> Vec<u64> {
        v["results"].as_array().unwrap().iter().map(|d| d["film_id"].as_u64().unwrap()).collect()
    }

    #[test]
    fn browses_in_id_order_at_any_depth() {
        let idx = films(2500);
        let cache = IdOrdCache::default();
        let b = Browse { offset: 5, limit: 3, fields: Some(vec!["film_id".into()]), filter: None };
        let v = browse(&idx, &b, &cache).unwrap();
        assert_eq!((ids(&v), v["total"].as_u64()), (vec![6, 7, 8], Some(2500)));
        assert_eq!(v["results"][0].as_object().unwrap().len(), 1);
        // Beyond the search window: pages walked with cursors.
        let v = browse(&idx, &Browse { offset: 2100, limit: 4, fields: None, filter: None }, &cache).unwrap();
        assert_eq!(ids(&v), vec![2101, 2102, 2103, 2104]);
        let v = browse(&idx, &Browse { offset: 990, limit: 20, fields: None, filter: None }, &cache).unwrap();
        assert_eq!(ids(&v), (991..=1010).collect::<Vec<_>>());
        let v = browse(&idx, &Browse { offset: 2498, limit: 10, fields: None, filter: None }, &cache).unwrap();
        assert_eq!(ids(&v), vec![2499, 2500]);
        // Filtered.
        let v = browse(&idx, &Browse { offset: 0, limit: 2, fields: None, filter: Some(json!("rating = PG")) }, &cache).unwrap();
        assert_eq!((ids(&v), v["total"].as_u64()), (vec![1, 4], Some(834)));
        let e = browse(&idx, &Browse { offset: 0, limit: 2, fields: None, filter: Some(json!("title = x")) }, &cache).unwrap_err();
        assert_eq!(e.code, "invalid_document_filter");
    }

    #[test]
    fn reads_browse_parameters() {
        let b = Browse::from_query(&[("limit".into(), "5".into()), ("fields".into(), "a, b".into()), ("filter".into(), "x = 1".into())]).unwrap();
        assert_eq!((b.limit, b.fields.unwrap(), b.filter), (5, vec!["a".to_string(), "b".to_string()], Some(json!("x = 1"))));
        assert_eq!(Browse::from_query(&[("limit".into(), "-1".into())]).unwrap_err().code, "invalid_document_limit");
        assert_eq!(Browse::from_object(json!({ "offset": "x" }).as_object().unwrap()).unwrap_err().code, "invalid_document_offset");
        assert_eq!(Browse::from_object(json!({ "fields": "a" }).as_object().unwrap()).unwrap_err().code, "invalid_document_fields");
        assert_eq!(Browse::from_object(json!({ "limit": 1_000_000 }).as_object().unwrap()).unwrap().limit, MAX_BROWSE_LIMIT);
    }
}
