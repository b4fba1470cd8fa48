//! Read-your-writes: waiting until an index or pipelines have applied an LSN (`min_lsn` of search
//! and document reads, `POST /v1/wait`). Waits ride on `Shared::progress`, bumped whenever an
//! applied LSN moves, so nothing polls.

use std::time::Duration;

use serde::Deserialize;

use super::error::{parse_lsn, ApiError, ApiResult};
use crate::runtime::status::Shared;
use crate::source::Lsn;

/// No wait lasts longer than this (below the request time limit).
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// `min_lsn` without `timeout_ms`.
pub const DEFAULT_MIN_LSN_WAIT: Duration = Duration::from_millis(1000);
/// `POST /v1/wait` without `timeout_ms`.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5000);

pub fn wait_duration(timeout_ms: Option<u64>, default: Duration) -> Duration {
    timeout_ms.map_or(default, Duration::from_millis).min(MAX_WAIT)
}

/// Waits until `ready` holds (true) or `timeout` passes (false).
pub async fn wait_until(shared: &Shared, timeout: Duration, ready: impl Fn(&Shared) -> bool) -> bool {
    // Subscribe before the first check so that no bump between the check and the wait is lost.
    let mut rx = shared.progress.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready(shared) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return ready(shared),
        }
    }
}

/// `min_lsn` of a read on `index`: Ok once the index applied it, else 503 `lsn_not_reached`.
pub async fn require_index_lsn(shared: &Shared, index: &str, min_lsn: Option<&str>, timeout_ms: Option<u64>) -> ApiResult<()> {
    let Some(text) = min_lsn.filter(|t| !t.trim().is_empty()) else { return Ok(()) };
    let wanted = parse_lsn("min_lsn", text)?;
    let timeout = wait_duration(timeout_ms, DEFAULT_MIN_LSN_WAIT);
    if wait_until(shared, timeout, |s| s.index_applied(index).is_some_and(|a| a >= wanted)).await {
        Ok(())
    } else {
        Err(ApiError::lsn_not_reached(wanted, shared.index_applied(index)))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    pub lsn: String,
    #[serde(default)]
    pub pipelines: Option<Vec<String>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/wait`: the lowest applied LSN of the pipelines once they all reached `lsn`, else 504.
pub async fn wait(shared: &Shared, req: WaitRequest) -> ApiResult<Option<Lsn>> {
    let wanted = parse_lsn("lsn", &req.lsn)?;
    let Some(doc) = shared.snapshot() else {
        return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting", "deriver is starting"));
    };
    let names: Vec<String> = match req.pipelines.filter(|p| !p.is_empty()) {
        Some(list) => {
            for name in &list {
                if !doc.pipelines.iter().any(|p| &p.name == name) {
                    return Err(ApiError::unknown_pipeline(name).with_field("pipelines"));
                }
            }
            list
        }
        None => doc.pipelines.iter().map(|p| p.name.clone()).collect(),
    };
    let applied = |s: &Shared| -> Option<Lsn> {
        let mut min: Option<Lsn> = None;
        for n in &names {
            let a = s.pipeline_applied(n)?;
            min = Some(min.map_or(a, |m| m.min(a)));
        }
        min
    };
    let timeout = wait_duration(req.timeout_ms, DEFAULT_WAIT);
    if wait_until(shared, timeout, |s| applied(s).is_some_and(|a| a >= wanted)).await {
        Ok(applied(shared))
    } else {
        let now = applied(shared);
        let mut e = ApiError::lsn_not_reached(wanted, now);
        e.status = axum::http::StatusCode::GATEWAY_TIMEOUT;
        e.retry_after = None;
        e.message = format!(
            "not every pipeline applied {wanted} within {} ms (lowest applied: {})",
            timeout.as_millis(),
            now.map_or("nothing".into(), |l| l.to_string())
        );
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn shared_with(applied: Option<Lsn>) -> Arc<Shared> {
        crate::http::testing::shared_with(applied)
    }

    fn set_applied(shared: &Shared, lsn: Lsn) {
        shared.update(|doc| {
            doc.pipelines[0].targets.insert("search:films".into(), Some(lsn));
        });
    }

    #[tokio::test]
    async fn waits_for_the_index_then_answers() {
        let shared = shared_with(Some(Lsn(10)));
        assert!(require_index_lsn(&shared, "films", Some("0/A"), Some(0)).await.is_ok());
        let e = require_index_lsn(&shared, "films", Some("0/14"), Some(30)).await.unwrap_err();
        assert_eq!((e.code, e.status.as_u16(), e.retry_after), ("lsn_not_reached", 503, Some(1)));
        assert_eq!(e.extra("applied_lsn").unwrap(), "0/A");
        assert_eq!(require_index_lsn(&shared, "films", Some("bogus"), None).await.unwrap_err().code, "invalid_lsn");
        let s2 = shared.clone();
        let waiter = tokio::spawn(async move { require_index_lsn(&s2, "films", Some("0/14"), Some(5000)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        set_applied(&shared, Lsn(0x14));
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn wait_endpoint_logic() {
        let shared = shared_with(Some(Lsn(10)));
        let ok = wait(&shared, WaitRequest { lsn: "0/5".into(), pipelines: None, timeout_ms: Some(0) }).await.unwrap();
        assert_eq!(ok, Some(Lsn(10)));
        let e = wait(&shared, WaitRequest { lsn: "0/50".into(), pipelines: Some(vec!["films".into()]), timeout_ms: Some(20) }).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 504);
        let e = wait(&shared, WaitRequest { lsn: "0/5".into(), pipelines: Some(vec!["nope".into()]), timeout_ms: Some(0) }).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 404);
        let e = wait(&shared, WaitRequest { lsn: "5".into(), pipelines: None, timeout_ms: None }).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
    }
}
