//! `GET /openapi.json`: the OpenAPI 3.1 description of both HTTP APIs — deriver's own (`/v1/…`,
//! health, readiness, metrics, the page) and the Meilisearch-compatible one at the root —
//! generated (`utoipa`) from the `#[utoipa::path]` annotations of the handlers and the types they
//! take and return.
//!
//! What every operation shares is added here from the same code that does it, so that the
//! description cannot drift from the server: who needs the API key and who may use a tenant token
//! (the rules of the two auth middlewares), their 401/403 answers, the 503 of the request time
//! limit, and the Meilisearch write routes, which all answer 405 ([`meili::WRITE_ROUTES`]).
//! A unit test checks that every route the router registers is described.

pub mod meili;
pub mod native;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::meili as meili_api;

/// The routes no key guards (the auth middlewares let them through).
pub const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/health", "/openapi.json"];

const NATIVE_TAG: &str = "deriver";
const MEILI_TAG: &str = "meilisearch";
const API_KEY: &str = "api_key";
const TENANT_TOKEN: &str = "tenant_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "deriver",
        description = "deriver's HTTP API (`/v1/…`, health, readiness, metrics) and its Meilisearch-compatible read API at the root. \
                       Errors of the first are `{\"error\": {\"code\", \"message\", …}}`; errors of the second are Meilisearch's \
                       `{\"message\", \"code\", \"type\", \"link\"}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::page,
        super::healthz,
        super::readyz,
        super::status,
        super::trends,
        super::metrics_text,
        super::list_indexes,
        super::search,
        super::document,
        super::wait,
        super::changes,
        super::admin_reindex,
        super::admin_rollback,
        super::admin_repair,
        super::admin_reload,
        openapi_json,
        meili_api::info::health,
        meili_api::info::version,
        meili_api::info::global_stats,
        meili_api::info::list_indexes,
        meili_api::info::get_index,
        meili_api::info::index_stats,
        meili_api::info::get_settings,
        meili_api::info::get_setting,
        meili_api::info::list_keys,
        meili_api::info::get_key,
        meili_api::info::list_tasks,
        meili_api::info::list_batches,
        meili_api::info::get_task,
        meili_api::search_post,
        meili_api::search_get,
        meili_api::multi_search,
        meili_api::facet_search,
        meili_api::documents::list,
        meili_api::documents::fetch,
        meili_api::documents::one,
    ),
    components(schemas(native::NativeError, meili::MeiliError)),
    modifiers(&Shared),
    tags(
        (name = "deriver", description = "deriver's own API (`../shared/spec/http-api.md`)"),
        (name = "meilisearch", description = "The Meilisearch-compatible read API: Meilisearch's routes, parameters, answers and errors"),
    ),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string(document()).unwrap_or_else(|e| format!("{{\"error\": \"the OpenAPI document: {e}\"}}")))
}

/// This document: the OpenAPI 3.1 description of deriver's HTTP APIs.
#[utoipa::path(get, path = "/openapi.json", tag = "deriver", responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document_json()).into_response()
}

/// Whether `path` (a route pattern) belongs to the Meilisearch-compatible API.
fn is_meili(path: &str) -> bool {
    meili_api::owns(path)
}

fn error_ref(meili: bool) -> RefOr<utoipa::openapi::schema::Schema> {
    RefOr::Ref(Ref::from_schema_name(if meili { "MeiliError" } else { "NativeError" }))
}

fn error_response(meili: bool, description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new().description(description).content("application/json", Content::new(Some(error_ref(meili)))).build().into()
}

/// Adds to `op` a response it does not document yet.
fn add_response(op: &mut Operation, status: &str, meili: bool, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(meili, description));
}

