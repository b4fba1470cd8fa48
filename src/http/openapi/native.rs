//! Response types of deriver's own API (`/v1/…`, `/readyz`) that the handlers return, and the
//! schemas of the documents they pass through as JSON (the status document, the error object).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::source::Lsn;

/// Every error of deriver's own API.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NativeError {
    pub error: NativeErrorBody,
}

/// The error object: a stable `code`, a readable `message`, and members that depend on the code
/// (`field`: the parameter at fault; `applied_lsn`: what the index or pipelines have applied;
/// `line`, `column`: where a request body stops being valid JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NativeErrorBody {
    #[schema(example = "invalid_filter")]
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

/// `GET /readyz` when ready.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
}

/// `GET /v1/indexes/{index}/documents/{id}`.
#[derive(Serialize, ToSchema)]
pub struct DocumentResponse {
    pub id: String,
    /// The stored fields of the document.
    #[schema(value_type = Object)]
    pub doc: Value,
    /// What the index had applied when it was read.
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
    pub generation: u64,
}

/// One live index of `GET /v1/indexes`.
#[derive(Serialize, ToSchema)]
pub struct IndexInfo {
    pub name: String,
    /// The pipeline whose search target it is.
    pub pipeline: Option<String>,
    pub generation: u64,
    /// Live documents in the searcher of this moment.
    pub documents: u64,
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
    /// The document id field.
    pub id: String,
    pub default_search_fields: Vec<String>,
    /// The fields as the pipeline file declares them.
    #[schema(value_type = Vec<Object>)]
    pub fields: Vec<crate::pipeline::SearchField>,
}

/// `GET /v1/indexes`.
#[derive(Serialize, ToSchema)]
pub struct IndexList {
    pub indexes: Vec<IndexInfo>,
}

/// `POST /v1/wait` once the pipelines reached the LSN.
#[derive(Serialize, ToSchema)]
pub struct WaitResponse {
    /// The lowest LSN the named pipelines have applied.
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
}

/// Trends of one pipeline: one sample a second, as columns.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TrendColumns {
    /// Sample times, Unix milliseconds.
    pub t: Vec<u64>,
    pub lag_seconds: Vec<f64>,
    pub changes_per_second: Vec<f64>,
}

/// `GET /v1/status/trends`.
#[derive(Serialize, ToSchema)]
pub struct Trends {
    pub interval_ms: u64,
    pub window_ms: u64,
    #[schema(value_type = BTreeMap<String, TrendColumns>)]
    pub pipelines: BTreeMap<String, crate::telemetry::history::Columns>,
}

/// `POST /v1/admin/reindex`: the pipelines whose rebuild started.
#[derive(Serialize, ToSchema)]
pub struct ReindexStarted {
    pub started: Vec<String>,
}

/// `POST /v1/admin/rollback`: the generations the pipeline's indexes went back to.
#[derive(Serialize, ToSchema)]
pub struct RolledBack {
    pub generations: Vec<u64>,
}

/// `POST /v1/admin/reload`: what the reload did (`runtime::reload::ReloadReport`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Pipelines building their records in the background (`/v1/status` shows the progress).
    pub rebuilding: Vec<String>,
}

/// `POST /v1/admin/repair`: the keys re-derived.
#[derive(Serialize, ToSchema)]
pub struct Repaired {
    pub repaired: usize,
}

/// `GET /v1/status`: the `deriver status --json` document, plus `role`, `owner` (on a standby)
/// and `dependencies`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatusDocument {
    /// The server's current WAL position.
    #[schema(value_type = Option<String>)]
    pub server_lsn: Option<Lsn>,
    pub slot: Option<SlotSchema>,
    pub pipelines: Vec<PipelineSchema>,
    /// `owner`, or `standby` while another process holds the slot.
    #[schema(inline)]
    pub role: Option<Role>,
    /// The health of each dependency (`postgres`, `redis`, …).
    #[schema(value_type = Option<BTreeMap<String, Object>>)]
    pub dependencies: Option<Value>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Role {
    Owner,
    Standby,
}

/// The replication slot.
#[derive(ToSchema)]
#[schema(as = Slot)]
#[allow(dead_code)]
pub struct SlotSchema {
    pub name: String,
    #[schema(value_type = Option<String>)]
    pub confirmed_flush_lsn: Option<Lsn>,
    pub wal_status: Option<String>,
}

/// One pipeline of the status document.
#[derive(ToSchema)]
#[schema(as = Pipeline)]
#[allow(dead_code)]
pub struct PipelineSchema {
    pub name: String,
    /// `streaming`, `rebuilding`, `standby`, …
    pub state: String,
    pub generation: Option<u64>,
    pub definition_hash: String,
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
    /// Per target (`search:<index>`, `redis:<prefix>`): the LSN it has applied.
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub targets: Value,
    pub lag_bytes: Option<u64>,
    pub dead_letters: u64,
}
