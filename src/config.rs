//! Configuration: a TOML file overlaid by `DERIVER__<SECTION>__<KEY>` environment variables
//! (see `../shared/spec/cli-and-config.md`). Environment variables alone are enough.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redact::redact;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub index: IndexConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub pipelines: PipelinesConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Option<String>,
    #[serde(default = "default_name")]
    pub slot: String,
    #[serde(default = "default_name")]
    pub publication: String,
    /// A file holding the password (Kubernetes/Docker secrets), so that it stays out of the URL
    /// and the environment; one trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One `redis://`/`rediss://` URL; with `cluster = true`, a comma-separated list of seed nodes.
    pub url: Option<String>,
    /// `url` names a Redis Cluster: each pipeline's keys carry the hash tag `{<pipeline>}`, so
    /// they live in one hash slot (see `sink::redis::Keys`).
    #[serde(default)]
    pub cluster: bool,
    #[serde(default = "default_name")]
    pub prefix: String,
    /// How long after a write Redis is trusted to have made it durable (AOF `everysec` needs ~1 s).
    /// `auto` (default) reads `appendonly`/`appendfsync` from the server.
    #[serde(default)]
    pub durability_delay_ms: Option<u64>,
    /// A view value larger than this is refused (the record becomes a dead letter).
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
    /// With `rediss://`: a PEM file of the CA certificates that sign the server's certificate
    /// (instead of the system trust store).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// With `rediss://`: a client certificate and its key (PEM), for servers that ask for one.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    #[serde(default = "default_index_dir")]
    pub dir: PathBuf,
    /// Memory budget of each tantivy writer.
    #[serde(default = "default_writer_mb")]
    pub writer_memory_mb: usize,
    /// Previous generations kept for rollback after a reindex.
    #[serde(default = "default_keep_generations")]
    pub keep_generations: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinesConfig {
    #[serde(default = "default_pipelines_dir")]
    pub dir: PathBuf,
}

/// Tuning knobs of the workers' batching (an addition to the spec; all optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// A batch is flushed as soon as the stream has nothing more queued at a transaction
    /// boundary; under a continuous stream, once it holds this many changed rows …
    #[serde(default = "default_batch_changes")]
    pub batch_max_changes: usize,
    /// … or once its oldest transaction waited this long.
    #[serde(default = "default_batch_ms")]
    pub batch_max_ms: u64,
    /// Keys re-derived per SQL round trip.
    #[serde(default = "default_derive_chunk")]
    pub derive_chunk: usize,
    /// Postgres connections each pipeline derives a batch's chunks on at once (a batch of more
    /// than one chunk runs that many queries in parallel; 1: one after another).
    #[serde(default = "default_derive_connections")]
    pub derive_connections: usize,
    /// While a backlog drains (batches fill up with more already queued), batch limits grow up
    /// to this many times `batch_max_changes` / `batch_max_ms`: fewer, larger commits. They come
    /// back as soon as the stream has caught up. 1: fixed limits.
    #[serde(default = "default_backlog_batch_factor")]
    pub backlog_batch_factor: usize,
    /// A batch is derived while the one before it commits (its search index commit runs on the
    /// writer's thread meanwhile); false: derive, commit, then the next batch.
    #[serde(default = "default_true")]
    pub overlap_commits: bool,
    /// When nothing arrives for this long, advance the applied LSN on keepalives.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Dirty keys per pipeline kept in memory before a large transaction spills them to disk.
    #[serde(default = "default_dirty_keys")]
    pub dirty_keys_in_memory: usize,
    /// A standby process tries to take the slot's ownership lock this often.
    #[serde(default = "default_lock_ms")]
    pub lock_poll_ms: u64,
    /// The owner checks its lock session this often; a check failing (or not answering within
    /// three intervals) fences the process.
    #[serde(default = "default_lock_ms")]
    pub lock_check_ms: u64,
    /// `/readyz` answers 503 while any pipeline's lag in seconds (the age of its oldest change
    /// not yet durable in every target) exceeds this.
    #[serde(default = "default_ready_max_lag_secs")]
    pub ready_max_lag_secs: f64,
}

