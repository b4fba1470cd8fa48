//! Continuous audit (`[audit] continuous = true`): while `deriver run` streams, every
//! `audit.interval_secs` it audits a sample of each pipeline — `audit.sample_percent` of the keys,
//! a different window of the key-hash space each round, so every key comes round in turn — with
//! the same comparison and re-checks as `deriver audit`, at most `audit.keys_per_second` keys per
//! second and `audit.max_keys_per_round` keys per round. Drift goes to the log (a warning with the
//! keys), to `/metrics` (`deriver_audit_*`, per pipeline) and to `status` (the last audit), and is
//! repaired only when `audit.repair` says so.
//!
//! The same task also notices audits `deriver audit` finished while the daemon runs (their report
//! files), so `status` and `/metrics` show the last audit whichever ran it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::checker::Checker;
use super::findings::Findings;
use super::link::Link;
use super::report::{last_report, report_path, save_report, PipelineReport, TargetReport};
use super::sample::{KeyFilter, Sample};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::DerivationSql;
use crate::pipeline::Pipeline;
use crate::runtime::derive::{key_text, KeyTuple};
use crate::runtime::status::Shared;
use crate::source::postgres::{self as pg, TableInfo};
use crate::status::AuditSummary;

/// How often report files written by `deriver audit` are looked for.
const POLL: Duration = Duration::from_secs(2);
/// Re-check rounds inside the daemon (each waits for what was committed meanwhile).
const RECHECK_ROUNDS: usize = 5;
/// Keys named in one drift warning.
const KEYS_LOGGED: usize = 20;

/// Starts the background audit task of `deriver run` (it ends with `cancel`).
pub fn spawn(cfg: Config, shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut task = Task { cfg, shared, reports_seen: HashMap::new(), conn: None };
        task.run(cancel).await;
    });
}

/// A Postgres connection and the pipelines as the daemon loaded them.
type Loaded = (Client, Vec<(Pipeline, TableInfo, DerivationSql)>);

struct Task {
    cfg: Config,
    shared: Arc<Shared>,
    /// Report files already shown, with their modification times.
    reports_seen: HashMap<String, SystemTime>,
    conn: Option<Loaded>,
}

