//! `POST /v1/indexes/{index}/search` and `GET /v1/indexes/{index}/documents/{id}`: the request
//! and response shapes of `../shared/spec/http-api.md` and their execution on a live index
//! generation. Everything here is blocking (tantivy): the handlers run it on
//! `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tantivy::collector::TopDocs;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Value as _};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Searcher, TantivyDocument, Term};

use super::error::{shorten, ApiError, ApiResult};
use super::filter;
use super::query::{self, Clause, ParsedQuery};
use super::ranking::{Cursor, IdOrdCache, RankCollector, SortSpec};
use crate::pipeline::relevance::PrefixSearch;
use crate::pipeline::{SearchField, SearchType};
use crate::sink::tantivy::schema::{ID_FIELD, SOURCE_FIELD};
use crate::sink::tantivy::SearchIndex;
use crate::source::Lsn;

/// `offset + limit` may not exceed this; deeper pages use `cursor`.
pub const MAX_WINDOW: usize = 1000;
pub const DEFAULT_LIMIT: usize = 20;
/// A search sorted by relevance alone (no facets, no field sort) counts its matches exactly up to
/// this many; beyond, `total` is `{"value": 10000, "relation": "gte"}` (as in Elasticsearch).
/// Counting every match of a frequent word costs more than finding its best hits.
pub const TOTAL_EXACT_UP_TO: u64 = 10_000;
pub const DEFAULT_FACET_SIZE: usize = 10;
pub const MAX_FACET_SIZE: usize = 1000;
pub const MAX_FACETS: usize = 16;
pub const DEFAULT_SNIPPET_CHARS: usize = 150;
pub const MAX_SNIPPET_CHARS: usize = 2000;
const MAX_TAG_CHARS: usize = 64;
/// Tokens of one term beyond this are ignored.
const MAX_TOKENS_PER_TERM: usize = 32;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default)]
    pub q: Option<String>,
    /// `{"field", "eq"|"in"|"gt"|"gte"|"lt"|"lte"|"exists": …}`, `{"and"|"or": [...]}`, `{"not": …}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    #[serde(default)]
    pub sort: Option<Vec<String>>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub facets: Option<IndexMap<String, FacetRequest>>,
    #[serde(default)]
    pub highlight: Option<HighlightRequest>,
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    #[serde(default)]
    pub min_lsn: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// At most one hit per value of this keyword field (default: the target's `distinct`).
    #[serde(default)]
    pub distinct: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FacetRequest {
    #[serde(default)]
    pub size: Option<usize>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HighlightRequest {
    /// Stored text fields; default: the fields declared `highlight: true`.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    #[serde(default)]
    pub pre_tag: Option<String>,
    #[serde(default)]
    pub post_tag: Option<String>,
    /// Longest snippet, in characters (default 150).
    #[serde(default)]
    pub max_chars: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<Hit>,
    pub total: Total,
    /// Per facet, per value: the number of matching documents.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, u64>>)]
    pub facets: Map<String, Value>,
    pub next_cursor: Option<String>,
    pub took_ms: f64,
    #[schema(value_type = Option<String>)]
    pub applied_lsn: Option<Lsn>,
    pub generation: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    #[schema(value_type = Object)]
    pub doc: Value,
    #[schema(value_type = BTreeMap<String, String>)]
    pub highlights: Map<String, Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Total {
    pub value: u64,
    /// `eq`, or `gte` when counting stopped at 10,000.
    #[schema(value_type = String, pattern = "^(eq|gte)$")]
    pub relation: &'static str,
}

/// A request checked against its index, ready to run.
pub struct Plan {
    parsed: ParsedQuery,
    filter: Option<filter::Filter>,
    sort: Arc<SortSpec>,
    cursor: Option<Arc<Cursor>>,
    limit: usize,
    offset: usize,
    facets: Vec<(String, usize)>,
    highlight: Option<Highlight>,
    fields: Option<Vec<String>>,
    distinct: Option<String>,
}

struct Highlight {
    fields: Vec<String>,
    pre: String,
    post: String,
    max_chars: usize,
}

pub(super) fn field<'a>(index: &'a SearchIndex, name: &str) -> Option<&'a SearchField> {
    index.target.fields.iter().find(|f| f.name == name)
}

