//! A worker's flush: wait until the batch's transactions are visible, re-derive its dirty keys
//! from Postgres, write the records to every sink and commit them at the batch's end LSN. Also
//! the writes that are not batches: catching a sink up on some keys, and deriving every record.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{info, warn};

use super::batch::Batch;
use super::derive::{derive_keys, KeyTuple};
use super::dirty::DirtyKeys;
use super::failpoint::failpoint;
use super::inflight::{start_commits, InFlight};
use super::pipeline::{note_rejects, PipelineRt};
use super::reindex;
use super::status::ChangeNotice;
use super::worker::Worker;
use super::worker_state::Outcome;
use crate::error::{Error, Result};
use crate::pipeline::OnError;
use crate::sink::{AnySink, BatchMode, Rejected, Sink, Write};
use crate::source::postgres as pg;
use crate::source::Lsn;

/// Change notices list at most this many keys; bigger batches say `"*"` (re-read everything).
const NOTICE_KEYS: usize = 10_000;

impl Worker {
    /// Writes the batch (if it holds a complete transaction) and commits it, and starts a new
    /// one. `Started`: the commit runs in the background (`runtime/inflight.rs`) and the batch
    /// moved into it. On error the batch stays whole for the next attempt (with the batch before
    /// it put back in, if that one's commit failed). The caller tells the worker's state
    /// (`worker_state::Event::Flushed`).
    pub(super) async fn flush(&mut self, batch: &mut Batch) -> Result<Outcome> {
        let Some(lsn) = batch.end_lsn else { return Ok(Outcome::Done) };
        let mut outcome = Outcome::Done;
        if batch.has_work() {
            let visible_started = Instant::now();
            self.wait_visible(&batch.xids).await?;
            let waited = visible_started.elapsed();
            if waited > Duration::from_millis(2) {
                tracing::debug!(pipeline = %self.name(), ms = waited.as_secs_f64() * 1e3, "waited for the batch's transactions to become visible");
            }
            let started = self.apply(batch, lsn).await?;
            self.settle_dead_letters()?;
            if let Some(age) = batch.age() {
                metrics::histogram!(crate::telemetry::BATCH_LATENCY).record(age.as_secs_f64());
            }
            if let Some(mut f) = started {
                if !self.ctx.cfg.runtime.overlap_commits {
                    f.wait().await;
                }
                if f.ended() {
                    // Nothing to wait for (no search index, or its commit was that quick).
                    self.conclude_into(f, batch)?;
                } else {
                    f.batch = Some(std::mem::replace(batch, self.new_batch()));
                    self.inflight = Some(f);
                    outcome = Outcome::Started;
                }
            } else {
                if batch.changes >= 10_000 {
                    super::release_memory();
                }
                self.update_targets();
            }
        }
        if outcome == Outcome::Done {
            *batch = self.new_batch();
        }
        Ok(outcome)
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

    /// Re-derives the batch's dirty keys, writes them to every sink and starts their commits at
    /// `lsn` (`Some`: to be seen to their end; `None`: committed already). The commit of the
    /// batch before it, if still in flight, ends before this one's starts.
    async fn apply(&mut self, batch: &mut Batch, lsn: Lsn) -> Result<Option<InFlight>> {
        tracing::debug!(pipeline = %self.name(), %lsn, changes = batch.changes, "flushing a batch");
        let chunk = self.ctx.cfg.runtime.derive_chunk.max(1);
        if batch.dirty.rederive_all {
            self.settle(batch).await?;
        }
        let dirty = &mut batch.dirty;
        if dirty.rederive_all {
            for r in &mut self.rebuilds {
                r.restart = true;
            }
            self.since_swap.clear();
            // A dependency table was truncated: every record may change.
            info!(pipeline = %self.name(), "a table this pipeline joins was truncated: re-deriving every record");
            let client = pg::connect(self.ctx.cfg.postgres_url()?).await?;
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            self.bulk_derive(&client, lsn).await?;
            client.batch_execute("COMMIT").await?;
            self.ctx.shared.notify_change(ChangeNotice { pipeline: self.p.def.name.clone(), lsn, keys: vec!["*".into()], deleted: Vec::new() });
            return Ok(None);
        }
        // Changes to lookup, child and link tables: find the source keys they reach.
        for di in 0..self.p.deps.len() {
            if dirty.probes[di].is_empty() {
                continue;
            }
            let mut chunks = dirty.probes[di].chunks(chunk)?;
            while let Some(part) = chunks.next_chunk()? {
                for k in self.p.deps[di].source_keys(&self.pg, &part).await? {
                    dirty.keys.insert(k)?;
                }
            }
        }
        // Rebuilds of this pipeline need every key re-derived after they started.
        if !self.rebuilds.is_empty() || !self.since_swap.is_empty() {
            if dirty.truncate {
                for r in &mut self.rebuilds {
                    r.restart = true;
                }
                self.since_swap.clear();
            }
            let mut chunks = dirty.keys.chunks(chunk)?;
            while let Some(part) = chunks.next_chunk()? {
                for k in &part {
                    for r in &mut self.rebuilds {
                        r.log.insert(k.clone())?;
                    }
                    for (_, log) in self.since_swap.values_mut() {
                        log.insert(k.clone())?;
                    }
                }
            }
        }
        let p = &mut self.p;
        let mode = BatchMode::Incremental { clear_all: dirty.truncate };
        let mut active = Vec::new();
        for (j, s) in p.sinks.iter_mut().enumerate() {
            if s.begin(lsn, mode).await? {
                active.push(j);
            }
        }
        if active.is_empty() {
            return Ok(None);
        }
        if dirty.keys.is_empty() && !dirty.truncate {
            // Probes reached no source key: only the checkpoints and the ledger (if any) move.
            return self.start_batch_commit(batch, lsn, &active, None, Instant::now(), Duration::ZERO).await.map(Some);
        }
        let stmt = p.statement()?;
        let stages = Instant::now();
        let mut deriving = Duration::ZERO;
        // Keys for the change notice, kept only up to a bound (a huge batch says so).
        let mut upserted: Vec<String> = Vec::new();
        let mut deleted: Vec<String> = Vec::new();
        let mut truncated_notice = dirty.truncate;
        let parallel = self.ctx.cfg.runtime.derive_connections.max(1);
        if parallel > 1 && dirty.keys.len() > chunk {
            open_helpers(&mut self.helpers, &self.ctx.cfg, &p.sql.keyed, parallel - 1).await;
        }
        let n_key = p.key.len();
        let mut chunks = dirty.keys.chunks(chunk)?;
        // Up to `derive_connections` chunks are derived at once, one per connection, and written
        // in key order.
        let mut round: std::collections::VecDeque<(Vec<Write>, Vec<Rejected>)> = Default::default();
        loop {
            if round.is_empty() {
                let mut parts = Vec::new();
                while parts.len() <= self.helpers.len() {
                    match chunks.next_chunk()? {
                        Some(part) => parts.push(part),
                        None => break,
                    }
                }
                if parts.is_empty() {
                    break;
                }
                let derive_started = Instant::now();
                let conns = std::iter::once((&self.pg, &stmt)).chain(self.helpers.iter().map(|(c, s, _)| (c, s)));
                let derived = futures::future::join_all(parts.iter().zip(conns).map(|(part, (c, s))| derive_keys(c, s, n_key, part))).await;
                deriving += derive_started.elapsed();
                for d in derived {
                    round.push_back(d?);
                }
            }
            let (writes, rejected) = round.pop_front().expect("a derived chunk");
            failpoint("after_derive");
            tracing::trace!(pipeline = %p.def.name, writes = writes.len(), "derived");
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
            let failed: HashSet<String> = p.failed[failed_before..].iter().map(|r| r.key.clone()).collect();
            p.written.extend(writes.iter().map(|w| w.key().to_string()).filter(|k| !failed.contains(k)));
        }
        if p.def.on_error == OnError::Stop && !p.failed.is_empty() {
            return Err(Error::fatal(format!("pipeline `{}` rejected key {} ({}) and says `on_error: stop`", p.def.name, p.failed[0].key, p.failed[0].reason)));
        }
        // Dead letters are durable before the checkpoints pass them: a store that cannot write
        // (a full disk) fails the batch, which is retried unacknowledged.
        self.ctx.dead.lock().expect("dead-letter lock").persist(&p.def.name, &p.failed)?;
        if truncated_notice {
            // Too many keys (or a TRUNCATE) to list: an empty notice with `keys: ["*"]` tells
            // readers to re-read everything.
            upserted = vec!["*".to_string()];
            deleted.clear();
        }
        let notice = ChangeNotice { pipeline: p.def.name.clone(), lsn, keys: upserted, deleted };
        if self.inflight.is_some() {
            // Batch N+1 is derived and written while batch N still commits.
            failpoint("two_batches_in_flight");
        }
        self.start_batch_commit(batch, lsn, &active, Some(notice), stages, deriving).await.map(Some)
    }

    /// Starts the commits of the batch written to the sinks `active`, once the batch before it
    /// is durable (`inflight::start_commits`).
    async fn start_batch_commit(
        &mut self,
        batch: &mut Batch,
        lsn: Lsn,
        active: &[usize],
        notice: Option<ChangeNotice>,
        stages: Instant,
        deriving: Duration,
    ) -> Result<InFlight> {
        self.settle(batch).await?;
        let started = Instant::now();
        let p = &mut self.p;
        let (waits, ledger) = start_commits(&p.def.name, &mut p.sinks, active, &self.ctx.fence).await?;
        tracing::debug!(
            pipeline = %p.def.name,
            %lsn,
            derive_ms = deriving.as_secs_f64() * 1e3,
            write_ms = started.duration_since(stages).saturating_sub(deriving).as_secs_f64() * 1e3,
            "batch written; committing"
        );
        Ok(InFlight { lsn, batch: None, waits, ledger, notice, stages, started, deriving, large: batch.changes >= 10_000 })
    }

    /// Derives `keys` and writes them to `sink` at `lsn` with `mode` (`sink` = None: the live
    /// sink `live` of the pipeline).
    pub(super) async fn catch_up_sink(&mut self, sink: Option<&mut AnySink>, live: usize, keys: &mut DirtyKeys, lsn: Lsn, mode: BatchMode) -> Result<u64> {
        let chunk = self.ctx.cfg.runtime.derive_chunk.max(1);
        let p = &mut self.p;
        let stmt = p.statement()?;
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
            let failed: HashSet<String> = p.failed[failed_before..].iter().map(|r| r.key.clone()).collect();
            p.written.extend(writes.iter().map(|w| w.key().to_string()).filter(|k| !failed.contains(k)));
        }
        sink.commit().await?;
        Ok(n)
    }

