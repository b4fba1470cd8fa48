//! Sinks: where derived records go. Every sink has the same shape ([`Sink`]): it reports the
//! checkpoint stored *with* its data, and applies a batch as `begin` → `write`… → `commit`, where
//! `commit` makes the data and the batch's LSN durable in one atomic step. `begin` returns `false`
//! when the sink already holds that LSN, so replays after a crash are skipped per sink.

pub mod ledger;
pub mod memory;
pub mod provenance;
pub mod redis;
pub mod tantivy;

use serde_json::{Map, Value};

use crate::error::Result;
use crate::source::Lsn;

/// One derived record, as Postgres built it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The source key's text (`key::text`, composite keys joined with `:`).
    pub key: String,
    /// The record as compact JSON text: Postgres's values (exact digits) in declared field order.
    pub json: String,
    /// The parsed record (field order kept).
    pub value: Map<String, Value>,
    /// `::text` of each field in `Pipeline::text_fields()` (None = NULL).
    pub texts: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
pub enum Write {
    Upsert(Record),
    /// The source row is gone or no longer passes the filter.
    Delete {
        key: String,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Upsert(r) => &r.key,
            Write::Delete { key } => key,
        }
    }
}

/// A stable 64-bit hash of a record's JSON text, stored with every search document so audits can
/// compare targets with the source without reading documents.
pub fn content_hash(json: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(json.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// What a sink stored beside its data at its last commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub lsn: Lsn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_hash: Option<String>,
}

/// How a batch relates to what the sink holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// Changes on top of the current content; `clear_all` first removes every record (TRUNCATE).
    Incremental { clear_all: bool },
    /// The batch is the pipeline's entire content (initial snapshot, resync): records it does not
    /// mention are removed at commit. Readers keep the old content until then where the sink can
    /// (search); Redis views are rewritten in place.
    Replace,
    /// Like `Replace`, but while the live stream keeps writing the same sink (a background full
    /// reprocess of Redis views): the stored checkpoint is neither cleared nor moved.
    Rewrite,
    /// Rewrites the given records even when the sink's checkpoint already covers `lsn` (catch-up
    /// after a rewrite, audit repairs); the checkpoint only ever moves forward.
    Repair,
}

/// A record that could not be derived or that a sink could not take (value does not fit, too
/// large, …); the rest of the batch goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub reason: String,
    /// Which step refused it: decides how its dead letter is retried, never the reason's text.
    pub cause: RejectCause,
}

impl Rejected {
    /// A target refused the derived value.
    pub fn by_target(key: impl Into<String>, reason: impl Into<String>) -> Rejected {
        Rejected { key: key.into(), reason: reason.into(), cause: RejectCause::Target }
    }

    /// The derivation of this key failed in Postgres.
    pub fn by_derivation(key: impl Into<String>, reason: impl Into<String>) -> Rejected {
        Rejected { key: key.into(), reason: reason.into(), cause: RejectCause::Derivation }
    }
}

/// Why a record was rejected (kept with its dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCause {
    /// The derivation query failed for this key (an SQL error on its row, a schema change in
    /// progress): once the pipeline's SQL derives again, it may well work too.
    Derivation,
    /// A target refused the derived value (does not fit a declared search type, over a size
    /// limit, no search id): only a change of the row helps.
    Target,
}

#[allow(async_fn_in_trait)]
pub trait Sink {
    /// `search:<index>` or `redis:<template>` — the name `status` shows.
    fn labels(&self) -> Vec<String>;
    /// The checkpoint committed with the sink's data (`None`: never committed).
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>>;
    /// Opens a batch ending at `lsn`. `false`: the sink already has it; skip the batch.
    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool>;
    /// Adds writes to the open batch. Nothing is visible before `commit`.
    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>>;
    /// The records this sink would reject, without writing (so every target can skip them and
    /// the targets stay consistent).
    fn validate(&self, _writes: &[Write]) -> Vec<Rejected> {
        Vec::new()
    }
    /// Makes the batch and its LSN durable and visible together.
    async fn commit(&mut self) -> Result<()>;
    /// Starts the commit of the open batch and returns as soon as the rest of it runs elsewhere
    /// (the index writer's thread), with a handle that tells when it ended; the sink learns the
    /// outcome through [`Sink::finish_commit`], and only then moves its checkpoint. Meanwhile a
    /// next batch may begin and take writes: it is committed after this one, never instead of
    /// it (a sink refuses to commit a batch that began before it learned of a failed commit).
    /// Sinks that commit in place do it here and return a handle that is ready.
    async fn start_commit(&mut self) -> Result<Committing> {
        self.commit().await.map(|()| Committing::ready())
    }
    /// The outcome of the commit [`Sink::start_commit`] started (returned, after recording it).
    fn finish_commit(&mut self, outcome: Result<()>) -> Result<()> {
        outcome
    }
    /// Drops the open batch.
    async fn abort(&mut self);
}

