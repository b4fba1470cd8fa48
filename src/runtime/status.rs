//! The state the daemon shares with the HTTP API and `deriver status`: its behaviour (the shared
//! document's updates, change notices, readiness); the document's types are in `crate::status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::sink::tantivy::SearchIndex;
use crate::sink::AnySink;
use crate::source::Lsn;
pub use crate::status::{AuditSummary, PipelineStatus, ReindexStatus, SlotStatus, StatusDoc};
use crate::telemetry::{self, history::Trend, lag::Meter};

/// Requests the HTTP admin endpoint hands to the running daemon.
pub enum AdminRequest {
    /// Full reprocess of these pipelines; replies with the ones started.
    Reindex { pipelines: Vec<String>, reply: tokio::sync::oneshot::Sender<crate::error::Result<Vec<String>>> },
    /// Swap a pipeline's search indexes back to their previous generation.
    Rollback { pipeline: String, reply: tokio::sync::oneshot::Sender<crate::error::Result<Vec<u64>>> },
    /// Re-derive these source keys (key text) through the normal write path (audit repairs).
    Repair { pipeline: String, keys: Vec<String>, reply: tokio::sync::oneshot::Sender<crate::error::Result<usize>> },
    /// Re-read the pipeline files and apply them (SIGHUP, `deriver apply`).
    Reload { reply: tokio::sync::oneshot::Sender<crate::error::Result<crate::runtime::reload::ReloadReport>> },
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
    pub standby: RwLock<Option<Option<crate::status::Holder>>>,
    /// Lag in seconds and applied totals per pipeline of the running daemon (see `telemetry::lag`).
    pub meter: Mutex<Meter>,
    /// The last 15 minutes of each pipeline, for the status page.
    pub trends: Mutex<BTreeMap<String, Trend>>,
    /// `/readyz` answers 503 while a pipeline lags more than this (`runtime.ready_max_lag_secs`).
    pub ready_max_lag: Duration,
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
            meter: Mutex::new(Meter::default()),
            trends: Mutex::new(BTreeMap::new()),
            ready_max_lag: Duration::from_secs(10),
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
    pub fn set_standby(&self, standby: Option<Option<crate::status::Holder>>) {
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

    pub fn standby(&self) -> Option<Option<crate::status::Holder>> {
        self.standby.read().expect("standby lock").clone()
    }

    pub fn snapshot(&self) -> Option<StatusDoc> {
        self.status.read().expect("status lock").clone()
    }
}

/// Why the process is not ready (`/readyz` 503): a machine-readable code and the reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct NotReady {
    pub code: &'static str,
    pub reason: String,
}

/// The decision of `/readyz` from what it looks at: ready once the process owns the slot, every
/// pipeline streams, no dependency is failing and no pipeline lags more than `max_lag`.
pub fn readiness(
    standby: Option<Option<crate::status::Holder>>,
    doc: Option<&StatusDoc>,
    failing: &[(String, String)],
    lags: &[(String, Duration)],
    max_lag: Duration,
) -> std::result::Result<(), NotReady> {
    if let Some(owner) = standby {
        let by = owner.map(|h| format!(" (the slot is owned by pid {} {})", h.pid, h.application_name.unwrap_or_default())).unwrap_or_default();
        return Err(NotReady { code: "standby", reason: format!("this process stands by{by}") });
    }
    let Some(doc) = doc else { return Err(NotReady { code: "starting", reason: "deriver is starting".into() }) };
    let mut not_ready: Vec<String> = doc.pipelines.iter().filter(|p| p.state != "streaming").map(|p| format!("{} is {}", p.name, p.state)).collect();
    // A dependency that is failing (being retried): the pipelines are not keeping up.
    not_ready.extend(failing.iter().map(|(dep, e)| format!("{dep} is failing: {}", e.lines().next().unwrap_or_default())));
    not_ready.extend(
        lags.iter()
            .filter(|(_, lag)| *lag > max_lag)
            .map(|(name, lag)| format!("{name} lags {:.1} s (runtime.ready_max_lag_secs = {})", lag.as_secs_f64(), max_lag.as_secs_f64())),
    );
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(NotReady { code: "not_ready", reason: not_ready.join("; ") })
    }
}

