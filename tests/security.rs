//! Security promises against real Postgres and Redis: a least-privilege role granted by
//! `deriver setup --grant-to` runs deriver end to end; identifiers and key values are never
//! spliced into SQL; passwords in URLs and the HTTP token never reach logs, stderr, stdout or
//! HTTP answers (start-up, normal operation, error paths, trace logging); Redis AUTH; row values
//! cannot overwrite deriver's bookkeeping keys.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn spawn_logged(w: &mut World, cmd: &mut Command) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
}

// ---------------------------------------------------------------------------------------------
// Least privilege
// ---------------------------------------------------------------------------------------------

const SHOP: &str = r#"version: 1
pipeline: shop
source: { table: app.item }
lookups:
  cat: { table: app.category, on: "item.cat_id = cat.id" }
children:
  tags: { table: public.tag, on: "tag.item_id = item.id" }
fields:
  id: item.id
  name: item.name
  category: cat.name
  tags: { child: tags, agg: "array_agg(tag.name ORDER BY tag.name)", default: "'{}'::text[]" }
targets:
  - redis: { key: "item:{id}", type: json }
  - search: { id: id, fields: { name: { type: text, stored: true }, category: { type: keyword, stored: true }, tags: { type: keyword, stored: true } } }
"#;

fn shop_expected(w: &World) -> std::collections::BTreeMap<String, Value> {
    w.expected(
        "SELECT i.id::text, jsonb_build_object('id', i.id, 'name', i.name, 'category', (SELECT c.name FROM app.category c WHERE c.id = i.cat_id),
                'tags', coalesce((SELECT array_agg(t.name ORDER BY t.name) FROM tag t WHERE t.item_id = i.id), '{}')) FROM app.item i",
    )
}

fn check_shop(w: &World) {
    let want = shop_expected(w);
    assert_eq!(w.redis_keys("item:*").len(), want.len());
    for (id, v) in &want {
        let got: Value = serde_json::from_str(&w.redis_get(&format!("item:{id}")).unwrap()).unwrap();
        assert_eq!(&got, v, "item:{id}");
    }
    let docs = w.index_docs("shop");
    assert_eq!(docs.len(), want.len());
    for (id, v) in &want {
        assert_eq!(docs[id]["name"], v["name"]);
        assert_eq!(docs[id]["tags"], v["tags"]);
    }
}

