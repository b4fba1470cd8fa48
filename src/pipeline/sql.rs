//! Compiles a pipeline into the SQL that derives its records. Postgres builds the record JSON
//! (`to_jsonb` per field, `json_build_object` to keep the declared field order), so values are
//! converted exactly as `values.md` specifies and never formatted in Rust.
//!
//! A field whose type `json_build_object` already writes exactly as `to_jsonb` does (text and
//! character types, integers, booleans, dates and timestamps: [`JSON_AS_IS_TYPES`]) goes in
//! without the `to_jsonb` round trip, which cost Postgres about a quarter of its time deriving
//! the benchmark corpus. The types come from the catalog ([`field_types_sql`]); a field whose type
//! is not known to be safe keeps `to_jsonb`.
//!
//! Result columns of both queries: `0` the key text, `1` the record JSON text, then the text form
//! (`::text`) of every field in [`Pipeline::text_fields`], in that order.

use std::collections::HashSet;

use super::model::Pipeline;
use crate::source::{quote_ident, quote_literal};

/// A key column resolved against the catalog (defined with the catalog questions).
pub use crate::source::KeyColumn;

/// A relation a pipeline reads besides its source: a change to one of its rows re-derives the
/// source keys it is joined to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepRef {
    Lookup(usize),
    /// A child relation (`children[i]`).
    Child(usize),
    /// The link table of `children[i]` (`via`).
    Link(usize),
}

impl DepRef {
    pub fn all(p: &Pipeline) -> Vec<DepRef> {
        let mut out: Vec<DepRef> = (0..p.lookups.len()).map(DepRef::Lookup).collect();
        for (i, c) in p.children.iter().enumerate() {
            if c.via.is_some() {
                out.push(DepRef::Link(i));
            }
            out.push(DepRef::Child(i));
        }
        out
    }

    pub fn table<'a>(&self, p: &'a Pipeline) -> &'a crate::source::TableName {
        match *self {
            DepRef::Lookup(i) => &p.lookups[i].table,
            DepRef::Child(i) => &p.children[i].table,
            DepRef::Link(i) => &p.children[i].via.as_ref().expect("link").table,
        }
    }

    pub fn name(&self, p: &Pipeline) -> String {
        match *self {
            DepRef::Lookup(i) => format!("lookup {}", p.lookups[i].alias),
            DepRef::Child(i) => format!("child {}", p.children[i].alias),
            DepRef::Link(i) => format!("link table of child {}", p.children[i].alias),
        }
    }

    /// The equalities joining this relation to its parent.
    pub fn on<'a>(&self, p: &'a Pipeline) -> &'a [crate::pipeline::model::Equality] {
        match *self {
            DepRef::Lookup(i) => &p.lookups[i].on,
            DepRef::Child(i) => &p.children[i].on,
            DepRef::Link(i) => &p.children[i].via.as_ref().expect("link").on,
        }
    }

    /// The relation's own columns in its `on` (the values a change of one of its rows carries).
    pub fn this_columns(&self, p: &Pipeline) -> Vec<String> {
        self.on(p).iter().map(|e| e.this.clone()).collect()
    }
}

