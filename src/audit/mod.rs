//! `deriver audit`: proves that every target holds exactly what a fresh derivation of the source
//! gives, and repairs drift by key through the normal write path.
//!
//! The source is derived with the pipeline's bulk SQL in key order (one `REPEATABLE READ`
//! snapshot) by a reader task, `derive_chunk` records at a time, while the previous chunk is
//! compared: search documents by the content hash stored with every document (a fast field, so
//! no document is read unless it differs), Redis views by reading exactly the views the record
//! should produce — one pipelined round trip per chunk (the ledger entries with one `HMGET`, then
//! a `GET`/`HGETALL`/`SISMEMBER`/`ZSCORE` per view), sent ahead so that Redis answers while deriver
//! compares (up to `READS_IN_FLIGHT` chunks). Keys the targets hold but the source does not
//! produce (extras: documents, ledger entries) and view keys no ledger entry owns (stray keys
//! written behind deriver's back) come from one pass over each target.
//!
//! In-flight changes are not drift: suspects are re-checked after the running daemon has applied
//! the position the audit reached (`POST /v1/wait`, or its shared state from inside the daemon),
//! up to a few rounds, and only keys that stay wrong are reported. With `--repair` those keys are
//! re-derived by the daemon (or by the CLI when none runs) with the same atomic checkpointed
//! writes as streaming, then verified again.
//!
//! [`continuous`] runs the same comparison inside `deriver run` on a rotating sample.

mod checker;
pub mod continuous;
mod findings;
mod link;
mod redis_side;
mod report;
mod sample;
mod search_side;

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::time::Instant;

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::Client;
use tracing::debug;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::runtime::derive::row_to_record;
use crate::sink::redis as rsink;
use crate::sink::Record;
use crate::source::postgres::{self as pg, TableInfo};
use checker::Checker;
use findings::{Findings, DIFFS_KEPT};
use link::Link;
use redis_side::{PendingReads, RedisSide};
use report::{full_mode, save_report};
pub use report::{last_report, report_path, FieldDiff, PipelineReport, TargetReport};
use sample::{KeyFilter, Sample};

/// Chunks whose Redis reads may be in flight while the audit compares.
const READS_IN_FLIGHT: usize = 2;

