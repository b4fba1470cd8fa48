//! The Redis sink: all Redis views of one pipeline. Each batch is applied by a Lua script that
//! checks the stored checkpoint, writes absolute values, deletes keys a record no longer produces
//! (from a per-pipeline ledger of emitted keys) and stores the batch LSN, all in one atomic step.
//! A batch too large for one script call is queued as several script calls inside MULTI/EXEC, so
//! deriver's memory stays bounded while Redis still applies the batch atomically.
//!
//! On a Redis Cluster (`redis.cluster = true`) every key of a pipeline carries the hash tag
//! `{<pipeline>}` (see [`Keys`]), so they all live in one hash slot and the script and the
//! transaction run on one node; the sink talks to that node over a pinned connection
//! ([`connect_pinned`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use redis::Value as RValue;

use super::{BatchMode, Checkpoint, Rejected, Sink, Write};
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use std::collections::HashSet;

mod checkpoint;
pub(crate) mod compare;
mod conn;
mod keys;
mod views;
use crate::pipeline::Pipeline;
use crate::sink::provenance::Stamp;
use crate::source::Lsn;
pub use checkpoint::{durability_delay, read_checkpoint};
pub use conn::{connect, connect_pinned, RedisConn};
pub use keys::Keys;
use views::{build_views, render_views, View};
pub use views::{preview, view_renderer, ViewWrite};

const SCRIPT: &str = include_str!("apply.lua");
/// Above this many argument bytes a chunk is flushed into a MULTI transaction.
const CHUNK_BYTES: usize = 4 << 20;
/// The default limit on one view value (`redis.max_value_bytes`).
pub const MAX_VALUE_BYTES: usize = 64 << 20;

pub struct RedisSink {
    pipeline: String,
    hash: String,
    prefix: String,
    keys: Keys,
    cfg: RedisConfig,
    /// To the server holding the pipeline's keys (pinned on a cluster: see [`connect_pinned`]).
    conn: Option<RedisConn>,
    views: Vec<View>,
    notify: bool,
    open: Option<OpenBatch>,
    checkpoint: Option<Checkpoint>,
    /// Commits not yet trusted durable: (when, lsn).
    recent: VecDeque<(Instant, Lsn)>,
    durable: Option<Lsn>,
    delay: Duration,
    max_value: usize,
    /// The owner epoch this process claimed (see [`RedisSink::claim_ownership`]); empty: unfenced.
    epoch: String,
}

struct OpenBatch {
    lsn: Lsn,
    clear_all: bool,
    args: Vec<Vec<u8>>,
    bytes: usize,
    /// MULTI has been sent and chunks queued.
    in_multi: bool,
    /// Replace/rewrite mode: chunks are applied as they fill (not atomically), source keys seen
    /// are kept so the keys of records that no longer exist are removed at commit.
    replace: Option<HashSet<String>>,
    /// Apply even when the stored checkpoint covers the batch (repair, rewrite).
    force: bool,
    /// Store the checkpoint with the last chunk (not for a rewrite beside the live stream).
    store_checkpoint: bool,
    written: Vec<String>,
    deleted: Vec<String>,
    /// Replace/rewrite mode over existing views: each chunk's views are read back first and
    /// only those that differ are written (see [`RedisSink::held_already`]).
    verify: bool,
    /// Records whose views were found already exact (not rewritten).
    verified: u64,
    /// The provenance the views of targets with `provenance: true` carry (none without such).
    stamp: Option<Stamp>,
}