#[test]
fn a_least_privilege_role_granted_by_setup_runs_end_to_end() {
    let mut w = World::on(&env().pg, "leastpriv", None);
    let role = format!("deriver_ro_{}", std::process::id());
    w.sql(&format!(
        "CREATE ROLE {role} LOGIN;
         CREATE SCHEMA app;
         CREATE TABLE app.category (id integer PRIMARY KEY, name text);
         CREATE TABLE app.item (id integer PRIMARY KEY, name text, cat_id integer);
         CREATE TABLE tag (id serial PRIMARY KEY, item_id integer, name text);
         CREATE TABLE unrelated (id integer PRIMARY KEY, secret text);
         INSERT INTO app.category VALUES (1, 'tools'), (2, 'toys');
         INSERT INTO app.item SELECT g, 'item ' || g, 1 + g % 2 FROM generate_series(1, 20) g;
         INSERT INTO tag (item_id, name) SELECT g, 'tag' || (g % 3) FROM generate_series(1, 20) g;"
    ));
    w.add_pipeline("shop", SHOP);
    // The administrator (superuser) runs setup with --grant-to.
    let (code, out, err) = w.run_cli(&["setup", "--grant-to", &role]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("granted REPLICATION and SELECT on 3 table(s) to {role}")), "{out}");
    assert_eq!(w.sql(&format!("SELECT rolreplication, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = '{role}'")), "t|f|f|f");
    for (table, want) in [("app.item", "t"), ("app.category", "t"), ("public.tag", "t"), ("public.unrelated", "f")] {
        assert_eq!(w.sql(&format!("SELECT has_table_privilege('{role}', '{table}', 'SELECT')")), want, "SELECT on {table}");
        assert_eq!(w.sql(&format!("SELECT has_table_privilege('{role}', '{table}', 'INSERT') OR has_table_privilege('{role}', '{table}', 'UPDATE') OR has_table_privilege('{role}', '{table}', 'DELETE') OR has_table_privilege('{role}', '{table}', 'TRUNCATE')")), "f", "no write right on {table}");
    }
    // Idempotent.
    let (code, out, err) = w.run_cli(&["setup", "--grant-to", &role]);
    assert_eq!(code, 0, "{out}\n{err}");

    // deriver runs as that role: slot, snapshot, stream, lookups, children, truncate, restart.
    let url = format!("postgres://{role}@127.0.0.1:{}/{}", w.cluster.port, w.db);
    let mut cmd = w.command();
    cmd.env("DERIVER__POSTGRES__URL", &url);
    spawn_logged(&mut w, &mut cmd);
    w.catch_up(&["shop"], &["shop"]);
    check_shop(&w);
    assert_eq!(
        w.sql(&format!("SELECT a.usename FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = '{}'", w.db)),
        role,
        "the replication connection runs as the least-privilege role"
    );
    w.sql(
        "UPDATE app.item SET name = 'renamed' WHERE id = 1; UPDATE app.category SET name = 'hardware' WHERE id = 1;
           INSERT INTO tag (item_id, name) VALUES (2, 'new'); DELETE FROM app.item WHERE id = 3; INSERT INTO app.item VALUES (100, 'new', 2)",
    );
    w.catch_up(&["shop"], &["shop"]);
    check_shop(&w);
    w.sql("TRUNCATE tag");
    w.catch_up(&["shop"], &["shop"]);
    check_shop(&w);
    assert_eq!(w.stop(), 0);
    w.sql("UPDATE app.item SET name = 'while stopped' WHERE id = 4");
    let mut cmd = w.command();
    cmd.env("DERIVER__POSTGRES__URL", &url);
    spawn_logged(&mut w, &mut cmd);
    w.catch_up(&["shop"], &["shop"]);
    check_shop(&w);
    // `status` and `validate` work as that role too.
    let out = w.command().env("DERIVER__POSTGRES__URL", &url).args(["validate"]).output().unwrap();
    assert!(out.status.success(), "validate as {role}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.stop(), 0);

    // A role without the grants is refused with a clear message, not a crash.
    let bare = format!("deriver_bare_{}", std::process::id());
    w.sql(&format!("CREATE ROLE {bare} LOGIN REPLICATION"));
    let out = w
        .command()
        .env("DERIVER__POSTGRES__URL", format!("postgres://{bare}@127.0.0.1:{}/{}", w.cluster.port, w.db))
        .env("DERIVER__POSTGRES__SLOT", format!("{}_bare", w.db))
        .env("DERIVER__INDEX__DIR", w.dir.join("bare-index"))
        .env("DERIVER__REDIS__PREFIX", format!("{}:bare", w.prefix()))
        .arg("run")
        .output()
        .unwrap();
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    w.sql(&format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}_bare'", w.db));
}

// ---------------------------------------------------------------------------------------------
// Injection
// ---------------------------------------------------------------------------------------------

