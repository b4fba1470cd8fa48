//! The adapter that owns `pg_walstream`: slot creation with an exported snapshot, streaming from
//! a position, keepalive-driven idle positions and acknowledgements. It maps the crate's events to
//! deriver's [`SourceEvent`]s; no other module touches the replication crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{
    ChangeEvent, ColumnValue, EventType, LogicalReplicationStream, ReplicationError, ReplicationSlotOptions, ReplicationStreamConfig, RowData,
    SharedLsnFeedback, StreamingMode,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ChangeKind, ColumnTexts, Interest, Lsn, RowChange, SourceEvent, TableName};
use crate::error::{Error, ErrorKind, Result};
use crate::health;

/// The dependency name of the replication connection in `http::health`.
const REPLICATION: &str = "replication";

/// Maps a replication error to deriver's kinds: connection trouble is retried, the rest stops.
/// The libpq path of `pg_walstream` reports the server's error as text only (no SQLSTATE), so the
/// few conditions that need their own sentence are recognised by the server's wording here, and
/// only here.
pub fn classify(e: ReplicationError) -> Error {
    let text = crate::redact::redact(&e.to_string());
    let kind = if e.is_transient() || matches!(e, ReplicationError::Io(_) | ReplicationError::Timeout(_)) {
        ErrorKind::Transient
    } else if matches!(e, ReplicationError::Authentication(_) | ReplicationError::Config(_)) {
        ErrorKind::Config
    } else {
        // Connection-level failures while streaming are worth retrying; protocol errors are not.
        match e {
            ReplicationError::PermanentConnection(_) | ReplicationError::ReplicationConnection(_) => ErrorKind::Transient,
            _ => ErrorKind::Fatal,
        }
    };
    match server_condition(&text) {
        Some(lost) => lost.error().with_detail(text),
        None => Error::new(kind, "replication stream error").with_detail(text),
    }
}

/// A server error that means deriver can no longer get every change: it stops, never retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    SlotMissing,
    PublicationMissing,
    SlotInvalidated,
    SlotInUse,
}

impl Lost {
    fn error(self) -> Error {
        match self {
            Lost::SlotMissing => Error::fatal(
                "the replication slot is missing: changes since the sinks' checkpoints are lost to deriver; run `deriver run --resnapshot` to re-derive everything from a new slot",
            ),
            Lost::PublicationMissing => Error::fatal(
                "the publication is missing (dropped while deriver was running?): changes made without it are lost to this slot; run `deriver setup`, then `deriver run --resnapshot`",
            ),
            Lost::SlotInvalidated => Error::fatal(
                "the replication slot was invalidated: Postgres removed WAL deriver had not yet applied (max_slot_wal_keep_size); run `deriver run --resnapshot` to drop the slot and re-derive everything from a new one",
            ),
            Lost::SlotInUse => Error::transient("the replication slot is in use by another process"),
        }
    }
}

/// Which of the [`Lost`] conditions the server's error names, judged by its primary message (the
/// `ERROR:` line; a `CONTEXT:` line names the slot whatever the error is) and, for an
/// invalidated slot, its `DETAIL:`.
fn server_condition(text: &str) -> Option<Lost> {
    let lower = text.to_lowercase();
    let primary = lower.lines().find(|l| l.contains("error:") || l.contains("fatal:")).unwrap_or(&lower);
    if lower.contains("can no longer get changes") || lower.contains("has been invalidated") || primary.contains("invalidated") {
        Some(Lost::SlotInvalidated)
    } else if primary.contains("publication \"") && primary.contains("does not exist") {
        Some(Lost::PublicationMissing)
    } else if primary.contains("replication slot \"") && primary.contains("does not exist") {
        Some(Lost::SlotMissing)
    } else if primary.contains("is active for pid") {
        Some(Lost::SlotInUse)
    } else {
        None
    }
}

impl From<ReplicationError> for Error {
    fn from(e: ReplicationError) -> Self {
        classify(e)
    }
}

fn stream_config(slot: &str, publication: &str) -> ReplicationStreamConfig {
    ReplicationStreamConfig::builder(slot, publication)
        .with_protocol_version(2)
        .with_streaming_mode(StreamingMode::Off)
        .with_feedback_interval(Duration::from_secs(1))
}

/// A freshly created slot whose snapshot is exported and still alive. Read the snapshot on a
/// separate connection (`SET TRANSACTION SNAPSHOT`) before calling [`Replication::start`].
pub struct CreatedSlot {
    pub snapshot_name: String,
    pub replication: Replication,
}

/// A replication connection, not yet streaming.
pub struct Replication {
    stream: LogicalReplicationStream,
}

/// Creates the logical slot with `EXPORT_SNAPSHOT`.
pub async fn create_slot(conninfo: &str, slot: &str, publication: &str) -> Result<CreatedSlot> {
    let options = ReplicationSlotOptions { snapshot: Some("export".to_string()), ..Default::default() };
    let config = stream_config(slot, publication).with_slot_options(options);
    let mut stream = health::observe(REPLICATION, LogicalReplicationStream::new(conninfo, config).await.map_err(classify))?;
    stream.ensure_replication_slot().await.map_err(classify)?;
    let Some(name) = stream.exported_snapshot_name().map(str::to_string) else {
        return Err(Error::fatal(format!("replication slot `{slot}` appeared while deriver was creating it; is another deriver running?")));
    };
    Ok(CreatedSlot { snapshot_name: name, replication: Replication { stream } })
}

