//! Test harness: a real PostgreSQL ≥ 14 (initdb on a free loopback port, wal_level=logical) and a
//! real redis-server, started once per test binary and stopped when it exits; one database (a
//! copy of pagila), Redis prefix, index directory and HTTP port per test; the `deriver` binary run
//! as a child process exactly as users run it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use deriver::source::Lsn;

pub mod certs;
pub mod cluster;
pub mod fencing;
pub mod load;
pub mod observe;
pub mod proxy;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DERIVER_SHARED_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("PG_BIN") {
        return PathBuf::from(b);
    }
    for v in ["15", "16", "17", "18", "14"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    panic!("PostgreSQL server binaries not found: set PG_BIN (scripts/dev-stack.sh pg-bin prints them) or install a server (scripts/dev-stack.sh install)");
}

/// Runs a server command as the `postgres` user when we are root (Postgres refuses root).
fn pg_command(bin: &str) -> Command {
    let path = pg_bin().join(bin);
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(path);
        c
    } else {
        Command::new(path)
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// Starts a throw-away cluster. `extra_conf` lines go to postgresql.conf.
    pub fn start(extra_conf: &str) -> Cluster {
        Cluster::start_with(extra_conf, None)
    }

    /// Like [`Cluster::start`], with `hba` as the whole of `pg_hba.conf` when given.
    pub fn start_with(extra_conf: &str, hba: Option<&str>) -> Cluster {
        let dir = tempfile::Builder::new().prefix("deriver-pg-").tempdir().unwrap().keep();
        let data = dir.join("data");
        if is_root() {
            let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir).status().unwrap();
            assert!(st.success());
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\n\
             max_replication_slots = 40\nmax_wal_senders = 40\nfsync = off\nfull_page_writes = off\n\
             shared_buffers = 64MB\nlogical_decoding_work_mem = 4MB\nmax_connections = 200\n{extra_conf}\n",
            dir.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .unwrap();
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        let out = pg_command("pg_ctl").arg("-D").arg(&data).arg("-l").arg(dir.join("log")).args(["-w", "-t", "60", "start"]).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        let cluster = Cluster { dir, port };
        register_cleanup(Cleanup::Pg(cluster.dir.clone()));
        cluster
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn psql_file(&self, db: &str, file: &Path) {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-f")
            .arg(file)
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql -f {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }

    pub fn stop(&self) {
        let _ = pg_command("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]).output();
    }

    /// Restarts the server (`-m fast`: connections are cut, replication included).
    pub fn restart(&self) {
        let st = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-m", "fast", "-w", "-t", "60", "restart"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "pg_ctl restart failed: {}", std::fs::read_to_string(self.dir.join("log")).unwrap_or_default());
    }
}

pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    pub pid: u32,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new().prefix("deriver-redis-").tempdir().unwrap().keep();
        register_cleanup(Cleanup::Dir(dir.clone()));
        let port = free_port();
        let pid = Self::spawn(port, &dir);
        RedisServer { port, dir, pid }
    }

    /// Starts redis-server on `port` with its data in `dir` and waits until it accepts
    /// connections; it is killed when the test binary exits.
    fn spawn(port: u16, dir: &Path) -> u32 {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install redis-server: scripts/dev-stack.sh install)");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("redis-server exited: {st}");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::mem::forget(child);
        register_cleanup(Cleanup::Pid(pid));
        pid
    }

    /// SIGKILL: the server goes away at once (with `appendfsync everysec` the last second of
    /// writes may be lost).
    pub fn kill(&self) {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.pid = Self::spawn(self.port, &self.dir);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

enum Cleanup {
    Pg(PathBuf),
    Pid(u32),
    Dir(PathBuf),
}

static CLEANUP: Mutex<Vec<Cleanup>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    if let Ok(mut list) = CLEANUP.lock() {
        // Processes first, then the directories they used.
        list.sort_by_key(|c| !matches!(c, Cleanup::Pid(_)));
        for c in list.iter() {
            match c {
                Cleanup::Pg(dir) => {
                    let _ = pg_command("pg_ctl").arg("-D").arg(dir.join("data")).args(["-m", "immediate", "stop"]).output();
                    let _ = std::fs::remove_dir_all(dir);
                }
                Cleanup::Pid(pid) => unsafe {
                    libc::kill(*pid as i32, libc::SIGKILL);
                },
                Cleanup::Dir(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
    }
}

/// Kills `pid` when the test binary exits.
pub fn register_kill(pid: u32) {
    register_cleanup(Cleanup::Pid(pid));
}

fn register_cleanup(c: Cleanup) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| unsafe {
        libc::atexit(cleanup_at_exit);
    });
    CLEANUP.lock().unwrap().push(c);
}

/// The cluster and Redis shared by the tests of one binary, with pagila loaded as a template.
pub struct Env {
    pub pg: Cluster,
    pub redis: RedisServer,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let pg = Cluster::start("");
        let redis = RedisServer::start();
        let pagila = shared_dir().join("data/pagila");
        assert!(pagila.exists(), "../shared/data/pagila is missing (set DERIVER_SHARED_DIR)");
        pg.psql("postgres", "CREATE DATABASE pagila_template");
        pg.psql_file("pagila_template", &pagila.join("pagila-schema.sql"));
        pg.psql_file("pagila_template", &pagila.join("pagila-data.sql"));
        Env { pg, redis }
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's world: its own database (a copy of pagila), slot, Redis prefix, index dir, port.
pub struct World {
    pub cluster: &'static Cluster,
    pub name: String,
    pub db: String,
    pub dir: PathBuf,
    pub pipelines: PathBuf,
    pub http_port: u16,
    pub daemon: Option<Child>,
    pub log: PathBuf,
    /// Set by [`World::use_redis_cluster`]: deriver writes to the local Redis Cluster, and the
    /// `redis_*` helpers read the views of this pipeline there.
    pub cluster_views: Option<String>,
}

impl World {
    /// A copy of pagila on the shared cluster.
    pub fn new(name: &str) -> World {
        World::on(&env().pg, name, Some("pagila_template"))
    }

    /// A database on `cluster`, copied from `template` or empty.
    pub fn on(cluster: &'static Cluster, name: &str, template: Option<&str>) -> World {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let db = format!("t_{name}_{}_{n}", std::process::id());
        match template {
            Some(t) => cluster.psql("postgres", &format!("CREATE DATABASE {db} TEMPLATE {t}")),
            None => cluster.psql("postgres", &format!("CREATE DATABASE {db}")),
        };
        let dir = tempfile::Builder::new().prefix(&format!("deriver-{name}-")).tempdir().unwrap().keep();
        let pipelines = dir.join("pipelines");
        std::fs::create_dir_all(&pipelines).unwrap();
        World { cluster, name: name.to_string(), log: dir.join("deriver.log"), db, dir, pipelines, http_port: free_port(), daemon: None, cluster_views: None }
    }

    pub fn prefix(&self) -> String {
        format!("t:{}", self.db)
    }

    /// Runs deriver against the local Redis Cluster (`redis.cluster = true`); the `redis_*`
    /// helpers then read `pipeline`'s views (keys `<prefix>:{<pipeline>}:<template>`).
    pub fn use_redis_cluster(&mut self, pipeline: &str) {
        cluster::redis_cluster();
        self.cluster_views = Some(pipeline.to_string());
    }

    /// What this world's view keys start with (before `:<template>`).
    pub fn view_prefix(&self) -> String {
        match &self.cluster_views {
            Some(p) => format!("{}:{{{p}}}", self.prefix()),
            None => self.prefix(),
        }
    }

    /// A connection to this world's Redis: the server, or the cluster.
    pub fn redis_conn(&self) -> Box<dyn redis::ConnectionLike> {
        match self.cluster_views {
            Some(_) => Box::new(cluster::redis_cluster().conn()),
            None => Box::new(env().redis.conn()),
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql(&self.db, sql)
    }

    pub fn url(&self) -> String {
        self.cluster.url(&self.db)
    }

    pub fn add_pipeline(&self, name: &str, yaml: &str) {
        std::fs::write(self.pipelines.join(format!("{name}.yaml")), yaml).unwrap();
    }

    /// Copies a pipeline from the repository's `pipelines/`.
    pub fn add_repo_pipeline(&self, name: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines").join(format!("{name}.yaml"));
        std::fs::copy(src, self.pipelines.join(format!("{name}.yaml"))).unwrap();
    }

    pub fn index_dir(&self) -> PathBuf {
        self.dir.join("index")
    }

    pub fn command(&self) -> Command {
        let env = env();
        let mut c = Command::new(env!("CARGO_BIN_EXE_deriver"));
        c.current_dir(&self.dir)
            .env_remove("DERIVER_CONFIG")
            .env("DERIVER__POSTGRES__URL", self.url())
            .env("DERIVER__POSTGRES__SLOT", &self.db)
            .env("DERIVER__POSTGRES__PUBLICATION", "deriver")
            .env("DERIVER__REDIS__URL", if self.cluster_views.is_some() { cluster::redis_cluster().url() } else { env.redis.url() })
            .env("DERIVER__REDIS__CLUSTER", self.cluster_views.is_some().to_string())
            .env("DERIVER__REDIS__PREFIX", self.prefix())
            .env("DERIVER__INDEX__DIR", self.index_dir())
            .env("DERIVER__HTTP__LISTEN", format!("127.0.0.1:{}", self.http_port))
            .env("DERIVER__PIPELINES__DIR", &self.pipelines)
            .env("DERIVER__RUNTIME__IDLE_MS", "200")
            .env("DERIVER_LOG", "info,deriver=debug");
        c
    }

    /// Runs a short command (setup, validate, status) and returns (exit code, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command().args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    pub fn setup(&self) {
        let (code, out, err) = self.run_cli(&["setup"]);
        assert_eq!(code, 0, "deriver setup failed:\n{out}\n{err}");
    }

    /// `deriver setup` where problems are expected (exit code 1 is fine, 2 is not).
    pub fn setup_allow_failure(&self) {
        let (code, out, err) = self.run_cli(&["setup"]);
        assert!(code == 0 || code == 1, "deriver setup crashed:\n{out}\n{err}");
    }

    pub fn start(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = self.command().arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.daemon = Some(child);
    }

    /// Waits until the daemon answers `GET /readyz` with 200.
    pub fn wait_ready(&mut self) {
        let port = self.http_port;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .and_then(|mut s| {
                    use std::io::{Read, Write};
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
                    let mut buf = String::new();
                    s.read_to_string(&mut buf).ok()?;
                    Some(buf.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(c) = self.daemon.as_mut() {
                if let Some(st) = c.try_wait().unwrap() {
                    panic!("deriver exited ({st}) before it was ready; log:\n{}", self.log_text());
                }
            }
            assert!(std::time::Instant::now() < deadline, "deriver was not ready in time; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let Some(mut c) = self.daemon.take() else { return 0 };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("deriver did not stop on SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the daemon to exit by itself and returns (code, log).
    pub fn wait_exit(&mut self, timeout: Duration) -> (i32, String) {
        let mut c = self.daemon.take().expect("daemon running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return (st.code().unwrap_or(-1), self.log_text());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("deriver did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn current_lsn(&self) -> Lsn {
        self.sql("SELECT pg_current_wal_insert_lsn()").parse().unwrap()
    }

    /// The Redis checkpoint of a pipeline.
    pub fn redis_applied(&self, pipeline: &str) -> Option<Lsn> {
        let mut c = self.redis_conn();
        let p = if self.cluster_views.is_some() { format!("{{{pipeline}}}") } else { pipeline.to_string() };
        let v: Option<String> = redis::cmd("GET").arg(format!("{}:_meta:{p}:applied_lsn", self.prefix())).query(&mut *c).unwrap();
        v.map(|s| s.parse().unwrap())
    }

    /// The search index checkpoint of an index.
    pub fn index_applied(&self, index: &str) -> Option<Lsn> {
        deriver::sink::tantivy::read_checkpoint(&self.index_dir(), index).ok().flatten().map(|(_, c)| c.lsn)
    }

    /// Waits until every named pipeline's Redis views and every named index have applied `lsn`.
    pub fn wait_applied(&mut self, redis_pipelines: &[&str], indexes: &[&str], lsn: Lsn, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r_ok = redis_pipelines.iter().all(|p| self.redis_applied(p).is_some_and(|a| a >= lsn));
            let i_ok = indexes.iter().all(|i| self.index_applied(i).is_some_and(|a| a >= lsn));
            if r_ok && i_ok {
                return;
            }
            if let Some(c) = self.daemon.as_mut() {
                if let Some(st) = c.try_wait().unwrap() {
                    panic!("deriver exited ({st}) while waiting for {lsn}; log:\n{}", self.log_text());
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {lsn}: redis {:?}, index {:?}; log:\n{}",
                    redis_pipelines.iter().map(|p| self.redis_applied(p)).collect::<Vec<_>>(),
                    indexes.iter().map(|i| self.index_applied(i)).collect::<Vec<_>>(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the sinks have applied everything committed so far.
    pub fn catch_up(&mut self, redis_pipelines: &[&str], indexes: &[&str]) {
        let lsn = self.current_lsn();
        self.wait_applied(redis_pipelines, indexes, lsn, Duration::from_secs(60));
    }

    pub fn redis_get(&self, key: &str) -> Option<String> {
        let mut c = self.redis_conn();
        redis::cmd("GET").arg(format!("{}:{key}", self.view_prefix())).query(&mut *c).unwrap()
    }

    /// A sorted set as (member, score) pairs, in score order.
    pub fn redis_zrange(&self, key: &str) -> Vec<(String, f64)> {
        let mut c = self.redis_conn();
        redis::cmd("ZRANGE").arg(format!("{}:{key}", self.view_prefix())).arg(0).arg(-1).arg("WITHSCORES").query(&mut *c).unwrap()
    }

    pub fn redis_hgetall(&self, key: &str) -> std::collections::BTreeMap<String, String> {
        let mut c = self.redis_conn();
        redis::cmd("HGETALL").arg(format!("{}:{key}", self.view_prefix())).query(&mut *c).unwrap()
    }

    /// Every view key under this world's prefix, without the prefix (bookkeeping keys excluded).
    /// On the cluster: the keys of every master.
    pub fn redis_keys(&self, pattern: &str) -> Vec<String> {
        let prefix = self.view_prefix();
        let mut keys: Vec<String> = match self.cluster_views {
            Some(_) => cluster::redis_cluster().keys_by_node(&format!("{prefix}:{pattern}")).into_iter().map(|(_, k)| k).collect(),
            None => redis::cmd("KEYS").arg(format!("{prefix}:{pattern}")).query(&mut env().redis.conn()).unwrap(),
        };
        keys.retain(|k| !k[prefix.len() + 1..].starts_with('_'));
        let mut keys: Vec<String> = keys.into_iter().map(|k| k[prefix.len() + 1..].to_string()).collect();
        keys.sort();
        keys
    }

    /// Every document of an index: source key → stored `_source` JSON.
    pub fn index_docs(&self, index: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        use tantivy::schema::Value as _;
        let dir = self.index_dir().join(index);
        let gen: u64 = std::fs::read_to_string(dir.join("CURRENT")).unwrap().trim().parse().unwrap();
        let idx = tantivy::Index::open_in_dir(dir.join(format!("gen-{gen:06}"))).unwrap();
        let reader = idx.reader().unwrap();
        let searcher = reader.searcher();
        let schema = idx.schema();
        let key_f = schema.get_field("_key").unwrap();
        let src_f = schema.get_field("_source").unwrap();
        let mut out = std::collections::BTreeMap::new();
        for seg in searcher.segment_readers() {
            let store = seg.get_store_reader(16).unwrap();
            for doc_id in 0..seg.max_doc() {
                if seg.is_deleted(doc_id) {
                    continue;
                }
                let doc: tantivy::TantivyDocument = store.get(doc_id).unwrap();
                let key = doc.get_first(key_f).and_then(|v| v.as_str()).unwrap().to_string();
                let src: serde_json::Value = serde_json::from_str(doc.get_first(src_f).and_then(|v| v.as_str()).unwrap()).unwrap();
                assert!(out.insert(key.clone(), src).is_none(), "two documents for key {key}");
            }
        }
        out
    }

    /// Rows of a query returning (key text, JSON text), as a map.
    pub fn expected(&self, sql: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let out = self.sql(&format!("SELECT coalesce(json_object_agg(k, v), '{{}}')::text FROM ({sql}) AS q(k, v)"));
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&out).unwrap().into_iter().collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a condition with a timeout, panicking with `what` on failure.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `films` demo pipeline's records, written independently of deriver's SQL compiler
/// (correlated subqueries where deriver uses lateral joins).
pub const FILMS_EXPECTED: &str = "SELECT f.film_id::text, jsonb_build_object(
    'film_id', f.film_id, 'title', f.title, 'description', f.description, 'release_year', f.release_year,
    'language', trim(l.name), 'rating', f.rating::text, 'rate', f.rental_rate, 'length', f.length,
    'special_features', f.special_features,
    'actors', coalesce((SELECT array_agg(a.first_name || ' ' || a.last_name ORDER BY a.last_name, a.first_name)
                        FROM film_actor fa JOIN actor a ON a.actor_id = fa.actor_id WHERE fa.film_id = f.film_id), '{}'),
    'actor_count', (SELECT count(*) FROM film_actor fa WHERE fa.film_id = f.film_id),
    'category', (SELECT min(c.name) FROM film_category fc JOIN category c ON c.category_id = fc.category_id WHERE fc.film_id = f.film_id),
    'copies', (SELECT count(*) FROM inventory i WHERE i.film_id = f.film_id),
    'last_update', f.last_update)
  FROM film f LEFT JOIN language l ON l.language_id = f.language_id";

/// Asserts that the `films` pipeline's Redis views and search index equal a fresh derivation of
/// the source, with no extra keys or documents.
pub fn check_films(w: &World) {
    let expected = w.expected(FILMS_EXPECTED);
    let keys = w.redis_keys("film:*");
    let json_keys: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":summary")).collect();
    assert_eq!(json_keys.len(), expected.len(), "json view count");
    assert_eq!(keys.len(), 2 * expected.len(), "json + hash view count");
    for (id, want) in &expected {
        let got: serde_json::Value = serde_json::from_str(&w.redis_get(&format!("film:{id}")).unwrap_or_else(|| panic!("film:{id} missing"))).unwrap();
        assert_eq!(&got, want, "film:{id}");
        let hash = w.redis_hgetall(&format!("film:{id}:summary"));
        assert_eq!(hash.get("title").map(String::as_str), want["title"].as_str(), "film:{id}:summary title");
        assert_eq!(hash.get("rate").map(String::as_str), Some(want["rate"].to_string().as_str()), "film:{id}:summary rate");
    }
    let docs = w.index_docs("films");
    assert_eq!(docs.len(), expected.len(), "index document count");
    for (id, want) in &expected {
        let doc = docs.get(id).unwrap_or_else(|| panic!("document {id} missing"));
        for f in ["title", "description", "rating", "release_year", "special_features", "actors", "language", "category", "copies"] {
            assert_eq!(doc[f], want[f], "document {id} field {f}");
        }
        assert_eq!(doc["rate"].to_string(), want["rate"].to_string(), "document {id} rate");
    }
}

/// Random writes to pagila's `film` in small transactions until `stop`: updates, inserts,
/// deletes, primary-key changes, multi-statement and rolled-back transactions.
pub fn film_load(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut n: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sql = load::film_statement(n);
                if let Err(e) = client.batch_execute(&sql).await {
                    panic!("load statement failed: {sql}: {e}");
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    })
}

/// Text without ANSI colour sequences (the daemon colours its log).
pub fn strip_ansi(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `deriver audit --json ARGS…`: (exit code, the report, stderr).
pub fn audit_json(w: &World, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = w.run_cli(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {out}\n{err}"));
    (code, v, err)
}

/// Every key an audit report lists as missing, extra or different (first pipeline), sorted.
pub fn drifted_keys(report: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = report["pipelines"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| ["missing", "extra", "different"].into_iter().flat_map(move |k| t[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string())))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}