#[test]
fn identifiers_and_key_values_are_never_spliced_into_sql() {
    let mut w = World::on(&env().pg, "inject", None);
    w.sql(
        "CREATE TABLE y (id integer PRIMARY KEY); INSERT INTO y VALUES (1);
         CREATE TABLE \"x; drop table y\" (\"id); drop table y; --\" text PRIMARY KEY, \"v'al\" text, \"q\"\"uote\" integer);
         INSERT INTO \"x; drop table y\" VALUES ('plain', 'a', 1), ('''); DROP TABLE y; --', 'b', 2), ('\"; DROP TABLE y; --', 'c', 3),
                                                ('$$; DROP TABLE y; $$', 'd', 4), ('back\\slash', 'e', 5), ('{1}', 'f', 6);",
    );
    let pub_name = "deriver";
    w.add_pipeline(
        "inj",
        r#"version: 1
pipeline: inj
source: { table: '"x; drop table y"', as: x, key: '"id); drop table y; --"' }
fields:
  k: 'x."id); drop table y; --"'
  v: "x.\"v'al\""
  q: 'x."q""uote"'
targets:
  - redis: { key: "inj:{k}", type: json }
  - redis: { key: "injh:{k}", type: hash }
  - search: { id: k, fields: { v: { type: text, stored: true }, q: { type: i64, stored: true } } }
"#,
    );
    let (code, out, err) = {
        let o = w.command().env("DERIVER__POSTGRES__PUBLICATION", pub_name).arg("setup").output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(w.sql("SELECT count(*) FROM pg_publication_tables WHERE tablename = 'x; drop table y'"), "1");
    let mut cmd = w.command();
    cmd.env("DERIVER__POSTGRES__PUBLICATION", pub_name);
    spawn_logged(&mut w, &mut cmd);
    w.catch_up(&["inj"], &["inj"]);
    let check = |w: &World| {
        let want = w.expected("SELECT x.\"id); drop table y; --\", jsonb_build_object('k', x.\"id); drop table y; --\", 'v', x.\"v'al\", 'q', x.\"q\"\"uote\") FROM \"x; drop table y\" x");
        assert_eq!(w.redis_keys("inj:*").len(), want.len());
        for (k, v) in &want {
            let got: Value = serde_json::from_str(&w.redis_get(&format!("inj:{k}")).unwrap_or_else(|| panic!("inj:{k} missing"))).unwrap();
            assert_eq!(&got, v);
        }
        let docs = w.index_docs("inj");
        assert_eq!(docs.len(), want.len());
        assert_eq!(w.sql("SELECT count(*) FROM y"), "1", "table y is still there");
    };
    check(&w);
    w.sql(
        "UPDATE \"x; drop table y\" SET \"v'al\" = 'changed' WHERE \"id); drop table y; --\" = '''); DROP TABLE y; --';
         UPDATE \"x; drop table y\" SET \"id); drop table y; --\" = 'moved''; DROP TABLE y; --' WHERE \"id); drop table y; --\" = '\"; DROP TABLE y; --';
         DELETE FROM \"x; drop table y\" WHERE \"id); drop table y; --\" = '$$; DROP TABLE y; $$';
         INSERT INTO \"x; drop table y\" VALUES ('new''); DROP TABLE y; --', 'n', 9);",
    );
    w.catch_up(&["inj"], &["inj"]);
    check(&w);
    w.sql("TRUNCATE \"x; drop table y\"; INSERT INTO \"x; drop table y\" VALUES ('after truncate', 'z', 0)");
    w.catch_up(&["inj"], &["inj"]);
    check(&w);
    assert_eq!(w.redis_keys("inj:*"), vec!["inj:after truncate".to_string()]);
    assert_eq!(w.stop(), 0);
    assert!(w.sql("SELECT to_regclass('public.y') IS NOT NULL") == "t");

    // A hostile slot name is refused (slot names are [a-z0-9_]) without running anything.
    let out = w
        .command()
        .env("DERIVER__POSTGRES__PUBLICATION", pub_name)
        .env("DERIVER__POSTGRES__SLOT", "s\"; DROP TABLE y; --")
        .env("DERIVER__INDEX__DIR", w.dir.join("other-index"))
        .env("DERIVER__REDIS__PREFIX", format!("{}:other", w.prefix()))
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(w.sql("SELECT count(*) FROM y"), "1", "table y is still there");
}

#[test]
fn row_values_cannot_overwrite_bookkeeping_keys() {
    let mut w = World::on(&env().pg, "bookkeeping", None);
    w.sql("CREATE TABLE s (id integer PRIMARY KEY, slug text); INSERT INTO s VALUES (1, 'fine'), (2, 'also-fine')");
    w.add_pipeline(
        "hk",
        "version: 1\npipeline: hk\nsource: { table: s }\nfields: { id: s.id, slug: s.slug }\ntargets:\n  - redis: { key: \"{slug}\", type: json }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["hk"], &[]);
    let checkpoint_before = w.redis_applied("hk").unwrap();
    // Row values that name deriver's own keys.
    w.sql("INSERT INTO s VALUES (3, '_meta:hk:applied_lsn'), (4, '_ledger:hk'), (5, '_meta:hk:definition_hash')");
    w.sql("INSERT INTO s VALUES (6, 'after')");
    let lsn = w.current_lsn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !w.redis_applied_raw_ok("hk", lsn) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = strip_ansi(&w.log_text());
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon died; log:\n{log}");
    let mut c = env().redis.conn();
    let cp: Option<String> = redis::cmd("GET").arg(format!("{}:_meta:hk:applied_lsn", w.prefix())).query(&mut c).unwrap();
    let cp = cp.expect("checkpoint key present");
    let parsed: Lsn = cp.parse().unwrap_or_else(|e| panic!("the checkpoint was overwritten by a row value: {cp:?} ({e})"));
    assert!(parsed >= checkpoint_before);
    let ty: String = redis::cmd("TYPE").arg(format!("{}:_ledger:hk", w.prefix())).query(&mut c).unwrap();
    assert_eq!(ty, "hash", "the ledger was overwritten by a row value");
    assert!(w.redis_get("after").is_some());
    assert_eq!(w.stop(), 0);
}

trait AppliedRaw {
    fn redis_applied_raw_ok(&self, pipeline: &str, lsn: Lsn) -> bool;
}

impl AppliedRaw for World {
    /// Like `redis_applied` but tolerant of a checkpoint that is not an LSN.
    fn redis_applied_raw_ok(&self, pipeline: &str, lsn: Lsn) -> bool {
        let mut c = env().redis.conn();
        let v: Option<String> = redis::cmd("GET").arg(format!("{}:_meta:{pipeline}:applied_lsn", self.prefix())).query(&mut c).unwrap();
        v.and_then(|s| s.parse::<Lsn>().ok()).is_some_and(|a| a >= lsn)
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

const PG_PW: &str = "PgPw-4f9a1x";
const REDIS_PW: &str = "RedisPw-77c2x";
const TOKEN: &str = "HttpTok-9d3ex";
const WRONG_PW: &str = "WrongPw-1234x";

/// A redis-server with `requirepass`, killed (by its pid) when dropped.
struct AuthRedis {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl AuthRedis {
    fn start(dir: PathBuf, port: u16) -> AuthRedis {
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--requirepass", REDIS_PW])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = AuthRedis { port, dir, child: Some(child) };
        wait_for("redis with requirepass", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        r
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(format!("redis://:{REDIS_PW}@127.0.0.1:{}/", self.port)).unwrap().get_connection().unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AuthRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for s in [PG_PW, REDIS_PW, TOKEN, WRONG_PW, "Pg/Pw", "spaced secret", "Quoted Secret"] {
        assert!(!text.contains(s), "{what} contains the secret `{s}`:\n{text}");
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn secrets_never_reach_logs_outputs_or_http_answers() {
    let mut w = World::on(&env().pg, "secrets", None);
    w.sql("CREATE TABLE item (id integer PRIMARY KEY, name text); INSERT INTO item SELECT g, 'n' || g FROM generate_series(1, 10) g");
    w.add_pipeline(
        "items",
        "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, name: item.name }\ntargets:\n  - redis: { key: \"item:{id}\", type: json }\n  - search: { id: id, fields: { name: { type: text, stored: true } } }\n",
    );
    let mut redis = AuthRedis::start(w.dir.join("redis-auth"), free_port());
    let pg_url = format!("postgres://postgres:{PG_PW}@127.0.0.1:{}/{}", w.cluster.port, w.db);
    let redis_url = format!("redis://:{REDIS_PW}@127.0.0.1:{}/", redis.port);
    let secret_cmd = |w: &World, level: &str| {
        let mut c = w.command();
        c.env("DERIVER__POSTGRES__URL", &pg_url).env("DERIVER__REDIS__URL", &redis_url).env("DERIVER__HTTP__TOKEN", TOKEN).env("DERIVER_LOG", level);
        c
    };
    let mut transcript = String::new();

    // Start-up commands.
    for args in [&["setup"][..], &["validate"], &["plan"], &["status"], &["status", "--json"]] {
        let out = secret_cmd(&w, "trace").args(args).output().unwrap();
        transcript.push_str(&output_text(&out));
        if args[0] == "setup" || args[0] == "validate" {
            assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        }
    }

    // The daemon at trace level: start-up, snapshot, streaming, HTTP with and without the token.
    let mut cmd = secret_cmd(&w, "trace");
    spawn_logged(&mut w, &mut cmd);
    let applied = |redis: &AuthRedis| -> Option<Lsn> {
        let mut c = redis.conn();
        let v: Option<String> = redis::cmd("GET").arg(format!("{}:_meta:items:applied_lsn", w.prefix())).query(&mut c).ok()?;
        v.and_then(|s| s.parse().ok())
    };
    let wait_applied = |w: &World, redis: &AuthRedis| {
        let lsn = w.current_lsn();
        wait_for("the daemon to apply (Redis with AUTH)", Duration::from_secs(60), || applied(redis).is_some_and(|a| a >= lsn));
    };
    wait_applied(&w, &redis);
    w.sql("UPDATE item SET name = 'changed' WHERE id = 1; DELETE FROM item WHERE id = 2");
    wait_applied(&w, &redis);
    // Redis AUTH works: the views are in the password-protected Redis.
    let mut c = redis.conn();
    let v: Option<String> = redis::cmd("GET").arg(format!("{}:item:1", w.prefix())).query(&mut c).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&v.unwrap()).unwrap()["name"], "changed");
    let gone: Option<String> = redis::cmd("GET").arg(format!("{}:item:2", w.prefix())).query(&mut c).unwrap();
    assert!(gone.is_none());
    // Without the password Redis refuses (the test's own check that AUTH is really required).
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap().get_connection().unwrap();
    assert!(redis::cmd("GET").arg("x").query::<Option<String>>(&mut anon).is_err());

    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{}", w.http_port);
    for path in ["/v1/status", "/metrics", "/", "/readyz"] {
        let r = http.get(format!("{base}{path}")).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without the token");
        transcript.push_str(&r.text().unwrap());
        let r = http.get(format!("{base}{path}")).bearer_auth(WRONG_PW).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
        transcript.push_str(&r.text().unwrap());
        let r = http.get(format!("{base}{path}")).bearer_auth(TOKEN).send().unwrap();
        let status = r.status().as_u16();
        transcript.push_str(&r.text().unwrap());
        assert!(status == 200 || (path == "/readyz" && status == 503), "{path} with the token: {status}");
    }
    let r = http.post(format!("{base}/v1/indexes/items/search")).bearer_auth(TOKEN).json(&serde_json::json!({"q": "changed"})).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    transcript.push_str(&r.text().unwrap());
    let r =
        http.post(format!("{base}/v1/indexes/items/search")).bearer_auth(TOKEN).body("{not json").header("content-type", "application/json").send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    transcript.push_str(&r.text().unwrap());
    let health = http.get(format!("{base}/healthz")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200, "/healthz needs no token");
    // The CLI reaches the daemon with the token.
    let out = secret_cmd(&w, "trace").args(["status", "--json"]).output().unwrap();
    transcript.push_str(&output_text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["pipelines"][0]["state"], "streaming");

    // Redis goes away while running, and comes back: errors are retried and logged without secrets.
    redis.kill();
    w.sql("UPDATE item SET name = 'while redis is down' WHERE id = 3");
    std::thread::sleep(Duration::from_secs(4));
    let dir = redis.dir.clone();
    let port = redis.port;
    drop(redis);
    let redis = AuthRedis::start(dir, port);
    wait_applied(&w, &redis);
    let mut c = redis.conn();
    let v: Option<String> = redis::cmd("GET").arg(format!("{}:item:3", w.prefix())).query(&mut c).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&v.unwrap()).unwrap()["name"], "while redis is down");
    assert_eq!(w.stop(), 0);

    // Error paths.
    // A wrong Redis password.
    let out = secret_cmd(&w, "trace").env("DERIVER__REDIS__URL", format!("redis://:{WRONG_PW}@127.0.0.1:{}/", redis.port)).arg("run").output().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "a wrong Redis password must fail: {text}");
    assert!(strip_ansi(&text).contains("Redis"), "{text}");
    transcript.push_str(&text);
    // No Redis password at all against a server that needs one.
    let out = secret_cmd(&w, "debug").env("DERIVER__REDIS__URL", format!("redis://127.0.0.1:{}/", redis.port)).arg("run").output().unwrap();
    assert!(!out.status.success());
    transcript.push_str(&output_text(&out));
    // A Redis URL that does not parse.
    let out = secret_cmd(&w, "debug").env("DERIVER__REDIS__URL", format!("redis://:{REDIS_PW}@127.0.0.1:notaport/")).arg("run").output().unwrap();
    assert!(!out.status.success());
    transcript.push_str(&output_text(&out));
    // Postgres unreachable, as a URL (with a percent-encoded password too) and as conninfo.
    let dead = free_port();
    for url in [
        format!("postgres://postgres:{PG_PW}@127.0.0.1:{dead}/{}", w.db),
        format!("postgres://postgres:Pg%2FPw-{PG_PW}@127.0.0.1:{dead}/{}", w.db),
        format!("postgresql://postgres@127.0.0.1:{dead}/{}?password={PG_PW}&sslmode=disable", w.db),
        format!("host=127.0.0.1 port={dead} user=postgres password={PG_PW} dbname={}", w.db),
    ] {
        for cmd in ["run", "setup", "validate", "status"] {
            let out = secret_cmd(&w, "trace").env("DERIVER__POSTGRES__URL", &url).arg(cmd).output().unwrap();
            let text = output_text(&out);
            if cmd != "status" {
                assert!(!out.status.success(), "{cmd} with {url}: {text}");
            }
            transcript.push_str(&text);
        }
    }
    // A bad Postgres URL (does not parse).
    let out = secret_cmd(&w, "trace").env("DERIVER__POSTGRES__URL", format!("postgres://postgres:{PG_PW}@127.0.0.1:notaport/x")).arg("run").output().unwrap();
    assert!(!out.status.success());
    transcript.push_str(&output_text(&out));
    // JSON log format.
    let out = secret_cmd(&w, "trace")
        .env("DERIVER_LOG_FORMAT", "json")
        .env("DERIVER__REDIS__URL", format!("redis://:{WRONG_PW}@127.0.0.1:{}/", redis.port))
        .arg("run")
        .output()
        .unwrap();
    assert!(!out.status.success());
    transcript.push_str(&output_text(&out));

    let log = w.log_text();
    assert!(log.len() > 1000, "the daemon logged at trace level");
    assert_no_secret("the daemon log", &log);
    assert_no_secret("command outputs and HTTP answers", &transcript);
}

#[test]
fn conninfo_passwords_in_every_libpq_spelling_are_redacted() {
    let w = World::on(&env().pg, "conninfo", None);
    w.add_pipeline("items", "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id }\ntargets:\n  - redis: { key: \"item:{id}\" }\n");
    let dead = free_port();
    let mut transcript = String::new();
    for url in [
        format!("host=127.0.0.1 port={dead} user=postgres password = {PG_PW} dbname=x"),
        format!("host=127.0.0.1 port={dead} user=postgres password='spaced secret {PG_PW}' dbname=x"),
        format!("host=127.0.0.1 port={dead} user=postgres password='Quoted Secret' dbname=x"),
    ] {
        let out = w.command().env("DERIVER__POSTGRES__URL", &url).arg("run").output().unwrap();
        assert!(!out.status.success());
        transcript.push_str(&output_text(&out));
    }
    assert_no_secret("errors for conninfo strings", &transcript);
}

#[test]
fn publication_names_that_need_quoting_work_end_to_end() {
    // deriver refuses slot and publication names it cannot pass safely through the replication
    // protocol, with a clear error, before touching anything.
    for pub_name in ["MyPub", "pub \"x\"; drop table y; --'"] {
        let w = World::on(&env().pg, "pubname", None);
        w.sql("CREATE TABLE y (id integer PRIMARY KEY); CREATE TABLE item (id integer PRIMARY KEY, name text)");
        w.add_pipeline(
            "items",
            "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, name: item.name }\ntargets:\n  - redis: { key: \"item:{id}\" }\n",
        );
        let out = w.command().env("DERIVER__POSTGRES__PUBLICATION", pub_name).arg("setup").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("must be 1-63 characters of a-z, 0-9 and _"), "{}", output_text(&out));
        assert_eq!(w.sql("SELECT count(*) FROM pg_publication"), "0", "nothing was created");
        assert_eq!(w.sql("SELECT count(*) FROM y"), "0");
    }
}