/// Whether one pipeline keeps up (`/readyz?pipeline=…`): it streams, is not retrying a failure
/// and lags within the bound. Other pipelines and dependencies it does not wait on do not count:
/// every pipeline has its own worker, so one stuck pipeline does not hold the others back.
pub fn pipeline_readiness(
    standby: Option<Option<crate::status::Holder>>,
    doc: Option<&StatusDoc>,
    pipeline: &str,
    lags: &[(String, Duration)],
    max_lag: Duration,
) -> std::result::Result<(), NotReady> {
    if standby.is_some() {
        return Err(NotReady { code: "standby", reason: "this process stands by".into() });
    }
    let Some(doc) = doc else { return Err(NotReady { code: "starting", reason: "deriver is starting".into() }) };
    let Some(p) = doc.pipelines.iter().find(|p| p.name == pipeline) else {
        return Err(NotReady { code: "pipeline_not_found", reason: format!("no pipeline named `{pipeline}`") });
    };
    let mut not_ready = Vec::new();
    if p.state != "streaming" {
        not_ready.push(format!("{} is {}", p.name, p.state));
    }
    if let Some(e) = &p.error {
        not_ready.push(format!("{}: {}", p.name, e.lines().next().unwrap_or_default()));
    }
    if let Some((_, lag)) = lags.iter().find(|(n, lag)| n == pipeline && *lag > max_lag) {
        not_ready.push(format!("{pipeline} lags {:.1} s (runtime.ready_max_lag_secs = {})", lag.as_secs_f64(), max_lag.as_secs_f64()));
    }
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(NotReady { code: "not_ready", reason: not_ready.join("; ") })
    }
}

/// The metric label of a sink's kind.
pub fn sink_kind(sink: &AnySink) -> &'static str {
    match sink {
        AnySink::Search(_) => "search",
        AnySink::Redis(_) => "redis",
        AnySink::Ledger(_) => "ledger",
    }
}

