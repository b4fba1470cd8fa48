//! Search filters: `{"field": "rate", "gte": 0.99, "lt": 4.99}`, `eq`, `in`, `exists`, combined
//! with `and` / `or` / `not` (a bare array is an `and`). Parsing gives a [`Filter`] tree; compiling
//! it against an index checks every field (keyword, filterable, facet or sortable) and value type
//! and builds the tantivy query. Every problem is a 400 `invalid_filter` naming the field.

use std::ops::Bound;

use serde_json::{Map, Value};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, EnableScoring, ExistsQuery, Explanation, Occur, Query, RangeQuery, RegexQuery, Scorer, TermQuery, TermSetQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DateTime, DocId, DocSet, Score, SegmentReader, Term};

use super::error::{shorten, ApiError, ApiResult};
use crate::pipeline::{SearchField, SearchTarget, SearchType};
use crate::sink::tantivy::schema::parse_date;
use crate::sink::tantivy::SearchIndex;

/// Nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 32;
/// Conditions in one filter.
pub const MAX_CONDITIONS: usize = 256;
/// Values of one `in`.
pub const MAX_IN_VALUES: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cond { field: String, op: Op },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    In(Vec<Value>),
    Range { lower: Bound<Value>, upper: Bound<Value> },
    Exists(bool),
}

fn invalid(path: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_filter", format!("{path}: {}", message.into()))
}

fn invalid_field(path: &str, field: &str, message: impl Into<String>) -> ApiError {
    invalid(path, message).with_field(field)
}

/// Parses the `filter` member of a search request.
pub fn parse(value: &Value) -> ApiResult<Filter> {
    let mut count = 0;
    parse_at(value, "filter", 0, &mut count)
}

