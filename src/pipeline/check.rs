//! Turns a pipeline file into a [`Pipeline`], collecting every problem with `file:line:col`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::model::*;
use super::yaml::{self, Key, Node, Pos, Value};
use crate::source::TableName;

/// One problem in a pipeline file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    /// The offending source line, for a caret snippet.
    pub line_text: Option<String>,
    pub warning: bool,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.warning { "warning" } else { "error" };
        write!(f, "{}:{}:{}: {level}: {}", self.file.display(), self.pos.line, self.pos.col, self.message)?;
        if let Some(line) = &self.line_text {
            let pad = " ".repeat(self.pos.col.saturating_sub(1) as usize);
            write!(f, "\n    | {line}\n    | {pad}^")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// A problem found outside the checker (environment checks), at a position of `file`.
    pub fn at(file: &Path, pos: Pos, message: impl Into<String>, warning: bool) -> Diagnostic {
        let line_text =
            std::fs::read_to_string(file).ok().and_then(|t| t.lines().nth(pos.line.saturating_sub(1) as usize).map(str::to_string)).filter(|_| pos.line > 0);
        Diagnostic { file: file.to_path_buf(), pos, message: message.into(), line_text, warning }
    }
}

/// Maps a Postgres error position (1-based, in characters, in `sql`) back to the YAML fragment it
/// falls in.
pub fn locate_sql_error(p: &Pipeline, sql: &str, position: usize) -> Option<Pos> {
    let chars: Vec<char> = sql.chars().collect();
    let at = position.checked_sub(1)?;
    for (fragment, pos) in &p.fragments {
        let f: Vec<char> = fragment.chars().collect();
        if f.is_empty() || f.len() > chars.len() {
            continue;
        }
        for start in 0..=chars.len() - f.len() {
            if chars[start..start + f.len()] == f[..] && (start..start + f.len()).contains(&at) {
                let offset = (at - start) as u64;
                // Single-line fragments: point at the exact character.
                let col = if fragment.contains('\n') { pos.col } else { pos.col + offset };
                return Some(Pos { line: pos.line, col });
            }
        }
    }
    None
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<Diagnostic>,
    /// SQL fragments seen, with their positions.
    fragments: Vec<(String, Pos)>,
}

impl<'a> Checker<'a> {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        let line_text = self.text.lines().nth(pos.line.saturating_sub(1) as usize).map(str::to_string);
        self.errors.push(Diagnostic { file: self.file.to_path_buf(), pos, message: message.into(), line_text, warning: false });
    }

    /// Reads a mapping, reporting keys outside `allowed`.
    fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => {
                for (k, _) in entries {
                    if !allowed.contains(&k.name.as_str()) {
                        self.err(k.pos, format!("unknown key `{}` in {what} (expected one of: {})", k.name, allowed.join(", ")));
                    }
                }
                Some(entries)
            }
            other => {
                self.err(node.pos, format!("{what} must be a mapping, found {}", other.type_name()));
                None
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Str(_) => {
                self.err(node.pos, format!("{what} must not be empty"));
                None
            }
            // SQL fragments like `1` or `true` are fine as expressions.
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err(node.pos, format!("{what} must be a string, found {}", other.type_name()));
                None
            }
        }
    }

    /// A string that is SQL: remembered with its position for error mapping.
    fn sql(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        // Point inside a quoted scalar at its first character.
        let line = self.text.lines().nth(node.pos.line.saturating_sub(1) as usize).unwrap_or("");
        let quoted = matches!(line.chars().nth(node.pos.col.saturating_sub(1) as usize), Some('"') | Some('\''));
        let pos = Pos { line: node.pos.line, col: node.pos.col + u64::from(quoted) };
        self.fragments.push((s.clone(), pos));
        Some(s)
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            ref other => {
                self.err(node.pos, format!("{what} must be true or false, found {}", other.type_name()));
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    if let Some(s) = self.string(item, what) {
                        out.push((s, item.pos));
                    }
                }
                Some(out)
            }
            other => {
                self.err(node.pos, format!("{what} must be a list, found {}", other.type_name()));
                None
            }
        }
    }
}