impl RedisSink {
    pub async fn open(cfg: &RedisConfig, pipeline: &Pipeline) -> Result<RedisSink> {
        let keys = Keys::of(cfg, &pipeline.name);
        let mut conn = connect_pinned(cfg, &keys.checkpoint).await?;
        let checkpoint = read_checkpoint(&mut conn, &keys).await?;
        let delay = durability_delay(&mut conn, cfg.durability_delay_ms).await?;
        let views = build_views(pipeline);
        Ok(RedisSink {
            pipeline: pipeline.name.clone(),
            hash: pipeline.redis_hash(),
            prefix: keys.views.clone(),
            durable: checkpoint.as_ref().map(|c| c.lsn),
            checkpoint,
            keys,
            cfg: cfg.clone(),
            conn: Some(conn),
            views,
            notify: pipeline.redis.iter().any(|t| t.notify),
            open: None,
            recent: VecDeque::new(),
            delay,
            max_value: cfg.max_value_bytes,
            epoch: String::new(),
        })
    }

    /// Claims ownership of this pipeline's views: bumps the owner epoch, so a batch from any
    /// process that owned them before is refused from now on. Call it after taking the slot's
    /// ownership lock and before the first write.
    pub async fn claim_ownership(&mut self) -> Result<u64> {
        let key = self.keys.epoch.clone();
        let conn = self.conn().await?;
        let epoch: u64 = redis::cmd("INCR").arg(&key).query_async(conn).await?;
        self.epoch = epoch.to_string();
        Ok(epoch)
    }

