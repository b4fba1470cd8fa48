//! The state the daemon shares with the HTTP API and `deriver status`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::sink::tantivy::SearchIndex;
use crate::source::Lsn;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    pub server_lsn: Option<Lsn>,
    pub slot: Option<SlotStatus>,
    pub pipelines: Vec<PipelineStatus>,
    /// Added by the daemon's `/v1/status` (not part of the spec's document): `owner` or `standby`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Added by the daemon's `/v1/status` while standing by: the process holding the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<serde_json::Value>,
    /// Added by the daemon's `/v1/status`: the health of each dependency it reported on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<BTreeMap<String, crate::health::DependencyHealth>>,
    /// An addition to the spec's document: state of pipelines that no file declares any more
    /// (index folders, files, Redis bookkeeping), which `deriver prune` removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphans: Option<crate::runtime::orphans::Orphans>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotStatus {
    pub name: String,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub wal_status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub name: String,
    pub state: String,
    pub generation: Option<u64>,
    pub definition_hash: String,
    pub applied_lsn: Option<Lsn>,
    pub targets: BTreeMap<String, Option<Lsn>>,
    pub lag_bytes: Option<u64>,
    pub dead_letters: u64,
    /// The first dead letters, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letter_list: Vec<crate::runtime::dead_letters::DeadLetter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A full reprocess in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reindex: Option<ReindexStatus>,
    /// The last `deriver audit` of this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditSummary {
    pub finished_at: String,
    pub records: u64,
    pub drifted: usize,
    pub repaired: usize,
    pub remaining: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReindexStatus {
    /// The generation being built (search) or null (Redis views only).
    pub generation: Option<u64>,
    pub rows_done: u64,
    pub rows_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// `deriving`, `writing` (the new generation is written out) or `catching up` (with what
    /// changed meanwhile, then the swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// Requests the HTTP admin endpoint hands to the running daemon.
pub enum AdminRequest {
    /// Full reprocess of these pipelines; replies with the ones started.
    Reindex { pipelines: Vec<String>, reply: tokio::sync::oneshot::Sender<crate::error::Result<Vec<String>>> },
    /// Swap a pipeline's search indexes back to their previous generation.
    Rollback { pipeline: String, reply: tokio::sync::oneshot::Sender<crate::error::Result<Vec<u64>>> },
    /// Re-derive these source keys (key text) through the normal write path (audit repairs).
    Repair { pipeline: String, keys: Vec<String>, reply: tokio::sync::oneshot::Sender<crate::error::Result<usize>> },
}

impl PipelineStatus {
    /// `applied_lsn` = the minimum over targets.
    pub fn refresh(&mut self, server_lsn: Option<Lsn>) {
        self.applied_lsn = if self.targets.values().any(Option::is_none) { None } else { self.targets.values().filter_map(|v| *v).min() };
        self.lag_bytes = match (server_lsn, self.applied_lsn) {
            (Some(s), Some(a)) => Some(s.0.saturating_sub(a.0)),
            _ => None,
        };
    }
}

/// One applied batch of one pipeline: the source keys whose records were written or removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeNotice {
    pub pipeline: String,
    pub lsn: Lsn,
    pub keys: Vec<String>,
    pub deleted: Vec<String>,
}

/// How many recent change notices are kept for `changes?since=` resumption ...
pub const CHANGE_HISTORY: usize = 10_000;
/// ... and how much memory they may hold together (key text plus per-key overhead).
pub const CHANGE_HISTORY_BYTES: usize = 32 << 20;

impl ChangeNotice {
    /// Approximate heap bytes held by the notice.
    pub fn bytes(&self) -> usize {
        let key = |k: &String| k.len() + std::mem::size_of::<String>();
        std::mem::size_of::<ChangeNotice>() + self.pipeline.len() + self.keys.iter().map(key).sum::<usize>() + self.deleted.iter().map(key).sum::<usize>()
    }
}

/// The most recent change notices, bounded by count and by bytes, oldest first.
#[derive(Default)]
pub struct ChangeHistory {
    notices: std::collections::VecDeque<Arc<ChangeNotice>>,
    bytes: usize,
    /// The newest LSN dropped to stay within bounds: a client resuming before it missed changes.
    dropped_through: Option<Lsn>,
}

