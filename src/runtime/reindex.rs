//! Full reprocess without downtime. A search target is rebuilt into a *new generation* by a
//! background task: it derives every record from a `REPEATABLE READ` snapshot taken after the
//! position `from` the live pipeline had applied, while the pipeline's worker keeps streaming and
//! logs every key it re-derives after `from`. When the bulk load is committed, the worker catches
//! the new generation up by re-deriving the logged keys, then makes it live (`CURRENT`, an atomic
//! rename) and keeps the previous generation for rollback. Searches answer from the old
//! generation until the switch and never see a half-built index.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use super::derive::row_to_record;
use super::dirty::DirtyKeys;
use crate::error::{Error, Result};
use crate::sink::{AnySink, BatchMode, Rejected, Sink, Write};

/// Rows done and expected of a bulk derivation, and its phase, shared with status, metrics and
/// the CLI.
#[derive(Debug)]
pub struct Progress {
    pub rows_done: AtomicU64,
    pub rows_total: AtomicU64,
    pub started: Instant,
    phase: AtomicU8,
}

/// Where a full reprocess is: deriving every record, writing the new generation out, then
/// catching up with what changed meanwhile and swapping it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Deriving,
    Writing,
    CatchingUp,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Deriving => "deriving",
            Phase::Writing => "writing",
            Phase::CatchingUp => "catching up",
        }
    }
}

impl Progress {
    pub fn new(total: u64) -> Arc<Progress> {
        Arc::new(Progress {
            rows_done: AtomicU64::new(0),
            rows_total: AtomicU64::new(total),
            started: Instant::now(),
            phase: AtomicU8::new(Phase::Deriving as u8),
        })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Deriving,
            1 => Phase::Writing,
            _ => Phase::CatchingUp,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Seconds left at the current rate, once there is a rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let done = self.rows_done.load(Ordering::Relaxed) as f64;
        let total = self.rows_total.load(Ordering::Relaxed) as f64;
        let secs = self.started.elapsed().as_secs_f64();
        (done > 0.0 && total > done).then(|| (total - done) * secs / done)
    }
}

/// The planner's row estimate of a table (`count(*)` when it was never analyzed).
pub async fn estimate_rows(client: &Client, table: &crate::source::TableName) -> u64 {
    let est: Option<f32> =
        client.query_opt("SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass", &[&table.quoted()]).await.ok().flatten().map(|r| r.get(0));
    match est {
        Some(n) if n >= 0.0 => n as u64,
        _ => client.query_one(&format!("SELECT count(*) FROM {}", table.quoted()), &[]).await.map(|r| r.get::<_, i64>(0) as u64).unwrap_or(0),
    }
}

/// Streams every record of `sql` (run in `client`'s open transaction) into `sinks`, `chunk` rows
/// at a time; the caller has begun and will commit them. Returns the sinks (also after an error)
/// and (rows, rejected records).
///
/// Each sink writes from its own task, fed by a channel of one chunk, while this task reads and
/// decodes the next chunk: Postgres decoding, search document building and Redis encoding run on
/// separate cores. At most three chunks per sink are in memory here (one being read, one queued,
/// one being written); past that, a search sink queues documents for its writer thread up to its
/// writer memory budget (`sink/tantivy/queue.rs`).
pub async fn stream_bulk(
    client: &Client,
    sql: &str,
    chunk: usize,
    sinks: Vec<AnySink>,
    progress: Option<&Progress>,
    pipeline: &str,
) -> (Vec<AnySink>, Result<(u64, Vec<Rejected>)>) {
    let mut feeds = Vec::with_capacity(sinks.len());
    let mut tasks = Vec::with_capacity(sinks.len());
    for mut sink in sinks {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<Write>>>(1);
        feeds.push(tx);
        tasks.push(tokio::spawn(async move {
            let mut rejected = Vec::new();
            while let Some(buf) = rx.recv().await {
                match sink.write(&buf).await {
                    Ok(r) => rejected.extend(r),
                    Err(e) => return (sink, Err(e)),
                }
            }
            (sink, Ok(rejected))
        }));
    }
    let read = read_bulk(client, sql, chunk, &feeds, progress, pipeline).await;
    drop(feeds);
    let mut sinks = Vec::with_capacity(tasks.len());
    let mut written: Result<Vec<Rejected>> = Ok(Vec::new());
    for task in tasks {
        match task.await {
            Ok((sink, r)) => {
                sinks.push(sink);
                match (&mut written, r) {
                    (Ok(all), Ok(r)) => all.extend(r),
                    (Ok(_), Err(e)) => written = Err(e),
                    (Err(_), _) => {}
                }
            }
            Err(e) => written = Err(Error::fatal("a sink writer task failed").with_detail(e)),
        }
    }
    // A sink's error explains a read that stopped because that sink went away.
    let result = match (read, written) {
        (_, Err(e)) => Err(e),
        (Err(e), _) => Err(e),
        (Ok((rows, mut rejected)), Ok(more)) => {
            rejected.extend(more);
            Ok((rows, rejected))
        }
    };
    (sinks, result)
}

