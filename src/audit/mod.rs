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

pub mod continuous;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{pin_mut, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::schema::Value as _;
use tokio_postgres::{Client, Statement};
use tracing::debug;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::runtime::derive::{derive_keys, row_to_record, KeyTuple};
use crate::runtime::status::Shared;
use crate::sink::redis::compare::{self, entry_id, ledger_ids, ledger_text_matches, parse, redis_error};
use crate::sink::redis::{self as rsink, ViewWrite};
use crate::sink::tantivy::schema::{build_schema, DocBuilder, HASH_FIELD, SOURCE_FIELD};
use crate::sink::tantivy::KEY_FIELD;
use crate::sink::{content_hash, Record, Write};
use crate::source::postgres::{self as pg, TableInfo};
use crate::source::Lsn;

/// Field-level differences kept per pipeline.
const DIFFS_KEPT: usize = 20;
/// Keys per `SCAN`/`HSCAN` call.
const SCAN_COUNT: usize = 5000;
/// Chunks whose Redis reads may be in flight while the audit compares.
const READS_IN_FLIGHT: usize = 2;
/// How long one re-check waits for the daemon to apply the position it needs.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldDiff {
    pub key: String,
    pub target: String,
    pub field: String,
    pub expected: Value,
    pub actual: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    pub pipeline: String,
    /// `full` (`deriver audit`) or `continuous` (a background round of `deriver run`).
    #[serde(default = "full_mode")]
    pub mode: String,
    pub start_lsn: Lsn,
    /// Source rows read (full) or keys compared (continuous).
    pub records: u64,
    pub sample_pct: Option<f64>,
    pub targets: Vec<TargetReport>,
    pub diffs: Vec<FieldDiff>,
    /// Distinct drifted keys found.
    pub drifted: usize,
    pub repaired: usize,
    /// Drifted keys still wrong at the end (0 = clean).
    pub remaining: usize,
    /// Suspects that could not be re-checked because the daemon had not applied the changes
    /// committed meanwhile in time (it lagged); the CLI counts them as drift, a continuous round
    /// leaves them to a later round.
    #[serde(default)]
    pub unverified: usize,
    pub seconds: f64,
    pub finished_at: String,
}

impl From<&PipelineReport> for crate::runtime::status::AuditSummary {
    fn from(r: &PipelineReport) -> Self {
        crate::runtime::status::AuditSummary {
            finished_at: r.finished_at.clone(),
            records: r.records,
            drifted: r.drifted,
            repaired: r.repaired,
            remaining: r.remaining,
        }
    }
}

fn full_mode() -> String {
    "full".into()
}

/// Where the last audit of a pipeline is kept (read by `status` and the daemon's metrics).
pub fn report_path(cfg: &Config, pipeline: &str) -> std::path::PathBuf {
    cfg.index.dir.join("_audit").join(format!("{pipeline}.json"))
}

pub fn last_report(cfg: &Config, pipeline: &str) -> Option<PipelineReport> {
    serde_json::from_str(&std::fs::read_to_string(report_path(cfg, pipeline)).ok()?).ok()
}

