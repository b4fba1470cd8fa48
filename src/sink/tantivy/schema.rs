//! From a pipeline's search target to a tantivy schema, and from a derived record (JSON) to a
//! tantivy document. A value that does not fit its declared type is an error for that record.

use serde_json::{Map, Value};
use tantivy::schema::{
    DateOptions, Field, IndexRecordOption, NumericOptions, OwnedValue, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{Language, LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer, WhitespaceTokenizer};
use tantivy::{DateTime, Index, TantivyDocument};

use crate::pipeline::{SearchField, SearchTarget, SearchType, LSN_FIELD, VERSION_FIELD};
use crate::sink::provenance::Stamp;

pub const ID_FIELD: &str = "_id";
pub const SOURCE_FIELD: &str = "_source";
pub const HASH_FIELD: &str = "_hash";

fn language(name: &str) -> Option<Language> {
    Some(match name {
        "arabic" => Language::Arabic,
        "danish" => Language::Danish,
        "dutch" => Language::Dutch,
        "english" => Language::English,
        "finnish" => Language::Finnish,
        "french" => Language::French,
        "german" => Language::German,
        "greek" => Language::Greek,
        "hungarian" => Language::Hungarian,
        "italian" => Language::Italian,
        "norwegian" => Language::Norwegian,
        "portuguese" => Language::Portuguese,
        "romanian" => Language::Romanian,
        "russian" => Language::Russian,
        "spanish" => Language::Spanish,
        "swedish" => Language::Swedish,
        "tamil" => Language::Tamil,
        "turkish" => Language::Turkish,
        _ => return None,
    })
}

fn tokenizer_name(analyzer: &str) -> String {
    format!("deriver_{analyzer}")
}

fn analyzer(name: &str) -> TextAnalyzer {
    match name {
        "raw" => TextAnalyzer::builder(RawTokenizer::default()).build(),
        "whitespace" => TextAnalyzer::builder(WhitespaceTokenizer::default()).filter(LowerCaser).build(),
        "en_stem" => TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::English))
            .build(),
        other => match language(other) {
            Some(lang) => {
                TextAnalyzer::builder(SimpleTokenizer::default()).filter(RemoveLongFilter::limit(40)).filter(LowerCaser).filter(Stemmer::new(lang)).build()
            }
            None => TextAnalyzer::builder(SimpleTokenizer::default()).filter(RemoveLongFilter::limit(40)).filter(LowerCaser).build(),
        },
    }
}

/// Registers the analyzers a target uses on an index (needed on every open).
pub fn register_tokenizers(index: &Index, target: &SearchTarget) {
    for f in &target.fields {
        if f.ty == SearchType::Text {
            index.tokenizers().register(&tokenizer_name(&f.analyzer), analyzer(&f.analyzer));
        }
    }
}

/// Registers every analyzer deriver knows (for a generation built from another definition).
pub fn register_all_tokenizers(index: &Index) {
    for name in crate::pipeline::ANALYZERS.iter().chain(crate::pipeline::STEMMER_LANGUAGES.iter()) {
        index.tokenizers().register(&tokenizer_name(name), analyzer(name));
    }
}

pub fn build_schema(target: &SearchTarget) -> Schema {
    let mut b = Schema::builder();
    b.add_text_field(ID_FIELD, STRING | STORED | FAST);
    b.add_text_field(super::KEY_FIELD, STRING | STORED | FAST);
    // Content hash of the record the document was built from (audits compare it cheaply).
    b.add_u64_field(HASH_FIELD, FAST);
    b.add_text_field(SOURCE_FIELD, STORED);
    for f in &target.fields {
        match f.ty {
            SearchType::Text => {
                let indexing =
                    TextFieldIndexing::default().set_tokenizer(&tokenizer_name(&f.analyzer)).set_index_option(IndexRecordOption::WithFreqsAndPositions);
                // Not stored in tantivy: a stored field's text lives in `_source`, once; the
                // search API returns it and cuts highlights from it.
                b.add_text_field(&f.name, TextOptions::default().set_indexing_options(indexing));
            }
            SearchType::Keyword => {
                let mut opts = STRING;
                if f.facet || f.sortable || f.filterable {
                    opts = opts | FAST;
                }
                b.add_text_field(&f.name, opts);
            }
            SearchType::I64 | SearchType::U64 | SearchType::F64 | SearchType::Bool => {
                let mut opts: NumericOptions = INDEXED.into();
                if f.sortable || f.filterable {
                    opts = opts.set_fast();
                }
                match f.ty {
                    SearchType::I64 => b.add_i64_field(&f.name, opts),
                    SearchType::U64 => b.add_u64_field(&f.name, opts),
                    SearchType::F64 => b.add_f64_field(&f.name, opts),
                    _ => b.add_bool_field(&f.name, opts),
                };
            }
            SearchType::Date => {
                let mut opts = DateOptions::default().set_indexed();
                if f.sortable || f.filterable {
                    opts = opts.set_fast();
                }
                b.add_date_field(&f.name, opts);
            }
            SearchType::StoredOnly => {}
        }
    }
    b.build()
}