impl Plan {
    /// Checks a request against the index (every 4xx is decided here).
    pub fn new(req: SearchRequest, index: &SearchIndex) -> ApiResult<Plan> {
        let parsed = query::parse(req.q.as_deref().unwrap_or(""), |name| field(index, name).is_some());
        let parsed = super::relevance::apply(parsed, &index.target.relevance);
        let distinct = match req.distinct {
            None => index.target.relevance.distinct.clone(),
            Some(name) => {
                if !field(index, &name).is_some_and(crate::pipeline::check::relevance::distinct_capable) {
                    return Err(ApiError::bad_request(
                        "invalid_distinct",
                        format!("`{}` cannot be distinct: it must be a keyword field declared `facet`, `filterable` or `sortable`", shorten(&name)),
                    )
                    .with_field(&name));
                }
                Some(name)
            }
        };
        let filter = match &req.filter {
            None | Some(Value::Null) => None,
            Some(v) => {
                let f = filter::parse(v)?;
                // Compile once here so that field and type errors are reported before searching.
                filter::compile(&f, index)?;
                Some(f)
            }
        };
        let sort = Arc::new(SortSpec::parse(req.sort.as_deref(), &index.target)?);
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = req.offset.unwrap_or(0);
        if offset.saturating_add(limit) > MAX_WINDOW {
            return Err(ApiError::bad_request(
                "invalid_paging",
                format!("offset + limit must be at most {MAX_WINDOW} (got {offset} + {limit}); page deeper with `cursor` (`next_cursor` of the previous page)"),
            ));
        }
        let cursor = match req.cursor.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Arc::new(Cursor::decode(text, &sort)?)),
        };
        let mut facets = Vec::new();
        if let Some(req_facets) = req.facets {
            if req_facets.len() > MAX_FACETS {
                return Err(ApiError::bad_request("invalid_facet", format!("at most {MAX_FACETS} facets per request")));
            }
            for (name, spec) in req_facets {
                let ok = field(index, &name).is_some_and(|f| f.ty == SearchType::Keyword && (f.facet || f.filterable || f.sortable));
                if !ok {
                    return Err(ApiError::bad_request(
                        "invalid_facet",
                        format!("`{}` cannot be faceted: facets count the values of keyword fields declared `facet: true`", shorten(&name)),
                    )
                    .with_field(&name));
                }
                facets.push((name, spec.size.unwrap_or(DEFAULT_FACET_SIZE).min(MAX_FACET_SIZE)));
            }
        }
        let highlight = match req.highlight {
            None => None,
            Some(h) => {
                let fields = match h.fields {
                    Some(list) => {
                        for name in &list {
                            let ok = field(index, name).is_some_and(|f| f.ty == SearchType::Text && f.stored);
                            if !ok {
                                return Err(ApiError::bad_request(
                                    "invalid_highlight",
                                    format!("`{}` cannot be highlighted: only text fields declared `stored: true` can", shorten(name)),
                                )
                                .with_field(name));
                            }
                        }
                        list
                    }
                    None => index.target.fields.iter().filter(|f| f.highlight && f.ty == SearchType::Text && f.stored).map(|f| f.name.clone()).collect(),
                };
                let pre = h.pre_tag.unwrap_or_else(|| "<mark>".into());
                let post = h.post_tag.unwrap_or_else(|| "</mark>".into());
                if pre.chars().count() > MAX_TAG_CHARS || post.chars().count() > MAX_TAG_CHARS {
                    return Err(ApiError::bad_request("invalid_highlight", format!("`pre_tag` and `post_tag` are at most {MAX_TAG_CHARS} characters")));
                }
                let max_chars = h.max_chars.unwrap_or(DEFAULT_SNIPPET_CHARS).clamp(1, MAX_SNIPPET_CHARS);
                Some(Highlight { fields, pre, post, max_chars })
            }
        };
        Ok(Plan { parsed, filter, sort, cursor, limit, offset, facets, highlight, fields: req.fields, distinct })
    }

    /// The tantivy query of `q` and `filter` (what [`Plan::run`] searches; also for aggregations
    /// over the same matches, e.g. the facet stats of the Meilisearch-compatible API).
    pub fn query(&self, index: &SearchIndex) -> ApiResult<Box<dyn Query>> {
        let text = compile_text(&self.parsed, index, None).unwrap_or_else(|| Box::new(AllQuery));
        // Without a filter the text query runs as it is (not inside a boolean of one clause,
        // which would hide its structure from tantivy's pruning scorers).
        Ok(match &self.filter {
            None => text,
            Some(f) => Box::new(BooleanQuery::new(vec![(Occur::Must, text), (Occur::Must, Box::new(ConstScoreQuery::new(filter::compile(f, index)?, 0.0)))])),
        })
    }

    /// Whether `q` holds any word (a search without words matches everything equally).
    pub fn has_words(&self) -> bool {
        !self.parsed.clauses.is_empty()
    }

    /// The indexed terms the positive part of `q` matches in `searcher` (fuzzy terms expanded),
    /// for highlighting outside [`Plan::run`].
    pub fn highlight_terms(&self, index: &SearchIndex, searcher: &Searcher) -> Vec<Term> {
        let mut out = Vec::new();
        if let Some(q) = compile_text(&self.parsed, index, Some(searcher)) {
            q.query_terms(&mut |t, _| out.push(t.clone()));
        }
        out
    }

    /// Runs the search (blocking).
    pub fn run(&self, index: &SearchIndex, cache: &IdOrdCache, applied_lsn: Option<Lsn>) -> ApiResult<SearchResponse> {
        let started = Instant::now();
        let query = self.query(index)?;
        let searcher = index.reader.searcher();
        let id_field = index.schema.get_field(ID_FIELD)?;
        let collector = RankCollector {
            spec: self.sort.clone(),
            cursor: self.cursor.clone(),
            // One more than the page tells whether there is a next page.
            keep: self.offset + self.limit + 1,
            facet_fields: self.facets.iter().map(|(n, _)| n.clone()).collect(),
            id_field,
            id_ords: cache.for_searcher(&index.name, &searcher, id_field)?,
            total_cap: TOTAL_EXACT_UP_TO,
            counted: Default::default(),
            floor: Default::default(),
            distinct: self.distinct.clone(),
        };
        let mut ranked = searcher.search(&*query, &collector)?;
        let more = ranked.hits.len() > self.offset + self.limit;
        let page: Vec<_> = ranked.hits.drain(..).skip(self.offset).take(self.limit).collect();
        let next_cursor = if more { page.last().map(|h| Cursor::after(&self.sort, h).encode()) } else { None };

        let snippets = match &self.highlight {
            Some(h) if !h.fields.is_empty() => self.snippet_generators(index, &searcher, h)?,
            _ => Vec::new(),
        };
        let source_field = index.schema.get_field(SOURCE_FIELD)?;
        let mut hits = Vec::with_capacity(page.len());
        for h in page {
            let doc: TantivyDocument = searcher.doc(h.addr)?;
            let source = stored_source(&doc, source_field);
            let mut highlights = Map::new();
            if let Some(hl) = &self.highlight {
                for (name, gen) in &snippets {
                    let mut snippet = gen.snippet(source_text(&source, name).trim());
                    if !snippet.is_empty() {
                        snippet.set_snippet_prefix_postfix(&hl.pre, &hl.post);
                        highlights.insert(name.clone(), Value::String(snippet.to_html()));
                    }
                }
            }
            hits.push(Hit { id: h.id, score: h.score, doc: project(source, self.fields.as_deref()), highlights });
        }
        let mut facets = Map::new();
        for ((name, size), counts) in self.facets.iter().zip(ranked.facets) {
            facets.insert(name.clone(), Value::Object(top_counts(counts, *size)));
        }
        Ok(SearchResponse {
            hits,
            total: Total { value: ranked.total, relation: if ranked.total_capped { "gte" } else { "eq" } },
            facets,
            next_cursor,
            took_ms: (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            applied_lsn,
            generation: index.generation,
        })
    }

    fn snippet_generators(&self, index: &SearchIndex, searcher: &Searcher, h: &Highlight) -> ApiResult<Vec<(String, SnippetGenerator)>> {
        let Some(positive) = compile_text(&self.parsed, index, Some(searcher)) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for name in &h.fields {
            let f = index.schema.get_field(name)?;
            let mut gen = SnippetGenerator::create(searcher, &*positive, f)?;
            gen.set_max_num_chars(h.max_chars);
            out.push((name.clone(), gen));
        }
        Ok(out)
    }
}

