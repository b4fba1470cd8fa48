//! Plain (non-replication) Postgres connections with pinned session settings, and the catalog
//! questions deriver asks at start.

use std::str::FromStr;

use tokio_postgres::Client;

use super::conninfo::{ConnInfo, SslMode, TlsSettings};
use super::tls;

use super::{KeyColumn, Lsn, TableName};
use crate::error::{Error, Result};
use crate::redact::redact;

/// Session settings pinned on every connection deriver opens (see `values.md`): role or database
/// defaults on the server must not change what deriver stores. Startup options outrank
/// `ALTER ROLE/DATABASE … SET`. Besides the output formats: `search_path` (a role default such as
/// `evil, pg_catalog, public` would let another schema's function, operator or table shadow the
/// one a pipeline means, and changes how `regclass`/`regtype` values print; deriver's own SQL
/// qualifies tables, pipelines name tables in `public` unqualified), and the locale categories
/// that change a value's text (`lc_monetary`: `money`; `lc_numeric` and `lc_time`: `to_char`).
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 \
-c bytea_output=hex -c timezone=UTC -c client_encoding=UTF8 -c search_path=pg_catalog,public -c lc_monetary=C -c lc_numeric=C -c lc_time=C";

/// How one kind of connection presents itself to Postgres.
#[derive(Debug, Clone)]
pub struct Session {
    /// `application_name` (what `pg_stat_activity` shows).
    pub application_name: String,
    /// The name under which `http::health` tracks it (up/down, encryption).
    pub dependency: &'static str,
    /// How errors name it: "cannot connect to {what} at …".
    pub what: &'static str,
    /// Whether its failures count as the dependency being down (`/readyz`).
    pub observed: bool,
    /// Client-side TCP keepalive idle time.
    pub keepalives_idle: Option<std::time::Duration>,
}

impl Session {
    /// Derivation, catalog and command connections.
    pub fn query() -> Session {
        Session { application_name: "deriver".into(), dependency: "postgres", what: "Postgres", observed: true, keepalives_idle: None }
    }
}

/// A connection for derivation, catalog questions and the commands.
pub async fn connect(url: &str) -> Result<Client> {
    connect_as(url, &Session::query()).await
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(std::path::PathBuf::from)
}

/// The TLS settings `url` asks for, resolved as libpq resolves them.
pub fn tls_settings(url: &str) -> Result<TlsSettings> {
    ConnInfo::parse(url)?.tls(&env_var, home().as_deref())
}

/// Opens a connection with TLS as `url` asks (libpq's `sslmode` and friends), the pinned session
/// settings, and a clear error naming the cause when it fails.
pub async fn connect_as(url: &str, session: &Session) -> Result<Client> {
    let info = ConnInfo::parse(url)?;
    let tls = info.tls(&env_var, home().as_deref())?;
    let mut cfg = tokio_postgres::Config::from_str(&info.for_query())
        .map_err(|e| Error::config("postgres.url is not a valid connection string").with_detail(tls::chain(&e)))?;
    cfg.options(SESSION_OPTIONS);
    cfg.application_name(&session.application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(10));
    }
    if let Some(idle) = session.keepalives_idle {
        cfg.keepalives_idle(idle);
    }
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let target = redact(url);
    cfg.ssl_mode(tls::first_mode(tls.mode));
    let (make, log) = tls::connector(&tls)?;
    let mut result = cfg.connect(make).await.map_err(|e| (e, log));
    if let Err((e, _)) = &result {
        if tls::retry_with_tls(tls.mode, e) {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (make, log) = tls::connector(&tls)?;
            result = cfg.connect(make).await.map_err(|e| (e, log));
        }
    }
    let result = result.map_err(|(e, log)| tls::explain(&e, &log, &tls, &host, session.what, &target));
    let (client, connection) = if session.observed { crate::health::observe(session.dependency, result)? } else { result? };
    let (dependency, observed) = (session.dependency, session.observed);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // Lost (server gone, connection cut): down until the next successful connect.
            if observed {
                crate::health::report_error(dependency, &tls::chain(&e));
            }
            tracing::debug!(error = %tls::chain(&e), "postgres connection closed");
        }
    });
    let encryption = encryption(&client, &tls).await;
    tracing::debug!(connection = dependency, %encryption, "connected to Postgres");
    crate::health::report_encryption(dependency, &encryption);
    Ok(client)
}