/// Resolved field handles for fast document building.
pub struct DocBuilder {
    id: Field,
    source: Field,
    fields: Vec<(SearchField, Option<Field>)>,
    id_name: String,
    /// The target has `provenance: true`: a stamped document's `_source` ends with `_lsn` and
    /// `_version`.
    provenance: bool,
}

impl DocBuilder {
    pub fn new(schema: &Schema, target: &SearchTarget) -> DocBuilder {
        DocBuilder {
            id: schema.get_field(ID_FIELD).expect("schema has _id"),
            source: schema.get_field(SOURCE_FIELD).expect("schema has _source"),
            fields: target.fields.iter().map(|f| (f.clone(), schema.get_field(&f.name).ok())).collect(),
            id_name: target.id.clone(),
            provenance: target.provenance,
        }
    }

    pub fn id_field(&self) -> Field {
        self.id
    }

    /// Builds the document for one record. `id` is the text form of the target's id field.
    pub fn build(&self, id: &str, record: &Map<String, Value>) -> Result<TantivyDocument, String> {
        self.build_stamped(id, record, None)
    }

    /// Like [`build`](Self::build); with provenance on the target, `_source` also carries the
    /// batch's `stamp` (`_lsn`, `_version`, last). Not part of the content hash: audits ignore it.
    pub fn build_stamped(&self, id: &str, record: &Map<String, Value>, stamp: Option<&Stamp>) -> Result<TantivyDocument, String> {
        let mut doc = TantivyDocument::default();
        doc.add_text(self.id, id);
        // `_source`: the id field, then every stored field (null when absent), each once, as a
        // JSON object serialized straight from the record's values.
        let mut source = Vec::with_capacity(256);
        source.push(b'{');
        let mut put = |name: &str, value: &Value| {
            if source.len() > 1 {
                source.push(b',');
            }
            serde_json::to_writer(&mut source, name).expect("JSON serializes");
            source.push(b':');
            serde_json::to_writer(&mut source, value).expect("JSON serializes");
        };
        let has_id = match record.get(&self.id_name) {
            Some(v) => {
                put(&self.id_name, v);
                true
            }
            None => false,
        };
        for (f, handle) in &self.fields {
            let value = record.get(&f.name).unwrap_or(&Value::Null);
            if (f.stored || f.ty == SearchType::StoredOnly) && !(has_id && f.name == self.id_name) {
                put(&f.name, value);
            }
            let Some(handle) = *handle else { continue };
            let items = match value {
                Value::Null => &[][..],
                Value::Array(items) => &items[..],
                v => std::slice::from_ref(v),
            };
            for item in items {
                match (f.ty, item) {
                    (_, Value::Null) => {}
                    (SearchType::Text | SearchType::Keyword, Value::String(s)) => doc.add_text(handle, s),
                    _ => doc.add_field_value(handle, &convert(f, item).map_err(|e| format!("field `{}`: {e}", f.name))?),
                }
            }
        }
        if let Some(stamp) = stamp.filter(|_| self.provenance) {
            put(LSN_FIELD, &Value::String(stamp.lsn.clone()));
            put(VERSION_FIELD, &Value::String(stamp.version.clone()));
        }
        source.push(b'}');
        doc.add_text(self.source, String::from_utf8(source).expect("serde_json writes UTF-8"));
        Ok(doc)
    }
}