/// The query that finds the source keys joined to rows of `dep` whose join columns hold the
/// given values: one `text[]` parameter per equality, result columns = key columns as text.
/// `parent_type(relation, column)` gives a parent column's SQL type for the casts.
pub fn reverse_sql(p: &Pipeline, dep: DepRef, key: &[KeyColumn], parent_type: &dyn Fn(&str, &str) -> String) -> String {
    let src = quote_ident(&p.source.alias);
    let mut joins: Vec<String> = Vec::new();
    // Lookups the parent chain goes through, in declaration order.
    let mut needed: Vec<String> = dep.on(p).iter().map(|e| e.parent.clone()).collect();
    if let DepRef::Child(i) = dep {
        if let Some(v) = &p.children[i].via {
            joins.push(format!("JOIN {} AS {} ON {}", v.table.quoted(), quote_ident(&v.alias), eq_sql(&v.alias, &v.on)));
            needed.retain(|n| n != &v.alias);
        }
    }
    let mut lookup_joins = Vec::new();
    for l in p.lookups.iter().rev() {
        if needed.contains(&l.alias) {
            needed.extend(l.on.iter().map(|e| e.parent.clone()));
            lookup_joins.push(format!("JOIN {} AS {} ON {}", l.table.quoted(), quote_ident(&l.alias), eq_sql(&l.alias, &l.on)));
        }
    }
    lookup_joins.reverse();
    lookup_joins.extend(joins);
    let eqs = dep.on(p);
    let matcher = if eqs.len() == 1 {
        let e = &eqs[0];
        format!("{}.{} = ANY($1::text[]::{}[])", quote_ident(&e.parent), quote_ident(&e.parent_column), parent_type(&e.parent, &e.parent_column))
    } else {
        let params: Vec<String> = (1..=eqs.len()).map(|i| format!("${i}::text[]")).collect();
        let cols: Vec<String> = (0..eqs.len()).map(|i| format!("__v{i}")).collect();
        let conds: Vec<String> = eqs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{}.{} = __v.__v{i}::{}", quote_ident(&e.parent), quote_ident(&e.parent_column), parent_type(&e.parent, &e.parent_column)))
            .collect();
        format!("EXISTS (SELECT 1 FROM unnest({}) AS __v({}) WHERE {})", params.join(", "), cols.join(", "), conds.join(" AND "))
    };
    let keys: Vec<String> = key.iter().map(|k| format!("{src}.{}::text", quote_ident(&k.name))).collect();
    format!(
        "SELECT DISTINCT {}\nFROM {} AS {src}{}\nWHERE {matcher}",
        keys.join(", "),
        p.source.table.quoted(),
        lookup_joins.iter().map(|j| format!("\n{j}")).collect::<String>()
    )
}

#[derive(Debug, Clone)]
pub struct DerivationSql {
    /// Derives the records of a batch of keys: one `text[]` parameter per key column.
    pub keyed: String,
    /// Derives every record (initial snapshot, full reprocess), ordered by key.
    pub bulk: String,
    /// Lists every source key (column texts), ordered: the fallback when a row breaks `bulk`.
    pub keys: String,
}

/// The FROM (and correlation) of a child relation's subquery: (from, equality to the source,
/// relation alias whose columns equal the source).
fn child_from(c: &crate::pipeline::model::Child) -> (String, String, String, &[crate::pipeline::model::Equality]) {
    let ca = quote_ident(&c.sql_alias);
    match &c.via {
        Some(v) => (
            format!("{} AS {} JOIN {} AS {ca} ON {}", v.table.quoted(), quote_ident(&v.alias), c.table.quoted(), eq_sql(&c.sql_alias, &c.on)),
            eq_sql(&v.alias, &v.on),
            v.alias.clone(),
            &v.on,
        ),
        None => (format!("{} AS {ca}", c.table.quoted()), eq_sql(&c.sql_alias, &c.on), c.sql_alias.clone(), &c.on),
    }
}

/// The SQL of one output field's value. An aggregate reads its child's subquery: a lateral one
/// per source row (keyed derivation), or one grouped subquery joined on the source key (bulk
/// derivation, measured 20-30x faster over pagila's films), where a source row without children
/// gets the aggregate of an empty set — the same value the lateral form gives.
pub fn field_sql(p: &Pipeline, name: &str) -> String {
    field_sql_in(p, name, false)
}

fn field_sql_in(p: &Pipeline, name: &str, grouped: bool) -> String {
    let f = p.fields.iter().find(|f| f.name == name).expect("an output field");
    match &f.agg {
        None => format!("({})", f.sql),
        Some(a) => {
            let ci = p.children.iter().position(|c| c.alias == a.child).expect("checked child");
            let fi = agg_index(p, &f.name);
            let mut col = format!("{}.{}", quote_ident(&format!("__c_{ci}")), quote_ident(&format!("__a{fi}")));
            if grouped {
                let (from, _, _, _) = child_from(&p.children[ci]);
                col = format!("coalesce({col}, (SELECT ({}) FROM {from} WHERE false))", a.agg);
            }
            match &a.default {
                Some(d) => format!("coalesce({col}, ({d}))"),
                None => col,
            }
        }
    }
}

/// Position of an aggregate field among all aggregate fields (their column names `__a<i>`).
fn agg_index(p: &Pipeline, name: &str) -> usize {
    p.fields.iter().filter(|f| f.agg.is_some()).position(|f| f.name == name).expect("an aggregate field")
}

