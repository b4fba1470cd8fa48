//! A worker's full reprocesses, rollbacks and repairs: a new search generation built beside the
//! live one by a background task, caught up and swapped in; the previous generation caught up
//! and swapped back; some keys re-derived through the normal write path.

use std::time::Duration;

use tracing::{error, info};

use super::derive::{self, KeyTuple};
use super::dirty::DirtyKeys;
use super::pipeline::{redis_rewrite_marker, reindex_marker};
use super::reindex;
use super::status::ChangeNotice;
use super::worker::{Admin, Worker};
use crate::error::{Error, Result};
use crate::sink::redis::RedisSink;
use crate::sink::tantivy::SearchSink;
use crate::sink::{AnySink, BatchMode};
use crate::source::Lsn;
use crate::status::ReindexStatus;

impl Worker {
    /// Starts a background full reprocess: a new generation for each search target (and, when
    /// `redis`, a rewrite of the Redis views in place), from position `from`. Returns the
    /// pipeline's name when something started.
    pub(super) async fn start_rebuild(&mut self, redis: bool, from: Lsn) -> Result<Vec<String>> {
        self.start_rebuild_of(true, redis, from).await
    }

    /// As [`Worker::start_rebuild`]; without `search`, only the Redis views are rewritten.
    pub(super) async fn start_rebuild_of(&mut self, search: bool, redis: bool, from: Lsn) -> Result<Vec<String>> {
        self.refresh_field_types().await?;
        let cfg = self.ctx.cfg.clone();
        let mut started = Vec::new();
        let total = reindex::estimate_rows(&self.pg, &self.p.def.source.table).await;
        let search_sinks: Vec<usize> = self.p.sinks.iter().enumerate().filter(|(_, s)| matches!(s, AnySink::Search(_))).map(|(j, _)| j).collect();
        let mut redis_done = !redis || self.p.def.redis.is_empty();
        let jobs: Vec<Option<usize>> = if search_sinks.is_empty() || !search { vec![None] } else { search_sinks.into_iter().map(Some).collect() };
        for j in jobs {
            if self.rebuilds.iter().any(|r| r.sink == j) {
                continue;
            }
            let p = &self.p;
            let (search, index, generation) = match j {
                Some(j) => {
                    let AnySink::Search(live) = &p.sinks[j] else { unreachable!("a search sink") };
                    let target = p.def.search.iter().find(|t| t.index == live.index().name).expect("target").clone();
                    let gen = crate::sink::tantivy::next_generation(&cfg.index.dir, &target.index)?;
                    let sink = SearchSink::create_generation(&cfg.index.dir, &p.def, &target, gen, cfg.index.writer_memory_mb)?;
                    if redis {
                        std::fs::write(reindex_marker(&cfg, &target.index), "requested\n")?;
                    }
                    (Some(AnySink::Search(sink)), target.index.clone(), Some(gen))
                }
                None if redis_done => continue,
                None => (None, String::new(), None),
            };
            let redis_sink = if !redis_done {
                redis_done = true;
                Some(AnySink::Redis(RedisSink::open(&cfg.redis, &p.def).await?))
            } else {
                None
            };
            let rewrite_redis = redis_sink.is_some();
            if rewrite_redis {
                // Until the rewrite is done the views mix definitions: a restart starts it over.
                std::fs::write(redis_rewrite_marker(&cfg, &p.def.name), "requested\n")?;
            }
            let progress = reindex::Progress::new(total);
            let id = self.next_rebuild;
            self.next_rebuild += 1;
            let job = reindex::BuildJob {
                id,
                url: cfg.postgres_url()?.to_string(),
                sql: p.sql.bulk.clone(),
                chunk: cfg.runtime.derive_chunk,
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
                sink: j,
                index,
                generation,
                from,
                log: DirtyKeys::new(cfg.runtime.dirty_keys_in_memory),
                progress,
                redis: rewrite_redis,
                restart: false,
            });
        }
        self.publish_reindex_status();
        Ok(started)
    }

    /// A background build finished: catch the new generation up and make it live.
    pub(super) async fn finish_rebuild(&mut self, built: reindex::Built, applied: Lsn) -> Result<()> {
        let Some(pos) = self.rebuilds.iter().position(|r| r.id == built.id) else { return Ok(()) };
        // Status shows the catch-up and swap until they are done (the CLI follows it).
        self.rebuilds[pos].progress.set_phase(reindex::Phase::CatchingUp);
        self.publish_reindex_status();
        let mut r = self.rebuilds.remove(pos);
        let name = self.p.def.name.clone();
        let cfg = self.ctx.cfg.clone();
        let mut new = match built.result {
            Err(e) => {
                error!(pipeline = %name, error = %e, "the full reprocess failed; the live generation stays");
                self.set_error(Some(format!("reindex failed: {e}")));
                let frozen = r.sink.is_some_and(|j| matches!(&self.p.sinks[j], AnySink::Search(s) if s.is_frozen()));
                if frozen || r.restart {
                    // The live index is from another definition: try again.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    self.start_rebuild(r.redis, applied).await?;
                }
                self.publish_reindex_status();
                return Ok(());
            }
            Ok(s) => s,
        };
        if r.restart {
            info!(pipeline = %name, "the source was truncated during the reprocess: starting it over");
            drop(new);
            self.start_rebuild(r.redis, applied).await?;
            return Ok(());
        }
        // Catch up: every key re-derived since `from`, at the current position.
        let mut log = std::mem::replace(&mut r.log, DirtyKeys::new(1));
        let caught = self.catch_up_sink(Some(&mut new), 0, &mut log, applied, BatchMode::Incremental { clear_all: false }).await?;
        if r.redis {
            if let Some(j) = self.p.sinks.iter().position(|s| matches!(s, AnySink::Redis(_))) {
                self.catch_up_sink(None, j, &mut log, applied, BatchMode::Repair).await?;
            }
            let _ = std::fs::remove_file(redis_rewrite_marker(&cfg, &name));
        }
        if let (Some(j), Some(gen)) = (r.sink, r.generation) {
            let AnySink::Search(new_search) = &new else { unreachable!("a search sink") };
            // The new generation may still sit at `from` (nothing changed meanwhile): move it on.
            crate::sink::tantivy::set_current(&cfg.index.dir, &r.index, gen)?;
            self.ctx.shared.indexes.write().expect("lock").insert(r.index.clone(), new_search.index());
            let old = std::mem::replace(&mut self.p.sinks[j], new);
            let (old_gen, old_frozen) = match &old {
                AnySink::Search(s) => (s.generation(), s.is_frozen()),
                _ => (0, true),
            };
            drop(old);
            if !old_frozen {
                self.since_swap.insert(r.index.clone(), (old_gen, DirtyKeys::new(cfg.runtime.dirty_keys_in_memory)));
            } else {
                self.since_swap.remove(&r.index);
            }
            let _ = std::fs::remove_file(reindex_marker(&cfg, &r.index));
            let removed = crate::sink::tantivy::collect_garbage(&cfg.index.dir, &r.index, cfg.index.keep_generations, None)?;
            info!(pipeline = %name, index = %r.index, generation = gen, previous = old_gen, caught_up = caught, removed = %removed.iter().map(u64::to_string).collect::<Vec<_>>().join(", "), "the new generation is live");
            // Bring the checkpoint to the current position even when nothing needed catching up.
            self.checkpoint_idle_sinks(applied).await?;
        } else {
            info!(pipeline = %name, caught_up = caught, "the Redis views were rewritten");
        }
        self.set_error(None);
        self.ctx.shared.notify_change(ChangeNotice { pipeline: name, lsn: applied, keys: vec!["*".into()], deleted: Vec::new() });
        self.update_targets();
        self.publish_reindex_status();
        Ok(())
    }

    /// Waits for this worker's rebuilds (none running: returns at once), reporting progress;
    /// for a reindex with no daemon running.
    pub(super) async fn finish_rebuilds_offline(&mut self, applied: Lsn, mut on_progress: impl FnMut(&reindex::Progress)) -> Result<()> {
        let mut built_rx = self.built_rx.take().expect("built receiver");
        let result = async {
            while !self.rebuilds.is_empty() {
                tokio::select! {
                    built = built_rx.recv() => {
                        let built = built.ok_or_else(|| Error::fatal("a rebuild task vanished"))?;
                        if let Err(e) = &built.result {
                            return Err(Error::fatal(format!("reindex of `{}` failed", self.p.def.name)).with_detail(e));
                        }
                        for r in self.rebuilds.iter().filter(|r| r.id == built.id) {
                            r.progress.set_phase(reindex::Phase::CatchingUp);
                            on_progress(&r.progress);
                        }
                        self.finish_rebuild(built, applied).await?;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        for r in &self.rebuilds {
                            on_progress(&r.progress);
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        self.built_rx = Some(built_rx);
        result
    }

    /// Re-derives some source keys (key text) and rewrites them in every target, at `applied`
    /// (the daemon's position) or, without a daemon, at each sink's own checkpoint. Checkpoints
    /// never move backwards.
    pub async fn repair(&mut self, keys: &[String], applied: Option<Lsn>) -> Result<usize> {
        let n = self.p.key.len();
        let mut dirty = DirtyKeys::new(self.ctx.cfg.runtime.dirty_keys_in_memory);
        for k in keys {
            let t: KeyTuple = derive::split_key_text(k, n).unwrap_or_default();
            if t.len() != n {
                return Err(Error::config(format!("key `{k}` does not have {n} parts")));
            }
            dirty.insert(t)?;
        }
        let lsn = match applied {
            Some(l) => l,
            None => self.p.sinks.iter().filter_map(|s| s.current_checkpoint().map(|c| c.lsn)).min().unwrap_or(Lsn::ZERO),
        };
        let sinks: Vec<usize> = self
            .p
            .sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s, AnySink::Ledger(_)) && !matches!(s, AnySink::Search(x) if x.is_frozen()))
            .map(|(j, _)| j)
            .collect();
        for j in sinks {
            self.catch_up_sink(None, j, &mut dirty, lsn, BatchMode::Repair).await?;
        }
        info!(pipeline = %self.p.def.name, keys = keys.len(), "repaired drifted keys");
        Ok(keys.len())
    }

    /// Swaps the pipeline's search indexes back to the generation they replaced (caught up first).
    async fn rollback(&mut self, applied: Lsn) -> Result<Vec<u64>> {
        let pipeline = self.p.def.name.clone();
        let cfg = self.ctx.cfg.clone();
        let mut swapped = Vec::new();
        let targets = self.p.def.search.clone();
        if targets.is_empty() {
            return Err(Error::config(format!("pipeline `{pipeline}` has no search index to roll back")));
        }
        for t in targets {
            let Some((prev, mut log)) = self.since_swap.remove(&t.index) else {
                return Err(Error::config(format!(
                    "index `{}` has no previous generation this daemon can catch up (none was replaced since it started); run `deriver reindex {pipeline}` instead",
                    t.index
                )));
            };
            let j = self
                .p
                .sinks
                .iter()
                .position(|s| matches!(s, AnySink::Search(x) if x.index().name == t.index))
                .ok_or_else(|| Error::fatal(format!("index `{}` has no live sink", t.index)))?;
            let AnySink::Search(live) = &self.p.sinks[j] else { unreachable!("a search sink") };
            let cur_gen = live.generation();
            let mut old = AnySink::Search(SearchSink::open_generation(&cfg.index.dir, &self.p.def, &t, prev, cfg.index.writer_memory_mb)?);
            self.catch_up_sink(Some(&mut old), 0, &mut log, applied, BatchMode::Repair).await?;
            crate::sink::tantivy::set_current(&cfg.index.dir, &t.index, prev)?;
            if let AnySink::Search(s) = &old {
                self.ctx.shared.indexes.write().expect("lock").insert(t.index.clone(), s.index());
            }
            drop(std::mem::replace(&mut self.p.sinks[j], old));
            // Rolling forward again is possible the same way.
            self.since_swap.insert(t.index.clone(), (cur_gen, DirtyKeys::new(cfg.runtime.dirty_keys_in_memory)));
            info!(pipeline = %pipeline, index = %t.index, generation = prev, "rolled back to the previous generation");
            swapped.push(prev);
        }
        self.update_targets();
        Ok(swapped)
    }

    pub(super) async fn admin(&mut self, req: Admin, applied: Lsn) {
        match req {
            Admin::Reindex { reply } => {
                let _ = reply.send(self.start_rebuild(true, applied).await);
            }
            Admin::Rollback { reply } => {
                let _ = reply.send(self.rollback(applied).await);
            }
            Admin::Repair { keys, reply } => {
                let r = self.repair(&keys, Some(applied)).await;
                let r = match self.settle_dead_letters() {
                    Ok(()) => r,
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Rebuild progress into status and metrics.
    pub(super) fn publish_reindex_status(&self) {
        let name = self.p.def.name.clone();
        let mut status: Option<ReindexStatus> = None;
        for r in &self.rebuilds {
            let done = r.progress.rows_done.load(std::sync::atomic::Ordering::Relaxed);
            let total = r.progress.rows_total.load(std::sync::atomic::Ordering::Relaxed).max(done);
            status.get_or_insert(ReindexStatus {
                generation: r.generation,
                rows_done: done,
                rows_total: total,
                eta_seconds: r.progress.eta_seconds(),
                phase: Some(r.progress.phase().as_str().to_string()),
            });
        }
        self.ctx.shared.update(|doc| {
            if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                p.reindex = status;
                if p.reindex.is_some() {
                    p.state = "rebuilding".into();
                } else if p.state == "rebuilding" {
                    p.state = "streaming".into();
                }
            }
        });
    }

    /// Learns the field types again and, when a field's type moved in or out of the types that
    /// skip `to_jsonb` (an `ALTER TABLE … TYPE` since the daemon started), compiles and prepares
    /// the SQL again: the reindex that operations.md asks for after such a change then derives
    /// every record as `to_jsonb` gives it.
    async fn refresh_field_types(&mut self) -> Result<()> {
        let sql = super::pipeline::derivation_sql(&self.pg, &self.p.def, &self.p.key).await;
        if sql.keyed != self.p.sql.keyed {
            info!(pipeline = %self.p.def.name, "a field's type changed since the derivation SQL was compiled: compiling it again");
            self.p.stmt = Some(self.pg.prepare(&sql.keyed).await?);
            self.p.sql = sql;
        }
        Ok(())
    }
}
