//! The comparison of one pipeline's targets with freshly derived records (`Checker`), and the
//! re-checks that tell drift from changes still in flight (`Checker::settle`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::{Client, Statement};

use super::findings::{Findings, Held, DIFFS_KEPT};
use super::link::{Applied, Link};
use super::redis_side::{PendingReads, RedisSide};
use super::report::FieldDiff;
use super::sample::KeyFilter;
use super::search_side::Search;
use crate::error::Result;
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::runtime::derive::{derive_keys, KeyTuple};
use crate::sink::{Record, Write};
use crate::source::postgres as pg;

/// The comparison of one pipeline's targets with freshly derived records.
pub(super) struct Checker<'a> {
    p: &'a Pipeline,
    stmt: Statement,
    n_key: usize,
    pub(super) search: Vec<Search>,
    pub(super) redis: Option<RedisSide>,
}

/// What re-checking left.
pub(super) struct Settled {
    pub(super) findings: Findings,
    pub(super) keys: Vec<String>,
    pub(super) strays: Vec<String>,
    pub(super) unverified: usize,
}

impl<'a> Checker<'a> {
    pub(super) async fn open(
        link: &Link<'_>,
        client: &Client,
        p: &'a Pipeline,
        sql: &DerivationSql,
        n_key: usize,
        filter: KeyFilter,
        cap: usize,
    ) -> Result<Checker<'a>> {
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
    pub(super) fn compare_search(&mut self, items: &[(String, Option<Record>)], out: &mut Findings, want_diffs: bool) {
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
    pub(super) async fn compare_redis(
        &mut self,
        items: &[(String, Option<Record>)],
        pending: Option<PendingReads>,
        out: &mut Findings,
        want_diffs: bool,
    ) -> Result<()> {
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

    pub(super) async fn check(&mut self, client: &Client, keys: &[String], out: &mut Findings, want_diffs: bool) -> Result<()> {
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
    pub(super) async fn settle(&mut self, link: &Link<'_>, client: &Client, keys: Vec<String>, strays: Vec<String>, rounds: usize) -> Result<Settled> {
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