fn get<'n>(entries: &'n [(Key, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}

/// Parses `schema.table`, `table`, `"Quoted Name"`; unquoted names fold to lower case.
pub fn parse_table_name(text: &str) -> Result<TableName, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut ident = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        ident.push('"');
                    }
                    Some('"') => break,
                    Some(c) => ident.push(c),
                    None => return Err(format!("unclosed quote in table name `{text}`")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return Err(format!("`{text}` is not a table name (quote names with spaces or symbols: \"My Table\")"));
                }
                ident.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if ident.is_empty() {
            return Err(format!("`{text}` is not a table name"));
        }
        parts.push(ident);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(format!("`{text}` is not a table name")),
        }
    }
    match parts.len() {
        1 => Ok(TableName::new("public", parts.remove(0))),
        2 => {
            let name = parts.remove(1);
            Ok(TableName::new(parts.remove(0), name))
        }
        _ => Err(format!("`{text}` is not a table name (use schema.table)")),
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks one pipeline file's text. `Err` carries every problem found.
pub fn check(file: &Path, text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    let mut c = Checker { file, text, errors: Vec::new(), fragments: Vec::new() };
    let root = match yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            c.err(e.pos, format!("invalid YAML: {}", e.message));
            return Err(c.errors);
        }
    };
    let top_keys = ["version", "pipeline", "description", "owner", "source", "lookups", "children", "fields", "targets", "tests", "on_error"];
    let Some(top) = c.map(&root, "the pipeline file", &top_keys) else {
        return Err(c.errors);
    };

    // version
    match get(top, "version") {
        None => c.err(root.pos, "missing required key `version` (use `version: 1`)"),
        Some(n) if matches!(n.value, Value::Int(1)) => {}
        Some(n) => c.err(n.pos, "unsupported `version` (this deriver reads `version: 1`)"),
    }

    // pipeline name = file stem
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let name = match get(top, "pipeline") {
        None => {
            c.err(root.pos, "missing required key `pipeline`");
            stem.clone()
        }
        Some(n) => match c.string(n, "`pipeline`") {
            Some(name) => {
                if !valid_name(&name) {
                    c.err(n.pos, format!("pipeline name `{name}` must match [a-z][a-z0-9_]*"));
                } else if name != stem {
                    c.err(n.pos, format!("pipeline name `{name}` must equal the file name `{stem}`"));
                }
                name
            }
            None => stem.clone(),
        },
    };
    let description = get(top, "description").and_then(|n| c.string(n, "`description`"));
    let owner = get(top, "owner").and_then(|n| c.string(n, "`owner`"));

    // source
    let source = match get(top, "source") {
        None => {
            c.err(root.pos, "missing required key `source`");
            None
        }
        Some(n) => check_source(&mut c, n),
    };
    let source_names: Vec<String> = source
        .as_ref()
        .map(|s| {
            let mut v = vec![s.alias.clone()];
            if s.table.name != s.alias {
                v.push(s.table.name.clone());
            }
            v
        })
        .unwrap_or_default();
    let source_alias = source.as_ref().map(|s| s.alias.clone()).unwrap_or_default();

    // lookups, in order: each may join the source or an earlier lookup
    let mut lookups: Vec<Lookup> = Vec::new();
    if let Some(n) = get(top, "lookups") {
        match &n.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    if !valid_name(&k.name) {
                        c.err(k.pos, format!("lookup alias `{}` must match [a-z][a-z0-9_]*", k.name));
                    }
                    if source_names.contains(&k.name) || lookups.iter().any(|l| l.alias == k.name) {
                        c.err(k.pos, format!("alias `{}` is already used", k.name));
                    }
                    let mut parents: Vec<(String, String)> = source_names.iter().map(|n| (n.clone(), source_alias.clone())).collect();
                    parents.extend(lookups.iter().map(|l| (l.alias.clone(), l.alias.clone())));
                    if let Some(l) = check_lookup(&mut c, k, v, &parents) {
                        lookups.push(l);
                    }
                }
            }
            other => c.err(n.pos, format!("`lookups` must be a mapping of alias → {{table, on}}, found {}", other.type_name())),
        }
    }

    let mut children: Vec<Child> = Vec::new();
    if let Some(n) = get(top, "children") {
        match &n.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    if !valid_name(&k.name) {
                        c.err(k.pos, format!("child alias `{}` must match [a-z][a-z0-9_]*", k.name));
                    }
                    if source_names.contains(&k.name) || lookups.iter().any(|l| l.alias == k.name) || children.iter().any(|x| x.alias == k.name) {
                        c.err(k.pos, format!("alias `{}` is already used", k.name));
                    }
                    let parents: Vec<(String, String)> = source_names.iter().map(|n| (n.clone(), source_alias.clone())).collect();
                    if let Some(ch) = check_child(&mut c, k, v, &parents) {
                        children.push(ch);
                    }
                }
            }
            other => c.err(n.pos, format!("`children` must be a mapping of alias → {{table, on}}, found {}", other.type_name())),
        }
    }

    // fields
    let mut fields: Vec<Field> = Vec::new();
    match get(top, "fields") {
        None => c.err(root.pos, "missing required key `fields`"),
        Some(n) => match &n.value {
            Value::Map(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    if !valid_name(&k.name) {
                        c.err(k.pos, format!("field name `{}` must match [a-z][a-z0-9_]*", k.name));
                    }
                    if let Some(f) = check_field(&mut c, k, v, &children) {
                        fields.push(f);
                    }
                }
            }
            Value::Map(_) => c.err(n.pos, "`fields` must list at least one field"),
            other => c.err(n.pos, format!("`fields` must be a mapping of name → SQL, found {}", other.type_name())),
        },
    }
    let field_names: HashSet<String> = fields.iter().map(|f| f.name.clone()).collect();

    // targets
    let mut search = Vec::new();
    let mut redis = Vec::new();
    match get(top, "targets") {
        None => c.err(root.pos, "missing required key `targets`"),
        Some(n) => match &n.value {
            Value::Seq(items) if !items.is_empty() => {
                for item in items {
                    let Some(entries) = c.map(item, "a target", &["search", "redis"]) else { continue };
                    if entries.len() != 1 {
                        c.err(item.pos, "each target is either `search:` or `redis:`");
                        continue;
                    }
                    let (k, v) = &entries[0];
                    match k.name.as_str() {
                        "search" => {
                            if let Some(t) = check_search(&mut c, v, &name, &field_names) {
                                search.push(t);
                            }
                        }
                        "redis" => {
                            if let Some(t) = check_redis(&mut c, v, &field_names) {
                                redis.push(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Value::Seq(_) => c.err(n.pos, "`targets` must list at least one target"),
            other => c.err(n.pos, format!("`targets` must be a list, found {}", other.type_name())),
        },
    }
    let mut seen_index = HashSet::new();
    for t in &search {
        if !seen_index.insert(t.index.clone()) {
            c.err(root.pos, format!("two search targets write the index `{}`", t.index));
        }
    }
    let mut seen_keys = HashSet::new();
    for t in &redis {
        if !seen_keys.insert(t.key.raw.clone()) {
            c.err(root.pos, format!("two redis targets use the key template `{}`", t.key.raw));
        }
    }

    let on_error = match get(top, "on_error") {
        None => OnError::DeadLetter,
        Some(n) => match c.string(n, "`on_error`").as_deref() {
            Some("dead_letter") | None => OnError::DeadLetter,
            Some("stop") => OnError::Stop,
            Some(other) => {
                c.err(n.pos, format!("`on_error` must be `dead_letter` or `stop`, not `{other}`"));
                OnError::DeadLetter
            }
        },
    };

    let tests = match get(top, "tests") {
        None => Vec::new(),
        Some(n) => check_tests(&mut c, n),
    };

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let mut pipeline = Pipeline {
        name,
        file: file.to_path_buf(),
        description,
        owner,
        source: source.expect("no errors means a source"),
        lookups,
        children,
        fields,
        search,
        redis,
        on_error,
        hash: String::new(),
        tests,
        fragments: std::mem::take(&mut c.fragments),
    };
    pipeline.hash = definition_hash(&pipeline);
    Ok(pipeline)
}

/// A YAML node as JSON (fixture rows and expected records).
pub fn node_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(node_to_json).collect()),
        Value::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.name.clone(), node_to_json(v))).collect()),
    }
}