fn save_report(cfg: &Config, report: &PipelineReport) -> Result<()> {
    let path = report_path(cfg, &report.pipeline);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside and renamed, so a reader never sees half a report.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(report).expect("report serializes"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Buckets of the key hash space a sample is drawn from.
const BUCKETS: u64 = 10_000;

/// Which keys a pass looks at: a window of the key-hash buckets. `--sample P` is the first
/// `P`% of the buckets (stable from run to run); continuous rounds move the window along, so
/// consecutive rounds see different keys and cover every key in turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    start: u64,
    width: u64,
}

impl Sample {
    pub(crate) fn all() -> Sample {
        Sample { start: 0, width: BUCKETS }
    }

    fn none() -> Sample {
        Sample { start: 0, width: 0 }
    }

    fn width_of(pct: f64) -> u64 {
        ((pct * BUCKETS as f64 / 100.0).ceil() as u64).clamp(1, BUCKETS)
    }

    pub(crate) fn percent(pct: Option<f64>) -> Sample {
        match pct {
            None => Sample::all(),
            Some(p) => Sample { start: 0, width: Sample::width_of(p) },
        }
    }

    /// The `round`-th window of `pct`% of the buckets.
    pub(crate) fn window(round: u64, pct: f64) -> Sample {
        let width = Sample::width_of(pct);
        Sample { start: round.wrapping_mul(width) % BUCKETS, width }
    }

    pub(crate) fn is_all(&self) -> bool {
        self.width >= BUCKETS
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        if self.is_all() {
            return true;
        }
        if self.width == 0 {
            return false;
        }
        let b = content_hash(key) % BUCKETS;
        (b + BUCKETS - self.start) % BUCKETS < self.width
    }
}

/// Which search documents to load.
#[derive(Clone)]
enum KeyFilter {
    Sample(Sample),
    Keys(Arc<HashSet<String>>),
}

impl KeyFilter {
    fn contains(&self, key: &str) -> bool {
        match self {
            KeyFilter::Sample(s) => s.contains(key),
            KeyFilter::Keys(k) => k.contains(key),
        }
    }
}

/// What a target holds for one source key.
#[derive(Debug, PartialEq)]
enum Held {
    Same,
    /// The record's document or views are not there at all.
    Absent,
    /// Something is there, but not what the record gives (or the record is gone).
    Different,
}

/// How the audit reaches the daemon.
pub(crate) enum Link<'a> {
    /// From the command line: the daemon, when one runs, over its HTTP API; indexes from disk.
    Cli(&'a Config),
    /// Inside `deriver run`: its shared state (live index readers, applied positions, admin
    /// requests, change notices).
    Daemon(&'a Config, &'a Arc<Shared>),
}

enum Applied {
    Yes,
    /// No daemon runs: nothing will change the targets, one re-check settles it.
    NoDaemon,
    TimedOut,
}

impl Link<'_> {
    fn cfg(&self) -> &Config {
        match self {
            Link::Cli(c) | Link::Daemon(c, _) => c,
        }
    }

    /// Waits until the daemon has applied `lsn` for the pipeline.
    async fn wait_applied(&self, pipeline: &str, lsn: Lsn) -> Applied {
        match self {
            Link::Cli(cfg) => {
                let body = serde_json::json!({ "lsn": lsn, "pipelines": [pipeline], "timeout_ms": WAIT.as_millis() as u64 }).to_string();
                match crate::http::client::daemon_request(&cfg.http.listen, "POST", "/v1/wait", cfg.http.token.as_deref(), Some(&body)).await {
                    Some((200, _)) => Applied::Yes,
                    Some(_) => Applied::TimedOut,
                    None => Applied::NoDaemon,
                }
            }
            Link::Daemon(_, shared) => {
                let reached = |s: &Shared| s.pipeline_applied(pipeline).is_some_and(|a| a >= lsn);
                if crate::http::freshness::wait_until(shared, WAIT, reached).await {
                    Applied::Yes
                } else {
                    Applied::TimedOut
                }
            }
        }
    }

    /// The live documents of a search target, restricted to `filter` (key → content hash).
    async fn open_search(&self, p: &Pipeline, t: &crate::pipeline::SearchTarget, filter: KeyFilter, cap: usize) -> Result<Search> {
        let (index, searcher) = match self {
            Link::Cli(cfg) => {
                let dir = cfg.index.dir.join(&t.index);
                let gen = crate::sink::tantivy::current_generation(&cfg.index.dir, &t.index)
                    .ok_or_else(|| Error::config(format!("search index `{}` has not been built yet", t.index)))?;
                let index = tantivy::Index::open_in_dir(dir.join(format!("gen-{gen:06}")))?;
                let reader: tantivy::IndexReader = index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into()?;
                let searcher = reader.searcher();
                (index, searcher)
            }
            Link::Daemon(_, shared) => {
                let live = shared.indexes.read().expect("indexes lock").get(&t.index).cloned();
                let live = live.ok_or_else(|| Error::transient(format!("search index `{}` is not open", t.index)))?;
                (live.index.clone(), live.reader.searcher())
            }
        };
        if index.schema() != build_schema(t) {
            return Err(Error::config(format!("search index `{}` was built from another definition: reindex it first", t.index)));
        }
        let id_pos = p.text_fields().iter().position(|f| f == &t.id).expect("id is a text field");
        let scan_searcher = searcher.clone();
        let docs = tokio::task::spawn_blocking(move || scan_hashes(&scan_searcher, &filter, cap))
            .await
            .map_err(|e| Error::fatal("reading the search index failed").with_detail(e))??;
        Ok(Search { label: format!("search:{}", t.index), docs, searcher, target: t.clone(), id_pos })
    }

    /// Re-derives `keys` through the normal write path (same atomic checkpointed writes).
    async fn repair(&self, p: &Pipeline, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        match self {
            Link::Cli(cfg) => repair_keys(cfg, p, keys).await,
            Link::Daemon(_, shared) => {
                let tx = shared.admin.lock().expect("admin lock").clone().ok_or_else(|| Error::transient("the daemon is not ready for repairs"))?;
                let (reply, rx) = tokio::sync::oneshot::channel();
                tx.send(crate::runtime::status::AdminRequest::Repair { pipeline: p.name.clone(), keys: keys.to_vec(), reply })
                    .await
                    .map_err(|_| Error::transient("the daemon is stopping"))?;
                match rx.await {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(e)) => Err(Error::fatal("the daemon refused the repair").with_detail(e)),
                    Err(_) => Err(Error::transient("the daemon stopped before the repair")),
                }
            }
        }
    }

    /// Change notices of the daemon from now on (inside the daemon only).
    fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<crate::runtime::status::ChangeNotice>>> {
        match self {
            Link::Cli(_) => None,
            Link::Daemon(_, shared) => Some(shared.changes.subscribe()),
        }
    }
}

