//! What an audit reports (per pipeline, per target, field by field) and where the last report of
//! each pipeline is kept, for `status`, `/metrics` and the next look.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::error::Result;
use crate::source::Lsn;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldDiff {
    pub key: String,
    pub target: String,
    pub field: String,
    pub expected: Value,
    pub actual: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    pub pipeline: String,
    /// `full` (`deriver audit`) or `continuous` (a background round of `deriver run`).
    #[serde(default = "full_mode")]
    pub mode: String,
    pub start_lsn: Lsn,
    /// Source rows read (full) or keys compared (continuous).
    pub records: u64,
    pub sample_pct: Option<f64>,
    pub targets: Vec<TargetReport>,
    pub diffs: Vec<FieldDiff>,
    /// Distinct drifted keys found.
    pub drifted: usize,
    pub repaired: usize,
    /// Drifted keys still wrong at the end (0 = clean).
    pub remaining: usize,
    /// Suspects that could not be re-checked because the daemon had not applied the changes
    /// committed meanwhile in time (it lagged); the CLI counts them as drift, a continuous round
    /// leaves them to a later round.
    #[serde(default)]
    pub unverified: usize,
    pub seconds: f64,
    pub finished_at: String,
}

impl From<&PipelineReport> for crate::status::AuditSummary {
    fn from(r: &PipelineReport) -> Self {
        crate::status::AuditSummary { finished_at: r.finished_at.clone(), records: r.records, drifted: r.drifted, repaired: r.repaired, remaining: r.remaining }
    }
}

pub(super) fn full_mode() -> String {
    "full".into()
}

/// Where the last audit of a pipeline is kept (read by `status` and the daemon's metrics).
pub fn report_path(cfg: &Config, pipeline: &str) -> std::path::PathBuf {
    cfg.index.dir.join("_audit").join(format!("{pipeline}.json"))
}

pub fn last_report(cfg: &Config, pipeline: &str) -> Option<PipelineReport> {
    serde_json::from_str(&std::fs::read_to_string(report_path(cfg, pipeline)).ok()?).ok()
}

pub(super) fn save_report(cfg: &Config, report: &PipelineReport) -> Result<()> {
    let path = report_path(cfg, &report.pipeline);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside and renamed, so a reader never sees half a report.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(report).expect("report serializes"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
