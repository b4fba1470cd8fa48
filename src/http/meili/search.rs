//! A Meilisearch search on a deriver index: the parameters become deriver's search request
//! (`src/http/search.rs` plans and runs it), the answer becomes Meilisearch's response
//! (`hits` with `_formatted`, `_matchesPosition`, `_rankingScore`; `estimatedTotalHits` or
//! `totalHits`/`totalPages`; `facetDistribution`, `facetStats`). Everything here is blocking.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use serde_json::{json, Map, Value};
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::{AggContextParams, AggregationCollector, AggregationLimitsGuard};
use tantivy::schema::Field;
use tantivy::Term;

use super::error::{Context, MeiliError, MeiliResult};
use super::filter as mfilter;
use super::format::{self, Formatting, Token};
use super::params::{
    MatchingStrategy, SearchParams, DEFAULT_CROP_LENGTH, DEFAULT_CROP_MARKER, DEFAULT_POST_TAG, DEFAULT_PRE_TAG, MAX_TOTAL_HITS, MAX_VALUES_PER_FACET,
};
use crate::http::error::shorten;
use crate::http::filter::filterable;
use crate::http::ranking::IdOrdCache;
use crate::http::search::{FacetRequest, Plan, SearchRequest, SearchResponse};
use crate::pipeline::{SearchField, SearchType};
use crate::sink::tantivy::SearchIndex;

/// Tokens of one attribute value beyond this many are not highlighted.
const MAX_FORMAT_TOKENS: usize = 10_000;

fn decl<'a>(index: &'a SearchIndex, name: &str) -> Option<&'a SearchField> {
    index.target.fields.iter().find(|f| f.name == name)
}

fn names(fields: impl Iterator<Item = String>) -> String {
    fields.map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
}

pub fn filterable_attributes(index: &SearchIndex) -> Vec<String> {
    index.target.fields.iter().filter(|f| filterable(f)).map(|f| f.name.clone()).collect()
}

pub fn sortable_attributes(index: &SearchIndex) -> Vec<String> {
    index.target.fields.iter().filter(|f| f.sortable).map(|f| f.name.clone()).collect()
}

/// A keyword field whose values deriver counts.
fn counted_facet(f: &SearchField) -> bool {
    f.ty == SearchType::Keyword && (f.facet || f.filterable || f.sortable)
}

/// A numeric field with a column (filterable or sortable): its `facetStats`.
fn numeric_facet(f: &SearchField) -> bool {
    matches!(f.ty, SearchType::I64 | SearchType::U64 | SearchType::F64) && (f.filterable || f.sortable)
}

/// A search checked against its index, ready to run.
pub struct Prepared {
    pub index: Arc<SearchIndex>,
    params: SearchParams,
    filter: Option<Value>,
    offset: usize,
    limit: usize,
    counted: Vec<String>,
    stats: Vec<String>,
    highlight: Vec<String>,
    crop: Vec<(String, usize)>,
    plan: Plan,
}

/// Checks the attributes a filter names, with Meilisearch's message.
fn check_filter_attributes(index: &SearchIndex, filter: &Value, code: &'static str) -> MeiliResult<()> {
    let mut attrs = Vec::new();
    mfilter::attributes(filter, &mut attrs);
    for a in attrs {
        if !decl(index, &a).is_some_and(filterable) {
            let available = filterable_attributes(index);
            let tail = if available.is_empty() {
                "This index does not have configured filterable attributes.".to_string()
            } else {
                format!("Available filterable attributes are: {}.", names(available.into_iter()))
            };
            return Err(MeiliError::bad_request(code, format!("Attribute `{}` is not filterable. {tail}", shorten(&a))));
        }
    }
    Ok(())
}