/// Opens a replication connection for an existing slot.
pub async fn open(conninfo: &str, slot: &str, publication: &str) -> Result<Replication> {
    let config = stream_config(slot, publication).with_existing_slot_required(true);
    let stream = health::observe(REPLICATION, LogicalReplicationStream::new(conninfo, config).await.map_err(classify))?;
    Ok(Replication { stream })
}

/// Acknowledges positions to the slot. Call it only with positions every sink has made durable.
#[derive(Clone)]
pub struct Acker {
    feedback: Arc<SharedLsnFeedback>,
}

impl Acker {
    pub fn ack(&self, lsn: Lsn) {
        self.feedback.update_flushed_lsn(lsn.0);
        self.feedback.update_applied_lsn(lsn.0);
    }
}

impl Replication {
    /// Starts streaming at `start` and spawns the reader task. Events arrive on the returned
    /// channel (bounded: the reader waits, sending keepalive feedback, when the consumer lags).
    pub async fn start(
        mut self,
        start: Lsn,
        interest: Interest,
        idle: Duration,
        cancel: CancellationToken,
    ) -> Result<(mpsc::Receiver<Result<SourceEvent>>, Acker)> {
        health::observe(REPLICATION, self.stream.start(Some(start.0)).await.map_err(classify))?;
        let acker = Acker { feedback: self.stream.shared_lsn_feedback.clone() };
        let (tx, rx) = mpsc::channel(4096);
        let reader = Reader { stream: self.stream, interest, relations: HashMap::new(), in_txn: false, tx };
        tokio::spawn(reader.run(idle, cancel));
        Ok((rx, acker))
    }
}

type RelationEntry = Option<(Arc<TableName>, Arc<[String]>)>;

/// How often a quiet stream checks whether a keepalive moved the server's position.
const IDLE_POLL: Duration = Duration::from_millis(20);

struct Reader {
    stream: LogicalReplicationStream,
    interest: Interest,
    relations: HashMap<u32, RelationEntry>,
    in_txn: bool,
    tx: mpsc::Sender<Result<SourceEvent>>,
}

