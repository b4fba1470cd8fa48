//! What deriver tells Prometheus: every metric's name, type and help text in one catalogue
//! ([`CATALOGUE`]), the histogram buckets, the recorder built with both, and the registration of
//! each pipeline's series at start (zeros, so dashboards see zeros rather than gaps). The pure
//! trackers behind lag in seconds ([`lag`]) and the status page's charts ([`history`]) live here
//! too. Names follow Prometheus's conventions: base units in the name (`_seconds`, `_bytes`),
//! counters end in `_total`, nothing else does; `promtool check metrics` passes on `/metrics`.
//!
//! (Not called `metrics`: that is the crate every module records with.)

pub mod history;
pub mod lag;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which series of a metric exist from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One series for the process (no labels), registered at start.
    Process,
    /// One series per pipeline (`pipeline` label), registered when the pipelines are known.
    Pipeline,
    /// One per pipeline and sink kind (`pipeline`, `sink` = search, redis or ledger).
    PipelineSink,
    /// Labels known only when they happen (route, status, dependency, index); no zeros.
    Dynamic,
}

#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, scope: Scope, help: &'static str) -> Metric {
    Metric { name, kind, scope, help }
}

pub const APPLIED_LSN: &str = "deriver_applied_lsn";
pub const LAG_BYTES: &str = "deriver_lag_bytes";
pub const LAG_SECONDS: &str = "deriver_lag_seconds";
pub const CHANGES_APPLIED: &str = "deriver_changes_applied_total";
pub const TRANSACTIONS_APPLIED: &str = "deriver_transactions_applied_total";
pub const DEAD_LETTERS: &str = "deriver_dead_letters";
pub const DEAD_LETTERS_TOTAL: &str = "deriver_dead_letters_total";
pub const NULL_KEYS: &str = "deriver_null_keys_total";
pub const PIPELINE_FAILED: &str = "deriver_pipeline_failed";
pub const REINDEX_RUNNING: &str = "deriver_reindex_running";
pub const REINDEX_ROWS_DONE: &str = "deriver_reindex_rows_done";
pub const REINDEX_ROWS_PLANNED: &str = "deriver_reindex_rows_planned";
pub const BATCH_SECONDS: &str = "deriver_batch_duration_seconds";
pub const BATCH_LATENCY: &str = "deriver_batch_latency_seconds";
pub const DERIVE_SECONDS: &str = "deriver_derive_duration_seconds";
pub const COMMIT_LATENCY: &str = "deriver_commit_latency_seconds";
pub const SINK_COMMIT_SECONDS: &str = "deriver_sink_commit_duration_seconds";
pub const FRESHNESS_SECONDS: &str = "deriver_freshness_seconds";
pub const READY: &str = "deriver_ready";
pub const ACKED_LSN: &str = "deriver_acked_lsn";
pub const SLOT_UNCONFIRMED: &str = "deriver_slot_unconfirmed_wal_bytes";
pub const SLOT_WAL_STATUS: &str = "deriver_slot_wal_status";
pub const LEASE_OWNER: &str = "deriver_lease_owner";
pub const LEASE_LOST: &str = "deriver_lease_lost_total";
pub const FENCED_WRITES: &str = "deriver_fenced_writes_total";
pub const DEPENDENCY_UP: &str = "deriver_dependency_up";
pub const DEPENDENCY_ERRORS: &str = "deriver_dependency_errors_total";
pub const HTTP_REQUESTS: &str = "deriver_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "deriver_http_request_duration_seconds";
pub const HTTP_SEARCHES: &str = "deriver_http_searches_total";
pub const HTTP_SSE_DROPPED: &str = "deriver_http_sse_dropped_total";
pub const SEARCH_SECONDS: &str = "deriver_search_duration_seconds";
pub const AUDIT_DRIFTED: &str = "deriver_audit_drifted";
pub const AUDIT_REMAINING: &str = "deriver_audit_remaining";
pub const AUDIT_RECORDS: &str = "deriver_audit_records";
pub const AUDIT_LAST_FINISHED: &str = "deriver_audit_last_finished_seconds";
pub const AUDIT_ROUNDS: &str = "deriver_audit_rounds_total";
pub const AUDIT_KEYS_CHECKED: &str = "deriver_audit_keys_checked_total";
pub const AUDIT_DRIFT: &str = "deriver_audit_drift_total";
pub const AUDIT_REPAIRED: &str = "deriver_audit_repaired_total";
pub const AUDIT_ERRORS: &str = "deriver_audit_errors_total";