/// The Meilisearch `filter` (and a tenant token's filter) as deriver's filter.
pub fn combined_filter(index: &SearchIndex, filter: Option<&Value>, tenant: Option<&Value>, code: &'static str) -> MeiliResult<Option<Value>> {
    let own = match filter {
        Some(f) => mfilter::translate(f).map_err(|mut e| {
            e.code = code;
            e
        })?,
        None => None,
    };
    let tenant = match tenant {
        Some(f) => mfilter::translate(f).map_err(|e| MeiliError::invalid_tenant_token(&format!("Its search rules hold an invalid filter: {}", e.message)))?,
        None => None,
    };
    if let Some(f) = &own {
        check_filter_attributes(index, f, code)?;
    }
    if let Some(f) = &tenant {
        check_filter_attributes(index, f, code)
            .map_err(|e| MeiliError::invalid_tenant_token(&format!("Its search rules' filter is not valid here: {}", e.message)))?;
    }
    Ok(match (own, tenant) {
        (Some(a), Some(b)) => Some(json!({ "and": [a, b] })),
        (a, b) => a.or(b),
    })
}

fn request(q: Option<String>, filter: Option<Value>, params: &SearchParams, offset: usize, limit: usize, facets: &[String]) -> SearchRequest {
    let facets: IndexMap<String, FacetRequest> = facets.iter().map(|f| (f.clone(), FacetRequest { size: Some(crate::http::search::MAX_FACET_SIZE) })).collect();
    SearchRequest {
        q,
        filter,
        sort: params.sort.clone(),
        limit: Some(limit),
        offset: Some(offset),
        facets: (!facets.is_empty()).then_some(facets),
        distinct: params.distinct.clone(),
        ..SearchRequest::default()
    }
}