/// `[audit]`: the continuous audit `deriver run` does in the background (an addition to the spec;
/// `deriver audit` on the command line needs none of it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit a sample of every pipeline in the background while streaming.
    #[serde(default)]
    pub continuous: bool,
    /// Share of each pipeline's keys audited per round, in percent. Rounds walk through the key
    /// space, so every key is audited once every `100 / sample_percent` rounds.
    #[serde(default = "default_audit_sample")]
    pub sample_percent: f64,
    /// Pause between two rounds (and before the first one).
    #[serde(default = "default_audit_interval")]
    pub interval_secs: u64,
    /// At most this many keys compared per second (0 = no limit), to keep the load on Postgres
    /// and Redis small.
    #[serde(default = "default_audit_rate")]
    pub keys_per_second: u64,
    /// At most this many keys per round (bounds the audit's memory).
    #[serde(default = "default_audit_max_keys")]
    pub max_keys_per_round: usize,
    /// Re-derive drifted keys through the normal write path; off: report only.
    #[serde(default)]
    pub repair: bool,
}

fn default_audit_sample() -> f64 {
    1.0
}
fn default_audit_interval() -> u64 {
    300
}
fn default_audit_rate() -> u64 {
    2000
}
fn default_audit_max_keys() -> usize {
    100_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            continuous: false,
            sample_percent: default_audit_sample(),
            interval_secs: default_audit_interval(),
            keys_per_second: default_audit_rate(),
            max_keys_per_round: default_audit_max_keys(),
            repair: false,
        }
    }
}

impl AuditConfig {
    fn check(&self) -> Result<()> {
        if !(self.sample_percent > 0.0 && self.sample_percent <= 100.0) {
            return Err(Error::config(format!("audit.sample_percent is a percentage in (0, 100], not {}", self.sample_percent)));
        }
        if self.max_keys_per_round == 0 {
            return Err(Error::config("audit.max_keys_per_round must be at least 1"));
        }
        Ok(())
    }
}

fn default_name() -> String {
    "deriver".into()
}
fn default_index_dir() -> PathBuf {
    "data/index".into()
}
fn default_max_value() -> usize {
    64 << 20
}
fn default_writer_mb() -> usize {
    128
}
fn default_keep_generations() -> usize {
    1
}
fn default_listen() -> String {
    "127.0.0.1:7700".into()
}
fn default_pipelines_dir() -> PathBuf {
    "pipelines".into()
}
fn default_batch_changes() -> usize {
    5000
}
fn default_batch_ms() -> u64 {
    50
}
fn default_derive_chunk() -> usize {
    1000
}
fn default_derive_connections() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_backlog_batch_factor() -> usize {
    8
}
fn default_lock_ms() -> u64 {
    1000
}
fn default_idle_ms() -> u64 {
    1000
}
fn default_ready_max_lag_secs() -> f64 {
    10.0
}
fn default_dirty_keys() -> usize {
    100_000
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: false,
            prefix: default_name(),
            durability_delay_ms: None,
            max_value_bytes: default_max_value(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}
impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { dir: default_index_dir(), writer_memory_mb: default_writer_mb(), keep_generations: default_keep_generations() }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), token: None }
    }
}
impl Default for PipelinesConfig {
    fn default() -> Self {
        PipelinesConfig { dir: default_pipelines_dir() }
    }
}
impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            batch_max_changes: default_batch_changes(),
            batch_max_ms: default_batch_ms(),
            derive_chunk: default_derive_chunk(),
            derive_connections: default_derive_connections(),
            backlog_batch_factor: default_backlog_batch_factor(),
            overlap_commits: true,
            idle_ms: default_idle_ms(),
            dirty_keys_in_memory: default_dirty_keys(),
            lock_poll_ms: default_lock_ms(),
            lock_check_ms: default_lock_ms(),
            ready_max_lag_secs: default_ready_max_lag_secs(),
        }
    }
}