/// Unix milliseconds of a time.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the runtime tells the telemetry (lag in seconds, applied totals, freshness). Each call
/// is one line in the runtime, marked `// telemetry`.
impl Shared {
    pub fn meter(&self) -> MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The daemon's pipelines, in its order: a fresh meter, and every per-pipeline series
    /// registered (zeros) so that dashboards see zeros rather than gaps.
    pub fn start_meter<'a>(&self, pipelines: impl IntoIterator<Item = &'a super::PipelineRt>) {
        let pipelines: Vec<&super::PipelineRt> = pipelines.into_iter().collect();
        for p in &pipelines {
            let mut kinds: Vec<&str> = p.sinks.iter().map(sink_kind).collect();
            kinds.dedup();
            telemetry::register_pipeline(&p.def.name, &kinds);
        }
        *self.meter() = Meter::new(pipelines.iter().map(|p| p.def.name.clone()));
    }

    /// A pipeline a reload starts: its place in the meter.
    pub fn meter_reserve(&self, name: &str) -> usize {
        self.meter().add(name.to_string())
    }

    /// Registers the metrics of a pipeline a reload started.
    pub fn meter_register(&self, p: &super::PipelineRt) {
        let mut kinds: Vec<&str> = p.sinks.iter().map(sink_kind).collect();
        kinds.dedup();
        telemetry::register_pipeline(&p.def.name, &kinds);
    }

    /// Pipeline `i` stopped (a reload removed or replaced it).
    pub fn meter_retire(&self, i: usize) {
        self.meter().retire(i);
    }

    /// A change of the open transaction was routed to pipeline `i`.
    pub fn meter_change(&self, i: usize) {
        self.meter().change(i, 1);
    }

    /// A transaction ended at `lsn`.
    pub fn meter_commit(&self, lsn: Lsn, committed: SystemTime) {
        self.meter().commit(lsn.0, committed);
    }

    /// Pipeline `i`'s targets committed (and show) everything up to `lsn`.
    pub fn meter_visible(&self, i: usize, lsn: Lsn) {
        let mut meter = self.meter();
        let applied = meter.visible(i, lsn.0, SystemTime::now());
        if let Some(name) = meter.name(i) {
            telemetry::record_applied(name, &applied);
        }
    }

    /// What every target of each pipeline holds durably (Redis trails its fsync window).
    pub fn meter_durable(&self, i: usize, durable: Option<Lsn>) {
        let Some(d) = durable else { return };
        let mut meter = self.meter();
        let applied = meter.durable(i, d.0);
        if let Some(name) = meter.name(i) {
            telemetry::record_applied(name, &applied);
        }
    }

    /// Every pipeline's lag in seconds now.
    pub fn lags(&self) -> Vec<(String, Duration)> {
        self.meter().lags_at(SystemTime::now())
    }

    /// `Ok` when `/readyz` should answer 200.
    pub fn readiness(&self) -> std::result::Result<(), NotReady> {
        readiness(self.standby(), self.snapshot().as_ref(), &crate::health::failing(), &self.lags(), self.ready_max_lag)
    }

    /// `Ok` when `/readyz?pipeline=<name>` should answer 200.
    pub fn pipeline_readiness(&self, pipeline: &str) -> std::result::Result<(), NotReady> {
        pipeline_readiness(self.standby(), self.snapshot().as_ref(), pipeline, &self.lags(), self.ready_max_lag)
    }

    /// Sets the gauges read from the status and the meter (`/metrics` calls it before rendering,
    /// so lag in seconds is current even while the runtime is stuck in a batch).
    pub fn export_gauges(&self) {
        use telemetry::*;
        metrics::gauge!(READY).set(if self.readiness().is_ok() { 1.0 } else { 0.0 });
        for (name, lag) in self.lags() {
            metrics::gauge!(LAG_SECONDS, "pipeline" => name).set(lag.as_secs_f64());
        }
        let Some(doc) = self.snapshot() else { return };
        for p in &doc.pipelines {
            let name = || p.name.clone();
            if let Some(a) = p.applied_lsn {
                metrics::gauge!(APPLIED_LSN, "pipeline" => name()).set(a.0 as f64);
            }
            if let Some(l) = p.lag_bytes {
                metrics::gauge!(LAG_BYTES, "pipeline" => name()).set(l as f64);
            }
            metrics::gauge!(DEAD_LETTERS, "pipeline" => name()).set(p.dead_letters as f64);
            let (running, done, planned) = p.reindex.as_ref().map_or((0.0, 0.0, 0.0), |r| (1.0, r.rows_done as f64, r.rows_total as f64));
            metrics::gauge!(REINDEX_RUNNING, "pipeline" => name()).set(running);
            metrics::gauge!(REINDEX_ROWS_DONE, "pipeline" => name()).set(done);
            metrics::gauge!(REINDEX_ROWS_PLANNED, "pipeline" => name()).set(planned);
            if let Some(a) = &p.audit {
                metrics::gauge!(AUDIT_DRIFTED, "pipeline" => name()).set(a.drifted as f64);
                metrics::gauge!(AUDIT_REMAINING, "pipeline" => name()).set(a.remaining as f64);
            }
        }
        if let Some(slot) = &doc.slot {
            if let (Some(server), Some(confirmed)) = (doc.server_lsn, slot.confirmed_flush_lsn) {
                metrics::gauge!(SLOT_UNCONFIRMED).set(server.0.saturating_sub(confirmed.0) as f64);
            }
            if let Some(status) = &slot.wal_status {
                for s in WAL_STATUSES {
                    metrics::gauge!(SLOT_WAL_STATUS, "wal_status" => s).set(if s == status { 1.0 } else { 0.0 });
                }
            }
        }
    }

    /// Adds a sample of every pipeline of the meter to its trend (pipelines no longer run are
    /// forgotten).
    pub fn sample_trends(&self, now: SystemTime) {
        let samples: Vec<(String, Duration, u64)> = self.meter().pipelines().map(|p| (p.name.clone(), p.clock.lag_at(now), p.changes_applied)).collect();
        let mut trends = self.trends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        trends.retain(|name, _| samples.iter().any(|(n, _, _)| n == name));
        for (name, lag, total) in samples {
            trends.entry(name).or_default().sample(unix_ms(now), lag.as_secs_f64(), total);
        }
    }

    /// Per pipeline, the recent past as columns (`GET /v1/status/trends`).
    pub fn trend_columns(&self) -> BTreeMap<String, telemetry::history::Columns> {
        let trends = self.trends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        trends.iter().map(|(name, t)| (name.clone(), t.into())).collect()
    }
}