impl Prepared {
    pub fn new(index: Arc<SearchIndex>, params: SearchParams, tenant_filter: Option<&Value>) -> MeiliResult<Prepared> {
        let filter = combined_filter(&index, params.filter.as_ref(), tenant_filter, "invalid_search_filter")?;
        if let Some(name) = &params.distinct {
            if !decl(&index, name).is_some_and(crate::pipeline::check::relevance::distinct_capable) {
                let available = index.target.fields.iter().filter(|f| crate::pipeline::check::relevance::distinct_capable(f)).map(|f| f.name.clone());
                return Err(MeiliError::bad_request(
                    "invalid_search_distinct",
                    format!(
                        "Attribute `{}` cannot be used as distinct attribute: deriver needs a keyword attribute declared `facet`, `filterable` or `sortable`. Available distinct attributes are: {}.",
                        shorten(name),
                        names(available)
                    ),
                ));
            }
        }
        if let Some(sort) = &params.sort {
            for item in sort {
                let name = item.rsplit_once(':').map_or(item.as_str(), |(n, _)| n).trim();
                if name != "_score" && !decl(&index, name).is_some_and(|f| f.sortable) {
                    let available = sortable_attributes(&index);
                    let tail = if available.is_empty() {
                        "This index does not have configured sortable attributes.".to_string()
                    } else {
                        format!("Available sortable attributes are: {}.", names(available.into_iter()))
                    };
                    return Err(MeiliError::bad_request("invalid_search_sort", format!("Attribute `{}` is not sortable. {tail}", shorten(name))));
                }
            }
        }
        let (mut counted, mut stats) = (Vec::new(), Vec::new());
        for name in params.facets.iter().flatten() {
            if name == "*" {
                counted.extend(index.target.fields.iter().filter(|f| counted_facet(f)).map(|f| f.name.clone()));
                stats.extend(index.target.fields.iter().filter(|f| numeric_facet(f)).map(|f| f.name.clone()));
                continue;
            }
            match decl(&index, name) {
                Some(f) if counted_facet(f) => counted.push(f.name.clone()),
                Some(f) if numeric_facet(f) => stats.push(f.name.clone()),
                _ => {
                    let available: Vec<String> = index.target.fields.iter().filter(|f| counted_facet(f) || numeric_facet(f)).map(|f| f.name.clone()).collect();
                    return Err(MeiliError::bad_request(
                        "invalid_search_facets",
                        format!(
                            "Invalid facet distribution, attribute `{}` is not filterable. The available filterable attributes are {}.",
                            shorten(name),
                            names(available.into_iter())
                        ),
                    ));
                }
            }
        }
        counted.dedup();
        stats.dedup();
        let stored_text = |f: &&SearchField| f.ty == SearchType::Text;
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for name in list.iter().flatten() {
                let name = name.split_once(':').map_or(name.as_str(), |(n, _)| n);
                if name == "*" {
                    out.extend(index.target.fields.iter().filter(stored_text).map(|f| f.name.clone()));
                } else {
                    out.push(name.to_string());
                }
            }
            out
        };
        let highlight = expand(&params.attributes_to_highlight);
        let mut crop = Vec::new();
        for item in params.attributes_to_crop.iter().flatten() {
            let (name, len) = match item.split_once(':') {
                Some((n, l)) => (
                    n,
                    l.trim().parse::<usize>().map_err(|_| {
                        MeiliError::bad_request(
                            "invalid_search_attributes_to_crop",
                            format!("`{}`: the crop length after `:` must be a whole number", shorten(item)),
                        )
                    })?,
                ),
                None => (item.as_str(), params.crop_length.unwrap_or(DEFAULT_CROP_LENGTH)),
            };
            if name == "*" {
                crop.extend(index.target.fields.iter().filter(stored_text).map(|f| (f.name.clone(), len)));
            } else {
                crop.push((name.to_string(), len));
            }
        }
        let (offset, limit) = params.window();
        let plan = Plan::new(request(params.q.clone(), filter.clone(), &params, offset, limit, &counted), &index)
            .map_err(|e| MeiliError::from_api(e, Context::Search))?;
        Ok(Prepared { index, params, filter, offset, limit, counted, stats, highlight, crop, plan })
    }

    /// Runs the search (blocking): Meilisearch's response.
    pub fn run(&self, cache: &IdOrdCache) -> MeiliResult<Value> {
        let started = Instant::now();
        let (resp, retried) = self.run_plan(cache)?;
        let plan = retried.as_ref().unwrap_or(&self.plan);
        let searcher = self.index.reader.searcher();
        let terms: HashSet<Term> = if self.wants_terms() { plan.highlight_terms(&self.index, &searcher).into_iter().collect() } else { HashSet::new() };
        let has_words = plan.has_words();
        let mut hits = Vec::with_capacity(resp.hits.len());
        for h in resp.hits {
            let score = ranking_score(has_words, h.score);
            if self.params.ranking_score_threshold.is_some_and(|t| score < t) {
                continue;
            }
            hits.push(Value::Object(self.hit(h.doc, score, &terms)));
        }
        let total = usize::try_from(resp.total.value).unwrap_or(usize::MAX).min(MAX_TOTAL_HITS);
        let mut out = Map::new();
        out.insert("hits".into(), Value::Array(hits));
        out.insert("query".into(), Value::String(self.params.q.clone().unwrap_or_default()));
        out.insert("processingTimeMs".into(), Value::from(started.elapsed().as_millis() as u64));
        if self.params.paged() {
            let per = self.params.hits_per_page.unwrap_or(super::params::DEFAULT_LIMIT);
            out.insert("hitsPerPage".into(), Value::from(per));
            out.insert("page".into(), Value::from(self.params.page.unwrap_or(1)));
            out.insert("totalPages".into(), Value::from(if per == 0 { 0 } else { total.div_ceil(per) }));
            out.insert("totalHits".into(), Value::from(total));
        } else {
            out.insert("limit".into(), Value::from(self.params.limit.unwrap_or(super::params::DEFAULT_LIMIT)));
            out.insert("offset".into(), Value::from(self.params.offset.unwrap_or(0)));
            out.insert("estimatedTotalHits".into(), Value::from(total));
        }
        if self.params.facets.is_some() {
            let mut dist = Map::new();
            for (name, counts) in resp.facets {
                let Value::Object(counts) = counts else { continue };
                let mut values: Vec<(String, Value)> = counts.into_iter().collect();
                values.sort_by(|a, b| a.0.cmp(&b.0));
                values.truncate(MAX_VALUES_PER_FACET);
                dist.insert(name, Value::Object(values.into_iter().collect()));
            }
            out.insert("facetDistribution".into(), Value::Object(dist));
            out.insert("facetStats".into(), Value::Object(self.facet_stats(plan)?));
        }
        Ok(Value::Object(out))
    }

    /// Runs the plan; with matching strategy `last` (the default) or `frequency`, a query whose
    /// words match nothing together is retried without its last words, one at a time.
    /// Gives the plan that answered when it is not the prepared one.
    fn run_plan(&self, cache: &IdOrdCache) -> MeiliResult<(SearchResponse, Option<Plan>)> {
        let resp = self.plan.run(&self.index, cache, None).map_err(|e| MeiliError::from_api(e, Context::Search))?;
        let words: Vec<&str> = self.params.q.as_deref().unwrap_or("").split_whitespace().collect();
        if resp.total.value > 0 || words.len() < 2 || self.params.matching_strategy == Some(MatchingStrategy::All) {
            return Ok((resp, None));
        }
        for keep in (1..words.len()).rev() {
            let q = words[..keep].join(" ");
            let req = request(Some(q), self.filter.clone(), &self.params, self.offset, self.limit, &self.counted);
            let plan = Plan::new(req, &self.index).map_err(|e| MeiliError::from_api(e, Context::Search))?;
            let resp = plan.run(&self.index, cache, None).map_err(|e| MeiliError::from_api(e, Context::Search))?;
            if resp.total.value > 0 || keep == 1 {
                return Ok((resp, Some(plan)));
            }
        }
        unreachable!("the loop returns at keep == 1")
    }

    fn wants_terms(&self) -> bool {
        !self.highlight.is_empty() || !self.crop.is_empty() || self.params.show_matches_position
    }

    fn hit(&self, doc: Value, score: f64, terms: &HashSet<Term>) -> Map<String, Value> {
        let Value::Object(source) = doc else { return Map::new() };
        let retrieved: Map<String, Value> = match &self.params.attributes_to_retrieve {
            Some(list) if !list.iter().any(|a| a == "*") => list.iter().filter_map(|a| source.get(a).map(|v| (a.clone(), v.clone()))).collect(),
            _ => source.clone(),
        };
        let mut out = retrieved.clone();
        if !self.highlight.is_empty() || !self.crop.is_empty() {
            let pre = self.params.highlight_pre_tag.as_deref().unwrap_or(DEFAULT_PRE_TAG);
            let post = self.params.highlight_post_tag.as_deref().unwrap_or(DEFAULT_POST_TAG);
            let marker = self.params.crop_marker.as_deref().unwrap_or(DEFAULT_CROP_MARKER);
            let mut formatted = Map::new();
            for (name, v) in &retrieved {
                let f = Formatting {
                    tags: self.highlight.contains(name).then_some((pre, post)),
                    crop: self.crop.iter().find(|(n, _)| n == name).map(|(_, len)| (*len, marker)),
                };
                let value = match self.text_field(name) {
                    Some(handle) if f.tags.is_some() || f.crop.is_some() => {
                        map_strings(v, &mut |s| Value::String(format::format_text(s, &self.tokens(handle, s, terms), &f)))
                    }
                    _ => format::stringify(v),
                };
                formatted.insert(name.clone(), value);
            }
            out.insert("_formatted".into(), Value::Object(formatted));
        }
        if self.params.show_matches_position {
            let mut positions = Map::new();
            for (name, v) in &source {
                let Some(handle) = self.text_field(name) else { continue };
                let list: Vec<Value> = match v {
                    Value::String(s) => format::match_positions(&self.tokens(handle, s, terms), None),
                    Value::Array(items) => items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| item.as_str().map(|s| format::match_positions(&self.tokens(handle, s, terms), Some(i))))
                        .flatten()
                        .collect(),
                    _ => Vec::new(),
                };
                if !list.is_empty() {
                    positions.insert(name.clone(), Value::Array(list));
                }
            }
            out.insert("_matchesPosition".into(), Value::Object(positions));
        }
        if self.params.show_ranking_score {
            out.insert("_rankingScore".into(), json!(score));
        }
        out
    }

    /// The index handle of a text attribute (the ones whose words match and are highlighted).
    fn text_field(&self, name: &str) -> Option<Field> {
        decl(&self.index, name).filter(|f| f.ty == SearchType::Text).and_then(|_| self.index.schema.get_field(name).ok())
    }

    /// The tokens of `text` as the field's analyzer cuts them, marked where a query term matched.
    fn tokens(&self, handle: Field, text: &str, terms: &HashSet<Term>) -> Vec<Token> {
        let Ok(mut analyzer) = self.index.index.tokenizer_for_field(handle) else { return Vec::new() };
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() && out.len() < MAX_FORMAT_TOKENS {
            let t = stream.token();
            if t.offset_to > t.offset_from && text.is_char_boundary(t.offset_from) && text.is_char_boundary(t.offset_to) && t.offset_to <= text.len() {
                out.push(Token { from: t.offset_from, to: t.offset_to, matched: terms.contains(&Term::from_field_text(handle, &t.text)) });
            }
        }
        out
    }

    /// `facetStats`: min and max of the numeric facets over the matching documents.
    fn facet_stats(&self, plan: &Plan) -> MeiliResult<Map<String, Value>> {
        let mut out = Map::new();
        if self.stats.is_empty() {
            return Ok(out);
        }
        let aggs: Map<String, Value> = self.stats.iter().map(|f| (f.clone(), json!({ "stats": { "field": f } }))).collect();
        let aggs: Aggregations = serde_json::from_value(Value::Object(aggs)).map_err(|e| MeiliError::internal(format!("facet stats: {e}")))?;
        let collector = AggregationCollector::from_aggs(aggs, AggContextParams::new(AggregationLimitsGuard::default(), self.index.index.tokenizers().clone()));
        let query = plan.query(&self.index).map_err(|e| MeiliError::from_api(e, Context::Search))?;
        let result = self.index.reader.searcher().search(&*query, &collector)?;
        let result = serde_json::to_value(result).map_err(|e| MeiliError::internal(format!("facet stats: {e}")))?;
        for f in &self.stats {
            let (Some(min), Some(max)) = (result[f]["min"].as_f64(), result[f]["max"].as_f64()) else { continue };
            out.insert(f.clone(), json!({ "min": min, "max": max }));
        }
        Ok(out)
    }
}