/// Reads `sql`'s records and hands each chunk to every feed. Returns (rows, records that could
/// not be decoded).
async fn read_bulk(
    client: &Client,
    sql: &str,
    chunk: usize,
    feeds: &[tokio::sync::mpsc::Sender<Arc<Vec<Write>>>],
    progress: Option<&Progress>,
    pipeline: &str,
) -> Result<(u64, Vec<Rejected>)> {
    let stream = client.query_raw(sql, std::iter::empty::<&str>()).await.map_err(Error::from)?;
    pin_mut!(stream);
    let mut buf = Vec::with_capacity(chunk);
    let mut total = 0u64;
    let mut rejected = Vec::new();
    let mut last_log = Instant::now();
    loop {
        let row = stream.try_next().await.map_err(Error::from)?;
        let done = row.is_none();
        if let Some(row) = row {
            match row_to_record(&row) {
                Ok(r) => buf.push(Write::Upsert(r)),
                Err(e) => {
                    let key = row.try_get::<_, Option<String>>(0).ok().flatten().unwrap_or_else(|| "?".into());
                    rejected.push(Rejected::by_derivation(key, e.to_string()));
                }
            }
            total += 1;
        }
        if buf.len() >= chunk.max(1) || (done && !buf.is_empty()) {
            super::failpoint::failpoint("bulk_chunk");
            let n = buf.len() as u64;
            let full = Arc::new(std::mem::replace(&mut buf, Vec::with_capacity(chunk)));
            for feed in feeds {
                if feed.send(full.clone()).await.is_err() {
                    return Err(Error::fatal("a sink stopped during the bulk derivation"));
                }
            }
            if let Some(p) = progress {
                p.rows_done.fetch_add(n, Ordering::Relaxed);
            }
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            tracing::info!(pipeline, rows = total, "still deriving");
            last_log = Instant::now();
        }
        if done {
            break;
        }
    }
    Ok((total, rejected))
}

/// A rebuild in progress, owned by its pipeline's worker.
pub struct Rebuild {
    pub id: u64,
    /// Index in the pipeline's sinks of the search sink being replaced.
    pub sink: Option<usize>,
    pub index: String,
    pub generation: Option<u64>,
    /// The position the bulk derivation starts from; keys re-derived after it are logged.
    pub from: crate::source::Lsn,
    pub log: DirtyKeys,
    pub progress: Arc<Progress>,
    /// The Redis views are being rewritten too (a manual reindex): catch them up as well.
    pub redis: bool,
    /// The source was truncated meanwhile: discard the result and start over.
    pub restart: bool,
}

/// The outcome of a background build: the new generation, loaded and committed at `from`.
pub struct Built {
    pub id: u64,
    pub result: Result<AnySink>,
}

/// Everything the background task needs, owned.
pub struct BuildJob {
    pub id: u64,
    pub url: String,
    pub sql: String,
    pub chunk: usize,
    pub from: crate::source::Lsn,
    pub search: Option<AnySink>,
    pub redis: Option<AnySink>,
    pub progress: Arc<Progress>,
    pub pipeline: String,
}

impl BuildJob {
    pub async fn run(mut self) -> Built {
        let id = self.id;
        let result = self.build().await.map(|_| self.search.or(self.redis).expect("a job has a sink"));
        Built { id, result }
    }

    async fn build(&mut self) -> Result<()> {
        let client = crate::source::postgres::connect(&self.url).await?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        if let Some(s) = self.search.as_mut() {
            s.begin(self.from, BatchMode::Replace).await?;
        }
        if let Some(r) = self.redis.as_mut() {
            r.begin(self.from, BatchMode::Rewrite).await?;
        }
        let sinks: Vec<AnySink> = self.search.take().into_iter().chain(self.redis.take()).collect();
        let (sinks, result) = stream_bulk(&client, &self.sql, self.chunk, sinks, Some(&self.progress), &self.pipeline).await;
        // Back in place, also after an error (a sink whose task failed is gone; the result says so).
        for s in sinks {
            match s {
                AnySink::Search(_) => self.search = Some(s),
                _ => self.redis = Some(s),
            }
        }
        let (rows, rejected) = result?;
        for r in &rejected {
            tracing::error!(pipeline = %self.pipeline, key = %r.key, reason = %r.reason, "record rejected during the rebuild (dead letter)");
        }
        self.progress.set_phase(Phase::Writing);
        if let Some(s) = self.search.as_mut() {
            s.commit().await?;
        }
        if let Some(r) = self.redis.as_mut() {
            r.commit().await?;
        }
        client.batch_execute("COMMIT").await?;
        tracing::info!(pipeline = %self.pipeline, rows, secs = self.progress.started.elapsed().as_secs_f64(), "new generation loaded; catching up");
        Ok(())
    }
}
