//! The daemon: start-up checks, the slot's lifecycle (first snapshot, resync, resume), and the
//! tasks that stream: one source task reading the slot and one worker per pipeline.
//!
//! Path of one change (see ARCHITECTURE.md): the source task (`source_task.rs`) decodes
//! `Begin`, row changes and `Commit` and hands each transaction to the workers of the pipelines
//! it touches; a worker (`worker.rs`) marks source keys dirty in its open batch and, at a
//! transaction boundary, once its `BatchPolicy` says so (`batch.rs`), re-derives them from
//! Postgres and commits every sink with the batch's end LSN (`flush.rs`); the source task
//! acknowledges the slot up to the minimum LSN every worker's sinks have made durable.

mod assemble;
pub mod batch;
pub mod dead_letters;
pub mod deps;
pub mod derive;
pub mod dirty;
pub mod error_policy;
pub mod failpoint;
mod flush;
mod inflight;
pub mod lease;
pub mod orphans;
pub mod pipeline;
mod rebuild;
pub mod reindex;
pub mod reload;
pub mod retry;
pub mod schema;
pub mod source_task;
mod source_watch;
pub mod status;
pub mod worker;
pub mod worker_state;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{AnySink, Sink};
use crate::source::postgres as pg;
use crate::source::walstream;
use crate::source::{Interest, Lsn, TableName};
pub use pipeline::{derivation_sql, load_pipelines, replica_identity_problem, state_dir, PipelineRt};
use pipeline::{redis_rewrite_marker, reindex_marker, Route};
use source_task::{SourceTask, WorkerHandle};
use status::{PipelineStatus, Shared, SlotStatus, StatusDoc};
use worker::{Context, DeadStore, Feed, Wiring, Worker};

/// Bytes of changes queued for one worker before the source task waits for it.
pub const WORKER_QUEUE_BYTES: usize = 32 << 20;

pub struct Daemon {
    cfg: Config,
    pipelines: Vec<PipelineRt>,
    pg: Client,
    interest: Interest,
    /// For each table, the pipelines that read it (as source or dependency).
    routes: HashMap<TableName, Vec<(usize, Route)>>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// Ignore the sinks' checkpoints and re-derive everything from a new slot.
    resnapshot: bool,
    admin_rx: Option<mpsc::Receiver<status::AdminRequest>>,
    /// Pipelines whose reindex was requested before a restart (marker files).
    pending_reindex: Vec<usize>,
    dead: DeadStore,
    /// Cancelled when this process lost ownership of the slot: no sink commit may happen after.
    fence: CancellationToken,
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
        let publication = assemble::Publication::read(&client, &cfg.postgres.publication).await?;
        let mut interest = Interest::default();
        let mut routes: HashMap<TableName, Vec<(usize, Route)>> = HashMap::new();
        let mut pipelines = Vec::new();
        for (idx, (def, info, sql)) in loaded.into_iter().enumerate() {
            let mut checked = assemble::check(&client, def, info, sql, &publication).await?;
            let (key_pos, placed) = checked.place(&mut interest, idx);
            for (table, route) in placed {
                routes.entry(table).or_default().push(route);
            }
            pipelines.push(checked.open(&cfg, &shared, key_pos).await.map_err(unreachable_at_start)?);
        }
        // What each table's readers need, as a reload computes it (so that it compares alike).
        let reads: Vec<(TableName, Vec<String>, String)> =
            pipelines.iter().flat_map(|p| deps::wal_columns(&p.def, &p.key, &p.deps).into_iter().map(|(t, cols)| (t, cols, p.def.name.clone()))).collect();
        interest.retain_reads(&reads);
        let cfg_dir = cfg.index.dir.clone();
        let (admin_tx, admin_rx) = mpsc::channel(16);
        *shared.admin.lock().expect("admin lock") = Some(admin_tx);
        // Interrupted builds (generations newer than the live one) go; requested reindexes resume.
        let mut pending_reindex = Vec::new();
        for (i, p) in pipelines.iter().enumerate() {
            if !p.def.redis.is_empty() && redis_rewrite_marker(&cfg, &p.def.name).exists() {
                info!(pipeline = %p.def.name, "resuming a rewrite of the Redis views that was interrupted (it starts over)");
                pending_reindex.push(i);
            }
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
            admin_rx: Some(admin_rx),
            pending_reindex,
            dead: Arc::new(std::sync::Mutex::new(dead_letters::DeadLetters::open_waiting(&state_dir(&cfg_dir)).await?)),
        };
        daemon.publish_status(daemon.pipelines.iter(), "snapshotting").await;
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

