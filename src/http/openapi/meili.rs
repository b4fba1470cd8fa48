//! Schemas of the Meilisearch-compatible API (`src/http/meili/`). Its handlers build
//! Meilisearch's documents as JSON (their members depend on the request: `_formatted` only with
//! highlighting, `totalHits` only when paging by page…); these types describe them for the
//! OpenAPI document, and [`WRITE_ROUTES`] lists the write routes, which all answer 405.

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Every error of the Meilisearch-compatible API, in Meilisearch's shape.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MeiliError {
    pub message: String,
    #[schema(example = "index_not_found")]
    pub code: String,
    #[schema(inline)]
    pub r#type: MeiliErrorType,
    /// Meilisearch's page for the code, or deriver's documentation for the codes it adds
    /// (`index_derived_from_postgres`, `lsn_not_reached`, `service_unavailable`).
    pub link: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum MeiliErrorType {
    InvalidRequest,
    Auth,
    Internal,
    System,
}

/// `matchingStrategy`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum MatchingStrategy {
    Last,
    All,
    Frequency,
}

/// A Meilisearch filter: an expression (`rating = PG AND year > 2000`), or an array of them
/// (ANDed) whose items may be arrays (ORed).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Filter {
    Expression(String),
    Clauses(Vec<FilterClause>),
}

#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum FilterClause {
    Expression(String),
    AnyOf(Vec<String>),
}

/// The parameters of a search (`POST /indexes/{uid}/search`, and each query of a multi-search).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct MeiliSearchRequest {
    pub q: Option<String>,
    #[schema(minimum = 0)]
    pub offset: Option<u64>,
    #[schema(minimum = 0)]
    pub limit: Option<u64>,
    /// Paging by page (with `hitsPerPage`): the answer has `totalHits` and `totalPages`.
    #[schema(minimum = 0)]
    pub page: Option<u64>,
    #[schema(minimum = 0)]
    pub hits_per_page: Option<u64>,
    pub attributes_to_retrieve: Option<Vec<String>>,
    pub retrieve_vectors: Option<bool>,
    /// `attribute` or `attribute:length`.
    pub attributes_to_crop: Option<Vec<String>>,
    #[schema(minimum = 0)]
    pub crop_length: Option<u64>,
    pub attributes_to_highlight: Option<Vec<String>>,
    pub show_matches_position: Option<bool>,
    pub show_ranking_score: Option<bool>,
    pub show_ranking_score_details: Option<bool>,
    pub filter: Option<Filter>,
    /// `attribute:asc` / `attribute:desc`, or `_score`.
    pub sort: Option<Vec<String>>,
    pub distinct: Option<String>,
    /// Attributes whose values to count (`*`: all of them).
    pub facets: Option<Vec<String>>,
    pub highlight_pre_tag: Option<String>,
    pub highlight_post_tag: Option<String>,
    pub crop_marker: Option<String>,
    #[schema(inline)]
    pub matching_strategy: Option<MatchingStrategy>,
    /// Only `["*"]`: deriver searches the index's `default_search_fields`.
    pub attributes_to_search_on: Option<Vec<String>>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub ranking_score_threshold: Option<f64>,
    /// deriver's read-your-writes: answer once the index has applied this LSN (`X/Y`).
    pub min_lsn: Option<String>,
    /// How long to wait for `minLsn` (default 1000 ms, at most 25 s).
    #[schema(minimum = 0)]
    pub timeout_ms: Option<u64>,
}

/// The parameters of `GET /indexes/{uid}/search`: as the body of a `POST`, lists comma-separated.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct SearchQuery {
    pub q: Option<String>,
    #[param(minimum = 0)]
    pub offset: Option<u64>,
    #[param(minimum = 0)]
    pub limit: Option<u64>,
    #[param(minimum = 0)]
    pub page: Option<u64>,
    #[param(minimum = 0)]
    pub hits_per_page: Option<u64>,
    /// Comma-separated.
    pub attributes_to_retrieve: Option<String>,
    /// Comma-separated.
    pub attributes_to_crop: Option<String>,
    #[param(minimum = 0)]
    pub crop_length: Option<u64>,
    /// Comma-separated.
    pub attributes_to_highlight: Option<String>,
    pub show_matches_position: Option<bool>,
    pub show_ranking_score: Option<bool>,
    /// A filter expression.
    pub filter: Option<String>,
    /// Comma-separated.
    pub sort: Option<String>,
    /// Comma-separated.
    pub facets: Option<String>,
    pub highlight_pre_tag: Option<String>,
    pub highlight_post_tag: Option<String>,
    pub crop_marker: Option<String>,
    #[param(inline)]
    pub matching_strategy: Option<MatchingStrategy>,
    #[param(minimum = 0.0, maximum = 1.0)]
    pub ranking_score_threshold: Option<f64>,
    pub min_lsn: Option<String>,
    #[param(minimum = 0)]
    pub timeout_ms: Option<u64>,
}