    /// A pipeline a reload started whose dependency ledger is new or was kept for other joins:
    /// fills it from a snapshot taken now, at `at` (the stream's changes after `at` are staged
    /// onto it as the worker applies them; the pipeline's background rebuild re-derives what a
    /// probe may have missed meanwhile).
    pub(super) async fn fill_ledger(&mut self, at: Lsn) -> Result<()> {
        if self.p.ledger().is_none() {
            return Ok(());
        }
        let client = pg::connect(self.ctx.cfg.postgres_url()?).await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let ledger = self.p.ledger().expect("a ledger");
        ledger.discard_staged();
        ledger.begin(at, BatchMode::Replace).await?;
        stage_ledger_rows(&mut self.p, &client).await?;
        client.batch_execute("COMMIT").await?;
        self.p.ledger().expect("a ledger").commit().await
    }

    /// Derives every record in `client`'s open transaction and replaces the sinks' content,
    /// checkpointed at `lsn`.
    pub(super) async fn bulk_derive(&mut self, client: &Client, lsn: Lsn) -> Result<()> {
        let chunk = self.ctx.cfg.runtime.derive_chunk.max(1);
        let p = &mut self.p;
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
        stage_ledger_rows(p, client).await?;
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
        let stmt = p.statement()?;
        let mut sinks: Vec<&mut AnySink> = p.sinks.iter_mut().enumerate().filter(|(j, _)| active.contains(j)).map(|(_, s)| s).collect();
        let total = match result {
            Ok((total, rejected)) => {
                note_rejects(&p.def.name, &mut p.failed, &rejected);
                total
            }
            Err(e) if !e.is_transient() && e.is_postgres_answer() => {
                // A row breaks the set-based query: derive key by key (chunks, a failing key alone)
                // so only that row is a dead letter and the rest goes on.
                warn!(pipeline = %name, error = %e, "deriving every record in one query failed; deriving in chunks to isolate the failing rows");
                client.batch_execute("ROLLBACK TO SAVEPOINT deriver_bulk").await?;
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
        // Dead letters are durable before the checkpoints pass them.
        self.ctx.dead.lock().expect("dead-letter lock").persist(&name, &p.failed)?;
        for s in sinks {
            s.commit().await?;
        }
        if p.def.on_error == OnError::Stop && !p.failed.is_empty() {
            return Err(Error::fatal(format!("pipeline `{name}` rejected key {} ({}) and says `on_error: stop`", p.failed[0].key, p.failed[0].reason)));
        }
        info!(pipeline = %name, rows = total, secs = started.elapsed().as_secs_f64(), "derived every record");
        super::release_memory();
        self.settle_dead_letters()
    }

    /// Moves this flush's rejections into the dead-letter store and clears keys that were
    /// written fine.
    pub fn settle_dead_letters(&mut self) -> Result<()> {
        let failed = std::mem::take(&mut self.p.failed);
        let written = std::mem::take(&mut self.p.written);
        let mut dead = self.ctx.dead.lock().expect("dead-letter lock");
        // The pipeline's SQL works again (a derivation succeeded while keys are dead after failed
        // derivations, e.g. during a schema change): retry those now rather than after backoff.
        if !written.is_empty() && failed.is_empty() && dead.count(&self.p.def.name) > 0 {
            self.p.retry_sql_errors = true;
        }
        dead.resolve(&self.p.def.name, &written)?;
        dead.record(&self.p.def.name, &failed)
    }

    /// Retries dead letters whose backoff has passed.
    pub(super) async fn retry_dead_letters(&mut self, applied: Lsn) -> Result<()> {
        let name = self.p.def.name.clone();
        let (mut due, listed) = {
            let dead = self.ctx.dead.lock().expect("dead-letter lock");
            let due = dead.due(&name, 500)?;
            let sql_retry = self.p.retry_sql_errors && self.last_sql_retry.elapsed() >= Duration::from_secs(5);
            (due, if sql_retry { Some(dead.list(&name, 500)?) } else { None })
        };
        self.p.retry_sql_errors = false;
        if let Some(list) = listed {
            self.last_sql_retry = Instant::now();
            let again = super::dead_letters::sql_recovery_keys(&list, &due);
            due.extend(again);
        }
        if due.is_empty() {
            return Ok(());
        }
        info!(pipeline = %name, keys = due.len(), "retrying dead letters");
        if let Err(e) = self.repair(&due, Some(applied)).await {
            warn!(pipeline = %name, error = %e, "retrying dead letters failed");
        }
        // Keys the retry did not reach are still dead: each counts an attempt.
        let again = self.ctx.dead.lock().expect("dead-letter lock").not_retried(&name, &due, &self.p.written, &self.p.failed)?;
        self.p.failed.extend(again);
        self.settle_dead_letters()
    }
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

/// Opens (or keeps) `n` more connections with the derivation statement `sql` prepared on each,
/// for deriving a batch's chunks in parallel. One that cannot be opened is left out: the batch is
/// derived on fewer.
async fn open_helpers(helpers: &mut Vec<(Client, tokio_postgres::Statement, String)>, cfg: &crate::config::Config, sql: &str, n: usize) {
    helpers.retain(|(c, _, s)| !c.is_closed() && s == sql);
    let Ok(url) = cfg.postgres_url() else { return };
    while helpers.len() < n {
        let opened = async {
            let client = pg::connect(url).await?;
            let stmt = client.prepare(sql).await?;
            Ok::<_, Error>((client, stmt))
        }
        .await;
        match opened {
            Ok((client, stmt)) => helpers.push((client, stmt, sql.to_string())),
            Err(e) => {
                warn!(error = %e, "cannot open another derivation connection; deriving on fewer");
                return;
            }
        }
    }
}

/// Stages every row of the pipeline's ledgered relations (identity, join values), as
/// `client`'s open transaction sees them, into its ledger.
async fn stage_ledger_rows(p: &mut PipelineRt, client: &Client) -> Result<()> {
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
    Ok(())
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
