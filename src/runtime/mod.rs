//! The daemon: start-up checks, initial snapshot, the apply loop, checkpoints and acks.
//!
//! Path of one change (see ARCHITECTURE.md): the replication adapter delivers `Begin`, row
//! changes and `Commit`; row changes mark source keys dirty in the open batch; at a transaction
//! boundary, once the batch is big or old enough, every pipeline re-derives its dirty keys from
//! Postgres and each sink commits the records together with the batch's end LSN; the slot is
//! acknowledged up to the minimum LSN every sink has made durable.

pub mod dead_letters;
pub mod deps;
pub mod derive;
pub mod dirty;
pub mod failpoint;
pub mod lease;
pub mod orphans;
pub mod reindex;
pub mod retry;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::sql::{compile_typed, DerivationSql, KeyColumn};
use crate::pipeline::{OnError, Pipeline};
use crate::sink::redis::RedisSink;
use crate::sink::tantivy::SearchSink;
use crate::sink::{AnySink, BatchMode, Rejected, Sink, Write};
use crate::source::postgres::{self as pg, TableInfo};
use crate::source::walstream::{self, Acker};
use crate::source::{Interest, Lsn, RowChange, SourceEvent, TableName};
use derive::{derive_keys, KeyTuple};
use dirty::DirtyKeys;
use failpoint::failpoint;
use status::{PipelineStatus, Shared, SlotStatus, StatusDoc};

/// A pipeline with its compiled SQL and open sinks.
pub struct PipelineRt {
    pub def: Pipeline,
    pub sql: DerivationSql,
    pub key: Vec<KeyColumn>,
    pub table: TableInfo,
    stmt: Option<Statement>,
    pub sinks: Vec<AnySink>,
    /// Positions of the key columns in the source table's interest list.
    key_pos: Vec<usize>,
    /// Lookup, child and link tables: changes there re-derive joined source keys.
    deps: Vec<deps::Dep>,
    /// Records rejected since the last flush: (key, reason), to record as dead letters.
    failed: Vec<(String, String)>,
    /// Keys written successfully since the last flush (candidates to leave the dead letters).
    written: Vec<String>,
    /// Dead letters from SQL errors should be retried at the next tick.
    retry_sql_errors: bool,
}

/// Logs rejected records and keeps them for the dead-letter store.
fn note_rejects(pipeline: &str, failed: &mut Vec<(String, String)>, rejected: &[Rejected]) {
    for r in rejected {
        error!(pipeline, key = %r.key, reason = %r.reason, "record rejected (dead letter)");
        metrics::counter!("deriver_dead_letters_total", "pipeline" => pipeline.to_string()).increment(1);
        if r.key != "?" {
            failed.push((r.key.clone(), r.reason.clone()));
        }
    }
}

impl PipelineRt {
    fn ledger(&mut self) -> Option<&mut crate::sink::ledger::Ledger> {
        self.sinks.iter_mut().find_map(|s| match s {
            AnySink::Ledger(l) => Some(l),
            _ => None,
        })
    }

    fn generation(&self) -> Option<u64> {
        self.sinks.iter().find_map(|s| match s {
            AnySink::Search(s) => Some(s.index().generation),
            _ => None,
        })
    }
}

/// Where deriver keeps its own state beside the index generations.
pub fn state_dir(index_dir: &std::path::Path) -> std::path::PathBuf {
    index_dir.join("_state")
}