/// Applies `f` to every string of a value (lists member by member); other values as strings.
fn map_strings(v: &Value, f: &mut dyn FnMut(&str) -> Value) -> Value {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => Value::Array(items.iter().map(|i| map_strings(i, f)).collect()),
        other => format::stringify(other),
    }
}

/// Meilisearch's `_rankingScore` is in [0, 1]: 1 for a search without words (everything matches
/// fully); otherwise deriver's BM25 score `s` mapped monotonically as `s / (1 + s)`, so that
/// a better hit always has the higher score and scores of different indexes can be merged.
pub fn ranking_score(has_words: bool, score: f32) -> f64 {
    if !has_words {
        return 1.0;
    }
    let s = f64::from(score.max(0.0));
    ((s / (1.0 + s)) * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::search::tests::films;

    fn search(index: &Arc<SearchIndex>, v: Value) -> MeiliResult<Value> {
        let params = SearchParams::from_object(v.as_object().unwrap(), &[])?;
        Prepared::new(index.clone(), params, None)?.run(&IdOrdCache::default())
    }

    #[test]
    fn answers_meilisearch_shapes() {
        let idx = Arc::new(films(30));
        let r = search(&idx, json!({ "q": "robot", "limit": 3, "filter": "rating = G", "facets": ["rating", "rate"], "showRankingScore": true })).unwrap();
        assert_eq!(r["estimatedTotalHits"], 10);
        assert_eq!((r["limit"].as_u64(), r["offset"].as_u64(), r["query"].as_str()), (Some(3), Some(0), Some("robot")));
        let hits = r["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.iter().all(|h| h["rating"] == "G" && h["_rankingScore"].as_f64().unwrap() > 0.0 && h.get("_formatted").is_none()));
        assert_eq!(r["facetDistribution"], json!({ "rating": { "G": 10 } }));
        assert_eq!(r["facetStats"], json!({ "rate": { "min": 0.99, "max": 0.99 } }));
        // Pages.
        let r = search(&idx, json!({ "hitsPerPage": 7, "page": 5 })).unwrap();
        assert_eq!((r["totalHits"].as_u64(), r["totalPages"].as_u64(), r["hits"].as_array().unwrap().len()), (Some(30), Some(5), 2));
        assert!(r.get("estimatedTotalHits").is_none());
    }

    #[test]
    fn formats_highlights_crops_and_positions() {
        let idx = Arc::new(films(3));
        let r = search(
            &idx,
            json!({ "q": "dinosaurs", "attributesToHighlight": ["*"], "attributesToCrop": ["description:3"], "showMatchesPosition": true,
                    "attributesToRetrieve": ["title", "description", "rate"], "highlightPreTag": "[", "highlightPostTag": "]" }),
        )
        .unwrap();
        let hit = &r["hits"][0];
        assert_eq!(hit.as_object().unwrap().keys().filter(|k| !k.starts_with('_')).count(), 3);
        assert_eq!(hit["_formatted"]["description"], "…robots> & [dinosaurs] number…");
        assert!(hit["_formatted"]["title"].as_str().unwrap().starts_with("Film "), "{hit}");
        assert!(hit["_formatted"]["rate"].is_string(), "numbers as strings");
        let pos = &hit["_matchesPosition"]["description"][0];
        let d = hit["description"].as_str().unwrap();
        let (s, l) = (pos["start"].as_u64().unwrap() as usize, pos["length"].as_u64().unwrap() as usize);
        assert_eq!(&d[s..s + l], "dinosaurs");
    }

    #[test]
    fn matching_strategy_last_drops_words() {
        let idx = Arc::new(films(6));
        assert_eq!(search(&idx, json!({ "q": "robot zzzz" })).unwrap()["estimatedTotalHits"], 6);
        assert_eq!(search(&idx, json!({ "q": "robot zzzz", "matchingStrategy": "all" })).unwrap()["estimatedTotalHits"], 0);
    }

    #[test]
    fn refuses_with_meilisearch_codes() {
        let idx = Arc::new(films(3));
        for (v, code, needle) in [
            (json!({ "filter": "title = x" }), "invalid_search_filter", "Attribute `title` is not filterable. Available filterable attributes are: `rating`"),
            (json!({ "filter": "rate = abc" }), "invalid_search_filter", "does not fit"),
            (json!({ "filter": "rate =" }), "invalid_search_filter", "Was expecting a value"),
            (json!({ "sort": ["title:asc"] }), "invalid_search_sort", "Attribute `title` is not sortable. Available sortable attributes are: `rate`, `year`."),
            (json!({ "sort": ["rate:up"] }), "invalid_search_sort", "asc"),
            (json!({ "facets": ["title"] }), "invalid_search_facets", "attribute `title` is not filterable"),
        ] {
            let e = search(&idx, v.clone()).expect_err(&v.to_string());
            assert_eq!(e.code, code, "{v}");
            assert!(e.message.contains(needle), "{v}: {}", e.message);
        }
    }
}