    async fn publish_status(&self, pipelines: impl Iterator<Item = &PipelineRt>, state: &str) {
        let previous = self.shared.snapshot();
        let statuses: Vec<PipelineStatus> = pipelines.map(|p| status_entry(p, &self.dead, state, previous.as_ref())).collect();
        let server_lsn = pg::current_wal_lsn(&self.pg).await.ok();
        let slot = pg::slot_info(&self.pg, &self.cfg.postgres.slot).await.ok().flatten().map(|s| SlotStatus {
            name: self.cfg.postgres.slot.clone(),
            confirmed_flush_lsn: s.confirmed_flush_lsn,
            wal_status: s.wal_status,
        });
        // Found once per ownership by `orphans::watch` (started in `run`); kept across re-publishing.
        let orphans = self.shared.status.read().expect("status lock").as_ref().and_then(|d| d.orphans.clone());
        let mut doc = StatusDoc { server_lsn, slot, pipelines: statuses, role: None, owner: None, dependencies: None, orphans };
        for p in &mut doc.pipelines {
            p.refresh(server_lsn);
        }
        *self.shared.status.write().expect("status lock") = Some(doc);
    }

    fn context(&self) -> Context {
        Context { cfg: self.cfg.clone(), shared: self.shared.clone(), dead: self.dead.clone(), cancel: self.cancel.clone(), fence: self.fence.clone() }
    }

    /// A worker for pipeline `i` (taken out of the daemon).
    async fn worker(&mut self, i: usize) -> Result<Worker> {
        let p = self.pipelines.remove(i);
        let resume = self.pending_reindex.contains(&i);
        Worker::new(p, self.context(), resume).await
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

        let mut workers = Vec::new();
        for i in 0..self.pipelines.len() {
            let ctx = self.context();
            let p = self.pipelines.remove(0);
            workers.push(Worker::new(p, ctx, self.pending_reindex.contains(&i)).await?);
        }
        let mut checkpoints = Vec::new();
        for w in &mut workers {
            for s in &mut w.p.sinks {
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
                self.resync_behind(&mut workers, confirmed).await?;
                walstream::open(&conninfo, &slot, &publication).await?
            }
            None if any_checkpoint => {
                return Err(Error::fatal(format!(
                    "replication slot `{slot}` is missing but the sinks hold checkpoints: changes since then are lost to deriver; run `deriver run --resnapshot` to re-derive everything from a new slot"
                )));
            }
            None => self.initial_snapshot(&mut workers, &conninfo, &slot, &publication).await?,
        };
        let mut start: Option<Lsn> = None;
        for w in &mut workers {
            for s in &mut w.p.sinks {
                let cp = s.checkpoint().await?.map(|c| c.lsn).unwrap_or(Lsn::ZERO);
                start = Some(start.map_or(cp, |m| m.min(cp)));
            }
        }
        let start = start.unwrap_or(Lsn::ZERO);
        self.publish_status(workers.iter().map(|w| &w.p), "streaming").await;
        self.shared.start_meter(workers.iter().map(|w| &w.p));
        let cancel = self.cancel.clone();
        let ctx = self.context();
        let Daemon { cfg, pg, interest, routes, shared, admin_rx, .. } = self;
        let (passed, passed_rx) = watch::channel((1u64, start));
        let mut tasks = JoinSet::new();
        let mut handles = Vec::new();
        for (i, mut w) in workers.into_iter().enumerate() {
            let (feed, rx) = Feed::new(WORKER_QUEUE_BYTES);
            let (admin_tx, admin) = mpsc::channel(16);
            w.index = i;
            let (progress_tx, progress) = watch::channel(w.progress());
            let mut own_routes = Vec::new();
            for (table, list) in &routes {
                own_routes.extend(list.iter().filter(|(j, _)| *j == i).map(|(_, r)| (table.clone(), *r)));
            }
            let reads = deps::wal_columns(&w.p.def, &w.p.key, &w.p.deps);
            handles.push(Some(WorkerHandle {
                name: w.name().to_string(),
                feed,
                admin: admin_tx,
                progress,
                def: w.p.def.clone(),
                routes: own_routes,
                reads,
                last_sent: Lsn::ZERO,
                gone: false,
                sql: w.p.sql.keyed.clone(),
            }));
            let wiring = Wiring { rx, passed: passed_rx.clone(), admin, progress: progress_tx, start, epoch: 1 };
            tasks.spawn(async move { (i, w.run(wiring).await) });
        }
        let admin_rx = admin_rx.expect("admin receiver");
        let (planned_tx, planned_rx) = mpsc::unbounded_channel();
        let (reopen_tx, reopen_rx) = mpsc::unbounded_channel();
        let mut task = SourceTask {
            cfg,
            shared,
            cancel: cancel.clone(),
            pg,
            interest,
            routes: Arc::new(routes),
            workers: handles,
            ctx,
            tasks,
            passed,
            epoch: 1,
            admin_rx,
            reloading: false,
            planned_tx,
            planned_rx,
            reopen_tx,
            reopen_rx,
            columns: Default::default(),
        };
        info!(%start, "streaming from the replication slot");
        on_streaming();
        let result = task.run(replication, start).await;
        if result.is_err() {
            // The other workers stop too; their complete batches are kept (replayed otherwise).
            cancel.cancel();
            while task.tasks.join_next().await.is_some() {}
        }
        result
    }