fn stored_source(doc: &TantivyDocument, source_field: Field) -> Value {
    doc.get_first(source_field).and_then(|v| v.as_str()).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_else(|| Value::Object(Map::new()))
}

/// The text of field `name` in `_source`, as tantivy's `snippet_from_doc` joins a field's stored
/// values: each value that is not null, after a space (the forms `DocBuilder` indexes); the
/// caller trims it, as tantivy does.
fn source_text(source: &Value, name: &str) -> String {
    let mut text = String::new();
    let mut push = |v: &Value| match v {
        Value::Null => {}
        Value::String(s) => {
            text.push(' ');
            text.push_str(s);
        }
        other => {
            text.push(' ');
            text.push_str(&other.to_string());
        }
    };
    match source.get(name) {
        Some(Value::Array(items)) => items.iter().for_each(&mut push),
        Some(v) => push(v),
        None => {}
    }
    text
}

fn project(source: Value, fields: Option<&[String]>) -> Value {
    match (fields, source) {
        (Some(fields), Value::Object(mut obj)) => {
            let mut out = Map::new();
            for f in fields {
                if let Some(v) = obj.remove(f) {
                    out.insert(f.clone(), v);
                }
            }
            Value::Object(out)
        }
        (_, source) => source,
    }
}

/// The `size` most frequent values, most frequent first (ties by value).
fn top_counts(counts: HashMap<String, u64>, size: usize) -> Map<String, Value> {
    let mut v: Vec<(String, u64)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().take(size).map(|(k, n)| (k, Value::from(n))).collect()
}