fn check_tests(c: &mut Checker, node: &Node) -> Vec<TestCase> {
    let Value::Seq(items) = &node.value else {
        c.err(node.pos, format!("`tests` must be a list, found {}", node.value.type_name()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let Some(entries) = c.map(item, "a test", &["name", "given", "expect"]) else { continue };
        let name = get(entries, "name").and_then(|n| c.string(n, "`name`")).unwrap_or_else(|| format!("test at line {}", item.pos.line));
        let mut given = Vec::new();
        match get(entries, "given") {
            None => c.err(item.pos, format!("test `{name}` needs `given` (rows per table)")),
            Some(g) => match &g.value {
                Value::Map(tables) => {
                    for (k, rows) in tables {
                        let table = match parse_table_name(&k.name) {
                            Ok(t) => t,
                            Err(e) => {
                                c.err(k.pos, e);
                                continue;
                            }
                        };
                        let Value::Seq(rows) = &rows.value else {
                            c.err(rows.pos, format!("rows of {table} must be a list of mappings"));
                            continue;
                        };
                        let mut parsed = Vec::new();
                        for r in rows {
                            match node_to_json(r) {
                                serde_json::Value::Object(m) => parsed.push(m),
                                _ => c.err(r.pos, "a row must be a mapping of column → value"),
                            }
                        }
                        given.push((table, parsed));
                    }
                }
                other => c.err(g.pos, format!("`given` must be a mapping of table → rows, found {}", other.type_name())),
            },
        }
        let mut records = Vec::new();
        let mut absent = Vec::new();
        match get(entries, "expect") {
            None => c.err(item.pos, format!("test `{name}` needs `expect` (`record`, `records` or `absent`)")),
            Some(e) => {
                if let Some(ex) = c.map(e, "`expect`", &["record", "records", "absent"]) {
                    if let Some(r) = get(ex, "record") {
                        match node_to_json(r) {
                            serde_json::Value::Object(m) => records.push(m),
                            _ => c.err(r.pos, "`record` must be a mapping of field → value"),
                        }
                    }
                    if let Some(rs) = get(ex, "records") {
                        match node_to_json(rs) {
                            serde_json::Value::Array(list) => {
                                for v in list {
                                    match v {
                                        serde_json::Value::Object(m) => records.push(m),
                                        _ => c.err(rs.pos, "`records` must be a list of mappings"),
                                    }
                                }
                            }
                            _ => c.err(rs.pos, "`records` must be a list of mappings"),
                        }
                    }
                    if let Some(a) = get(ex, "absent") {
                        match node_to_json(a) {
                            serde_json::Value::Array(list) => absent.extend(list.iter().map(|v| match v {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })),
                            _ => c.err(a.pos, "`absent` must be a list of keys"),
                        }
                    }
                }
            }
        }
        out.push(TestCase { name, line: item.pos.line, given, records, absent });
    }
    out
}

/// sha256 over the normalized definition (serde form skips description, owner, tests, file).
pub fn definition_hash(p: &Pipeline) -> String {
    let json = serde_json::to_string(p).expect("a pipeline serializes");
    hex::encode(Sha256::digest(json.as_bytes()))
}

fn check_source(c: &mut Checker, node: &Node) -> Option<Source> {
    let entries = c.map(node, "`source`", &["table", "key", "filter", "as"])?;
    let table = match get(entries, "table") {
        None => {
            c.err(node.pos, "`source` needs a `table`");
            None
        }
        Some(n) => c.string(n, "`source.table`").and_then(|t| match parse_table_name(&t) {
            Ok(t) => Some(t),
            Err(e) => {
                c.err(n.pos, e);
                None
            }
        }),
    };
    let key = match get(entries, "key") {
        None => None,
        Some(n) => match &n.value {
            Value::Seq(_) => c.string_list(n, "`source.key` columns").map(|v| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>()),
            _ => c.string(n, "`source.key`").map(|s| vec![s]),
        }
        .map(|cols| cols.into_iter().map(|col| unquote_column(&col)).collect::<Vec<_>>()),
    };
    if let Some(k) = &key {
        if k.is_empty() {
            c.err(node.pos, "`source.key` must name at least one column");
        }
    }
    let filter = get(entries, "filter").and_then(|n| c.sql(n, "`source.filter`"));
    let alias = get(entries, "as").and_then(|n| c.string(n, "`source.as`"));
    let table = table?;
    let alias = alias.unwrap_or_else(|| table.name.clone());
    Some(Source { table, alias, key, filter })
}

/// `film_id` → `film_id`; `"Order ID"` → `Order ID`; unquoted names fold to lower case.
fn unquote_column(col: &str) -> String {
    let col = col.trim();
    if col.len() >= 2 && col.starts_with('"') && col.ends_with('"') {
        col[1..col.len() - 1].replace("\"\"", "\"")
    } else {
        col.to_ascii_lowercase()
    }
}

fn check_field(c: &mut Checker, key: &Key, node: &Node, children: &[Child]) -> Option<Field> {
    match &node.value {
        Value::Map(_) => {
            let entries = c.map(node, &format!("field `{}`", key.name), &["sql", "type", "child", "agg", "default"])?;
            let ty = match get(entries, "type") {
                None => None,
                Some(n) => {
                    let t = c.string(n, "`type`")?;
                    if SearchType::parse(&t).is_none() && !matches!(t.as_str(), "json" | "string") {
                        c.err(n.pos, format!("unknown type `{t}` (expected text, keyword, i64, u64, f64, bool, date, json)"));
                    }
                    Some(t)
                }
            };
            if let Some(child_node) = get(entries, "child") {
                let child = c.string(child_node, "`child`")?;
                if !children.iter().any(|ch| ch.alias == child) {
                    c.err(child_node.pos, format!("`child` names `{child}`, which is not declared under `children`"));
                }
                if let Some(n) = get(entries, "sql") {
                    c.err(n.pos, "an aggregate field has `agg`, not `sql`");
                }
                let agg = match get(entries, "agg") {
                    Some(n) => c.sql(n, "`agg`")?,
                    None => {
                        c.err(node.pos, format!("aggregate field `{}` needs `agg` (e.g. \"count(*)\")", key.name));
                        return None;
                    }
                };
                let default = get(entries, "default").and_then(|n| c.sql(n, "`default`"));
                return Some(Field { name: key.name.clone(), sql: String::new(), ty, agg: Some(Aggregate { child, agg, default }) });
            }
            for k in ["agg", "default"] {
                if let Some((kk, _)) = entries.iter().find(|(e, _)| e.name == k) {
                    c.err(kk.pos, format!("`{k}` needs `child` (the child relation to aggregate)"));
                }
            }
            let sql = match get(entries, "sql") {
                Some(n) => c.sql(n, &format!("`{}.sql`", key.name))?,
                None => {
                    c.err(node.pos, format!("field `{}` needs `sql`", key.name));
                    return None;
                }
            };
            Some(Field { name: key.name.clone(), sql, ty, agg: None })
        }
        _ => {
            let sql = c.sql(node, &format!("field `{}`", key.name))?;
            Some(Field { name: key.name.clone(), sql, ty: None, agg: None })
        }
    }
}

/// `rel.col`, as (relation, column).
pub type ColumnRef = (String, String);

/// Splits an `on` condition into `rel.col = rel.col` terms joined by AND.
pub fn parse_on(text: &str) -> Result<Vec<(ColumnRef, ColumnRef)>, String> {
    #[derive(Debug, PartialEq)]
    enum Tok {
        Ident(String),
        Dot,
        Eq,
        And,
        Open,
        Close,
    }
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '.' {
            toks.push(Tok::Dot);
            i += 1;
        } else if ch == '=' {
            toks.push(Tok::Eq);
            i += 1;
        } else if ch == '(' {
            toks.push(Tok::Open);
            i += 1;
        } else if ch == ')' {
            toks.push(Tok::Close);
            i += 1;
        } else if ch == '"' {
            let mut id = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        id.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        id.push(c);
                        i += 1;
                    }
                    None => return Err("unclosed quote".into()),
                }
            }
            toks.push(Tok::Ident(id));
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.eq_ignore_ascii_case("and") {
                toks.push(Tok::And);
            } else {
                toks.push(Tok::Ident(word.to_lowercase()));
            }
        } else {
            return Err(format!("unexpected `{ch}`: `on` must be column equalities (`a.x = b.y AND …`)"));
        }
    }
    let toks: Vec<Tok> = toks.into_iter().filter(|t| *t != Tok::Open && *t != Tok::Close).collect();
    let mut out = Vec::new();
    let mut pos = 0;
    let col = |pos: &mut usize| -> Result<(String, String), String> {
        match (toks.get(*pos), toks.get(*pos + 1), toks.get(*pos + 2)) {
            (Some(Tok::Ident(r)), Some(Tok::Dot), Some(Tok::Ident(c))) => {
                *pos += 3;
                Ok((r.clone(), c.clone()))
            }
            _ => Err("`on` must be column equalities of the form `relation.column = relation.column`, joined by AND".into()),
        }
    };
    loop {
        let a = col(&mut pos)?;
        if toks.get(pos) != Some(&Tok::Eq) {
            return Err("`on` must be column equalities of the form `relation.column = relation.column`, joined by AND".into());
        }
        pos += 1;
        let b = col(&mut pos)?;
        out.push((a, b));
        match toks.get(pos) {
            None => break,
            Some(Tok::And) => pos += 1,
            Some(_) => return Err("`on` must be column equalities joined by AND".into()),
        }
    }
    Ok(out)
}