impl Reader {
    /// Reads events until cancelled. Between transactions, an `Idle` position is sent as soon as
    /// the server reports (in a keepalive) that its WAL moved past what was delivered — WAL with
    /// nothing for deriver in it, which a reader waiting for a position after its own commit
    /// would otherwise wait for — and at least every `idle` as a heartbeat.
    async fn run(mut self, idle: Duration, cancel: CancellationToken) {
        let token = CancellationToken::new();
        let poll = idle.min(IDLE_POLL);
        let mut reported = Lsn(self.stream.current_lsn());
        let mut last_sent = std::time::Instant::now();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(poll, self.stream.next_event(&token)) => r,
            };
            let event = match next {
                Err(_elapsed) => {
                    let lsn = Lsn(self.stream.current_lsn());
                    if self.in_txn || (lsn <= reported && last_sent.elapsed() < idle) {
                        continue;
                    }
                    SourceEvent::Idle { lsn }
                }
                Ok(Ok(ev)) => match self.map(ev) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        break;
                    }
                },
                Ok(Err(e)) => {
                    let e = classify(e);
                    health::report_error(REPLICATION, &e);
                    let _ = self.tx.send(Err(e)).await;
                    break;
                }
            };
            if !self.deliver(event, &cancel).await {
                break;
            }
            reported = reported.max(Lsn(self.stream.current_lsn()));
            last_sent = std::time::Instant::now();
        }
        let _ = self.stream.stop().await;
    }

    /// Sends one event, keeping the walsender happy with status updates while the consumer is busy.
    async fn deliver(&mut self, event: SourceEvent, cancel: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                permit = self.tx.reserve() => match permit {
                    Ok(p) => { p.send(Ok(event)); return true; }
                    Err(_) => return false,
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if let Err(e) = self.stream.send_feedback().await {
                        tracing::warn!(error = %crate::redact::redact(&e.to_string()), "could not send feedback while the apply loop was busy");
                    }
                }
            }
        }
    }

    fn relation(&mut self, oid: u32, schema: &str, table: &str) -> RelationEntry {
        if let Some(entry) = self.relations.get(&oid) {
            return entry.clone();
        }
        let name = TableName::new(schema, table);
        let entry = self.interest.tables.get(&name).map(|cols| (Arc::new(name.clone()), Arc::from(cols.clone())));
        self.relations.insert(oid, entry.clone());
        entry
    }

    fn map(&mut self, ev: ChangeEvent) -> Result<Option<SourceEvent>> {
        Ok(Some(match ev.event_type {
            EventType::Begin { transaction_id, .. } => {
                self.in_txn = true;
                SourceEvent::Begin { xid: transaction_id }
            }
            EventType::Commit { commit_lsn, end_lsn, commit_timestamp } => {
                self.in_txn = false;
                SourceEvent::Commit { commit_lsn: Lsn(commit_lsn.value()), end_lsn: Lsn(end_lsn.value()), committed: commit_timestamp.into() }
            }
            EventType::Insert { schema, table, relation_oid, data } => {
                let Some((name, cols)) = self.relation(relation_oid, &schema, &table) else { return Ok(None) };
                SourceEvent::Change(RowChange { table: name, kind: ChangeKind::Insert, new: Some(texts(&data, &cols)), old: None })
            }
            EventType::Update { schema, table, relation_oid, old_data, new_data, .. } => {
                let Some((name, cols)) = self.relation(relation_oid, &schema, &table) else { return Ok(None) };
                SourceEvent::Change(RowChange {
                    table: name,
                    kind: ChangeKind::Update,
                    new: Some(texts(&new_data, &cols)),
                    old: old_data.as_ref().map(|d| texts(d, &cols)),
                })
            }
            EventType::Delete { schema, table, relation_oid, old_data, .. } => {
                let Some((name, cols)) = self.relation(relation_oid, &schema, &table) else { return Ok(None) };
                SourceEvent::Change(RowChange { table: name, kind: ChangeKind::Delete, new: None, old: Some(texts(&old_data, &cols)) })
            }
            EventType::Truncate { tables, .. } => {
                let hit: Vec<Arc<TableName>> = self
                    .interest
                    .tables
                    .keys()
                    .filter(|t| tables.iter().any(|q| **q == *format!("{}.{}", t.schema, t.name)))
                    .map(|t| Arc::new(t.clone()))
                    .collect();
                if hit.is_empty() {
                    return Ok(None);
                }
                SourceEvent::Truncate { tables: hit }
            }
            EventType::Relation { relation_id, namespace, relation_name, columns, .. } => {
                // Schema changed or first sighting: forget the cached mapping, and stop loudly when
                // a column deriver reads is gone (renamed or dropped): its changes would otherwise
                // look like NULL keys and be skipped.
                self.relations.remove(&relation_id);
                let name = TableName::new(&*namespace, &*relation_name);
                let present: Vec<&str> = columns.iter().map(|c| &*c.name).collect();
                if self.interest.missing_columns(&name, &present).is_some() {
                    // The consumer stops the pipelines that read them, before any change of the
                    // table under its new shape reaches them.
                    return Ok(Some(SourceEvent::ColumnsLost { table: Arc::new(name), present: present.iter().map(|c| c.to_string()).collect() }));
                }
                return Ok(None);
            }
            EventType::StreamStart { .. }
            | EventType::StreamStop
            | EventType::StreamCommit { .. }
            | EventType::StreamAbort { .. }
            | EventType::BeginPrepare { .. }
            | EventType::Prepare { .. }
            | EventType::CommitPrepared { .. }
            | EventType::RollbackPrepared { .. }
            | EventType::StreamPrepare { .. } => {
                return Err(Error::fatal("the server sent a streamed or two-phase transaction, which this deriver did not ask for"))
            }
            _ => return Ok(None),
        }))
    }
}

/// The text of the wanted columns of a row image. A column the image does not carry (not part of
/// the replica identity, or unchanged TOAST) is `None`.
fn texts(row: &RowData, cols: &[String]) -> ColumnTexts {
    cols.iter()
        .map(|c| match row.get(c) {
            Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(ColumnValue::Null) | None => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_that_lose_changes_are_told_apart_by_their_primary_message() {
        // The publication dropped while streaming: the CONTEXT line names the slot.
        let dropped = "Replication slot error: [42704] replication stream terminated by server: ERROR:  publication \"deriver\" does not exist\n\
                       CONTEXT:  slot \"s1\", output plugin \"pgoutput\", in the change callback, associated LSN 0/2C57910";
        assert_eq!(server_condition(dropped), Some(Lost::PublicationMissing));
        let invalidated = "Replication slot error: [55000] Query execution failed: ERROR:  cannot read from logical replication slot \"s1\"\n\
                           DETAIL:  This slot has been invalidated because it exceeded the maximum reserved size.";
        assert_eq!(server_condition(invalidated), Some(Lost::SlotInvalidated));
        assert_eq!(server_condition("ERROR:  can no longer get changes from replication slot \"s1\""), Some(Lost::SlotInvalidated));
        assert_eq!(server_condition("ERROR:  replication slot \"s1\" does not exist"), Some(Lost::SlotMissing));
        assert_eq!(server_condition("ERROR:  replication slot \"s1\" is active for PID 42"), Some(Lost::SlotInUse));
        assert_eq!(server_condition("FATAL:  terminating connection due to administrator command"), None);
        assert!(Lost::PublicationMissing.error().message.contains("publication is missing"));
        assert!(!Lost::SlotInvalidated.error().is_transient());
        assert!(Lost::SlotInUse.error().is_transient());
    }
}
