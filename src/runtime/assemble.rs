//! Turning a pipeline file into a running pipeline, in two steps that a reload keeps apart:
//! [`check`] proves it can run against the source as it is now (dependencies resolved, every
//! table published with the columns it needs, replica identity, its SQL compiled) and touches no
//! data; [`Checked::open`] then opens its sinks. A reload checks every changed file first and
//! opens sinks only once all of them passed, so a file that cannot run changes nothing.

use std::sync::Arc;

use tokio_postgres::{Client, Statement};

use super::deps::{self, Dep};
use super::pipeline::{interest_positions, replica_identity_problem, PipelineRt, Route};
use super::status::Shared;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::sink::redis::RedisSink;
use crate::sink::tantivy::SearchSink;
use crate::sink::AnySink;
use crate::source::postgres::{self as pg, PublishedTables, TableInfo};
use crate::source::{Interest, TableName};

/// What the publication covers now.
pub struct Publication {
    pub name: String,
    pub tables: PublishedTables,
    /// Tables published with a row filter (deriver needs every change).
    pub filtered: Vec<(TableName, String)>,
}

impl Publication {
    pub async fn read(client: &Client, name: &str) -> Result<Publication> {
        let tables = pg::publication_tables(client, name)
            .await?
            .ok_or_else(|| Error::fatal(format!("publication `{name}` does not exist; run `deriver setup` to create it")))?;
        let filtered = pg::publication_row_filters(client, name).await?;
        Ok(Publication { name: name.to_string(), tables, filtered })
    }
}

/// A table a pipeline reads, with its worker's place and how the table reaches it.
pub type Placed = (TableName, (usize, Route));

/// A pipeline that can run against the source, its sinks not yet open.
pub struct Checked {
    pub def: Pipeline,
    pub info: TableInfo,
    pub sql: DerivationSql,
    pub deps: Vec<Dep>,
    pub stmt: Statement,
}

/// Checks `def` against the source (on `client`) and compiles its statements. Touches no data.
pub async fn check(client: &Client, def: Pipeline, info: TableInfo, sql: DerivationSql, publication: &Publication) -> Result<Checked> {
    let mut deps = deps::resolve(client, &def, &info.key).await?;
    // Every table the pipeline reads must be published, with the columns deriver needs.
    for (t, cols) in &deps::wal_columns(&def, &info.key, &deps) {
        if let Some((_, filter)) = publication.filtered.iter().find(|(f, _)| f == t) {
            return Err(Error::fatal(format!(
                "publication `{}` publishes only the rows of {t} where {filter}; pipeline `{}` needs every change of it (remove the row filter)",
                publication.name, def.name
            )));
        }
        let Some((_, published_cols)) = publication.tables.iter().find(|(p, _)| p == t) else {
            return Err(Error::fatal(format!(
                "publication `{}` does not cover table {t}, which pipeline `{}` reads; run `deriver setup`",
                publication.name, def.name
            )));
        };
        if let Some(pc) = published_cols {
            if let Some(c) = cols.iter().find(|c| !pc.contains(c)) {
                return Err(Error::fatal(format!("publication `{}` does not publish column {t}.{c}, which pipeline `{}` needs", publication.name, def.name)));
            }
        }
    }
    if let Some(problem) = replica_identity_problem(&def, &info) {
        return Err(Error::fatal(problem));
    }
    for d in &mut deps {
        d.stmt = Some(client.prepare(&d.reverse_sql).await.map_err(|e| {
            Error::config(format!("pipeline `{}`: the reverse query of its {} does not compile", def.name, d.dep.name(&def)))
                .with_detail(Error::from(e).message)
        })?);
    }
    let stmt = client.prepare(&sql.keyed).await.map_err(|e| {
        Error::config(format!("pipeline `{}` ({}): its SQL does not compile", def.name, def.file.display())).with_detail(Error::from(e).message)
    })?;
    Ok(Checked { def, info, sql, deps, stmt })
}

/// The columns of each table a pipeline needs from the WAL, with the pipeline reading them.
pub fn wal_reads(checked: &Checked) -> Vec<(TableName, Vec<String>)> {
    deps::wal_columns(&checked.def, &checked.info.key, &checked.deps)
}

impl Checked {
    /// Gives the pipeline its places in the decoder's `interest` (appending what is missing, so
    /// the places of running pipelines stay) and returns its routes, for worker `slot`.
    pub fn place(&mut self, interest: &mut Interest, slot: usize) -> (Vec<usize>, Vec<Placed>) {
        let table = self.def.source.table.clone();
        let key_names: Vec<String> = self.info.key.iter().map(|k| k.name.clone()).collect();
        let key_pos = interest_positions(interest, &table, &key_names);
        interest.add_reader(&table, &self.def.name);
        let mut routes = vec![(table, (slot, Route::Source))];
        for (di, d) in self.deps.iter_mut().enumerate() {
            d.this_pos = interest_positions(interest, &d.table, &d.this_cols);
            interest.add_reader(&d.table, &self.def.name);
            if d.needs_ledger {
                d.ident_pos = interest_positions(interest, &d.table, &d.identity);
            }
            routes.push((d.table.clone(), (slot, Route::Dep(di))));
        }
        (key_pos, routes)
    }

    /// Opens the pipeline's sinks (a search index becomes searchable at once) and returns it
    /// ready to run.
    pub async fn open(&self, cfg: &Config, shared: &Arc<Shared>, key_pos: Vec<usize>) -> Result<PipelineRt> {
        let Checked { def, info, sql, deps, stmt } = self;
        let (def, info, sql, deps, stmt) = (def.clone(), info.clone(), sql.clone(), deps.clone(), stmt.clone());
        let mut sinks = Vec::new();
        for t in &def.search {
            let sink = SearchSink::open(&cfg.index.dir, &def, t, cfg.index.writer_memory_mb)?;
            shared.indexes.write().expect("lock").insert(t.index.clone(), sink.index());
            sinks.push(AnySink::Search(sink));
        }
        if !def.redis.is_empty() {
            sinks.push(AnySink::Redis(RedisSink::open(&cfg.redis, &def).await?));
        }
        if deps.iter().any(|d| d.needs_ledger) {
            // Last, so it commits after the pipeline's other sinks.
            sinks.push(AnySink::Ledger(crate::sink::ledger::Ledger::open(&cfg.index.dir.join("_ledger"), &def.name, &def.hash)?));
        }
        Ok(PipelineRt {
            key: info.key.clone(),
            table: info,
            def,
            sql,
            stmt: Some(stmt),
            sinks,
            key_pos,
            deps,
            failed: Vec::new(),
            written: Vec::new(),
            retry_sql_errors: false,
        })
    }
}
