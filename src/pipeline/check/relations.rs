//! The relations a pipeline reads: its `source`, its `lookups` (one row joined per record) and its
//! `children` (many rows, aggregated, optionally through a link table).

use super::checker::{get, Checker};
use super::join::resolve_on;
use super::names::{parse_table_name, unquote_column};
use crate::pipeline::yaml::{Key, Node, Value};
use crate::pipeline::{Child, Lookup, Source, Via};
use crate::source::TableName;

pub(super) fn check_source(c: &mut Checker, node: &Node) -> Option<Source> {
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

pub(super) fn check_lookup(c: &mut Checker, key: &Key, node: &Node, parents: &[(String, String)]) -> Option<Lookup> {
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

pub(super) fn check_child(c: &mut Checker, key: &Key, node: &Node, source: &[(String, String)]) -> Option<Child> {
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
