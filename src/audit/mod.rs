//! `deriver audit`: proves that every target holds exactly what a fresh derivation of the source
//! gives, and repairs drift by key through the normal write path.
//!
//! The source is derived with the pipeline's bulk SQL in key order (one `REPEATABLE READ`
//! snapshot), `derive_chunk` records at a time. Each chunk is compared at once: search documents
//! by the content hash stored with every document (a fast field, so no document is read unless it
//! differs), Redis views by reading exactly the views the record should produce. Keys the targets
//! hold but the source does not produce (extras: documents, ledger entries, keys in the
//! pipeline's key space that deriver never wrote) come from one pass over each target.
//!
//! In-flight changes are not drift: suspects are re-checked after the running daemon has applied
//! the position the audit reached (`POST /v1/wait`), up to three rounds, and only keys that stay
//! wrong are reported. With `--repair` those keys are re-derived by the daemon (or by the CLI when
//! none runs) with the same atomic checkpointed writes as streaming, then verified again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use futures::{pin_mut, TryStreamExt};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::schema::Value as _;
use tokio_postgres::{Client, Statement};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::runtime::derive::{derive_keys, row_to_record, KeyTuple};
use crate::sink::redis::{self as rsink, ViewWrite};
use crate::sink::tantivy::schema::{build_schema, DocBuilder, HASH_FIELD, SOURCE_FIELD};
use crate::sink::tantivy::KEY_FIELD;
use crate::sink::{content_hash, Record, Write};
use crate::source::postgres::{self as pg, TableInfo};
use crate::source::Lsn;

/// Field-level differences shown per pipeline.
const DIFFS_SHOWN: usize = 5;
const RECHECK_ROUNDS: usize = 3;

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
    pub start_lsn: Lsn,
    pub records: u64,
    pub sample_pct: Option<f64>,
    pub targets: Vec<TargetReport>,
    pub diffs: Vec<FieldDiff>,
    /// Distinct drifted keys found.
    pub drifted: usize,
    pub repaired: usize,
    /// Drifted keys still wrong at the end (0 = clean).
    pub remaining: usize,
    pub seconds: f64,
    pub finished_at: String,
}

/// Where the last audit of a pipeline is kept (read by `status` and the daemon's metrics).
pub fn report_path(cfg: &Config, pipeline: &str) -> std::path::PathBuf {
    cfg.index.dir.join("_audit").join(format!("{pipeline}.json"))
}

pub fn last_report(cfg: &Config, pipeline: &str) -> Option<PipelineReport> {
    serde_json::from_str(&std::fs::read_to_string(report_path(cfg, pipeline)).ok()?).ok()
}

fn sampled(key: &str, pct: Option<f64>) -> bool {
    match pct {
        None => true,
        Some(p) => (content_hash(key) % 10_000) as f64 / 100.0 < p,
    }
}

/// What a target holds for one source key.
#[derive(Debug, PartialEq)]
enum Held {
    Absent,
    Same,
    Different,
}

struct Search {
    label: String,
    docs: HashMap<String, u64>,
    index: tantivy::Index,
    target: crate::pipeline::SearchTarget,
    id_pos: usize,
}

impl Search {
    /// Key → content hash of every document of the live generation (fast fields only).
    fn open(cfg: &Config, p: &Pipeline, t: &crate::pipeline::SearchTarget) -> Result<Search> {
        let dir = cfg.index.dir.join(&t.index);
        let gen = crate::sink::tantivy::current_generation(&cfg.index.dir, &t.index)
            .ok_or_else(|| Error::config(format!("search index `{}` has not been built yet", t.index)))?;
        let index = tantivy::Index::open_in_dir(dir.join(format!("gen-{gen:06}")))?;
        if index.schema() != build_schema(t) {
            return Err(Error::config(format!("search index `{}` was built from another definition: reindex it first", t.index)));
        }
        let reader = index.reader()?;
        let searcher = reader.searcher();
        let mut docs = HashMap::new();
        for seg in searcher.segment_readers() {
            let ff = seg.fast_fields();
            let keys = ff.str(KEY_FIELD)?.ok_or_else(|| Error::fatal("the index has no _key column"))?;
            let hashes = ff.u64(HASH_FIELD)?;
            let mut buf = String::new();
            for doc in seg.doc_ids_alive() {
                buf.clear();
                if let Some(ord) = keys.term_ords(doc).next() {
                    keys.ord_to_str(ord, &mut buf).map_err(|e| Error::fatal("cannot read the index").with_detail(e))?;
                    docs.insert(buf.clone(), hashes.first(doc).unwrap_or(0));
                }
            }
        }
        let id_pos = p.text_fields().iter().position(|f| f == &t.id).expect("id is a text field");
        Ok(Search { label: format!("search:{}", t.index), docs, index, target: t.clone(), id_pos })
    }