/// deriver's read-your-writes headers (instead of the `minLsn` parameter).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct FreshnessHeaders {
    /// Answer once the index has applied this LSN (`X/Y`).
    #[param(rename = "X-Deriver-Min-Lsn")]
    pub min_lsn: Option<String>,
    /// How long to wait for it, in milliseconds.
    #[param(rename = "X-Deriver-Timeout-Ms", minimum = 0)]
    pub timeout_ms: Option<u64>,
}

/// A hit: the document's attributes (`attributesToRetrieve`), and as asked `_formatted`,
/// `_matchesPosition`, `_rankingScore`, `_federation`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MeiliHit {
    /// The retrieved attributes, highlighted and cropped, as strings.
    #[schema(value_type = Option<Object>)]
    pub _formatted: Option<Value>,
    /// Per attribute: `{start, length}` (and `indices` in arrays) of each match.
    #[schema(value_type = Option<BTreeMap<String, Vec<Object>>>)]
    pub _matches_position: Option<Value>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub _ranking_score: Option<f64>,
}

/// `facetStats` of one numeric attribute.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FacetStats {
    pub min: f64,
    pub max: f64,
}

/// A search's answer: `limit`, `offset`, `estimatedTotalHits` — or, paging by page,
/// `hitsPerPage`, `page`, `totalPages`, `totalHits`; with `facets`, `facetDistribution` and
/// `facetStats`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct MeiliSearchResponse {
    /// In a multi-search: the index of this result.
    pub index_uid: Option<String>,
    pub hits: Vec<MeiliHit>,
    pub query: String,
    pub processing_time_ms: u64,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub estimated_total_hits: Option<u64>,
    pub hits_per_page: Option<u64>,
    pub page: Option<u64>,
    pub total_pages: Option<u64>,
    pub total_hits: Option<u64>,
    /// Per attribute, per value: the number of matching documents.
    pub facet_distribution: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    pub facet_stats: Option<BTreeMap<String, FacetStats>>,
}

/// One query of a multi-search: a search's parameters and its index.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct MultiSearchQuery {
    pub index_uid: String,
    #[schema(inline)]
    pub federation_options: Option<FederationOptions>,
    #[schema(inline)]
    #[serde(flatten)]
    pub search: MeiliSearchRequest,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FederationOptions {
    /// The factor of this query's ranking scores in the merged list.
    #[schema(minimum = 0.0)]
    pub weight: Option<f64>,
}

/// `federation`: merge the queries' hits into one list.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Federation {
    #[schema(minimum = 0)]
    pub limit: Option<u64>,
    #[schema(minimum = 0)]
    pub offset: Option<u64>,
}

/// `POST /multi-search`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MultiSearchRequest {
    /// At most 64.
    #[schema(max_items = 64)]
    pub queries: Vec<MultiSearchQuery>,
    pub federation: Option<Federation>,
}

/// The answer of a multi-search: one result per query, or with `federation` one merged list.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum MultiSearchResponse {
    Results { results: Vec<MeiliSearchResponse> },
    Federated(FederatedResponse),
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct FederatedResponse {
    pub hits: Vec<MeiliHit>,
    pub processing_time_ms: u64,
    pub limit: u64,
    pub offset: u64,
    pub estimated_total_hits: u64,
}

/// `POST /indexes/{uid}/facet-search`: a search's parameters (`q`, `filter`, …), the facet and
/// the start of its values.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct FacetSearchRequest {
    pub facet_name: String,
    pub facet_query: Option<String>,
    pub exhaustive_facet_count: Option<bool>,
    pub q: Option<String>,
    pub filter: Option<Filter>,
    #[schema(inline)]
    pub matching_strategy: Option<MatchingStrategy>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FacetHit {
    pub value: String,
    pub count: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct FacetSearchResponse {
    pub facet_hits: Vec<FacetHit>,
    pub facet_query: Option<String>,
    pub processing_time_ms: u64,
}

/// `GET /indexes/{uid}/documents`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct BrowseQuery {
    #[param(minimum = 0)]
    pub offset: Option<u64>,
    #[param(minimum = 0)]
    pub limit: Option<u64>,
    /// Comma-separated attributes.
    pub fields: Option<String>,
    /// A filter expression.
    pub filter: Option<String>,
    pub min_lsn: Option<String>,
}

