//! Errors of the Meilisearch-compatible API, in Meilisearch's shape:
//! `{"message": "…", "code": "index_not_found", "type": "invalid_request", "link": "https://docs.meilisearch.com/errors#index_not_found"}`.
//!
//! Errors of deriver's own search machinery ([`ApiError`]) are translated by their `code` (never
//! by their message) into the Meilisearch code of the parameter they concern.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::http::error::{shorten, ApiError};

/// Meilisearch's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Auth,
    Internal,
    System,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request",
            ErrorType::Auth => "auth",
            ErrorType::Internal => "internal",
            ErrorType::System => "system",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MeiliError {
    pub status: StatusCode,
    pub code: &'static str,
    pub ty: ErrorType,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

pub type MeiliResult<T> = Result<T, MeiliError>;

/// Where deriver documents its own codes (those Meilisearch has no equivalent of).
pub const DERIVER_ERRORS_LINK: &str = "README.md#search-from-your-app-in-five-minutes";

/// The codes deriver adds (not Meilisearch's): their link points at deriver's documentation.
const DERIVER_CODES: [&str; 3] = ["index_derived_from_postgres", "lsn_not_reached", "service_unavailable"];

impl MeiliError {
    pub fn new(status: StatusCode, code: &'static str, ty: ErrorType, message: impl Into<String>) -> MeiliError {
        MeiliError { status, code, ty, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> MeiliError {
        MeiliError::new(StatusCode::BAD_REQUEST, code, ErrorType::InvalidRequest, message)
    }

    pub fn index_not_found(uid: &str) -> MeiliError {
        MeiliError::new(StatusCode::NOT_FOUND, "index_not_found", ErrorType::InvalidRequest, format!("Index `{}` not found.", shorten(uid)))
    }

    pub fn document_not_found(id: &str) -> MeiliError {
        MeiliError::new(StatusCode::NOT_FOUND, "document_not_found", ErrorType::InvalidRequest, format!("Document `{}` not found.", shorten(id)))
    }

    pub fn missing_authorization_header() -> MeiliError {
        MeiliError::new(
            StatusCode::UNAUTHORIZED,
            "missing_authorization_header",
            ErrorType::Auth,
            "The Authorization header is missing. It must use the bearer authorization method.",
        )
    }

    pub fn invalid_api_key() -> MeiliError {
        MeiliError::new(StatusCode::FORBIDDEN, "invalid_api_key", ErrorType::Auth, "The provided API key is invalid.")
    }

    /// A tenant token that cannot be used: expired, forged, malformed, or for another index.
    pub fn invalid_tenant_token(why: &str) -> MeiliError {
        MeiliError::new(StatusCode::FORBIDDEN, "invalid_api_key", ErrorType::Auth, format!("The provided API key is invalid. {why}"))
    }

    /// Any write: the index is derived from Postgres.
    pub fn derived_index(what: &str) -> MeiliError {
        MeiliError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "index_derived_from_postgres",
            ErrorType::InvalidRequest,
            format!(
                "{what} is not possible here: deriver's indexes are derived from PostgreSQL. Change the rows in the database \
                 (they reach the index within milliseconds), or the index's definition in the pipeline file."
            ),
        )
    }

    pub fn not_found_route() -> MeiliError {
        MeiliError::new(StatusCode::NOT_FOUND, "not_found", ErrorType::InvalidRequest, "Not found.")
    }

    pub fn internal(message: impl Into<String>) -> MeiliError {
        MeiliError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", ErrorType::Internal, message)
    }

    pub fn link(&self) -> String {
        if DERIVER_CODES.contains(&self.code) {
            DERIVER_ERRORS_LINK.to_string()
        } else {
            format!("https://docs.meilisearch.com/errors#{}", self.code)
        }
    }

    /// deriver's search error for a parameter of a search request, as Meilisearch's code of that
    /// parameter. `prefix` is `invalid_search` for searches, `invalid_document` for document
    /// browsing, `invalid_facet_search` for facet searches.
    pub fn from_api(e: ApiError, context: Context) -> MeiliError {
        let (search, document) = match e.code {
            "invalid_filter" => ("invalid_search_filter", "invalid_document_filter"),
            "invalid_sort" => ("invalid_search_sort", "invalid_document_sort"),
            "invalid_facet" => ("invalid_search_facets", "invalid_search_facets"),
            "invalid_highlight" => ("invalid_search_attributes_to_highlight", "invalid_search_attributes_to_highlight"),
            "invalid_paging" => ("invalid_search_offset", "invalid_document_offset"),
            "invalid_cursor" => ("invalid_search_offset", "invalid_document_offset"),
            "invalid_lsn" => ("bad_request", "bad_request"),
            "invalid_request" => ("bad_request", "bad_request"),
            "unknown_index" => return MeiliError::index_not_found(e.extra("index").and_then(|v| v.as_str()).unwrap_or_default()).with_message(e.message),
            "lsn_not_reached" => {
                let mut m = MeiliError::new(StatusCode::SERVICE_UNAVAILABLE, "lsn_not_reached", ErrorType::System, e.message);
                m.retry_after = e.retry_after;
                return m;
            }
            "payload_too_large" => return MeiliError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", ErrorType::InvalidRequest, e.message),
            _ if e.status.is_server_error() => {
                let mut m = MeiliError::new(e.status, "internal", ErrorType::Internal, e.message);
                if e.status == StatusCode::SERVICE_UNAVAILABLE {
                    m.code = "service_unavailable";
                    m.ty = ErrorType::System;
                }
                m.retry_after = e.retry_after;
                return m;
            }
            _ => ("bad_request", "bad_request"),
        };
        let code = match context {
            Context::Search => search,
            Context::Documents => document,
        };
        let mut m = MeiliError::bad_request(code, e.message);
        m.status = if e.status.is_client_error() { e.status } else { StatusCode::BAD_REQUEST };
        m
    }

    /// The error of the `i`th query of a multi-search.
    pub fn in_query(mut self, i: usize) -> MeiliError {
        self.message = format!("Inside `.queries[{i}]`: {}", self.message);
        self
    }

    pub fn with_message(mut self, message: String) -> MeiliError {
        self.message = message;
        self
    }
}

/// Which family of Meilisearch codes a translated error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Search,
    Documents,
}

impl std::fmt::Display for MeiliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for MeiliError {}

impl IntoResponse for MeiliError {
    fn into_response(self) -> Response {
        let link = self.link();
        let body = json!({ "message": self.message, "code": self.code, "type": self.ty.as_str(), "link": link });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<tantivy::TantivyError> for MeiliError {
    fn from(e: tantivy::TantivyError) -> Self {
        tracing::error!(error = %e, "search failed");
        MeiliError::internal("the search index could not answer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_meilisearch_shapes() {
        let resp = MeiliError::index_not_found("movies").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({ "message": "Index `movies` not found.", "code": "index_not_found", "type": "invalid_request",
                    "link": "https://docs.meilisearch.com/errors#index_not_found" })
        );
        assert_eq!(MeiliError::derived_index("Adding documents").link(), DERIVER_ERRORS_LINK);
    }

    #[test]
    fn translates_deriver_codes_by_code() {
        let e = MeiliError::from_api(ApiError::bad_request("invalid_filter", "x"), Context::Search);
        assert_eq!((e.code, e.status), ("invalid_search_filter", StatusCode::BAD_REQUEST));
        let e = MeiliError::from_api(ApiError::bad_request("invalid_filter", "x"), Context::Documents);
        assert_eq!(e.code, "invalid_document_filter");
        let e = MeiliError::from_api(ApiError::bad_request("invalid_sort", "x"), Context::Search);
        assert_eq!(e.code, "invalid_search_sort");
        let e = MeiliError::from_api(ApiError::lsn_not_reached(crate::source::Lsn(5), None), Context::Search);
        assert_eq!((e.code, e.status.as_u16(), e.retry_after), ("lsn_not_reached", 503, Some(1)));
        let e = MeiliError::from_api(ApiError::internal("boom"), Context::Search);
        assert_eq!((e.code, e.ty), ("internal", ErrorType::Internal));
        let e = MeiliError::from_api(ApiError::unknown_index("nope"), Context::Search);
        assert_eq!(e.code, "index_not_found");
    }
}
