//! What a comparison found: per target, the keys missing, extra or different (`Findings`), and
//! what one target holds for one key (`Held`).

use std::collections::{BTreeMap, HashSet};

use super::report::{FieldDiff, TargetReport};

/// Field-level differences kept per pipeline.
pub(super) const DIFFS_KEPT: usize = 20;

/// What a target holds for one source key.
#[derive(Debug, PartialEq)]
pub(super) enum Held {
    Same,
    /// The record's document or views are not there at all.
    Absent,
    /// Something is there, but not what the record gives (or the record is gone).
    Different,
}

/// What a comparison found, per target.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) targets: BTreeMap<String, TargetReport>,
    pub(super) diffs: Vec<FieldDiff>,
}

impl Findings {
    pub(super) fn target(&mut self, label: &str) -> &mut TargetReport {
        self.targets.entry(label.to_string()).or_insert_with(|| TargetReport { target: label.to_string(), ..Default::default() })
    }

    pub(super) fn note(&mut self, label: &str, key: &str, held: Held, has_record: bool) {
        let rep = self.target(label);
        match (held, has_record) {
            (Held::Same, _) => {}
            (Held::Absent, _) => rep.missing.push(key.to_string()),
            (Held::Different, false) => rep.extra.push(key.to_string()),
            (Held::Different, true) => rep.different.push(key.to_string()),
        }
    }

    pub(super) fn suspects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.targets.values().flat_map(|r| r.missing.iter().chain(&r.extra).chain(&r.different).cloned()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Keeps only `keys` in the lists.
    pub(super) fn retain(&mut self, keys: &HashSet<String>) {
        for t in self.targets.values_mut() {
            for list in [&mut t.missing, &mut t.extra, &mut t.different] {
                list.retain(|k| keys.contains(k));
            }
        }
        self.diffs.retain(|d| keys.contains(&d.key));
    }

    pub(super) fn merge(&mut self, other: Findings) {
        for (label, t) in other.targets {
            let mine = self.target(&label);
            mine.missing.extend(t.missing);
            mine.extra.extend(t.extra);
            mine.different.extend(t.different);
        }
        let room = DIFFS_KEPT.saturating_sub(self.diffs.len());
        self.diffs.extend(other.diffs.into_iter().take(room));
    }
}
