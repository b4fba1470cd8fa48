//! Search parameters of the Meilisearch-compatible API, read from a JSON body (`POST`) or a query
//! string (`GET`), each checked with the Meilisearch error code of that parameter.

use serde_json::{Map, Value};

use super::error::{MeiliError, MeiliResult};
use crate::http::error::shorten;

/// Meilisearch's defaults.
pub const DEFAULT_LIMIT: usize = 20;
pub const DEFAULT_CROP_LENGTH: usize = 10;
pub const DEFAULT_CROP_MARKER: &str = "…";
pub const DEFAULT_PRE_TAG: &str = "<em>";
pub const DEFAULT_POST_TAG: &str = "</em>";
/// Meilisearch's `pagination.maxTotalHits` default: no search returns hits beyond this position,
/// and totals are counted up to it. deriver's own search window has the same size.
pub const MAX_TOTAL_HITS: usize = crate::http::search::MAX_WINDOW;
/// Meilisearch's `faceting.maxValuesPerFacet` default.
pub const MAX_VALUES_PER_FACET: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchingStrategy {
    Last,
    All,
    Frequency,
}

#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    pub q: Option<String>,
    pub filter: Option<Value>,
    pub sort: Option<Vec<String>>,
    pub facets: Option<Vec<String>>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub hits_per_page: Option<usize>,
    pub page: Option<usize>,
    pub attributes_to_retrieve: Option<Vec<String>>,
    pub attributes_to_highlight: Option<Vec<String>>,
    pub highlight_pre_tag: Option<String>,
    pub highlight_post_tag: Option<String>,
    pub attributes_to_crop: Option<Vec<String>>,
    pub crop_length: Option<usize>,
    pub crop_marker: Option<String>,
    pub show_matches_position: bool,
    pub show_ranking_score: bool,
    pub ranking_score_threshold: Option<f64>,
    pub matching_strategy: Option<MatchingStrategy>,
    /// Overrides the index's `distinctAttribute` for this search.
    pub distinct: Option<String>,
    /// deriver's read-your-writes: the LSN the index must have applied (also the header
    /// `X-Deriver-Min-Lsn`), and how long to wait for it.
    pub min_lsn: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// The parameters of a search, in the order Meilisearch lists them in its unknown-field error.
const SEARCH_FIELDS: [&str; 30] = [
    "q",
    "vector",
    "offset",
    "limit",
    "page",
    "hitsPerPage",
    "attributesToRetrieve",
    "retrieveVectors",
    "attributesToCrop",
    "cropLength",
    "attributesToHighlight",
    "showMatchesPosition",
    "showRankingScore",
    "showRankingScoreDetails",
    "filter",
    "sort",
    "distinct",
    "facets",
    "highlightPreTag",
    "highlightPostTag",
    "cropMarker",
    "matchingStrategy",
    "attributesToSearchOn",
    "rankingScoreThreshold",
    "locales",
    "hybrid",
    "minLsn",
    "timeoutMs",
    "indexUid",
    "federationOptions",
];

fn invalid(code: &'static str, name: &str, expected: &str, got: &Value) -> MeiliError {
    MeiliError::bad_request(code, format!("Invalid value type at `.{name}`: expected {expected}, but found {}: `{}`", kind(got), shorten(&got.to_string())))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a negative integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn code_of(name: &str) -> &'static str {
    match name {
        "q" => "invalid_search_q",
        "offset" => "invalid_search_offset",
        "limit" => "invalid_search_limit",
        "page" => "invalid_search_page",
        "hitsPerPage" => "invalid_search_hits_per_page",
        "attributesToRetrieve" => "invalid_search_attributes_to_retrieve",
        "attributesToCrop" => "invalid_search_attributes_to_crop",
        "cropLength" => "invalid_search_crop_length",
        "attributesToHighlight" => "invalid_search_attributes_to_highlight",
        "showMatchesPosition" => "invalid_search_show_matches_position",
        "showRankingScore" => "invalid_search_show_ranking_score",
        "showRankingScoreDetails" => "invalid_search_show_ranking_score_details",
        "filter" => "invalid_search_filter",
        "sort" => "invalid_search_sort",
        "distinct" => "invalid_search_distinct",
        "facets" => "invalid_search_facets",
        "highlightPreTag" => "invalid_search_highlight_pre_tag",
        "highlightPostTag" => "invalid_search_highlight_post_tag",
        "cropMarker" => "invalid_search_crop_marker",
        "matchingStrategy" => "invalid_search_matching_strategy",
        "attributesToSearchOn" => "invalid_search_attributes_to_search_on",
        "rankingScoreThreshold" => "invalid_search_ranking_score_threshold",
        "locales" => "invalid_search_locales",
        "vector" => "invalid_search_vector",
        "hybrid" => "invalid_search_hybrid_query",
        "retrieveVectors" => "invalid_search_retrieve_vectors",
        _ => "bad_request",
    }
}

