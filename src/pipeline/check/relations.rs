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
    let this_names = vec![key.name.clone(), table.name.clone()];
    let child_on = get(entries, "on");
    // With `via` and no child-level `on` (the spec's form), `via.on` holds both joins.
    let mut joined_in_via: Option<(&Node, Option<String>)> = None;
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
            let (link_text, child_text) = if child_on.is_some() { (text, None) } else { split_via_on(&text, &this_names) };
            if child_on.is_none() {
                joined_in_via = Some((von_node, child_text));
            }
            let on = resolve_on(c, von_node, &link_text, std::slice::from_ref(&vtable.name), source, &format!("{what} `via.on`"))?;
            Some(Via { alias: vtable.name.clone(), table: vtable, on })
        }
    };
    let parents: Vec<(String, String)> = match &via {
        Some(v) => vec![(v.alias.clone(), v.alias.clone())],
        None => source.to_vec(),
    };
    let on = match (child_on, joined_in_via) {
        (Some(on_node), _) => {
            let text = c.string(on_node, "`on`")?;
            resolve_on(c, on_node, &text, &this_names, &parents, &format!("{what} `on`"))?
        }
        (None, Some((von_node, Some(text)))) => resolve_on(c, von_node, &text, &this_names, &parents, &format!("{what} `via.on`"))?,
        (None, Some((von_node, None))) => {
            let link = via.as_ref().map_or(String::new(), |v| v.alias.clone());
            c.err(
                von_node.pos,
                format!(
                    "{what} `via.on` must also join {link} to {} (e.g. `{link}.{}_id = {}.{}_id`), or the child needs its own `on`",
                    table.name, table.name, table.name, table.name
                ),
            );
            return None;
        }
        (None, None) => {
            c.err(node.pos, format!("{what} needs `on`"));
            return None;
        }
    };
    Some(Child { alias: key.name.clone(), sql_alias: table.name.clone(), table, on, via, filter })
}

/// Splits the spec's one-piece `via.on` (`link.a = source.a AND link.b = child.b`) into the link's
/// join to the source and the child's join to the link: a term naming the child goes to the
/// child. Text that does not parse goes whole to the link's join, which reports the error.
fn split_via_on(text: &str, child_names: &[String]) -> (String, Option<String>) {
    let Ok(terms) = super::join::parse_on(text) else { return (text.to_string(), None) };
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let render = |terms: &[&(super::join::ColumnRef, super::join::ColumnRef)]| {
        terms.iter().map(|(a, b)| format!("{}.{} = {}.{}", quote(&a.0), quote(&a.1), quote(&b.0), quote(&b.1))).collect::<Vec<_>>().join(" AND ")
    };
    let (child, link): (Vec<_>, Vec<_>) = terms.iter().partition(|(a, b)| child_names.contains(&a.0) || child_names.contains(&b.0));
    let child_text = (!child.is_empty()).then(|| render(&child));
    if link.is_empty() {
        return (text.to_string(), child_text);
    }
    (render(&link), child_text)
}