/// Security, the answers every operation shares, and the write routes of the Meilisearch API.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("deriver's API key, `http.token` of its configuration (no key is needed when it has none)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TENANT_TOKEN,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Meilisearch tenant token: a JWT signed (HS256/384/512) with the API key, naming it by `apiKeyUid` (see `GET /keys`), \
                         with `searchRules` (indexes and a filter always applied) and an optional `exp`. Search routes only.",
                    ))
                    .build(),
            ),
        );
        for (path, methods) in meili::WRITE_ROUTES {
            let item = doc.paths.paths.entry(path.to_string()).or_default();
            for method in methods {
                let words: Vec<&str> = path.split(['/', '{', '}', '-']).filter(|w| !w.is_empty()).collect();
                let mut op = OperationBuilder::new()
                    .operation_id(Some(format!("{method}_{}", words.join("_"))))
                    .tag(MEILI_TAG)
                    .summary(Some("A write: refused, the index is derived from PostgreSQL"))
                    .description(Some("Always answers 405 `index_derived_from_postgres`: change the rows in the database, or the pipeline file."))
                    .response("405", error_response(true, "The index is derived from PostgreSQL"))
                    .build();
                for name in path_params(path) {
                    let param = ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build();
                    op.parameters.get_or_insert_with(Vec::new).push(param);
                }
                set(item, method, op);
            }
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let meili = is_meili(path);
            let public = PUBLIC_PATHS.contains(&path.as_str());
            for op in operations(item) {
                op.tags.get_or_insert_with(|| vec![(if meili { MEILI_TAG } else { NATIVE_TAG }).to_string()]);
                // Operation ids are unique: the compatible API's are prefixed (both APIs have a
                // `list_indexes`).
                if meili {
                    op.operation_id = op.operation_id.take().map(|id| format!("meili_{id}"));
                }
                if public {
                    op.security = Some(vec![SecurityRequirement::default()]);
                } else {
                    let mut security = vec![SecurityRequirement::new(API_KEY, Vec::<String>::new())];
                    if meili && meili_api::is_search_route(path) {
                        security.push(SecurityRequirement::new(TENANT_TOKEN, Vec::<String>::new()));
                    }
                    op.security = Some(security);
                    if meili {
                        add_response(op, "401", true, "No `Authorization` header");
                        add_response(op, "403", true, "The key or tenant token is not valid (or a tenant token used beyond its search rules)");
                    } else {
                        add_response(op, "401", false, "A valid `Authorization: Bearer <http.token>` header is required");
                    }
                }
                add_response(op, "503", meili, "The request did not finish within the request time limit (30 s); `Retry-After` says when to retry");
            }
        }
    }
}

/// The `{name}`s of a route pattern.
fn path_params(path: &str) -> Vec<String> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).map(str::to_string).collect()
}

fn set(item: &mut PathItem, method: &str, op: Operation) {
    let slot = match method {
        "get" => &mut item.get,
        "post" => &mut item.post,
        "put" => &mut item.put,
        "patch" => &mut item.patch,
        "delete" => &mut item.delete,
        other => unreachable!("no write route takes {other}"),
    };
    *slot = Some(op);
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete, &mut item.head, &mut item.options].into_iter().flatten()
}

