//! Dead letters: records a target could not take (SQL error on that key, a value that does not fit
//! a declared search type, a Redis value over the size limit). Each is kept with its reason in a
//! durable store, retried with exponential backoff, removed once a write of that key succeeds,
//! listed by `deriver status` and `deriver dead-letters`, and retried on demand. Other keys and
//! other pipelines go on (unless the pipeline says `on_error: stop`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::error::{Cause, Error, Result};
use crate::sink::{RejectCause, Rejected};
pub use crate::status::DeadLetter;

/// Whether a dead letter is retried at once, before its backoff ends, when the pipeline's SQL
/// derives again (after a schema change, say): a key whose derivation failed may work now; a
/// value a target refused does not change by that. A dead letter stored without its cause (by an
/// older deriver) is retried too: one derivation more, at most once per recovery, costs little.
pub fn retried_when_sql_recovers(cause: Option<RejectCause>) -> bool {
    match cause {
        Some(RejectCause::Derivation) | None => true,
        Some(RejectCause::Target) => false,
    }
}

/// The dead letters of `listed` to retry now that the pipeline's SQL works again, besides `due`.
pub fn sql_recovery_keys(listed: &[DeadLetter], due: &[String]) -> Vec<String> {
    listed.iter().filter(|d| retried_when_sql_recovers(d.cause) && !due.contains(&d.key)).map(|d| d.key.clone()).collect()
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

/// A storage error: I/O (disk full, read-only, gone) is retried — the batch that found the dead
/// letters waits, unacknowledged, and the handle is re-opened, as redb refuses every later
/// operation on it — anything else (corruption, …) stops deriver.
fn storage(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            Error::transient("the dead-letter store cannot write (is its disk full or read-only?)").with_detail(e)
        }
        redb::Error::DatabaseAlreadyOpen => {
            Error::fatal("cannot open the dead-letter store: another process has it open for writing (is another deriver running?)")
                .with_cause(Cause::StoreLocked)
        }
        e => io(e),
    }
}

/// How every process opens the store: one writer (the daemon, or a command doing its work
/// without one) and any number of read-only handles beside it (`deriver status`,
/// `deriver dead-letters`), which follow its commits and never keep it from opening.
fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b
}

enum Handle {
    /// `None` after an I/O error until it is re-opened.
    Write(Option<Database>),
    /// `None`: there is no store yet (nothing was ever recorded).
    Read(Option<ReadOnlyDatabase>),
}

pub struct DeadLetters {
    path: PathBuf,
    db: Handle,
    /// Keys per pipeline, in memory for cheap "was it dead?" checks.
    keys: BTreeMap<String, HashSet<String>>,
    /// Failures already recorded ([`DeadLetters::persist`]) by the batch that is being
    /// committed: [`DeadLetters::record`] does not count them again when it settles.
    persisted: BTreeMap<String, HashSet<String>>,
}

fn table(pipeline: &str) -> TableDefinition<'_, &'static str, &'static str> {
    TableDefinition::new(pipeline)
}

fn file(dir: &Path) -> PathBuf {
    dir.join("dead_letters.redb")
}

impl DeadLetters {
    /// Opens (creating it if needed) the store for writing.
    pub fn open(dir: &Path) -> Result<DeadLetters> {
        std::fs::create_dir_all(dir).map_err(|e| Error::transient("cannot create the dead-letter store's directory").with_detail(e))?;
        let path = file(dir);
        let db = builder().create(&path).map_err(storage)?;
        DeadLetters::load(path, Handle::Write(Some(db)))
    }