/// Samples the trends every `telemetry::history::INTERVAL_MS` until `cancel`.
pub fn spawn_trends(shared: Arc<Shared>, cancel: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(telemetry::history::INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => shared.sample_trends(SystemTime::now()),
            }
        }
    });
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    fn doc(states: &[(&str, &str)]) -> StatusDoc {
        let pipelines: Vec<serde_json::Value> = states
            .iter()
            .map(|(n, s)| {
                serde_json::json!({"name": n, "state": s, "generation": 1, "definition_hash": "", "applied_lsn": null,
                "targets": {}, "lag_bytes": null, "dead_letters": 0})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"server_lsn": null, "slot": null, "pipelines": pipelines})).unwrap()
    }

    #[test]
    fn ready_only_when_streaming_healthy_and_within_the_lag_bound() {
        let max = Duration::from_secs(10);
        let d = doc(&[("films", "streaming"), ("actors", "streaming")]);
        let lag = |a: u64, b: u64| vec![("films".to_string(), Duration::from_secs(a)), ("actors".to_string(), Duration::from_secs(b))];
        assert_eq!(readiness(None, Some(&d), &[], &lag(0, 10), max), Ok(()), "at the bound is within it");
        let e = readiness(None, Some(&d), &[], &lag(3, 11), max).unwrap_err();
        assert_eq!(e.code, "not_ready");
        assert!(e.reason.contains("actors lags 11.0 s") && !e.reason.contains("films"), "{}", e.reason);
        let e = readiness(None, Some(&doc(&[("films", "rebuilding")])), &[("redis".into(), "refused\nmore".into())], &[], max).unwrap_err();
        assert_eq!(e.reason, "films is rebuilding; redis is failing: refused");
        assert_eq!(readiness(None, None, &[], &[], max).unwrap_err().code, "starting");
        assert_eq!(readiness(Some(None), Some(&d), &[], &[], max).unwrap_err().code, "standby");
    }

    #[test]
    fn one_pipeline_is_ready_by_its_own_state_and_lag_only() {
        let max = Duration::from_secs(10);
        let mut d = doc(&[("films", "streaming"), ("actors", "rebuilding")]);
        let lags = vec![("films".to_string(), Duration::from_secs(2)), ("actors".to_string(), Duration::from_secs(60))];
        assert_eq!(pipeline_readiness(None, Some(&d), "films", &lags, max), Ok(()), "another pipeline's rebuild and lag do not count");
        let e = pipeline_readiness(None, Some(&d), "actors", &lags, max).unwrap_err();
        assert_eq!(e.reason, "actors is rebuilding; actors lags 60.0 s (runtime.ready_max_lag_secs = 10)");
        d.pipelines[0].error = Some("retrying: Redis error\nmore".into());
        assert_eq!(pipeline_readiness(None, Some(&d), "films", &lags, max).unwrap_err().reason, "films: retrying: Redis error");
        assert_eq!(pipeline_readiness(None, Some(&d), "nope", &lags, max).unwrap_err().code, "pipeline_not_found");
        assert_eq!(pipeline_readiness(None, None, "films", &lags, max).unwrap_err().code, "starting");
        assert_eq!(pipeline_readiness(Some(None), Some(&d), "films", &lags, max).unwrap_err().code, "standby");
    }

    #[test]
    fn trends_follow_the_meter() {
        let shared = Shared::default();
        *shared.meter() = Meter::new(["films".to_string()]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        shared.sample_trends(t0);
        shared.meter_change(0);
        shared.meter_commit(Lsn(10), t0);
        shared.sample_trends(t0 + Duration::from_secs(3));
        let c = &shared.trend_columns()["films"];
        assert_eq!(c.lag_seconds, vec![0.0, 3.0]);
        assert_eq!(c.t, vec![1_000_000, 1_003_000]);
        *shared.meter() = Meter::new(["other".to_string()]);
        shared.sample_trends(t0 + Duration::from_secs(4));
        assert_eq!(shared.trend_columns().keys().collect::<Vec<_>>(), vec!["other"], "a pipeline no longer run is forgotten");
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
