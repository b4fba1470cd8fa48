//! Dead letters: records a target could not take (SQL error on that key, a value that does not fit
//! a declared search type, a Redis value over the size limit). Each is kept with its reason in a
//! durable store, retried with exponential backoff, removed once a write of that key succeeds,
//! listed by `deriver status` and `deriver dead-letters`, and retried on demand. Other keys and
//! other pipelines go on (unless the pipeline says `on_error: stop`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::error::{Cause, Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub key: String,
    pub reason: String,
    pub attempts: u32,
    /// Unix seconds.
    pub first_seen: u64,
    pub next_retry: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Backoff after `attempts` failures: 5 s, 10 s, 20 s … capped at one hour.
pub fn backoff_secs(attempts: u32) -> u64 {
    (5u64 << attempts.min(10)).min(3600)
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::fatal("the dead-letter store failed").with_detail(e)
}

pub struct DeadLetters {
    db: Database,
    /// Keys per pipeline, in memory for cheap "was it dead?" checks.
    keys: BTreeMap<String, HashSet<String>>,
}

fn table(pipeline: &str) -> TableDefinition<'_, &'static str, &'static str> {
    TableDefinition::new(pipeline)
}

impl DeadLetters {
    pub fn open(dir: &Path) -> Result<DeadLetters> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = Database::create(dir.join("dead_letters.redb")).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                Error::fatal("cannot open the dead-letter store: another process has it open (is another deriver running?)").with_cause(Cause::StoreLocked)
            }
            e => Error::fatal("cannot open the dead-letter store").with_detail(e),
        })?;
        let mut keys: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        let r = db.begin_read().map_err(io)?;
        for t in r.list_tables().map_err(io)? {
            let name = t.name().to_string();
            let tbl = r.open_table(table(&name)).map_err(io)?;
            let set = keys.entry(name).or_default();
            for entry in tbl.iter().map_err(io)? {
                let (k, _) = entry.map_err(io)?;
                set.insert(k.value().to_string());
            }
        }
        drop(r);
        Ok(DeadLetters { db, keys })
    }

    /// [`DeadLetters::open`] for the daemon: a command that reads the store (`deriver status`
    /// without a daemon) holds it for a moment, so a start that meets it waits (up to 10 s)
    /// instead of failing.
    pub async fn open_waiting(dir: &Path) -> Result<DeadLetters> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match DeadLetters::open(dir) {
                Err(e) if e.cause == Some(Cause::StoreLocked) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    pub fn count(&self, pipeline: &str) -> usize {
        self.keys.get(pipeline).map_or(0, HashSet::len)
    }

    pub fn contains(&self, pipeline: &str, key: &str) -> bool {
        self.keys.get(pipeline).is_some_and(|s| s.contains(key))
    }

    pub fn list(&self, pipeline: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let r = self.db.begin_read().map_err(io)?;
        let tbl = match r.open_table(table(pipeline)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for entry in tbl.iter().map_err(io)?.take(limit) {
            let (_, v) = entry.map_err(io)?;
            out.push(serde_json::from_str(v.value()).map_err(io)?);
        }
        Ok(out)
    }

    /// Keys whose next retry is due.
    pub fn due(&self, pipeline: &str, limit: usize) -> Result<Vec<String>> {
        let t = now();
        Ok(self.list(pipeline, usize::MAX)?.into_iter().filter(|d| d.next_retry <= t).take(limit).map(|d| d.key).collect())
    }

    /// Records failures (new or again: attempts grow, the next retry backs off).
    pub fn record(&mut self, pipeline: &str, failures: &[(String, String)]) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(io)?;
        {
            let mut tbl = w.open_table(table(pipeline)).map_err(io)?;
            for (key, reason) in failures {
                let prev: Option<DeadLetter> = tbl.get(key.as_str()).map_err(io)?.and_then(|v| serde_json::from_str(v.value()).ok());
                let t = now();
                let d = match prev {
                    Some(p) => DeadLetter { reason: reason.clone(), attempts: p.attempts + 1, next_retry: t + backoff_secs(p.attempts + 1), ..p },
                    None => DeadLetter { key: key.clone(), reason: reason.clone(), attempts: 1, first_seen: t, next_retry: t + backoff_secs(1) },
                };
                tbl.insert(key.as_str(), serde_json::to_string(&d).map_err(io)?.as_str()).map_err(io)?;
            }
        }
        w.commit().map_err(io)?;
        let set = self.keys.entry(pipeline.to_string()).or_default();
        set.extend(failures.iter().map(|(k, _)| k.clone()));
        Ok(())
    }

    /// Forgets keys that were written successfully.
    pub fn resolve(&mut self, pipeline: &str, keys: &[String]) -> Result<()> {
        let Some(set) = self.keys.get_mut(pipeline) else { return Ok(()) };
        let hit: Vec<&String> = keys.iter().filter(|k| set.contains(*k)).collect();
        if hit.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(io)?;
        {
            let mut tbl = w.open_table(table(pipeline)).map_err(io)?;
            for k in &hit {
                tbl.remove(k.as_str()).map_err(io)?;
            }
        }
        w.commit().map_err(io)?;
        for k in hit {
            set.remove(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_backs_off_resolves_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        d.record("films", &[("7".into(), "value does not fit".into())]).unwrap();
        d.record("films", &[("7".into(), "still not".into())]).unwrap();
        let l = d.list("films", 10).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].attempts, 2);
        assert_eq!(l[0].reason, "still not");
        assert!(l[0].next_retry >= l[0].first_seen + backoff_secs(2));
        assert!(d.due("films", 10).unwrap().is_empty(), "not due yet");
        drop(d);
        let mut d = DeadLetters::open(dir.path()).unwrap();
        assert!(d.contains("films", "7"));
        d.resolve("films", &["7".into(), "8".into()]).unwrap();
        assert_eq!(d.count("films"), 0);
        assert_eq!(backoff_secs(0), 5);
        assert_eq!(backoff_secs(30), 3600);
    }
}
