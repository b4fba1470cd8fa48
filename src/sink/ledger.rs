//! The dependency ledger of one pipeline: for the rows of its lookup, child and link tables whose
//! join columns are not in their replica identity, the join values last seen, keyed by the row's
//! identity. A delete (or an update that keeps the identity) carries only the identity, so this is
//! how deriver knows the *old* parent of a child row without `REPLICA IDENTITY FULL`.
//!
//! It has the shape of a sink and its own checkpoint (a redb file, one atomic write transaction per
//! batch), and commits *after* the pipeline's other sinks: after a crash it is never ahead of
//! them, so a replay still finds the old join values it needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{BatchMode, Checkpoint, Rejected, Sink, Write};
use crate::error::{Error, Result};
use crate::source::Lsn;

const ROWS: TableDefinition<&str, &str> = TableDefinition::new("rows");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const SEP: char = '\u{1f}';

fn row_key(rel: usize, identity: &[String]) -> String {
    let mut k = rel.to_string();
    for v in identity {
        k.push(SEP);
        k.push_str(v);
    }
    k
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::fatal("the dependency ledger failed").with_detail(e)
}

/// A storage error: I/O (disk full, read-only, gone) is retried — the handle is re-opened, as redb
/// refuses every later operation on it — anything else (corruption, …) stops deriver.
fn storage(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            Error::transient("the dependency ledger cannot write (is its disk full or read-only?)").with_detail(e)
        }
        e => io(e),
    }
}

pub struct Ledger {
    path: PathBuf,
    /// `None` after an I/O error until it is re-opened.
    db: Option<Database>,
    hash: String,
    checkpoint: Option<Checkpoint>,
    /// What the open batch staged.
    staged: Staged,
    open: Option<(Lsn, BatchMode)>,
    /// A batch whose data sinks are still committing: its rows are written once they are durable
    /// ([`Ledger::commit_held`]), while the next batch stages on top of them.
    held: Option<(Lsn, BatchMode, Staged)>,
}

/// The rows one batch staged.
#[derive(Default)]
struct Staged {
    /// (relation, identity) → join values (None = row gone).
    overlay: HashMap<(usize, Vec<String>), Option<Vec<String>>>,
    /// Rows loaded by a replace (snapshot).
    loaded: Vec<(usize, Vec<String>, Vec<String>)>,
    /// Relations emptied by a TRUNCATE.
    cleared: Vec<usize>,
}

impl Staged {
    /// What `self` says of a row: Some(values) when it staged or cleared it, None when it did not
    /// touch it.
    fn says(&self, rel: usize, identity: &[String]) -> Option<Option<Vec<String>>> {
        if let Some(v) = self.overlay.get(&(rel, identity.to_vec())) {
            return Some(v.clone());
        }
        self.cleared.contains(&rel).then_some(None)
    }

    /// `later` staged after `self`: the result of applying both, in order.
    fn then(mut self, later: Staged) -> Staged {
        for rel in &later.cleared {
            self.overlay.retain(|(r, _), _| r != rel);
            self.loaded.retain(|(r, _, _)| r != rel);
            if !self.cleared.contains(rel) {
                self.cleared.push(*rel);
            }
        }
        self.overlay.extend(later.overlay);
        self.loaded.extend(later.loaded);
        self
    }
}

