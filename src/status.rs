//! The shared status and health documents: the plain data the daemon publishes (`/v1/status`,
//! `/readyz`), `deriver status` prints and the commands read back — the status document, each
//! pipeline's entry and what they name (dead letters, orphans, the lock holder). The behaviour
//! that fills them lives in `runtime` (`runtime/status.rs`, `dead_letters.rs`, `orphans.rs`,
//! `lease.rs`); their JSON is the public API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    pub orphans: Option<Orphans>,
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
    pub dead_letter_list: Vec<DeadLetter>,
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

impl PipelineStatus {
    /// The entry of a pipeline in `state`, with nothing applied or counted yet.
    pub fn new(def: &crate::pipeline::Pipeline, state: &str) -> PipelineStatus {
        PipelineStatus {
            name: def.name.clone(),
            state: state.to_string(),
            generation: None,
            definition_hash: def.hash.clone(),
            applied_lsn: None,
            targets: Default::default(),
            lag_bytes: None,
            dead_letters: 0,
            dead_letter_list: Vec::new(),
            description: def.description.clone(),
            owner: def.owner.clone(),
            error: None,
            reindex: None,
            audit: None,
        }
    }

    /// `applied_lsn` = the minimum over targets.
    pub fn refresh(&mut self, server_lsn: Option<Lsn>) {
        self.applied_lsn = if self.targets.values().any(Option::is_none) { None } else { self.targets.values().filter_map(|v| *v).min() };
        self.lag_bytes = match (server_lsn, self.applied_lsn) {
            (Some(s), Some(a)) => Some(s.0.saturating_sub(a.0)),
            _ => None,
        };
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub key: String,
    pub reason: String,
    /// Which step rejected the record (`None`: recorded by a deriver that did not store it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<crate::sink::RejectCause>,
    pub attempts: u32,
    /// Unix seconds.
    pub first_seen: u64,
    pub next_retry: u64,
}

/// The `orphans` member of the status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Orphans {
    /// Search index folders under `index.dir` that no pipeline declares.
    pub indexes: Vec<OrphanIndex>,
    /// Removed pipelines whose Redis bookkeeping (and the views their ledger lists) remain.
    pub redis_pipelines: Vec<OrphanRedis>,
    /// Per-pipeline files under `index.dir` of removed pipelines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OrphanFile>,
    /// Pipelines whose bookkeeping Redis holds under this prefix, that no file declares, but that
    /// this deployment has no record of owning last (another deriver sharing `redis.prefix`, or
    /// state older than the record): left alone unless named to `deriver prune --redis-pipeline`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_unrecorded: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanIndex {
    pub name: String,
    pub path: String,
    pub bytes: u64,
    /// The generations present.
    pub generations: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanRedis {
    pub name: String,
    /// Source records whose views the ledger lists.
    pub ledger_entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_lsn: Option<Lsn>,
    /// The bookkeeping keys found (`_meta`, `_ledger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrphanFile {
    pub pipeline: String,
    pub path: String,
    pub bytes: u64,
}

/// Who holds a slot's lock, as Postgres sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub pid: i32,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub since: Option<String>,
}