    /// The newest LSN Redis is trusted to have made durable.
    pub fn durable_lsn(&mut self) -> Option<Lsn> {
        let now = Instant::now();
        while let Some(&(at, lsn)) = self.recent.front() {
            if now.duration_since(at) >= self.delay {
                self.durable = Some(lsn);
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.durable
    }

    async fn conn(&mut self) -> Result<&mut RedisConn> {
        if self.conn.is_none() {
            self.conn = Some(connect_pinned(&self.cfg, &self.keys.checkpoint).await?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Encodes one record's rendered views into script arguments.
    fn encode(&self, key: &str, views: Vec<ViewWrite>, args: &mut Vec<Vec<u8>>, written: &mut Vec<String>) -> usize {
        let mut out: Vec<Vec<u8>> = vec![key.as_bytes().to_vec(), views.len().to_string().into_bytes()];
        for v in views {
            out.push(v.key.as_bytes().to_vec());
            out.push(v.kind.as_bytes().to_vec());
            out.push(v.values.len().to_string().into_bytes());
            out.extend(v.values.into_iter().map(String::into_bytes));
            written.push(v.key);
        }
        let bytes = out.iter().map(Vec::len).sum();
        args.extend(out);
        bytes
    }

    /// Which of these records' views (and ledger entries) Redis already holds exactly: one
    /// pipelined round trip of reads, compared here (see [`compare`]).
    async fn held_already(&mut self, upserts: &[(&str, Vec<ViewWrite>)]) -> Result<Vec<bool>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut entries = redis::cmd("HMGET");
        entries.arg(&self.keys.ledger);
        for (key, _) in upserts {
            entries.arg(*key);
        }
        pipe.add_command(entries);
        for (_, views) in upserts {
            for v in views {
                compare::push_reads(&mut pipe, v, false);
            }
        }
        let read: Result<Vec<RValue>> = async { Ok(pipe.query_async(self.conn().await?).await?) }.await;
        let replies = match read {
            Ok(r) => r,
            Err(e) => return Err(self.failed(e)),
        };
        let mut replies = replies.into_iter();
        let ledger = replies.next().ok_or_else(|| Error::transient("Redis returned no reply"))?;
        if let Some(e) = compare::redis_error(&ledger) {
            return Err(Error::fatal(format!("cannot read the ledger {}", self.keys.ledger)).with_detail(e));
        }
        let ledger: Vec<Option<String>> = compare::parse(ledger)?;
        let mut held = Vec::with_capacity(upserts.len());
        for (i, (_, views)) in upserts.iter().enumerate() {
            let mut same = compare::ledger_matches(ledger.get(i).and_then(|e| e.as_deref()), views);
            for v in views {
                // Every view's replies are taken, also after a first difference.
                same &= compare::next_mismatch(v, &mut replies, false, compare::Ignore::Lsn)?.is_none();
            }
            held.push(same);
        }
        Ok(held)
    }

    fn header(&self, open: &OpenBatch, last: bool) -> Vec<Vec<u8>> {
        let flag = |b: bool| if b { b"1".to_vec() } else { b"0".to_vec() };
        vec![
            (open.lsn.0 >> 32).to_string().into_bytes(),
            (open.lsn.0 & 0xFFFF_FFFF).to_string().into_bytes(),
            open.lsn.to_string().into_bytes(),
            flag(last && open.store_checkpoint),
            flag(open.clear_all),
            flag(self.notify),
            self.hash.clone().into_bytes(),
            flag(open.force),
            self.epoch.clone().into_bytes(),
        ]
    }

    fn eval_cmd(&self, header: Vec<Vec<u8>>, args: &[Vec<u8>]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT).arg(5).arg(&self.keys.checkpoint).arg(&self.keys.ledger).arg(&self.keys.hash).arg(&self.keys.epoch).arg(&self.keys.fenced);
        for a in header.iter().chain(args) {
            cmd.arg(a.as_slice());
        }
        cmd
    }

    /// Queues the buffered chunk inside MULTI (sending MULTI first if needed).
    async fn spill(&mut self) -> Result<()> {
        let mut open = self.open.take().expect("a batch is open");
        let header = self.header(&open, false);
        let cmd = self.eval_cmd(header, &open.args);
        let atomic = open.replace.is_none();
        let result: Result<()> = async {
            let conn = self.conn().await?;
            if atomic && !open.in_multi {
                redis::cmd("MULTI").query_async::<()>(conn).await?;
            }
            let reply: RValue = cmd.query_async(conn).await.map_err(map_script_error)?;
            if !atomic {
                Self::deleted_from(&reply, &mut open.deleted)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            return Err(self.failed(e));
        }
        open.in_multi = atomic;
        open.clear_all = false;
        open.args.clear();
        open.bytes = 0;
        self.open = Some(open);
        Ok(())
    }

    /// A failed round trip: reported to health, the connection dropped (the next call reconnects).
    fn failed(&mut self, e: Error) -> Error {
        let e = self.retryable(e);
        crate::health::report_error("redis", &e);
        self.conn = None;
        e
    }

    /// On a cluster, a master that became a replica (a failover) refuses writes with READONLY:
    /// the batch is retried on a connection to the slot's new master. (On a single server it
    /// means `redis.url` names a replica, which retrying does not fix.)
    fn retryable(&self, e: Error) -> Error {
        if self.cfg.cluster && e.is_redis_reply("READONLY") && e.kind == ErrorKind::Fatal {
            return Error { kind: ErrorKind::Transient, ..e };
        }
        e
    }

    fn deleted_from(value: &RValue, into: &mut Vec<String>) -> Result<bool> {
        match value {
            RValue::Array(items) => {
                let applied = matches!(items.first(), Some(RValue::Int(1)));
                for item in items.iter().skip(1) {
                    if let RValue::BulkString(b) = item {
                        into.push(String::from_utf8_lossy(b).into_owned());
                    }
                }
                Ok(applied)
            }
            RValue::ServerError(e) if e.code() == "FENCED" => Err(fenced()),
            RValue::ServerError(e) => Err(Error::fatal("the Redis apply script failed").with_detail(format!("{e:?}"))),
            other => Err(Error::fatal("the Redis apply script returned an unexpected value").with_detail(format!("{other:?}"))),
        }
    }
}

fn fenced() -> Error {
    Error::new(ErrorKind::Fenced, "another deriver process took this pipeline over: Redis refused this process's batch (owner epoch)")
}

/// A script error reply outside MULTI arrives as a redis-rs error.
fn map_script_error(e: redis::RedisError) -> Error {
    if e.code() == Some("FENCED") {
        fenced()
    } else {
        Error::from(e)
    }
}

impl Sink for RedisSink {
    fn labels(&self) -> Vec<String> {
        self.views.iter().map(|v| v.target.label()).collect()
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint.clone())
    }

    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool> {
        if matches!(mode, BatchMode::Incremental { .. }) && self.checkpoint.as_ref().is_some_and(|c| c.lsn >= lsn) {
            return Ok(false);
        }
        let replace = mode == BatchMode::Replace;
        // A repair writes at the position its checkpoint holds, if that is later (as search does).
        let written_at = match (mode, &self.checkpoint) {
            (BatchMode::Repair, Some(c)) => c.lsn.max(lsn),
            _ => lsn,
        };
        let stamp = self.views.iter().any(|v| v.target.provenance).then(|| Stamp::new(written_at, &self.hash));
        // A rewrite beside the live views, or a replace over views already there (a resync),
        // mostly finds what it would write: it reads first (an initial load does not).
        let mut verify = mode == BatchMode::Rewrite;
        if replace {
            // A replace runs chunk by chunk; the stored checkpoint must not claim anything until
            // the last chunk lands, so a crash in between leads to a new replace.
            let keys = self.keys.clone();
            let conn = self.conn().await?;
            let ((), (), entries): ((), (), u64) = redis::pipe().del(&keys.checkpoint).del(&keys.hash).hlen(&keys.ledger).query_async(conn).await?;
            verify = entries > 0;
            self.checkpoint = None;
            self.recent.clear();
            self.durable = None;
        }
        self.open = Some(OpenBatch {
            lsn,
            clear_all: mode == BatchMode::Incremental { clear_all: true },
            args: Vec::new(),
            bytes: 0,
            in_multi: false,
            replace: matches!(mode, BatchMode::Replace | BatchMode::Rewrite).then(HashSet::new),
            force: matches!(mode, BatchMode::Repair | BatchMode::Rewrite),
            store_checkpoint: mode != BatchMode::Rewrite,
            written: Vec::new(),
            deleted: Vec::new(),
            verify,
            verified: 0,
            stamp,
        });
        Ok(true)
    }

    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut open = self.open.take().expect("write after begin");
        if let Some(seen) = open.replace.as_mut() {
            seen.extend(writes.iter().map(|w| w.key().to_string()));
        }
        let mut upserts: Vec<(&str, Vec<ViewWrite>)> = Vec::new();
        for w in writes {
            if let Write::Upsert(r) = w {
                match render_views(&self.prefix, &self.views, r, self.max_value, open.stamp.as_ref()) {
                    Ok(views) => upserts.push((r.key.as_str(), views)),
                    Err(reason) => rejected.push(Rejected::by_target(r.key.clone(), reason)),
                }
            }
        }
        // A rewrite leaves alone what Redis already holds exactly: reading a view back costs
        // Redis a fraction of rewriting it. When most records of a chunk differ (new views, a
        // changed definition), the rest of the batch is written without looking.
        let held = if open.verify && !upserts.is_empty() {
            let held = match self.held_already(&upserts).await {
                Ok(h) => h,
                Err(e) => {
                    self.open = Some(open);
                    return Err(e);
                }
            };
            let same = held.iter().filter(|h| **h).count();
            open.verified += same as u64;
            if same * 4 < held.len() {
                open.verify = false;
                tracing::debug!(pipeline = %self.pipeline, same, of = held.len(), "most views differ: the rest of the rewrite writes without reading first");
            }
            held
        } else {
            Vec::new()
        };
        let mut upserts = upserts.into_iter().zip(held.into_iter().chain(std::iter::repeat(false))).peekable();
        for w in writes {
            match w {
                Write::Delete { key } => {
                    open.args.push(key.clone().into_bytes());
                    open.args.push(b"0".to_vec());
                    open.bytes += key.len() + 1;
                }
                Write::Upsert(r) => {
                    // Rejected records were not rendered: the next rendered one is another key.
                    let Some(((key, views), held)) = upserts.next_if(|((k, _), _)| *k == r.key) else { continue };
                    if held {
                        continue;
                    }
                    let mut written = Vec::new();
                    open.bytes += self.encode(key, views, &mut open.args, &mut written);
                    if self.notify {
                        open.written.extend(written);
                    }
                }
            }
        }
        let spill = open.bytes > CHUNK_BYTES;
        self.open = Some(open);
        if spill {
            self.spill().await?;
        }
        Ok(rejected)
    }

    fn validate(&self, writes: &[Write]) -> Vec<Rejected> {
        // The largest stamp a batch can carry, for the size limit.
        let stamp = Stamp::new(Lsn(u64::MAX), &self.hash);
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Upsert(r) => {
                    render_views(&self.prefix, &self.views, r, self.max_value, Some(&stamp)).err().map(|reason| Rejected::by_target(r.key.clone(), reason))
                }
                Write::Delete { .. } => None,
            })
            .collect()
    }

