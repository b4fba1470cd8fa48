//! Schema changes of the tables pipelines read, while deriver runs, and what each means for a
//! pipeline (pure decisions; the source task acts on them):
//! - a column a pipeline reads was renamed or dropped: that pipeline stops with an error naming
//!   the column and the pipeline (its changes could not be derived; skipping them would be
//!   silent loss). The other pipelines go on.
//! - a column a pipeline reads changed type: Postgres does not stream the rewritten rows, so the
//!   pipeline's records are re-derived in the background (a full reprocess).
//! - a column was added, or one no pipeline reads changed: nothing happens.
//!
//! "Reads" is judged from the pipeline's derivation SQL: a column counts when its name appears in
//! it as an identifier (a false positive costs a needless re-derivation, never a missed one for
//! columns named in the SQL), plus the columns it extracts from the WAL.

use std::collections::{BTreeMap, HashMap};

use crate::source::TableName;

/// Column name → type name, per table.
pub type Columns = HashMap<TableName, BTreeMap<String, String>>;

/// What a schema change means for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Columns it reads are gone from `table`.
    Stop { table: TableName, columns: Vec<String> },
    /// Columns it reads changed type in `table`: (column, from, to).
    Rederive { table: TableName, columns: Vec<(String, String, String)> },
}

impl Effect {
    /// The error that stops a pipeline, naming the columns and the pipeline.
    pub fn message(&self, pipeline: &str) -> String {
        match self {
            Effect::Stop { table, columns } => format!(
                "table {table} no longer has column {}, which pipeline `{pipeline}` reads (renamed or dropped while deriver was running); its changes cannot be derived. Change the pipeline (or the table) to match, then `deriver apply` (or restart): it resumes from the last change it applied",
                columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
            ),
            Effect::Rederive { table, columns } => format!(
                "table {table}: column {} changed type, which pipeline `{pipeline}` reads; re-deriving its records in the background",
                columns.iter().map(|(c, from, to)| format!("`{c}` ({from} → {to})")).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Whether `sql` names `column` as an identifier (bare or quoted, any case).
pub fn names_column(sql: &str, column: &str) -> bool {
    let lower = column.to_lowercase();
    let mut token = String::new();
    let mut quoted: Option<String> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = &mut quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    q.push('"');
                    chars.next();
                    continue;
                }
                if *q == column {
                    return true;
                }
                quoted = None;
            } else {
                q.push(c);
            }
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '$' {
            token.push(c);
            continue;
        }
        if token.to_lowercase() == lower {
            return true;
        }
        token.clear();
        if c == '"' {
            quoted = Some(String::new());
        }
    }
    token.to_lowercase() == lower
}

/// What the change of `table` from `before` to `now` means for a pipeline that reads `table` with
/// derivation SQL `sql` and extracts `wal` columns of it from the stream. `None`: nothing.
pub fn effect(table: &TableName, before: &BTreeMap<String, String>, now: &BTreeMap<String, String>, sql: &str, wal: &[String]) -> Option<Effect> {
    let reads = |c: &str| wal.iter().any(|w| w == c) || names_column(sql, c);
    let gone: Vec<String> = before.keys().filter(|c| !now.contains_key(*c) && reads(c)).cloned().collect();
    if !gone.is_empty() {
        return Some(Effect::Stop { table: table.clone(), columns: gone });
    }
    let retyped: Vec<(String, String, String)> =
        before.iter().filter_map(|(c, t)| now.get(c).filter(|n| *n != t && reads(c)).map(|n| (c.clone(), t.clone(), n.clone()))).collect();
    (!retyped.is_empty()).then(|| Effect::Rederive { table: table.clone(), columns: retyped })
}

/// The columns `wal` extracts that a table with columns `present` lacks.
pub fn lost(wal: &[String], present: &[String]) -> Vec<String> {
    wal.iter().filter(|c| !present.contains(c)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect()
    }

    #[test]
    fn a_column_is_read_when_the_sql_names_it_as_an_identifier() {
        let sql = r#"SELECT film.title, "Weird Col", lower(film.rating::text) AS r FROM film WHERE film.film_id = $1"#;
        assert!(names_column(sql, "title"));
        assert!(names_column(sql, "rating"));
        assert!(names_column(sql, "film_id"));
        assert!(names_column(sql, "Weird Col"), "a quoted identifier");
        assert!(!names_column(sql, "tit"), "not a part of a word");
        assert!(!names_column(sql, "length"));
        assert!(names_column("SELECT a.TITLE", "title"), "unquoted identifiers fold to lower case");
    }

    #[test]
    fn what_a_schema_change_means_for_a_pipeline() {
        let t = TableName::new("public", "film");
        let sql = "SELECT film.title, film.rate FROM film";
        let wal = vec!["film_id".to_string()];
        let before = cols(&[("film_id", "int4"), ("title", "text"), ("rate", "numeric"), ("notes", "text")]);
        // Added column, and a column nobody reads changing type: nothing.
        let now = cols(&[("film_id", "int4"), ("title", "text"), ("rate", "numeric"), ("notes", "varchar"), ("extra", "int4")]);
        assert_eq!(effect(&t, &before, &now, sql, &wal), None);
        // A read column changes type: re-derive.
        let now = cols(&[("film_id", "int4"), ("title", "text"), ("rate", "float8"), ("notes", "text")]);
        assert_eq!(
            effect(&t, &before, &now, sql, &wal),
            Some(Effect::Rederive { table: t.clone(), columns: vec![("rate".into(), "numeric".into(), "float8".into())] })
        );
        // The key column (extracted from the WAL, not named in this SQL) renamed: stop.
        let now = cols(&[("id", "int4"), ("title", "text"), ("rate", "numeric"), ("notes", "text")]);
        let e = effect(&t, &before, &now, sql, &wal).unwrap();
        assert_eq!(e, Effect::Stop { table: t.clone(), columns: vec!["film_id".into()] });
        assert!(e.message("films").contains("no longer has column `film_id`, which pipeline `films` reads"));
        // A column nobody reads dropped: nothing.
        let now = cols(&[("film_id", "int4"), ("title", "text"), ("rate", "numeric")]);
        assert_eq!(effect(&t, &before, &now, sql, &wal), None);
        assert_eq!(lost(&wal, &["id".into(), "title".into()]), vec!["film_id".to_string()]);
        assert!(lost(&wal, &["film_id".into()]).is_empty());
    }
}