impl ChangeHistory {
    pub fn push(&mut self, notice: Arc<ChangeNotice>) {
        self.bytes += notice.bytes();
        self.notices.push_back(notice);
        while self.notices.len() > CHANGE_HISTORY || (self.bytes > CHANGE_HISTORY_BYTES && self.notices.len() > 1) {
            let Some(old) = self.notices.pop_front() else { break };
            self.bytes -= old.bytes();
            self.dropped_through = self.dropped_through.max(Some(old.lsn));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ChangeNotice>> {
        self.notices.iter()
    }

    pub fn dropped_through(&self) -> Option<Lsn> {
        self.dropped_through
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.notices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notices.is_empty()
    }
}

pub struct Shared {
    pub status: RwLock<Option<StatusDoc>>,
    /// Live search index generations by index name.
    pub indexes: RwLock<BTreeMap<String, Arc<SearchIndex>>>,
    /// Bumped whenever any applied LSN moves; wait on it to read your writes.
    pub progress: tokio::sync::watch::Sender<u64>,
    /// Applied batches, as they happen.
    pub changes: tokio::sync::broadcast::Sender<Arc<ChangeNotice>>,
    /// The most recent notices (bounded by count and bytes), oldest first.
    pub history: RwLock<ChangeHistory>,
    /// Where the admin endpoint sends requests (set by the running daemon).
    pub admin: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<AdminRequest>>>,
    /// `Some` while this process stands by, with the process holding the slot (when known).
    pub standby: RwLock<Option<Option<crate::runtime::lease::Holder>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: RwLock::new(None),
            indexes: RwLock::new(BTreeMap::new()),
            progress: tokio::sync::watch::channel(0).0,
            changes: tokio::sync::broadcast::channel(1024).0,
            history: RwLock::new(ChangeHistory::default()),
            admin: std::sync::Mutex::new(None),
            standby: RwLock::new(None),
        }
    }
}

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut StatusDoc)) {
        let mut guard = self.status.write().expect("status lock");
        if let Some(doc) = guard.as_mut() {
            f(doc);
            let server = doc.server_lsn;
            for p in &mut doc.pipelines {
                p.refresh(server);
            }
        }
        drop(guard);
        self.progress.send_modify(|v| *v += 1);
    }

    /// Records and broadcasts an applied batch.
    pub fn notify_change(&self, notice: ChangeNotice) {
        let notice = Arc::new(notice);
        self.history.write().expect("history lock").push(notice.clone());
        let _ = self.changes.send(notice);
    }

    /// The applied LSN of a pipeline (`None` when unknown or not yet applied).
    pub fn pipeline_applied(&self, pipeline: &str) -> Option<Lsn> {
        let guard = self.status.read().expect("status lock");
        guard.as_ref()?.pipelines.iter().find(|p| p.name == pipeline)?.applied_lsn
    }

    /// The applied LSN of a search index (its `search:<index>` target).
    pub fn index_applied(&self, index: &str) -> Option<Lsn> {
        let guard = self.status.read().expect("status lock");
        let label = format!("search:{index}");
        guard.as_ref()?.pipelines.iter().find_map(|p| p.targets.get(&label).copied().flatten())
    }

    /// Standing by (`Some`, with the owner when known) or owning the slot (`None`). Standing by
    /// forgets the status and the index readers of an earlier ownership: they would go stale.
    /// With no known owner (the lock session was lost with Postgres, say), the last status is
    /// kept with every pipeline marked `standby`, so an outage stays visible per pipeline.
    pub fn set_standby(&self, standby: Option<Option<crate::runtime::lease::Holder>>) {
        match &standby {
            Some(Some(_)) => {
                *self.status.write().expect("status lock") = None;
                self.indexes.write().expect("indexes lock").clear();
            }
            Some(None) => {
                if let Some(doc) = self.status.write().expect("status lock").as_mut() {
                    for p in &mut doc.pipelines {
                        p.state = "standby".into();
                    }
                }
                self.indexes.write().expect("indexes lock").clear();
            }
            None => {}
        }
        if standby.is_some() {
            *self.admin.lock().expect("admin lock") = None;
        }
        *self.standby.write().expect("standby lock") = standby;
        self.progress.send_modify(|v| *v += 1);
    }

    pub fn standby(&self) -> Option<Option<crate::runtime::lease::Holder>> {
        self.standby.read().expect("standby lock").clone()
    }

    pub fn snapshot(&self) -> Option<StatusDoc> {
        self.status.read().expect("status lock").clone()
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn notice(lsn: u64, keys: usize, key_len: usize) -> Arc<ChangeNotice> {
        Arc::new(ChangeNotice { pipeline: "p".into(), lsn: Lsn(lsn), keys: (0..keys).map(|i| format!("{i:0key_len$}")).collect(), deleted: Vec::new() })
    }

    #[test]
    fn the_change_history_is_bounded_by_bytes_and_says_what_it_dropped() {
        let mut h = ChangeHistory::default();
        // 10,000-key notices of 100-byte keys: ~1.2 MB each, far fewer than CHANGE_HISTORY fit.
        for lsn in 1..=100 {
            h.push(notice(lsn, 10_000, 100));
            assert!(h.bytes() <= CHANGE_HISTORY_BYTES, "{} bytes after {lsn}", h.bytes());
        }
        assert!(h.len() < 100 && h.len() > 10, "{}", h.len());
        let oldest = h.iter().next().unwrap().lsn;
        assert_eq!(h.dropped_through(), Some(Lsn(oldest.0 - 1)));
        assert_eq!(h.bytes(), h.iter().map(|n| n.bytes()).sum::<usize>());
        // Small notices are bounded by count.
        let mut h = ChangeHistory::default();
        for lsn in 1..=(CHANGE_HISTORY as u64 + 3) {
            h.push(notice(lsn, 1, 4));
        }
        assert_eq!(h.len(), CHANGE_HISTORY);
        assert_eq!(h.dropped_through(), Some(Lsn(3)));
        // One notice larger than the whole bound is still kept (the newest is always there).
        let mut h = ChangeHistory::default();
        h.push(notice(1, 400_000, 100));
        assert_eq!(h.len(), 1);
        assert_eq!(h.dropped_through(), None);
    }
}