fn parse_at(value: &Value, path: &str, depth: usize, count: &mut usize) -> ApiResult<Filter> {
    if depth > MAX_DEPTH {
        return Err(invalid(path, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    match value {
        Value::Array(items) => parse_list(items, path, depth, count).map(Filter::And),
        Value::Object(obj) => parse_object(obj, path, depth, count),
        other => Err(invalid(path, format!("expected an object or an array, found {}", kind(other)))),
    }
}

fn parse_list(items: &[Value], path: &str, depth: usize, count: &mut usize) -> ApiResult<Vec<Filter>> {
    items.iter().enumerate().map(|(i, v)| parse_at(v, &format!("{path}[{i}]"), depth + 1, count)).collect()
}

fn parse_object(obj: &Map<String, Value>, path: &str, depth: usize, count: &mut usize) -> ApiResult<Filter> {
    let combinators: Vec<&str> = ["and", "or", "not"].into_iter().filter(|k| obj.contains_key(*k)).collect();
    if let Some(&comb) = combinators.first() {
        if obj.len() > 1 {
            let others: Vec<&str> = obj.keys().map(String::as_str).filter(|k| *k != comb).collect();
            return Err(invalid(path, format!("`{comb}` must stand alone in its object (found also {})", list(&others))));
        }
        let inner = &obj[comb];
        let inner_path = format!("{path}.{comb}");
        return match comb {
            "not" => Ok(Filter::Not(Box::new(parse_at(inner, &inner_path, depth + 1, count)?))),
            _ => {
                let Value::Array(items) = inner else {
                    return Err(invalid(&inner_path, format!("expected an array of filters, found {}", kind(inner))));
                };
                let parts = parse_list(items, &inner_path, depth, count)?;
                Ok(if comb == "and" { Filter::And(parts) } else { Filter::Or(parts) })
            }
        };
    }
    let field = match obj.get("field") {
        Some(Value::String(f)) if !f.is_empty() => f.clone(),
        Some(other) => return Err(invalid(path, format!("`field` must be a field name, found {}", kind(other)))),
        None => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(invalid(path, format!("expected `field` with a condition, or `and` / `or` / `not` (found {})", list(&keys))));
        }
    };
    *count += 1;
    if *count > MAX_CONDITIONS {
        return Err(invalid(path, format!("more than {MAX_CONDITIONS} conditions")));
    }
    let mut ops = Vec::new();
    let mut lower = Bound::Unbounded;
    let mut upper = Bound::Unbounded;
    for (key, v) in obj {
        match key.as_str() {
            "field" => {}
            "eq" => ops.push(Op::Eq(scalar(v, path, &field, "eq")?)),
            "in" => {
                let Value::Array(items) = v else {
                    return Err(invalid_field(path, &field, format!("`in` expects an array of values, found {}", kind(v))));
                };
                if items.len() > MAX_IN_VALUES {
                    return Err(invalid_field(path, &field, format!("`in` has more than {MAX_IN_VALUES} values")));
                }
                let values = items.iter().map(|i| scalar(i, path, &field, "in")).collect::<ApiResult<Vec<_>>>()?;
                ops.push(Op::In(values));
            }
            "gt" | "gte" => {
                if !matches!(lower, Bound::Unbounded) {
                    return Err(invalid_field(path, &field, "give only one of `gt` and `gte`"));
                }
                let v = scalar(v, path, &field, key)?;
                lower = if key == "gt" { Bound::Excluded(v) } else { Bound::Included(v) };
            }
            "lt" | "lte" => {
                if !matches!(upper, Bound::Unbounded) {
                    return Err(invalid_field(path, &field, "give only one of `lt` and `lte`"));
                }
                let v = scalar(v, path, &field, key)?;
                upper = if key == "lt" { Bound::Excluded(v) } else { Bound::Included(v) };
            }
            "exists" => match v {
                Value::Bool(b) => ops.push(Op::Exists(*b)),
                other => return Err(invalid_field(path, &field, format!("`exists` expects true or false, found {}", kind(other)))),
            },
            other => return Err(invalid_field(path, &field, format!("unknown condition `{}` (expected eq, in, gt, gte, lt, lte, exists)", shorten(other)))),
        }
    }
    if !matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
        ops.push(Op::Range { lower, upper });
    }
    match ops.len() {
        0 => Err(invalid_field(path, &field, format!("no condition for `{field}` (expected eq, in, gt, gte, lt, lte, exists)"))),
        1 => Ok(Filter::Cond { field, op: ops.remove(0) }),
        _ => Ok(Filter::And(ops.into_iter().map(|op| Filter::Cond { field: field.clone(), op }).collect())),
    }
}

fn scalar(v: &Value, path: &str, field: &str, what: &str) -> ApiResult<Value> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(v.clone()),
        other => Err(invalid_field(path, field, format!("`{what}` expects a string, number or boolean, found {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list(keys: &[&str]) -> String {
    if keys.is_empty() {
        "nothing".into()
    } else {
        keys.iter().map(|k| format!("`{}`", shorten(k))).collect::<Vec<_>>().join(", ")
    }
}

/// Whether a search field may be used in a filter.
pub fn filterable(f: &SearchField) -> bool {
    f.ty == SearchType::Keyword || f.filterable || f.facet || f.sortable
}

/// Builds the tantivy query of a filter (it does not score: wrap it in a `ConstScoreQuery`).
pub fn compile(filter: &Filter, index: &SearchIndex) -> ApiResult<Box<dyn Query>> {
    compile_with(filter, &index.target, &|name| index.schema.get_field(name).ok(), &|name| {
        index.schema.get_field_entry_by_name(name).is_some_and(|e| e.is_fast())
    })
}

trait SchemaEntryByName {
    fn get_field_entry_by_name(&self, name: &str) -> Option<&tantivy::schema::FieldEntry>;
}

impl SchemaEntryByName for tantivy::schema::Schema {
    fn get_field_entry_by_name(&self, name: &str) -> Option<&tantivy::schema::FieldEntry> {
        self.get_field(name).ok().map(|f| self.get_field_entry(f))
    }
}

fn compile_with(filter: &Filter, target: &SearchTarget, handle: &dyn Fn(&str) -> Option<Field>, is_fast: &dyn Fn(&str) -> bool) -> ApiResult<Box<dyn Query>> {
    Ok(match filter {
        Filter::And(parts) => {
            if parts.is_empty() {
                return Ok(Box::new(AllQuery));
            }
            let subs = parts.iter().map(|p| Ok((Occur::Must, compile_with(p, target, handle, is_fast)?))).collect::<ApiResult<Vec<_>>>()?;
            Box::new(BooleanQuery::new(subs))
        }
        Filter::Or(parts) => {
            if parts.is_empty() {
                return Ok(Box::new(EmptyQuery));
            }
            let subs = parts.iter().map(|p| Ok((Occur::Should, compile_with(p, target, handle, is_fast)?))).collect::<ApiResult<Vec<_>>>()?;
            Box::new(BooleanQuery::new(subs))
        }
        Filter::Not(inner) => negate(compile_with(inner, target, handle, is_fast)?),
        Filter::Cond { field, op } => {
            let path = "filter";
            let Some(decl) = target.fields.iter().find(|f| &f.name == field) else {
                return Err(invalid_field(path, field, format!("`{}` is not a field of this index", shorten(field))));
            };
            if !filterable(decl) {
                return Err(invalid_field(
                    path,
                    field,
                    format!("`{field}` cannot be filtered: only keyword fields and fields declared filterable, facet or sortable can"),
                ));
            }
            let Some(h) = handle(field) else {
                return Err(invalid_field(path, field, format!("`{field}` is not indexed")));
            };
            condition(decl, h, op, is_fast(field))?
        }
    })
}

fn negate(q: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(vec![(Occur::Must, Box::new(AllQuery) as Box<dyn Query>), (Occur::MustNot, excludable(q))]))
}

/// Wraps a query used as `MustNot`. tantivy's exclusion probes the excluded scorer with
/// `seek_danger` targets that may lie before its current document, which some scorers (phrases)
/// do not expect (a debug assertion fires); the wrapper answers those probes with the plain,
/// always-correct `seek`.
pub fn excludable(q: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(Excludable(q))
}

#[derive(Debug)]
struct Excludable(Box<dyn Query>);

impl Clone for Excludable {
    fn clone(&self) -> Self {
        Excludable(self.0.box_clone())
    }
}

impl Query for Excludable {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludableWeight(self.0.weight(enable_scoring)?)))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor)
    }
}