impl Ledger {
    pub fn open(dir: &Path, pipeline: &str, hash: &str) -> Result<Ledger> {
        std::fs::create_dir_all(dir).map_err(|e| Error::fatal(format!("cannot create {}", dir.display())).with_detail(e))?;
        let path = dir.join(format!("{pipeline}.redb"));
        let db = Database::create(&path)
            .map_err(|e| Error::fatal(format!("cannot open the dependency ledger {} (is another deriver using it?)", path.display())).with_detail(e))?;
        let checkpoint = {
            let r = db.begin_read().map_err(io)?;
            match r.open_table(META) {
                Ok(t) => {
                    let lsn = t.get("lsn").map_err(io)?.map(|v| v.value().to_string());
                    let h = t.get("hash").map_err(io)?.map(|v| v.value().to_string());
                    match lsn {
                        Some(l) => Some(Checkpoint { lsn: l.parse().map_err(|e: String| io(e))?, definition_hash: h }),
                        None => None,
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io(e)),
            }
        };
        Ok(Ledger { path, db: Some(db), hash: hash.to_string(), checkpoint, staged: Staged::default(), open: None, held: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The join values last seen for a row (the open batch first, then the committed state).
    pub fn lookup(&self, rel: usize, identity: &[String]) -> Result<Option<Vec<String>>> {
        if let Some(v) = self.staged.says(rel, identity) {
            return Ok(v);
        }
        if let Some(v) = self.held.as_ref().and_then(|(_, _, h)| h.says(rel, identity)) {
            return Ok(v);
        }
        let db = self.db.as_ref().ok_or_else(|| Error::transient("the dependency ledger is being re-opened after an I/O error"))?;
        let r = db.begin_read().map_err(storage)?;
        let t = match r.open_table(ROWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        match t.get(row_key(rel, identity).as_str()).map_err(storage)? {
            Some(v) => Ok(Some(serde_json::from_str(v.value()).map_err(io)?)),
            None => Ok(None),
        }
    }

    /// Records a row's current join values (None: the row is gone) for the next commit.
    pub fn stage(&mut self, rel: usize, identity: Vec<String>, values: Option<Vec<String>>) {
        self.staged.overlay.insert((rel, identity), values);
    }

    /// Forgets every row of a relation (TRUNCATE) at the next commit.
    pub fn clear_relation(&mut self, rel: usize) {
        let staged = std::mem::take(&mut self.staged);
        self.staged = staged.then(Staged { cleared: vec![rel], ..Staged::default() });
    }

    /// Adds rows read by a snapshot (replace batches).
    pub fn load(&mut self, rel: usize, identity: Vec<String>, values: Vec<String>) {
        self.staged.loaded.push((rel, identity, values));
    }

    /// Drops what the open batch staged, and a held batch (the stream restarts and will deliver
    /// them again).
    pub fn discard_staged(&mut self) {
        self.staged = Staged::default();
        self.held = None;
    }

    /// The open batch's data sinks are committing: its rows are held (lookups still see them)
    /// and written by [`Ledger::commit_held`] once those commits are durable; the next batch
    /// stages on top. Nothing happens when no batch is open.
    pub fn hold(&mut self) -> Result<()> {
        let Some((lsn, mode)) = self.open.take() else { return Ok(()) };
        if self.held.is_some() {
            return Err(Error::fatal("the dependency ledger already holds a batch"));
        }
        self.held = Some((lsn, mode, std::mem::take(&mut self.staged)));
        Ok(())
    }

    /// Writes the held batch (see [`Ledger::hold`]). On error it stays held.
    pub fn commit_held(&mut self) -> Result<()> {
        let Some((lsn, mode, staged)) = self.held.take() else { return Ok(()) };
        let replace = matches!(mode, BatchMode::Replace | BatchMode::Rewrite);
        let (result, staged) = tokio::task::block_in_place(|| self.write_staged(lsn, replace, staged));
        if let Err(e) = result {
            self.held = Some((lsn, mode, staged));
            return Err(e);
        }
        Ok(())
    }

    /// The data sinks' commit of the held batch failed: its rows go back under what the open
    /// batch staged since, to be committed with it.
    pub fn release_held(&mut self) {
        if let Some((_, _, held)) = self.held.take() {
            let later = std::mem::take(&mut self.staged);
            self.staged = held.then(later);
        }
    }

    /// Commits the staged rows with the batch LSN in one write transaction. The staged rows are
    /// kept until the commit succeeded, so a retried batch commits them after a failure.
    fn commit_blocking(&mut self, lsn: Lsn, replace: bool) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        let (result, staged) = self.write_staged(lsn, replace, staged);
        if result.is_err() {
            self.staged = staged;
        }
        result
    }

    /// Writes `staged` with the checkpoint `lsn` in one write transaction; gives `staged` back
    /// (emptied on success).
    fn write_staged(&mut self, lsn: Lsn, replace: bool, mut staged: Staged) -> (Result<()>, Staged) {
        if replace {
            // The snapshot already reflects every staged change.
            staged.overlay.clear();
            staged.cleared.clear();
        }
        let result = self.write_rows(lsn, replace, &staged);
        if result.is_ok() {
            staged = Staged::default();
            self.checkpoint = Some(Checkpoint { lsn, definition_hash: Some(self.hash.clone()) });
        }
        (result, staged)
    }

    fn write_rows(&mut self, lsn: Lsn, replace: bool, staged: &Staged) -> Result<()> {
        if self.db.is_none() {
            self.reopen()?;
        }
        let db = self.db.as_ref().expect("opened above");
        let result = (|| -> Result<()> {
            let w = db.begin_write().map_err(storage)?;
            {
                let mut rows = w.open_table(ROWS).map_err(storage)?;
                if replace {
                    rows.retain(|_, _| false).map_err(storage)?;
                }
                for rel in &staged.cleared {
                    let prefix = format!("{rel}{SEP}");
                    rows.retain(|k, _| !k.starts_with(&prefix)).map_err(storage)?;
                }
                for (rel, identity, values) in &staged.loaded {
                    rows.insert(row_key(*rel, identity).as_str(), serde_json::to_string(values).map_err(io)?.as_str()).map_err(storage)?;
                }
                for ((rel, identity), values) in &staged.overlay {
                    let k = row_key(*rel, identity);
                    match values {
                        Some(v) => {
                            rows.insert(k.as_str(), serde_json::to_string(v).map_err(io)?.as_str()).map_err(storage)?;
                        }
                        None => {
                            rows.remove(k.as_str()).map_err(storage)?;
                        }
                    }
                }
                let mut meta = w.open_table(META).map_err(storage)?;
                meta.insert("lsn", lsn.to_string().as_str()).map_err(storage)?;
                meta.insert("hash", self.hash.as_str()).map_err(storage)?;
            }
            w.commit().map_err(storage)
        })();
        if let Err(e) = result {
            if e.is_transient() {
                // redb refuses every later operation on a handle that saw an I/O error.
                self.db = None;
                if let Err(again) = self.reopen() {
                    tracing::warn!(error = %again, "re-opening the dependency ledger failed; retrying with the batch");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<()> {
        self.db = None;
        let db = Database::create(&self.path).map_err(storage)?;
        self.db = Some(db);
        Ok(())
    }

    pub fn current_checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint.clone()
    }

    /// The definition hash this ledger's content must be built from.
    pub fn definition_hash(&self) -> &str {
        &self.hash
    }
}

impl Sink for Ledger {
    fn labels(&self) -> Vec<String> {
        Vec::new()
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint.clone())
    }

    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool> {
        if matches!(mode, BatchMode::Incremental { .. }) && self.checkpoint.as_ref().is_some_and(|c| c.lsn >= lsn) {
            // Already has it: drop what the batch staged.
            self.staged.overlay.clear();
            self.staged.cleared.clear();
            return Ok(false);
        }
        let lsn = self.checkpoint.as_ref().map_or(lsn, |c| if mode == BatchMode::Repair { c.lsn.max(lsn) } else { lsn });
        self.open = Some((lsn, mode));
        Ok(true)
    }

    async fn write(&mut self, _writes: &[Write]) -> Result<Vec<Rejected>> {
        Ok(Vec::new())
    }

    async fn commit(&mut self) -> Result<()> {
        let Some((lsn, mode)) = self.open.take() else { return Ok(()) };
        tokio::task::block_in_place(|| self.commit_blocking(lsn, matches!(mode, BatchMode::Replace | BatchMode::Rewrite)))
    }

    async fn abort(&mut self) {
        // The staged overlay stays: a retried batch stages the same changes again on replay, and
        // keeping them lets a retry of the same batch commit them.
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn stages_commits_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path(), "p", "h1").unwrap();
        assert!(l.checkpoint().await.unwrap().is_none());
        l.stage(0, vec!["7".into()], Some(vec!["42".into()]));
        assert_eq!(l.lookup(0, &["7".to_string()]).unwrap(), Some(vec!["42".to_string()]));
        assert!(l.begin(Lsn(100), BatchMode::Incremental { clear_all: false }).await.unwrap());
        l.commit().await.unwrap();
        drop(l);
        let mut l = Ledger::open(dir.path(), "p", "h1").unwrap();
        assert_eq!(l.checkpoint().await.unwrap().unwrap().lsn, Lsn(100));
        assert_eq!(l.lookup(0, &["7".to_string()]).unwrap(), Some(vec!["42".to_string()]));
        assert_eq!(l.lookup(1, &["7".to_string()]).unwrap(), None);
        // Replays at or below the checkpoint are skipped.
        l.stage(0, vec!["7".into()], None);
        assert!(!l.begin(Lsn(100), BatchMode::Incremental { clear_all: false }).await.unwrap());
        assert_eq!(l.lookup(0, &["7".to_string()]).unwrap(), Some(vec!["42".to_string()]));
        l.stage(0, vec!["7".into()], None);
        l.clear_relation(1);
        assert!(l.begin(Lsn(200), BatchMode::Incremental { clear_all: false }).await.unwrap());
        l.commit().await.unwrap();
        assert_eq!(l.lookup(0, &["7".to_string()]).unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_held_batch_is_seen_by_the_next_one_and_written_only_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path(), "p", "h1").unwrap();
        let inc = BatchMode::Incremental { clear_all: false };
        let id = |s: &str| vec![s.to_string()];
        l.stage(0, id("1"), Some(id("a")));
        l.stage(1, id("9"), Some(id("x")));
        assert!(l.begin(Lsn(10), inc).await.unwrap());
        l.commit().await.unwrap();
        // Batch 20 is held while its data sinks commit; batch 30 stages on top of it.
        l.stage(0, id("1"), Some(id("b")));
        l.stage(0, id("2"), Some(id("c")));
        assert!(l.begin(Lsn(20), inc).await.unwrap());
        l.hold().unwrap();
        assert_eq!(l.lookup(0, &id("1")).unwrap(), Some(id("b")), "the next batch sees the held one");
        l.stage(0, id("2"), None);
        l.clear_relation(1);
        assert_eq!(l.lookup(0, &id("2")).unwrap(), None);
        assert_eq!(l.lookup(1, &id("9")).unwrap(), None);
        assert_eq!(l.checkpoint().await.unwrap().unwrap().lsn, Lsn(10), "nothing written before the data is durable");
        l.commit_held().unwrap();
        assert_eq!(l.checkpoint().await.unwrap().unwrap().lsn, Lsn(20));
        // What batch 30 staged is not in the written batch 20.
        assert_eq!(l.lookup(0, &id("2")).unwrap(), None);
        l.discard_staged();
        assert_eq!(l.lookup(0, &id("2")).unwrap(), Some(id("c")), "batch 20 wrote key 2; batch 30's delete was only staged");
        assert_eq!(l.lookup(1, &id("9")).unwrap(), Some(id("x")));
        // A held batch whose data sinks failed goes back under the next one's rows.
        l.stage(0, id("3"), Some(id("d")));
        l.stage(1, id("8"), Some(id("y")));
        assert!(l.begin(Lsn(40), inc).await.unwrap());
        l.hold().unwrap();
        l.clear_relation(1);
        l.stage(0, id("1"), Some(id("e")));
        l.release_held();
        assert!(l.begin(Lsn(50), inc).await.unwrap());
        l.commit().await.unwrap();
        drop(l);
        let l = Ledger::open(dir.path(), "p", "h1").unwrap();
        assert_eq!(l.current_checkpoint().unwrap().lsn, Lsn(50));
        assert_eq!(l.lookup(0, &id("3")).unwrap(), Some(id("d")), "the released batch's rows were committed with the next");
        assert_eq!(l.lookup(0, &id("1")).unwrap(), Some(id("e")), "the later value wins");
        assert_eq!(l.lookup(1, &id("8")).unwrap(), None, "the later TRUNCATE removes the released batch's rows");
        assert_eq!(l.lookup(1, &id("9")).unwrap(), None);
    }
}