    /// First start: create the slot with an exported snapshot, derive every record from that
    /// snapshot, store the slot's consistent point as every sink's checkpoint.
    async fn initial_snapshot(&mut self, workers: &mut [Worker], conninfo: &str, slot: &str, publication: &str) -> Result<walstream::Replication> {
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
        for w in workers.iter_mut() {
            w.bulk_derive(&client, consistent).await?;
        }
        client.batch_execute("COMMIT").await?;
        Ok(created.replication)
    }

    /// Pipelines whose sinks lack a checkpoint, lag behind the slot (the sink lost writes) or
    /// hold another definition are re-derived from a fresh snapshot, checkpointed at the slot's
    /// confirmed position: the stream replays everything after it, and replays only re-derive.
    async fn resync_behind(&mut self, workers: &mut [Worker], confirmed: Lsn) -> Result<()> {
        let mut todo = Vec::new();
        for (i, w) in workers.iter_mut().enumerate() {
            let mut stale = false;
            let name = w.name().to_string();
            for s in &mut w.p.sinks {
                let hash = s.definition_hash().to_string();
                match s.checkpoint().await? {
                    None => stale = true,
                    Some(cp) if cp.lsn < confirmed => {
                        warn!(pipeline = %name, sink = %s.labels().join(", "), checkpoint = %cp.lsn, slot = %confirmed,
                            "a sink is behind the replication slot (it lost acknowledged writes); re-deriving the pipeline");
                        stale = true;
                    }
                    Some(cp) if cp.definition_hash.as_deref().is_some_and(|h| h != hash) => {
                        info!(pipeline = %name, sink = %s.labels().join(", "), "the pipeline definition changed: re-deriving its records in place");
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
        for i in todo {
            workers[i].bulk_derive(&client, confirmed).await?;
        }
        client.batch_execute("COMMIT").await?;
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
            let mut w = self.worker(i).await?;
            w.start_rebuild(true, from).await?;
            let result = w.finish_rebuilds_offline(from, |p| on_progress(name, p)).await;
            self.pipelines.insert(i, w.into_pipeline());
            result?;
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

    /// Re-derives some source keys (key text) of a pipeline and rewrites them in every target at
    /// each sink's own checkpoint (no daemon running), then settles its dead letters.
    pub async fn repair(&mut self, pipeline: &str, keys: &[String]) -> Result<usize> {
        let i = self.pipelines.iter().position(|p| p.def.name == pipeline).ok_or_else(|| Error::config(format!("no pipeline named `{pipeline}`")))?;
        let mut w = self.worker(i).await?;
        let result = w.repair(keys, None).await;
        let settled = w.settle_dead_letters();
        self.pipelines.insert(i, w.into_pipeline());
        let n = result?;
        settled?;
        Ok(n)
    }
}

/// A pipeline's entry in the status document. A new document keeps the audit results the audit
/// task published in `previous`.
fn status_entry(p: &PipelineRt, dead: &DeadStore, state: &str, previous: Option<&StatusDoc>) -> PipelineStatus {
    let (dead_count, dead_list) = {
        let dead = dead.lock().expect("dead-letter lock");
        (dead.count(&p.def.name) as u64, dead.list(&p.def.name, 20).unwrap_or_default())
    };
    let mut targets = BTreeMap::new();
    for s in &p.sinks {
        let cp = s.current_checkpoint();
        for label in s.labels() {
            targets.insert(label, cp.as_ref().map(|c| c.lsn));
        }
    }
    PipelineStatus {
        generation: p.generation(),
        targets,
        dead_letters: dead_count,
        dead_letter_list: dead_list,
        audit: previous.and_then(|d| d.pipelines.iter().find(|q| q.name == p.def.name)).and_then(|q| q.audit.clone()),
        ..PipelineStatus::new(&p.def, state)
    }
}

/// Gives the memory a large batch or a bulk derivation freed back to the OS. mimalloc (the
/// allocator) returns freed pages by itself after a short delay; `mi_collect` makes it do so now,
/// so the RSS falls back after the largest batch instead of a moment later.
fn release_memory() {
    // SAFETY: mi_collect only frees memory the allocator no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Refuses to go on once this process lost ownership of its slot.
fn check_fence(fence: &CancellationToken) -> Result<()> {
    if fence.is_cancelled() {
        return Err(Error::new(ErrorKind::Fenced, "this process lost ownership of the replication slot; it stopped writing"));
    }
    Ok(())
}