fn convert(f: &SearchField, v: &Value) -> Result<OwnedValue, String> {
    let describe = || format!("{v} does not fit type {}", serde_json::to_string(&f.ty).unwrap_or_default().trim_matches('"'));
    Ok(match f.ty {
        SearchType::Text | SearchType::Keyword | SearchType::StoredOnly => OwnedValue::Str(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        SearchType::I64 => OwnedValue::I64(match v {
            Value::Number(n) => n.as_i64().ok_or_else(describe)?,
            _ => return Err(describe()),
        }),
        SearchType::U64 => OwnedValue::U64(match v {
            Value::Number(n) => n.as_u64().ok_or_else(describe)?,
            _ => return Err(describe()),
        }),
        SearchType::F64 => OwnedValue::F64(match v {
            Value::Number(n) => n.as_f64().ok_or_else(describe)?,
            Value::String(s) if s == "NaN" => f64::NAN,
            Value::String(s) if s == "Infinity" => f64::INFINITY,
            Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(describe()),
        }),
        SearchType::Bool => OwnedValue::Bool(v.as_bool().ok_or_else(describe)?),
        SearchType::Date => OwnedValue::Date(match v {
            Value::String(s) => parse_date(s).ok_or_else(describe)?,
            _ => return Err(describe()),
        }),
    })
}

/// RFC 3339 timestamps, and the forms `to_jsonb` gives for `timestamp` (no zone: UTC) and `date`.
pub fn parse_date(s: &str) -> Option<DateTime> {
    use chrono::{DateTime as CDateTime, NaiveDate, NaiveDateTime};
    let nanos = if let Ok(dt) = CDateTime::parse_from_rfc3339(s) {
        dt.timestamp_nanos_opt()?
    } else if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        dt.and_utc().timestamp_nanos_opt()?
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()?
    } else {
        return None;
    };
    Some(DateTime::from_timestamp_nanos(nanos))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::pipeline::check::check;
    use std::path::Path;

    pub fn target() -> SearchTarget {
        let p = check(
            Path::new("t.yaml"),
            "version: 1\npipeline: t\nsource: { table: t }\nfields: { id: t.id, title: t.title, n: t.n, at: t.at, tags: t.tags }\ntargets:\n  - search:\n      id: id\n      fields:\n        title: { type: text, stored: true }\n        n: { type: i64, sortable: true }\n        at: { type: date, filterable: true }\n        tags: { type: keyword, facet: true, stored: true }\n",
        )
        .unwrap();
        p.search[0].clone()
    }

    #[test]
    fn builds_documents_and_rejects_misfits() {
        let t = target();
        let schema = build_schema(&t);
        let b = DocBuilder::new(&schema, &t);
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"id": 1, "title": "Alpha", "n": 5, "at": "2020-05-01T10:00:00+00:00", "tags": ["a", null, "b"]}"#).unwrap();
        let doc = b.build("1", &rec).unwrap();
        let tags = schema.get_field("tags").unwrap();
        assert_eq!(doc.get_all(tags).count(), 2);
        let bad: Map<String, Value> = serde_json::from_str(r#"{"id": 1, "n": 4.5}"#).unwrap();
        let err = b.build("1", &bad).unwrap_err();
        assert!(err.contains("field `n`: 4.5 does not fit type i64"), "{err}");
        let bad_date: Map<String, Value> = serde_json::from_str(r#"{"id": 1, "at": "yesterday"}"#).unwrap();
        assert!(b.build("1", &bad_date).is_err());
    }

    #[test]
    fn source_holds_the_id_and_stored_fields_once_in_order() {
        use tantivy::schema::Value as _;
        let t = target();
        let schema = build_schema(&t);
        let b = DocBuilder::new(&schema, &t);
        let source = |rec: &str| {
            let rec: Map<String, Value> = serde_json::from_str(rec).unwrap();
            let doc = b.build("1", &rec).unwrap();
            doc.get_first(schema.get_field(SOURCE_FIELD).unwrap()).and_then(|v| v.as_str().map(str::to_string)).unwrap()
        };
        assert_eq!(source(r#"{"tags": ["a", null], "title": "Al \"pha\"\n", "id": 7, "n": 5}"#), r#"{"id":7,"title":"Al \"pha\"\n","tags":["a",null]}"#);
        assert_eq!(source(r#"{"n": 5}"#), r#"{"title":null,"tags":null}"#, "absent stored fields are null; an absent id is left out");
    }

    #[test]
    fn provenance_ends_the_source_of_a_target_that_has_it() {
        use tantivy::schema::Value as _;
        let stamp = Stamp::new("1/2A".parse().unwrap(), "0123456789abcdef");
        let source = |t: &SearchTarget| {
            let schema = build_schema(t);
            let rec: Map<String, Value> = serde_json::from_str(r#"{"id": 7, "title": "Alpha", "tags": ["a"]}"#).unwrap();
            let doc = DocBuilder::new(&schema, t).build_stamped("7", &rec, Some(&stamp)).unwrap();
            doc.get_first(schema.get_field(SOURCE_FIELD).unwrap()).and_then(|v| v.as_str().map(str::to_string)).unwrap()
        };
        let mut t = target();
        assert_eq!(source(&t), r#"{"id":7,"title":"Alpha","tags":["a"]}"#, "no provenance: no stamp");
        t.provenance = true;
        assert_eq!(source(&t), r#"{"id":7,"title":"Alpha","tags":["a"],"_lsn":"1/2A","_version":"0123456789ab"}"#);
        assert_eq!(build_schema(&t), build_schema(&target()), "the stamp lives in `_source` only");
    }

    #[test]
    fn dates_in_postgres_json_forms() {
        assert!(parse_date("2020-05-01T10:00:00+00:00").is_some());
        assert!(parse_date("2020-05-01T10:00:00.123456").is_some());
        assert!(parse_date("2020-05-01").is_some());
        assert_eq!(parse_date("2020-05-01"), parse_date("2020-05-01T00:00:00Z"));
        assert!(parse_date("infinity").is_none());
    }
}