/// The methods a path item documents (lowercase).
pub fn methods_of(item: &PathItem) -> Vec<&'static str> {
    [
        ("get", &item.get),
        ("post", &item.post),
        ("put", &item.put),
        ("patch", &item.patch),
        ("delete", &item.delete),
        ("head", &item.head),
        ("options", &item.options),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|_| m))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    /// Routes registered that are not operations: the catch-all under an index (it only answers
    /// 404 for paths the API does not have).
    const NOT_OPERATIONS: [&str; 1] = ["/indexes/{uid}/{*rest}"];

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `(method, path)` that `.route("path", get(…).post(…))` registers under src/http/
    /// (each `.route(` call is on one line: rustfmt's width is 160).
    fn registered_routes() -> BTreeSet<(String, String)> {
        let mut files = Vec::new();
        sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"), &mut files);
        let mut out = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")) {
                let Some(rest) = line.trim().strip_prefix(".route(\"") else { continue };
                let (path, chain) = rest.split_once('"').unwrap();
                if NOT_OPERATIONS.contains(&path) {
                    continue;
                }
                let mut methods = Vec::new();
                let mut depth = 0usize;
                let mut word = String::new();
                for c in chain.chars() {
                    match c {
                        '(' => {
                            if depth == 0 && !word.is_empty() {
                                methods.push(std::mem::take(&mut word));
                            }
                            depth += 1;
                        }
                        ')' => depth = depth.saturating_sub(1),
                        c if depth == 0 && (c.is_ascii_alphanumeric() || c == '_') => word.push(c),
                        _ if depth == 0 => word.clear(),
                        _ => {}
                    }
                }
                assert!(!methods.is_empty(), "{}: cannot read the methods of `{line}`", file.display());
                for m in methods {
                    assert!(["get", "post", "put", "patch", "delete"].contains(&m.as_str()), "{}: unexpected method router `{m}` in `{line}`", file.display());
                    out.insert((m, path.to_string()));
                }
            }
        }
        out
    }

    fn described() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in &document().paths.paths {
            for m in methods_of(item) {
                out.insert((m.to_string(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn every_registered_route_is_described_and_nothing_else() {
        let registered = registered_routes();
        let described = described();
        assert!(registered.len() > 40, "the scan of src/http found too few routes: {registered:?}");
        let missing: Vec<_> = registered.difference(&described).collect();
        assert!(missing.is_empty(), "routes the router registers that /openapi.json does not describe: {missing:?}");
        let extra: Vec<_> = described.difference(&registered).collect();
        assert!(extra.is_empty(), "operations /openapi.json describes that no route registers: {extra:?}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut seen = BTreeSet::new();
        for (path, item) in &document().paths.paths {
            for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete].into_iter().flatten() {
                let id = op.operation_id.clone().unwrap_or_else(|| panic!("an operation of {path} has no operationId"));
                assert!(seen.insert(id.clone()), "operationId {id} twice");
            }
        }
        assert!(seen.contains("meili_list_indexes") && seen.contains("list_indexes") && seen.contains("meili_post_indexes_uid_documents"), "{seen:?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_security() {
        let v = serde_json::to_value(document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(v["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
        assert_eq!(v["components"]["securitySchemes"]["tenant_token"]["bearerFormat"], "JWT");
        let op = |path: &str, method: &str| v["paths"][path][method].clone();
        assert_eq!(op("/v1/status", "get")["security"], serde_json::json!([{ "api_key": [] }]));
        assert_eq!(op("/healthz", "get")["security"], serde_json::json!([{}]));
        assert_eq!(op("/health", "get")["security"], serde_json::json!([{}]));
        assert_eq!(op("/indexes/{uid}/search", "post")["security"], serde_json::json!([{ "api_key": [] }, { "tenant_token": [] }]));
        assert_eq!(op("/indexes/{uid}/documents", "get")["security"], serde_json::json!([{ "api_key": [] }]));
        // Error shapes per API, and the shared answers.
        assert_eq!(op("/v1/status", "get")["responses"]["401"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/NativeError");
        assert_eq!(op("/indexes", "get")["responses"]["403"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/MeiliError");
        assert_eq!(
            op("/indexes/{uid}/documents", "post")["responses"]["405"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/MeiliError"
        );
        assert!(op("/v1/indexes/{index}/search", "post")["responses"]["503"].is_object());
        // deny_unknown_fields: the native search request takes nothing else.
        assert_eq!(v["components"]["schemas"]["SearchRequest"]["additionalProperties"], false);
    }

    #[tokio::test]
    async fn served_without_a_key() {
        use tower::ServiceExt;
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
        let app = crate::http::router(crate::http::testing::shared_with(None), handle, Some("t0k".into()));
        let req = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["paths"]["/v1/indexes/{index}/search"]["post"].is_object());
    }
}
