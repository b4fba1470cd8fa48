//! Turns a pipeline file into a [`Pipeline`], collecting every problem with `file:line:col`.
//!
//! [`check`] walks the file's top-level keys; each section is checked in a module of its own
//! (`relations`: source, lookups, children; `fields`; `targets`; `test_cases`), reading YAML
//! nodes through the [`checker`]'s typed reads, which record every problem as a [`Diagnostic`].

mod checker;
mod diagnostic;
mod fields;
mod join;
mod names;
mod relations;
pub mod relevance;
mod targets;
mod test_cases;

use std::collections::HashSet;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::model::*;
use super::yaml::{self, Value};
use checker::{get, Checker};
pub use diagnostic::{locate_sql_error, Diagnostic};
use fields::check_field;
pub use join::{parse_on, ColumnRef};
pub use names::parse_table_name;
use names::valid_name;
use relations::{check_child, check_lookup, check_source};
use targets::{check_redis, check_search};
use test_cases::check_tests;
pub use test_cases::node_to_json;

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
                    if PROVENANCE_FIELDS.contains(&k.name.as_str()) {
                        c.err(k.pos, format!("field name `{}` is reserved: a target with `provenance: true` writes it", k.name));
                    } else if !valid_name(&k.name) {
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

/// sha256 over the normalized definition (serde form skips description, owner, tests, file).
pub fn definition_hash(p: &Pipeline) -> String {
    let mut json = serde_json::to_string(p).expect("a pipeline serializes");
    // Query-time relevance settings are not part of any index's definition (no rebuild), but
    // they are part of the pipeline's: a reload applies them. Defaults leave the hash as it was.
    let relevance: Vec<(&str, &crate::pipeline::relevance::Relevance)> =
        p.search.iter().filter(|t| t.relevance != Default::default()).map(|t| (t.index.as_str(), &t.relevance)).collect();
    if !relevance.is_empty() {
        json.push_str(&serde_json::to_string(&relevance).expect("relevance settings serialize"));
    }
    hex::encode(Sha256::digest(json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::TableName;

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

    /// The spec's `via` form (both joins in `via.on`) and the split form (`via.on` to the source,
    /// the child's own `on`) describe the same child; a `via.on` that never joins the child says so.
    #[test]
    fn the_via_form_of_the_spec_equals_the_split_form() {
        let file = |children: &str| {
            format!(
                "version: 1\npipeline: films\nsource: {{ table: film }}\nchildren:\n{children}\nfields:\n  film_id: film.film_id\n  actors: {{ child: actors, agg: \"count(*)\" }}\ntargets:\n  - redis: {{ key: \"film:{{film_id}}\", type: json }}\n"
            )
        };
        let spec = file(
            "  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id AND film_actor.actor_id = actor.actor_id\" }",
        );
        let split = file("  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id\" }\n    on: \"actor.actor_id = film_actor.actor_id\"");
        let a = check(Path::new("pipelines/films.yaml"), &spec).unwrap_or_else(|d| panic!("{d:?}"));
        let b = check(Path::new("pipelines/films.yaml"), &split).unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(serde_json::to_value(&a.children).unwrap(), serde_json::to_value(&b.children).unwrap());
        assert_eq!(a.children[0].via.as_ref().unwrap().on.len(), 1);
        assert_eq!(a.children[0].on.len(), 1);
        // Written the other way round, and with quoted names, it is the same child.
        let swapped = file("  actors:\n    table: actor\n    via: { table: film_actor, on: \"actor.actor_id = \\\"film_actor\\\".actor_id AND film.film_id = film_actor.film_id\" }");
        let c = check(Path::new("pipelines/films.yaml"), &swapped).unwrap_or_else(|d| panic!("{d:?}"));
        assert_eq!(serde_json::to_value(&c.children).unwrap(), serde_json::to_value(&b.children).unwrap());
        // Only the link's join: the message names what is missing, at the `via.on`.
        let missing = file("  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id\" }");
        let errs = check(Path::new("pipelines/films.yaml"), &missing).unwrap_err();
        assert!(errs.iter().any(|d| d.message.contains("`via.on` must also join film_actor to actor")), "{errs:?}");
        // A term joining the child straight to the source is a wrong join, named precisely.
        let wrong =
            file("  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id AND actor.actor_id = film.film_id\" }");
        let errs = check(Path::new("pipelines/films.yaml"), &wrong).unwrap_err();
        assert!(errs.iter().any(|d| d.message.contains("must join actors to one of film_actor")), "{errs:?}");
    }

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
    fn provenance_is_for_json_hash_and_search_targets_and_its_fields_are_reserved() {
        let on = FILMS
            .replace("      type: json\n", "      type: json\n      provenance: true\n")
            .replace("      id: film_id\n", "      id: film_id\n      provenance: true\n");
        let p = check(Path::new("films.yaml"), &on).unwrap_or_else(|d| panic!("{d:?}"));
        assert!(p.redis[0].provenance && p.search[0].provenance);
        let off = check(Path::new("films.yaml"), FILMS).unwrap();
        assert!(!off.redis[0].provenance && !off.search[0].provenance);
        // Turning it on changes what the targets write (and so their definition hashes); off
        // (absent or `false`) leaves every hash as it was before the option existed.
        assert_ne!(p.redis_hash(), off.redis_hash());
        assert_ne!(p.search_hash(&p.search[0]), off.search_hash(&off.search[0]));
        let explicit_off = check(Path::new("films.yaml"), &FILMS.replace("      type: json\n", "      type: json\n      provenance: false\n")).unwrap();
        assert_eq!(explicit_off.redis_hash(), off.redis_hash());
        assert_eq!(explicit_off.hash, off.hash);

        let set = FILMS.replace(
            "      key: \"film:{film_id}\"\n      type: json\n",
            "      key: \"rated:{rate}\"\n      type: set\n      member: film_id\n      provenance: true\n",
        );
        let errs = check(Path::new("pipelines/films.yaml"), &set).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{text:#?}");
        assert!(text[0].starts_with("pipelines/films.yaml:22:7: error: `provenance` applies to json and hash targets only"), "{}", text[0]);

        let clash = FILMS.replace("  title: film.title\n", "  title: film.title\n  _lsn: film.last_update\n");
        let errs = check(Path::new("pipelines/films.yaml"), &clash).unwrap_err();
        assert!(errs[0].to_string().starts_with("pipelines/films.yaml:11:3: error: field name `_lsn` is reserved"), "{}", errs[0]);
        let bad = FILMS.replace("      type: json\n", "      type: json\n      provenance: yes please\n");
        assert!(check(Path::new("films.yaml"), &bad).is_err());
    }

    #[test]
    fn name_must_match_file() {
        let errs = check(Path::new("pipelines/movies.yaml"), FILMS).unwrap_err();
        assert!(errs[0].to_string().contains("must equal the file name `movies`"));
        assert_eq!(errs[0].pos.line, 2);
    }
}