use Kind::{Counter, Gauge, Histogram};
use Scope::{Dynamic, Pipeline, PipelineSink, Process};

/// Every metric deriver exports.
pub const CATALOGUE: &[Metric] = &[
    m(APPLIED_LSN, Gauge, Pipeline, "LSN (as a number) up to which every target of the pipeline reflects the source"),
    m(LAG_BYTES, Gauge, Pipeline, "WAL bytes between the server's current LSN and the pipeline's applied LSN"),
    m(LAG_SECONDS, Gauge, Pipeline, "Age of the oldest source transaction not yet durable in every target of the pipeline (0 when caught up)"),
    m(CHANGES_APPLIED, Counter, Pipeline, "Row changes from the WAL applied to the pipeline's targets"),
    m(TRANSACTIONS_APPLIED, Counter, Pipeline, "Source transactions with changes for the pipeline applied to its targets"),
    m(DEAD_LETTERS, Gauge, Pipeline, "Records currently in the dead-letter store"),
    m(DEAD_LETTERS_TOTAL, Counter, Pipeline, "Records rejected into the dead-letter store (failed retries included)"),
    m(NULL_KEYS, Counter, Pipeline, "Source rows skipped because a key column was NULL"),
    m(PIPELINE_FAILED, Gauge, Pipeline, "1 while the pipeline is stopped on an error (state failed; the slot is held at its checkpoint)"),
    m(REINDEX_RUNNING, Gauge, Pipeline, "1 while a full reprocess (reindex) of the pipeline runs"),
    m(REINDEX_ROWS_DONE, Gauge, Pipeline, "Rows derived by the running reindex (0 when none runs)"),
    m(REINDEX_ROWS_PLANNED, Gauge, Pipeline, "Rows the running reindex will derive, as estimated at its start (0 when none runs)"),
    m(BATCH_SECONDS, Histogram, Pipeline, "Time to derive, write and commit one batch of the pipeline"),
    m(BATCH_LATENCY, Histogram, Process, "From a batch's first transaction reaching deriver to its commit in every target"),
    m(DERIVE_SECONDS, Histogram, Pipeline, "Time spent in the derivation queries of one batch of the pipeline"),
    m(COMMIT_LATENCY, Histogram, Pipeline, "Time to commit one batch in all the pipeline's targets"),
    m(SINK_COMMIT_SECONDS, Histogram, PipelineSink, "Time to commit one batch in one target kind (search, redis, ledger)"),
    m(FRESHNESS_SECONDS, Histogram, Pipeline, "From a transaction's commit in Postgres to its changes being visible in the pipeline's targets"),
    m(READY, Gauge, Process, "1 when /readyz answers 200 (owner, every pipeline streaming and within its lag bound)"),
    m(ACKED_LSN, Gauge, Process, "LSN (as a number) last acknowledged to the replication slot"),
    m(SLOT_UNCONFIRMED, Gauge, Process, "WAL bytes written since the slot's confirmed_flush_lsn (the slot retains at least this much)"),
    m(SLOT_WAL_STATUS, Gauge, Dynamic, "1 for the slot's current wal_status (reserved, extended, unreserved, lost), 0 for the others"),
    m(LEASE_OWNER, Gauge, Process, "1 while this process owns the slot, 0 while it stands by"),
    m(LEASE_LOST, Counter, Process, "Times this process lost the slot's ownership"),
    m(FENCED_WRITES, Counter, Process, "Writes refused because this process no longer owned the slot (it stood by again)"),
    m(DEPENDENCY_UP, Gauge, Dynamic, "1 while the dependency (postgres, replication, redis, index:<name>) answers, 0 while it fails"),
    m(DEPENDENCY_ERRORS, Counter, Dynamic, "Failures of the dependency"),
    m(HTTP_REQUESTS, Counter, Dynamic, "HTTP requests by method, route pattern and status"),
    m(HTTP_REQUEST_SECONDS, Histogram, Dynamic, "HTTP request latency by method and route pattern"),
    m(HTTP_SEARCHES, Counter, Dynamic, "Search requests answered, by index"),
    m(HTTP_SSE_DROPPED, Counter, Process, "Change-feed clients dropped for falling behind"),
    m(SEARCH_SECONDS, Histogram, Dynamic, "Search request latency by index and HTTP status"),
    m(AUDIT_DRIFTED, Gauge, Pipeline, "Records the last audit found drifted"),
    m(AUDIT_REMAINING, Gauge, Pipeline, "Drifted records the last audit left unrepaired"),
    m(AUDIT_RECORDS, Gauge, Pipeline, "Records the last audit compared"),
    m(AUDIT_LAST_FINISHED, Gauge, Pipeline, "Unix time the last audit finished (0: none yet)"),
    m(AUDIT_ROUNDS, Counter, Pipeline, "Continuous audit rounds finished"),
    m(AUDIT_KEYS_CHECKED, Counter, Pipeline, "Keys compared by the continuous audit"),
    m(AUDIT_DRIFT, Counter, Pipeline, "Drifted records found by the continuous audit"),
    m(AUDIT_REPAIRED, Counter, Pipeline, "Drifted records the continuous audit repaired"),
    m(AUDIT_ERRORS, Counter, Pipeline, "Continuous audit rounds that failed"),
];

