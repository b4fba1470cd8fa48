//! Dependencies as this process last saw them: `postgres` (the derivation and catalog
//! connections), `replication` (the slot's stream), `redis`, and `index:<name>` (each search
//! index's directory, i.e. its disk). The code that talks to each of them reports its failures
//! and successes here, so an outage is visible while the runtime retries it: `/readyz` answers
//! 503 naming the failing dependency, `/v1/status` lists them under `dependencies`, and
//! `/metrics` has `deriver_dependency_up{dependency}` (1/0) and
//! `deriver_dependency_errors_total{dependency}`.
//!
//! A dependency is up from its last success until its next failure, and down from a failure
//! until the next success; one never reported is absent.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DependencyHealth {
    pub up: bool,
    /// When the current state began (RFC 3339).
    pub since: String,
    /// The last failure (kept after recovery, for the record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failures reported since the process started.
    pub errors: u64,
    /// For a Postgres connection: whether it is encrypted, with which protocol, and how the
    /// server's certificate was checked (as of its last connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
}

static STATE: Mutex<BTreeMap<String, DependencyHealth>> = Mutex::new(BTreeMap::new());

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `dependency` answered as expected.
pub fn report_ok(dependency: &str) {
    let Ok(mut state) = STATE.lock() else { return };
    let entry =
        state.entry(dependency.to_string()).or_insert_with(|| DependencyHealth { up: false, since: now(), last_error: None, errors: 0, encryption: None });
    if !entry.up {
        entry.up = true;
        entry.since = now();
        if entry.errors > 0 {
            tracing::info!(dependency, "dependency is back");
        }
    }
    metrics::gauge!("deriver_dependency_up", "dependency" => dependency.to_string()).set(1.0);
}

/// `dependency` failed (connection refused or cut, timeout, disk full, read-only, …).
pub fn report_error(dependency: &str, error: &dyn std::fmt::Display) {
    let text = crate::redact::redact(&error.to_string());
    let Ok(mut state) = STATE.lock() else { return };
    let entry =
        state.entry(dependency.to_string()).or_insert_with(|| DependencyHealth { up: true, since: now(), last_error: None, errors: 0, encryption: None });
    if entry.up {
        entry.up = false;
        entry.since = now();
    }
    entry.errors += 1;
    entry.last_error = Some(text);
    metrics::gauge!("deriver_dependency_up", "dependency" => dependency.to_string()).set(0.0);
    metrics::counter!("deriver_dependency_errors_total", "dependency" => dependency.to_string()).increment(1);
}

/// How the connection to `dependency` is protected (see [`DependencyHealth::encryption`]);
/// logged once when it first becomes known or changes.
pub fn report_encryption(dependency: &str, encryption: &str) {
    let Ok(mut state) = STATE.lock() else { return };
    let entry =
        state.entry(dependency.to_string()).or_insert_with(|| DependencyHealth { up: true, since: now(), last_error: None, errors: 0, encryption: None });
    if entry.encryption.as_deref() != Some(encryption) {
        tracing::info!(connection = dependency, encryption, "Postgres connection");
        entry.encryption = Some(encryption.to_string());
    }
}

/// Reports the outcome of an operation on `dependency` and passes it on.
pub fn observe<T, E: std::fmt::Display>(dependency: &str, result: Result<T, E>) -> Result<T, E> {
    match &result {
        Ok(_) => report_ok(dependency),
        Err(e) => report_error(dependency, e),
    }
    result
}

/// Every dependency reported so far.
pub fn snapshot() -> BTreeMap<String, DependencyHealth> {
    STATE.lock().map(|s| s.clone()).unwrap_or_default()
}

/// The dependencies that are down, with their last error.
pub fn failing() -> Vec<(String, String)> {
    snapshot().into_iter().filter(|(_, h)| !h.up).map(|(name, h)| (name, h.last_error.unwrap_or_default())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_recoveries_are_tracked() {
        report_error("health-test", &"connection refused to postgres://u:secret@h/db");
        let s = snapshot();
        let h = &s["health-test"];
        assert!(!h.up);
        assert_eq!(h.errors, 1);
        assert!(!h.last_error.as_deref().unwrap().contains("secret"), "{h:?}");
        assert!(failing().iter().any(|(n, _)| n == "health-test"));
        let r: Result<(), String> = observe("health-test", Ok(()));
        assert!(r.is_ok());
        let h = &snapshot()["health-test"];
        assert!(h.up);
        assert_eq!(h.errors, 1);
        assert!(!failing().iter().any(|(n, _)| n == "health-test"));
    }
}