fn usize_of(name: &str, v: &Value) -> MeiliResult<Option<usize>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            n.as_u64().map(|u| Some(usize::try_from(u).unwrap_or(usize::MAX))).ok_or_else(|| invalid(code_of(name), name, "a positive integer", v))
        }
        _ => Err(invalid(code_of(name), name, "a positive integer", v)),
    }
}

fn bool_of(name: &str, v: &Value) -> MeiliResult<bool> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(invalid(code_of(name), name, "a boolean", v)),
    }
}

fn string_of(name: &str, v: &Value) -> MeiliResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(invalid(code_of(name), name, "a string", v)),
    }
}

fn strings_of(name: &str, v: &Value) -> MeiliResult<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| invalid(code_of(name), name, "an array of strings", v)))
            .collect::<MeiliResult<_>>()
            .map(Some),
        _ => Err(invalid(code_of(name), name, "an array", v)),
    }
}

impl SearchParams {
    /// Reads a search's parameters. `extra` names members allowed besides the search parameters
    /// (`indexUid`, `federationOptions` in a multi-search query).
    pub fn from_object(obj: &Map<String, Value>, extra: &[&str]) -> MeiliResult<SearchParams> {
        let mut p = SearchParams::default();
        for (name, v) in obj {
            match name.as_str() {
                "q" => p.q = string_of(name, v)?,
                "filter" => p.filter = (!v.is_null()).then(|| v.clone()),
                "sort" => p.sort = strings_of(name, v)?,
                "facets" => p.facets = strings_of(name, v)?,
                "limit" => p.limit = usize_of(name, v)?,
                "offset" => p.offset = usize_of(name, v)?,
                "hitsPerPage" => p.hits_per_page = usize_of(name, v)?,
                "page" => p.page = usize_of(name, v)?,
                "attributesToRetrieve" => p.attributes_to_retrieve = strings_of(name, v)?,
                "attributesToHighlight" => p.attributes_to_highlight = strings_of(name, v)?,
                "highlightPreTag" => p.highlight_pre_tag = string_of(name, v)?,
                "highlightPostTag" => p.highlight_post_tag = string_of(name, v)?,
                "attributesToCrop" => p.attributes_to_crop = strings_of(name, v)?,
                "cropLength" => p.crop_length = usize_of(name, v)?,
                "cropMarker" => p.crop_marker = string_of(name, v)?,
                "showMatchesPosition" => p.show_matches_position = bool_of(name, v)?,
                "showRankingScore" => p.show_ranking_score = bool_of(name, v)?,
                "showRankingScoreDetails" | "retrieveVectors" => {
                    bool_of(name, v)?;
                }
                "rankingScoreThreshold" => {
                    p.ranking_score_threshold = match v {
                        Value::Null => None,
                        Value::Number(n) => n
                            .as_f64()
                            .filter(|x| (0.0..=1.0).contains(x))
                            .map(Some)
                            .ok_or_else(|| invalid(code_of(name), name, "a number between 0.0 and 1.0", v))?,
                        _ => return Err(invalid(code_of(name), name, "a number between 0.0 and 1.0", v)),
                    }
                }
                "matchingStrategy" => {
                    p.matching_strategy = match v {
                        Value::Null => None,
                        Value::String(s) if s == "last" => Some(MatchingStrategy::Last),
                        Value::String(s) if s == "all" => Some(MatchingStrategy::All),
                        Value::String(s) if s == "frequency" => Some(MatchingStrategy::Frequency),
                        _ => {
                            return Err(MeiliError::bad_request(
                                "invalid_search_matching_strategy",
                                format!("Unknown value `{}` at `.matchingStrategy`: expected one of `last`, `all`, `frequency`", shorten(&v.to_string())),
                            ))
                        }
                    }
                }
                "attributesToSearchOn" => {
                    if let Some(list) = strings_of(name, v)? {
                        if list.iter().any(|a| a != "*") {
                            return Err(MeiliError::bad_request(
                                code_of(name),
                                "deriver searches the index's `default_search_fields` (see its settings' `searchableAttributes`); restrict a word to one attribute in `q` instead: `title:word`",
                            ));
                        }
                    }
                }
                "distinct" => p.distinct = string_of(name, v)?,
                "vector" | "hybrid" | "locales" => {
                    if !v.is_null() {
                        return Err(MeiliError::bad_request(code_of(name), format!("`{name}` is not supported by deriver's Meilisearch-compatible API.")));
                    }
                }
                "minLsn" => p.min_lsn = string_of(name, v)?,
                "timeoutMs" => p.timeout_ms = usize_of(name, v)?.map(|u| u as u64),
                other if extra.contains(&other) => {}
                other => {
                    let expected: Vec<String> = SEARCH_FIELDS
                        .iter()
                        .filter(|f| !["indexUid", "federationOptions"].contains(*f) || extra.contains(*f))
                        .map(|f| format!("`{f}`"))
                        .collect();
                    return Err(MeiliError::bad_request("bad_request", format!("Unknown field `{}`: expected one of {}", shorten(other), expected.join(", "))));
                }
            }
        }
        Ok(p)
    }