struct ExcludableWeight(Box<dyn Weight>);

impl Weight for ExcludableWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(PlainSeek(self.0.scorer(reader, boost)?)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

/// A scorer whose `seek_danger` is the default one (built on `seek`).
struct PlainSeek(Box<dyn Scorer>);

impl DocSet for PlainSeek {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.0.doc() >= target {
            return self.0.doc();
        }
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }

    fn cost(&self) -> u64 {
        self.0.cost()
    }
}

impl Scorer for PlainSeek {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}

fn type_error(f: &SearchField, v: &Value) -> ApiError {
    invalid_field(
        "filter",
        &f.name,
        format!("{} does not fit field `{}` of type {}", shorten(&v.to_string()), f.name, serde_json::to_string(&f.ty).unwrap_or_default().trim_matches('"')),
    )
}

fn as_f64(f: &SearchField, v: &Value) -> ApiResult<f64> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| type_error(f, v)),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| !x.is_nan()).ok_or_else(|| type_error(f, v)),
        _ => Err(type_error(f, v)),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn date_of(f: &SearchField, v: &Value) -> ApiResult<DateTime> {
    match v {
        Value::String(s) => parse_date(s.trim()).ok_or_else(|| type_error(f, v)),
        _ => Err(type_error(f, v)),
    }
}

fn bool_of(f: &SearchField, v: &Value) -> ApiResult<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err(type_error(f, v)),
    }
}

/// The exact term for `eq` / `in`; `None` when no document can hold that value (e.g. 2.5 in an
/// i64 field).
fn exact_term(f: &SearchField, h: Field, v: &Value) -> ApiResult<Option<Term>> {
    Ok(match f.ty {
        SearchType::Keyword => Some(Term::from_field_text(h, &text_of(v))),
        SearchType::I64 => {
            let x = as_f64(f, v)?;
            integral(v, x).and_then(|x| (x >= i64::MIN as f64 && x <= i64::MAX as f64).then(|| exact_i64(v, x))).map(|i| Term::from_field_i64(h, i))
        }
        SearchType::U64 => {
            let x = as_f64(f, v)?;
            integral(v, x).and_then(|x| (x >= 0.0 && x <= u64::MAX as f64).then(|| exact_u64(v, x))).map(|u| Term::from_field_u64(h, u))
        }
        SearchType::F64 => Some(Term::from_field_f64(h, as_f64(f, v)?)),
        SearchType::Bool => Some(Term::from_field_bool(h, bool_of(f, v)?)),
        SearchType::Date => Some(Term::from_field_date_for_search(h, date_of(f, v)?)),
        SearchType::Text | SearchType::StoredOnly => return Err(type_error(f, v)),
    })
}

