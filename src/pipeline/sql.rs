//! Compiles a pipeline into the SQL that derives its records. Postgres builds the record JSON
//! (`to_jsonb` per field, `json_build_object` to keep the declared field order), so values are
//! converted exactly as `values.md` specifies and never formatted in Rust.
//!
//! Result columns of both queries: `0` the key text, `1` the record JSON text, then the text form
//! (`::text`) of every field in [`Pipeline::text_fields`], in that order.

use super::model::Pipeline;
use crate::source::{quote_ident, quote_literal};

/// A key column resolved against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type(atttypid, NULL)`, e.g. `integer`, `text`, `uuid`, `integer[]`.
    pub type_name: String,
}

#[derive(Debug, Clone)]
pub struct DerivationSql {
    /// Derives the records of a batch of keys: one `text[]` parameter per key column.
    pub keyed: String,
    /// Derives every record (initial snapshot, full reprocess), ordered by key.
    pub bulk: String,
}

fn select_list(p: &Pipeline, key: &[KeyColumn]) -> String {
    let alias = quote_ident(&p.source.alias);
    let key_text = if key.len() == 1 {
        format!("{alias}.{}::text", quote_ident(&key[0].name))
    } else {
        let parts: Vec<String> = key.iter().map(|k| format!("{alias}.{}::text", quote_ident(&k.name))).collect();
        format!("concat_ws(':', {})", parts.join(", "))
    };
    let record = if p.fields.len() <= 50 {
        let args: Vec<String> =
            p.fields.iter().map(|f| format!("{}, to_jsonb(({}))", quote_literal(&f.name), f.sql)).collect();
        format!("json_build_object({})::text", args.join(", "))
    } else {
        // json_build_object takes at most 100 arguments; json_object_agg keeps the order too.
        let rows: Vec<String> = p
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| format!("({i}, {}, to_jsonb(({})))", quote_literal(&f.name), f.sql))
            .collect();
        format!(
            "(SELECT json_object_agg(__f.k, __f.v ORDER BY __f.o) FROM (VALUES {}) AS __f(o, k, v))::text",
            rows.join(", ")
        )
    };
    let mut cols = vec![format!("{key_text} AS __key"), format!("{record} AS __record")];
    for (i, name) in p.text_fields().iter().enumerate() {
        let field = p.fields.iter().find(|f| &f.name == name).expect("text fields are output fields");
        cols.push(format!("({})::text AS __t{i}", field.sql));
    }
    cols.join(",\n       ")
}

fn from_clause(p: &Pipeline) -> String {
    format!("{} AS {}", p.source.table.quoted(), quote_ident(&p.source.alias))
}

pub fn compile(p: &Pipeline, key: &[KeyColumn]) -> DerivationSql {
    assert!(!key.is_empty(), "a pipeline has at least one key column");
    let alias = quote_ident(&p.source.alias);
    let select = select_list(p, key);
    let filter = p.source.filter.as_ref().map(|f| format!("({f})"));

    let key_match = if key.len() == 1 && !key[0].type_name.ends_with("[]") {
        format!("{alias}.{} = ANY($1::text[]::{}[])", quote_ident(&key[0].name), key[0].type_name)
    } else {
        let params: Vec<String> = (1..=key.len()).map(|i| format!("${i}::text[]")).collect();
        let cols: Vec<String> = (0..key.len()).map(|i| format!("__c{i}")).collect();
        let eqs: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{alias}.{} = __k.__c{i}::{}", quote_ident(&k.name), k.type_name))
            .collect();
        format!(
            "EXISTS (SELECT 1 FROM unnest({}) AS __k({}) WHERE {})",
            params.join(", "),
            cols.join(", "),
            eqs.join(" AND ")
        )
    };
    let mut keyed_where = vec![key_match];
    keyed_where.extend(filter.clone());
    let keyed = format!("SELECT {select}\nFROM {}\nWHERE {}", from_clause(p), keyed_where.join("\n  AND "));

    let order: Vec<String> = key.iter().map(|k| format!("{alias}.{}", quote_ident(&k.name))).collect();
    let bulk = format!(
        "SELECT {select}\nFROM {}{}\nORDER BY {}",
        from_clause(p),
        filter.map(|f| format!("\nWHERE {f}")).unwrap_or_default(),
        order.join(", ")
    );
    DerivationSql { keyed, bulk }
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
        assert!(sql.keyed.contains("\"film\".\"film_id\" = ANY($1::text[]::integer[])"), "{}", sql.keyed);
        assert!(sql.keyed.contains("json_build_object('film_id', to_jsonb((film.film_id)), 'title', to_jsonb((film.title)))::text"));
        assert!(sql.keyed.contains("(film.film_id)::text AS __t0"));
        assert!(sql.keyed.contains("AND (film.rating <> 'NC-17')"));
        assert!(sql.bulk.ends_with("ORDER BY \"film\".\"film_id\""), "{}", sql.bulk);
    }

    #[test]
    fn composite_key_joins_unnest() {
        let key = vec![
            KeyColumn { name: "film_id".into(), type_name: "integer".into() },
            KeyColumn { name: "category_id".into(), type_name: "integer".into() },
        ];
        let sql = compile(&films(), &key);
        assert!(sql.keyed.contains("unnest($1::text[], $2::text[]) AS __k(__c0, __c1)"), "{}", sql.keyed);
        assert!(sql.keyed.contains("concat_ws(':', \"film\".\"film_id\"::text, \"film\".\"category_id\"::text)"));
    }
}