/// Resolves an `on` against `this` relation's names and its possible parents `(name, canonical)`.
fn resolve_on(c: &mut Checker, node: &Node, text: &str, this_names: &[String], parents: &[(String, String)], what: &str) -> Option<Vec<Equality>> {
    let terms = match parse_on(text) {
        Ok(t) => t,
        Err(e) => {
            c.err(node.pos, format!("{what}: {e}"));
            return None;
        }
    };
    let mut out = Vec::new();
    for (a, b) in terms {
        let side = |r: &(String, String)| {
            if this_names.contains(&r.0) {
                Some(None)
            } else {
                parents.iter().find(|(n, _)| *n == r.0).map(|(_, canon)| Some(canon.clone()))
            }
        };
        match (side(&a), side(&b)) {
            (Some(None), Some(Some(p))) => out.push(Equality { this: a.1, parent: p, parent_column: b.1 }),
            (Some(Some(p)), Some(None)) => out.push(Equality { this: b.1, parent: p, parent_column: a.1 }),
            _ => {
                let known: Vec<&str> = this_names.iter().map(String::as_str).chain(parents.iter().map(|(n, _)| n.as_str())).collect();
                c.err(
                    node.pos,
                    format!(
                        "{what}: `{}.{} = {}.{}` must join {} to one of {} (known names: {})",
                        a.0,
                        a.1,
                        b.0,
                        b.1,
                        this_names[0],
                        parents.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                        known.join(", ")
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}

fn table_of(c: &mut Checker, entries: &[(Key, Node)], node: &Node, what: &str) -> Option<TableName> {
    match get(entries, "table") {
        None => {
            c.err(node.pos, format!("{what} needs a `table`"));
            None
        }
        Some(n) => c.string(n, "`table`").and_then(|t| match parse_table_name(&t) {
            Ok(t) => Some(t),
            Err(e) => {
                c.err(n.pos, e);
                None
            }
        }),
    }
}

fn check_lookup(c: &mut Checker, key: &Key, node: &Node, parents: &[(String, String)]) -> Option<Lookup> {
    let what = format!("lookup `{}`", key.name);
    let entries = c.map(node, &what, &["table", "on"])?;
    let table = table_of(c, entries, node, &what);
    let on_node = match get(entries, "on") {
        Some(n) => n,
        None => {
            c.err(node.pos, format!("{what} needs `on` (e.g. \"film.language_id = language.language_id\")"));
            return None;
        }
    };
    let on_text = c.string(on_node, "`on`")?;
    let on = resolve_on(c, on_node, &on_text, std::slice::from_ref(&key.name), parents, &format!("{what} `on`"))?;
    Some(Lookup { alias: key.name.clone(), table: table?, on })
}

fn check_child(c: &mut Checker, key: &Key, node: &Node, source: &[(String, String)]) -> Option<Child> {
    let what = format!("child `{}`", key.name);
    let entries = c.map(node, &what, &["table", "on", "via", "filter"])?;
    let table = table_of(c, entries, node, &what)?;
    let filter = get(entries, "filter").and_then(|n| c.sql(n, "`filter`"));
    let via = match get(entries, "via") {
        None => None,
        Some(vn) => {
            let ventries = c.map(vn, &format!("{what} `via`"), &["table", "on"])?;
            let vtable = table_of(c, ventries, vn, &format!("{what} `via`"))?;
            let von_node = match get(ventries, "on") {
                Some(n) => n,
                None => {
                    c.err(vn.pos, format!("{what} `via` needs `on` joining the link table to the source"));
                    return None;
                }
            };
            let text = c.string(von_node, "`on`")?;
            let on = resolve_on(c, von_node, &text, std::slice::from_ref(&vtable.name), source, &format!("{what} `via.on`"))?;
            Some(Via { alias: vtable.name.clone(), table: vtable, on })
        }
    };
    let on_node = match get(entries, "on") {
        Some(n) => n,
        None => {
            c.err(node.pos, format!("{what} needs `on`"));
            return None;
        }
    };
    let text = c.string(on_node, "`on`")?;
    let this_names = vec![key.name.clone(), table.name.clone()];
    let parents: Vec<(String, String)> = match &via {
        Some(v) => vec![(v.alias.clone(), v.alias.clone())],
        None => source.to_vec(),
    };
    let on = resolve_on(c, on_node, &text, &this_names, &parents, &format!("{what} `on`"))?;
    Some(Child { alias: key.name.clone(), sql_alias: table.name.clone(), table, on, via, filter })
}

fn check_search(c: &mut Checker, node: &Node, pipeline: &str, field_names: &HashSet<String>) -> Option<SearchTarget> {
    let entries = c.map(node, "a search target", &["index", "id", "fields", "default_search_fields"])?;
    let index = match get(entries, "index") {
        None => pipeline.to_string(),
        Some(n) => {
            let s = c.string(n, "`index`")?;
            if !valid_name(&s) {
                c.err(n.pos, format!("index name `{s}` must match [a-z][a-z0-9_]*"));
            }
            s
        }
    };
    let id = match get(entries, "id") {
        None => {
            c.err(node.pos, "a search target needs `id` (the output field that identifies the document)");
            return None;
        }
        Some(n) => {
            let id = c.string(n, "`id`")?;
            if !field_names.contains(&id) {
                c.err(n.pos, format!("`id` names `{id}`, which is not an output field"));
            }
            id
        }
    };
    let mut fields = Vec::new();
    match get(entries, "fields") {
        None => c.err(node.pos, "a search target needs `fields`"),
        Some(n) => {
            if let Value::Map(fentries) = &n.value {
                for (k, v) in fentries {
                    if !field_names.contains(&k.name) {
                        c.err(k.pos, format!("search field `{}` is not an output field", k.name));
                    }
                    if let Some(f) = check_search_field(c, k, v) {
                        fields.push(f);
                    }
                }
            } else {
                c.err(n.pos, format!("search `fields` must be a mapping, found {}", n.value.type_name()));
            }
        }
    }
    let default_search_fields = match get(entries, "default_search_fields") {
        None => fields.iter().filter(|f| f.ty == SearchType::Text).map(|f| f.name.clone()).collect(),
        Some(n) => {
            let list = c.string_list(n, "`default_search_fields`")?;
            for (name, pos) in &list {
                match fields.iter().find(|f| &f.name == name) {
                    Some(f) if matches!(f.ty, SearchType::Text | SearchType::Keyword) => {}
                    Some(_) => c.err(*pos, format!("`{name}` is not a text or keyword field, so it cannot be searched by default")),
                    None => c.err(*pos, format!("`{name}` is not a field of this search target")),
                }
            }
            list.into_iter().map(|(s, _)| s).collect()
        }
    };
    Some(SearchTarget { index, id, fields, default_search_fields })
}

fn check_search_field(c: &mut Checker, key: &Key, node: &Node) -> Option<SearchField> {
    let what = format!("search field `{}`", key.name);
    let entries = c.map(node, &what, &["type", "analyzer", "stored", "facet", "filterable", "sortable", "boost", "highlight", "fuzzy"])?;
    let ty = match get(entries, "type") {
        None => {
            c.err(node.pos, format!("{what} needs a `type`"));
            return None;
        }
        Some(n) => {
            let t = c.string(n, "`type`")?;
            match SearchType::parse(&t) {
                Some(ty) => ty,
                None => {
                    c.err(n.pos, format!("unknown search type `{t}` (expected text, keyword, i64, u64, f64, bool, date, stored_only)"));
                    return None;
                }
            }
        }
    };
    let flag = |c: &mut Checker, name: &str| get(entries, name).and_then(|n| c.boolean(n, &format!("`{name}`"))).unwrap_or(false);
    let stored = flag(c, "stored");
    let facet = flag(c, "facet");
    let filterable = flag(c, "filterable");
    let sortable = flag(c, "sortable");
    let highlight = flag(c, "highlight");
    let analyzer = match get(entries, "analyzer") {
        None => "default".to_string(),
        Some(n) => {
            let a = c.string(n, "`analyzer`")?;
            if ty != SearchType::Text {
                c.err(n.pos, "`analyzer` applies to `text` fields only");
            }
            if !super::model::analyzer_known(&a) {
                c.err(n.pos, format!("unknown analyzer `{a}` (default, en_stem, whitespace, raw, or a stemmer language such as french)"));
            }
            a
        }
    };
    let boost = match get(entries, "boost") {
        None => 1.0,
        Some(n) => match n.value {
            Value::Float(f) if f > 0.0 => f as f32,
            Value::Int(i) if i > 0 => i as f32,
            _ => {
                c.err(n.pos, "`boost` must be a positive number");
                1.0
            }
        },
    };
    let fuzzy = match get(entries, "fuzzy") {
        None => 0,
        Some(n) => match n.value {
            Value::Int(i @ 0..=2) => i as u8,
            _ => {
                c.err(n.pos, "`fuzzy` is a maximum edit distance: 0, 1 or 2");
                0
            }
        },
    };
    if facet && ty != SearchType::Keyword {
        c.err(key.pos, format!("{what}: `facet` needs `type: keyword`"));
    }
    if (sortable || filterable) && matches!(ty, SearchType::Text | SearchType::StoredOnly) {
        c.err(
            key.pos,
            format!(
                "{what}: a `{}` field cannot be filterable or sortable (use keyword or a numeric type)",
                if ty == SearchType::Text { "text" } else { "stored_only" }
            ),
        );
    }
    if highlight && ty != SearchType::Text {
        c.err(key.pos, format!("{what}: `highlight` needs `type: text`"));
    }
    if highlight && !stored {
        c.err(key.pos, format!("{what}: `highlight` needs `stored: true`"));
    }
    if fuzzy > 0 && ty != SearchType::Text {
        c.err(key.pos, format!("{what}: `fuzzy` needs `type: text`"));
    }
    Some(SearchField { name: key.name.clone(), ty, analyzer, stored, facet, filterable, sortable, boost, highlight, fuzzy })
}

fn check_redis(c: &mut Checker, node: &Node, field_names: &HashSet<String>) -> Option<RedisTarget> {
    let entries = c.map(node, "a redis target", &["key", "type", "fields", "notify", "member", "score"])?;
    let key = match get(entries, "key") {
        None => {
            c.err(node.pos, "a redis target needs `key` (a template such as \"film:{film_id}\")");
            None
        }
        Some(n) => c.string(n, "`key`").and_then(|raw| match KeyTemplate::parse(&raw) {
            Ok(t) => {
                for f in t.fields() {
                    if !field_names.contains(f) {
                        c.err(n.pos, format!("key template uses `{{{f}}}`, which is not an output field"));
                    }
                }
                Some(t)
            }
            Err(e) => {
                c.err(n.pos, e);
                None
            }
        }),
    };
    let ty = match get(entries, "type") {
        None => RedisType::Json,
        Some(n) => match c.string(n, "`type`").as_deref() {
            Some("json") => RedisType::Json,
            Some("hash") => RedisType::Hash,
            Some("set") => RedisType::Set,
            Some("zset") => RedisType::Zset,
            Some(other) => {
                c.err(n.pos, format!("unknown redis type `{other}` (expected json, hash, set, zset)"));
                return None;
            }
            None => return None,
        },
    };
    let field_ref = |c: &mut Checker, name: &str| -> Option<String> {
        let n = get(entries, name)?;
        let f = c.string(n, &format!("`{name}`"))?;
        if !field_names.contains(&f) {
            c.err(n.pos, format!("`{name}` names `{f}`, which is not an output field"));
        }
        Some(f)
    };
    let member = field_ref(c, "member");
    let score = field_ref(c, "score");
    match ty {
        RedisType::Set | RedisType::Zset => {
            if member.is_none() {
                c.err(node.pos, "a set or zset target needs `member` (the output field whose text is the member)");
            }
            if ty == RedisType::Zset && score.is_none() {
                c.err(node.pos, "a zset target needs `score` (a numeric output field)");
            }
            if ty == RedisType::Set && score.is_some() {
                c.err(node.pos, "`score` applies to zset targets only");
            }
            if let Some((k, _)) = entries.iter().find(|(e, _)| e.name == "fields") {
                c.err(k.pos, "`fields` applies to json and hash targets only");
            }
        }
        _ => {
            for k in ["member", "score"] {
                if let Some((key, _)) = entries.iter().find(|(e, _)| e.name == k) {
                    c.err(key.pos, format!("`{k}` applies to set and zset targets only"));
                }
            }
        }
    }
    let fields = match get(entries, "fields") {
        None => None,
        Some(n) => {
            let list = c.string_list(n, "`fields`")?;
            for (f, pos) in &list {
                if !field_names.contains(f) {
                    c.err(*pos, format!("`{f}` is not an output field"));
                }
            }
            Some(list.into_iter().map(|(s, _)| s).collect())
        }
    };
    let notify = get(entries, "notify").and_then(|n| c.boolean(n, "`notify`")).unwrap_or(false);
    Some(RedisTarget { key: key?, ty, fields, notify, member, score })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILMS: &str = r#"version: 1
pipeline: films
description: Films for search
source:
  table: public.film
  key: film_id
  filter: film.rating <> 'NC-17'
fields:
  film_id: film.film_id
  title: film.title
  rate: { sql: film.rental_rate, type: f64 }
targets:
  - search:
      id: film_id
      fields:
        title: { type: text, stored: true, highlight: true }
        rate: { type: f64, sortable: true, stored: true }
  - redis:
      key: "film:{film_id}"
      type: json
"#;

    #[test]
    fn a_good_file_checks() {
        let p = check(Path::new("pipelines/films.yaml"), FILMS).unwrap();
        assert_eq!(p.name, "films");
        assert_eq!(p.source.table, TableName::new("public", "film"));
        assert_eq!(p.source.key, Some(vec!["film_id".to_string()]));
        assert_eq!(p.fields.len(), 3);
        assert_eq!(p.search[0].index, "films");
        assert_eq!(p.search[0].default_search_fields, vec!["title".to_string()]);
        assert_eq!(p.redis[0].key.raw, "film:{film_id}");
        assert_eq!(p.hash.len(), 64);
    }

    #[test]
    fn hash_ignores_description_but_not_fields() {
        let a = check(Path::new("films.yaml"), FILMS).unwrap();
        let b = check(Path::new("films.yaml"), &FILMS.replace("Films for search", "Other words")).unwrap();
        let c = check(Path::new("films.yaml"), &FILMS.replace("title: film.title", "title: upper(film.title)")).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let bad = FILMS.replace("  key: film_id\n", "  key: film_id\n  colour: red\n").replace("id: film_id", "id: nope").replace("type: json", "type: list");
        let errs = check(Path::new("pipelines/films.yaml"), &bad).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("pipelines/films.yaml:7:3: error: unknown key `colour`"), "{}", text[0]);
        assert!(text[1].starts_with("pipelines/films.yaml:15:11: error: `id` names `nope`"), "{}", text[1]);
        assert!(text[2].contains("unknown redis type `list`"), "{}", text[2]);
        assert!(text[0].contains("\n    |   colour: red\n    |   ^"), "{}", text[0]);
    }

    #[test]
    fn name_must_match_file() {
        let errs = check(Path::new("pipelines/movies.yaml"), FILMS).unwrap_err();
        assert!(errs[0].to_string().contains("must equal the file name `movies`"));
        assert_eq!(errs[0].pos.line, 2);
    }

    #[test]
    fn table_names() {
        assert_eq!(parse_table_name("film").unwrap(), TableName::new("public", "film"));
        assert_eq!(parse_table_name("Sales.Orders").unwrap(), TableName::new("sales", "orders"));
        assert_eq!(parse_table_name("\"Order Details\"").unwrap(), TableName::new("public", "Order Details"));
        assert_eq!(parse_table_name("s.\"x; drop table y\"").unwrap(), TableName::new("s", "x; drop table y"));
        assert!(parse_table_name("a.b.c").is_err());
        assert!(parse_table_name("a b").is_err());
        assert!(parse_table_name("\"open").is_err());
    }
}