    async fn commit(&mut self) -> Result<()> {
        let Some(mut open) = self.open.take() else { return Ok(()) };
        if let Some(seen) = open.replace.take() {
            if open.verified > 0 {
                tracing::info!(pipeline = %self.pipeline, records = seen.len(), already_exact = open.verified, "Redis views rewritten where they differed");
            }
            // Records the replace did not produce: their views go.
            let ledger = self.keys.ledger.clone();
            let known: Vec<String> = {
                let conn = self.conn().await?;
                redis::cmd("HKEYS").arg(&ledger).query_async(conn).await?
            };
            for key in known.into_iter().filter(|k| !seen.contains(k)) {
                open.bytes += key.len() + 1;
                open.args.push(key.into_bytes());
                open.args.push(b"0".to_vec());
            }
        }
        let header = self.header(&open, true);
        let cmd = self.eval_cmd(header, &open.args);
        let in_multi = open.in_multi;
        let result: Result<bool> = async {
            let conn = self.conn().await?;
            if in_multi {
                let _: RValue = cmd.query_async(conn).await.map_err(map_script_error)?;
                let replies: Vec<RValue> = redis::cmd("EXEC").query_async(conn).await.map_err(map_script_error)?;
                let mut applied = true;
                for r in &replies {
                    applied &= Self::deleted_from(r, &mut open.deleted)?;
                }
                Ok(applied)
            } else {
                let reply: RValue = cmd.query_async(conn).await.map_err(map_script_error)?;
                Self::deleted_from(&reply, &mut open.deleted)
            }
        }
        .await;
        match result {
            Err(e) => Err(self.failed(e)),
            Ok(applied) => {
                crate::health::report_ok("redis");
                if applied && self.notify && (!open.written.is_empty() || !open.deleted.is_empty()) {
                    let notice = serde_json::json!({ "lsn": open.lsn, "keys": open.written, "deleted": open.deleted }).to_string();
                    let channel = self.keys.changes.clone();
                    let conn = self.conn().await?;
                    if let Err(e) = redis::cmd("PUBLISH").arg(&channel).arg(notice).query_async::<i64>(conn).await {
                        tracing::warn!(pipeline = %self.pipeline, error = %e, "could not publish the change notice");
                    }
                }
                if open.store_checkpoint {
                    let lsn = self.checkpoint.as_ref().map_or(open.lsn, |c| c.lsn.max(open.lsn));
                    self.checkpoint = Some(Checkpoint { lsn, definition_hash: Some(self.hash.clone()) });
                    self.recent.push_back((Instant::now(), lsn));
                }
                Ok(())
            }
        }
    }

    async fn abort(&mut self) {
        if let Some(open) = self.open.take() {
            if open.in_multi {
                if let Ok(conn) = self.conn().await {
                    let _ = redis::cmd("DISCARD").query_async::<()>(conn).await;
                }
            }
        }
    }
}

impl RedisSink {
    /// The definition hash this sink's content must be built from.
    pub fn definition_hash(&self) -> &str {
        &self.hash
    }

    /// The checkpoint of the last commit (no I/O).
    pub fn current_checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint.clone()
    }
}
