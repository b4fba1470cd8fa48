//! Loud failures and crash recovery against real Postgres and Redis: SIGKILL under write load,
//! a lost or invalidated slot, a missing publication, wal_level, unreachable dependencies, and
//! pipeline files with errors.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

#[test]
fn sigkill_under_write_load_converges() {
    let mut w = World::new("sigkill");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    // Kill at varied moments: right after start (mid catch-up), and mid-stream.
    for (i, run_ms) in [700u64, 1500, 150, 2300, 400].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(run_ms));
        w.kill();
        std::thread::sleep(Duration::from_millis(100 + 50 * i as u64));
        w.start();
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 100, "the load ran");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    // Nothing was re-snapshotted: recovery came from the checkpoints.
    assert_eq!(w.log_text().matches("derived every record").count(), 1, "log:\n{}", w.log_text());
    assert_eq!(w.stop(), 0);
}

#[test]
fn missing_slot_with_checkpoints_is_fatal_until_resnapshot() {
    let mut w = World::new("lostslot");
    w.add_repo_pipeline("actors");
    w.setup();
    w.start();
    w.catch_up(&["actors"], &["actors"]);
    assert_eq!(w.stop(), 0);
    w.sql(&format!("SELECT pg_drop_replication_slot('{}')", w.db));
    w.sql("UPDATE actor SET first_name = 'LOST' WHERE actor_id = 1");
    w.start();
    let (code, log) = w.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(log.contains(&format!("replication slot `{}` is missing but the sinks hold checkpoints", w.db)), "log:\n{log}");

    // --resnapshot re-derives everything from a new slot.
    let log = std::fs::OpenOptions::new().append(true).open(&w.log).unwrap();
    w.daemon = Some(w.command().args(["run", "--resnapshot"]).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["actors"], &["actors"]);
    assert_eq!(w.redis_hgetall("actor:1")["first_name"], "LOST");
    assert_eq!(w.stop(), 0);
}

