//! The checked, in-memory form of a pipeline file.

use std::path::PathBuf;

use serde::Serialize;

use crate::source::TableName;

#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub name: String,
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    pub description: Option<String>,
    #[serde(skip)]
    pub owner: Option<String>,
    pub source: Source,
    pub lookups: Vec<Lookup>,
    pub children: Vec<Child>,
    pub fields: Vec<Field>,
    pub search: Vec<SearchTarget>,
    pub redis: Vec<RedisTarget>,
    pub on_error: OnError,
    /// sha256 of the normalized definition (everything but description, owner and tests).
    #[serde(skip)]
    pub hash: String,
    /// Fixtures run by `deriver test`.
    #[serde(skip)]
    pub tests: Vec<TestCase>,
    /// Every SQL fragment of the file with its position, to map Postgres errors back to YAML.
    #[serde(skip)]
    pub fragments: Vec<(String, crate::pipeline::yaml::Pos)>,
}

/// One `tests:` fixture: rows per table, the records expected from them.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    /// Line of the test in the file.
    pub line: u64,
    pub given: Vec<(TableName, Vec<serde_json::Map<String, serde_json::Value>>)>,
    /// Each must match (as a subset) a distinct derived record.
    pub records: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Keys (key text) that must produce no record.
    pub absent: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub table: TableName,
    /// How SQL expressions refer to the source table (`source.as`, default: the table name).
    pub alias: String,
    /// Key columns; `None` means the table's primary key (resolved against the catalog).
    pub key: Option<Vec<String>>,
    pub filter: Option<String>,
}

/// One `a.x = b.y` term of an `on` condition, resolved to relation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Equality {
    /// Column of the relation that owns the `on` (the lookup, child or link table).
    pub this: String,
    /// The relation it joins to (the source alias, a lookup alias or the link table).
    pub parent: String,
    pub parent_column: String,
}

/// `lookups.<alias>`: at most one row per source row (N:1).
#[derive(Debug, Clone, Serialize)]
pub struct Lookup {
    pub alias: String,
    pub table: TableName,
    pub on: Vec<Equality>,
}

/// The link table of a child relation (`via`).
#[derive(Debug, Clone, Serialize)]
pub struct Via {
    pub table: TableName,
    /// How SQL refers to the link table (its table name).
    pub alias: String,
    /// Equalities between the link table and the source.
    pub on: Vec<Equality>,
}

