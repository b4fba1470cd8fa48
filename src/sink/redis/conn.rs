//! Redis connections, for a single server or a Redis Cluster (`redis.cluster = true`).
//!
//! [`connect`] gives a [`RedisConn`] every part of deriver uses for commands whose keys route
//! them: on a cluster, the crate's cluster client sends each command (and each pipeline, whose
//! keys must then share a slot) to the master of its keys' slot and follows redirections.
//!
//! [`connect_pinned`] gives the sink its connection: a plain connection to the one server that
//! holds a pipeline's hash slot (on a single server, simply that server). The sink queues a large
//! batch as several script calls inside `MULTI` … `EXEC` over several round trips; on a cluster
//! client those commands could go out on different connections — it reconnects, falls back to
//! another node, and follows a `MOVED` by sending the command again elsewhere, which would run a
//! queued script on its own, outside the transaction. A pinned connection never does: a moved
//! slot or a lost connection makes the command fail, the batch is retried whole, and the next
//! connection goes to the slot's new master.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Client, ClientTlsConfig, Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::config::RedisConfig;
use crate::error::{Error, Result};
use crate::redact::redact;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// redis-rs gives every reply 500 ms by default; the EVAL of a 4 MiB chunk or the EXEC of a
/// large batch takes longer (found by the benchmarks). A reply that takes a minute is a hung
/// server: the batch is retried (its writes are absolute and checkpoint-guarded).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a single Redis server or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisConn {
    /// The hash slot of `key` (cluster), asked of the cluster; `None` on a single server.
    pub async fn slot_of(&mut self, key: &str) -> Result<Option<u16>> {
        match self {
            RedisConn::Single(_) => Ok(None),
            RedisConn::Cluster(c) => {
                let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(c).await?;
                Ok(Some(slot))
            }
        }
    }

    /// Runs a command that names no key (`SCAN`) on the master holding `slot` (from
    /// [`RedisConn::slot_of`]); on a single server, or with no slot, like any command.
    pub async fn query_at_slot<T: FromRedisValue>(&mut self, slot: Option<u16>, cmd: &Cmd) -> Result<T> {
        match (self, slot) {
            (RedisConn::Cluster(c), Some(slot)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
                let value = c.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
            }
            (conn, _) => Ok(cmd.query_async(conn).await?),
        }
    }
}

/// Connects to the configured Redis: the server, or the cluster through its seed nodes.
pub async fn connect(cfg: &RedisConfig) -> Result<RedisConn> {
    let nodes = cfg.nodes()?;
    let shown = redact(&nodes.join(","));
    let conn = if cfg.cluster {
        connect_cluster(&nodes, cfg).await.map(RedisConn::Cluster)
    } else {
        let info = nodes[0].as_str().into_connection_info().map_err(|e| Error::config("redis.url is not a valid Redis URL").with_detail(e))?;
        single(client(info, cfg)?, &shown).await.map(RedisConn::Single)
    };
    crate::health::observe("redis", conn)
}

/// A connection to the one server that holds `key`'s hash slot (see the module comment); on a
/// single server the same as [`connect`].
pub async fn connect_pinned(cfg: &RedisConfig, key: &str) -> Result<RedisConn> {
    if !cfg.cluster {
        return connect(cfg).await;
    }
    let result = async {
        let nodes = cfg.nodes()?;
        let mut cluster = RedisConn::Cluster(connect_cluster(&nodes, cfg).await?);
        let slot = cluster.slot_of(key).await?.expect("a cluster connection");
        let slots: Value = cluster.query_at_slot(Some(slot), redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let seed = nodes[0].as_str().into_connection_info().map_err(|e| Error::config("redis.url is not a valid Redis URL").with_detail(e))?;
        let seed_host = match seed.addr() {
            ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
            _ => String::new(),
        };
        let (host, port) = slot_master(&slots, slot)
            .ok_or_else(|| Error::transient(format!("no master serves the hash slot {slot} of `{key}` (is the cluster resharding?)")))?;
        // A master announced without an endpoint ("" or "?") is the node that was asked; with
        // one seed, that is the seed.
        let host = if host.is_empty() || host == "?" { seed_host } else { host };
        let addr = match seed.addr().clone() {
            ConnectionAddr::Tcp(_, _) => ConnectionAddr::Tcp(host.clone(), port),
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => ConnectionAddr::TcpTls { host: host.clone(), port, insecure, tls_params },
            _ => return Err(Error::config("redis.url: cluster nodes are reached over TCP (redis:// or rediss://)")),
        };
        let client = client(seed.set_addr(addr), cfg)?;
        tracing::debug!(key, slot, node = %format!("{host}:{port}"), "pinned a Redis connection to the master of the slot");
        single(client, &format!("{host}:{port}")).await.map(RedisConn::Single)
    }
    .await;
    crate::health::observe("redis", result)
}

async fn single(client: Client, shown: &str) -> Result<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection_with_config(&config))
        .await
        .map_err(|_| Error::transient(format!("cannot connect to Redis at {shown}: timed out")))
        .and_then(|r| r.map_err(|e| Error::transient(format!("cannot connect to Redis at {shown}")).with_detail(e)))
}

