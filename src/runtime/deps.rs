//! Dependency tracking: which source keys a change to a lookup, child or link table re-derives.
//!
//! A changed row of such a table carries the values of its join columns (its side of the `on`
//! equalities). Those values are *probes*: at flush, the relation's reverse query finds the source
//! keys joined to them, in batches. The new row gives the new parent; the old parent comes from the
//! old row image when the join columns are part of the replica identity, else from the pipeline's
//! [`Ledger`] of join values per row identity — no `REPLICA IDENTITY FULL` needed.

use std::collections::HashMap;

use tokio_postgres::{Client, Statement};

use super::derive::KeyTuple;
use super::dirty::DirtyKeys;
use crate::error::{Error, Result};
use crate::pipeline::sql::{reverse_sql, DepRef, KeyColumn};
use crate::pipeline::Pipeline;
use crate::sink::ledger::Ledger;
use crate::source::postgres::{self as pg};
use crate::source::{quote_ident, ColumnTexts, RowChange, TableName};

#[derive(Clone)]
pub struct Dep {
    pub dep: DepRef,
    pub table: TableName,
    /// The relation's join columns (its side of `on`).
    pub this_cols: Vec<String>,
    /// Its replica identity columns (what a delete carries).
    pub identity: Vec<String>,
    /// Join columns outside the identity: old values come from the ledger.
    pub needs_ledger: bool,
    pub reverse_sql: String,
    pub stmt: Option<Statement>,
    /// Positions of `this_cols` / `identity` in the table's interest list.
    pub this_pos: Vec<usize>,
    pub ident_pos: Vec<usize>,
}

/// Resolves every dependency relation of a pipeline against the catalog.
pub async fn resolve(client: &Client, p: &Pipeline, key: &[KeyColumn]) -> Result<Vec<Dep>> {
    let mut types: HashMap<String, HashMap<String, String>> = HashMap::new();
    types.insert(p.source.alias.clone(), pg::column_types(client, &p.source.table).await?);
    for l in &p.lookups {
        types.insert(l.alias.clone(), pg::column_types(client, &l.table).await?);
    }
    for c in &p.children {
        if let Some(v) = &c.via {
            types.insert(v.alias.clone(), pg::column_types(client, &v.table).await?);
        }
    }
    let mut out = Vec::new();
    for dep in DepRef::all(p) {
        let table = dep.table(p).clone();
        let own = pg::column_types(client, &table).await?;
        let this_cols = dep.this_columns(p);
        for c in &this_cols {
            if !own.contains_key(c) {
                return Err(Error::config(format!("pipeline `{}`: {}: column {table}.{c} does not exist", p.name, dep.name(p))));
            }
        }
        let mut missing = None;
        for e in dep.on(p) {
            if !types.get(&e.parent).is_some_and(|t| t.contains_key(&e.parent_column)) {
                missing = Some(format!("{}.{}", e.parent, e.parent_column));
            }
        }
        if let Some(m) = missing {
            return Err(Error::config(format!("pipeline `{}`: {}: column {m} does not exist", p.name, dep.name(p))));
        }
        let info = pg::table_info(client, &table, None).await.or_else(|e| {
            // A table without a primary key can still be a dependency under REPLICA IDENTITY FULL.
            if e.cause == Some(crate::error::Cause::NoPrimaryKey) {
                Ok(pg::TableInfo { key: Vec::new(), replica_identity: 'n', identity_columns: Vec::new() })
            } else {
                Err(e)
            }
        })?;
        let full = info.replica_identity == 'f';
        if !full && info.identity_columns.is_empty() {
            return Err(Error::config(format!(
                "pipeline `{}`: {} reads {table}, whose deletes carry no identity (no primary key or REPLICA IDENTITY NOTHING); add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL",
                p.name,
                dep.name(p),
                table.quoted()
            )));
        }
        let needs_ledger = !full && this_cols.iter().any(|c| !info.identity_columns.contains(c));
        let parent_type = |rel: &str, col: &str| types.get(rel).and_then(|t| t.get(col)).cloned().unwrap_or_else(|| "text".into());
        let reverse_sql = reverse_sql(p, dep, key, &parent_type);
        out.push(Dep {
            dep,
            table,
            this_cols,
            identity: if full { Vec::new() } else { info.identity_columns },
            needs_ledger,
            reverse_sql,
            stmt: None,
            this_pos: Vec::new(),
            ident_pos: Vec::new(),
        });
    }
    Ok(out)
}

