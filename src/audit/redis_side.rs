//! The Redis side of the comparison: the views a record should produce read back in one
//! pipelined round trip per chunk (`RedisSide`), and the pipeline's key space scanned for view
//! keys no ledger entry owns (`KeySpace`).

use std::collections::{BTreeSet, HashSet};
use std::hash::BuildHasher;

use serde_json::Value;

use super::findings::Held;
use super::sample::Sample;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::sink::redis::compare::{self, entry_id, ledger_ids, ledger_text_matches, parse, redis_error};
use crate::sink::redis::{self as rsink, ViewWrite};
use crate::sink::Record;

/// Keys per `SCAN`/`HSCAN` call.
const SCAN_COUNT: usize = 5000;

type Renderer = Box<dyn Fn(&Record) -> std::result::Result<Vec<ViewWrite>, String> + Send + Sync>;

pub(super) struct RedisSide {
    pub(super) space: KeySpace,
    render: Renderer,
    /// Hashes of every view key the compared records produce (a full audit: what the key space
    /// may hold besides them are stray keys).
    pub(super) expected: Option<HashSet<u64>>,
    pub(super) hasher: std::collections::hash_map::RandomState,
    /// Ledger entries found for derived records so far.
    pub(super) ledger_present: u64,
}

/// The pipeline's Redis key space: its view keys and its ledger.
pub(super) struct KeySpace {
    pub(super) conn: rsink::RedisConn,
    /// What the pipeline's view keys start with (`Keys::views`).
    prefix: String,
    pub(super) ledger_key: String,
    /// On a Redis Cluster, the hash slot of every key of the pipeline: its views are scanned on
    /// that slot's master only.
    slot: Option<u16>,
}

/// One view's (expected, actual) when they differ.
type ViewDiff = (String, Value, Value);

/// Redis reads sent for a chunk of records and not yet compared: the views the records should
/// produce, and the task that reads what Redis holds for them.
pub(super) struct PendingReads {
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
    pub(super) async fn open(cfg: &Config, p: &Pipeline) -> Result<RedisSide> {
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
    pub(super) fn space(&self) -> KeySpace {
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
    pub(super) fn request(&self, items: &[(String, Option<Record>)], detail: bool) -> PendingReads {
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
    pub(super) async fn evaluate(&mut self, items: &[(String, Option<Record>)], pending: PendingReads, detail: bool) -> Result<Vec<(Held, Vec<ViewDiff>)>> {
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
                let compared = compare::next_mismatch(v, &mut replies, detail, compare::Ignore::Provenance)?;
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
    pub(super) async fn scan_candidates(&mut self, p: &Pipeline, sample: Sample, cap: usize) -> Result<HashSet<String>> {
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
    pub(super) async fn ledger_pass(&mut self, sample: Sample, candidates: &mut HashSet<String>, cap: usize) -> Result<Vec<String>> {
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
    pub(super) async fn recheck_strays(&mut self, strays: &[String]) -> Result<Vec<String>> {
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
    fn ledger_entries_name_views_and_members() {
        let ids = ledger_ids(r#"["p:film:1", ["p:cat:2", "7", "s"]]"#).unwrap();
        assert!(ids.contains("p:film:1") && ids.contains("p:cat:2\u{0}7"));
        assert_eq!(ledger_view_keys(r#"["p:film:1", ["p:cat:2", "7", "z"]]"#), vec!["p:film:1".to_string(), "p:cat:2".into()]);
    }
}