impl RuntimeConfig {
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_ms)
    }

    fn check(&self) -> Result<()> {
        if !(self.ready_max_lag_secs.is_finite() && self.ready_max_lag_secs > 0.0 && self.ready_max_lag_secs < 1e9) {
            return Err(Error::config(format!("runtime.ready_max_lag_secs must be a positive number of seconds, not {}", self.ready_max_lag_secs)));
        }
        if !(1..=64).contains(&self.backlog_batch_factor) {
            return Err(Error::config(format!("runtime.backlog_batch_factor must be between 1 and 64, not {}", self.backlog_batch_factor)));
        }
        if !(1..=16).contains(&self.derive_connections) {
            return Err(Error::config(format!("runtime.derive_connections must be between 1 and 16, not {}", self.derive_connections)));
        }
        Ok(())
    }

    /// The lag bound of readiness (`runtime.ready_max_lag_secs`).
    pub fn ready_max_lag(&self) -> Duration {
        Duration::from_secs_f64(self.ready_max_lag_secs)
    }
}

impl Config {
    /// `--config PATH`, else `$DERIVER_CONFIG`, else `./deriver.toml` when present; then the
    /// environment on top.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let file = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("DERIVER_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("deriver.toml")).filter(|p| p.exists()));
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            if !path.exists() {
                return Err(Error::config(format!("configuration file {} does not exist", path.display())));
            }
            builder = builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(config::Environment::with_prefix("DERIVER").prefix_separator("__").separator("__").try_parsing(true));
        let raw = builder.build().map_err(|e| Error::config("could not read the configuration").with_detail(redact(&e.to_string())))?;
        let cfg: Config = raw.try_deserialize().map_err(|e| {
            let detail = redact(&e.to_string());
            let hint = if detail.contains("postgres") { " (set postgres.url or DERIVER__POSTGRES__URL)" } else { "" };
            Error::config(format!("invalid configuration{hint}")).with_detail(detail)
        })?;
        let mut cfg = cfg;
        cfg.postgres.read_password_file()?;
        cfg.check_names()?;
        cfg.redis.check()?;
        cfg.audit.check()?;
        cfg.runtime.check()?;
        Ok(cfg)
    }

    /// Slot and publication names deriver can pass safely through the replication protocol.
    fn check_names(&self) -> Result<()> {
        let ok = |n: &str| !n.is_empty() && n.len() <= 63 && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok(&self.postgres.slot) {
            return Err(Error::config(format!("postgres.slot `{}` must be 1-63 characters of a-z, 0-9 and _", self.postgres.slot)));
        }
        if !ok(&self.postgres.publication) {
            return Err(Error::config(format!("postgres.publication `{}` must be 1-63 characters of a-z, 0-9 and _", self.postgres.publication)));
        }
        Ok(())
    }

    pub fn postgres_url(&self) -> Result<&str> {
        self.postgres.url.as_deref().ok_or_else(|| Error::config("postgres.url is not set (set it in deriver.toml or DERIVER__POSTGRES__URL)"))
    }
}

impl PostgresConfig {
    /// Adds the password of `password_file` to the URL as libpq's `password` parameter (a URL
    /// that already carries a password is refused: one place for a secret).
    fn read_password_file(&mut self) -> Result<()> {
        let (Some(path), Some(url)) = (&self.password_file, &self.url) else { return Ok(()) };
        let text = std::fs::read_to_string(path).map_err(|e| Error::config(format!("cannot read postgres.password_file {}", path.display())).with_detail(e))?;
        let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if password.is_empty() {
            return Err(Error::config(format!("postgres.password_file {} is empty", path.display())));
        }
        if url_has_password(url) {
            return Err(Error::config(format!(
                "postgres.url `{}` carries a password and postgres.password_file is set; keep the password in one place",
                redact(url)
            )));
        }
        self.url = Some(if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let encoded = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
            format!("{url}{}password={encoded}", if url.contains('?') { "&" } else { "?" })
        } else {
            format!("{url} password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'"))
        });
        Ok(())
    }
}