/// The columns deriver reads from the WAL, per table: the source's key columns, and each
/// dependency's join columns (plus its identity when the ledger tracks it). They must be
/// published and cannot be generated columns.
pub fn wal_columns(p: &Pipeline, key: &[KeyColumn], deps: &[Dep]) -> Vec<(TableName, Vec<String>)> {
    let mut needed = vec![(p.source.table.clone(), key.iter().map(|k| k.name.clone()).collect())];
    for d in deps {
        let mut cols = d.this_cols.clone();
        if d.needs_ledger {
            cols.extend(d.identity.iter().cloned());
        }
        needed.push((d.table.clone(), cols));
    }
    needed
}

fn pick(texts: &Option<ColumnTexts>, pos: &[usize]) -> Option<Vec<String>> {
    let t = texts.as_ref()?;
    pos.iter().map(|&p| t.get(p).cloned().flatten()).collect()
}

impl Dep {
    /// The SQL that loads this relation's ledger rows (identity, join values) in a snapshot.
    pub fn ledger_sql(&self) -> String {
        let cols: Vec<String> = self.identity.iter().chain(self.this_cols.iter()).map(|c| format!("{}::text", quote_ident(c))).collect();
        format!("SELECT {} FROM {}", cols.join(", "), self.table.quoted())
    }

    /// Adds the probes of one row change and stages its ledger entry.
    pub fn probe(&self, rel: usize, change: &RowChange, probes: &mut DirtyKeys, ledger: Option<&mut Ledger>) -> Result<()> {
        let new_vals = pick(&change.new, &self.this_pos);
        let old_vals = pick(&change.old, &self.this_pos);
        if let Some(v) = &new_vals {
            probes.insert(v.clone())?;
        }
        if let Some(v) = &old_vals {
            if Some(v) != new_vals.as_ref() {
                probes.insert(v.clone())?;
            }
        }
        if !self.needs_ledger {
            return Ok(());
        }
        let ledger = ledger.ok_or_else(|| Error::fatal("a dependency needs the ledger, which is not open"))?;
        // The row's identity: from the old image when it carries one, else from the new row.
        let old_ident = pick(&change.old, &self.ident_pos);
        let new_ident = pick(&change.new, &self.ident_pos);
        if old_vals.is_none() {
            if let Some(id) = old_ident.as_ref().or(new_ident.as_ref()) {
                if let Some(prev) = ledger.lookup(rel, id)? {
                    if Some(&prev) != new_vals.as_ref() {
                        probes.insert(prev)?;
                    }
                }
            }
        }
        if let Some(id) = &old_ident {
            if Some(id) != new_ident.as_ref() {
                ledger.stage(rel, id.clone(), None);
            }
        }
        if let Some(id) = new_ident {
            ledger.stage(rel, id, new_vals);
        } else if change.new.is_none() {
            if let Some(id) = old_ident {
                ledger.stage(rel, id, None);
            }
        }
        Ok(())
    }

    /// Runs the reverse query for a chunk of probe tuples.
    pub async fn source_keys(&self, client: &Client, probes: &[Vec<String>]) -> Result<Vec<KeyTuple>> {
        let stmt = self.stmt.as_ref().ok_or_else(|| Error::transient("reverse query not prepared"))?;
        let columns: Vec<Vec<&str>> = (0..self.this_cols.len()).map(|i| probes.iter().map(|p| p[i].as_str()).collect()).collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let rows = client.query(stmt, &params).await?;
        Ok(rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect()).collect())
    }
}
