//! A pipeline as the runtime runs it: its definition, compiled SQL, resolved dependencies and
//! open sinks, and the start-up checks that decide whether it can run at all.

use tokio_postgres::{Client, Statement};
use tracing::error;

use super::deps;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::{compile_typed, DerivationSql, KeyColumn};
use crate::pipeline::Pipeline;
use crate::sink::{AnySink, Rejected};
use crate::source::postgres::{self as pg, TableInfo};
use crate::source::{Interest, TableName};

/// A pipeline with its compiled SQL and open sinks.
pub struct PipelineRt {
    pub def: Pipeline,
    pub sql: DerivationSql,
    pub key: Vec<KeyColumn>,
    pub table: TableInfo,
    pub stmt: Option<Statement>,
    pub sinks: Vec<AnySink>,
    /// Positions of the key columns in the source table's interest list.
    pub key_pos: Vec<usize>,
    /// Lookup, child and link tables: changes there re-derive joined source keys.
    pub deps: Vec<deps::Dep>,
    /// Records rejected since the last flush, to record as dead letters.
    pub failed: Vec<Rejected>,
    /// Keys written successfully since the last flush (candidates to leave the dead letters).
    pub written: Vec<String>,
    /// Dead letters of failed derivations should be retried at the next tick
    /// (`dead_letters::retried_when_sql_recovers`).
    pub retry_sql_errors: bool,
}

/// Logs rejected records and keeps them for the dead-letter store.
pub fn note_rejects(pipeline: &str, failed: &mut Vec<Rejected>, rejected: &[Rejected]) {
    for r in rejected {
        error!(pipeline, key = %r.key, reason = %r.reason, "record rejected (dead letter)");
        metrics::counter!("deriver_dead_letters_total", "pipeline" => pipeline.to_string()).increment(1);
        if r.key != "?" {
            failed.push(r.clone());
        }
    }
}

impl PipelineRt {
    pub fn ledger(&mut self) -> Option<&mut crate::sink::ledger::Ledger> {
        self.sinks.iter_mut().find_map(|s| match s {
            AnySink::Ledger(l) => Some(l),
            _ => None,
        })
    }

    pub fn generation(&self) -> Option<u64> {
        self.sinks.iter().find_map(|s| match s {
            AnySink::Search(s) => Some(s.index().generation),
            _ => None,
        })
    }
}

impl PipelineRt {
    /// Prepares the pipeline's statements on `client`: every worker derives on its own
    /// connection, and a statement belongs to the connection that prepared it.
    pub async fn prepare_on(&mut self, client: &Client) -> Result<()> {
        self.stmt = Some(client.prepare(&self.sql.keyed).await?);
        for d in &mut self.deps {
            d.stmt = Some(client.prepare(&d.reverse_sql).await?);
        }
        Ok(())
    }

    /// The prepared derivation statement.
    pub fn statement(&self) -> Result<Statement> {
        self.stmt.clone().ok_or_else(|| Error::transient("the derivation statement is not prepared"))
    }
}

/// How a table reaches a pipeline: as its source, or as one of its dependencies (index into its
/// `deps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Source,
    Dep(usize),
}

/// Positions of `cols` in a table's interest list, adding the missing ones.
pub fn interest_positions(interest: &mut Interest, table: &TableName, cols: &[String]) -> Vec<usize> {
    let wanted = interest.tables.entry(table.clone()).or_default();
    cols.iter()
        .map(|c| match wanted.iter().position(|w| w == c) {
            Some(p) => p,
            None => {
                wanted.push(c.clone());
                wanted.len() - 1
            }
        })
        .collect()
}

/// Where deriver keeps its own state beside the index generations.
pub fn state_dir(index_dir: &std::path::Path) -> std::path::PathBuf {
    index_dir.join("_state")
}

/// The file that records a requested reindex of an index until its new generation is live.
pub fn reindex_marker(cfg: &Config, index: &str) -> std::path::PathBuf {
    cfg.index.dir.join(index).join("REINDEX")
}

/// The file that records a rewrite of a pipeline's Redis views in progress, until it is done.
pub fn redis_rewrite_marker(cfg: &Config, pipeline: &str) -> std::path::PathBuf {
    state_dir(&cfg.index.dir).join(format!("{pipeline}.redis-rewrite"))
}

/// Loads pipelines, checks the source and resolves every table against the catalog.
pub async fn load_pipelines(cfg: &Config, client: &Client) -> Result<Vec<(Pipeline, TableInfo, DerivationSql)>> {
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|diags| {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        Error::config(format!("{} problem(s) in the pipeline files", diags.len())).with_detail(text.join("\n"))
    })?;
    let mut out = Vec::new();
    for def in defs {
        let info = pg::table_info(client, &def.source.table, def.source.key.as_deref())
            .await
            .map_err(|e| Error::config(format!("pipeline `{}`: {}", def.name, e.message)))?;
        let sql = derivation_sql(client, &def, &info.key).await;
        out.push((def, info, sql));
    }
    Ok(out)
}

/// A pipeline's derivation SQL, compiled with the field types Postgres gives it now.
pub async fn derivation_sql(client: &Client, def: &Pipeline, key: &[KeyColumn]) -> DerivationSql {
    compile_typed(def, key, &json_as_is_fields(client, def).await)
}

/// The fields of `def` whose type `json_build_object` writes as `to_jsonb` would (see
/// `pipeline::sql::JSON_AS_IS_TYPES`), from the types Postgres gives the field expressions. When
/// the types cannot be learned (a statement Postgres refuses is reported when it runs), every
/// field keeps `to_jsonb`.
async fn json_as_is_fields(client: &Client, def: &Pipeline) -> std::collections::HashSet<String> {
    match client.prepare(&crate::pipeline::sql::field_types_sql(def)).await {
        Ok(stmt) => def
            .fields
            .iter()
            .zip(stmt.columns())
            .filter(|(_, c)| crate::pipeline::sql::JSON_AS_IS_TYPES.contains(&c.type_().name()))
            .map(|(f, _)| f.name.clone())
            .collect(),
        Err(e) => {
            tracing::debug!(pipeline = %def.name, error = %e, "cannot learn the field types: every field goes through to_jsonb");
            Default::default()
        }
    }
}

/// Checks that deletes and key changes of a source table carry the pipeline's key columns.
pub fn replica_identity_problem(def: &Pipeline, info: &TableInfo) -> Option<String> {
    let table = &def.source.table;
    match info.replica_identity {
        'n' => Some(format!(
            "table {table} has REPLICA IDENTITY NOTHING, so deletes carry no key; run ALTER TABLE {} REPLICA IDENTITY DEFAULT (or FULL)",
            table.quoted()
        )),
        'f' => None,
        _ => {
            let missing: Vec<&str> = info.key.iter().map(|k| k.name.as_str()).filter(|k| !info.identity_columns.iter().any(|c| c == k)).collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "pipeline `{}` keys {table} by {}, which its replica identity does not include, so deletes would not say which record to remove; run ALTER TABLE {} REPLICA IDENTITY FULL, or key the pipeline by the primary key",
                    def.name,
                    missing.join(", "),
                    table.quoted()
                )
            })
        }
    }
}
