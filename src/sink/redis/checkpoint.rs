//! A pipeline's checkpoint as Redis stores it, and how long after a write Redis is trusted to
//! hold it durably (from its persistence settings).

use std::time::Duration;

use super::{Keys, RedisConn};
use crate::error::{Error, Result};
use crate::sink::Checkpoint;

/// Reads a pipeline's Redis checkpoint (for `status` and start-up).
pub async fn read_checkpoint(conn: &mut RedisConn, keys: &Keys) -> Result<Option<Checkpoint>> {
    let (lsn, hash): (Option<String>, Option<String>) = redis::pipe().get(&keys.checkpoint).get(&keys.hash).query_async(conn).await?;
    match lsn {
        None => Ok(None),
        Some(text) => {
            let lsn = text.parse().map_err(|e: String| Error::fatal(format!("{} holds a bad LSN", keys.checkpoint)).with_detail(e))?;
            Ok(Some(Checkpoint { lsn, definition_hash: hash }))
        }
    }
}

/// How long after a write Redis is trusted to have it on disk, from its persistence settings.
pub async fn durability_delay(conn: &mut RedisConn, configured: Option<u64>) -> Result<Duration> {
    if let Some(ms) = configured {
        return Ok(Duration::from_millis(ms));
    }
    let aof: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(conn).await.unwrap_or_default();
    let fsync: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("appendfsync").query_async(conn).await.unwrap_or_default();
    let aof_on = aof.get(1).map(|v| v == "yes").unwrap_or(false);
    let policy = fsync.get(1).cloned().unwrap_or_default();
    Ok(match (aof_on, policy.as_str()) {
        (true, "always") => Duration::ZERO,
        (true, "everysec") => Duration::from_millis(1500),
        _ => {
            tracing::warn!(
                "Redis runs without appendfsync everysec/always: a Redis crash can lose recent view writes \
                 together with their checkpoint; deriver then re-derives the affected pipeline on the next start"
            );
            Duration::from_millis(1500)
        }
    })
}