/// Whether a connection string carries a password: `password=` or a URL's `user:secret@`.
fn url_has_password(url: &str) -> bool {
    if url.split(['?', '&', ' ']).any(|p| p.trim_start().starts_with("password")) {
        return true;
    }
    let authority = url.split_once("://").map(|(_, r)| r.split(['/', '?']).next().unwrap_or("")).unwrap_or("");
    authority.rfind('@').is_some_and(|at| authority[..at].contains(':'))
}

impl RedisConfig {
    /// The URLs to connect to: `url` itself, or with `cluster = true` its comma-separated seeds.
    pub fn nodes(&self) -> Result<Vec<String>> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| Error::config("a pipeline has a redis target but redis.url is not set (set it in deriver.toml or DERIVER__REDIS__URL)"))?;
        if !self.cluster {
            return Ok(vec![url.to_string()]);
        }
        Ok(url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect())
    }

    /// What can be told without connecting: a cluster's seed list and a prefix that cannot hold
    /// a hash tag of its own; a seed list without `cluster = true`.
    fn check(&self) -> Result<()> {
        if self.url.is_none() {
            return Ok(());
        }
        self.check_topology()?;
        for node in self.nodes()? {
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(node.as_str()) {
                return Err(Error::config(format!(
                    "redis.url `{}` is not a valid Redis URL (redis://[user:password@]host[:port][/db], rediss:// for TLS)",
                    redact(&node)
                ))
                .with_detail(redact(&e.to_string())));
            }
        }
        Ok(())
    }

    fn check_topology(&self) -> Result<()> {
        let Some(url) = self.url.as_deref() else { return Ok(()) };
        if !self.cluster {
            if url.split(',').skip(1).any(|n| n.trim_start().starts_with("redis://") || n.trim_start().starts_with("rediss://")) {
                return Err(Error::config(format!(
                    "redis.url `{}` lists several nodes; set redis.cluster = true (DERIVER__REDIS__CLUSTER=true) for a Redis Cluster",
                    redact(url)
                )));
            }
            return Ok(());
        }
        let nodes = self.nodes()?;
        if nodes.is_empty() {
            return Err(Error::config("redis.cluster = true but redis.url names no node (a comma-separated list of redis:// or rediss:// URLs)"));
        }
        let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_string());
        for n in &nodes {
            if !matches!(scheme(n).as_deref(), Some("redis" | "rediss")) {
                return Err(Error::config(format!(
                    "redis.url: the cluster node `{}` is not a redis:// or rediss:// URL (a cluster is reached over TCP; list its nodes separated by commas)",
                    redact(n)
                )));
            }
        }
        if nodes.iter().any(|n| scheme(n) != scheme(&nodes[0])) {
            return Err(Error::config("redis.url: the cluster nodes mix redis:// and rediss:// (all of them use TLS or none)"));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(Error::config(format!(
                "redis.prefix `{}` must not contain `{{` or `}}` with redis.cluster = true: deriver puts each pipeline's keys in one hash slot with the hash tag `{{<pipeline>}}`",
                self.prefix
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{PostgresConfig, RedisConfig, RuntimeConfig};

    #[test]
    fn the_readiness_lag_bound_defaults_to_ten_seconds_and_is_checked() {
        let rt = RuntimeConfig::default();
        assert_eq!(rt.ready_max_lag(), std::time::Duration::from_secs(10));
        assert!(rt.check().is_ok());
        let parse = |text: &str| -> RuntimeConfig {
            config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml)).build().unwrap().try_deserialize().unwrap()
        };
        // An integer (as environment variables give it) and a fraction.
        assert_eq!(parse("ready_max_lag_secs = 2").ready_max_lag(), std::time::Duration::from_secs(2));
        assert_eq!(parse("ready_max_lag_secs = 0.5").ready_max_lag(), std::time::Duration::from_millis(500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = RuntimeConfig { ready_max_lag_secs: bad, ..RuntimeConfig::default() }.check().unwrap_err();
            assert!(e.message.contains("runtime.ready_max_lag_secs"), "{}", e.message);
        }
    }

    #[test]
    fn password_file_joins_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "p@ss w'rd\n").unwrap();
        let pg = |url: &str| PostgresConfig { url: Some(url.into()), slot: "s".into(), publication: "p".into(), password_file: Some(file.clone()) };
        for (url, want) in [
            ("postgres://u@h/db", "postgres://u@h/db?password=p%40ss%20w%27rd"),
            ("postgres://u@h/db?sslmode=require", "postgres://u@h/db?sslmode=require&password=p%40ss%20w%27rd"),
            ("host=h user=u", "host=h user=u password='p@ss w\\'rd'"),
        ] {
            let mut c = pg(url);
            c.read_password_file().unwrap();
            assert_eq!(c.url.as_deref(), Some(want));
        }
        for url in ["postgres://u:x@h/db", "postgres://u@h/db?password=x", "host=h password=x"] {
            let e = pg(url).read_password_file().unwrap_err();
            assert!(e.message.contains("keep the password in one place") && !e.message.contains(":x@"), "{url}: {}", e.message);
        }
        std::fs::write(&file, "\n").unwrap();
        assert!(pg("postgres://h/db").read_password_file().unwrap_err().message.contains("is empty"));
        std::fs::remove_file(&file).unwrap();
        assert!(pg("postgres://h/db").read_password_file().unwrap_err().message.contains("cannot read postgres.password_file"));
    }

    #[test]
    fn redis_cluster_settings_are_checked() {
        let cfg = |url: &str, cluster: bool, prefix: &str| RedisConfig { url: Some(url.into()), cluster, prefix: prefix.into(), ..RedisConfig::default() };
        // Single server: the URL as it is (a comma inside a password stays).
        assert_eq!(cfg("redis://:a,b@h:1/", false, "deriver").nodes().unwrap(), vec!["redis://:a,b@h:1/"]);
        assert!(cfg("redis://:a,b@h:1/", false, "deriver").check().is_ok());
        for url in ["redis://h:1/,redis://h:2/", "rediss://h:1/, rediss://h:2/"] {
            let e = cfg(url, false, "deriver").check().unwrap_err();
            assert!(e.message.contains("set redis.cluster = true"), "{}", e.message);
        }
        // Cluster: comma-separated seeds, spaces allowed.
        let c = cfg("redis://:pw@h:1/, redis://:pw@h:2/,", true, "deriver");
        assert!(c.check().is_ok());
        assert_eq!(c.nodes().unwrap(), vec!["redis://:pw@h:1/", "redis://:pw@h:2/"]);
        assert!(cfg("rediss://h:1/", true, "deriver").check().is_ok());
        for (url, prefix, want) in [
            ("redis://h:1/,rediss://h:2/", "deriver", "mix redis:// and rediss://"),
            ("unix:///tmp/r.sock", "deriver", "not a redis:// or rediss:// URL"),
            ("h:1", "deriver", "not a redis:// or rediss:// URL"),
            (" , ", "deriver", "names no node"),
            ("redis://h:1/", "app{x}", "must not contain"),
        ] {
            let e = cfg(url, true, prefix).check().unwrap_err();
            assert!(e.message.contains(want), "{url}: {}", e.message);
        }
        // A URL the Redis client cannot read is a configuration error at load, with no secret.
        for url in ["redis://:s3cr3t@h:notaport/", "http://h:1/", "redis://h:1/x"] {
            let e = cfg(url, false, "deriver").check().unwrap_err();
            assert!(e.message.contains("is not a valid Redis URL") && !e.to_string().contains("s3cr3t"), "{url}: {e}");
        }
        // Braces in the prefix are fine on a single server (no hash tags there).
        assert!(cfg("redis://h:1/", false, "app{x}").check().is_ok());
        // No secret in the message.
        let e = cfg("redis://:s3cr3t@h:1/,redis://:s3cr3t@h:2/", false, "deriver").check().unwrap_err();
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
    }
}