fn eq_sql(this_alias: &str, eqs: &[crate::pipeline::model::Equality]) -> String {
    eqs.iter()
        .map(|e| format!("{}.{} = {}.{}", quote_ident(this_alias), quote_ident(&e.this), quote_ident(&e.parent), quote_ident(&e.parent_column)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `FROM source LEFT JOIN LATERAL (lookup) … LEFT JOIN [LATERAL] (child aggregates) …`
fn from_clause(p: &Pipeline) -> String {
    from_clause_in(p, false)
}

fn from_clause_in(p: &Pipeline, grouped: bool) -> String {
    let src = quote_ident(&p.source.alias);
    let mut out = format!("{} AS {src}", p.source.table.quoted());
    for l in &p.lookups {
        let a = quote_ident(&l.alias);
        out.push_str(&format!("\nLEFT JOIN LATERAL (SELECT {a}.* FROM {} AS {a} WHERE {} LIMIT 1) AS {a} ON true", l.table.quoted(), eq_sql(&l.alias, &l.on)));
    }
    for (ci, c) in p.children.iter().enumerate() {
        let aggs: Vec<String> = p
            .fields
            .iter()
            .filter_map(|f| f.agg.as_ref().map(|a| (f, a)))
            .filter(|(_, a)| a.child == c.alias)
            .map(|(f, a)| format!("({}) AS {}", a.agg, quote_ident(&format!("__a{}", agg_index(p, &f.name)))))
            .collect();
        if aggs.is_empty() {
            continue;
        }
        let (from, correlation, rel, eqs) = child_from(c);
        let name = quote_ident(&format!("__c_{ci}"));
        if grouped {
            let keys: Vec<String> = eqs.iter().map(|e| format!("{}.{}", quote_ident(&rel), quote_ident(&e.this))).collect();
            let outs: Vec<String> = keys.iter().enumerate().map(|(i, k)| format!("{k} AS __g{i}")).collect();
            let on: Vec<String> =
                eqs.iter().enumerate().map(|(i, e)| format!("{name}.__g{i} = {}.{}", quote_ident(&e.parent), quote_ident(&e.parent_column))).collect();
            out.push_str(&format!(
                "\nLEFT JOIN (SELECT {}, {} FROM {from}{} GROUP BY {}) AS {name} ON {}",
                outs.join(", "),
                aggs.join(", "),
                c.filter.as_ref().map(|f| format!(" WHERE ({f})")).unwrap_or_default(),
                keys.join(", "),
                on.join(" AND ")
            ));
        } else {
            let mut conds = vec![correlation];
            if let Some(f) = &c.filter {
                conds.push(format!("({f})"));
            }
            out.push_str(&format!("\nLEFT JOIN LATERAL (SELECT {} FROM {from} WHERE {}) AS {name} ON true", aggs.join(", "), conds.join(" AND ")));
        }
    }
    out
}

/// The key text of one row from its key column expressions: `key::text`; a composite key joins
/// its columns' text with `:`, escaping `\` and `:` inside a column's text (`a\:b:c`), so two
/// different keys never share a text.
pub fn key_text_sql(exprs: &[String]) -> String {
    if exprs.len() == 1 {
        format!("({})::text", exprs[0])
    } else {
        let parts: Vec<String> = exprs.iter().map(|e| format!("replace(replace(({e})::text, '\\', '\\\\'), ':', '\\:')")).collect();
        format!("concat_ws(':', {})", parts.join(", "))
    }
}

/// Types (`pg_type.typname`) whose value `json_build_object` writes exactly as it writes the
/// value's `to_jsonb`: both go through the same escaping (strings), the type's own output
/// (integers: always a valid JSON number) or `JsonEncodeDateTime` (dates and timestamps).
/// Floats, `numeric`, `json` (kept as written, whitespace and duplicate keys included), arrays,
/// records and domains are not here: for them the two differ or may differ. The test
/// `json_as_is_types_are_written_as_to_jsonb_writes_them` checks every one on the server.
pub const JSON_AS_IS_TYPES: &[&str] = &["text", "varchar", "bpchar", "int2", "int4", "int8", "bool", "date", "timestamp", "timestamptz"];

/// A statement whose result columns are the pipeline's fields, in order, with their types: prepare
/// it (never run it) to learn which fields are in [`JSON_AS_IS_TYPES`].
pub fn field_types_sql(p: &Pipeline) -> String {
    let cols: Vec<String> = p.fields.iter().map(|f| field_sql_in(p, &f.name, true)).collect();
    format!("SELECT {}\nFROM {}", cols.join(", "), from_clause_in(p, true))
}

fn select_list(p: &Pipeline, key_exprs: &[String], matched: Option<&str>, grouped: bool, as_is: &HashSet<String>) -> String {
    let key_text = key_text_sql(key_exprs);
    let record = if p.fields.len() <= 50 {
        let args: Vec<String> = p
            .fields
            .iter()
            .map(|f| {
                let expr = field_sql_in(p, &f.name, grouped);
                if as_is.contains(&f.name) {
                    format!("{}, {expr}", quote_literal(&f.name))
                } else {
                    format!("{}, to_jsonb({expr})", quote_literal(&f.name))
                }
            })
            .collect();
        format!("json_build_object({})::text", args.join(", "))
    } else {
        // json_build_object takes at most 100 arguments; json_object_agg keeps the order too.
        let rows: Vec<String> =
            p.fields.iter().enumerate().map(|(i, f)| format!("({i}, {}, to_jsonb({}))", quote_literal(&f.name), field_sql_in(p, &f.name, grouped))).collect();
        format!("(SELECT json_object_agg(__f.k, __f.v ORDER BY __f.o) FROM (VALUES {}) AS __f(o, k, v))::text", rows.join(", "))
    };
    // In the keyed query a key without a row (deleted, filtered out) yields NULL.
    let record = match matched {
        Some(m) => format!("CASE WHEN {m} IS NULL THEN NULL ELSE {record} END"),
        None => record,
    };
    let mut cols = vec![format!("{key_text} AS __key"), format!("{record} AS __record")];
    for (i, name) in p.text_fields().iter().enumerate() {
        cols.push(format!("{}::text AS __t{i}", field_sql_in(p, name, grouped)));
    }
    cols.join(",\n       ")
}

/// The derivation SQL with `to_jsonb` around every field.
pub fn compile(p: &Pipeline, key: &[KeyColumn]) -> DerivationSql {
    compile_typed(p, key, &HashSet::new())
}

/// The derivation SQL; the fields in `as_is` (of a type in [`JSON_AS_IS_TYPES`]) go into the
/// record without `to_jsonb`.
pub fn compile_typed(p: &Pipeline, key: &[KeyColumn], as_is: &HashSet<String>) -> DerivationSql {
    assert!(!key.is_empty(), "a pipeline has at least one key column");
    let alias = quote_ident(&p.source.alias);
    let filter = p.source.filter.as_ref().map(|f| format!("({f})"));
    // Keyed: every input key yields one row — its canonical text (the input cast to the key type,
    // then to text, exactly like `key::text` of the row) and the record, or NULL when there is none.
    let params: Vec<String> = (1..=key.len()).map(|i| format!("${i}::text[]")).collect();
    let cols: Vec<String> = (0..key.len()).map(|i| format!("__k{i}")).collect();
    let input_exprs: Vec<String> = key.iter().enumerate().map(|(i, k)| format!("__in.__k{i}::{}", k.type_name)).collect();
    let mut on: Vec<String> = key.iter().enumerate().map(|(i, k)| format!("{alias}.{} = {}", quote_ident(&k.name), input_exprs[i])).collect();
    on.extend(filter.clone());
    let matched = format!("{alias}.{}", quote_ident(&key[0].name));
    // A parenthesized join when lookups or children join the source (a bare table otherwise).
    let from = from_clause(p);
    let joined = if from.contains('\n') { format!("({from})") } else { from };
    let keyed = format!(
        "SELECT {}\nFROM unnest({}) AS __in({})\nLEFT JOIN {joined} ON {}",
        select_list(p, &input_exprs, Some(&matched), false, as_is),
        params.join(", "),
        cols.join(", "),
        on.join("\n  AND ")
    );

    let row_exprs: Vec<String> = key.iter().map(|k| format!("{alias}.{}", quote_ident(&k.name))).collect();
    let bulk = format!(
        "SELECT {}\nFROM {}{}\nORDER BY {}",
        select_list(p, &row_exprs, None, true, as_is),
        from_clause_in(p, true),
        filter.map(|f| format!("\nWHERE {f}")).unwrap_or_default(),
        row_exprs.join(", ")
    );
    let keys = format!(
        "SELECT {}\nFROM {} AS {alias}\nORDER BY {}",
        row_exprs.iter().map(|e| format!("{e}::text")).collect::<Vec<_>>().join(", "),
        p.source.table.quoted(),
        row_exprs.join(", ")
    );
    DerivationSql { keyed, bulk, keys }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::check::check;
    use std::path::Path;

    fn films() -> Pipeline {
        check(
            Path::new("films.yaml"),
            "version: 1\npipeline: films\nsource: { table: film, filter: \"film.rating <> 'NC-17'\" }\nfields:\n  film_id: film.film_id\n  title: film.title\ntargets:\n  - redis: { key: \"film:{film_id}\" }\n",
        )
        .unwrap()
    }

    #[test]
    fn single_key_uses_any() {
        let sql = compile(&films(), &[KeyColumn { name: "film_id".into(), type_name: "integer".into() }]);
        assert!(
            sql.keyed.contains("FROM unnest($1::text[]) AS __in(__k0)\nLEFT JOIN \"public\".\"film\" AS \"film\" ON \"film\".\"film_id\" = __in.__k0::integer"),
            "{}",
            sql.keyed
        );
        assert!(sql.keyed.contains("(__in.__k0::integer)::text AS __key"), "{}", sql.keyed);
        assert!(sql.keyed.contains("json_build_object('film_id', to_jsonb((film.film_id)), 'title', to_jsonb((film.title)))::text"), "{}", sql.keyed);
        assert!(sql.keyed.contains("(film.film_id)::text AS __t0"));
        assert!(sql.keyed.contains("AND (film.rating <> 'NC-17')"), "{}", sql.keyed);
        assert!(sql.keyed.contains("CASE WHEN \"film\".\"film_id\" IS NULL THEN NULL ELSE json_build_object("), "{}", sql.keyed);
        assert!(sql.bulk.ends_with("ORDER BY \"film\".\"film_id\""), "{}", sql.bulk);
    }

    #[test]
    fn fields_of_as_is_types_skip_to_jsonb() {
        let key = [KeyColumn { name: "film_id".into(), type_name: "integer".into() }];
        let sql = compile_typed(&films(), &key, &HashSet::from(["title".to_string()]));
        for text in [&sql.keyed, &sql.bulk] {
            assert!(text.contains("json_build_object('film_id', to_jsonb((film.film_id)), 'title', (film.title))::text"), "{text}");
        }
        assert_eq!(field_types_sql(&films()), "SELECT (film.film_id), (film.title)\nFROM \"public\".\"film\" AS \"film\"");
    }

    #[test]
    fn composite_key_joins_unnest() {
        let key =
            vec![KeyColumn { name: "film_id".into(), type_name: "integer".into() }, KeyColumn { name: "category_id".into(), type_name: "integer".into() }];
        let sql = compile(&films(), &key);
        assert!(sql.keyed.contains("unnest($1::text[], $2::text[]) AS __in(__k0, __k1)"), "{}", sql.keyed);
        assert!(sql.bulk.contains(r#"concat_ws(':', replace(replace(("film"."film_id")::text, '\', '\\'), ':', '\:')"#), "{}", sql.bulk);
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;
    use crate::pipeline::check::check;
    use std::path::Path;

    #[test]
    fn lookups_and_children_become_laterals() {
        let p = check(
            Path::new("films.yaml"),
            r#"version: 1
pipeline: films
source: { table: film }
lookups:
  language: { table: language, on: "film.language_id = language.language_id" }
children:
  actors:
    table: actor
    via: { table: film_actor, on: "film_actor.film_id = film.film_id" }
    on: "actor.actor_id = film_actor.actor_id"
fields:
  film_id: film.film_id
  language: language.name
  actors: { child: actors, agg: "array_agg(actor.last_name ORDER BY actor.last_name)", default: "'{}'::text[]" }
  actor_count: { child: actors, agg: "count(*)" }
targets:
  - redis: { key: "film:{film_id}" }
"#,
        )
        .unwrap();
        let sql = compile(&p, &[KeyColumn { name: "film_id".into(), type_name: "integer".into() }]);
        assert!(sql.keyed.contains(r#"LEFT JOIN LATERAL (SELECT "language".* FROM "public"."language" AS "language" WHERE "language"."language_id" = "film"."language_id" LIMIT 1) AS "language" ON true"#), "{}", sql.keyed);
        assert!(sql.keyed.contains(r#"LEFT JOIN LATERAL (SELECT (array_agg(actor.last_name ORDER BY actor.last_name)) AS "__a0", (count(*)) AS "__a1" FROM "public"."film_actor" AS "film_actor" JOIN "public"."actor" AS "actor" ON "actor"."actor_id" = "film_actor"."actor_id" WHERE "film_actor"."film_id" = "film"."film_id") AS "__c_0" ON true"#), "{}", sql.keyed);
        assert!(sql.keyed.contains(r#"'actors', to_jsonb(coalesce("__c_0"."__a0", ('{}'::text[])))"#), "{}", sql.keyed);
    }

    #[test]
    fn reverse_queries_walk_back_to_the_source() {
        let p = check(
            Path::new("addresses.yaml"),
            r#"version: 1
pipeline: addresses
source: { table: address }
lookups:
  city: { table: city, on: "address.city_id = city.city_id" }
  country: { table: country, on: "city.country_id = country.country_id" }
children:
  actors:
    table: actor
    via: { table: film_actor, on: "film_actor.film_id = address.address_id" }
    on: "actor.actor_id = film_actor.actor_id"
fields: { id: address.address_id }
targets:
  - redis: { key: "a:{id}" }
"#,
        )
        .unwrap();
        let key = [KeyColumn { name: "address_id".into(), type_name: "integer".into() }];
        let ty = |_: &str, _: &str| "integer".to_string();
        let country = reverse_sql(&p, DepRef::Lookup(1), &key, &ty);
        assert_eq!(
            country,
            "SELECT DISTINCT \"address\".\"address_id\"::text\nFROM \"public\".\"address\" AS \"address\"\nJOIN \"public\".\"city\" AS \"city\" ON \"city\".\"city_id\" = \"address\".\"city_id\"\nWHERE \"city\".\"country_id\" = ANY($1::text[]::integer[])"
        );
        let city = reverse_sql(&p, DepRef::Lookup(0), &key, &ty);
        assert!(city.ends_with("AS \"address\"\nWHERE \"address\".\"city_id\" = ANY($1::text[]::integer[])"), "{city}");
        let actor = reverse_sql(&p, DepRef::Child(0), &key, &ty);
        assert!(actor.contains("JOIN \"public\".\"film_actor\" AS \"film_actor\" ON \"film_actor\".\"film_id\" = \"address\".\"address_id\"\nWHERE \"film_actor\".\"actor_id\" = ANY("), "{actor}");
        let link = reverse_sql(&p, DepRef::Link(0), &key, &ty);
        assert!(link.ends_with("WHERE \"address\".\"address_id\" = ANY($1::text[]::integer[])"), "{link}");
        assert_eq!(DepRef::all(&p), vec![DepRef::Lookup(0), DepRef::Lookup(1), DepRef::Link(0), DepRef::Child(0)]);
    }

    #[test]
    fn on_must_be_equalities_between_known_relations() {
        let base = "version: 1\npipeline: p\nsource: { table: film }\nlookups:\n  language: { table: language, on: \"ON\" }\nfields: { id: film.film_id }\ntargets:\n  - redis: { key: \"f:{id}\" }\n";
        for (on, msg) in [
            ("film.language_id > language.language_id", "must be column equalities"),
            ("film.language_id = other.language_id", "must join language to one of"),
            ("language_id = language_id", "must be column equalities"),
            ("film.a = language.b OR film.c = language.d", "joined by AND"),
        ] {
            let errs = check(Path::new("p.yaml"), &base.replace("ON", on)).unwrap_err();
            assert!(errs[0].message.contains(msg), "{on}: {}", errs[0].message);
            assert_eq!(errs[0].pos.line, 5);
        }
        assert!(check(Path::new("p.yaml"), &base.replace("ON", "(film.language_id = language.language_id) and film.x = \\\"language\\\".y")).is_ok());
    }
}
