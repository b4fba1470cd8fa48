//! The one error type of the HTTP API. Every error answers
//! `{"error": {"code": "…", "message": "…", …extra}}` with a 4xx/5xx status
//! (`../shared/spec/http-api.md`).

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::source::Lsn;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the error object (`field`, `applied_lsn`, `line`, …).
    pub extra: Vec<(String, Value)>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: Vec::new(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn unknown_index(index: &str) -> ApiError {
        ApiError::not_found("unknown_index", format!("there is no search index `{index}`"))
    }

    pub fn unknown_pipeline(pipeline: &str) -> ApiError {
        ApiError::not_found("unknown_pipeline", format!("there is no pipeline `{pipeline}`"))
    }

    pub fn invalid_lsn(what: &str, text: &str) -> ApiError {
        ApiError::bad_request("invalid_lsn", format!("`{what}`: `{}` is not an LSN (expected X/Y, e.g. 0/16B3F70)", shorten(text))).with("field", what)
    }

    /// The index or pipelines have not applied an LSN in time (`min_lsn` of search/documents).
    pub fn lsn_not_reached(wanted: Lsn, applied: Option<Lsn>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lsn_not_reached",
            format!("the index has not applied {wanted} yet (applied: {})", applied.map_or("nothing".into(), |l| l.to_string())),
        );
        e.retry_after = Some(1);
        e.with("applied_lsn", applied.map_or(Value::Null, |l| Value::String(l.to_string())))
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.extra.push((key.to_string(), value)),
        }
        self
    }

    /// An extra member of the error object.
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn with_field(self, field: &str) -> ApiError {
        self.with("field", field)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut obj = Map::new();
        obj.insert("code".into(), Value::String(self.code.to_string()));
        obj.insert("message".into(), Value::String(self.message));
        for (k, v) in self.extra {
            obj.insert(k, v);
        }
        let mut resp = (self.status, Json(json!({ "error": Value::Object(obj) }))).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<tantivy::TantivyError> for ApiError {
    fn from(e: tantivy::TantivyError) -> Self {
        tracing::error!(error = %e, "search failed");
        ApiError::internal("the search index could not answer")
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "search index read failed");
        ApiError::internal("the search index could not be read")
    }
}

/// User text quoted in an error message, cut to a readable length.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// Parses an LSN from user input, naming the parameter on failure.
pub fn parse_lsn(what: &str, text: &str) -> ApiResult<Lsn> {
    text.parse::<Lsn>().map_err(|_| ApiError::invalid_lsn(what, text))
}