/// The file that records a requested reindex of an index until its new generation is live.
fn reindex_marker(cfg: &Config, index: &str) -> std::path::PathBuf {
    cfg.index.dir.join(index).join("REINDEX")
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

pub struct Daemon {
    cfg: Config,
    pipelines: Vec<PipelineRt>,
    pg: Client,
    interest: Interest,
    /// For each table, the pipelines that read it (as source or dependency).
    routes: HashMap<TableName, Vec<Route>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// Ignore the sinks' checkpoints and re-derive everything from a new slot.
    resnapshot: bool,
    /// Full reprocesses in progress.
    rebuilds: Vec<reindex::Rebuild>,
    next_rebuild: u64,
    built_tx: mpsc::Sender<reindex::Built>,
    built_rx: Option<mpsc::Receiver<reindex::Built>>,
    admin_rx: Option<mpsc::Receiver<status::AdminRequest>>,
    /// Per index, since the last swap: the previous generation and the keys re-derived since, so
    /// a rollback can catch it up.
    since_swap: HashMap<String, (usize, u64, DirtyKeys)>,
    /// Pipelines whose reindex was requested before a restart (marker files).
    pending_reindex: Vec<usize>,
    dead: dead_letters::DeadLetters,
    last_sql_retry: Instant,
    /// Cancelled when this process lost ownership of the slot: no sink commit may happen after.
    fence: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Source(usize),
    /// (pipeline, index into its `deps`)
    Dep(usize, usize),
}

/// Positions of `cols` in a table's interest list, adding the missing ones.
fn interest_positions(interest: &mut Interest, table: &TableName, cols: &[String]) -> Vec<usize> {
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

#[derive(Default)]
struct Batch {
    started: Option<Instant>,
    changes: usize,
    end_lsn: Option<Lsn>,
    dirty: Vec<Dirty>,
    /// Transactions of this batch that changed something a pipeline reads: the derivation must
    /// not run before each of them is visible to new snapshots.
    xids: Vec<u32>,
}

struct Dirty {
    truncate: bool,
    /// A dependency table was truncated: re-derive every record.
    rederive_all: bool,
    keys: DirtyKeys,
    /// Per dependency relation: join values whose source keys must be re-derived.
    probes: Vec<DirtyKeys>,
}

impl Dirty {
    fn has_work(&self) -> bool {
        self.truncate || self.rederive_all || !self.keys.is_empty() || self.probes.iter().any(|p| !p.is_empty())
    }
}

/// Change notices list at most this many keys; bigger batches say `"*"` (re-read everything).
const NOTICE_KEYS: usize = 10_000;

impl Batch {
    fn new(deps_per_pipeline: &[usize], in_memory: usize) -> Batch {
        Batch {
            dirty: deps_per_pipeline
                .iter()
                .map(|&n| Dirty {
                    truncate: false,
                    rederive_all: false,
                    keys: DirtyKeys::new(in_memory),
                    probes: (0..n).map(|_| DirtyKeys::new(in_memory)).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }
    fn has_work(&self) -> bool {
        self.dirty.iter().any(Dirty::has_work)
    }
}

/// A dependency unreachable at start stops the start (loudly) instead of being retried; a
/// configuration error stays one (exit code 2).
fn unreachable_at_start(e: Error) -> Error {
    match e.kind {
        ErrorKind::Transient => Error { kind: ErrorKind::Fatal, ..e },
        _ => e,
    }
}

impl Daemon {
    /// Start-up checks (loud on anything wrong), then opens every sink.
    pub async fn prepare(cfg: Config, shared: Arc<Shared>, cancel: CancellationToken, resnapshot: bool) -> Result<Daemon> {
        let url = cfg.postgres_url()?.to_string();
        let client = pg::connect(&url).await.map_err(unreachable_at_start)?;
        let level = pg::wal_level(&client).await?;
        if level != "logical" {
            return Err(Error::fatal(format!(
                "Postgres runs with wal_level={level}; deriver needs wal_level=logical (set it in postgresql.conf and restart Postgres)"
            )));
        }
        let loaded = load_pipelines(&cfg, &client).await?;
        let published = pg::publication_tables(&client, &cfg.postgres.publication)
            .await?
            .ok_or_else(|| Error::fatal(format!("publication `{}` does not exist; run `deriver setup` to create it", cfg.postgres.publication)))?;
        let filtered = pg::publication_row_filters(&client, &cfg.postgres.publication).await?;
        let mut interest = Interest::default();
        let mut routes: HashMap<TableName, Vec<Route>> = HashMap::new();
        let mut pipelines = Vec::new();
        for (idx, (def, info, sql)) in loaded.into_iter().enumerate() {
            let table = def.source.table.clone();
            let mut deps = deps::resolve(&client, &def, &info.key).await?;
            // Every table the pipeline reads must be published, with the columns deriver needs.
            for (t, cols) in &deps::wal_columns(&def, &info.key, &deps) {
                if let Some((_, filter)) = filtered.iter().find(|(f, _)| f == t) {
                    return Err(Error::fatal(format!(
                        "publication `{}` publishes only the rows of {t} where {filter}; pipeline `{}` needs every change of it (remove the row filter)",
                        cfg.postgres.publication, def.name
                    )));
                }
                let Some((_, published_cols)) = published.iter().find(|(p, _)| p == t) else {
                    return Err(Error::fatal(format!(
                        "publication `{}` does not cover table {t}, which pipeline `{}` reads; run `deriver setup`",
                        cfg.postgres.publication, def.name
                    )));
                };
                if let Some(pc) = published_cols {
                    if let Some(c) = cols.iter().find(|c| !pc.contains(c)) {
                        return Err(Error::fatal(format!(
                            "publication `{}` does not publish column {t}.{c}, which pipeline `{}` needs",
                            cfg.postgres.publication, def.name
                        )));
                    }
                }
            }
            if let Some(problem) = replica_identity_problem(&def, &info) {
                return Err(Error::fatal(problem));
            }
            let key_names: Vec<String> = info.key.iter().map(|k| k.name.clone()).collect();
            let key_pos = interest_positions(&mut interest, &table, &key_names);
            routes.entry(table).or_default().push(Route::Source(idx));
            for (di, d) in deps.iter_mut().enumerate() {
                d.this_pos = interest_positions(&mut interest, &d.table, &d.this_cols);
                if d.needs_ledger {
                    d.ident_pos = interest_positions(&mut interest, &d.table, &d.identity);
                }
                d.stmt = Some(client.prepare(&d.reverse_sql).await.map_err(|e| {
                    Error::config(format!("pipeline `{}`: the reverse query of its {} does not compile", def.name, d.dep.name(&def)))
                        .with_detail(Error::from(e).message)
                })?);
                routes.entry(d.table.clone()).or_default().push(Route::Dep(idx, di));
            }
            let stmt = client.prepare(&sql.keyed).await.map_err(|e| {
                Error::config(format!("pipeline `{}` ({}): its SQL does not compile", def.name, def.file.display())).with_detail(Error::from(e).message)
            })?;
            let mut sinks = Vec::new();
            for t in &def.search {
                let sink = SearchSink::open(&cfg.index.dir, &def, t, cfg.index.writer_memory_mb)?;
                shared.indexes.write().expect("lock").insert(t.index.clone(), sink.index());
                sinks.push(AnySink::Search(sink));
            }
            if !def.redis.is_empty() {
                let sink = RedisSink::open(&cfg.redis, &def).await.map_err(unreachable_at_start)?;
                sinks.push(AnySink::Redis(sink));
            }
            if deps.iter().any(|d| d.needs_ledger) {
                // Last, so it commits after the pipeline's other sinks.
                sinks.push(AnySink::Ledger(crate::sink::ledger::Ledger::open(&cfg.index.dir.join("_ledger"), &def.name, &def.hash)?));
            }
            pipelines.push(PipelineRt {
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
            });
        }
        let cfg_dir = cfg.index.dir.clone();
        let (built_tx, built_rx) = mpsc::channel(16);
        let (admin_tx, admin_rx) = mpsc::channel(16);
        *shared.admin.lock().expect("admin lock") = Some(admin_tx);
        // Interrupted builds (generations newer than the live one) go; requested reindexes resume.
        let mut pending_reindex = Vec::new();
        for (i, p) in pipelines.iter().enumerate() {
            for t in &p.def.search {
                crate::sink::tantivy::collect_garbage(&cfg.index.dir, &t.index, cfg.index.keep_generations, None)?;
                if reindex_marker(&cfg, &t.index).exists() && !pending_reindex.contains(&i) {
                    info!(pipeline = %p.def.name, "resuming a requested reindex that was interrupted (it starts over)");
                    pending_reindex.push(i);
                }
            }
        }
        let daemon = Daemon {
            cfg,
            pipelines,
            pg: client,
            interest,
            routes,
            shared,
            cancel,
            fence: CancellationToken::new(),
            resnapshot,
            rebuilds: Vec::new(),
            next_rebuild: 1,
            built_tx,
            built_rx: Some(built_rx),
            admin_rx: Some(admin_rx),
            since_swap: HashMap::new(),
            pending_reindex,
            dead: dead_letters::DeadLetters::open_waiting(&state_dir(&cfg_dir)).await?,
            last_sql_retry: Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now),
        };
        daemon.publish_status("snapshotting").await;
        Ok(daemon)
    }

    /// Makes this daemon stop committing once `fence` is cancelled (its process lost ownership
    /// of the slot), and claims ownership of the Redis views: batches of a previous owner are
    /// refused from now on.
    pub async fn own(&mut self, fence: CancellationToken) -> Result<()> {
        self.fence = fence;
        for p in &mut self.pipelines {
            for s in &mut p.sinks {
                if let AnySink::Redis(r) = s {
                    let epoch = r.claim_ownership().await?;
                    info!(pipeline = %p.def.name, epoch, "claimed the Redis views");
                }
            }
        }
        Ok(())
    }

    fn new_batch(&self) -> Batch {
        let deps: Vec<usize> = self.pipelines.iter().map(|p| p.deps.len()).collect();
        Batch::new(&deps, self.cfg.runtime.dirty_keys_in_memory)
    }

    async fn publish_status(&self, state: &str) {
        let previous = self.shared.snapshot();
        let mut pipelines = Vec::new();
        for p in &self.pipelines {
            let mut targets = BTreeMap::new();
            for s in &p.sinks {
                let cp = s.current_checkpoint();
                for label in s.labels() {
                    targets.insert(label, cp.as_ref().map(|c| c.lsn));
                }
            }
            pipelines.push(PipelineStatus {
                name: p.def.name.clone(),
                state: state.to_string(),
                generation: p.generation(),
                definition_hash: p.def.hash.clone(),
                applied_lsn: None,
                targets,
                lag_bytes: None,
                dead_letters: self.dead.count(&p.def.name) as u64,
                dead_letter_list: self.dead.list(&p.def.name, 20).unwrap_or_default(),
                description: p.def.description.clone(),
                owner: p.def.owner.clone(),
                error: None,
                reindex: None,
                // Audit results are published by the audit task; a new document keeps them.
                audit: previous.as_ref().and_then(|d| d.pipelines.iter().find(|q| q.name == p.def.name)).and_then(|q| q.audit.clone()),
            });
        }
        let server_lsn = pg::current_wal_lsn(&self.pg).await.ok();
        let slot = pg::slot_info(&self.pg, &self.cfg.postgres.slot).await.ok().flatten().map(|s| SlotStatus {
            name: self.cfg.postgres.slot.clone(),
            confirmed_flush_lsn: s.confirmed_flush_lsn,
            wal_status: s.wal_status,
        });
        // Found once per ownership by `orphans::watch` (started in `run`); kept across re-publishing.
        let orphans = self.shared.status.read().expect("status lock").as_ref().and_then(|d| d.orphans.clone());
        let mut doc = StatusDoc { server_lsn, slot, pipelines, role: None, owner: None, dependencies: None, orphans };
        for p in &mut doc.pipelines {
            p.refresh(server_lsn);
        }
        *self.shared.status.write().expect("status lock") = Some(doc);
    }

    /// Runs until cancelled (Ok) or a fatal condition (Err).
    /// `on_streaming` runs once, when every pipeline streams (after a first snapshot): the caller
    /// starts what must not see the sinks before that (the continuous audit).
    pub async fn run(mut self, on_streaming: impl FnOnce()) -> Result<()> {
        // State of removed pipelines: one start-up warning, and `orphans` in status.
        orphans::watch(self.cfg.clone(), self.shared.clone(), self.pipelines.iter().map(|p| p.def.clone()).collect(), self.cancel.clone());
        let url = self.cfg.postgres_url()?.to_string();
        let conninfo = pg::replication_conninfo(&url)?;
        let slot = self.cfg.postgres.slot.clone();
        let publication = self.cfg.postgres.publication.clone();

        let mut checkpoints = Vec::new();
        for p in &mut self.pipelines {
            for s in &mut p.sinks {
                checkpoints.push(s.checkpoint().await?);
            }
        }
        let any_checkpoint = checkpoints.iter().any(Option::is_some) && !self.resnapshot;
        let info = pg::slot_info(&self.pg, &slot).await?;
        let replication = match info {
            Some(info) => {
                if info.wal_status.as_deref() == Some("lost") {
                    return Err(Error::fatal(format!(
                        "replication slot `{slot}` was invalidated (wal_status=lost): Postgres removed WAL deriver had not yet applied; run `deriver run --resnapshot` to drop the slot and re-derive everything from a new one"
                    )));
                }
                if info.plugin.as_deref() != Some("pgoutput") {
                    return Err(Error::fatal(format!("replication slot `{slot}` exists but does not use pgoutput")));
                }
                let confirmed = info.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
                self.resync_behind(confirmed).await?;
                walstream::open(&conninfo, &slot, &publication).await?
            }
            None if any_checkpoint => {
                return Err(Error::fatal(format!(
                    "replication slot `{slot}` is missing but the sinks hold checkpoints: changes since then are lost to deriver; run `deriver run --resnapshot` to re-derive everything from a new slot"
                )));
            }
            None => self.initial_snapshot(&conninfo, &slot, &publication).await?,
        };
        let start = self.min_checkpoint().await?;
        self.publish_status("streaming").await;
        info!(%start, "streaming from the replication slot");
        on_streaming();
        self.stream_loop(replication, start, &conninfo, &slot, &publication).await
    }

    /// Says (in the log and status) whether the replication connection is encrypted, as the
    /// server sees the slot's walsender.
    async fn report_replication_encryption(&self, slot: &str) {
        let Ok(tls) = self.cfg.postgres_url().and_then(pg::tls_settings) else { return };
        let encryption = pg::replication_encryption(&self.pg, slot, &tls).await;
        crate::health::report_encryption("replication", &encryption);
    }

    async fn min_checkpoint(&mut self) -> Result<Lsn> {
        let mut min: Option<Lsn> = None;
        for p in &mut self.pipelines {
            for s in &mut p.sinks {
                let cp = s.checkpoint().await?.map(|c| c.lsn).unwrap_or(Lsn::ZERO);
                min = Some(min.map_or(cp, |m| m.min(cp)));
            }
        }
        Ok(min.unwrap_or(Lsn::ZERO))
    }

    /// First start: create the slot with an exported snapshot, derive every record from that
    /// snapshot, store the slot's consistent point as every sink's checkpoint.
    async fn initial_snapshot(&mut self, conninfo: &str, slot: &str, publication: &str) -> Result<walstream::Replication> {
        info!(slot, "creating the replication slot with an exported snapshot");
        let created = walstream::create_slot(conninfo, slot, publication).await?;
        let consistent = pg::slot_info(&self.pg, slot)
            .await?
            .and_then(|s| s.confirmed_flush_lsn)
            .ok_or_else(|| Error::fatal("the new replication slot has no consistent point"))?;
        let client = pg::connect(self.cfg.postgres_url()?).await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                crate::source::quote_literal(&created.snapshot_name)
            ))
            .await?;
        let all: Vec<usize> = (0..self.pipelines.len()).collect();
        self.bulk_derive(&client, &all, consistent).await?;
        client.batch_execute("COMMIT").await?;
        Ok(created.replication)
    }

    /// Pipelines whose sinks lack a checkpoint, lag behind the slot (the sink lost writes) or
    /// hold another definition are re-derived from a fresh snapshot, checkpointed at the slot's
    /// confirmed position: the stream replays everything after it, and replays only re-derive.
    async fn resync_behind(&mut self, confirmed: Lsn) -> Result<()> {
        let mut todo = Vec::new();
        for (i, p) in self.pipelines.iter_mut().enumerate() {
            let mut stale = false;
            for s in &mut p.sinks {
                let hash = s.definition_hash().to_string();
                match s.checkpoint().await? {
                    None => stale = true,
                    Some(cp) if cp.lsn < confirmed => {
                        warn!(pipeline = %p.def.name, sink = %s.labels().join(", "), checkpoint = %cp.lsn, slot = %confirmed,
                            "a sink is behind the replication slot (it lost acknowledged writes); re-deriving the pipeline");
                        stale = true;
                    }
                    Some(cp) if cp.definition_hash.as_deref().is_some_and(|h| h != hash) => {
                        info!(pipeline = %p.def.name, sink = %s.labels().join(", "), "the pipeline definition changed: re-deriving its records in place");
                        stale = true;
                    }
                    Some(_) => {}
                }
            }
            if stale {
                todo.push(i);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let client = pg::connect(self.cfg.postgres_url()?).await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        self.bulk_derive(&client, &todo, confirmed).await?;
        client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Derives every record of the given pipelines in `client`'s open transaction and replaces
    /// their sinks' content, checkpointed at `lsn`.
    async fn bulk_derive(&mut self, client: &Client, which: &[usize], lsn: Lsn) -> Result<()> {
        let chunk = self.cfg.runtime.derive_chunk.max(1);
        for &i in which {
            let p = &mut self.pipelines[i];
            let name = p.def.name.clone();
            info!(pipeline = %name, %lsn, "deriving every record");
            let started = Instant::now();
            let mut active = Vec::new();
            for (j, s) in p.sinks.iter_mut().enumerate() {
                // A frozen search generation declines: a new generation replaces it.
                if s.begin(lsn, BatchMode::Replace).await? {
                    active.push(j);
                }
            }
            // The ledger's rows come from the same snapshot.
            let ledger_sql: Vec<(usize, usize, String)> =
                p.deps.iter().enumerate().filter(|(_, d)| d.needs_ledger).map(|(di, d)| (di, d.identity.len(), d.ledger_sql())).collect();
            for (di, n_ident, sql) in ledger_sql {
                let rows = client.query(sql.as_str(), &[]).await.map_err(Error::from)?;
                let ledger = p.ledger().ok_or_else(|| Error::fatal("the ledger is not open"))?;
                for r in rows {
                    let vals: Vec<Option<String>> = (0..r.len()).map(|c| r.get(c)).collect();
                    let ident: Option<Vec<String>> = vals[..n_ident].iter().cloned().collect();
                    let this: Option<Vec<String>> = vals[n_ident..].iter().cloned().collect();
                    if let (Some(ident), Some(this)) = (ident, this) {
                        ledger.load(di, ident, this);
                    }
                }
            }
            client.batch_execute("SAVEPOINT deriver_bulk").await?;
            // The active sinks go to their writer tasks for the bulk load and come back after it.
            let mut slots: Vec<Option<AnySink>> = std::mem::take(&mut p.sinks).into_iter().map(Some).collect();
            let taken: Vec<AnySink> = active.iter().filter_map(|&j| slots[j].take()).collect();
            let (back, result) = reindex::stream_bulk(client, &p.sql.bulk, chunk, taken, None, &name).await;
            let complete = back.len() == active.len();
            for (&j, s) in active.iter().zip(back) {
                slots[j] = Some(s);
            }
            p.sinks = slots.into_iter().flatten().collect();
            if !complete {
                return Err(Error::fatal(format!("a sink of pipeline `{name}` failed during the bulk derivation")));
            }
            let mut sinks: Vec<&mut AnySink> = p.sinks.iter_mut().enumerate().filter(|(j, _)| active.contains(j)).map(|(_, s)| s).collect();
            let total = match result {
                Ok((total, rejected)) => {
                    note_rejects(&p.def.name, &mut p.failed, &rejected);
                    total
                }
                Err(e) if !e.is_transient() && e.is_postgres_answer() => {
                    // A row breaks the set-based query: derive key by key (chunks, a failing key
                    // alone) so only that row is a dead letter and the rest goes on.
                    warn!(pipeline = %name, error = %e, "deriving every record in one query failed; deriving in chunks to isolate the failing rows");
                    client.batch_execute("ROLLBACK TO SAVEPOINT deriver_bulk").await?;
                    let stmt = p.stmt.clone().ok_or_else(|| Error::transient("no prepared statement"))?;
                    let rows = client.query(p.sql.keys.as_str(), &[]).await?;
                    let keys: Vec<KeyTuple> = rows.iter().filter_map(|r| (0..r.len()).map(|c| r.get::<_, Option<String>>(c)).collect()).collect();
                    for part in keys.chunks(chunk) {
                        let (writes, rejected) = derive_keys(&self.pg, &stmt, p.key.len(), part).await?;
                        note_rejects(&p.def.name, &mut p.failed, &rejected);
                        let writes: Vec<Write> = writes.into_iter().filter(|w| matches!(w, Write::Upsert(_))).collect();
                        for s in sinks.iter_mut() {
                            let rejected = s.write(&writes).await?;
                            note_rejects(&p.def.name, &mut p.failed, &rejected);
                        }
                    }
                    keys.len() as u64
                }
                Err(e) => return Err(e),
            };
            self.dead.persist(&name, &p.failed)?; // issue 28: dead letters durable before the checkpoints pass them
            for s in sinks {
                s.commit().await?;
            }
            if p.def.on_error == OnError::Stop && !p.failed.is_empty() {
                return Err(Error::fatal(format!("pipeline `{name}` rejected key {} ({}) and says `on_error: stop`", p.failed[0].0, p.failed[0].1)));
            }
            info!(pipeline = %name, rows = total, secs = started.elapsed().as_secs_f64(), "derived every record");
            release_memory();
            self.settle_dead_letters()?;
        }
        Ok(())
    }

    async fn stream_loop(&mut self, first: walstream::Replication, start: Lsn, conninfo: &str, slot: &str, publication: &str) -> Result<()> {
        let idle = Duration::from_millis(self.cfg.runtime.idle_ms.max(100));
        let mut replication = Some(first);
        let mut start = start;
        let mut retry = retry::Retry::outage();
        loop {
            let repl = match replication.take() {
                Some(r) => r,
                None => match walstream::open(conninfo, slot, publication).await {
                    Ok(r) => r,
                    Err(e) if e.is_transient() => {
                        warn!(error = %e, "cannot reopen the replication connection; retrying");
                        if self.sleep_or_cancel(retry.next_delay()).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let stream_cancel = self.cancel.child_token();
            let (rx, acker) = match repl.start(start, self.interest.clone(), idle, stream_cancel.clone()).await {
                Ok(x) => {
                    // Streaming again: the next outage starts from the shortest wait.
                    retry.reset();
                    self.report_replication_encryption(slot).await;
                    x
                }
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "cannot start streaming; retrying");
                    if self.sleep_or_cancel(retry.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = self.apply_loop(rx, &acker, start).await;
            stream_cancel.cancel();
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "replication interrupted; resuming from the sinks' checkpoints");
                    for p in &mut self.pipelines {
                        if let Some(l) = p.ledger() {
                            l.discard_staged();
                        }
                    }
                    if self.sleep_or_cancel(retry.next_delay()).await {
                        return Ok(());
                    }
                    start = self.min_checkpoint().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// true when cancelled during the sleep.
    async fn sleep_or_cancel(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    async fn apply_loop(&mut self, rx: mpsc::Receiver<Result<SourceEvent>>, acker: &Acker, start: Lsn) -> Result<()> {
        let mut built_rx = self.built_rx.take().expect("built receiver");
        let mut admin_rx = self.admin_rx.take().expect("admin receiver");
        let result = self.apply_loop_inner(rx, acker, start, &mut built_rx, &mut admin_rx).await;
        self.built_rx = Some(built_rx);
        self.admin_rx = Some(admin_rx);
        result
    }

    async fn apply_loop_inner(
        &mut self,
        mut rx: mpsc::Receiver<Result<SourceEvent>>,
        acker: &Acker,
        start: Lsn,
        built_rx: &mut mpsc::Receiver<reindex::Built>,
        admin_rx: &mut mpsc::Receiver<status::AdminRequest>,
    ) -> Result<()> {
        // Search indexes built from another definition are rebuilt in the background; so are
        // reindexes requested before a restart.
        for i in 0..self.pipelines.len() {
            let frozen = self.pipelines[i].sinks.iter().any(|s| matches!(s, AnySink::Search(x) if x.is_frozen()));
            if frozen {
                info!(pipeline = %self.pipelines[i].def.name, "its search definition changed: building a new index generation in the background");
                self.start_rebuild(i, false, start).await?;
            }
        }
        for i in std::mem::take(&mut self.pending_reindex) {
            self.start_rebuild(i, true, start).await?;
        }
        let mut batch = self.new_batch();
        let mut last_pub_check = Instant::now();
        let mut in_txn = false;
        // The open transaction's xid and the batch's change count when it began.
        let mut txn: (u32, usize) = (0, 0);
        let mut applied = start;
        // An idle position not yet stored in the sinks (see the flush tick).
        let mut idle_pending = false;
        let max_wait = self.cfg.runtime.batch_max_wait();
        let max_changes = self.cfg.runtime.batch_max_changes.max(1);
        let mut flush_tick = tokio::time::interval(max_wait.max(Duration::from_millis(5)));
        let mut cp_tick = tokio::time::interval(Duration::from_millis(self.cfg.runtime.idle_ms.max(100)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        cp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    check_fence(&self.fence)?;
                    if !in_txn {
                        applied = self.flush(&mut batch, applied).await?;
                        self.checkpoint_idle_sinks(applied).await?;
                    }
                    self.ack(acker, true).await;
                    return Ok(());
                }
                Some(built) = built_rx.recv(), if !in_txn => {
                    applied = self.flush(&mut batch, applied).await?;
                    self.finish_rebuild(built, applied).await?;
                    release_memory();
                    self.ack(acker, false).await;
                }
                Some(req) = admin_rx.recv(), if !in_txn => {
                    applied = self.flush(&mut batch, applied).await?;
                    self.admin(req, applied).await;
                }
                _ = flush_tick.tick() => {
                    if !in_txn && batch.started.is_some_and(|t| t.elapsed() >= max_wait) {
                        applied = self.flush(&mut batch, applied).await?;
                        self.ack(acker, false).await;
                    }
                    // The server moved past the last transaction with nothing for deriver in
                    // between: store that position now (at most once a tick), so a reader
                    // waiting for a position after its own commit is answered without waiting
                    // for the idle tick.
                    if idle_pending && !in_txn && !batch.has_work() {
                        idle_pending = false;
                        self.checkpoint_idle_sinks(applied).await?;
                    }
                }
                _ = cp_tick.tick() => {
                    if !in_txn {
                        if !batch.has_work() {
                            applied = applied.max(batch.end_lsn.unwrap_or(Lsn::ZERO));
                            batch = self.new_batch();
                        }
                        self.checkpoint_idle_sinks(applied).await?;
                    }
                    self.ack(acker, false).await;
                    self.refresh_server_status().await;
                    if last_pub_check.elapsed() >= Duration::from_secs(5) {
                        self.check_publication().await?;
                        last_pub_check = Instant::now();
                    }
                    if !self.rebuilds.is_empty() {
                        self.publish_reindex_status();
                    }
                    if !in_txn {
                        self.retry_dead_letters(applied).await?;
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Err(Error::transient("the replication stream ended")) };
                    match ev? {
                        SourceEvent::Begin { xid } => {
                            in_txn = true;
                            txn = (xid, batch.changes);
                        }
                        SourceEvent::Change(change) => {
                            self.route(&change, &mut batch)?;
                        }
                        SourceEvent::Truncate { tables } => {
                            for t in tables {
                                let routes = self.routes.get(&*t).cloned().unwrap_or_default();
                                for r in routes {
                                    match r {
                                        Route::Source(i) => batch.dirty[i].truncate = true,
                                        Route::Dep(i, di) => {
                                            batch.dirty[i].rederive_all = true;
                                            if let Some(l) = self.pipelines[i].ledger() {
                                                l.clear_relation(di);
                                            }
                                        }
                                    }
                                    batch.changes += 1;
                                }
                            }
                        }
                        SourceEvent::Commit { end_lsn, .. } => {
                            tracing::debug!(%end_lsn, changes = batch.changes, "commit");
                            failpoint("after_buffer");
                            in_txn = false;
                            if batch.changes > txn.1 {
                                batch.xids.push(txn.0);
                            }
                            batch.end_lsn = Some(end_lsn);
                            batch.started.get_or_insert_with(Instant::now);
                            // Flush at once when nothing more is queued (an idle stream gets the
                            // lowest latency; under load, changes pile up during a flush and the
                            // next batch is larger) or when the batch is full; otherwise the flush
                            // tick bounds how long a batch waits under a continuous stream.
                            let waited = batch.started.is_some_and(|t| t.elapsed() >= max_wait);
                            if batch.changes >= max_changes || rx.is_empty() || waited {
                                applied = self.flush(&mut batch, applied).await?;
                                self.ack(acker, false).await;
                            }
                        }
                        SourceEvent::Idle { lsn } => {
                            tracing::trace!(%lsn, "idle");
                            if !in_txn && !batch.has_work() {
                                let before = applied;
                                applied = applied.max(lsn).max(batch.end_lsn.unwrap_or(Lsn::ZERO));
                                idle_pending |= applied > before;
                                batch = self.new_batch();
                            }
                        }
                    }
                }
            }
        }
    }

    fn route(&mut self, change: &RowChange, batch: &mut Batch) -> Result<()> {
        let Some(routes) = self.routes.get(&*change.table).cloned() else { return Ok(()) };
        for r in routes {
            match r {
                Route::Source(i) => {
                    let p = &self.pipelines[i];
                    let key_of = |texts: &Option<Vec<Option<String>>>| -> Option<KeyTuple> {
                        let texts = texts.as_ref()?;
                        p.key_pos.iter().map(|&pos| texts.get(pos).cloned().flatten()).collect()
                    };
                    let new = key_of(&change.new);
                    let old = key_of(&change.old);
                    if new.is_none() && old.is_none() {
                        // A NULL in a key column (the replica identity is checked at start, so the
                        // column is there): such a row has no key and cannot be a record.
                        warn!(pipeline = %p.def.name, table = %change.table, kind = ?change.kind, "a row with a NULL key was skipped");
                        metrics::counter!("deriver_null_keys_total", "pipeline" => p.def.name.clone()).increment(1);
                    }
                    for k in [new, old].into_iter().flatten() {
                        batch.dirty[i].keys.insert(k)?;
                    }
                }
                Route::Dep(i, di) => {
                    let p = &mut self.pipelines[i];
                    let ledger = p.sinks.iter_mut().find_map(|s| match s {
                        AnySink::Ledger(l) => Some(l),
                        _ => None,
                    });
                    p.deps[di].probe(di, change, &mut batch.dirty[i].probes[di], ledger)?;
                }
            }
            batch.changes += 1;
        }
        Ok(())
    }

    /// Re-derives the batch's dirty keys and commits them to every sink at the batch's end LSN.
    /// Transient failures are retried with backoff; the batch stays whole.
    async fn flush(&mut self, batch: &mut Batch, applied: Lsn) -> Result<Lsn> {
        let Some(lsn) = batch.end_lsn else { return Ok(applied) };
        if !batch.has_work() {
            *batch = self.new_batch();
            return Ok(applied.max(lsn));
        }
        let mut retry = retry::Retry::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let visible_started = Instant::now();
            let attempt = match self.wait_visible(&batch.xids).await {
                Ok(()) => {
                    let waited = visible_started.elapsed();
                    if waited > Duration::from_millis(2) {
                        tracing::debug!(ms = waited.as_secs_f64() * 1e3, "waited for the batch's transactions to become visible");
                    }
                    self.try_flush(&mut batch.dirty, lsn, batch.changes).await
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    for p in &mut self.pipelines {
                        for s in &mut p.sinks {
                            s.abort().await;
                        }
                    }
                    warn!(error = %e, "applying a batch failed; retrying");
                    for i in 0..self.pipelines.len() {
                        if batch.dirty[i].has_work() {
                            self.set_pipeline_error(i, Some(format!("retrying: {}", e.message)));
                        }
                    }
                    // Lag keeps counting while the batch waits.
                    self.refresh_server_status().await;
                    if self.sleep_or_cancel(retry.next_delay()).await {
                        return Err(e);
                    }
                    if let Err(e2) = self.reconnect_pg().await {
                        warn!(error = %e2, "reconnecting to Postgres failed");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.settle_dead_letters()?;
        if retry.waits() > 0 {
            // The batch went through after retries: the outage is over.
            self.shared.update(|doc| {
                for p in &mut doc.pipelines {
                    if p.error.as_deref().is_some_and(|e| e.starts_with("retrying: ")) {
                        p.error = None;
                    }
                }
            });
        }
        let n = batch.changes;
        let elapsed = batch.started.map(|t| t.elapsed());
        *batch = self.new_batch();
        if n >= 10_000 {
            release_memory();
        }
        metrics::counter!("deriver_changes_applied_total").increment(n as u64);
        if let Some(e) = elapsed {
            metrics::histogram!("deriver_batch_latency_seconds").record(e.as_secs_f64());
        }
        self.update_targets(lsn);
        Ok(applied.max(lsn))
    }

    /// Waits until every transaction in `xids` is visible to new snapshots. Postgres sends a
    /// transaction's commit to the walsender once the commit record is flushed, a moment before
    /// the committing backend leaves the proc array; a derivation in that moment would read the
    /// rows as they were before the transaction and store that under its LSN. Without
    /// `pg_read_all_stats` rights, `pg_current_snapshot()` is the portable way to tell.
    async fn wait_visible(&self, xids: &[u32]) -> Result<()> {
        if xids.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut warned = false;
        loop {
            let snap: String = self.pg.query_one("SELECT pg_current_snapshot()::text", &[]).await?.get(0);
            let Some((xmin, xmax, running)) = parse_snapshot(&snap) else {
                return Err(Error::fatal(format!("unexpected snapshot text from Postgres: {snap}")));
            };
            if !xids.iter().any(|&x| !visible_in(x, xmin, xmax, &running)) {
                return Ok(());
            }
            if !warned && started.elapsed() > Duration::from_secs(5) {
                warn!("a committed transaction is still not visible to new snapshots after 5 s; waiting");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn try_flush(&mut self, dirty_all: &mut [Dirty], lsn: Lsn, changes: usize) -> Result<()> {
        tracing::debug!(%lsn, changes, "flushing a batch");
        let chunk = self.cfg.runtime.derive_chunk.max(1);
        for (i, dirty) in dirty_all.iter_mut().enumerate() {
            if !dirty.has_work() {
                continue;
            }
            if dirty.rederive_all {
                for r in self.rebuilds.iter_mut().filter(|r| r.pipeline == i) {
                    r.restart = true;
                }
                self.since_swap.retain(|_, (pi, _, _)| *pi != i);
                // A dependency table was truncated: every record may change.
                info!(pipeline = %self.pipelines[i].def.name, "a table this pipeline joins was truncated: re-deriving every record");
                let client = pg::connect(self.cfg.postgres_url()?).await?;
                client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
                self.bulk_derive(&client, &[i], lsn).await?;
                client.batch_execute("COMMIT").await?;
                self.shared.notify_change(status::ChangeNotice {
                    pipeline: self.pipelines[i].def.name.clone(),
                    lsn,
                    keys: vec!["*".into()],
                    deleted: Vec::new(),
                });
                continue;
            }
            // Changes to lookup, child and link tables: find the source keys they reach.
            for di in 0..self.pipelines[i].deps.len() {
                if dirty.probes[di].is_empty() {
                    continue;
                }
                let mut chunks = dirty.probes[di].chunks(chunk)?;
                while let Some(part) = chunks.next_chunk()? {
                    let keys = self.pipelines[i].deps[di].source_keys(&self.pg, &part).await?;
                    for k in keys {
                        dirty.keys.insert(k)?;
                    }
                }
            }
            // Rebuilds of this pipeline need every key re-derived after they started.
            if self.rebuilds.iter().any(|r| r.pipeline == i) || self.since_swap.values().any(|(pi, _, _)| *pi == i) {
                if dirty.truncate {
                    for r in self.rebuilds.iter_mut().filter(|r| r.pipeline == i) {
                        r.restart = true;
                    }
                    self.since_swap.retain(|_, (pi, _, _)| *pi != i);
                }
                let mut chunks = dirty.keys.chunks(chunk)?;
                while let Some(part) = chunks.next_chunk()? {
                    for k in &part {
                        for r in self.rebuilds.iter_mut().filter(|r| r.pipeline == i) {
                            r.log.insert(k.clone())?;
                        }
                        for (_, (_, _, log)) in self.since_swap.iter_mut().filter(|(_, (pi, _, _))| *pi == i) {
                            log.insert(k.clone())?;
                        }
                    }
                }
            }
            let p = &mut self.pipelines[i];
            let mode = BatchMode::Incremental { clear_all: dirty.truncate };
            let mut active = Vec::new();
            for (j, s) in p.sinks.iter_mut().enumerate() {
                if s.begin(lsn, mode).await? {
                    active.push(j);
                }
            }
            if active.is_empty() {
                continue;
            }
            if dirty.keys.is_empty() && !dirty.truncate {
                // Probes reached no source key: only the ledger (if any) moves.
                for &j in &active {
                    p.sinks[j].commit().await?;
                }
                continue;
            }
            let stmt = p.stmt.clone().ok_or_else(|| Error::transient("no prepared statement"))?;
            let stages = Instant::now();
            let mut deriving = Duration::ZERO;
            // Keys for the change notice, kept only up to a bound (a huge batch says so).
            let mut upserted: Vec<String> = Vec::new();
            let mut deleted: Vec<String> = Vec::new();
            let mut truncated_notice = dirty.truncate;
            let mut chunks = dirty.keys.chunks(chunk)?;
            while let Some(part) = chunks.next_chunk()? {
                let derive_started = Instant::now();
                let (writes, rejected) = derive_keys(&self.pg, &stmt, p.key.len(), &part).await?;
                deriving += derive_started.elapsed();
                failpoint("after_derive");
                tracing::trace!(pipeline = %p.def.name, keys = part.len(), writes = writes.len(), "derived");
                if upserted.len() + deleted.len() < NOTICE_KEYS {
                    for w in &writes {
                        match w {
                            Write::Upsert(r) => upserted.push(r.key.clone()),
                            Write::Delete { key } => deleted.push(key.clone()),
                        }
                    }
                } else {
                    truncated_notice = true;
                }
                note_rejects(&p.def.name, &mut p.failed, &rejected);
                // A record any target refuses goes to none of them: the targets stay consistent.
                let mut refused: Vec<Rejected> = Vec::new();
                for &j in &active {
                    for r in p.sinks[j].validate(&writes) {
                        if !refused.iter().any(|x| x.key == r.key) {
                            refused.push(r);
                        }
                    }
                }
                let mut writes = writes;
                if !refused.is_empty() {
                    note_rejects(&p.def.name, &mut p.failed, &refused);
                    writes.retain(|w| !refused.iter().any(|r| r.key == w.key()));
                }
                let failed_before = p.failed.len();
                for &j in &active {
                    let rejected = p.sinks[j].write(&writes).await?;
                    note_rejects(&p.def.name, &mut p.failed, &rejected);
                }
                let failed: std::collections::HashSet<String> = p.failed[failed_before..].iter().map(|(k, _)| k.clone()).collect();
                p.written.extend(writes.iter().map(|w| w.key().to_string()).filter(|k| !failed.contains(k)));
            }
            if p.def.on_error == OnError::Stop && !p.failed.is_empty() {
                return Err(Error::fatal(format!("pipeline `{}` rejected key {} ({}) and says `on_error: stop`", p.def.name, p.failed[0].0, p.failed[0].1)));
            }
            self.dead.persist(&p.def.name, &p.failed)?; // issue 28: dead letters durable before the checkpoints pass them
            let started = Instant::now();
            commit_sinks(&mut p.sinks, &active, &self.fence).await?;
            failpoint("after_sink_commits");
            let committing = started.elapsed();
            metrics::histogram!("deriver_commit_latency_seconds", "pipeline" => p.def.name.clone()).record(committing.as_secs_f64());
            tracing::debug!(
                pipeline = %p.def.name,
                %lsn,
                changes,
                derive_ms = deriving.as_secs_f64() * 1e3,
                write_ms = started.duration_since(stages).saturating_sub(deriving).as_secs_f64() * 1e3,
                commit_ms = committing.as_secs_f64() * 1e3,
                "batch applied"
            );
            if truncated_notice {
                // Too many keys (or a TRUNCATE) to list: an empty notice with `keys: ["*"]` tells
                // readers to re-read everything.
                upserted = vec!["*".to_string()];
                deleted.clear();
            }
            self.shared.notify_change(status::ChangeNotice { pipeline: p.def.name.clone(), lsn, keys: upserted, deleted });
        }
        Ok(())
    }

    /// Moves this flush's rejections into the dead-letter store and clears keys that were
    /// written fine.
    pub fn settle_dead_letters(&mut self) -> Result<()> {
        for p in &mut self.pipelines {
            let failed = std::mem::take(&mut p.failed);
            let written = std::mem::take(&mut p.written);
            // The pipeline's SQL works again (a derivation succeeded while keys are dead after
            // SQL errors, e.g. during a schema change): retry those now rather than after backoff.
            if !written.is_empty() && failed.is_empty() && self.dead.count(&p.def.name) > 0 {
                p.retry_sql_errors = true;
            }
            self.dead.resolve(&p.def.name, &written)?;
            self.dead.record(&p.def.name, &failed)?;
        }
        Ok(())
    }

    /// Retries dead letters whose backoff has passed.
    async fn retry_dead_letters(&mut self, applied: Lsn) -> Result<()> {
        for i in 0..self.pipelines.len() {
            let name = self.pipelines[i].def.name.clone();
            let mut due = self.dead.due(&name, 500)?;
            if std::mem::take(&mut self.pipelines[i].retry_sql_errors) && self.last_sql_retry.elapsed() >= Duration::from_secs(5) {
                self.last_sql_retry = Instant::now();
                for d in self.dead.list(&name, 500)? {
                    if d.reason.contains("Postgres error") && !due.contains(&d.key) {
                        due.push(d.key);
                    }
                }
            }
            if due.is_empty() {
                continue;
            }
            info!(pipeline = %name, keys = due.len(), "retrying dead letters");
            if let Err(e) = self.repair(&name, &due, Some(applied)).await {
                warn!(pipeline = %name, error = %e, "retrying dead letters failed");
            }
            let again = self.dead.not_retried(&name, &due, &self.pipelines[i].written, &self.pipelines[i].failed)?;
            self.pipelines[i].failed.extend(again);
            self.settle_dead_letters()?;
        }
        Ok(())
    }

    /// Starts a background full reprocess of a pipeline: a new generation for each search target
    /// (and, when `redis`, a rewrite of its Redis views in place), from position `from`.
    async fn start_rebuild(&mut self, i: usize, redis: bool, from: Lsn) -> Result<Vec<String>> {
        self.refresh_field_types(i).await?;
        let mut started = Vec::new();
        let total = reindex::estimate_rows(&self.pg, &self.pipelines[i].def.source.table).await;
        let search_sinks: Vec<usize> = self.pipelines[i].sinks.iter().enumerate().filter(|(_, s)| matches!(s, AnySink::Search(_))).map(|(j, _)| j).collect();
        let mut redis_done = !redis || self.pipelines[i].def.redis.is_empty();
        let jobs: Vec<Option<usize>> = if search_sinks.is_empty() { vec![None] } else { search_sinks.into_iter().map(Some).collect() };
        for j in jobs {
            if self.rebuilds.iter().any(|r| r.pipeline == i && r.sink == j) {
                continue;
            }
            let p = &self.pipelines[i];
            let (search, index, generation) = match j {
                Some(j) => {
                    let AnySink::Search(live) = &p.sinks[j] else { unreachable!("a search sink") };
                    let target = p.def.search.iter().find(|t| t.index == live.index().name).expect("target").clone();
                    let gen = crate::sink::tantivy::next_generation(&self.cfg.index.dir, &target.index)?;
                    let sink = SearchSink::create_generation(&self.cfg.index.dir, &p.def, &target, gen, self.cfg.index.writer_memory_mb)?;
                    if redis {
                        std::fs::write(reindex_marker(&self.cfg, &target.index), "requested\n")?;
                    }
                    (Some(AnySink::Search(sink)), target.index.clone(), Some(gen))
                }
                None if redis_done => continue,
                None => (None, String::new(), None),
            };
            let redis_sink = if !redis_done {
                redis_done = true;
                Some(AnySink::Redis(RedisSink::open(&self.cfg.redis, &p.def).await?))
            } else {
                None
            };
            let rewrite_redis = redis_sink.is_some();
            let progress = reindex::Progress::new(total);
            let id = self.next_rebuild;
            self.next_rebuild += 1;
            let job = reindex::BuildJob {
                id,
                url: self.cfg.postgres_url()?.to_string(),
                sql: p.sql.bulk.clone(),
                chunk: self.cfg.runtime.derive_chunk,
                from,
                search,
                redis: redis_sink,
                progress: progress.clone(),
                pipeline: p.def.name.clone(),
            };
            let tx = self.built_tx.clone();
            tokio::spawn(async move {
                let built = job.run().await;
                let _ = tx.send(built).await;
            });
            info!(pipeline = %p.def.name, index = %index, generation = %generation.map_or_else(|| "-".to_string(), |g| g.to_string()), %from, "full reprocess started");
            started.push(p.def.name.clone());
            self.rebuilds.push(reindex::Rebuild {
                id,
                pipeline: i,
                sink: j,
                index,
                generation,
                from,
                log: DirtyKeys::new(self.cfg.runtime.dirty_keys_in_memory),
                progress,
                redis: rewrite_redis,
                restart: false,
            });
        }
        self.publish_reindex_status();
        Ok(started)
    }

    /// Derives `keys` and writes them to `sink` at `lsn` with `mode` (`sink` = None: the live
    /// sink `live` of pipeline `i`).
    async fn catch_up_sink(&mut self, i: usize, sink: Option<&mut AnySink>, live: usize, keys: &mut DirtyKeys, lsn: Lsn, mode: BatchMode) -> Result<u64> {
        let chunk = self.cfg.runtime.derive_chunk.max(1);
        let p = &mut self.pipelines[i];
        let stmt = p.stmt.clone().ok_or_else(|| Error::transient("no prepared statement"))?;
        let n_key = p.key.len();
        let sink: &mut AnySink = match sink {
            Some(s) => s,
            None => &mut p.sinks[live],
        };
        if !sink.begin(lsn, mode).await? {
            return Ok(0);
        }
        let mut n = 0u64;
        let mut chunks = keys.chunks(chunk)?;
        while let Some(part) = chunks.next_chunk()? {
            let (writes, rejected) = derive_keys(&self.pg, &stmt, n_key, &part).await?;
            n += writes.len() as u64;
            note_rejects(&p.def.name, &mut p.failed, &rejected);
            let failed_before = p.failed.len();
            let rejected = sink.write(&writes).await?;
            note_rejects(&p.def.name, &mut p.failed, &rejected);
            let failed: std::collections::HashSet<String> = p.failed[failed_before..].iter().map(|(k, _)| k.clone()).collect();
            p.written.extend(writes.iter().map(|w| w.key().to_string()).filter(|k| !failed.contains(k)));
        }
        sink.commit().await?;
        Ok(n)
    }

    /// A background build finished: catch the new generation up and make it live.
    async fn finish_rebuild(&mut self, built: reindex::Built, applied: Lsn) -> Result<()> {
        let Some(pos) = self.rebuilds.iter().position(|r| r.id == built.id) else { return Ok(()) };
        // Status shows the catch-up and swap until they are done (the CLI follows it).
        self.rebuilds[pos].progress.set_phase(reindex::Phase::CatchingUp);
        self.publish_reindex_status();
        let mut r = self.rebuilds.remove(pos);
        let name = self.pipelines[r.pipeline].def.name.clone();
        let mut new = match built.result {
            Err(e) => {
                error!(pipeline = %name, error = %e, "the full reprocess failed; the live generation stays");
                self.set_pipeline_error(r.pipeline, Some(format!("reindex failed: {e}")));
                let frozen = r.sink.is_some_and(|j| matches!(&self.pipelines[r.pipeline].sinks[j], AnySink::Search(s) if s.is_frozen()));
                if frozen || r.restart {
                    // The live index is from another definition: try again.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    self.start_rebuild(r.pipeline, r.redis, applied).await?;
                }
                self.publish_reindex_status();
                return Ok(());
            }
            Ok(s) => s,
        };
        if r.restart {
            info!(pipeline = %name, "the source was truncated during the reprocess: starting it over");
            drop(new);
            self.start_rebuild(r.pipeline, r.redis, applied).await?;
            return Ok(());
        }
        // Catch up: every key re-derived since `from`, at the current position.
        let i = r.pipeline;
        let mut log = std::mem::replace(&mut r.log, DirtyKeys::new(1));
        let caught = self.catch_up_sink(i, Some(&mut new), 0, &mut log, applied, BatchMode::Incremental { clear_all: false }).await?;
        if r.redis {
            if let Some(j) = self.pipelines[i].sinks.iter().position(|s| matches!(s, AnySink::Redis(_))) {
                self.catch_up_sink(i, None, j, &mut log, applied, BatchMode::Repair).await?;
            }
        }
        if let (Some(j), Some(gen)) = (r.sink, r.generation) {
            let AnySink::Search(new_search) = &new else { unreachable!("a search sink") };
            // The new generation may still sit at `from` (nothing changed meanwhile): move it on.
            crate::sink::tantivy::set_current(&self.cfg.index.dir, &r.index, gen)?;
            self.shared.indexes.write().expect("lock").insert(r.index.clone(), new_search.index());
            let old = std::mem::replace(&mut self.pipelines[i].sinks[j], new);
            let (old_gen, old_frozen) = match &old {
                AnySink::Search(s) => (s.generation(), s.is_frozen()),
                _ => (0, true),
            };
            drop(old);
            if !old_frozen {
                self.since_swap.insert(r.index.clone(), (i, old_gen, DirtyKeys::new(self.cfg.runtime.dirty_keys_in_memory)));
            } else {
                self.since_swap.remove(&r.index);
            }
            let _ = std::fs::remove_file(reindex_marker(&self.cfg, &r.index));
            let removed = crate::sink::tantivy::collect_garbage(&self.cfg.index.dir, &r.index, self.cfg.index.keep_generations, None)?;
            info!(pipeline = %name, index = %r.index, generation = gen, previous = old_gen, caught_up = caught, removed = %removed.iter().map(u64::to_string).collect::<Vec<_>>().join(", "), "the new generation is live");
            // Bring the checkpoint to the current position even when nothing needed catching up.
            self.checkpoint_idle_sinks(applied).await?;
        } else {
            info!(pipeline = %name, caught_up = caught, "the Redis views were rewritten");
        }
        self.set_pipeline_error(i, None);
        self.shared.notify_change(status::ChangeNotice { pipeline: name, lsn: applied, keys: vec!["*".into()], deleted: Vec::new() });
        self.update_targets(applied);
        self.publish_reindex_status();
        Ok(())
    }

    /// Full reprocess with no daemon running: builds new generations (and rewrites Redis views)
    /// from a snapshot, checkpointed at the slot's confirmed position, then makes them live. The
    /// next `deriver run` streams everything after that position.
    pub async fn reindex_offline(mut self, names: &[String], mut on_progress: impl FnMut(&str, &reindex::Progress)) -> Result<()> {
        let slot = pg::slot_info(&self.pg, &self.cfg.postgres.slot)
            .await?
            .ok_or_else(|| Error::config("there is no replication slot yet: `deriver run` derives every record on its first start"))?;
        let from = slot.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
        for name in names {
            let i = self.pipelines.iter().position(|p| &p.def.name == name).ok_or_else(|| Error::config(format!("no pipeline named `{name}`")))?;
            self.start_rebuild(i, true, from).await?;
            let mut built_rx = self.built_rx.take().expect("built receiver");
            while self.rebuilds.iter().any(|r| r.pipeline == i) {
                tokio::select! {
                    built = built_rx.recv() => {
                        let built = built.ok_or_else(|| Error::fatal("a rebuild task vanished"))?;
                        if let Err(e) = &built.result {
                            return Err(Error::fatal(format!("reindex of `{name}` failed")).with_detail(e));
                        }
                        for r in self.rebuilds.iter().filter(|r| r.id == built.id) {
                            r.progress.set_phase(reindex::Phase::CatchingUp);
                            on_progress(name, &r.progress);
                        }
                        self.finish_rebuild(built, from).await?;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        for r in self.rebuilds.iter().filter(|r| r.pipeline == i) {
                            on_progress(name, &r.progress);
                        }
                    }
                }
            }
            self.built_rx = Some(built_rx);
        }
        Ok(())
    }

    /// Rollback with no daemon running: the previous generation becomes live again; its
    /// checkpoint is older than the slot, so the next `deriver run` re-derives it in place.
    pub fn rollback_offline(cfg: &Config, pipeline: &str) -> Result<Vec<u64>> {
        let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|_| Error::config("the pipeline files have problems (run `deriver validate`)"))?;
        let def = defs.iter().find(|d| d.name == pipeline).ok_or_else(|| Error::config(format!("no pipeline named `{pipeline}`")))?;
        let mut out = Vec::new();
        for t in &def.search {
            let live = crate::sink::tantivy::current_generation(&cfg.index.dir, &t.index)
                .ok_or_else(|| Error::config(format!("index `{}` has no generation yet", t.index)))?;
            let prev = crate::sink::tantivy::generations(&cfg.index.dir, &t.index)
                .into_iter()
                .filter(|g| *g < live)
                .max()
                .ok_or_else(|| Error::config(format!("index `{}` has no previous generation to roll back to (index.keep_generations)", t.index)))?;
            crate::sink::tantivy::set_current(&cfg.index.dir, &t.index, prev)?;
            out.push(prev);
        }
        if out.is_empty() {
            return Err(Error::config(format!("pipeline `{pipeline}` has no search index to roll back")));
        }
        Ok(out)
    }

    /// Re-derives some source keys (key text) and rewrites them in every target, at `applied`
    /// (the daemon's position) or, without a daemon, at each sink's own checkpoint. Checkpoints
    /// never move backwards.
    pub async fn repair(&mut self, pipeline: &str, keys: &[String], applied: Option<Lsn>) -> std::result::Result<usize, String> {
        let i = self.pipelines.iter().position(|p| p.def.name == pipeline).ok_or_else(|| format!("no pipeline named `{pipeline}`"))?;
        let n = self.pipelines[i].key.len();
        let mut dirty = DirtyKeys::new(self.cfg.runtime.dirty_keys_in_memory);
        for k in keys {
            let t: KeyTuple = derive::split_key_text(k, n).unwrap_or_default();
            if t.len() != n {
                return Err(format!("key `{k}` does not have {n} parts"));
            }
            dirty.insert(t).map_err(|e| e.to_string())?;
        }
        let lsn = match applied {
            Some(l) => l,
            None => self.pipelines[i].sinks.iter().filter_map(|s| s.current_checkpoint().map(|c| c.lsn)).min().unwrap_or(Lsn::ZERO),
        };
        let sinks: Vec<usize> = self.pipelines[i]
            .sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s, AnySink::Ledger(_)) && !matches!(s, AnySink::Search(x) if x.is_frozen()))
            .map(|(j, _)| j)
            .collect();
        for j in sinks {
            self.catch_up_sink(i, None, j, &mut dirty, lsn, BatchMode::Repair).await.map_err(|e| e.to_string())?;
        }
        info!(pipeline, keys = keys.len(), "repaired drifted keys");
        Ok(keys.len())
    }

    /// Swaps a pipeline's search indexes back to the generation they replaced (caught up first).
    async fn rollback(&mut self, pipeline: &str, applied: Lsn) -> std::result::Result<Vec<u64>, String> {
        let i = self.pipelines.iter().position(|p| p.def.name == pipeline).ok_or_else(|| format!("no pipeline named `{pipeline}`"))?;
        let mut swapped = Vec::new();
        let targets = self.pipelines[i].def.search.clone();
        if targets.is_empty() {
            return Err(format!("pipeline `{pipeline}` has no search index to roll back"));
        }
        for t in targets {
            let Some((_, prev, mut log)) = self.since_swap.remove(&t.index) else {
                return Err(format!(
                    "index `{}` has no previous generation this daemon can catch up (none was replaced since it started); run `deriver reindex {pipeline}` instead",
                    t.index
                ));
            };
            let j = self.pipelines[i].sinks.iter().position(|s| matches!(s, AnySink::Search(x) if x.index().name == t.index)).ok_or("no live sink")?;
            let cur_gen = match &self.pipelines[i].sinks[j] {
                AnySink::Search(s) => s.generation(),
                _ => unreachable!("a search sink"),
            };
            let def = self.pipelines[i].def.clone();
            let mut old =
                AnySink::Search(SearchSink::open_generation(&self.cfg.index.dir, &def, &t, prev, self.cfg.index.writer_memory_mb).map_err(|e| e.to_string())?);
            self.catch_up_sink(i, Some(&mut old), 0, &mut log, applied, BatchMode::Repair).await.map_err(|e| e.to_string())?;
            crate::sink::tantivy::set_current(&self.cfg.index.dir, &t.index, prev).map_err(|e| e.to_string())?;
            if let AnySink::Search(s) = &old {
                self.shared.indexes.write().expect("lock").insert(t.index.clone(), s.index());
            }
            let replaced = std::mem::replace(&mut self.pipelines[i].sinks[j], old);
            drop(replaced);
            // Rolling forward again is possible the same way.
            self.since_swap.insert(t.index.clone(), (i, cur_gen, DirtyKeys::new(self.cfg.runtime.dirty_keys_in_memory)));
            info!(pipeline, index = %t.index, generation = prev, "rolled back to the previous generation");
            swapped.push(prev);
        }
        self.update_targets(applied);
        Ok(swapped)
    }

    async fn admin(&mut self, req: status::AdminRequest, applied: Lsn) {
        match req {
            status::AdminRequest::Reindex { pipelines, reply } => {
                let mut idx = Vec::new();
                for name in &pipelines {
                    match self.pipelines.iter().position(|p| &p.def.name == name) {
                        Some(i) => idx.push(i),
                        None => {
                            let _ = reply.send(Err(format!("no pipeline named `{name}`")));
                            return;
                        }
                    }
                }
                let mut started = Vec::new();
                for i in idx {
                    match self.start_rebuild(i, true, applied).await {
                        Ok(s) => started.extend(s),
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
                let _ = reply.send(Ok(started));
            }
            status::AdminRequest::Rollback { pipeline, reply } => {
                let r = self.rollback(&pipeline, applied).await;
                let _ = reply.send(r);
            }
            status::AdminRequest::Repair { pipeline, keys, reply } => {
                let r = self.repair(&pipeline, &keys, Some(applied)).await;
                let _ = reply.send(r);
            }
        }
    }

    fn set_pipeline_error(&self, i: usize, error: Option<String>) {
        let name = self.pipelines[i].def.name.clone();
        self.shared.update(|doc| {
            if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                p.error = error;
            }
        });
    }

    /// Rebuild progress into status and metrics.
    fn publish_reindex_status(&self) {
        let mut per: HashMap<String, status::ReindexStatus> = HashMap::new();
        for r in &self.rebuilds {
            let name = self.pipelines[r.pipeline].def.name.clone();
            let done = r.progress.rows_done.load(std::sync::atomic::Ordering::Relaxed);
            let total = r.progress.rows_total.load(std::sync::atomic::Ordering::Relaxed).max(done);
            metrics::gauge!("deriver_reindex_rows_done", "pipeline" => name.clone()).set(done as f64);
            metrics::gauge!("deriver_reindex_rows_total", "pipeline" => name.clone()).set(total as f64);
            per.entry(name).or_insert(status::ReindexStatus {
                generation: r.generation,
                rows_done: done,
                rows_total: total,
                eta_seconds: r.progress.eta_seconds(),
                phase: Some(r.progress.phase().as_str().to_string()),
            });
        }
        self.shared.update(|doc| {
            for p in &mut doc.pipelines {
                p.reindex = per.get(&p.name).cloned();
                if p.reindex.is_some() {
                    p.state = "rebuilding".into();
                } else if p.state == "rebuilding" {
                    p.state = "streaming".into();
                }
            }
        });
    }

    /// Learns pipeline `i`'s field types again and, when a field's type moved in or out of the
    /// types that skip `to_jsonb` (an `ALTER TABLE … TYPE` since the daemon started), compiles
    /// and prepares its SQL again: the reindex that operations.md asks for after such a change
    /// then derives every record as `to_jsonb` gives it.
    async fn refresh_field_types(&mut self, i: usize) -> Result<()> {
        let p = &mut self.pipelines[i];
        let sql = derivation_sql(&self.pg, &p.def, &p.key).await;
        if sql.keyed != p.sql.keyed {
            info!(pipeline = %p.def.name, "a field's type changed since the derivation SQL was compiled: compiling it again");
            p.stmt = Some(self.pg.prepare(&sql.keyed).await?);
            p.sql = sql;
        }
        Ok(())
    }

    async fn reconnect_pg(&mut self) -> Result<()> {
        if !self.pg.is_closed() {
            return Ok(());
        }
        let client = pg::connect(self.cfg.postgres_url()?).await?;
        for p in &mut self.pipelines {
            p.stmt = Some(client.prepare(&p.sql.keyed).await?);
            for d in &mut p.deps {
                d.stmt = Some(client.prepare(&d.reverse_sql).await?);
            }
        }
        self.pg = client;
        Ok(())
    }

    /// Sinks with nothing to write still advance their stored checkpoint, so the slot can be
    /// acknowledged while their tables are quiet.
    async fn checkpoint_idle_sinks(&mut self, applied: Lsn) -> Result<()> {
        let mut changed = false;
        for p in &mut self.pipelines {
            for s in &mut p.sinks {
                let behind = s.checkpoint().await?.is_none_or(|c| c.lsn < applied);
                if behind && applied > Lsn::ZERO {
                    check_fence(&self.fence)?;
                    let result = async {
                        if s.begin(applied, BatchMode::Incremental { clear_all: false }).await? {
                            s.commit().await?;
                        }
                        Ok::<(), Error>(())
                    }
                    .await;
                    match result {
                        Ok(()) => changed = true,
                        Err(e) if e.is_transient() => {
                            s.abort().await;
                            warn!(error = %e, "could not store an idle checkpoint; will retry");
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if changed {
            self.update_targets(applied);
        }
        Ok(())
    }

    /// Acknowledges the slot up to what every sink has made durable.
    async fn ack(&mut self, acker: &Acker, final_ack: bool) {
        let mut min: Option<Lsn> = None;
        for p in &mut self.pipelines {
            for s in &mut p.sinks {
                let durable = s.durable_lsn();
                let Some(d) = durable else { return };
                min = Some(min.map_or(d, |m| m.min(d)));
            }
        }
        if let Some(m) = min {
            failpoint("before_ack");
            acker.ack(m);
            failpoint("after_ack");
            metrics::gauge!("deriver_acked_lsn").set(m.0 as f64);
            if final_ack {
                info!(lsn = %m, "acknowledged");
            }
        }
    }

    fn update_targets(&mut self, _lsn: Lsn) {
        #[allow(clippy::type_complexity)]
        let mut per: Vec<(String, Vec<(String, Option<Lsn>)>, u64, Option<u64>, Vec<dead_letters::DeadLetter>)> = Vec::new();
        for p in &self.pipelines {
            let mut t = Vec::new();
            for s in &p.sinks {
                let cp = s.current_checkpoint();
                for l in s.labels() {
                    t.push((l, cp.as_ref().map(|c| c.lsn)));
                }
            }
            per.push((p.def.name.clone(), t, self.dead.count(&p.def.name) as u64, p.generation(), self.dead.list(&p.def.name, 20).unwrap_or_default()));
        }
        self.shared.update(|doc| {
            for (name, targets, dead, generation, dead_list) in per {
                if let Some(ps) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                    ps.generation = generation;
                    for (label, lsn) in targets {
                        ps.targets.insert(label, lsn);
                    }
                    ps.dead_letters = dead;
                    ps.dead_letter_list = dead_list;
                    if ps.reindex.is_none() {
                        ps.state = "streaming".into();
                    }
                }
            }
        });
        if let Some(doc) = self.shared.snapshot() {
            for p in &doc.pipelines {
                if let Some(a) = p.applied_lsn {
                    metrics::gauge!("deriver_applied_lsn", "pipeline" => p.name.clone()).set(a.0 as f64);
                }
                if let Some(l) = p.lag_bytes {
                    metrics::gauge!("deriver_lag_bytes", "pipeline" => p.name.clone()).set(l as f64);
                }
                metrics::gauge!("deriver_dead_letters", "pipeline" => p.name.clone()).set(p.dead_letters as f64);
                if let Some(a) = &p.audit {
                    metrics::gauge!("deriver_audit_drifted", "pipeline" => p.name.clone()).set(a.drifted as f64);
                    metrics::gauge!("deriver_audit_remaining", "pipeline" => p.name.clone()).set(a.remaining as f64);
                }
            }
        }
    }

    /// Fails when the publication stopped covering a table a pipeline reads (or gained a row
    /// filter): changes would be lost silently otherwise.
    async fn check_publication(&mut self) -> Result<()> {
        // A derivation connection that died while nothing needed it is reconnected here, so the
        // check runs again as soon as Postgres is back (and says so while it is not).
        if let Err(e) = self.reconnect_pg().await {
            warn!(error = %e, "cannot check the publication: Postgres is unreachable; retrying");
            return Ok(());
        }
        let published = match pg::publication_tables(&self.pg, &self.cfg.postgres.publication).await {
            Ok(p) => p,
            Err(e) if e.is_transient() => {
                warn!(error = %e, "checking the publication failed; retrying");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(published) = published else {
            return Err(Error::fatal(format!("publication `{}` was dropped while deriver was running", self.cfg.postgres.publication)));
        };
        let filtered = pg::publication_row_filters(&self.pg, &self.cfg.postgres.publication).await.unwrap_or_default();
        for t in self.routes.keys() {
            if !published.iter().any(|(p, _)| p == t) {
                return Err(Error::fatal(format!(
                    "table {t} was removed from publication `{}` while deriver was running; its changes would be lost (add it back with `deriver setup`)",
                    self.cfg.postgres.publication
                )));
            }
            if let Some((_, f)) = filtered.iter().find(|(p, _)| p == t) {
                return Err(Error::fatal(format!(
                    "publication `{}` now filters the rows of {t} ({f}); deriver needs every change",
                    self.cfg.postgres.publication
                )));
            }
        }
        Ok(())
    }

    async fn refresh_server_status(&self) {
        let limit = Duration::from_secs(2);
        let server = tokio::time::timeout(limit, pg::current_wal_lsn(&self.pg)).await.ok().and_then(|r| r.ok());
        let slot = tokio::time::timeout(limit, pg::slot_info(&self.pg, &self.cfg.postgres.slot)).await.ok().and_then(|r| r.ok()).flatten();
        let name = self.cfg.postgres.slot.clone();
        self.shared.update(|doc| {
            if server.is_some() {
                doc.server_lsn = server;
            }
            if let Some(s) = slot {
                doc.slot = Some(SlotStatus { name, confirmed_flush_lsn: s.confirmed_flush_lsn, wal_status: s.wal_status });
            }
        });
    }
}

/// Gives the memory a large batch or a bulk derivation freed back to the OS: glibc keeps freed
/// heap in its arenas, so without this the RSS would stay at the peak of the largest batch seen.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Refuses to go on once this process lost ownership of its slot.
fn check_fence(fence: &CancellationToken) -> Result<()> {
    if fence.is_cancelled() {
        return Err(Error::new(ErrorKind::Fenced, "this process lost ownership of the replication slot; it stopped writing"));
    }
    Ok(())
}

/// Commits a batch to the sinks `active` (indexes into `sinks`). The data sinks commit
/// concurrently (each carries its own checkpoint, so their order does not matter); the dependency
/// ledger commits only after all of them, since a ledger ahead of the data would forget join
/// values the data still needs.
async fn commit_sinks(sinks: &mut [AnySink], active: &[usize], fence: &CancellationToken) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    check_fence(fence)?;
    let mut ledger: Option<&mut AnySink> = None;
    let mut data = FuturesUnordered::new();
    for (j, s) in sinks.iter_mut().enumerate() {
        if !active.contains(&j) {
            continue;
        }
        if matches!(s, AnySink::Ledger(_)) {
            ledger = Some(s);
        } else {
            data.push(async move { s.commit().await });
        }
    }
    let mut done = 0;
    let mut first_err = None;
    while let Some(r) = data.next().await {
        done += 1;
        if let Err(e) = r {
            first_err.get_or_insert(e);
        } else if done == 1 && first_err.is_none() {
            failpoint("between_sink_commits");
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if let Some(l) = ledger {
        if done > 0 {
            failpoint("between_sink_commits");
        }
        check_fence(fence)?;
        l.commit().await?;
    }
    Ok(())
}

/// `xmin:xmax:xip,…` of `pg_current_snapshot()` (64-bit transaction ids).
fn parse_snapshot(text: &str) -> Option<(u64, u64, Vec<u64>)> {
    let mut parts = text.trim().splitn(3, ':');
    let xmin = parts.next()?.parse().ok()?;
    let xmax = parts.next()?.parse().ok()?;
    let running = parts.next()?.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().ok()).collect::<Option<Vec<u64>>>()?;
    Some((xmin, xmax, running))
}

/// Whether the 32-bit `xid` (as pgoutput sends it) is visible in a snapshot: widened to 64 bits
/// with the epoch of `xmax` (an id above `xmax`'s low half belongs to the previous epoch).
fn visible_in(xid: u32, xmin: u64, xmax: u64, running: &[u64]) -> bool {
    let mut full = (xmax & !0xFFFF_FFFF) | u64::from(xid);
    if full >= xmax && full >= 1 << 32 {
        full -= 1 << 32;
    }
    full < xmin || (full < xmax && !running.contains(&full))
}

#[cfg(test)]
mod visibility_tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_decide_visibility() {
        assert_eq!(parse_snapshot("10:20:12,15"), Some((10, 20, vec![12, 15])));
        assert_eq!(parse_snapshot("10:10:"), Some((10, 10, vec![])));
        assert_eq!(parse_snapshot("garbage"), None);
        let (xmin, xmax, run) = parse_snapshot("10:20:12,15").unwrap();
        assert!(visible_in(9, xmin, xmax, &run), "below xmin");
        assert!(visible_in(13, xmin, xmax, &run), "finished between xmin and xmax");
        assert!(!visible_in(12, xmin, xmax, &run), "still running");
        assert!(!visible_in(20, xmin, xmax, &run), "not yet started as of the snapshot");
        // Epoch 1: xmax = 2^32 + 5; xid 3 is 2^32 + 3 (visible), xid 4_000_000_000 is from epoch 0.
        let xmax = (1u64 << 32) + 5;
        assert!(visible_in(3, 1 << 32, xmax, &[]));
        assert!(visible_in(4_000_000_000, 1 << 32, xmax, &[]));
        assert!(!visible_in(4, 0, xmax, &[(1u64 << 32) + 4]));
    }
}
