//! Production Postgres and Redis: a Postgres that accepts only TLS (`hostssl` lines with
//! `scram-sha-256`, plaintext refused), certificates from a private CA made with `openssl`, an
//! owner role that owns the tables and the publication and a `LOGIN REPLICATION` role that only
//! reads. deriver runs as the reader end to end (snapshot, stream, kill -9, resume) with every
//! connection encrypted as the server sees it (`pg_stat_ssl`); each way a connection can fail
//! is one clear sentence. Redis over TLS (`rediss://`, `redis-server --tls-port`) likewise.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::certs::Pki;
use support::*;

struct TlsPostgres {
    pki: Pki,
    pg: &'static Cluster,
}

const READER: &str = "deriver_reader";
const READER_PASSWORD: &str = "r3ader pw'with%odd chars";
const OWNER: &str = "app_owner";
/// May log in only with a client certificate the CA signed (`clientcert=verify-full`).
const CERT_USER: &str = "cert_reader";

fn tls_postgres() -> &'static TlsPostgres {
    static ONCE: OnceLock<TlsPostgres> = OnceLock::new();
    ONCE.get_or_init(|| {
        let pki = Pki::new();
        let conf = format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\nlisten_addresses = '127.0.0.1,127.0.0.2'\npassword_encryption = 'scram-sha-256'\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        );
        // TLS only: no `host` line, so a plaintext connection finds no entry. The harness's own
        // superuser (psql) comes in over TLS as well.
        let hba = format!(
            "local all all trust\n\
             hostssl all postgres 127.0.0.0/8 trust\n\
             hostssl all {CERT_USER} 127.0.0.0/8 scram-sha-256 clientcert=verify-full\n\
             hostssl all all 127.0.0.0/8 scram-sha-256\n\
             hostssl replication all 127.0.0.0/8 scram-sha-256\n"
        );
        let pg: &'static Cluster = Box::leak(Box::new(Cluster::start_with(&conf, Some(&hba))));
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE {OWNER} LOGIN PASSWORD 'owner pw';
                 CREATE ROLE {READER} LOGIN REPLICATION PASSWORD '{}';
                 CREATE ROLE {CERT_USER} LOGIN REPLICATION PASSWORD 'cert pw';",
                READER_PASSWORD.replace('\'', "''")
            ),
        );
        TlsPostgres { pki, pg }
    })
}

const ITEMS: &str = r#"version: 1
pipeline: items
source: { table: public.item }
lookups:
  cat: { table: public.category, on: "item.cat_id = cat.id" }
fields:
  id: item.id
  name: item.name
  category: cat.name
targets:
  - redis: { key: "item:{id}", type: json }
  - search: { id: id, fields: { name: { type: text, stored: true }, category: { type: keyword, stored: true } } }
"#;

fn check_items(w: &World) {
    let want = w.expected(
        "SELECT i.id::text, jsonb_build_object('id', i.id, 'name', i.name, 'category', (SELECT c.name FROM category c WHERE c.id = i.cat_id)) FROM item i",
    );
    assert_eq!(w.redis_keys("item:*").len(), want.len(), "redis views");
    for (id, v) in &want {
        let got: Value = serde_json::from_str(&w.redis_get(&format!("item:{id}")).unwrap()).unwrap();
        assert_eq!(&got, v, "item:{id}");
    }
    let docs = w.index_docs("items");
    assert_eq!(docs.len(), want.len(), "search documents");
    for (id, v) in &want {
        assert_eq!(docs[id]["name"], v["name"], "document {id}");
        assert_eq!(docs[id]["category"], v["category"], "document {id}");
    }
}

/// A world on the TLS-only cluster whose tables and publication belong to the owner role.
fn owned_world(name: &str) -> (World, &'static TlsPostgres) {
    let t = tls_postgres();
    let w = World::on(t.pg, name, None);
    w.sql(&format!(
        "ALTER DATABASE {db} OWNER TO {OWNER};
         SET ROLE {OWNER};
         CREATE TABLE category (id integer PRIMARY KEY, name text);
         CREATE TABLE item (id integer PRIMARY KEY, name text, cat_id integer);
         INSERT INTO category VALUES (1, 'tools'), (2, 'toys');
         INSERT INTO item SELECT g, 'item ' || g, 1 + g % 2 FROM generate_series(1, 50) g;
         CREATE PUBLICATION deriver FOR TABLE public.item;
         GRANT SELECT ON item, category TO {READER}, {CERT_USER};",
        db = w.db
    ));
    w.add_pipeline("items", ITEMS);
    (w, t)
}