/// A commit running in the background (see [`Sink::start_commit`]). Waiting is cancel-safe: a
/// wait dropped half-way (another event came first) loses nothing and can be resumed.
#[derive(Debug)]
pub struct Committing {
    rx: Option<tokio::sync::oneshot::Receiver<CommitOutcome>>,
    outcome: Option<Result<()>>,
    ended_at: Option<std::time::Instant>,
}

/// What a background commit sends back: how it ended, and when.
pub type CommitOutcome = (Result<()>, std::time::Instant);

impl Committing {
    /// A commit that already ended well.
    pub fn ready() -> Committing {
        Committing { rx: None, outcome: Some(Ok(())), ended_at: Some(std::time::Instant::now()) }
    }

    /// A commit whose outcome arrives on `rx` (a dropped sender: the writer stopped).
    pub fn waiting(rx: tokio::sync::oneshot::Receiver<CommitOutcome>) -> Committing {
        Committing { rx: Some(rx), outcome: None, ended_at: None }
    }

    fn stopped() -> CommitOutcome {
        (Err(crate::error::Error::fatal("the index writer stopped during a commit")), std::time::Instant::now())
    }

    /// Waits until the commit ended.
    pub async fn wait(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            let (outcome, at) = rx.await.unwrap_or_else(|_| Committing::stopped());
            (self.outcome, self.ended_at, self.rx) = (Some(outcome), Some(at), None);
        }
    }

    /// Whether it ended (without waiting).
    pub fn ended(&mut self) -> bool {
        if let Some(rx) = self.rx.as_mut() {
            let (outcome, at) = match rx.try_recv() {
                Ok(ended) => ended,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return false,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Committing::stopped(),
            };
            (self.outcome, self.ended_at, self.rx) = (Some(outcome), Some(at), None);
        }
        true
    }

    /// When it ended (once it did): a commit seen late still reports how long it took.
    pub fn ended_at(&self) -> Option<std::time::Instant> {
        self.ended_at
    }

    /// The outcome, once [`Committing::wait`] returned (or [`Committing::ended`] said so).
    pub fn outcome(self) -> Result<()> {
        self.outcome.unwrap_or_else(|| Err(crate::error::Error::fatal("a commit's outcome was read before it ended")))
    }
}

/// The sinks of one pipeline, dispatched without `dyn`. A handful exist per process, so the size
/// of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnySink {
    Search(tantivy::SearchSink),
    Redis(redis::RedisSink),
    /// Internal: the pipeline's dependency ledger (always last, so it commits last).
    Ledger(ledger::Ledger),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnySink::Search($s) => $e,
            AnySink::Redis($s) => $e,
            AnySink::Ledger($s) => $e,
        }
    };
}

impl AnySink {
    /// The checkpoint of the last commit (no I/O).
    pub fn current_checkpoint(&self) -> Option<Checkpoint> {
        match self {
            AnySink::Search(s) => s.current_checkpoint(),
            AnySink::Redis(s) => s.current_checkpoint(),
            AnySink::Ledger(s) => s.current_checkpoint(),
        }
    }

    /// The definition hash the sink's content must be built from (records + its own targets).
    pub fn definition_hash(&self) -> &str {
        match self {
            AnySink::Search(s) => s.definition_hash(),
            AnySink::Redis(s) => s.definition_hash(),
            AnySink::Ledger(s) => s.definition_hash(),
        }
    }

    /// The newest LSN the sink holds durably (Redis trails its fsync window).
    pub fn durable_lsn(&mut self) -> Option<Lsn> {
        match self {
            AnySink::Redis(s) => s.durable_lsn(),
            other => other.current_checkpoint().map(|c| c.lsn),
        }
    }
}

impl Sink for AnySink {
    fn labels(&self) -> Vec<String> {
        dispatch!(self, s => s.labels())
    }
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        dispatch!(self, s => s.checkpoint().await)
    }
    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool> {
        dispatch!(self, s => s.begin(lsn, mode).await)
    }
    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>> {
        dispatch!(self, s => s.write(writes).await)
    }
    fn validate(&self, writes: &[Write]) -> Vec<Rejected> {
        dispatch!(self, s => s.validate(writes))
    }
    async fn commit(&mut self) -> Result<()> {
        dispatch!(self, s => s.commit().await)
    }
    async fn start_commit(&mut self) -> Result<Committing> {
        dispatch!(self, s => s.start_commit().await)
    }
    fn finish_commit(&mut self, outcome: Result<()>) -> Result<()> {
        dispatch!(self, s => s.finish_commit(outcome))
    }
    async fn abort(&mut self) {
        dispatch!(self, s => s.abort().await)
    }
}