/// The query of `q`; `None` when it matches everything. `highlight` gives the query for
/// snippets instead: positive terms only, fuzzy terms expanded to the indexed terms they match
/// in that searcher.
fn compile_text(parsed: &ParsedQuery, index: &SearchIndex, highlight: Option<&Searcher>) -> Option<Box<dyn Query>> {
    let positive_only = highlight.is_some();
    let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut any_positive = false;
    for clause in &parsed.clauses {
        match clause {
            Clause::Any(terms) => {
                let alts: Vec<Box<dyn Query>> = terms.iter().filter_map(|t| term_query(t, index, highlight)).collect();
                let q: Box<dyn Query> = match alts.len() {
                    0 => continue,
                    1 => alts.into_iter().next()?,
                    _ => Box::new(BooleanQuery::new(alts.into_iter().map(|q| (Occur::Should, q)).collect())),
                };
                any_positive = true;
                must.push((if positive_only { Occur::Should } else { Occur::Must }, q));
            }
            Clause::Not(term) => {
                if !positive_only {
                    if let Some(q) = term_query(term, index, None) {
                        must.push((Occur::MustNot, filter::excludable(q)));
                    }
                }
            }
        }
    }
    if must.is_empty() {
        return None;
    }
    if !any_positive {
        must.push((Occur::Must, Box::new(AllQuery)));
    }
    // A single required clause is the query itself: wrapped, tantivy sees one opaque sub-scorer
    // and scores every match; bare, a word over several fields is a union of term queries that
    // tantivy prunes with block-max WAND (the cost of a frequent word drops severalfold).
    if must.len() == 1 && matches!(must[0].0, Occur::Must) {
        return must.pop().map(|(_, q)| q);
    }
    Some(Box::new(BooleanQuery::new(must)))
}

/// One term over its field or the default search fields; `None` when it yields no token at all
/// (such a term is left out rather than matching nothing).
fn term_query(term: &query::Term, index: &SearchIndex, expand: Option<&Searcher>) -> Option<Box<dyn Query>> {
    let names: Vec<&str> = match &term.field {
        Some(f) => vec![f.as_str()],
        None => index.target.default_search_fields.iter().map(String::as_str).collect(),
    };
    // A word the index holds as typed is taken as meant: no typo expansion (the costliest part
    // of a query, measured in docs/operations.md); words it does not hold get their typos.
    let typos_allowed = !term.phrase && !super::relevance::held_as_typed(term, &names, index);
    let mut alts: Vec<Box<dyn Query>> = Vec::new();
    for name in names {
        let Some(decl) = field(index, name) else { continue };
        let Ok(handle) = index.schema.get_field(name) else {
            if term.field.is_some() {
                // An explicit field that is not indexed (stored_only): nothing matches.
                alts.push(Box::new(EmptyQuery));
            }
            continue;
        };
        if let Some(q) = field_query(decl, handle, term, index, expand, typos_allowed) {
            alts.push(if (decl.boost - 1.0).abs() > f32::EPSILON { Box::new(BoostQuery::new(q, decl.boost)) } else { q });
        }
    }
    match alts.len() {
        0 => None,
        1 => alts.into_iter().next(),
        _ => Some(Box::new(BooleanQuery::new(alts.into_iter().map(|q| (Occur::Should, q)).collect()))),
    }
}