/// `POST /indexes/{uid}/documents/fetch`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct BrowseRequest {
    #[schema(minimum = 0)]
    pub offset: Option<u64>,
    #[schema(minimum = 0)]
    pub limit: Option<u64>,
    pub fields: Option<Vec<String>>,
    pub filter: Option<Filter>,
    pub retrieve_vectors: Option<bool>,
    pub min_lsn: Option<String>,
}

/// A page of documents, in id order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DocumentPage {
    #[schema(value_type = Vec<Object>)]
    pub results: Value,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
}

/// `GET /indexes/{uid}/documents/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct DocumentQuery {
    /// Comma-separated attributes.
    pub fields: Option<String>,
    pub min_lsn: Option<String>,
}

/// `GET /indexes`, `GET /keys`: paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    #[param(minimum = 0)]
    pub offset: Option<u64>,
    #[param(minimum = 0)]
    pub limit: Option<u64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    #[schema(example = "available")]
    pub status: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Version {
    pub commit_sha: String,
    pub commit_date: String,
    pub pkg_version: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Index {
    pub uid: String,
    pub primary_key: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MeiliIndexList {
    pub results: Vec<Index>,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct IndexStats {
    pub number_of_documents: u64,
    pub raw_document_db_size: u64,
    pub avg_document_size: u64,
    pub is_indexing: bool,
    pub number_of_embeddings: u64,
    pub number_of_embedded_documents: u64,
    /// Per attribute that deriver can count: the documents that have it.
    pub field_distribution: BTreeMap<String, u64>,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Stats {
    pub database_size: u64,
    pub used_database_size: u64,
    pub last_update: Option<String>,
    pub indexes: BTreeMap<String, IndexStats>,
}

/// An index's settings, as its pipeline file declares them (Meilisearch's settings object).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Settings {
    pub displayed_attributes: Vec<String>,
    pub searchable_attributes: Vec<String>,
    pub filterable_attributes: Vec<String>,
    pub sortable_attributes: Vec<String>,
    pub ranking_rules: Vec<String>,
    #[schema(value_type = Object)]
    pub typo_tolerance: Value,
    #[schema(value_type = Object)]
    pub faceting: Value,
    #[schema(value_type = Object)]
    pub pagination: Value,
}

/// deriver's one API key (`http.token`).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Key {
    pub name: String,
    pub description: String,
    pub key: String,
    /// What tenant tokens name as their `apiKeyUid`.
    pub uid: String,
    pub actions: Vec<String>,
    pub indexes: Vec<String>,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct KeyList {
    pub results: Vec<Key>,
    pub offset: u64,
    pub limit: u64,
    pub total: u64,
}

/// Tasks and batches: there are none (nothing is written through this API).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskList {
    #[schema(value_type = Vec<Object>, max_items = 0)]
    pub results: Value,
    pub total: u64,
    pub limit: u64,
    pub from: Option<u64>,
    pub next: Option<u64>,
}

/// The write routes of the Meilisearch API: each answers 405 `index_derived_from_postgres`
/// (`documents.rs`, `info.rs`). `(path, methods)`.
pub const WRITE_ROUTES: [(&str, &[&str]); 16] = [
    ("/indexes", &["post"]),
    ("/indexes/{uid}", &["patch", "delete"]),
    ("/indexes/{uid}/documents", &["post", "put", "delete"]),
    ("/indexes/{uid}/documents/delete-batch", &["post"]),
    ("/indexes/{uid}/documents/delete", &["post"]),
    ("/indexes/{uid}/documents/edit", &["post"]),
    ("/indexes/{uid}/documents/{id}", &["delete"]),
    ("/indexes/{uid}/settings", &["patch", "put", "delete"]),
    ("/indexes/{uid}/settings/{name}", &["patch", "put", "delete"]),
    ("/keys", &["post"]),
    ("/keys/{id}", &["patch", "delete"]),
    ("/tasks", &["delete"]),
    ("/tasks/cancel", &["post"]),
    ("/swap-indexes", &["post"]),
    ("/dumps", &["post"]),
    ("/snapshots", &["post"]),
];
