//! The `sort` of a search request, the sort values of a hit, and the opaque `cursor` that
//! pages after the last hit (search-after): what `ranking.rs`'s collector orders by.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tantivy::{DocAddress, Score};

use super::error::{shorten, ApiError, ApiResult};
use crate::pipeline::{SearchTarget, SearchType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKind {
    Score,
    Field { name: String, keyword: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub kind: SortKind,
    pub desc: bool,
}

/// The sort keys of a request; the search id (ascending) always breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortSpec {
    pub keys: Vec<SortKey>,
}

pub const MAX_SORT_KEYS: usize = 8;

fn invalid_sort(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_sort", message)
}

impl SortSpec {
    /// `["rate:desc", "_score"]`; absent or empty: by score. Fields must be declared sortable.
    pub fn parse(sort: Option<&[String]>, target: &SearchTarget) -> ApiResult<SortSpec> {
        let items = sort.unwrap_or_default();
        if items.len() > MAX_SORT_KEYS {
            return Err(invalid_sort(format!("at most {MAX_SORT_KEYS} sort keys")));
        }
        let mut keys = Vec::new();
        for item in items {
            let (name, dir) = match item.rsplit_once(':') {
                Some((n, d)) => (n.trim(), Some(d.trim())),
                None => (item.trim(), None),
            };
            let kind = if name == "_score" {
                SortKind::Score
            } else {
                let Some(f) = target.fields.iter().find(|f| f.name == name) else {
                    return Err(invalid_sort(format!("`{}` is not a field of this index", shorten(name))).with_field(name));
                };
                if !f.sortable {
                    return Err(invalid_sort(format!("`{name}` is not sortable (declare it `sortable: true`)")).with_field(name));
                }
                SortKind::Field { name: name.to_string(), keyword: f.ty == SearchType::Keyword }
            };
            let desc = match dir {
                None => kind == SortKind::Score,
                Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(invalid_sort(format!("`{}`: the direction must be `asc` or `desc`", shorten(other))).with_field(name)),
            };
            if keys.iter().any(|k: &SortKey| k.kind == kind) {
                return Err(invalid_sort(format!("`{name}` appears twice in `sort`")).with_field(name));
            }
            keys.push(SortKey { kind, desc });
        }
        if keys.is_empty() {
            keys.push(SortKey { kind: SortKind::Score, desc: true });
        }
        Ok(SortSpec { keys })
    }

    /// A short text that changes when the sort changes (a cursor is valid for one sort only).
    fn signature(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                let name = match &k.kind {
                    SortKind::Score => "_score",
                    SortKind::Field { name, .. } => name,
                };
                format!("{name}:{}", if k.desc { "d" } else { "a" })
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn uses_score(&self) -> bool {
        self.keys.iter().any(|k| k.kind == SortKind::Score)
    }
}

/// One sort value of a hit, comparable across segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SortValue {
    #[serde(rename = "m")]
    Missing,
    /// A number (or date, bool) in tantivy's order-preserving u64 mapping.
    #[serde(rename = "n")]
    Num(u64),
    #[serde(rename = "s")]
    Str(String),
    /// The bits of an f32 score (exact round trip).
    #[serde(rename = "f")]
    Score(u32),
}

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "s")]
    pub(super) sort: String,
    #[serde(rename = "v")]
    pub(super) values: Vec<SortValue>,
    pub(super) id: String,
}

fn invalid_cursor(message: &str) -> ApiError {
    ApiError::bad_request("invalid_cursor", format!("`cursor` {message}; use the `next_cursor` of the previous page with the same sort"))
}

impl Cursor {
    pub fn after(spec: &SortSpec, hit: &RankedHit) -> Cursor {
        Cursor { sort: spec.signature(), values: hit.values.clone(), id: hit.id.clone() }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(text: &str, spec: &SortSpec) -> ApiResult<Cursor> {
        if text.len() > 64 * 1024 {
            return Err(invalid_cursor("is too long"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(text.trim().trim_end_matches('=')).map_err(|_| invalid_cursor("is not a cursor"))?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid_cursor("is not a cursor"))?;
        if cursor.sort != spec.signature() || cursor.values.len() != spec.keys.len() {
            return Err(invalid_cursor("was made for another sort"));
        }
        for (v, k) in cursor.values.iter().zip(&spec.keys) {
            let fits = matches!(
                (&k.kind, v),
                (SortKind::Score, SortValue::Score(_))
                    | (SortKind::Field { .. }, SortValue::Missing)
                    | (SortKind::Field { keyword: true, .. }, SortValue::Str(_))
                    | (SortKind::Field { keyword: false, .. }, SortValue::Num(_))
            );
            if !fits {
                return Err(invalid_cursor("was made for another sort"));
            }
        }
        Ok(cursor)
    }
}

/// One kept hit.
#[derive(Debug, Clone)]
pub struct RankedHit {
    pub addr: DocAddress,
    pub score: Score,
    pub values: Vec<SortValue>,
    pub id: String,
}

/// What the collector gives: the best hits in order, the match count, facet counts.
#[derive(Debug, Default)]
pub struct Ranked {
    pub hits: Vec<RankedHit>,
    pub total: u64,
    /// `total` is a lower bound: counting stopped at the collector's `total_cap`.
    pub total_capped: bool,
    /// Per requested facet field: value → number of matching documents.
    pub facets: Vec<HashMap<String, u64>>,
}