impl Task {
    async fn run(&mut self, cancel: CancellationToken) {
        let a = self.cfg.audit.clone();
        let interval = Duration::from_secs(a.interval_secs.max(1));
        let mut next_round = Instant::now() + interval;
        // Rounds are numbered by the clock, so the windows move on across restarts too.
        let mut round = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) / interval.as_secs();
        if a.continuous {
            info!(
                sample_percent = a.sample_percent,
                interval_secs = a.interval_secs,
                keys_per_second = a.keys_per_second,
                repair = a.repair,
                "continuous audit on"
            );
        }
        loop {
            self.show_new_reports();
            let wait = if a.continuous { POLL.min(next_round.saturating_duration_since(Instant::now())) } else { POLL };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !a.continuous || Instant::now() < next_round {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.round(round) => {}
            }
            round = round.wrapping_add(1);
            next_round = Instant::now() + interval;
        }
    }

    /// Puts reports written since the last look into `status` and `/metrics`.
    fn show_new_reports(&mut self) {
        let Some(doc) = self.shared.snapshot() else { return };
        for p in &doc.pipelines {
            let path = report_path(&self.cfg, &p.name);
            let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else { continue };
            if self.reports_seen.get(&p.name) == Some(&modified) {
                continue;
            }
            self.reports_seen.insert(p.name.clone(), modified);
            if let Some(report) = last_report(&self.cfg, &p.name) {
                self.publish(&report);
            }
        }
    }

    fn publish(&self, report: &PipelineReport) {
        let summary = AuditSummary::from(report);
        let name = report.pipeline.clone();
        let changed = self.shared.snapshot().and_then(|d| d.pipelines.into_iter().find(|p| p.name == name)).is_some_and(|p| p.audit.as_ref() != Some(&summary));
        if changed {
            self.shared.update(|doc| {
                if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                    p.audit = Some(summary.clone());
                }
            });
        }
        let label = report.pipeline.clone();
        metrics::gauge!("deriver_audit_drifted", "pipeline" => label.clone()).set(report.drifted as f64);
        metrics::gauge!("deriver_audit_remaining", "pipeline" => label.clone()).set(report.remaining as f64);
        metrics::gauge!("deriver_audit_records", "pipeline" => label.clone()).set(report.records as f64);
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&report.finished_at) {
            metrics::gauge!("deriver_audit_last_finished_seconds", "pipeline" => label).set(t.timestamp() as f64);
        }
    }

    async fn connection(&mut self) -> Result<&mut Loaded> {
        if self.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = pg::connect(self.cfg.postgres_url()?).await?;
            let loaded = crate::runtime::load_pipelines(&self.cfg, &client).await?;
            self.conn = Some((client, loaded));
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// One round over every streaming pipeline.
    async fn round(&mut self, round: u64) {
        let names: Vec<String> = match self.connection().await {
            Ok((_, loaded)) => loaded.iter().map(|(p, _, _)| p.name.clone()).collect(),
            Err(e) => {
                warn!(error = %e, "continuous audit: cannot connect; trying again next round");
                return;
            }
        };
        for name in names {
            // Only a pipeline that streams normally (not snapshotting, rebuilding or failed).
            let streaming = self
                .shared
                .snapshot()
                .and_then(|d| d.pipelines.into_iter().find(|p| p.name == name))
                .is_some_and(|p| p.state == "streaming" && p.reindex.is_none() && p.error.is_none() && p.applied_lsn.is_some());
            if !streaming {
                debug!(pipeline = %name, "continuous audit: the pipeline is not streaming; skipped this round");
                continue;
            }
            let started = Instant::now();
            match self.audit(&name, round).await {
                Ok(report) => {
                    metrics::counter!("deriver_audit_rounds_total", "pipeline" => name.clone()).increment(1);
                    metrics::counter!("deriver_audit_keys_checked_total", "pipeline" => name.clone()).increment(report.records);
                    metrics::counter!("deriver_audit_drift_total", "pipeline" => name.clone()).increment(report.drifted as u64);
                    metrics::counter!("deriver_audit_repaired_total", "pipeline" => name.clone()).increment(report.repaired as u64);
                    log_report(&report);
                    if let Err(e) = save_report(&self.cfg, &report) {
                        warn!(pipeline = %name, error = %e, "continuous audit: cannot save the report");
                    }
                    self.publish(&report);
                    debug!(pipeline = %name, secs = started.elapsed().as_secs_f64(), "continuous audit round done");
                }
                Err(e) => {
                    metrics::counter!("deriver_audit_errors_total", "pipeline" => name.clone()).increment(1);
                    warn!(pipeline = %name, error = %e, "continuous audit: the round failed; trying again next round");
                    if e.is_transient() {
                        self.conn = None;
                    }
                }
            }
        }
    }

    /// Audits the `round`-th sample of one pipeline.
    async fn audit(&mut self, name: &str, round: u64) -> Result<PipelineReport> {
        let cfg = self.cfg.clone();
        let shared = self.shared.clone();
        let a = cfg.audit.clone();
        let (client, loaded) = self.connection().await?;
        let (p, info, sql) = loaded.iter().find(|(p, _, _)| p.name == name).ok_or_else(|| Error::fatal(format!("no pipeline named `{name}`")))?;
        let link = Link::Daemon(&cfg, &shared);
        let sample = Sample::window(round, a.sample_percent);
        let cap = a.max_keys_per_round.max(1);
        let started = Instant::now();
        let start_lsn = pg::current_wal_lsn(client).await?;

        // The keys of this round: the source's, and those the targets hold, in the sample.
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut full = false;
        let n_key = info.key.len();
        {
            let stream = client.query_raw(sql.keys.as_str(), std::iter::empty::<&str>()).await.map_err(Error::from)?;
            pin_mut!(stream);
            while let Some(row) = stream.try_next().await.map_err(Error::from)? {
                let tuple: Option<KeyTuple> = (0..n_key).map(|i| row.get::<_, Option<String>>(i)).collect();
                let Some(tuple) = tuple else { continue };
                let key = key_text(&tuple);
                if sample.contains(&key) {
                    full |= !add(&mut keys, key, cap);
                }
            }
        }
        let mut checker = Checker::open(&link, client, p, sql, n_key, KeyFilter::Sample(sample), cap).await?;
        for s in &checker.search {
            for k in s.docs.keys() {
                full |= !add(&mut keys, k.clone(), cap);
            }
        }
        let mut strays = Vec::new();
        if let Some(rs) = checker.redis.as_mut() {
            let mut candidates = rs.space.scan_candidates(p, sample, cap).await?;
            for k in rs.space.ledger_pass(sample, &mut candidates, cap).await? {
                full |= !add(&mut keys, k, cap);
            }
            strays = candidates.into_iter().collect();
            strays.sort();
        }
        if full {
            warn!(pipeline = %name, max_keys_per_round = cap, "continuous audit: the sample is larger than audit.max_keys_per_round; the rest waits for a later round (lower audit.sample_percent)");
        }

        // Compare, a chunk at a time, at most `keys_per_second`.
        let keys: Vec<String> = keys.into_iter().collect();
        let mut chunk = cfg.runtime.derive_chunk.clamp(1, 1000);
        if a.keys_per_second > 0 {
            chunk = chunk.min(a.keys_per_second as usize);
        }
        let mut findings = Findings::default();
        for part in keys.chunks(chunk) {
            let t0 = Instant::now();
            checker.check(client, part, &mut findings, false).await?;
            if a.keys_per_second > 0 {
                let budget = Duration::from_secs_f64(part.len() as f64 / a.keys_per_second as f64);
                if let Some(rest) = budget.checked_sub(t0.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        }

        let settled = checker.settle(&link, client, findings.suspects(), strays, RECHECK_ROUNDS).await?;
        let (mut findings, drifted_keys, mut strays, unverified) = (settled.findings, settled.keys, settled.strays, settled.unverified);
        if unverified > 0 {
            info!(pipeline = %name, keys = unverified, "continuous audit: keys changing while they were checked (or deriver lagging) are left to a later round");
        }
        let drifted = drifted_keys.len() + strays.len();
        let mut repaired = 0;
        let mut remaining = drifted;
        if a.repair && drifted > 0 {
            warn!(pipeline = %name, keys = %sample_keys(&drifted_keys, &strays), "continuous audit: repairing drifted keys (audit.repair = true)");
            repaired = link.repair(p, &drifted_keys).await?;
            if let Some(rs) = checker.redis.as_mut() {
                for k in &strays {
                    let _: () = redis::cmd("DEL").arg(k).query_async(&mut rs.space.conn).await?;
                }
                repaired += strays.len();
            }
            let again = checker.settle(&link, client, drifted_keys, strays, RECHECK_ROUNDS).await?;
            remaining = again.keys.len() + again.strays.len();
            findings = again.findings;
            strays = again.strays;
        }
        let mut targets: Vec<TargetReport> = findings.targets.into_values().collect();
        if !strays.is_empty() {
            let listed = strays.iter().map(|k| format!("(key) {k}"));
            match targets.iter_mut().find(|t| t.target == "redis") {
                Some(t) => t.extra.extend(listed),
                None => targets.push(TargetReport { target: "redis".into(), extra: listed.collect(), ..Default::default() }),
            }
        }
        Ok(PipelineReport {
            pipeline: p.name.clone(),
            mode: "continuous".into(),
            start_lsn,
            records: keys.len() as u64,
            sample_pct: Some(a.sample_percent),
            targets,
            diffs: findings.diffs,
            drifted,
            repaired,
            remaining,
            unverified,
            seconds: started.elapsed().as_secs_f64(),
            finished_at: chrono::Utc::now().to_rfc3339(),
        })
    }
}

/// Adds a key unless the set is full (false then).
fn add(keys: &mut BTreeSet<String>, key: String, cap: usize) -> bool {
    if keys.len() >= cap && !keys.contains(&key) {
        return false;
    }
    keys.insert(key);
    true
}

fn sample_keys(keys: &[String], strays: &[String]) -> String {
    let all: Vec<&str> = keys.iter().chain(strays).map(String::as_str).collect();
    let shown = all.iter().take(KEYS_LOGGED).copied().collect::<Vec<_>>().join(", ");
    if all.len() > KEYS_LOGGED {
        format!("{shown} … ({} in all)", all.len())
    } else {
        shown
    }
}

fn log_report(r: &PipelineReport) {
    if r.drifted == 0 {
        debug!(pipeline = %r.pipeline, keys = r.records, "continuous audit: no drift");
        return;
    }
    for t in &r.targets {
        for (what, keys) in [("missing", &t.missing), ("extra", &t.extra), ("different", &t.different)] {
            if !keys.is_empty() {
                warn!(pipeline = %r.pipeline, target = %t.target, what, count = keys.len(), keys = %sample_keys(keys, &[]), "continuous audit found drift");
            }
        }
    }
    for d in &r.diffs {
        warn!(pipeline = %r.pipeline, target = %d.target, key = %d.key, field = %d.field, expected = %d.expected, actual = %d.actual, "continuous audit: drifted value");
    }
    if r.repaired > 0 {
        info!(pipeline = %r.pipeline, repaired = r.repaired, remaining = r.remaining, "continuous audit repaired drift");
    } else {
        warn!(pipeline = %r.pipeline, drifted = r.drifted, "continuous audit: drift left as it is (audit.repair = false); `deriver audit {} --repair` repairs it", r.pipeline);
    }
}