    fn held(&self, key: &str, record: Option<&Record>) -> Held {
        match (self.docs.get(key), record) {
            (None, None) => Held::Same,
            (None, Some(_)) => Held::Absent,
            (Some(_), None) => Held::Different,
            (Some(h), Some(r)) => {
                if *h == content_hash(&r.json) {
                    Held::Same
                } else {
                    Held::Different
                }
            }
        }
    }

    /// The stored document of a key, for diffs.
    fn stored(&self, key: &str) -> Option<serde_json::Map<String, Value>> {
        let reader = self.index.reader().ok()?;
        let searcher = reader.searcher();
        let field = self.index.schema().get_field(KEY_FIELD).ok()?;
        let src = self.index.schema().get_field(SOURCE_FIELD).ok()?;
        let q = tantivy::query::TermQuery::new(tantivy::Term::from_field_text(field, key), tantivy::schema::IndexRecordOption::Basic);
        let top = searcher.search(&q, &tantivy::collector::TopDocs::with_limit(1).order_by_score()).ok()?;
        let (_, addr) = top.first()?;
        let doc: tantivy::TantivyDocument = searcher.doc(*addr).ok()?;
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

struct RedisSide {
    conn: MultiplexedConnection,
    prefix: String,
    ledger_key: String,
}

impl RedisSide {
    /// Whether Redis holds exactly the views `record` produces (or none of them when `None`).
    async fn held(&mut self, p: &Pipeline, key: &str, record: Option<&Record>) -> Result<(Held, Vec<(String, Value, Value)>)> {
        let ledger: Option<String> = redis::cmd("HGET").arg(&self.ledger_key).arg(key).query_async(&mut self.conn).await?;
        let Some(r) = record else {
            return Ok((if ledger.is_some() { Held::Different } else { Held::Same }, Vec::new()));
        };
        let views = rsink::preview(&self.prefix, p, r).map_err(Error::record)?;
        if ledger.is_none() && !views.is_empty() {
            return Ok((Held::Absent, Vec::new()));
        }
        let mut diffs = Vec::new();
        for v in &views {
            let (expected, actual) = self.compare(v).await?;
            if expected != actual {
                diffs.push((v.key.clone(), expected, actual));
            }
        }
        Ok((if diffs.is_empty() { Held::Same } else { Held::Different }, diffs))
    }

    /// (expected, actual) of one view, as JSON values.
    async fn compare(&mut self, v: &ViewWrite) -> Result<(Value, Value)> {
        let c = &mut self.conn;
        Ok(match v.kind {
            "json" => {
                let got: Option<String> = redis::cmd("GET").arg(&v.key).query_async(c).await?;
                let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.to_string()));
                (parse(&v.values[0]), got.as_deref().map(parse).unwrap_or(Value::Null))
            }
            "hash" => {
                let got: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&v.key).query_async(c).await?;
                let want: BTreeMap<String, String> = v.values.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
                (serde_json::to_value(want).unwrap_or_default(), serde_json::to_value(got).unwrap_or_default())
            }
            "set" => {
                let is: bool = redis::cmd("SISMEMBER").arg(&v.key).arg(&v.values[0]).query_async(c).await?;
                (Value::Bool(true), Value::Bool(is))
            }
            _ => {
                let score: Option<f64> = redis::cmd("ZSCORE").arg(&v.key).arg(&v.values[0]).query_async(c).await?;
                let want: f64 = v.values[1].parse().unwrap_or(f64::NAN);
                let same = score.is_some_and(|s| (s - want).abs() <= 1e-9 * want.abs().max(1.0));
                (serde_json::json!(want), if same { serde_json::json!(want) } else { serde_json::json!(score) })
            }
        })
    }

    /// Source keys in the ledger, and view keys that match one of the pipeline's templates but
    /// that no ledger entry lists (written behind deriver's back).
    async fn extras(&mut self, p: &Pipeline) -> Result<(Vec<String>, Vec<String>)> {
        let ledger: HashMap<String, String> = redis::cmd("HGETALL").arg(&self.ledger_key).query_async(&mut self.conn).await?;
        let mut owned: HashSet<String> = HashSet::new();
        for v in ledger.values() {
            if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(v) {
                for it in items {
                    match it {
                        Value::String(k) => {
                            owned.insert(k);
                        }
                        Value::Array(parts) => {
                            if let Some(Value::String(k)) = parts.first() {
                                owned.insert(k.clone());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut stray = Vec::new();
        for t in &p.redis {
            let glob: String = t
                .key
                .parts
                .iter()
                .map(|part| match part {
                    crate::pipeline::TemplatePart::Literal(l) => l.replace(['*', '?', '[', ']'], "?"),
                    crate::pipeline::TemplatePart::Field(_) => "*".into(),
                })
                .collect();
            let pattern = format!("{}:{glob}", self.prefix);
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) =
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut self.conn).await?;
                for k in keys {
                    if !owned.contains(&k) && !k[self.prefix.len() + 1..].starts_with('_') && matches_template(&t.key, &k[self.prefix.len() + 1..]) {
                        stray.push(k);
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        stray.sort();
        stray.dedup();
        Ok((ledger.into_keys().collect(), stray))
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

struct Audit<'a> {
    p: &'a Pipeline,
    stmt: Statement,
    n_key: usize,
    search: Vec<Search>,
    redis: Option<RedisSide>,
}

impl Audit<'_> {
    /// Compares every target for a set of keys with freshly derived records.
    async fn check(&mut self, client: &Client, keys: &[String]) -> Result<(BTreeMap<String, TargetReport>, Vec<FieldDiff>)> {
        let tuples: Vec<KeyTuple> = keys.iter().map(|k| split_key(k, self.n_key)).collect();
        let mut records: HashMap<String, Record> = HashMap::new();
        for part in tuples.chunks(1000) {
            let (writes, _) = derive_keys(client, &self.stmt, self.n_key, part).await?;
            for w in writes {
                if let Write::Upsert(r) = w {
                    records.insert(r.key.clone(), r);
                }
            }
        }
        let mut out: BTreeMap<String, TargetReport> = BTreeMap::new();
        let mut diffs = Vec::new();
        for key in keys {
            let rec = records.get(key);
            for s in &self.search {
                let held = s.held(key, rec);
                let rep = out.entry(s.label.clone()).or_insert_with(|| TargetReport { target: s.label.clone(), ..Default::default() });
                match (held, rec) {
                    (Held::Same, _) => {}
                    (Held::Absent, _) => rep.missing.push(key.clone()),
                    (Held::Different, None) => rep.extra.push(key.clone()),
                    (Held::Different, Some(r)) => {
                        rep.different.push(key.clone());
                        if let (Some(want), Some(got)) = (s.expected_stored(r), s.stored(key)) {
                            for (f, v) in &want {
                                let actual = got.get(f).cloned().unwrap_or(Value::Null);
                                if &actual != v {
                                    diffs.push(FieldDiff { key: key.clone(), target: s.label.clone(), field: f.clone(), expected: v.clone(), actual });
                                }
                            }
                        }
                    }
                }
            }
            if let Some(r) = self.redis.as_mut() {
                let label = "redis".to_string();
                let (held, view_diffs) = r.held(self.p, key, rec).await?;
                let rep = out.entry(label.clone()).or_insert_with(|| TargetReport { target: label.clone(), ..Default::default() });
                match (held, rec) {
                    (Held::Same, _) => {}
                    (Held::Absent, _) => rep.missing.push(key.clone()),
                    (Held::Different, None) => rep.extra.push(key.clone()),
                    (Held::Different, Some(_)) => {
                        rep.different.push(key.clone());
                        for (view, expected, actual) in view_diffs {
                            diffs.push(FieldDiff { key: key.clone(), target: format!("redis:{view}"), field: "(view)".into(), expected, actual });
                        }
                    }
                }
            }
        }
        Ok((out, diffs))
    }
}

fn split_key(k: &str, n: usize) -> KeyTuple {
    crate::runtime::derive::split_key_text(k, n).unwrap_or_else(|| vec![k.to_string(); n])
}

fn suspects(reports: &BTreeMap<String, TargetReport>) -> Vec<String> {
    let mut keys: Vec<String> = reports.values().flat_map(|r| r.missing.iter().chain(&r.extra).chain(&r.different).cloned()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Waits until the running daemon has applied `lsn` (false when no daemon answers).
async fn daemon_applied(cfg: &Config, pipeline: &str, lsn: Lsn) -> bool {
    let body = serde_json::json!({ "lsn": lsn, "pipelines": [pipeline], "timeout_ms": 20000 }).to_string();
    matches!(crate::cli::status::daemon_request(&cfg.http.listen, "POST", "/v1/wait", cfg.http.token.as_deref(), Some(&body)).await, Some((200, _)))
}

/// Audits one pipeline (and repairs it when asked). Progress goes to `on_progress(rows)`.
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
    let mut search = Vec::new();
    for t in &p.search {
        search.push(Search::open(cfg, p, t)?);
    }
    let redis = if p.redis.is_empty() {
        None
    } else {
        let keys = rsink::Keys::new(&cfg.redis.prefix, &p.name);
        Some(RedisSide { conn: rsink::connect(cfg.redis_url()?).await?, prefix: cfg.redis.prefix.clone(), ledger_key: keys.ledger })
    };
    let stmt = client.prepare(&sql.keyed).await?;
    let mut audit = Audit { p, stmt, n_key: info.key.len(), search, redis };

    // Pass 1: the whole source in key order, chunk by chunk against the targets.
    let reader = pg::connect(cfg.postgres_url()?).await?;
    reader.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let start_lsn = pg::current_wal_lsn(&reader).await?;
    let stream = reader.query_raw(sql.bulk.as_str(), std::iter::empty::<&str>()).await.map_err(Error::from)?;
    pin_mut!(stream);
    let mut seen: HashSet<String> = HashSet::new();
    let mut reports: BTreeMap<String, TargetReport> = BTreeMap::new();
    let mut records = 0u64;
    let mut chunk: Vec<Record> = Vec::new();
    loop {
        let row = stream.try_next().await.map_err(Error::from)?;
        let done = row.is_none();
        if let Some(row) = row {
            let r = row_to_record(&row)?;
            if sampled(&r.key, sample_pct) {
                seen.insert(r.key.clone());
                chunk.push(r);
            }
            records += 1;
        }
        if chunk.len() >= cfg.runtime.derive_chunk.max(1) || (done && !chunk.is_empty()) {
            for r in &chunk {
                for s in &audit.search {
                    let rep = reports.entry(s.label.clone()).or_insert_with(|| TargetReport { target: s.label.clone(), ..Default::default() });
                    match s.held(&r.key, Some(r)) {
                        Held::Same => {}
                        Held::Absent => rep.missing.push(r.key.clone()),
                        Held::Different => rep.different.push(r.key.clone()),
                    }
                }
                if let Some(rs) = audit.redis.as_mut() {
                    let rep = reports.entry("redis".into()).or_insert_with(|| TargetReport { target: "redis".into(), ..Default::default() });
                    match rs.held(p, &r.key, Some(r)).await?.0 {
                        Held::Same => {}
                        Held::Absent => rep.missing.push(r.key.clone()),
                        Held::Different => rep.different.push(r.key.clone()),
                    }
                }
            }
            chunk.clear();
            on_progress(records);
        }
        if done {
            break;
        }
    }
    reader.batch_execute("COMMIT").await?;
    // Extras: what targets hold that the source does not produce.
    for s in &audit.search {
        let rep = reports.entry(s.label.clone()).or_insert_with(|| TargetReport { target: s.label.clone(), ..Default::default() });
        rep.extra.extend(s.docs.keys().filter(|k| sampled(k, sample_pct) && !seen.contains(*k)).cloned());
    }
    let mut stray = Vec::new();
    if let Some(rs) = audit.redis.as_mut() {
        let (ledger_keys, stray_keys) = rs.extras(p).await?;
        let rep = reports.entry("redis".into()).or_insert_with(|| TargetReport { target: "redis".into(), ..Default::default() });
        rep.extra.extend(ledger_keys.into_iter().filter(|k| sampled(k, sample_pct) && !seen.contains(k)));
        stray = stray_keys;
    }
    drop(seen);

    // Suspects are re-checked once the daemon has applied what was committed meanwhile.
    let mut keys = suspects(&reports);
    let mut diffs = Vec::new();
    for _ in 0..RECHECK_ROUNDS {
        if keys.is_empty() {
            break;
        }
        let lsn = pg::current_wal_lsn(client).await?;
        let daemon = daemon_applied(cfg, &p.name, lsn).await;
        // Read the targets afresh: what they hold now, after the daemon applied `lsn`.
        for s in &mut audit.search {
            *s = Search::open(cfg, p, &s.target.clone())?;
        }
        let (r, d) = audit.check(client, &keys).await?;
        reports = r;
        diffs = d;
        keys = suspects(&reports);
        if !daemon {
            break;
        }
    }
    let drifted = keys.len() + stray.len();
    let mut repaired = 0;
    let mut remaining = drifted;
    if repair && drifted > 0 {
        repaired = repair_keys(cfg, p, &keys).await?;
        if let Some(rs) = audit.redis.as_mut() {
            for k in &stray {
                let _: () = redis::cmd("DEL").arg(k).query_async(&mut rs.conn).await?;
            }
            repaired += stray.len();
            let (_, still) = rs.extras(p).await?;
            stray = still;
        }
        // Re-verify (the CLI repair path has no daemon to wait for; the daemon path waits).
        let lsn = pg::current_wal_lsn(client).await?;
        daemon_applied(cfg, &p.name, lsn).await;
        for s in &mut audit.search {
            *s = Search::open(cfg, p, &s.target.clone())?;
        }
        let (r, _) = audit.check(client, &keys).await?;
        reports = r;
        remaining = suspects(&reports).len() + stray.len();
    }
    if !stray.is_empty() {
        let rep = reports.entry("redis".into()).or_insert_with(|| TargetReport { target: "redis".into(), ..Default::default() });
        rep.extra.extend(stray.iter().map(|k| format!("(key) {k}")));
    }
    diffs.truncate(DIFFS_SHOWN * 4);
    let report = PipelineReport {
        pipeline: p.name.clone(),
        start_lsn,
        records,
        sample_pct,
        targets: reports.into_values().collect(),
        diffs,
        drifted,
        repaired,
        remaining,
        seconds: started.elapsed().as_secs_f64(),
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    let path = report_path(cfg, &p.name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report).expect("report serializes"))?;
    Ok(report)
}

/// Re-derives `keys` through the normal write path: the daemon when one runs, else here.
async fn repair_keys(cfg: &Config, p: &Pipeline, keys: &[String]) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let body = serde_json::json!({ "pipeline": p.name, "keys": keys }).to_string();
    match crate::cli::status::daemon_request(&cfg.http.listen, "POST", "/v1/admin/repair", cfg.http.token.as_deref(), Some(&body)).await {
        Some((200, _)) => Ok(keys.len()),
        Some((_, body)) => Err(Error::fatal("the daemon refused the repair").with_detail(body)),
        None => {
            let shared = std::sync::Arc::new(crate::runtime::status::Shared::default());
            let mut d = crate::runtime::Daemon::prepare(cfg.clone(), shared, tokio_util::sync::CancellationToken::new(), false).await?;
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
        let n = keys.iter().filter(|k| sampled(k, Some(10.0))).count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(keys.iter().all(|k| sampled(k, None)));
        assert_eq!(keys.iter().filter(|k| sampled(k, Some(10.0))).count(), n);
    }
}
