//! The `tests:` section of a pipeline file: fixture rows per table and the records (or absent
//! keys) they must derive to.

use super::checker::{get, Checker};
use super::names::parse_table_name;
use crate::pipeline::yaml::{Node, Value};
use crate::pipeline::TestCase;

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

pub(super) fn check_tests(c: &mut Checker, node: &Node) -> Vec<TestCase> {
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