/// A fast, non-keyed hasher for the audit's big in-memory maps (the keys come from deriver's own
/// targets; collisions only cost probing).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Key → content hash of the documents of `searcher` whose key passes `filter` (fast fields
/// only: each segment's key dictionary is read once, in order).
fn scan_hashes(searcher: &tantivy::Searcher, filter: &KeyFilter, cap: usize) -> Result<FastMap<String, Doc>> {
    let mut docs = FastMap::default();
    if matches!(filter, KeyFilter::Sample(s) if s.is_all()) {
        docs.reserve(searcher.num_docs().min(cap as u64) as usize);
    }
    for seg in searcher.segment_readers() {
        let ff = seg.fast_fields();
        let keys = ff.str(KEY_FIELD)?.ok_or_else(|| Error::fatal("the index has no _key column"))?;
        let hashes = ff.u64(HASH_FIELD)?;
        let dict = keys.dictionary();
        let mut terms: Vec<Option<String>> = Vec::with_capacity(dict.num_terms());
        let mut stream = dict.stream()?;
        while stream.advance() {
            let k = std::str::from_utf8(stream.key()).ok().filter(|k| filter.contains(k)).map(str::to_string);
            terms.push(k);
        }
        for doc in seg.doc_ids_alive() {
            let Some(ord) = keys.term_ords(doc).next() else { continue };
            if let Some(Some(k)) = terms.get(ord as usize) {
                if docs.len() >= cap {
                    return Ok(docs);
                }
                docs.insert(k.clone(), Doc { hash: hashes.first(doc).unwrap_or(0), compared: false });
            }
        }
    }
    Ok(docs)
}

/// A search document as the audit knows it: its content hash, and whether a record was
/// compared with it (documents no record was compared with are extras).
struct Doc {
    hash: u64,
    compared: bool,
}

struct Search {
    label: String,
    docs: FastMap<String, Doc>,
    searcher: tantivy::Searcher,
    target: crate::pipeline::SearchTarget,
    id_pos: usize,
}

impl Search {
    fn held(&mut self, key: &str, record: Option<&Record>) -> Held {
        match (self.docs.get_mut(key), record) {
            (None, None) => Held::Same,
            (None, Some(_)) => Held::Absent,
            (Some(d), None) => {
                d.compared = true;
                Held::Different
            }
            (Some(d), Some(r)) => {
                d.compared = true;
                if d.hash == content_hash(&r.json) {
                    Held::Same
                } else {
                    Held::Different
                }
            }
        }
    }

    /// The stored document of a key, for diffs.
    fn stored(&self, key: &str) -> Option<serde_json::Map<String, Value>> {
        let schema = self.searcher.schema();
        let field = schema.get_field(KEY_FIELD).ok()?;
        let src = schema.get_field(SOURCE_FIELD).ok()?;
        let q = tantivy::query::TermQuery::new(tantivy::Term::from_field_text(field, key), tantivy::schema::IndexRecordOption::Basic);
        let top = self.searcher.search(&q, &tantivy::collector::TopDocs::with_limit(1).order_by_score()).ok()?;
        let (_, addr) = top.first()?;
        let doc: tantivy::TantivyDocument = self.searcher.doc(*addr).ok()?;
        serde_json::from_str(doc.get_first(src)?.as_str()?).ok()
    }

    fn expected_stored(&self, r: &Record) -> Option<serde_json::Map<String, Value>> {
        let id = r.texts.get(self.id_pos).cloned().flatten()?;
        let schema = build_schema(&self.target);
        let doc = DocBuilder::new(&schema, &self.target).build(&id, &r.value).ok()?;
        let src = schema.get_field(SOURCE_FIELD).ok()?;
        serde_json::from_str(doc.get_first(src)?.as_str()?).ok()
    }
}

type Renderer = Box<dyn Fn(&Record) -> std::result::Result<Vec<ViewWrite>, String> + Send + Sync>;

