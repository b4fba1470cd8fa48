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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PipelineStatus {
    /// `applied_lsn` = the minimum over targets.
    pub fn refresh(&mut self, server_lsn: Option<Lsn>) {
        self.applied_lsn = if self.targets.values().any(Option::is_none) {
            None
        } else {
            self.targets.values().filter_map(|v| *v).min()
        };
        self.lag_bytes = match (server_lsn, self.applied_lsn) {
            (Some(s), Some(a)) => Some(s.0.saturating_sub(a.0)),
            _ => None,
        };
    }
}

#[derive(Default)]
pub struct Shared {
    pub status: RwLock<Option<StatusDoc>>,
    pub indexes: RwLock<BTreeMap<String, Arc<SearchIndex>>>,
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
    }

    pub fn snapshot(&self) -> Option<StatusDoc> {
        self.status.read().expect("status lock").clone()
    }
}
