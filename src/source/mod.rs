//! The source side: Postgres. `walstream` is the only module that knows the replication crate;
//! everything else sees deriver's own [`SourceEvent`]s.

pub mod conninfo;
pub mod lsn;
pub mod postgres;
pub mod tls;
pub mod walstream;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use lsn::Lsn;

/// A key column resolved against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `integer`, `character(5)`, `uuid`, `integer[]`.
    pub type_name: String,
}

/// A table, schema-qualified. Names are the catalog names (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName { schema: schema.into(), name: name.into() }
    }
    /// `"schema"."name"`, always quoted, for generated SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier: `a"b` → `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The text of some columns of one row image (`None` = SQL NULL), in the order the consumer asked
/// for them.
pub type ColumnTexts = Vec<Option<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One row change, reduced to the columns deriver's pipelines need from it.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub table: Arc<TableName>,
    pub kind: ChangeKind,
    /// The new row (insert, update).
    pub new: Option<ColumnTexts>,
    /// The old row's identity columns (update with a changed key or REPLICA IDENTITY FULL; delete).
    pub old: Option<ColumnTexts>,
}

/// What the source task receives from the replication stream.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Begin {
        xid: u32,
    },
    Change(RowChange),
    Truncate {
        tables: Vec<Arc<TableName>>,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// When the transaction committed, by the server's clock (for lag in seconds).
        committed: std::time::SystemTime,
    },
    /// Nothing arrived for a while and no transaction is open: everything up to `lsn` has been
    /// delivered, so a consumer with nothing pending may treat it as applied.
    Idle {
        lsn: Lsn,
    },
    /// A table deriver reads lost columns it extracts (renamed or dropped), as the stream's
    /// relation message says, before any change of the table under its new shape.
    ColumnsLost {
        table: Arc<TableName>,
        /// The columns the table has now.
        present: Vec<String>,
    },
}

/// Which columns the consumer wants from each table's row images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interest {
    /// For each table, the columns extracted from its row images, in the order pipelines hold
    /// their places (append-only while pipelines run).
    pub tables: HashMap<TableName, Vec<String>>,
    /// For each table, the pipelines that read it (for errors that must name them).
    pub readers: HashMap<TableName, Vec<String>>,
    /// After a reload: the columns running pipelines still read (`tables` may keep columns of
    /// pipelines that stopped, whose places nobody uses). Empty: all of `tables`.
    pub needed: HashMap<TableName, Vec<String>>,
}

impl Interest {
    /// Records that `pipeline` reads `table`.
    pub fn add_reader(&mut self, table: &TableName, pipeline: &str) {
        let readers = self.readers.entry(table.clone()).or_default();
        if !readers.iter().any(|r| r == pipeline) {
            readers.push(pipeline.to_string());
        }
    }

    /// After a reload, only `reads` (table, columns, pipeline) are still read: tables nobody
    /// reads are no longer extracted, and only those columns count when a table loses one.
    /// Columns keep their places.
    pub fn retain_reads(&mut self, reads: &[(TableName, Vec<String>, String)]) {
        let mut needed: HashMap<TableName, Vec<String>> = HashMap::new();
        let mut readers: HashMap<TableName, Vec<String>> = HashMap::new();
        for (table, cols, pipeline) in reads {
            let n = needed.entry(table.clone()).or_default();
            for c in cols {
                if !n.contains(c) {
                    n.push(c.clone());
                }
            }
            let r = readers.entry(table.clone()).or_default();
            if !r.contains(pipeline) {
                r.push(pipeline.clone());
            }
        }
        self.tables.retain(|t, _| needed.contains_key(t));
        self.readers = readers;
        self.needed = needed;
    }

    /// The columns of `table` deriver reads that `present` (the table's columns now) lacks, with
    /// the pipelines that read the table: a rename or drop deriver must not paper over.
    pub fn missing_columns(&self, table: &TableName, present: &[&str]) -> Option<(Vec<String>, Vec<String>)> {
        let wanted = if self.needed.is_empty() { self.tables.get(table)? } else { self.needed.get(table)? };
        let missing: Vec<String> = wanted.iter().filter(|c| !present.contains(&c.as_str())).cloned().collect();
        (!missing.is_empty()).then(|| (missing, self.readers.get(table).cloned().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_deriver_reads_that_the_table_lost_is_named_with_its_readers() {
        let t = TableName::new("public", "item");
        let mut i = Interest::default();
        i.tables.insert(t.clone(), vec!["id".into(), "owner_id".into()]);
        i.add_reader(&t, "items");
        i.add_reader(&t, "items");
        i.add_reader(&t, "owners");
        assert_eq!(i.missing_columns(&t, &["id", "owner_id", "extra"]), None, "an added column costs nothing");
        assert_eq!(i.missing_columns(&t, &["item_id", "owner_id"]), Some((vec!["id".to_string()], vec!["items".to_string(), "owners".to_string()])));
        assert_eq!(i.missing_columns(&TableName::new("public", "other"), &[]), None, "a table nobody reads");
    }

    #[test]
    fn after_a_reload_only_the_columns_running_pipelines_read_count() {
        let item = TableName::new("public", "item");
        let owner = TableName::new("public", "owner");
        let mut i = Interest::default();
        i.tables.insert(item.clone(), vec!["id".into(), "owner_id".into()]);
        i.tables.insert(owner.clone(), vec!["id".into()]);
        // `owners` (which read item.owner_id and the owner table) was removed.
        i.retain_reads(&[(item.clone(), vec!["id".into()], "items".into())]);
        assert_eq!(i.tables.get(&item).unwrap(), &vec!["id".to_string(), "owner_id".to_string()], "places stay");
        assert!(!i.tables.contains_key(&owner), "a table nobody reads is no longer extracted");
        assert_eq!(i.missing_columns(&item, &["id"]), None, "dropping a column only a removed pipeline read is fine");
        assert_eq!(i.missing_columns(&item, &["item_id"]), Some((vec!["id".to_string()], vec!["items".to_string()])));
    }
}