/// Sink kinds (`sink` label of [`SINK_COMMIT_SECONDS`]).
pub const SINK_KINDS: [&str; 3] = ["search", "redis", "ledger"];
/// `wal_status` values of `pg_replication_slots` ([`SLOT_WAL_STATUS`]).
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Buckets of latencies inside deriver: 1 ms to 60 s.
pub const LATENCY_BUCKETS: [f64; 16] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];
/// Buckets of commit-to-visible freshness: 5 ms to 10 minutes (a backlog after a restart).
pub const FRESHNESS_BUCKETS: [f64; 17] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// The recorder deriver installs: every histogram with buckets (true Prometheus histograms, which
/// aggregate across processes, not summaries).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FRESHNESS_SECONDS.to_string()), &FRESHNESS_BUCKETS))
        .expect("bucket lists are not empty")
}

/// Installs the recorder, describes every metric and registers the process-wide ones (zeros).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = builder().install_recorder()?;
    describe();
    register_process();
    Ok(handle)
}

/// `# HELP` for every metric of the catalogue (goes to the installed recorder).
pub fn describe() {
    for metric in CATALOGUE {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

fn register(metric: &Metric, labels: &[(&'static str, String)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    match metric.kind {
        // Registering is enough for a counter or a histogram to be rendered (0, empty buckets);
        // a gauge is set to 0 only if nothing set it before.
        Counter => {
            metrics::counter!(metric.name, labels).increment(0);
        }
        Gauge => {
            metrics::gauge!(metric.name, labels).increment(0.0);
        }
        Histogram => {
            let _ = metrics::histogram!(metric.name, labels);
        }
    }
}

/// The process-wide series, at zero.
pub fn register_process() {
    for metric in CATALOGUE.iter().filter(|m| m.scope == Process) {
        register(metric, &[]);
    }
    for status in WAL_STATUSES {
        register(&CATALOGUE[index_of(SLOT_WAL_STATUS)], &[("wal_status", status.to_string())]);
    }
}

fn index_of(name: &str) -> usize {
    CATALOGUE.iter().position(|m| m.name == name).expect("a catalogued metric")
}

/// Every per-pipeline series of `pipeline` (with these sink kinds), at zero where not yet set.
pub fn register_pipeline(pipeline: &str, sink_kinds: &[&str]) {
    for metric in CATALOGUE {
        match metric.scope {
            Pipeline => register(metric, &[("pipeline", pipeline.to_string())]),
            PipelineSink => {
                for kind in sink_kinds {
                    register(metric, &[("pipeline", pipeline.to_string()), ("sink", kind.to_string())]);
                }
            }
            Process | Dynamic => {}
        }
    }
}

/// Seconds of a duration, for histograms.
pub fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

/// The time of one phase of a pipeline's batch (`BATCH_SECONDS`, `DERIVE_SECONDS`,
/// `COMMIT_LATENCY`).
pub fn record_pipeline(name: &'static str, pipeline: &str, d: std::time::Duration) {
    metrics::histogram!(name, "pipeline" => pipeline.to_string()).record(seconds(d));
}

/// One sink kind's commit of one batch.
pub fn record_sink_commit(pipeline: &str, sink: &'static str, d: std::time::Duration) {
    metrics::histogram!(SINK_COMMIT_SECONDS, "pipeline" => pipeline.to_string(), "sink" => sink).record(seconds(d));
}

/// Changes and transactions that became applied, with their freshness.
pub fn record_applied(pipeline: &str, applied: &lag::Applied) {
    if applied.changes > 0 {
        metrics::counter!(CHANGES_APPLIED, "pipeline" => pipeline.to_string()).increment(applied.changes);
    }
    if applied.transactions > 0 {
        metrics::counter!(TRANSACTIONS_APPLIED, "pipeline" => pipeline.to_string()).increment(applied.transactions);
    }
    if !applied.freshness.is_empty() {
        let h = metrics::histogram!(FRESHNESS_SECONDS, "pipeline" => pipeline.to_string());
        for (secs, n) in &applied.freshness {
            h.record_many(*secs, *n as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for metric in CATALOGUE {
            assert!(seen.insert(metric.name), "{} twice", metric.name);
            assert!(metric.name.starts_with("deriver_"), "{}", metric.name);
            assert!(metric.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{}", metric.name);
            assert_eq!(metric.kind == Counter, metric.name.ends_with("_total"), "{}: only counters end in _total", metric.name);
            if metric.kind == Histogram {
                assert!(metric.name.ends_with("_seconds"), "{}: histograms here are times", metric.name);
            }
            for unit in ["_ms", "_millis", "_milliseconds", "_kb", "_mb", "_minutes"] {
                assert!(!metric.name.contains(unit), "{}: base units only", metric.name);
            }
            assert!(!metric.help.is_empty() && !metric.help.ends_with('.'), "{}", metric.name);
        }
    }

    #[test]
    fn a_fresh_recorder_renders_help_type_and_zeros_for_a_pipeline() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_process();
            register_pipeline("films", &["search", "redis"]);
        });
        let text = handle.render();
        for metric in CATALOGUE.iter().filter(|m| m.scope != Dynamic) {
            assert!(text.contains(&format!("# HELP {} ", metric.name)), "no help for {}:\n{text}", metric.name);
            let ty = match metric.kind {
                Counter => "counter",
                Gauge => "gauge",
                Histogram => "histogram",
            };
            assert!(text.contains(&format!("# TYPE {} {ty}", metric.name)), "no type for {}:\n{text}", metric.name);
        }
        assert!(text.contains("deriver_lag_seconds{pipeline=\"films\"} 0"), "{text}");
        assert!(text.contains("deriver_freshness_seconds_bucket{pipeline=\"films\",le=\"600\"} 0"), "{text}");
        assert!(text.contains("deriver_sink_commit_duration_seconds_count{pipeline=\"films\",sink=\"redis\"} 0"), "{text}");
        assert!(!text.contains("quantile="), "histograms, not summaries:\n{text}");
    }
}