fn integral(_v: &Value, x: f64) -> Option<f64> {
    (x.fract() == 0.0 && x.is_finite()).then_some(x)
}

/// Integers beyond 2^53 lose precision through f64: take them from their text when possible.
fn exact_i64(v: &Value, x: f64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(x as i64),
        Value::String(s) => s.trim().parse().unwrap_or(x as i64),
        _ => x as i64,
    }
}

fn exact_u64(v: &Value, x: f64) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(x as u64),
        Value::String(s) => s.trim().parse().unwrap_or(x as u64),
        _ => x as u64,
    }
}

fn condition(f: &SearchField, h: Field, op: &Op, fast: bool) -> ApiResult<Box<dyn Query>> {
    Ok(match op {
        Op::Eq(v) => match exact_term(f, h, v)? {
            Some(t) => Box::new(TermQuery::new(t, IndexRecordOption::Basic)),
            None => Box::new(EmptyQuery),
        },
        Op::In(values) => {
            let mut terms = Vec::with_capacity(values.len());
            for v in values {
                if let Some(t) = exact_term(f, h, v)? {
                    terms.push(t);
                }
            }
            if terms.is_empty() {
                Box::new(EmptyQuery)
            } else {
                Box::new(TermSetQuery::new(terms))
            }
        }
        Op::Exists(want) => {
            let q: Box<dyn Query> = if fast {
                Box::new(ExistsQuery::new(f.name.clone(), false))
            } else {
                // A keyword field without a fast column: any term at all.
                Box::new(RegexQuery::from_pattern("(?s).*", h).map_err(|e| ApiError::internal(format!("exists query: {e}")))?)
            };
            if *want {
                q
            } else {
                negate(q)
            }
        }
        Op::Range { lower, upper } => range(f, h, lower, upper)?,
    })
}