    /// Opens the store read-only, for commands that only look (`deriver status`,
    /// `deriver dead-letters` without `--retry`): it takes no lock a daemon needs, whether the
    /// daemon is running or starts meanwhile. A missing store is an empty one.
    ///
    /// A store its writer did not close (the daemon was killed) must be repaired before it can be
    /// read, which only a writer does: with no writer around, this opens it for writing for that
    /// moment (a daemon starting meanwhile waits for it, [`DeadLetters::open_waiting`]).
    pub fn open_read_only(dir: &Path) -> Result<DeadLetters> {
        let path = file(dir);
        let mut repaired = false;
        let db = loop {
            match builder().open_read_only(&path) {
                Ok(db) => break Some(db),
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) if e.kind() == std::io::ErrorKind::NotFound => break None,
                Err(redb::DatabaseError::RepairAborted) if !repaired => {
                    repaired = true;
                    match DeadLetters::open(dir) {
                        // A writer opened it meanwhile: it repairs the store itself.
                        Ok(_) => {}
                        Err(e) if e.cause == Some(Cause::StoreLocked) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(Error::fatal("cannot read the dead-letter store").with_detail(e)),
            }
        };
        DeadLetters::load(path, Handle::Read(db))
    }

    fn load(path: PathBuf, db: Handle) -> Result<DeadLetters> {
        let mut d = DeadLetters { path, db, keys: BTreeMap::new(), persisted: BTreeMap::new() };
        let Some(r) = d.begin_read()? else { return Ok(d) };
        for t in r.list_tables().map_err(storage)? {
            let name = t.name().to_string();
            let tbl = r.open_table(table(&name)).map_err(storage)?;
            let set = d.keys.entry(name).or_default();
            for entry in tbl.iter().map_err(storage)? {
                let (k, _) = entry.map_err(storage)?;
                set.insert(k.value().to_string());
            }
        }
        drop(r);
        Ok(d)
    }

    /// A read transaction (`None` when a read-only store does not exist).
    fn begin_read(&self) -> Result<Option<ReadTransaction>> {
        match &self.db {
            Handle::Write(Some(db)) => db.begin_read().map(Some).map_err(storage),
            Handle::Write(None) => Err(Error::transient("the dead-letter store is being re-opened after an I/O error")),
            Handle::Read(Some(db)) => db.begin_read().map(Some).map_err(storage),
            Handle::Read(None) => Ok(None),
        }
    }

    /// The writable handle, re-opened after an I/O error.
    fn writer(&mut self) -> Result<&Database> {
        let Handle::Write(db) = &mut self.db else { return Err(Error::fatal("the dead-letter store was opened read-only")) };
        if db.is_none() {
            *db = Some(builder().create(&self.path).map_err(storage)?);
        }
        Ok(db.as_ref().expect("opened"))
    }

    /// Runs a write transaction; an I/O error drops the handle (re-opened by the next write).
    fn write(&mut self, f: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let db = self.writer()?;
        let result = db.begin_write().map_err(storage).and_then(|w| {
            f(&w)?;
            w.commit().map_err(storage)
        });
        if result.as_ref().is_err_and(Error::is_transient) {
            self.db = Handle::Write(None);
        }
        result
    }

    /// [`DeadLetters::open`] for the daemon: a command doing a daemon's work without one
    /// (`deriver reindex`, `deriver dead-letters --retry`) holds the store for writing, so a start
    /// that meets it waits (up to 10 s) instead of failing. Read-only commands never hold it.
    pub async fn open_waiting(dir: &Path) -> Result<DeadLetters> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut said = false;
        loop {
            match DeadLetters::open(dir) {
                Err(e) if e.cause == Some(Cause::StoreLocked) && std::time::Instant::now() < deadline => {
                    if !std::mem::replace(&mut said, true) {
                        tracing::info!("another process has the dead-letter store open for writing; waiting for it (up to 10 s)");
                    }
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
        let Some(r) = self.begin_read()? else { return Ok(Vec::new()) };
        let tbl = match r.open_table(table(pipeline)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for entry in tbl.iter().map_err(storage)?.take(limit) {
            let (_, v) = entry.map_err(storage)?;
            out.push(serde_json::from_str(v.value()).map_err(io)?);
        }
        Ok(out)
    }

    /// Keys whose next retry is due.
    pub fn due(&self, pipeline: &str, limit: usize) -> Result<Vec<String>> {
        let t = now();
        Ok(self.list(pipeline, usize::MAX)?.into_iter().filter(|d| d.next_retry <= t).take(limit).map(|d| d.key).collect())
    }

    /// After a retry of `due` keys: those it neither wrote nor rejected again are still dead
    /// (the retry did not reach them); each counts an attempt, keeping the reason recorded before.
    /// A key the store does not know (or knows without a cause) counts as a failed derivation:
    /// the retry was one.
    pub fn not_retried(&self, pipeline: &str, due: &[String], written: &[String], failed: &[Rejected]) -> Result<Vec<Rejected>> {
        let previous = self.list(pipeline, usize::MAX)?;
        Ok(due
            .iter()
            .filter(|k| !written.contains(*k) && !failed.iter().any(|f| &f.key == *k))
            .map(|k| match previous.iter().find(|d| &d.key == k) {
                Some(d) => Rejected { key: k.clone(), reason: d.reason.clone(), cause: d.cause.unwrap_or(RejectCause::Derivation) },
                None => Rejected::by_derivation(k.clone(), "still failing"),
            })
            .collect())
    }

    /// Records the failures of a batch *before* its sinks commit, so that a checkpoint never
    /// passes a rejection that is not durable here: when this fails (the store's disk is full),
    /// the batch fails with it and is retried, unacknowledged, instead of committing without its
    /// dead letters. Recording them again while the same batch is retried, or when it settles
    /// ([`DeadLetters::record`]), does not count another attempt.
    pub fn persist(&mut self, pipeline: &str, failures: &[Rejected]) -> Result<()> {
        let done = self.persisted.get(pipeline);
        let new: Vec<Rejected> = failures.iter().filter(|f| !done.is_some_and(|d| d.contains(&f.key))).cloned().collect();
        self.record_now(pipeline, &new)?;
        self.persisted.entry(pipeline.to_string()).or_default().extend(new.into_iter().map(|f| f.key));
        Ok(())
    }

    /// Records failures (new or again: attempts grow, the next retry backs off), except those
    /// [`DeadLetters::persist`] recorded already; the batch is settled.
    pub fn record(&mut self, pipeline: &str, failures: &[Rejected]) -> Result<()> {
        let done = self.persisted.remove(pipeline).unwrap_or_default();
        let new: Vec<Rejected> = failures.iter().filter(|f| !done.contains(&f.key)).cloned().collect();
        self.record_now(pipeline, &new)
    }

    /// Records each key once (a batch retried after a failure lists its rejections again; the
    /// last reason wins).
    fn record_now(&mut self, pipeline: &str, failures: &[Rejected]) -> Result<()> {
        let mut seen = HashSet::new();
        let mut failures: Vec<&Rejected> = failures.iter().rev().filter(|f| seen.insert(f.key.as_str())).collect();
        failures.reverse();
        if failures.is_empty() {
            return Ok(());
        }
        self.write(|w| {
            let mut tbl = w.open_table(table(pipeline)).map_err(storage)?;
            for f in &failures {
                let prev: Option<DeadLetter> = tbl.get(f.key.as_str()).map_err(storage)?.and_then(|v| serde_json::from_str(v.value()).ok());
                let t = now();
                let (reason, cause) = (f.reason.clone(), Some(f.cause));
                let d = match prev {
                    Some(p) => DeadLetter { reason, cause, attempts: p.attempts + 1, next_retry: t + backoff_secs(p.attempts + 1), ..p },
                    None => DeadLetter { key: f.key.clone(), reason, cause, attempts: 1, first_seen: t, next_retry: t + backoff_secs(1) },
                };
                tbl.insert(f.key.as_str(), serde_json::to_string(&d).map_err(io)?.as_str()).map_err(storage)?;
            }
            Ok(())
        })?;
        let set = self.keys.entry(pipeline.to_string()).or_default();
        set.extend(failures.iter().map(|f| f.key.clone()));
        Ok(())
    }

    /// Forgets keys that were written successfully.
    pub fn resolve(&mut self, pipeline: &str, keys: &[String]) -> Result<()> {
        let Some(set) = self.keys.get(pipeline) else { return Ok(()) };
        let hit: Vec<String> = keys.iter().filter(|k| set.contains(*k)).cloned().collect();
        if hit.is_empty() {
            return Ok(());
        }
        self.write(|w| {
            let mut tbl = w.open_table(table(pipeline)).map_err(storage)?;
            for k in &hit {
                tbl.remove(k.as_str()).map_err(storage)?;
            }
            Ok(())
        })?;
        if let Some(set) = self.keys.get_mut(pipeline) {
            for k in &hit {
                set.remove(k);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str, reason: &str) -> Rejected {
        Rejected::by_target(key, reason)
    }

    fn sql(key: &str, reason: &str) -> Rejected {
        Rejected::by_derivation(key, reason)
    }

    #[test]
    fn readers_open_beside_the_writer_follow_its_commits_and_never_keep_it_out() {
        let dir = tempfile::tempdir().unwrap();
        // No store yet: a reader sees none, and creates nothing.
        let r = DeadLetters::open_read_only(dir.path()).unwrap();
        assert_eq!(r.count("films"), 0);
        assert!(r.list("films", 10).unwrap().is_empty());
        assert!(!dir.path().join("dead_letters.redb").exists());
        let mut w = DeadLetters::open(dir.path()).unwrap();
        w.record("films", &[t("7", "bad")]).unwrap();
        // A reader opened while the writer has the store open.
        let r = DeadLetters::open_read_only(dir.path()).unwrap();
        assert!(r.contains("films", "7"));
        // A writer (the daemon) opens while readers have it open.
        drop(w);
        let r2 = DeadLetters::open_read_only(dir.path()).unwrap();
        let mut w = DeadLetters::open(dir.path()).expect("a reader must not keep the writer out");
        w.record("films", &[t("8", "worse")]).unwrap();
        // Readers follow the writer's commits.
        assert_eq!(r.list("films", 10).unwrap().len(), 2);
        assert_eq!(r2.list("films", 10).unwrap().len(), 2);
        // A second writer is kept out, with the cause the daemon waits on.
        assert_eq!(DeadLetters::open(dir.path()).err().and_then(|e| e.cause), Some(Cause::StoreLocked));
        // A read-only handle refuses to write.
        let mut r = r;
        assert!(r.record("films", &[t("9", "x")]).is_err());
    }

    #[test]
    fn a_failure_persisted_before_the_commit_counts_one_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        let failed = vec![t("7", "bad")];
        d.persist("films", &failed).unwrap();
        assert!(d.contains("films", "7"), "durable before the commit");
        // The batch is retried: persisted again, then settled.
        d.persist("films", &failed).unwrap();
        d.record("films", &failed).unwrap();
        assert_eq!(d.list("films", 10).unwrap()[0].attempts, 1);
        // A retried batch lists its rejections twice: one attempt still.
        d.persist("films", &[failed[0].clone(), t("7", "bad again")]).unwrap();
        d.record("films", &[]).unwrap();
        assert_eq!(d.list("films", 10).unwrap()[0].attempts, 2);
        assert_eq!(d.list("films", 10).unwrap()[0].reason, "bad again");
        // The next batch counts again.
        d.persist("films", &failed).unwrap();
        d.record("films", &failed).unwrap();
        assert_eq!(d.list("films", 10).unwrap()[0].attempts, 3);
        // Another pipeline's settle does not clear this one's.
        d.persist("films", &failed).unwrap();
        d.record("actors", &[]).unwrap();
        d.record("films", &failed).unwrap();
        assert_eq!(d.list("films", 10).unwrap()[0].attempts, 4);
    }

    #[test]
    fn keys_a_retry_did_not_reach_keep_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        d.record("films", &[t("1", "bad date"), t("2", "too big"), sql("3", "sql")]).unwrap();
        let due: Vec<String> = ["1", "2", "3", "4"].map(String::from).to_vec();
        let again = d.not_retried("films", &due, &["1".to_string()], &[t("2", "still too big")]).unwrap();
        assert_eq!(again, vec![sql("3", "sql"), sql("4", "still failing")]);
    }

    #[test]
    fn records_backs_off_resolves_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        d.record("films", &[t("7", "value does not fit")]).unwrap();
        d.record("films", &[t("7", "still not")]).unwrap();
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

    #[test]
    fn the_cause_is_stored_and_decides_the_retry_when_sql_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path()).unwrap();
        // The reasons read alike on purpose: only the cause decides.
        d.record("films", &[sql("1", "Postgres error 22007: bad date"), t("2", "Postgres error 22007: bad date")]).unwrap();
        drop(d);
        let d = DeadLetters::open(dir.path()).unwrap();
        let l = d.list("films", 10).unwrap();
        let cause = |k: &str| l.iter().find(|x| x.key == k).unwrap().cause;
        assert_eq!(cause("1"), Some(RejectCause::Derivation));
        assert_eq!(cause("2"), Some(RejectCause::Target));
        assert_eq!(sql_recovery_keys(&l, &[]), vec!["1".to_string()]);
        assert!(sql_recovery_keys(&l, &["1".to_string()]).is_empty(), "already due");
        assert!(retried_when_sql_recovers(Some(RejectCause::Derivation)));
        assert!(!retried_when_sql_recovers(Some(RejectCause::Target)));
        assert!(retried_when_sql_recovers(None), "a dead letter from an older deriver");
    }

    #[test]
    fn dead_letters_written_without_a_cause_are_still_read_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an older deriver wrote: no `cause`.
            let db = builder().create(file(dir.path())).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut tbl = w.open_table(table("films")).unwrap();
                tbl.insert("7", r#"{"key":"7","reason":"value too long","attempts":2,"first_seen":10,"next_retry":20}"#).unwrap();
            }
            w.commit().unwrap();
        }
        let mut d = DeadLetters::open(dir.path()).unwrap();
        let l = d.list("films", 10).unwrap();
        assert_eq!(l[0].cause, None);
        assert_eq!(l[0].attempts, 2);
        assert_eq!(sql_recovery_keys(&l, &[]), vec!["7".to_string()]);
        // Its entry in the status document has no `cause` field, as before.
        assert!(!serde_json::to_string(&l[0]).unwrap().contains("cause"));
        // A retry that does not reach it keeps its reason and counts it as a failed derivation.
        assert_eq!(d.not_retried("films", &["7".to_string()], &[], &[]).unwrap(), vec![sql("7", "value too long")]);
        // Recorded again, it gets a cause.
        d.record("films", &[t("7", "value too long")]).unwrap();
        let l = d.list("films", 10).unwrap();
        assert_eq!((l[0].cause, l[0].attempts), (Some(RejectCause::Target), 3));
    }
}
