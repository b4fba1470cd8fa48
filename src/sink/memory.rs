//! A sink that keeps its records in memory: the same shape as the real ones (`begin` → `write`…
//! → `commit`, records and checkpoint stored in one step), for tests of the runtime's decisions
//! without Postgres, Redis or an index. It can be told to fail its next commits with a retryable
//! error, and it remembers every commit with its LSN.

use std::collections::BTreeMap;

use super::{BatchMode, Checkpoint, Committing, Rejected, Sink, Write};
use crate::error::{Error, Result};
use crate::source::Lsn;

/// One commit the sink made: its LSN and the keys written (`None`: deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub lsn: Lsn,
    pub writes: BTreeMap<String, Option<String>>,
}

/// An open batch.
#[derive(Debug)]
struct Open {
    lsn: Lsn,
    mode: BatchMode,
    writes: BTreeMap<String, Option<String>>,
    /// Began with no commit's outcome unseen.
    follows_outcome: bool,
}

#[derive(Debug, Default)]
pub struct MemorySink {
    /// The committed records: key → compact JSON.
    pub records: BTreeMap<String, String>,
    pub checkpoint: Option<Checkpoint>,
    /// Every commit, in order.
    pub commits: Vec<Commit>,
    /// Commits refused so far (told by [`MemorySink::fail_commits`]).
    pub failed_commits: usize,
    fail_next: usize,
    open: Option<Open>,
    /// Commits run "in the background", like the index writer's: `start_commit` returns at
    /// once and the commit lands when the test calls [`MemorySink::land`].
    background: bool,
    /// A background commit that has not landed yet, and where its outcome goes.
    landing: Option<(Open, tokio::sync::oneshot::Sender<super::CommitOutcome>)>,
    /// A commit was started and its outcome not yet seen (`finish_commit`).
    committing: bool,
    /// A background commit failed: batches that began before its outcome was seen are refused.
    refusing: bool,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// The next `n` commits fail with a retryable error, storing nothing.
    pub fn fail_commits(&mut self, n: usize) {
        self.fail_next = n;
    }

    /// Whether a batch is open (begun, neither committed nor aborted).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Commits from now on run in the background (see [`MemorySink::land`]).
    pub fn commit_in_background(&mut self) {
        self.background = true;
    }

    /// Whether a background commit waits to land.
    pub fn landing(&self) -> bool {
        self.landing.is_some()
    }

    /// The background commit (if any) ends now: stored, or failed if told to fail.
    pub fn land(&mut self) {
        if let Some((open, reply)) = self.landing.take() {
            let outcome = self.store(open);
            self.refusing |= outcome.is_err();
            let _ = reply.send((outcome, std::time::Instant::now()));
        }
    }

    /// Stores a batch with its checkpoint in one step, or fails it when told to.
    fn store(&mut self, open: Open) -> Result<()> {
        if self.refusing && !open.follows_outcome {
            return Err(Error::transient("a commit before this batch failed"));
        }
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.failed_commits += 1;
            return Err(Error::transient("the memory sink was told to fail this commit"));
        }
        let replace = matches!(open.mode, BatchMode::Replace | BatchMode::Incremental { clear_all: true });
        if replace {
            self.records.clear();
        }
        for (k, v) in &open.writes {
            match v {
                Some(json) => self.records.insert(k.clone(), json.clone()),
                None => self.records.remove(k),
            };
        }
        let lsn = match (&self.checkpoint, open.mode) {
            // A repair or a rewrite never moves the checkpoint back.
            (Some(c), BatchMode::Repair | BatchMode::Rewrite) => c.lsn.max(open.lsn),
            _ => open.lsn,
        };
        self.checkpoint = Some(Checkpoint { lsn, definition_hash: None });
        self.commits.push(Commit { lsn, writes: open.writes });
        Ok(())
    }
}