#[test]
fn invalidated_slot_is_a_clear_error() {
    let cluster: &'static Cluster =
        Box::leak(Box::new(Cluster::start("max_slot_wal_keep_size = 1MB\nmin_wal_size = 32MB\nmax_wal_size = 32MB\nwal_keep_size = 0")));
    let mut w = World::on(cluster, "invalid", None);
    w.sql("CREATE TABLE item (id int PRIMARY KEY, name text); INSERT INTO item VALUES (1, 'a'); CREATE TABLE junk (x text)");
    w.add_pipeline(
        "items",
        "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, name: item.name }\ntargets:\n  - redis: { key: \"item:{id}\" }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["items"], &[]);
    assert_eq!(w.stop(), 0);
    let slot = w.db.clone();
    for _ in 0..6 {
        w.sql("INSERT INTO junk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 8000) g; SELECT pg_switch_wal();");
    }
    w.sql("CHECKPOINT");
    wait_for("the slot to be invalidated", Duration::from_secs(30), || {
        w.sql("CHECKPOINT");
        w.sql(&format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'")) == "lost"
    });
    w.start();
    let (code, log) = w.wait_exit(Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(log.contains("was invalidated (wal_status=lost)"), "log:\n{log}");
    cluster.stop();
}

#[test]
fn missing_publication_and_wal_level_and_unreachable_dependencies() {
    // No `deriver setup`: the publication is missing.
    let w = World::new("nopub");
    w.add_repo_pipeline("actors");
    let (code, _, err) = w.run_cli(&["run"]);
    assert_ne!(code, 0);
    assert!(err.contains("publication `deriver` does not exist; run `deriver setup`"), "{err}");

    // A table the pipeline reads is not published.
    w.setup();
    w.sql("ALTER PUBLICATION deriver DROP TABLE actor");
    let (code, _, err) = w.run_cli(&["run"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not cover table public.actor"), "{err}");

    // Postgres unreachable at start.
    let port = free_port();
    let (code, _, err) = {
        let out = w.command().env("DERIVER__POSTGRES__URL", format!("postgres://app:secret-pw@127.0.0.1:{port}/x")).arg("run").output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to Postgres"), "{err}");
    assert!(!err.contains("secret-pw"), "the password leaked: {err}");

    // Redis unreachable at start.
    w.setup();
    let out = w.command().env("DERIVER__REDIS__URL", format!("redis://:hush@127.0.0.1:{port}/")).arg("run").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("cannot connect to Redis"), "{err}");
    assert!(!err.contains("hush"), "the password leaked: {err}");

    // wal_level=replica.
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start("wal_level = replica")));
    let w2 = World::on(cluster, "walrep", None);
    w2.sql("CREATE TABLE item (id int PRIMARY KEY)");
    w2.add_pipeline("items", "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id }\ntargets:\n  - redis: { key: \"item:{id}\" }\n");
    let (code, _, err) = w2.run_cli(&["run"]);
    assert_ne!(code, 0);
    assert!(err.contains("wal_level=replica; deriver needs wal_level=logical"), "{err}");
    let (code, _, err) = w2.run_cli(&["setup"]);
    assert_eq!(code, 1);
    assert!(err.contains("wal_level is `replica`"), "{err}");
    cluster.stop();
}

#[test]
fn validate_reports_every_error_with_positions() {
    let w = World::new("validate");
    w.add_repo_pipeline("films");
    w.add_pipeline(
        "broken",
        "version: 1\npipeline: broken\nsource:\n  table: film\n  colour: red\nfields:\n  id: film.film_id\ntargets:\n  - redis: { key: \"film:{nope}\", type: json }\n  - search: { id: id, fields: { id: { type: text, sortable: true } } }\n",
    );
    let (code, _, err) = w.run_cli(&["validate", "--no-environment"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken.yaml:5:3: error: unknown key `colour`"), "{err}");
    assert!(err.contains("broken.yaml:9:19: error: key template uses `{nope}`"), "{err}");
    assert!(err.contains("cannot be filterable or sortable"), "{err}");
    assert!(err.contains("3 problem(s) found"), "{err}");

    // With the environment: SQL that does not compile is reported with the file.
    std::fs::remove_file(w.pipelines.join("broken.yaml")).unwrap();
    w.add_pipeline(
        "typo",
        "version: 1\npipeline: typo\nsource: { table: film }\nfields: { id: film.film_id, t: film.titel }\ntargets:\n  - redis: { key: \"x:{id}\" }\n",
    );
    w.setup_allow_failure();
    let (code, _, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("typo.yaml") && err.contains("column film.titel does not exist"), "{err}");
    std::fs::remove_file(w.pipelines.join("typo.yaml")).unwrap();
    w.setup();
    let (code, out, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn status_reads_checkpoints_without_a_daemon() {
    let mut w = World::new("status");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    // From the daemon over HTTP (it reports `streaming` once the snapshot is done).
    let mut doc = serde_json::Value::Null;
    wait_for("the daemon to report streaming", Duration::from_secs(20), || {
        let (code, out, _) = w.run_cli(&["status", "--json"]);
        assert_eq!(code, 0);
        doc = serde_json::from_str(&out).unwrap();
        doc["pipelines"][0]["state"] == "streaming"
    });
    assert_eq!(doc["pipelines"][0]["name"], "films");
    assert_eq!(doc["pipelines"][0]["state"], "streaming");
    assert!(doc["pipelines"][0]["targets"]["search:films"].is_string());
    assert!(doc["pipelines"][0]["targets"]["redis:film:{film_id}"].is_string());
    assert_eq!(w.stop(), 0);
    // Without a daemon, from the sinks.
    let (code, out, err) = w.run_cli(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &doc["pipelines"][0];
    assert_eq!(p["state"], "stopped");
    let applied = p["applied_lsn"].as_str().unwrap().parse::<Lsn>().unwrap();
    assert_eq!(Some(applied), w.redis_applied("films"));
    assert_eq!(doc["slot"]["name"], w.db.as_str());
    let (code, out, _) = w.run_cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("films") && out.contains("search:films"), "{out}");
}
