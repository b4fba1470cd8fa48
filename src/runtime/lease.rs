//! Ownership of a pipeline group (one replication slot) among several `deriver run` processes.
//!
//! Each process asks Postgres for a session-level advisory lock keyed by the slot name. The
//! holder runs the pipelines; the others stand by, polling, and take over within a poll interval
//! once the holder's session ends (the process died, or Postgres dropped its connection). The
//! holder checks its lock session continuously; when the session is gone it *fences* itself: no
//! further sink commit happens, and the daemon returns to standing by. Because the lock session
//! can die without the holder noticing at once (a frozen process, a network partition), writes are
//! fenced on the sinks as well: a new holder bumps each pipeline's owner epoch in Redis before it
//! writes, and the Redis apply script refuses a batch carrying an older epoch; the search index
//! writer lock keeps a second writer out of a shared index directory until the old one is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::status::Shared;
use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::status::Holder;

/// The advisory lock key of a slot: 64 bits of SHA-256 over a fixed prefix and the slot name, so
/// it does not collide with locks an application takes with small integers.
pub fn lock_key(slot: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("deriver slot {slot}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A held lock. Dropping it (or losing its connection) releases the lock in Postgres.
pub struct Lease {
    client: Arc<Client>,
    /// Cancelled when the lock session is gone or stops answering: stop writing now.
    pub lost: CancellationToken,
    watchdog: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

impl Lease {
    /// Releases the lock explicitly (a clean shutdown); a dropped connection does the same.
    pub async fn release(self, slot: &str) {
        let _ = self.client.execute("SELECT pg_advisory_unlock($1)", &[&lock_key(slot)]).await;
    }
}

fn application_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "?".into());
    format!("deriver lock {host} pid {}", std::process::id())
}

/// Opens the lock session. Server-side keepalives and an idle-session timeout make Postgres end
/// the session (and so release the lock) soon after the process stops answering.
async fn connect(cfg: &Config) -> Result<Client> {
    let session = crate::source::postgres::Session {
        application_name: application_name(),
        dependency: "lock",
        what: "Postgres for the ownership lock",
        observed: false,
        keepalives_idle: Some(Duration::from_secs(5)),
    };
    let client = crate::source::postgres::connect_as(cfg.postgres_url()?, &session).await?;
    let check = cfg.runtime.lock_check_ms.max(100);
    // A session that has not run a statement for several check intervals belongs to a frozen or
    // cut-off process: let Postgres end it. (Settings a non-superuser may change.)
    let idle_timeout = (check * 5).max(2000);
    client
        .batch_execute(&format!(
            "SET idle_session_timeout = {idle_timeout}; SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
        ))
        .await
        .map_err(Error::from)?;
    Ok(client)
}

/// The slot's ownership held by a command that does a daemon's work without one (`deriver reindex`,
/// `deriver dead-letters --retry`, `deriver audit --repair` when no daemon answers): a daemon
/// starting meanwhile stands by until the command is done (the lock goes with this session, at the
/// latest when the process ends) instead of meeting the stores and the index the command holds.
pub struct CommandLease {
    _client: Client,
}

/// Takes the slot's ownership for `command`, or says who has it.
pub async fn hold_for_command(cfg: &Config, command: &str) -> Result<CommandLease> {
    let slot = &cfg.postgres.slot;
    let session = crate::source::postgres::Session {
        application_name: format!("deriver {command} pid {}", std::process::id()),
        dependency: "lock",
        what: "Postgres for the ownership lock",
        observed: false,
        keepalives_idle: Some(Duration::from_secs(5)),
    };
    let client = crate::source::postgres::connect_as(cfg.postgres_url()?, &session).await?;
    let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(slot)]).await?.get(0);
    if !got {
        let who =
            holder(&client, slot).await.ok().flatten().map(|h| format!(" (pid {}, {})", h.pid, h.application_name.unwrap_or_default())).unwrap_or_default();
        return Err(Error::fatal(format!(
            "a deriver process owns slot `{slot}`{who} but no daemon answers at http://{} (http.listen); `deriver {command}` goes through a running daemon, or works alone: is it still starting?",
            cfg.http.listen
        )));
    }
    Ok(CommandLease { _client: client })
}

/// Who holds the lock of `slot` now, if anyone.
pub async fn holder(client: &Client, slot: &str) -> Result<Option<Holder>> {
    let row = client
        .query_opt(
            "SELECT a.pid, a.application_name, host(a.client_addr), to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
              LIMIT 1",
            &[&lock_key(slot)],
        )
        .await?;
    Ok(row.map(|r| Holder { pid: r.get(0), application_name: r.get(1), client_addr: r.get(2), since: r.get(3) }))
}

/// Waits until this process holds the lock of the configured slot, standing by (and saying so in
/// status) while another process holds it. `None` when cancelled first.
///
/// `first`: the process's first acquisition. Until a connection has worked once, errors are
/// returned as they are (a wrong URL or password at start-up must stop the process loudly);
/// afterwards, and always after a first ownership, a standby rides out outages.
pub async fn acquire(cfg: &Config, shared: &Shared, cancel: &CancellationToken, first: bool) -> Result<Option<Lease>> {
    let slot = cfg.postgres.slot.clone();
    let key = lock_key(&slot);
    let poll = Duration::from_millis(cfg.runtime.lock_poll_ms.max(100));
    let mut retry = super::retry::Retry::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut announced: Option<Option<Holder>> = None;
    let mut connected_once = !first;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let attempt: Result<Option<Lease>> = async {
            let client = connect(cfg).await?;
            connected_once = true;
            loop {
                let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
                if got {
                    return Ok(Some(start_watchdog(client, cfg)));
                }
                let who = holder(&client, &slot).await.unwrap_or(None);
                if announced.as_ref() != Some(&who) {
                    match &who {
                        Some(h) => info!(slot = %slot, holder_pid = h.pid, holder = h.application_name.as_deref().unwrap_or("?"), "another deriver owns this slot; standing by"),
                        None => info!(slot = %slot, "standing by"),
                    }
                    shared.set_standby(Some(who.clone()));
                    metrics::gauge!("deriver_lease_owner").set(0.0);
                    announced = Some(who);
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
        .await;
        match attempt {
            Ok(lease) => {
                if lease.is_some() {
                    info!(slot = %slot, "this process owns the slot now");
                    shared.set_standby(None);
                    metrics::gauge!("deriver_lease_owner").set(1.0);
                }
                return Ok(lease);
            }
            Err(e) if connected_once && (e.is_transient() || e.is_postgres_answer()) => {
                warn!(error = %e, "cannot take the ownership lock; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(retry.next_delay()) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks the lock session every `runtime.lock_check_ms`; a failed or slow check cancels `lost`.
fn start_watchdog(client: Client, cfg: &Config) -> Lease {
    let lost = CancellationToken::new();
    let every = Duration::from_millis(cfg.runtime.lock_check_ms.max(100));
    let client = Arc::new(client);
    let probe = client.clone();
    let token = lost.clone();
    let watchdog = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = matches!(tokio::time::timeout(every * 3, probe.simple_query("SELECT 1")).await, Ok(Ok(_)));
            if !ok || probe.is_closed() {
                warn!("the ownership lock session is gone: fencing this process (no more writes) and standing by");
                metrics::gauge!("deriver_lease_owner").set(0.0);
                metrics::counter!("deriver_lease_lost_total").increment(1);
                token.cancel();
                return;
            }
        }
    });
    Lease { client, lost, watchdog }
}