/// `children.<alias>`: many rows per source row (1:N), optionally through a link table.
#[derive(Debug, Clone, Serialize)]
pub struct Child {
    pub alias: String,
    pub table: TableName,
    /// How SQL (`agg`, `filter`) refers to the child table inside its subquery (its table name).
    pub sql_alias: String,
    /// Equalities between the child and its parent (the source, or the link table with `via`).
    pub on: Vec<Equality>,
    pub via: Option<Via>,
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    pub sql: String,
    /// Optional declared type (`i64`, `f64`, `text`, …) from the long form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// An aggregate over one child relation (`child`, `agg`, `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agg: Option<Aggregate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub child: String,
    pub agg: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    DeadLetter,
    Stop,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchTarget {
    pub index: String,
    pub id: String,
    pub fields: Vec<SearchField>,
    pub default_search_fields: Vec<String>,
    /// Query-time settings (synonyms, stop words, prefix search, typos, distinct): not part of
    /// the index, so not of its definition hash either.
    #[serde(skip)]
    pub relevance: crate::pipeline::relevance::Relevance,
    /// `provenance: true`: each document's `_source` also carries `_lsn` and `_version` (see
    /// [`PROVENANCE_FIELDS`]). Hashed only when on, so existing definitions keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub provenance: bool,
}

/// The fields a target with `provenance: true` adds to every record it writes: the commit LSN
/// (`X/Y`) of the batch that wrote it, and the short hash of the definition that derived it.
/// Output field names cannot start with `_`, so they never clash with a pipeline's own fields.
pub const LSN_FIELD: &str = "_lsn";
pub const VERSION_FIELD: &str = "_version";
pub const PROVENANCE_FIELDS: [&str; 2] = [LSN_FIELD, VERSION_FIELD];

/// How many hex digits of a definition hash `_version` keeps (48 bits).
pub const VERSION_LEN: usize = 12;

/// `_version` of a definition hash (sha256 hex): its first [`VERSION_LEN`] digits.
pub fn short_version(definition_hash: &str) -> &str {
    &definition_hash[..definition_hash.len().min(VERSION_LEN)]
}

/// The analyzers a `text` field may name: these, or a stemmer language of [`STEMMER_LANGUAGES`].
pub const ANALYZERS: [&str; 4] = ["default", "en_stem", "whitespace", "raw"];

/// The languages a `text` field's analyzer may stem (the search sink maps each to its stemmer).
pub const STEMMER_LANGUAGES: [&str; 18] = [
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
];

pub fn analyzer_known(name: &str) -> bool {
    ANALYZERS.contains(&name) || STEMMER_LANGUAGES.contains(&name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchType {
    Text,
    Keyword,
    I64,
    U64,
    F64,
    Bool,
    Date,
    StoredOnly,
}

impl SearchType {
    pub fn parse(s: &str) -> Option<SearchType> {
        Some(match s {
            "text" => SearchType::Text,
            "keyword" => SearchType::Keyword,
            "i64" => SearchType::I64,
            "u64" => SearchType::U64,
            "f64" => SearchType::F64,
            "bool" => SearchType::Bool,
            "date" => SearchType::Date,
            "stored_only" => SearchType::StoredOnly,
            _ => return None,
        })
    }
    pub fn is_numeric_like(self) -> bool {
        matches!(self, SearchType::I64 | SearchType::U64 | SearchType::F64 | SearchType::Bool | SearchType::Date)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchField {
    pub name: String,
    pub ty: SearchType,
    pub analyzer: String,
    pub stored: bool,
    pub facet: bool,
    pub filterable: bool,
    pub sortable: bool,
    pub boost: f32,
    pub highlight: bool,
    /// The declared `fuzzy`: the most typos a word may have in this field (`None`: as many as
    /// the target's typo tolerance allows). Hashed as before it was optional (absent = 0).
    #[serde(serialize_with = "zero_if_none")]
    pub fuzzy: Option<u8>,
}

fn zero_if_none<S: serde::Serializer>(v: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(v.unwrap_or(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisType {
    Json,
    Hash,
    Set,
    Zset,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisTarget {
    pub key: KeyTemplate,
    pub ty: RedisType,
    /// Output fields written; `None` = all.
    pub fields: Option<Vec<String>>,
    pub notify: bool,
    /// set/zset: the output field whose text is the member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// zset: the output field holding the score (a number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// `provenance: true` (json and hash only): each view also carries `_lsn` and `_version`.
    /// Hashed only when on, so existing definitions keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub provenance: bool,
}

impl RedisTarget {
    /// The name `status` shows for this target: `redis:<template>`.
    pub fn label(&self) -> String {
        format!("redis:{}", self.key.raw)
    }
}

/// A Redis key template such as `film:{film_id}`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyTemplate {
    pub raw: String,
    #[serde(skip)]
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Field(String),
}

impl KeyTemplate {
    pub fn parse(raw: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let close = rest.find('}').ok_or_else(|| format!("unclosed `{{` in key template `{raw}`"))?;
                    let name = &rest[1..close];
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("`{{{name}}}` in key template `{raw}` is not a field name"));
                    }
                    parts.push(TemplatePart::Field(name.to_string()));
                    rest = &rest[close + 1..];
                }
                Some(open) => {
                    parts.push(TemplatePart::Literal(rest[..open].to_string()));
                    rest = &rest[open..];
                }
                None => {
                    if rest.contains('}') {
                        return Err(format!("unmatched `}}` in key template `{raw}`"));
                    }
                    parts.push(TemplatePart::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        if !parts.iter().any(|p| matches!(p, TemplatePart::Field(_))) {
            return Err(format!("key template `{raw}` has no {{field}}: every record would write the same key"));
        }
        if raw.starts_with('_') {
            return Err(format!("key template `{raw}` starts with `_`, which is reserved for deriver's bookkeeping keys"));
        }
        Ok(KeyTemplate { raw: raw.to_string(), parts })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Field(f) => Some(f.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }

    /// Renders the key from the text form of the fields (`None` when a field is NULL: no key).
    pub fn render(&self, text_of: impl Fn(&str) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Field(f) => out.push_str(&text_of(f)?),
            }
        }
        Some(out)
    }
}

fn sha256_hex(v: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

impl Pipeline {
    /// What determines the records themselves (not where they go).
    fn records_definition(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source, "lookups": self.lookups, "children": self.children,
            "fields": self.fields, "on_error": self.on_error,
        })
    }

    /// The definition hash a search target's index is built from: records + that target.
    pub fn search_hash(&self, target: &SearchTarget) -> String {
        sha256_hex(&serde_json::json!({ "records": self.records_definition(), "search": target }))
    }

    /// The definition hash of the pipeline's Redis views: records + every redis target.
    pub fn redis_hash(&self) -> String {
        sha256_hex(&serde_json::json!({ "records": self.records_definition(), "redis": self.redis }))
    }

    /// The definition hash of the dependency ledger: records only.
    pub fn ledger_hash(&self) -> String {
        sha256_hex(&serde_json::json!({ "records": self.records_definition() }))
    }

    /// Output fields whose text form is needed (search id, Redis key templates).
    pub fn text_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |f: &str| {
            if !out.iter().any(|o| o == f) {
                out.push(f.to_string());
            }
        };
        for s in &self.search {
            push(&s.id);
        }
        for r in &self.redis {
            for f in r.key.fields() {
                push(f);
            }
            if let Some(m) = &r.member {
                push(m);
            }
            if let Some(s) = &r.score {
                push(s);
            }
        }
        out
    }

    /// Every table the pipeline reads: the source, lookups, link tables and children.
    pub fn tables(&self) -> Vec<TableName> {
        let mut out = vec![self.source.table.clone()];
        for l in &self.lookups {
            out.push(l.table.clone());
        }
        for c in &self.children {
            if let Some(v) = &c.via {
                out.push(v.table.clone());
            }
            out.push(c.table.clone());
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates_parse_and_render() {
        let t = KeyTemplate::parse("film:{film_id}:x").unwrap();
        assert_eq!(t.parts, vec![TemplatePart::Literal("film:".into()), TemplatePart::Field("film_id".into()), TemplatePart::Literal(":x".into()),]);
        assert_eq!(t.render(|f| (f == "film_id").then(|| "7".to_string())).as_deref(), Some("film:7:x"));
        assert_eq!(t.render(|_| None), None);
        assert!(KeyTemplate::parse("film:{film_id").is_err());
        assert!(KeyTemplate::parse("film").is_err());
        assert!(KeyTemplate::parse("film:{a b}").is_err());
        assert!(KeyTemplate::parse("_meta:{a}").is_err());
    }
}