pub(super) fn analyze(index: &SearchIndex, handle: Field, text: &str) -> Vec<(usize, String)> {
    let Ok(mut analyzer) = index.index.tokenizer_for_field(handle) else { return Vec::new() };
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        let t = stream.token();
        if !t.text.is_empty() {
            out.push((t.position, t.text.clone()));
        }
        if out.len() >= MAX_TOKENS_PER_TERM {
            break;
        }
    }
    out
}

/// Fuzzy terms beyond this many are not highlighted.
const MAX_FUZZY_EXPANSIONS: usize = 64;

/// The indexed terms a fuzzy query matches, as plain term queries (snippets need terms).
fn expand_fuzzy(fuzzy: &FuzzyTermQuery, field: Field, searcher: &Searcher) -> Box<dyn Query> {
    let mut terms = std::collections::BTreeSet::new();
    'segments: for seg in searcher.segment_readers() {
        let (Ok(inv), Ok(automaton)) = (seg.inverted_index(field), fuzzy.automaton()) else { continue };
        let Ok(mut stream) = inv.terms().search(automaton).into_stream() else { continue };
        while stream.advance() {
            if let Ok(t) = std::str::from_utf8(stream.key()) {
                terms.insert(t.to_string());
            }
            if terms.len() >= MAX_FUZZY_EXPANSIONS {
                break 'segments;
            }
        }
    }
    Box::new(BooleanQuery::new(
        terms
            .into_iter()
            .map(|t| (Occur::Should, Box::new(TermQuery::new(Term::from_field_text(field, &t), IndexRecordOption::Basic)) as Box<dyn Query>))
            .collect(),
    ))
}

fn field_query(
    decl: &SearchField,
    handle: Field,
    term: &query::Term,
    index: &SearchIndex,
    expand: Option<&Searcher>,
    typos_allowed: bool,
) -> Option<Box<dyn Query>> {
    let text = term.text.as_str();
    let relevance = &index.target.relevance;
    let prefix = term.prefix && !term.phrase && relevance.prefix_search == PrefixSearch::LastWord;
    let phrase = term.phrase;
    match decl.ty {
        SearchType::Text => {
            let tokens = analyze(index, handle, text);
            match tokens.len() {
                0 => None,
                1 => {
                    let term = Term::from_field_text(handle, &tokens[0].1);
                    let exact: Box<dyn Query> = Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs));
                    // Typos by the length of the word as typed; a phrase or a synonym is exact.
                    let by_length = if phrase { 0 } else { relevance.typo_tolerance.typos(decl, text) };
                    let typos = if typos_allowed { by_length } else { 0 };
                    if typos == 0 && !prefix {
                        if by_length > 0 {
                            // Held as typed: no typo matches, but it scores as with them (exact
                            // plus the typo part's constant), so it still ranks before another
                            // word's typo matches.
                            let constant = ConstScoreQuery::new(Box::new(TermQuery::new(term, IndexRecordOption::Basic)), 1.0);
                            return Some(Box::new(BooleanQuery::new(vec![(Occur::Should, exact), (Occur::Should, Box::new(constant))])));
                        }
                        return Some(exact);
                    }
                    let fuzzy = if prefix { FuzzyTermQuery::new_prefix(term, typos, true) } else { FuzzyTermQuery::new(term, typos, true) };
                    let fuzzy: Box<dyn Query> = match expand {
                        None => Box::new(fuzzy),
                        Some(searcher) => expand_fuzzy(&fuzzy, handle, searcher),
                    };
                    // Exact matches score as words do; typo and prefix matches only add a constant.
                    Some(Box::new(BooleanQuery::new(vec![(Occur::Should, exact), (Occur::Should, fuzzy)])))
                }
                _ => {
                    let first = tokens[0].0;
                    let terms: Vec<(usize, Term)> = tokens.into_iter().map(|(p, t)| (p.saturating_sub(first), Term::from_field_text(handle, &t))).collect();
                    if prefix && expand.is_none() {
                        // `e-mai`: the words of the chunk in a row, the last one a prefix.
                        return Some(Box::new(PhrasePrefixQuery::new_with_offset(terms)));
                    }
                    Some(Box::new(PhraseQuery::new_with_offset(terms)))
                }
            }
        }
        SearchType::Keyword => {
            if text.is_empty() {
                None
            } else {
                Some(Box::new(TermQuery::new(Term::from_field_text(handle, text), IndexRecordOption::WithFreqs)))
            }
        }
        SearchType::StoredOnly => Some(Box::new(EmptyQuery)),
        _ => {
            // `rate:2.99`, `release_year:2006`: an exact value, through the filter's conversions.
            let f = filter::Filter::Cond { field: decl.name.clone(), op: filter::Op::Eq(Value::String(text.to_string())) };
            let q = filter::compile(&f, index).unwrap_or_else(|_| Box::new(EmptyQuery));
            Some(q)
        }
    }
}