impl Sink for MemorySink {
    fn labels(&self) -> Vec<String> {
        vec!["memory".into()]
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint.clone())
    }

    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool> {
        let covered = self.checkpoint.as_ref().is_some_and(|c| c.lsn >= lsn);
        if covered && matches!(mode, BatchMode::Incremental { .. }) {
            return Ok(false);
        }
        if !self.committing {
            self.refusing = false;
        }
        self.open = Some(Open { lsn, mode, writes: BTreeMap::new(), follows_outcome: !self.committing });
        Ok(true)
    }

    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>> {
        let open = self.open.as_mut().ok_or_else(|| Error::fatal("write without begin"))?;
        for w in writes {
            let value = match w {
                Write::Upsert(r) => Some(r.json.clone()),
                Write::Delete { .. } => None,
            };
            open.writes.insert(w.key().to_string(), value);
        }
        Ok(Vec::new())
    }

    async fn commit(&mut self) -> Result<()> {
        let open = self.open.take().ok_or_else(|| Error::fatal("commit without begin"))?;
        if self.committing {
            return Err(Error::fatal("a commit started before the previous one's outcome was seen"));
        }
        self.store(open)
    }

    async fn start_commit(&mut self) -> Result<Committing> {
        if !self.background {
            return self.commit().await.map(|()| Committing::ready());
        }
        let open = self.open.take().ok_or_else(|| Error::fatal("commit without begin"))?;
        if self.committing {
            return Err(Error::fatal("a commit started before the previous one's outcome was seen"));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.landing = Some((open, reply));
        self.committing = true;
        Ok(Committing::waiting(rx))
    }

    fn finish_commit(&mut self, outcome: Result<()>) -> Result<()> {
        self.committing = false;
        outcome
    }

    async fn abort(&mut self) {
        self.open = None;
        if !self.committing {
            self.refusing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Record;

    fn upsert(key: &str, json: &str) -> Write {
        Write::Upsert(Record { key: key.into(), json: json.into(), value: serde_json::from_str(json).unwrap(), texts: Vec::new() })
    }

    #[tokio::test]
    async fn records_and_checkpoint_move_together_and_a_failed_commit_stores_nothing() {
        let mut s = MemorySink::new();
        let inc = BatchMode::Incremental { clear_all: false };
        assert!(s.begin(Lsn(10), inc).await.unwrap());
        s.write(&[upsert("1", r#"{"a":1}"#), upsert("2", r#"{"a":2}"#)]).await.unwrap();
        s.commit().await.unwrap();
        assert_eq!(s.checkpoint().await.unwrap().map(|c| c.lsn), Some(Lsn(10)));
        assert_eq!(s.records.len(), 2);
        // A replayed batch is skipped.
        assert!(!s.begin(Lsn(10), inc).await.unwrap());
        s.fail_commits(1);
        assert!(s.begin(Lsn(20), inc).await.unwrap());
        s.write(&[Write::Delete { key: "1".into() }]).await.unwrap();
        assert!(s.commit().await.unwrap_err().is_transient());
        assert_eq!((s.records.len(), s.checkpoint.as_ref().map(|c| c.lsn), s.failed_commits), (2, Some(Lsn(10)), 1));
        assert!(s.begin(Lsn(20), inc).await.unwrap());
        s.write(&[Write::Delete { key: "1".into() }]).await.unwrap();
        s.abort().await;
        assert!(!s.is_open());
        assert!(s.begin(Lsn(20), inc).await.unwrap());
        s.write(&[Write::Delete { key: "1".into() }]).await.unwrap();
        s.commit().await.unwrap();
        assert_eq!(s.records.keys().collect::<Vec<_>>(), vec!["2"]);
        assert_eq!(s.commits.iter().map(|c| c.lsn).collect::<Vec<_>>(), vec![Lsn(10), Lsn(20)]);
        // A repair at an older LSN keeps the checkpoint.
        assert!(s.begin(Lsn(5), BatchMode::Repair).await.unwrap());
        s.commit().await.unwrap();
        assert_eq!(s.checkpoint.as_ref().map(|c| c.lsn), Some(Lsn(20)));
    }
}
