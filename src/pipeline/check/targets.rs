//! The `targets:` section: search targets (index, id, fields and their options) and Redis targets
//! (key template, type, fields, member and score).

use std::collections::HashSet;

use super::checker::{get, Checker};
use super::names::valid_name;
use crate::pipeline::yaml::{Key, Node, Value};
use crate::pipeline::{KeyTemplate, RedisTarget, RedisType, SearchField, SearchTarget, SearchType};

pub(super) fn check_search(c: &mut Checker, node: &Node, pipeline: &str, field_names: &HashSet<String>) -> Option<SearchTarget> {
    let allowed: Vec<&str> = ["index", "id", "fields", "default_search_fields", "provenance"].into_iter().chain(super::relevance::KEYS).collect();
    let entries = c.map(node, "a search target", &allowed)?;
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
    let relevance = super::relevance::check(c, entries, &fields);
    let provenance = get(entries, "provenance").and_then(|n| c.boolean(n, "`provenance`")).unwrap_or(false);
    Some(SearchTarget { index, id, fields, default_search_fields, relevance, provenance })
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
            if !crate::pipeline::model::analyzer_known(&a) {
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
        None => None,
        Some(n) => match n.value {
            Value::Int(i @ 0..=2) => Some(i as u8),
            _ => {
                c.err(n.pos, "`fuzzy` is a maximum edit distance: 0, 1 or 2");
                None
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
    if fuzzy.is_some_and(|f| f > 0) && ty != SearchType::Text {
        c.err(key.pos, format!("{what}: `fuzzy` needs `type: text`"));
    }
    Some(SearchField { name: key.name.clone(), ty, analyzer, stored, facet, filterable, sortable, boost, highlight, fuzzy })
}

pub(super) fn check_redis(c: &mut Checker, node: &Node, field_names: &HashSet<String>) -> Option<RedisTarget> {
    let entries = c.map(node, "a redis target", &["key", "type", "fields", "notify", "member", "score", "provenance"])?;
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
            if let Some((k, n)) = entries.iter().find(|(e, _)| e.name == "provenance") {
                if matches!(n.value, Value::Bool(true)) {
                    c.err(
                        k.pos,
                        "`provenance` applies to json and hash targets only (a set or zset holds members and scores, with no room for `_lsn` and `_version`)",
                    );
                }
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
    let provenance = get(entries, "provenance").and_then(|n| c.boolean(n, "`provenance`")).unwrap_or(false);
    Some(RedisTarget { key: key?, ty, fields, notify, member, score, provenance })
}