/// `GET /v1/indexes/{index}/documents/{id}` (blocking): the stored document, `None` if absent.
pub fn lookup(index: &SearchIndex, id: &str) -> ApiResult<Option<Value>> {
    let id_field = index.schema.get_field(ID_FIELD)?;
    let source_field = index.schema.get_field(SOURCE_FIELD)?;
    let searcher = index.reader.searcher();
    let q = TermQuery::new(Term::from_field_text(id_field, id), IndexRecordOption::Basic);
    let top = searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?;
    match top.first() {
        None => Ok(None),
        Some((_, addr)) => {
            let doc: TantivyDocument = searcher.doc(*addr)?;
            Ok(Some(stored_source(&doc, source_field)))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use tantivy::Index;

    use crate::sink::tantivy::schema::{build_schema, register_tokenizers, DocBuilder};
    use crate::sink::tantivy::KEY_FIELD;

    const PIPELINE: &str = "version: 1\npipeline: films\nsource: { table: film }\nfields: { film_id: film.film_id, title: film.title, description: film.description, rating: film.rating, rate: film.rate, year: film.year, tags: film.tags }\ntargets:\n  - search:\n      id: film_id\n      fields:\n        title: { type: text, stored: true, boost: 3.0, highlight: true, fuzzy: 1 }\n        description: { type: text, stored: true, highlight: true, analyzer: en_stem }\n        rating: { type: keyword, facet: true, stored: true }\n        rate: { type: f64, filterable: true, sortable: true, stored: true }\n        year: { type: i64, sortable: true, stored: true }\n        tags: { type: keyword, facet: true, stored: true }\n      default_search_fields: [title, description]\n";

    /// An in-memory index of `n` films, committed in several segments.
    pub(crate) fn films(n: u64) -> SearchIndex {
        films_with(n, "")
    }

    /// `films`, with more keys on the search target (relevance settings).
    pub(crate) fn films_with(n: u64, target_yaml: &str) -> SearchIndex {
        let p = crate::pipeline::check::check(std::path::Path::new("films.yaml"), &format!("{PIPELINE}{target_yaml}")).unwrap();
        let target = p.search[0].clone();
        let schema = build_schema(&target);
        let index = Index::create_in_ram(schema.clone());
        register_tokenizers(&index, &target);
        let builder = DocBuilder::new(&schema, &target);
        let key = schema.get_field(KEY_FIELD).unwrap();
        let mut writer: tantivy::IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for i in 1..=n {
            let rating = ["G", "PG", "R"][(i % 3) as usize];
            let rate = [0.99, 2.99, 4.99][(i % 3) as usize];
            let rec = json!({
                "film_id": i,
                "title": format!("Film {i} {}", if i % 3 == 0 { "Robot" } else { "Drama" }),
                "description": format!("A story about <robots> & dinosaurs number {i}"),
                "rating": rating,
                "rate": rate,
                "year": 2000 + (i % 7),
                "tags": if i % 2 == 0 { json!(["a", "b"]) } else { json!(["a"]) },
            });
            let mut doc = builder.build(&i.to_string(), rec.as_object().unwrap()).unwrap();
            doc.add_text(key, i.to_string());
            writer.add_document(doc).unwrap();
            if i % 7 == 0 {
                writer.commit().unwrap();
            }
        }
        writer.commit().unwrap();
        let reader = index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into().unwrap();
        SearchIndex { name: "films".into(), generation: 1, index, reader, schema, target }
    }

    pub(crate) fn run(index: &SearchIndex, req: Value) -> ApiResult<SearchResponse> {
        let req: SearchRequest = serde_json::from_value(req).unwrap();
        Plan::new(req, index)?.run(index, &IdOrdCache::default(), None)
    }

    pub(crate) fn ids(r: &SearchResponse) -> Vec<String> {
        r.hits.iter().map(|h| h.id.clone()).collect()
    }

    #[test]
    fn matches_all_and_counts() {
        let idx = films(30);
        let r = run(&idx, json!({})).unwrap();
        assert_eq!(r.total.value, 30);
        assert_eq!(r.hits.len(), DEFAULT_LIMIT);
        assert!(r.next_cursor.is_some());
        let r = run(&idx, json!({ "q": "robot" })).unwrap();
        assert_eq!(r.total.value, 30, "description mentions robots (stemmed) everywhere");
        let r = run(&idx, json!({ "q": "title:robot" })).unwrap();
        assert_eq!(r.total.value, 10);
        let r = run(&idx, json!({ "q": "drama -title:\"film 4\"" })).unwrap();
        assert_eq!(r.total.value, 19);
        let r = run(&idx, json!({ "q": "title:robot OR title:drama" })).unwrap();
        assert_eq!(r.total.value, 30);
        let r = run(&idx, json!({ "q": "rating:PG" })).unwrap();
        assert_eq!(r.total.value, 10);
        let r = run(&idx, json!({ "q": "year:2003" })).unwrap();
        assert!(r.total.value > 0);
        let r = run(&idx, json!({ "q": "year:notanumber" })).unwrap();
        assert_eq!(r.total.value, 0);
        // Fuzzy: one typo in a title word, highlighted as the word it matched.
        let r = run(&idx, json!({ "q": "title:robat", "highlight": {} })).unwrap();
        assert_eq!(r.total.value, 10);
        assert!(r.hits[0].highlights["title"].as_str().unwrap().contains("<mark>Robot</mark>"), "{:?}", r.hits[0].highlights);
        // Title matches rank before description-only matches (boost 3).
        let r = run(&idx, json!({ "q": "robot", "limit": 10 })).unwrap();
        assert!(r.hits.iter().all(|h| h.doc["title"].as_str().unwrap().contains("Robot")), "{:?}", ids(&r));
    }

    #[test]
    fn odd_queries_never_fail() {
        let idx = films(5);
        for q in ["\"", "-", "title:", "OR OR", "((", "東京 \"unclosed", "-robot", "NOT", ":::", "rate:", "rate:>3", "+-+-"] {
            run(&idx, json!({ "q": q })).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        run(&idx, json!({ "q": "x".repeat(10_000) })).unwrap();
        run(&idx, json!({ "q": "robot ".repeat(2_000) })).unwrap();
        let r = run(&idx, json!({ "q": "-robot" })).unwrap();
        assert_eq!(r.total.value, 0, "every description mentions robots");
    }

    #[test]
    fn sorts_pages_and_cursors() {
        let idx = films(40);
        let r = run(&idx, json!({ "sort": ["rate:desc", "_score"], "limit": 40 })).unwrap();
        let rates: Vec<f64> = r.hits.iter().map(|h| h.doc["rate"].as_f64().unwrap()).collect();
        assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
        assert!(r.next_cursor.is_none());
        // Ties broken by id, integer ids by value: 2, 5, 8, 11, … (not 11, 14, 17, 2, …).
        let first_rate: Vec<String> = r.hits[..13].iter().map(|h| h.id.clone()).collect();
        assert_eq!(first_rate, (0..13).map(|i| (2 + 3 * i).to_string()).collect::<Vec<_>>());
        // Offset pages agree with the full list.
        let p2 = run(&idx, json!({ "sort": ["rate:desc", "_score"], "limit": 5, "offset": 5 })).unwrap();
        assert_eq!(ids(&p2), ids(&r)[5..10]);
        // Cursor pages walk the same order.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let p = run(&idx, json!({ "sort": ["rate:desc", "_score"], "limit": 7, "cursor": cursor })).unwrap();
            seen.extend(ids(&p));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ids(&r));
        // Year ascending, keyword-free.
        let r = run(&idx, json!({ "sort": ["year"], "limit": 40 })).unwrap();
        let years: Vec<i64> = r.hits.iter().map(|h| h.doc["year"].as_i64().unwrap()).collect();
        assert!(years.windows(2).all(|w| w[0] <= w[1]), "{years:?}");
    }

    /// Without words every score is equal: the documents come in id order, integer ids by value,
    /// across segments and cursor pages.
    #[test]
    fn an_empty_query_lists_integer_ids_numerically() {
        let idx = films(120);
        assert!(idx.reader.searcher().segment_readers().len() > 1);
        let r = run(&idx, json!({ "q": "", "limit": 12 })).unwrap();
        assert_eq!(ids(&r), (1..=12).map(|i| i.to_string()).collect::<Vec<_>>());
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let p = run(&idx, json!({ "limit": 11, "cursor": cursor })).unwrap();
            seen.extend(ids(&p));
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, (1..=120).map(|i| i.to_string()).collect::<Vec<_>>());
        // Offsets too, with a filter (every score 0).
        let r = run(&idx, json!({ "filter": { "field": "rating", "eq": "PG" }, "limit": 5, "offset": 2 })).unwrap();
        assert_eq!(ids(&r), ["7", "10", "13", "16", "19"]);
    }

    #[test]
    fn filters_facets_highlights_and_fields() {
        let idx = films(30);
        let r = run(
            &idx,
            json!({
                "q": "robot",
                "filter": { "and": [ { "field": "rating", "in": ["G", "PG"] }, { "field": "rate", "gte": 0.99, "lt": 4.99 },
                                     { "not": { "field": "tags", "eq": "b" } } ] },
                "facets": { "rating": { "size": 10 }, "tags": {} },
                "highlight": { "fields": ["title", "description"] },
                "fields": ["film_id", "title"],
            }),
        )
        .unwrap();
        // rating G (i%3==0, rate 0.99) or PG (i%3==1, rate 2.99), odd ids only.
        assert_eq!(r.total.value, 10);
        assert!(r.hits.iter().all(|h| h.doc.as_object().unwrap().len() == 2));
        let facets = &r.facets["rating"];
        assert_eq!(facets["G"], json!(5));
        assert_eq!(facets["PG"], json!(5));
        assert_eq!(r.facets["tags"], json!({ "a": 10 }));
        let robot_hit = r.hits.iter().find(|h| h.doc["title"].as_str().unwrap().contains("Robot")).unwrap();
        assert!(robot_hit.highlights["title"].as_str().unwrap().contains("<mark>Robot</mark>"), "{:?}", robot_hit.highlights);
        let d = robot_hit.highlights["description"].as_str().unwrap();
        assert!(d.contains("&lt;<mark>robots</mark>&gt; &amp; dinosaurs"), "{d}");
        // Custom tags.
        let r = run(&idx, json!({ "q": "dinosaurs", "highlight": { "pre_tag": "[", "post_tag": "]" }, "limit": 1 })).unwrap();
        assert!(r.hits[0].highlights["description"].as_str().unwrap().contains("[dinosaurs]"));
    }

    #[test]
    fn refuses_bad_requests() {
        let idx = films(3);
        for (req, code, field) in [
            (json!({ "filter": { "field": "title", "eq": "x" } }), "invalid_filter", Some("title")),
            (json!({ "offset": 990, "limit": 20 }), "invalid_paging", None),
            (json!({ "limit": 1001 }), "invalid_paging", None),
            (json!({ "sort": ["title"] }), "invalid_sort", Some("title")),
            (json!({ "facets": { "title": {} } }), "invalid_facet", Some("title")),
            (json!({ "highlight": { "fields": ["rating"] } }), "invalid_highlight", Some("rating")),
            (json!({ "cursor": "garbage" }), "invalid_cursor", None),
        ] {
            let e = run(&idx, req.clone()).err().unwrap_or_else(|| panic!("{req} should fail"));
            assert_eq!(e.code, code, "{req}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.extra("field").and_then(|v| v.as_str()), field, "{req}");
        }
    }

    #[test]
    fn looks_up_documents() {
        let idx = films(3);
        assert_eq!(lookup(&idx, "2").unwrap().unwrap()["title"], json!("Film 2 Drama"));
        assert!(lookup(&idx, "99").unwrap().is_none());
    }
}