/// Reads the bulk derivation in the reader's open transaction and hands it over in chunks of
/// sampled records, with the number of rows read so far.
async fn read_bulk(reader: Client, bulk: String, chunk: usize, sample: Sample, tx: tokio::sync::mpsc::Sender<Result<(u64, Vec<Record>)>>) {
    let result: Result<()> = async {
        let stream = reader.query_raw(bulk.as_str(), std::iter::empty::<&str>()).await.map_err(Error::from)?;
        pin_mut!(stream);
        let mut rows = 0u64;
        let mut part = Vec::with_capacity(chunk);
        while let Some(row) = stream.try_next().await.map_err(Error::from)? {
            rows += 1;
            let r = row_to_record(&row)?;
            if sample.contains(&r.key) {
                part.push(r);
            }
            if rows.is_multiple_of(chunk as u64) && tx.send(Ok((rows, std::mem::replace(&mut part, Vec::with_capacity(chunk))))).await.is_err() {
                return Ok(());
            }
        }
        let _ = tx.send(Ok((rows, part))).await;
        reader.batch_execute("COMMIT").await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

/// Audits one pipeline (and repairs it when asked). Progress goes to `on_progress(rows)`.
#[allow(clippy::too_many_arguments)]
pub async fn audit_pipeline(
    cfg: &Config,
    client: &Client,
    p: &Pipeline,
    info: &TableInfo,
    sql: &DerivationSql,
    sample_pct: Option<f64>,
    repair: bool,
    mut on_progress: impl FnMut(u64),
) -> Result<PipelineReport> {
    let started = Instant::now();
    let link = Link::Cli(cfg);
    let sample = Sample::percent(sample_pct);
    let chunk = cfg.runtime.derive_chunk.max(1);

    // Pass 1: the whole source in key order, read by a task while the previous chunk is
    // compared; the Redis key space is scanned meanwhile.
    let reader = pg::connect(cfg.postgres_url()?).await?;
    reader.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let start_lsn = pg::current_wal_lsn(&reader).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let producer = tokio::spawn(read_bulk(reader, sql.bulk.clone(), chunk, sample, tx));
    let mut checker = Checker::open(&link, client, p, sql, info.key.len(), KeyFilter::Sample(sample), usize::MAX).await?;
    debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), "audit: targets open");
    let space = checker.redis.as_ref().map(RedisSide::space);
    // Which keys of the key space are views of a record: on a full audit, those the records
    // produce (collected while comparing; the few left are checked against the ledger when
    // re-checked); on a sample, those the ledger lists (candidates first, then the ledger: a view
    // written in between has its ledger entry).
    let by_ledger = !sample.is_all();
    if let Some(r) = checker.redis.as_mut().filter(|_| !by_ledger) {
        r.expected = Some(HashSet::new());
    }
    // The pipeline's Redis checkpoint before the pass: when it has not moved after it, and the
    // ledger holds exactly as many entries as the records had, no entry lacks a record and the
    // ledger need not be read.
    let checkpoint_key = rsink::Keys::of(&cfg.redis, &p.name).checkpoint;
    let checkpoint_before: Option<String> = match checker.redis.as_mut() {
        Some(r) if !by_ledger => redis::cmd("GET").arg(&checkpoint_key).query_async(&mut r.space.conn).await?,
        _ => None,
    };
    let scan = async {
        let Some(mut space) = space else { return Ok((HashSet::new(), None)) };
        let mut candidates = space.scan_candidates(p, sample, usize::MAX).await?;
        debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), keys = candidates.len(), "audit: view keys scanned");
        if !by_ledger {
            return Ok((candidates, None));
        }
        let ledger_keys = space.ledger_pass(sample, &mut candidates, usize::MAX).await?;
        debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), "audit: ledger read");
        Ok::<_, Error>((candidates, Some(ledger_keys)))
    };
    // Source keys seen, by hash (for ledger entries no record has).
    let seen_hasher = std::collections::hash_map::RandomState::new();
    let track = checker.redis.is_some();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut findings = Findings::default();
    let mut records = 0u64;
    let compare = async {
        // Redis reads of the next chunks are in flight while a chunk is compared: Redis answers
        // while deriver compares the search targets and renders the next chunk's views.
        // (rows read so far, the chunk's items, its Redis reads)
        type InFlight = (u64, Vec<(String, Option<Record>)>, Option<PendingReads>);
        let mut in_flight: std::collections::VecDeque<InFlight> = Default::default();
        loop {
            let msg = rx.recv().await;
            let done = msg.is_none();
            if let Some(msg) = msg {
                let (rows, part) = msg?;
                let items: Vec<(String, Option<Record>)> = part
                    .into_iter()
                    .map(|r| {
                        if track {
                            seen.insert(seen_hasher.hash_one(&r.key));
                        }
                        (r.key.clone(), Some(r))
                    })
                    .collect();
                let pending = checker.redis.as_ref().map(|r| r.request(&items, false));
                checker.compare_search(&items, &mut findings, false);
                in_flight.push_back((rows, items, pending));
            }
            while in_flight.len() > READS_IN_FLIGHT || (done && !in_flight.is_empty()) {
                let (rows, items, pending) = in_flight.pop_front().expect("not empty");
                checker.compare_redis(&items, pending, &mut findings, false).await?;
                records = rows;
                on_progress(records);
            }
            if done {
                break;
            }
        }
        debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), "audit: source compared");
        Ok::<_, Error>(())
    };
    let (compared, scanned) = tokio::join!(compare, scan);
    compared?;
    let (mut candidates, mut ledger_keys) = scanned?;
    if let Some(r) = checker.redis.as_mut() {
        if let Some(expected) = r.expected.take() {
            candidates.retain(|k| !expected.contains(&r.hasher.hash_one(k)));
        }
        if ledger_keys.is_none() {
            let (len, checkpoint_after): (u64, Option<String>) =
                redis::pipe().cmd("HLEN").arg(&r.space.ledger_key).cmd("GET").arg(&checkpoint_key).query_async(&mut r.space.conn).await?;
            ledger_keys = if len == r.ledger_present && checkpoint_after == checkpoint_before {
                Some(Vec::new())
            } else {
                let keys = r.space.ledger_pass(sample, &mut HashSet::new(), usize::MAX).await?;
                debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), "audit: ledger read");
                Some(keys)
            };
        }
    }
    let ledger_keys = ledger_keys.unwrap_or_default();
    producer.await.map_err(|e| Error::fatal("the audit's reader failed").with_detail(e))?;

    // Extras: what targets hold that the source does not produce (suspects until re-checked).
    for s in &checker.search {
        let extra: Vec<String> = s.docs.iter().filter(|(_, d)| !d.compared).map(|(k, _)| k.clone()).collect();
        findings.target(&s.label).extra.extend(extra);
    }
    if checker.redis.is_some() {
        findings.target("redis").extra.extend(ledger_keys.into_iter().filter(|k| !seen.contains(&seen_hasher.hash_one(k))));
    }
    let mut strays: Vec<String> = candidates.into_iter().collect();
    strays.sort();
    drop(seen);

    let settled = checker.settle(&link, client, findings.suspects(), strays, 3).await?;
    debug!(pipeline = %p.name, secs = started.elapsed().as_secs_f64(), suspects_left = settled.keys.len(), "audit: suspects re-checked");
    let (mut reports, mut diffs, keys, mut strays) = (settled.findings.targets, settled.findings.diffs, settled.keys, settled.strays);
    let unverified = settled.unverified;
    let drifted = keys.len() + strays.len();
    let mut repaired = 0;
    let mut remaining = drifted;
    if repair && drifted > 0 {
        repaired = link.repair(p, &keys).await?;
        if let Some(rs) = checker.redis.as_mut() {
            for k in &strays {
                let _: () = redis::cmd("DEL").arg(k).query_async(&mut rs.space.conn).await?;
            }
            repaired += strays.len();
        }
        let again = checker.settle(&link, client, keys, strays, 3).await?;
        remaining = again.keys.len() + again.strays.len();
        reports = again.findings.targets;
        diffs = again.findings.diffs;
        strays = again.strays;
    }
    let mut reports: Vec<TargetReport> = reports.into_values().collect();
    if !strays.is_empty() {
        match reports.iter_mut().find(|t| t.target == "redis") {
            Some(t) => t.extra.extend(strays.iter().map(|k| format!("(key) {k}"))),
            None => reports.push(TargetReport { target: "redis".into(), extra: strays.iter().map(|k| format!("(key) {k}")).collect(), ..Default::default() }),
        }
    }
    diffs.truncate(DIFFS_KEPT);
    let report = PipelineReport {
        pipeline: p.name.clone(),
        mode: full_mode(),
        start_lsn,
        records,
        sample_pct,
        targets: reports,
        diffs,
        drifted,
        repaired,
        remaining,
        unverified,
        seconds: started.elapsed().as_secs_f64(),
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    save_report(cfg, &report)?;
    Ok(report)
}