/// The CA and client certificate of `redis.tls_*` (PEM files), when any is set.
fn tls_certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>> {
    if cfg.tls_ca_file.is_none() && cfg.tls_cert_file.is_none() && cfg.tls_key_file.is_none() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::config(format!("cannot read redis.{key} {}", path.display())).with_detail(e))
    };
    let root_cert = cfg.tls_ca_file.as_deref().map(|p| read("tls_ca_file", p)).transpose()?;
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig { client_cert: read("tls_cert_file", cert)?, client_key: read("tls_key_file", key)? }),
        (None, None) => None,
        _ => return Err(Error::config("redis.tls_cert_file and redis.tls_key_file go together (set both for a client certificate)")),
    };
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// A client for one server, with the configured TLS certificates (they need a `rediss://` URL).
fn client(info: redis::ConnectionInfo, cfg: &RedisConfig) -> Result<Client> {
    match tls_certificates(cfg)? {
        Some(certs) => Client::build_with_tls(info, certs)
            .map_err(|e| Error::config("redis.tls_* is set but cannot be used (it needs a rediss:// URL and PEM files)").with_detail(e)),
        None => Client::open(info).map_err(|e| Error::config("redis.url is not a valid Redis URL").with_detail(e)),
    }
}

async fn connect_cluster(nodes: &[String], cfg: &RedisConfig) -> Result<ClusterConnection> {
    let shown = redact(&nodes.join(","));
    let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str));
    if let Some(certs) = tls_certificates(cfg)? {
        builder = builder.certs(certs);
    }
    let client = builder
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .map_err(|e| Error::config("redis.url is not a valid list of Redis Cluster nodes").with_detail(redact(&e.to_string())))?;
    tokio::time::timeout(CONNECT_TIMEOUT * 3, client.get_async_connection())
        .await
        .map_err(|_| Error::transient(format!("cannot connect to the Redis Cluster at {shown}: timed out")))
        .and_then(|r| r.map_err(|e| Error::transient(format!("cannot connect to the Redis Cluster at {shown}")).with_detail(e)))
}

/// The master endpoint serving `slot` in a `CLUSTER SLOTS` reply:
/// `[[start, end, [host, port, id, …], replica…], …]`.
fn slot_master(reply: &Value, slot: u16) -> Option<(String, u16)> {
    let Value::Array(ranges) = reply else { return None };
    ranges.iter().find_map(|range| {
        let Value::Array(parts) = range else { return None };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        let (start, end) = (int(parts.first())?, int(parts.get(1))?);
        if !(start..=end).contains(&(slot as i64)) {
            return None;
        }
        let Some(Value::Array(master)) = parts.get(2) else { return None };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        Some((host, u16::try_from(int(master.get(1))?).ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_master_of_a_slot() {
        let node = |h: &str, p: i64| Value::Array(vec![Value::BulkString(h.into()), Value::Int(p), Value::BulkString(b"id".to_vec())]);
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("10.0.0.2", 7001)]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("", 7002)]),
        ]);
        assert_eq!(slot_master(&reply, 0), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(slot_master(&reply, 5461), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(slot_master(&reply, 16383), Some(("".into(), 7002)));
        assert_eq!(slot_master(&Value::Array(vec![]), 1), None);
    }
}