fn reader_url(w: &World, t: &TlsPostgres, host: &str, params: &str) -> String {
    format!("postgres://{READER}@{host}:{}/{}?sslrootcert={}&{params}", t.pg.port, w.db, t.pki.ca.display())
}

/// deriver as the reader role, its password from a file, no `~/.postgresql` to fall back on.
fn reader_command(w: &World, url: &str) -> Command {
    let secret = w.dir.join("pg-password");
    if !secret.exists() {
        std::fs::write(&secret, format!("{READER_PASSWORD}\n")).unwrap();
    }
    let mut c = w.command();
    c.env("DERIVER__POSTGRES__URL", url).env("DERIVER__POSTGRES__PASSWORD_FILE", &secret).env("HOME", &w.dir);
    for var in ["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGPASSWORD"] {
        c.env_remove(var);
    }
    c
}

fn run(mut c: Command, args: &[&str]) -> (i32, String, String) {
    let out = c.args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), strip_ansi(&String::from_utf8_lossy(&out.stderr)))
}

fn start_as_reader(w: &mut World, url: &str) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    let child = reader_command(w, url).arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    w.daemon = Some(child);
}

#[test]
fn a_least_privilege_role_streams_from_a_tls_only_postgres_and_resumes_after_kill_9() {
    let (mut w, t) = owned_world("tlsrun");
    let url = reader_url(&w, t, "localhost", "sslmode=verify-full&channel_binding=require");

    // The reader may not change the owner's publication: setup names the statement to run and
    // changes nothing.
    let (code, out, err) = run(reader_command(&w, &url), &["setup"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("the tables' owner must run:\n    ALTER PUBLICATION \"deriver\" ADD TABLE \"public\".\"category\";"), "{err}");
    assert_eq!(w.sql("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'deriver'"), "1");
    w.sql(&format!("SET ROLE {OWNER}; ALTER PUBLICATION deriver ADD TABLE public.category"));
    let (code, out, err) = run(reader_command(&w, &url), &["setup"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("publication `deriver` covers the 2 table(s)"), "{out}");
    assert!(!out.contains(READER_PASSWORD) && !err.contains(READER_PASSWORD));

    start_as_reader(&mut w, &url);
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    // Every connection of the reader, the walsender included, is encrypted as the server sees it.
    let conns = w.sql(&format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE a.backend_type = 'walsender' AND s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = '{READER}'"
    ));
    let counts: Vec<u32> = conns.split('|').map(|c| c.parse().unwrap()).collect();
    assert!(counts[0] >= 3 && counts[1] == 0 && counts[2] == 1, "encrypted, plaintext, encrypted walsenders: {conns}");
    let (code, out, err) = run(reader_command(&w, &url), &["status"]);
    assert_eq!(code, 0, "{err}");
    for conn in ["postgres", "lock", "replication"] {
        assert!(out.contains(&format!("connection {conn}: encrypted (TLSv1.")), "{conn}: {out}");
    }
    assert!(out.contains("sslmode=verify-full, certificate and host name verified"), "{out}");

    w.sql(
        "UPDATE item SET name = 'renamed' WHERE id = 1; UPDATE category SET name = 'hardware' WHERE id = 1;
           DELETE FROM item WHERE id = 3; INSERT INTO item VALUES (100, 'new', 2)",
    );
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    w.kill();
    w.sql("UPDATE item SET name = 'while down' WHERE id = 4; INSERT INTO item VALUES (101, 'also new', 1); DELETE FROM item WHERE id = 5");
    start_as_reader(&mut w, &url);
    w.catch_up(&["items"], &["items"]);
    check_items(&w);
    assert!(!w.log_text().contains(READER_PASSWORD), "the password reached the log");
    assert_eq!(w.stop(), 0);
}

#[test]
fn each_connection_failure_is_one_sentence_naming_its_cause() {
    let (w, t) = owned_world("tlsfail");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "a CA that did not sign the server's certificate",
            format!("postgres://{READER}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}", t.pg.port, w.db, t.pki.other_ca.display()),
            vec!["the server's certificate does not verify against sslrootcert", "other-ca.pem"],
        ),
        (
            "a host name the certificate does not list",
            reader_url(&w, t, "127.0.0.2", "sslmode=verify-full"),
            vec!["the server's certificate is not valid for the host name `127.0.0.2` (it is for localhost, 127.0.0.1)"],
        ),
        (
            "plaintext against a TLS-only server",
            reader_url(&w, t, "localhost", "sslmode=disable"),
            vec!["the server said: FATAL 28000", "no encryption", "with sslmode=disable deriver does not use TLS"],
        ),
        (
            "verify-full without a CA",
            format!("postgres://{READER}@localhost:{}/{}?sslmode=verify-full", t.pg.port, w.db),
            vec!["sslmode=verify-full needs the CA certificate", "sslrootcert=system"],
        ),
        (
            "a wrong password",
            format!("postgres://{READER}:secret@localhost:{}/{}?sslmode=verify-full&sslrootcert={}", t.pg.port, w.db, t.pki.ca.display()),
            vec!["the server said: FATAL 28P01: password authentication failed for user \"deriver_reader\""],
        ),
        (
            "a database that does not exist",
            format!("postgres://{READER}@localhost:{}/nope?sslmode=verify-full&sslrootcert={}", t.pg.port, t.pki.ca.display()),
            vec!["the server said: FATAL 3D000: database \"nope\" does not exist"],
        ),
        (
            "require against a server without TLS",
            format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=require", env().pg.port),
            vec!["error performing TLS handshake", "server does not support TLS"],
        ),
    ];
    for (what, url, wants) in &cases {
        let mut c = reader_command(&w, url);
        if url.contains(":secret@") {
            c.env_remove("DERIVER__POSTGRES__PASSWORD_FILE");
        }
        let (code, out, err) = run(c, &["setup"]);
        assert_ne!(code, 0, "{what}: {out}\n{err}");
        let first = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{what}: no error line in {err}"));
        assert!(first.starts_with("error: cannot connect to Postgres at postgres://") || first.starts_with("error: postgres.url: "), "{what}: {first}");
        for want in wants {
            assert!(err.contains(want), "{what}: want `{want}` in\n{err}");
        }
        assert!(!err.contains("secret") && !out.contains("secret"), "{what}: a password leaked: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }

    // The daemon's first connection is the ownership lock's: the server's words there too.
    let bad = format!("postgres://{READER}:secret@localhost:{}/{}?sslmode=verify-full&sslrootcert={}", t.pg.port, w.db, t.pki.ca.display());
    let mut c = reader_command(&w, &bad);
    c.env_remove("DERIVER__POSTGRES__PASSWORD_FILE");
    let (code, _, err) = run(c, &["run"]);
    assert_eq!(code, 2, "a wrong password is a configuration error: {err}");
    assert!(err.contains("cannot connect to Postgres for the ownership lock at") && err.contains("28P01: password authentication failed"), "{err}");

    // sslmode=allow tries plaintext first, and TLS when the server refuses it.
    let (code, out, err) = run(reader_command(&w, &reader_url(&w, t, "localhost", "sslmode=allow")), &["setup"]);
    assert!(!err.contains("cannot connect"), "allow: {out}\n{err}");
    assert!(code == 0 || code == 1, "{err}");
}

#[test]
fn client_certificates_are_sent_and_refusals_are_explained() {
    let (w, t) = owned_world("tlscert");
    let url = |extra: &str| {
        format!("postgres://{CERT_USER}:cert%20pw@localhost:{}/{}?sslmode=verify-full&sslrootcert={}{extra}", t.pg.port, w.db, t.pki.ca.display())
    };
    let cmd = |u: &str| {
        let mut c = reader_command(&w, u);
        c.env_remove("DERIVER__POSTGRES__PASSWORD_FILE");
        c
    };
    // No certificate: the server's own refusal.
    let (code, _, err) = run(cmd(&url("")), &["setup"]);
    assert_ne!(code, 0);
    assert!(err.contains("28000") && err.contains("connection requires a valid client certificate"), "{err}");
    // A certificate from a CA the server does not trust: the TLS alert, named.
    let (cert, key) = t.pki.client("other-ca", CERT_USER);
    let (code, _, err) = run(cmd(&url(&format!("&sslcert={}&sslkey={}", cert.display(), key.display()))), &["setup"]);
    assert_ne!(code, 0);
    // The server's alert (TLS 1.3 sends it after the client's handshake ends, so a reset can
    // overtake it: then the sentence says what a reset after the handshake most likely means).
    assert!(err.contains("refused deriver's client certificate"), "{err}");
    // The CA's certificate for the user: accepted, through the environment variables as well.
    let (cert, key) = t.pki.client("ca", CERT_USER);
    let (code, out, err) = run(cmd(&url(&format!("&sslcert={}&sslkey={}", cert.display(), key.display()))), &["setup"]);
    assert_eq!(code, 1, "connected; only the publication is the owner's to extend: {out}\n{err}");
    assert!(err.contains("ALTER PUBLICATION \"deriver\" ADD TABLE \"public\".\"category\";"), "{err}");
    let mut c = cmd(&url(""));
    c.env("PGSSLCERT", &cert).env("PGSSLKEY", &key);
    let (code, _, err) = run(c, &["setup"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("cannot connect"), "{err}");
    // A key others may read is refused before any connection, as libpq does.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(cmd(&url(&format!("&sslcert={}&sslkey={}", cert.display(), key.display()))), &["setup"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permissions 0644"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Redis over TLS
// ---------------------------------------------------------------------------------------------

struct TlsRedis {
    port: u16,
}

fn tls_redis(pki: &Pki) -> TlsRedis {
    let port = free_port();
    let dir = tempfile::Builder::new().prefix("deriver-redis-tls-").tempdir().unwrap().keep();
    let key = pki.server_key_for_current_user();
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", "0", "--save", "", "--appendonly", "yes", "--tls-auth-clients", "optional"])
        .arg("--tls-port")
        .arg(port.to_string())
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    wait_for("redis-server with TLS", Duration::from_secs(20), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("redis-server --tls-port exited: {st} (is it built with TLS?)");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let pid = child.id();
    std::mem::forget(child);
    register_kill(pid);
    TlsRedis { port }
}

fn redis_cli(pki: &Pki, port: u16, args: &[&str]) -> String {
    let out =
        Command::new("redis-cli").args(["--tls", "--cacert"]).arg(&pki.ca).args(["-h", "localhost", "-p", &port.to_string()]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_views_are_written_over_tls() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let mut w = World::on(&env().pg, "rediss", None);
    w.sql(
        "CREATE TABLE category (id integer PRIMARY KEY, name text);
           CREATE TABLE item (id integer PRIMARY KEY, name text, cat_id integer);
           INSERT INTO category VALUES (1, 'tools');
           INSERT INTO item SELECT g, 'item ' || g, 1 FROM generate_series(1, 10) g;",
    );
    w.add_pipeline(
        "items",
        &ITEMS.replace("  - search: { id: id, fields: { name: { type: text, stored: true }, category: { type: keyword, stored: true } } }\n", ""),
    );
    w.setup();
    let url = format!("rediss://localhost:{}/", redis.port);
    let with = |c: &mut Command, ca: Option<&PathBuf>| {
        c.env("DERIVER__REDIS__URL", &url);
        if let Some(ca) = ca {
            c.env("DERIVER__REDIS__TLS_CA_FILE", ca);
        }
    };
    // A CA the system does not know: refused, clearly, until redis.tls_ca_file names it.
    let mut c = w.command();
    with(&mut c, None);
    let (code, _, err) = run(c, &["run"]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("cannot connect to Redis at {url}")), "{err}");
    // With the CA and a client certificate (the server checks one when it is sent).
    let (cert, key) = pki.client("ca", "deriver");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    let mut c = w.command();
    with(&mut c, Some(&pki.ca));
    c.env("DERIVER__REDIS__TLS_CERT_FILE", &cert).env("DERIVER__REDIS__TLS_KEY_FILE", &key);
    w.daemon = Some(c.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    let key_name = format!("{}:item:7", w.prefix());
    wait_for("the view over TLS", Duration::from_secs(60), || redis_cli(&pki, redis.port, &["GET", &key_name]).contains("item 7"));
    w.sql("UPDATE item SET name = 'changed over tls' WHERE id = 7");
    wait_for("the change over TLS", Duration::from_secs(30), || redis_cli(&pki, redis.port, &["GET", &key_name]).contains("changed over tls"));
    let v: Value = serde_json::from_str(&redis_cli(&pki, redis.port, &["GET", &key_name])).unwrap();
    assert_eq!(v, serde_json::json!({"id": 7, "name": "changed over tls", "category": "tools"}));
    assert_eq!(w.stop(), 0);
}