    /// A `GET …/search` query string: lists are comma-separated, numbers and booleans as text.
    pub fn from_query(pairs: &[(String, String)]) -> MeiliResult<SearchParams> {
        let mut obj = Map::new();
        for (k, v) in pairs {
            let value = match k.as_str() {
                "sort" | "facets" | "attributesToRetrieve" | "attributesToHighlight" | "attributesToCrop" | "attributesToSearchOn" | "locales" => {
                    Value::Array(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect())
                }
                "limit" | "offset" | "page" | "hitsPerPage" | "cropLength" | "timeoutMs" => match v.trim().parse::<u64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        return Err(MeiliError::bad_request(
                            code_of(k),
                            format!("Invalid value in parameter `{k}`: could not parse `{}` as a positive integer", shorten(v)),
                        ));
                    }
                },
                "rankingScoreThreshold" => match v.trim().parse::<f64>() {
                    Ok(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
                    Err(_) => {
                        return Err(MeiliError::bad_request(
                            code_of(k),
                            format!("Invalid value in parameter `{k}`: could not parse `{}` as a number", shorten(v)),
                        ))
                    }
                },
                "showMatchesPosition" | "showRankingScore" | "showRankingScoreDetails" | "retrieveVectors" => match v.trim() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        return Err(MeiliError::bad_request(
                            code_of(k),
                            format!("Invalid value in parameter `{k}`: could not parse `{}` as a boolean", shorten(v)),
                        ))
                    }
                },
                _ => Value::String(v.clone()),
            };
            obj.insert(k.clone(), value);
        }
        SearchParams::from_object(&obj, &[])
    }

    /// `hitsPerPage` or `page` given: the page mode (`totalHits`, `totalPages`).
    pub fn paged(&self) -> bool {
        self.hits_per_page.is_some() || self.page.is_some()
    }

    /// (offset, limit) in the result list, clamped to [`MAX_TOTAL_HITS`].
    pub fn window(&self) -> (usize, usize) {
        let (offset, limit) = if self.paged() {
            let per = self.hits_per_page.unwrap_or(DEFAULT_LIMIT);
            let page = self.page.unwrap_or(1);
            // Page 0 asks for the totals only.
            if page == 0 {
                (0, 0)
            } else {
                ((page - 1).saturating_mul(per), per)
            }
        } else {
            (self.offset.unwrap_or(0), self.limit.unwrap_or(DEFAULT_LIMIT))
        };
        let offset = offset.min(MAX_TOTAL_HITS);
        (offset, limit.min(MAX_TOTAL_HITS - offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_parameters_and_windows() {
        let p = SearchParams::from_object(&obj(json!({ "q": "x", "limit": 5, "offset": 2, "facets": ["a"], "showRankingScore": true })), &[]).unwrap();
        assert_eq!((p.q.as_deref(), p.window(), p.paged(), p.show_ranking_score), (Some("x"), (2, 5), false, true));
        let p = SearchParams::from_object(&obj(json!({ "distinct": "family" })), &[]).unwrap();
        assert_eq!(p.distinct.as_deref(), Some("family"));
        let p = SearchParams::from_object(&obj(json!({ "hitsPerPage": 10, "page": 3 })), &[]).unwrap();
        assert_eq!((p.window(), p.paged()), ((20, 10), true));
        let p = SearchParams::from_object(&obj(json!({ "page": 0 })), &[]).unwrap();
        assert_eq!(p.window(), (0, 0));
        let p = SearchParams::from_object(&obj(json!({ "offset": 990, "limit": 50 })), &[]).unwrap();
        assert_eq!(p.window(), (990, 10), "clamped to maxTotalHits");
        let p = SearchParams::from_object(&obj(json!({ "offset": 5000 })), &[]).unwrap();
        assert_eq!(p.window(), (1000, 0));
        let p = SearchParams::from_query(&[("q".into(), "a b".into()), ("sort".into(), "rate:asc, year:desc".into()), ("limit".into(), "3".into())]).unwrap();
        assert_eq!((p.sort.unwrap(), p.limit), (vec!["rate:asc".to_string(), "year:desc".to_string()], Some(3)));
    }

    #[test]
    fn refuses_with_the_parameter_code() {
        for (v, code) in [
            (json!({ "limit": -1 }), "invalid_search_limit"),
            (json!({ "limit": "3" }), "invalid_search_limit"),
            (json!({ "q": 3 }), "invalid_search_q"),
            (json!({ "sort": "rate:asc" }), "invalid_search_sort"),
            (json!({ "facets": [1] }), "invalid_search_facets"),
            (json!({ "matchingStrategy": "some" }), "invalid_search_matching_strategy"),
            (json!({ "showMatchesPosition": "yes" }), "invalid_search_show_matches_position"),
            (json!({ "rankingScoreThreshold": 2 }), "invalid_search_ranking_score_threshold"),
            (json!({ "distinct": 3 }), "invalid_search_distinct"),
            (json!({ "hybrid": { "embedder": "x" } }), "invalid_search_hybrid_query"),
            (json!({ "nope": 1 }), "bad_request"),
            (json!({ "indexUid": "films" }), "bad_request"),
        ] {
            let e = SearchParams::from_object(&obj(v.clone()), &[]).expect_err(&v.to_string());
            assert_eq!(e.code, code, "{v}");
        }
        assert!(SearchParams::from_object(&obj(json!({ "indexUid": "films" })), &["indexUid"]).is_ok());
        let e = SearchParams::from_object(&obj(json!({ "nope": 1 })), &[]).unwrap_err();
        assert!(e.message.starts_with("Unknown field `nope`: expected one of `q`"), "{}", e.message);
        assert_eq!(SearchParams::from_query(&[("limit".into(), "x".into())]).unwrap_err().code, "invalid_search_limit");
    }
}