/// Whether a connection is encrypted, as the server sees it (`pg_stat_ssl`), and how well
/// deriver checked whom it talks to.
async fn encryption(client: &Client, tls: &TlsSettings) -> String {
    let row = client.query_opt("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await;
    describe_ssl(row.ok().flatten().map(|r| (r.get(0), r.get(1), r.get(2))), tls)
}

/// The replication connection's encryption, looked up by the slot's walsender.
pub async fn replication_encryption(client: &Client, slot: &str, tls: &TlsSettings) -> String {
    let row = client
        .query_opt("SELECT s.ssl, s.version, s.cipher FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1", &[&slot])
        .await;
    describe_ssl(row.ok().flatten().map(|r| (r.get(0), r.get(1), r.get(2))), tls)
}

fn describe_ssl(row: Option<(bool, Option<String>, Option<String>)>, tls: &TlsSettings) -> String {
    match row {
        Some((true, version, cipher)) => format!("encrypted ({} {}; {})", version.unwrap_or_default(), cipher.unwrap_or_default(), tls.describe()),
        Some((false, _, _)) if tls.mode == SslMode::Prefer || tls.mode == SslMode::Allow => {
            format!("NOT encrypted (sslmode={}: the server offered no TLS)", tls.mode)
        }
        Some((false, _, _)) => format!("NOT encrypted (sslmode={})", tls.mode),
        None => format!("unknown ({})", tls.describe()),
    }
}

/// The replication connection string for libpq: the configured URL with the resolved TLS
/// settings written out, `replication=database`, and the pinned session settings as startup
/// `options`.
pub fn replication_conninfo(url: &str) -> Result<String> {
    let info = ConnInfo::parse(url)?;
    let tls = info.tls(&env_var, home().as_deref())?;
    let system_roots = openssl_probe::probe().cert_file;
    info.for_libpq(&tls, system_roots.as_deref(), &[("replication", "database"), ("options", SESSION_OPTIONS)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_conninfo_keeps_parameters_and_pins_settings() {
        let c = replication_conninfo("postgres://u:p@h:5432/db?sslmode=disable&application_name=x y").unwrap();
        assert!(c.starts_with("postgres://u:p@h:5432/db?application_name=x%20y&sslmode=disable&ssl_min_protocol_version=TLSv1.2&replication=database&options=-c%20datestyle%3DISO"), "{c}");
        assert!(!c.contains('+'));
        let kv = replication_conninfo("host=h dbname=db sslmode=disable").unwrap();
        assert!(kv.ends_with("replication=database options='-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c bytea_output=hex -c timezone=UTC -c client_encoding=UTF8 -c search_path=pg_catalog,public -c lc_monetary=C -c lc_numeric=C -c lc_time=C'"), "{kv}");
    }
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub wal_status: Option<String>,
    pub active_pid: Option<i32>,
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>> {
    let row = client
        .query_opt(
            "SELECT plugin::text, confirmed_flush_lsn::text, wal_status, active_pid \
             FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        confirmed_flush_lsn: r.get::<_, Option<String>>(1).and_then(|s| s.parse().ok()),
        wal_status: r.get(2),
        active_pid: r.get(3),
    }))
}

pub async fn wal_level(client: &Client) -> Result<String> {
    Ok(client.query_one("SHOW wal_level", &[]).await?.get(0))
}

pub async fn current_wal_lsn(client: &Client) -> Result<Lsn> {
    let s: String = client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
    s.parse().map_err(|e: String| Error::fatal(e))
}

/// The tables a publication covers (`None` when the publication does not exist), with the
/// published column list of each (`None` = all columns).
/// The tables a publication covers, each with its published columns (`None` = all).
pub type PublishedTables = Vec<(TableName, Option<Vec<String>>)>;

pub async fn publication_tables(client: &Client, publication: &str) -> Result<Option<PublishedTables>> {
    let exists = client.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication]).await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows =
        client.query("SELECT schemaname::text, tablename::text, attnames::text[] FROM pg_publication_tables WHERE pubname = $1", &[&publication]).await?;
    Ok(Some(rows.iter().map(|r| (TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2))).collect()))
}

/// Tables of the publication that publish only some rows (a row filter), with the filter.
pub async fn publication_row_filters(client: &Client, publication: &str) -> Result<Vec<(TableName, String)>> {
    let rows = client
        .query("SELECT schemaname::text, tablename::text, rowfilter FROM pg_publication_tables WHERE pubname = $1 AND rowfilter IS NOT NULL", &[&publication])
        .await?;
    Ok(rows.iter().map(|r| (TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2))).collect())
}

/// What deriver needs to know about a source table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub key: Vec<KeyColumn>,
    /// `d` default (primary key), `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
    /// Columns the old row image carries on update/delete.
    pub identity_columns: Vec<String>,
}

pub async fn table_info(client: &Client, table: &TableName, key: Option<&[String]>) -> Result<TableInfo> {
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(rel) = rel else {
        return Err(Error::config(format!("table {table} does not exist")));
    };
    let oid: u32 = rel.get(0);
    let ident: String = rel.get(1);
    let replica_identity = ident.chars().next().unwrap_or('d');
    let pk: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let identity_columns: Vec<String> = match replica_identity {
        'd' => pk.clone(),
        'i' => client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN LATERAL unnest(i.indkey) AS k(attnum) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisreplident",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        'f' => client
            .query("SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped", &[&oid])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        _ => Vec::new(),
    };
    let key_names: Vec<String> = match key {
        Some(k) => k.to_vec(),
        None if !pk.is_empty() => pk.clone(),
        None => {
            return Err(Error::config(format!("table {table} has no primary key; set `source.key` to the column(s) that identify a row"))
                .with_cause(crate::error::Cause::NoPrimaryKey))
        }
    };
    let mut cols = Vec::new();
    for name in &key_names {
        let row = client
            .query_opt(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                &[&oid, name],
            )
            .await?;
        match row {
            Some(r) => cols.push(KeyColumn { name: name.clone(), type_name: r.get(0) }),
            None => return Err(Error::config(format!("key column `{name}` does not exist in table {table}"))),
        }
    }
    Ok(TableInfo { key: cols, replica_identity, identity_columns })
}

/// The SQL type (`format_type(atttypid, atttypmod)`: `character(5)` casts without truncating,
/// unlike `character`) of every column of a table.
pub async fn column_types(client: &Client, table: &TableName) -> Result<std::collections::HashMap<String, String>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.schema, &table.name],
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::config(format!("table {table} does not exist")));
    }
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