struct RedisSide {
    space: KeySpace,
    render: Renderer,
    /// Hashes of every view key the compared records produce (a full audit: what the key space
    /// may hold besides them are stray keys).
    expected: Option<HashSet<u64>>,
    hasher: std::collections::hash_map::RandomState,
    /// Ledger entries found for derived records so far.
    ledger_present: u64,
}

/// The pipeline's Redis key space: its view keys and its ledger.
struct KeySpace {
    conn: rsink::RedisConn,
    /// What the pipeline's view keys start with (`Keys::views`).
    prefix: String,
    ledger_key: String,
    /// On a Redis Cluster, the hash slot of every key of the pipeline: its views are scanned on
    /// that slot's master only.
    slot: Option<u16>,
}

/// One view's (expected, actual) when they differ.
type ViewDiff = (String, Value, Value);

/// Redis reads sent for a chunk of records and not yet compared: the views the records should
/// produce, and the task that reads what Redis holds for them.
struct PendingReads {
    views: Vec<Option<Vec<ViewWrite>>>,
    replies: Option<tokio::task::JoinHandle<Result<Vec<redis::Value>>>>,
}

/// The view keys a ledger entry lists.
fn ledger_view_keys(text: &str) -> Vec<String> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else { return Vec::new() };
    items
        .into_iter()
        .filter_map(|it| match it {
            Value::String(k) => Some(k),
            Value::Array(parts) => match parts.into_iter().next() {
                Some(Value::String(k)) => Some(k),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl RedisSide {
    async fn open(cfg: &Config, p: &Pipeline) -> Result<RedisSide> {
        let keys = rsink::Keys::of(&cfg.redis, &p.name);
        let mut conn = rsink::connect(&cfg.redis).await?;
        let slot = conn.slot_of(&keys.ledger).await?;
        Ok(RedisSide {
            render: Box::new(rsink::view_renderer(&keys.views, p)),
            space: KeySpace { conn, prefix: keys.views, ledger_key: keys.ledger, slot },
            expected: None,
            hasher: Default::default(),
            ledger_present: 0,
        })
    }

    /// The key space on the same (multiplexed) connection, to scan it while comparing.
    fn space(&self) -> KeySpace {
        KeySpace { conn: self.space.conn.clone(), prefix: self.space.prefix.clone(), ledger_key: self.space.ledger_key.clone(), slot: self.space.slot }
    }

    /// Sends the reads that tell what Redis holds for each (key, record) — the ledger entries
    /// with one `HMGET`, every view the records produce with one command each, in one pipelined
    /// round trip — on a task of its own, and returns at once: the caller compares the search
    /// targets (and sends the next chunk's reads) while Redis answers; [`evaluate`](Self::evaluate)
    /// compares the replies.
    ///
    /// Without `detail`, a hash view is read as `HLEN` + `HMGET` of its fields (fewer values
    /// than `HGETALL`, and enough to tell equal from not); with it, whole (for diffs).
    fn request(&self, items: &[(String, Option<Record>)], detail: bool) -> PendingReads {
        // None: the record is gone, or the sink would refuse it (a dead letter, not comparable).
        let views: Vec<Option<Vec<ViewWrite>>> = items.iter().map(|(_, r)| r.as_ref().and_then(|r| (self.render)(r).ok())).collect();
        if items.is_empty() {
            return PendingReads { views, replies: None };
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&self.space.ledger_key);
        for (k, _) in items {
            hmget.arg(k);
        }
        pipe.add_command(hmget);
        for v in views.iter().flatten().flatten() {
            compare::push_reads(&mut pipe, v, detail);
        }
        let mut conn = self.space.conn.clone();
        let replies = tokio::spawn(async move { pipe.query_async::<Vec<redis::Value>>(&mut conn).await.map_err(Error::from) });
        PendingReads { views, replies: Some(replies) }
    }

    /// Waits for the replies of `pending` (sent for `items`) and compares them with the views.
    async fn evaluate(&mut self, items: &[(String, Option<Record>)], pending: PendingReads, detail: bool) -> Result<Vec<(Held, Vec<ViewDiff>)>> {
        let PendingReads { views, replies } = pending;
        let Some(replies) = replies else { return Ok(Vec::new()) };
        let replies = replies.await.map_err(|e| Error::fatal("the audit's Redis reads failed").with_detail(e))??;
        let mut replies = replies.into_iter();
        let ledger = replies.next().ok_or_else(|| Error::transient("Redis returned no reply"))?;
        if let Some(e) = redis_error(&ledger) {
            return Err(Error::fatal(format!("cannot read the ledger {}", self.space.ledger_key)).with_detail(e));
        }
        let ledger: Vec<Option<String>> = parse(ledger)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, (_, record)) in items.iter().enumerate() {
            let entry = ledger.get(i).cloned().flatten();
            if entry.is_some() && record.is_some() {
                self.ledger_present += 1;
            }
            let Some(views) = &views[i] else {
                let held = if record.is_none() && entry.is_some() { Held::Different } else { Held::Same };
                out.push((held, Vec::new()));
                continue;
            };
            let mut diffs = Vec::new();
            let mut all_absent = true;
            for v in views {
                let compared = compare::next_mismatch(v, &mut replies, detail)?;
                match compared {
                    Some((want, actual, absent)) => {
                        all_absent &= absent;
                        diffs.push((v.key.clone(), want, actual));
                    }
                    None => all_absent = false,
                }
            }
            // Nothing of the record at all: missing.
            let missing = entry.is_none() && all_absent && !views.is_empty();
            // The ledger must list exactly these views, or deriver would leave or remove the
            // wrong keys when the record changes.
            if !entry.as_deref().is_some_and(|e| ledger_text_matches(e, views)) {
                let want_ids: BTreeSet<String> = views.iter().map(entry_id).collect();
                let have_ids = entry.as_deref().map(|e| ledger_ids(e).unwrap_or_default()).unwrap_or_default();
                if want_ids != have_ids && !missing {
                    diffs.push(("(ledger)".into(), serde_json::json!(want_ids), serde_json::json!(have_ids)));
                }
            }
            if let Some(expected) = self.expected.as_mut() {
                for v in views {
                    expected.insert(self.hasher.hash_one(&v.key));
                }
            }
            let held = if missing {
                Held::Absent
            } else if diffs.is_empty() {
                Held::Same
            } else {
                Held::Different
            };
            out.push((held, diffs));
        }
        Ok(out)
    }
}

impl KeySpace {
    /// View keys under the pipeline's templates (in `sample`): candidates for stray keys.
    async fn scan_candidates(&mut self, p: &Pipeline, sample: Sample, cap: usize) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for t in &p.redis {
            let glob: String = t
                .key
                .parts
                .iter()
                .map(|part| match part {
                    crate::pipeline::TemplatePart::Literal(l) => l.replace(['*', '?', '[', ']', '\\'], "?"),
                    crate::pipeline::TemplatePart::Field(_) => "*".into(),
                })
                .collect();
            let pattern = format!("{}:{glob}", self.prefix.replace(['*', '?', '[', ']', '\\'], "?"));
            let mut cursor: u64 = 0;
            loop {
                let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT).clone();
                let (next, keys): (u64, Vec<String>) = self.conn.query_at_slot(self.slot, &scan).await?;
                for k in keys {
                    let Some(bare) = k.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix(':')) else { continue };
                    if !bare.starts_with('_') && matches_template(&t.key, bare) && sample.contains(&k) && out.len() < cap {
                        out.insert(k);
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(out)
    }

    /// One pass over the ledger: its source keys in `sample`, and `candidates` minus every view
    /// key some entry owns.
    async fn ledger_pass(&mut self, sample: Sample, candidates: &mut HashSet<String>, cap: usize) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, items): (u64, Vec<(String, String)>) =
                redis::cmd("HSCAN").arg(&self.ledger_key).arg(cursor).arg("COUNT").arg(SCAN_COUNT).query_async(&mut self.conn).await?;
            for (src, entry) in items {
                if !candidates.is_empty() {
                    for k in ledger_view_keys(&entry) {
                        candidates.remove(&k);
                    }
                }
                if sample.contains(&src) && keys.len() < cap {
                    keys.push(src);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(keys)
    }

    /// Stray candidates that still exist and that no ledger entry owns.
    async fn recheck_strays(&mut self, strays: &[String]) -> Result<Vec<String>> {
        if strays.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in strays {
            pipe.cmd("EXISTS").arg(k);
        }
        let exists: Vec<bool> = pipe.query_async(&mut self.conn).await?;
        let mut left: HashSet<String> = strays.iter().zip(exists).filter(|(_, e)| *e).map(|(k, _)| k.clone()).collect();
        if !left.is_empty() {
            self.ledger_pass(Sample::none(), &mut left, 0).await?;
        }
        let mut left: Vec<String> = left.into_iter().collect();
        left.sort();
        Ok(left)
    }
}

/// Whether a key (without prefix) can be a rendering of the template.
fn matches_template(t: &crate::pipeline::KeyTemplate, key: &str) -> bool {
    fn go(parts: &[crate::pipeline::TemplatePart], s: &str) -> bool {
        match parts.split_first() {
            None => s.is_empty(),
            Some((crate::pipeline::TemplatePart::Literal(l), rest)) => s.strip_prefix(l.as_str()).is_some_and(|r| go(rest, r)),
            Some((crate::pipeline::TemplatePart::Field(_), rest)) => (1..=s.len()).filter(|i| s.is_char_boundary(*i)).any(|i| go(rest, &s[i..])),
        }
    }
    go(&t.parts, key)
}

/// What a comparison found, per target.
#[derive(Default)]
struct Findings {
    targets: BTreeMap<String, TargetReport>,
    diffs: Vec<FieldDiff>,
}

impl Findings {
    fn target(&mut self, label: &str) -> &mut TargetReport {
        self.targets.entry(label.to_string()).or_insert_with(|| TargetReport { target: label.to_string(), ..Default::default() })
    }

    fn note(&mut self, label: &str, key: &str, held: Held, has_record: bool) {
        let rep = self.target(label);
        match (held, has_record) {
            (Held::Same, _) => {}
            (Held::Absent, _) => rep.missing.push(key.to_string()),
            (Held::Different, false) => rep.extra.push(key.to_string()),
            (Held::Different, true) => rep.different.push(key.to_string()),
        }
    }

    fn suspects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.targets.values().flat_map(|r| r.missing.iter().chain(&r.extra).chain(&r.different).cloned()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keeps only `keys` in the lists.
    fn retain(&mut self, keys: &HashSet<String>) {
        for t in self.targets.values_mut() {
            for list in [&mut t.missing, &mut t.extra, &mut t.different] {
                list.retain(|k| keys.contains(k));
            }
        }
        self.diffs.retain(|d| keys.contains(&d.key));
    }

    fn merge(&mut self, other: Findings) {
        for (label, t) in other.targets {
            let mine = self.target(&label);
            mine.missing.extend(t.missing);
            mine.extra.extend(t.extra);
            mine.different.extend(t.different);
        }
        let room = DIFFS_KEPT.saturating_sub(self.diffs.len());
        self.diffs.extend(other.diffs.into_iter().take(room));
    }
}

/// The comparison of one pipeline's targets with freshly derived records.
struct Checker<'a> {
    p: &'a Pipeline,
    stmt: Statement,
    n_key: usize,
    search: Vec<Search>,
    redis: Option<RedisSide>,
}

/// What re-checking left.
struct Settled {
    findings: Findings,
    keys: Vec<String>,
    strays: Vec<String>,
    unverified: usize,
}

impl<'a> Checker<'a> {
    async fn open(link: &Link<'_>, client: &Client, p: &'a Pipeline, sql: &DerivationSql, n_key: usize, filter: KeyFilter, cap: usize) -> Result<Checker<'a>> {
        let mut search = Vec::new();
        for t in &p.search {
            search.push(link.open_search(p, t, filter.clone(), cap).await?);
        }
        let redis = if p.redis.is_empty() { None } else { Some(RedisSide::open(link.cfg(), p).await?) };
        let stmt = client.prepare(&sql.keyed).await?;
        Ok(Checker { p, stmt, n_key, search, redis })
    }

    /// Compares every target with `items` (key, record or `None` when the source has none).
    async fn compare(&mut self, items: &[(String, Option<Record>)], out: &mut Findings, want_diffs: bool) -> Result<()> {
        let pending = self.redis.as_ref().map(|r| r.request(items, want_diffs));
        self.compare_search(items, out, want_diffs);
        self.compare_redis(items, pending, out, want_diffs).await
    }

    /// Compares the search targets with `items`.
    fn compare_search(&mut self, items: &[(String, Option<Record>)], out: &mut Findings, want_diffs: bool) {
        for s in &mut self.search {
            for (key, rec) in items {
                let held = s.held(key, rec.as_ref());
                if held == Held::Different && want_diffs && out.diffs.len() < DIFFS_KEPT {
                    if let Some(r) = rec {
                        if let (Some(want), Some(got)) = (s.expected_stored(r), s.stored(key)) {
                            for (f, v) in &want {
                                let actual = got.get(f).cloned().unwrap_or(Value::Null);
                                if &actual != v {
                                    out.diffs.push(FieldDiff { key: key.clone(), target: s.label.clone(), field: f.clone(), expected: v.clone(), actual });
                                }
                            }
                        }
                    }
                }
                out.note(&s.label, key, held, rec.is_some());
            }
        }
    }

    /// Compares Redis with `items`, from the reads `pending` sent for them.
    async fn compare_redis(&mut self, items: &[(String, Option<Record>)], pending: Option<PendingReads>, out: &mut Findings, want_diffs: bool) -> Result<()> {
        let (Some(r), Some(pending)) = (self.redis.as_mut(), pending) else { return Ok(()) };
        let held = r.evaluate(items, pending, want_diffs).await?;
        for ((key, rec), (held, view_diffs)) in items.iter().zip(held) {
            if held == Held::Different && want_diffs {
                for (view, expected, actual) in view_diffs {
                    if out.diffs.len() < DIFFS_KEPT {
                        out.diffs.push(FieldDiff { key: key.clone(), target: format!("redis:{view}"), field: "(view)".into(), expected, actual });
                    }
                }
            }
            out.note("redis", key, held, rec.is_some());
        }
        Ok(())
    }

    /// Derives `keys` afresh: (key, record) for each; keys whose derivation fails in SQL are
    /// dead letters, not comparable, and left out.
    async fn derive(&self, client: &Client, keys: &[String]) -> Result<Vec<(String, Option<Record>)>> {
        let tuples: Vec<KeyTuple> = keys.iter().map(|k| split_key(k, self.n_key)).collect();
        let mut by_key: HashMap<String, Option<Record>> = HashMap::with_capacity(keys.len());
        for part in tuples.chunks(1000) {
            let (writes, _rejected) = derive_keys(client, &self.stmt, self.n_key, part).await?;
            for w in writes {
                match w {
                    Write::Upsert(r) => {
                        by_key.insert(r.key.clone(), Some(r));
                    }
                    Write::Delete { key } => {
                        by_key.insert(key, None);
                    }
                }
            }
        }
        // Keys as the caller named them; Postgres may print a key differently (its canonical
        // text), and then the canonical text is what the targets hold.
        let mut out: Vec<(String, Option<Record>)> = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(r) = by_key.remove(k) {
                out.push((k.clone(), r));
            }
        }
        out.extend(by_key);
        Ok(out)
    }

    async fn check(&mut self, client: &Client, keys: &[String], out: &mut Findings, want_diffs: bool) -> Result<()> {
        let items = self.derive(client, keys).await?;
        self.compare(&items, out, want_diffs).await
    }

    /// Re-checks suspects once the daemon has applied what was committed meanwhile.
    ///
    /// From the CLI, up to `rounds` times while they stay wrong (a key written again during a
    /// re-check is wrong once more, then right). Inside the daemon, each re-check also waits for
    /// what was committed while it ran and watches the daemon's change notices: a suspect the
    /// daemon did not rewrite meanwhile is drift for certain; one it rewrote is in flight and
    /// re-checked again, and left unverified (not drift) if that keeps happening.
    async fn settle(&mut self, link: &Link<'_>, client: &Client, keys: Vec<String>, strays: Vec<String>, rounds: usize) -> Result<Settled> {
        let inside = matches!(link, Link::Daemon(..));
        let mut done = Findings::default();
        let mut drift: Vec<String> = Vec::new();
        let mut pending = keys;
        let mut strays_left = strays;
        let mut strays_checked = strays_left.is_empty();
        let mut last_timed_out = false;
        for _ in 0..rounds {
            if pending.is_empty() && strays_checked {
                break;
            }
            let lsn = pg::current_wal_lsn(client).await?;
            let applied = link.wait_applied(&self.p.name, lsn).await;
            last_timed_out = matches!(applied, Applied::TimedOut);
            if last_timed_out && inside {
                // The daemon lags: a later round sees these keys again.
                break;
            }
            let mut watch = link.watch();
            let mut round = Findings::default();
            if !pending.is_empty() {
                // Read the targets afresh: what they hold now, after the daemon applied `lsn`.
                let wanted: Arc<HashSet<String>> = Arc::new(pending.iter().cloned().collect());
                let mut search = Vec::new();
                for t in &self.p.search {
                    search.push(link.open_search(self.p, t, KeyFilter::Keys(wanted.clone()), usize::MAX).await?);
                }
                self.search = search;
                self.check(client, &pending, &mut round, true).await?;
            }
            if !strays_checked {
                if let Some(r) = self.redis.as_mut() {
                    strays_left = r.space.recheck_strays(&strays_left).await?;
                }
                strays_checked = !last_timed_out;
            }
            let suspects = round.suspects();
            if inside {
                // Everything committed while this re-check ran is applied (and announced) too.
                let lsn = pg::current_wal_lsn(client).await?;
                if !matches!(link.wait_applied(&self.p.name, lsn).await, Applied::Yes) {
                    pending = suspects;
                    break;
                }
                let touched = watch.as_mut().map(|w| touched_keys(w, &self.p.name)).unwrap_or_default();
                let (moving, fixed): (Vec<String>, Vec<String>) = suspects.into_iter().partition(|k| match &touched {
                    Touched::All => true,
                    Touched::Keys(t) => t.contains(k),
                });
                round.retain(&fixed.iter().cloned().collect());
                done.merge(round);
                drift.extend(fixed);
                pending = moving;
            } else {
                done = round;
                pending = suspects;
                if matches!(applied, Applied::NoDaemon) || pending.is_empty() {
                    break;
                }
            }
        }
        let unverified = if inside {
            std::mem::take(&mut pending).len()
        } else {
            drift = std::mem::take(&mut pending);
            if last_timed_out {
                drift.len()
            } else {
                0
            }
        };
        drift.sort();
        drift.dedup();
        Ok(Settled { findings: done, keys: drift, strays: strays_left, unverified })
    }
}

enum Touched {
    All,
    Keys(HashSet<String>),
}

impl Default for Touched {
    fn default() -> Self {
        Touched::Keys(HashSet::new())
    }
}

/// The keys of `pipeline` the daemon wrote since `rx` subscribed.
fn touched_keys(rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::runtime::status::ChangeNotice>>, pipeline: &str) -> Touched {
    let mut keys = HashSet::new();
    loop {
        match rx.try_recv() {
            Ok(n) if n.pipeline == pipeline => {
                if n.keys.iter().any(|k| k == "*") {
                    return Touched::All;
                }
                keys.extend(n.keys.iter().cloned());
                keys.extend(n.deleted.iter().cloned());
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => return Touched::All,
            Err(_) => return Touched::Keys(keys),
        }
    }
}

fn split_key(k: &str, n: usize) -> KeyTuple {
    crate::runtime::derive::split_key_text(k, n).unwrap_or_else(|| vec![k.to_string(); n])
}

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

/// Re-derives `keys` through the normal write path: the daemon when one runs, else here.
async fn repair_keys(cfg: &Config, p: &Pipeline, keys: &[String]) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let body = serde_json::json!({ "pipeline": p.name, "keys": keys }).to_string();
    match crate::http::client::daemon_request(&cfg.http.listen, "POST", "/v1/admin/repair", cfg.http.token.as_deref(), Some(&body)).await {
        Some((200, _)) => Ok(keys.len()),
        Some((_, body)) => Err(Error::fatal("the daemon refused the repair").with_detail(body)),
        None => {
            let _owner = crate::runtime::lease::hold_for_command(cfg, "audit --repair").await?;
            let mut d = crate::runtime::Daemon::prepare(cfg.clone(), Default::default(), tokio_util::sync::CancellationToken::new(), false).await?;
            d.repair(&p.name, keys, None).await.map_err(Error::fatal)?;
            Ok(keys.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_rendered_keys() {
        let t = crate::pipeline::KeyTemplate::parse("film:{id}:summary").unwrap();
        assert!(matches_template(&t, "film:1:summary"));
        assert!(matches_template(&t, "film:a:b:summary"));
        assert!(!matches_template(&t, "film:1"));
        assert!(!matches_template(&t, "film::summary"));
        let j = crate::pipeline::KeyTemplate::parse("film:{id}").unwrap();
        assert!(matches_template(&j, "film:1:summary"), "a json key pattern also matches longer keys; ownership decides");
    }

    #[test]
    fn sampling_is_stable() {
        let keys: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let ten = Sample::percent(Some(10.0));
        let n = keys.iter().filter(|k| ten.contains(k)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(keys.iter().all(|k| Sample::percent(None).contains(k)));
        assert_eq!(keys.iter().filter(|k| ten.contains(k)).count(), n);
        // The same keys as the percentage of buckets (the sample of earlier versions).
        assert!(keys.iter().all(|k| ten.contains(k) == ((content_hash(k) % 10_000) as f64 / 100.0 < 10.0)));
    }

    #[test]
    fn windows_walk_through_every_key() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
        let mut seen = vec![0u32; keys.len()];
        for round in 0..4 {
            let w = Sample::window(round, 25.0);
            for (i, k) in keys.iter().enumerate() {
                if w.contains(k) {
                    seen[i] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "four windows of 25% see every key exactly once");
        let tiny = Sample::window(7, 0.001);
        assert_eq!(tiny.width, 1);
        assert_eq!(Sample::window(3, 100.0), Sample::all());
    }

    #[test]
    fn ledger_entries_name_views_and_members() {
        let ids = ledger_ids(r#"["p:film:1", ["p:cat:2", "7", "s"]]"#).unwrap();
        assert!(ids.contains("p:film:1") && ids.contains("p:cat:2\u{0}7"));
        assert_eq!(ledger_view_keys(r#"["p:film:1", ["p:cat:2", "7", "z"]]"#), vec!["p:film:1".to_string(), "p:cat:2".into()]);
    }
}
