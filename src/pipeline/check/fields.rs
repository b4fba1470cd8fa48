//! The `fields:` section: one output field, as an SQL expression or an aggregate over a child.

use super::checker::{get, Checker};
use crate::pipeline::yaml::{Key, Node, Value};
use crate::pipeline::{Aggregate, Child, Field, SearchType};

pub(super) fn check_field(c: &mut Checker, key: &Key, node: &Node, children: &[Child]) -> Option<Field> {
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