fn range(f: &SearchField, h: Field, lower: &Bound<Value>, upper: &Bound<Value>) -> ApiResult<Box<dyn Query>> {
    let map = |b: &Bound<Value>, conv: &dyn Fn(&Value) -> ApiResult<Term>| -> ApiResult<Bound<Term>> {
        Ok(match b {
            Bound::Included(v) => Bound::Included(conv(v)?),
            Bound::Excluded(v) => Bound::Excluded(conv(v)?),
            Bound::Unbounded => Bound::Unbounded,
        })
    };
    let (lo, hi) = match f.ty {
        SearchType::Keyword => {
            let conv = |v: &Value| Ok(Term::from_field_text(h, &text_of(v)));
            (map(lower, &conv)?, map(upper, &conv)?)
        }
        SearchType::F64 => {
            let conv = |v: &Value| Ok(Term::from_field_f64(h, as_f64(f, v)?));
            (map(lower, &conv)?, map(upper, &conv)?)
        }
        SearchType::Date => {
            let conv = |v: &Value| Ok(Term::from_field_date(h, date_of(f, v)?));
            (map(lower, &conv)?, map(upper, &conv)?)
        }
        SearchType::I64 | SearchType::U64 => {
            // Integer fields: normalize to inclusive integer bounds.
            let (min, max) = if f.ty == SearchType::I64 { (i64::MIN as f64, i64::MAX as f64) } else { (0.0, u64::MAX as f64) };
            let lo = match lower {
                Bound::Included(v) => Some(as_f64(f, v)?.ceil()),
                Bound::Excluded(v) => Some(as_f64(f, v)?.floor() + 1.0),
                Bound::Unbounded => None,
            };
            let hi = match upper {
                Bound::Included(v) => Some(as_f64(f, v)?.floor()),
                Bound::Excluded(v) => Some(as_f64(f, v)?.ceil() - 1.0),
                Bound::Unbounded => None,
            };
            let lo = lo.map(|x| x.max(min));
            let hi = hi.map(|x| x.min(max));
            if lo.zip(hi).is_some_and(|(l, h)| l > h) || lo.is_some_and(|l| l > max) || hi.is_some_and(|h| h < min) {
                return Ok(Box::new(EmptyQuery));
            }
            let exact = |b: &Bound<Value>, x: f64| match b {
                // Exact integer bounds keep their full precision.
                Bound::Included(v) if integral(v, x).is_some() => Some(v.clone()),
                _ => None,
            };
            let term = |x: f64, orig: Option<Value>| {
                if f.ty == SearchType::I64 {
                    Term::from_field_i64(h, orig.as_ref().map_or(x as i64, |v| exact_i64(v, x)))
                } else {
                    Term::from_field_u64(h, orig.as_ref().map_or(x as u64, |v| exact_u64(v, x)))
                }
            };
            (
                lo.map_or(Bound::Unbounded, |x| Bound::Included(term(x, exact(lower, x)))),
                hi.map_or(Bound::Unbounded, |x| Bound::Included(term(x, exact(upper, x)))),
            )
        }
        SearchType::Bool | SearchType::Text | SearchType::StoredOnly => {
            return Err(invalid_field("filter", &f.name, format!("`{}` is not ordered: use eq, in or exists", f.name)));
        }
    };
    if matches!((&lo, &hi), (Bound::Unbounded, Bound::Unbounded)) {
        return Ok(Box::new(AllQuery));
    }
    Ok(Box::new(RangeQuery::new(lo, hi)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> ApiError {
        parse(&v).expect_err("should be refused")
    }

    #[test]
    fn parses_the_spec_example() {
        let f = parse(&json!({ "and": [ { "field": "category", "in": ["Drama", "Sci-Fi"] },
                                        { "field": "rate", "gte": 0.99, "lt": 4.99 },
                                        { "not": { "field": "rating", "eq": "NC-17" } } ] }))
        .unwrap();
        let Filter::And(parts) = f else { panic!() };
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], Filter::Cond { field: "category".into(), op: Op::In(vec![json!("Drama"), json!("Sci-Fi")]) });
        assert_eq!(parts[1], Filter::Cond { field: "rate".into(), op: Op::Range { lower: Bound::Included(json!(0.99)), upper: Bound::Excluded(json!(4.99)) } });
        assert_eq!(parts[2], Filter::Not(Box::new(Filter::Cond { field: "rating".into(), op: Op::Eq(json!("NC-17")) })));
    }

    #[test]
    fn arrays_and_combined_conditions() {
        let f = parse(&json!([{ "field": "a", "exists": true }, { "or": [] }])).unwrap();
        assert_eq!(f, Filter::And(vec![Filter::Cond { field: "a".into(), op: Op::Exists(true) }, Filter::Or(vec![])]));
        let f = parse(&json!({ "field": "a", "eq": 1, "gt": 0 })).unwrap();
        assert!(matches!(f, Filter::And(ref v) if v.len() == 2));
    }

    #[test]
    fn refuses_malformed_filters_with_a_message() {
        for (v, needle) in [
            (json!("rate > 3"), "expected an object"),
            (json!(null), "expected an object"),
            (json!({}), "expected `field`"),
            (json!({ "field": "rate" }), "no condition"),
            (json!({ "field": "rate", "like": "x" }), "unknown condition `like`"),
            (json!({ "field": 3, "eq": 1 }), "`field` must be a field name"),
            (json!({ "field": "rate", "gt": 1, "gte": 2 }), "only one of `gt` and `gte`"),
            (json!({ "field": "rate", "eq": [1] }), "expects a string, number or boolean"),
            (json!({ "field": "rate", "eq": null }), "expects a string, number or boolean"),
            (json!({ "field": "rate", "in": 3 }), "`in` expects an array"),
            (json!({ "field": "rate", "exists": "yes" }), "`exists` expects true or false"),
            (json!({ "and": {} }), "expected an array of filters"),
            (json!({ "and": [], "field": "x" }), "must stand alone"),
            (json!({ "not": [[[["x"]]]] }), "expected an object"),
        ] {
            let e = err(v.clone());
            assert_eq!(e.code, "invalid_filter", "{v}");
            assert!(e.message.contains(needle), "{v}: {}", e.message);
        }
        let e = err(json!({ "field": "rate", "like": "x" }));
        assert_eq!(e.extra("field"), Some(&json!("rate")));
    }

    #[test]
    fn hostile_filters_are_bounded() {
        let mut v = json!({ "field": "a", "eq": 1 });
        for _ in 0..(MAX_DEPTH + 5) {
            v = json!({ "not": v });
        }
        assert!(err(v).message.contains("nested deeper"));
        let many: Vec<Value> = (0..MAX_CONDITIONS + 1).map(|i| json!({ "field": "a", "eq": i })).collect();
        assert!(err(json!({ "or": many })).message.contains("more than"));
        let values: Vec<Value> = (0..MAX_IN_VALUES + 1).map(|i| json!(i)).collect();
        assert!(err(json!({ "field": "a", "in": values })).message.contains("more than"));
        let mut obj = Map::new();
        obj.insert("field".into(), json!("a"));
        obj.insert("k".repeat(10_000), json!(1));
        let e = err(Value::Object(obj));
        assert!(e.message.len() < 400, "{}", e.message.len());
    }

    fn target() -> SearchTarget {
        let p = crate::pipeline::check::check(
            std::path::Path::new("t.yaml"),
            "version: 1\npipeline: t\nsource: { table: t }\nfields: { id: t.id, title: t.title, n: t.n, r: t.r, at: t.at, tags: t.tags, kw: t.kw, on: t.on, plain: t.plain }\ntargets:\n  - search:\n      id: id\n      fields:\n        title: { type: text, stored: true }\n        n: { type: i64, sortable: true }\n        r: { type: f64, filterable: true }\n        at: { type: date, filterable: true }\n        tags: { type: keyword, facet: true, stored: true }\n        kw: { type: keyword }\n        on: { type: bool, filterable: true }\n        plain: { type: i64 }\n",
        )
        .unwrap();
        p.search[0].clone()
    }

    fn compile_json(v: Value) -> ApiResult<Box<dyn Query>> {
        let t = target();
        let schema = crate::sink::tantivy::schema::build_schema(&t);
        let f = parse(&v)?;
        compile_with(&f, &t, &|n| schema.get_field(n).ok(), &|n| schema.get_field_entry_by_name(n).is_some_and(|e| e.is_fast()))
    }

    #[test]
    fn compiles_only_filterable_fields_with_fitting_values() {
        for ok in [
            json!({ "field": "n", "gte": 2.5, "lt": 7 }),
            json!({ "field": "n", "eq": 2.5 }),
            json!({ "field": "n", "in": [1, "2", 3.5] }),
            json!({ "field": "r", "gt": "0.5" }),
            json!({ "field": "at", "gte": "2020-01-01", "lt": "2021-01-01T00:00:00Z" }),
            json!({ "field": "tags", "eq": "x" }),
            json!({ "field": "kw", "exists": false }),
            json!({ "field": "tags", "exists": true }),
            json!({ "field": "on", "eq": true }),
            json!({ "field": "n", "gt": 1e300 }),
            json!({ "field": "kw", "gte": "a", "lt": "m" }),
        ] {
            assert!(compile_json(ok.clone()).is_ok(), "{ok}");
        }
        for (bad, field, needle) in [
            (json!({ "field": "title", "eq": "x" }), "title", "cannot be filtered"),
            (json!({ "field": "plain", "eq": 1 }), "plain", "cannot be filtered"),
            (json!({ "field": "nope", "eq": 1 }), "nope", "not a field"),
            (json!({ "field": "n", "eq": "abc" }), "n", "does not fit"),
            (json!({ "field": "at", "gt": "yesterday" }), "at", "does not fit"),
            (json!({ "field": "at", "gt": 3 }), "at", "does not fit"),
            (json!({ "field": "on", "gt": true }), "on", "not ordered"),
            (json!({ "or": [{ "field": "r", "eq": 1 }, { "not": { "field": "title", "exists": true } }] }), "title", "cannot be filtered"),
        ] {
            let e = compile_json(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.code, "invalid_filter");
            assert_eq!(e.extra("field"), Some(&json!(field)), "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }
}
