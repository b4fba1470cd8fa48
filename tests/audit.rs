//! `deriver audit` against real Postgres and Redis: a clean run reports zero; drift injected
//! behind deriver's back is found exactly and repaired; concurrent writes are not drift.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Deletes a search document behind deriver's back (keeping the commit payload).
fn delete_document(w: &World, index: &str, key: &str) {
    let dir = w.index_dir().join(index);
    let gen: u64 = std::fs::read_to_string(dir.join("CURRENT")).unwrap().trim().parse().unwrap();
    let idx = tantivy::Index::open_in_dir(dir.join(format!("gen-{gen:06}"))).unwrap();
    let payload = idx.load_metas().unwrap().payload;
    let mut writer: tantivy::IndexWriter<tantivy::TantivyDocument> = idx.writer(20_000_000).unwrap();
    writer.delete_term(tantivy::Term::from_field_text(idx.schema().get_field("_key").unwrap(), key));
    let mut prepared = writer.prepare_commit().unwrap();
    prepared.set_payload(&payload.unwrap());
    prepared.commit().unwrap();
}

#[test]
fn audit_finds_injected_drift_exactly_and_repairs_it() {
    let mut w = World::new("audit");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();
    let (code, report, err) = audit_json(&w, &["films"]);
    assert_eq!(code, 0, "a clean deployment: {report}\n{err}");
    assert_eq!(report["pipelines"][0]["records"], 1000);
    assert!(drifted_keys(&report).is_empty(), "{report}");

    // Drift behind deriver's back.
    assert_eq!(w.stop(), 0);
    delete_document(&w, "films", "11");
    let mut c = env().redis.conn();
    let p = w.prefix();
    let _: () = redis::cmd("DEL").arg(format!("{p}:film:12")).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(format!("{p}:film:13")).arg(r#"{"film_id": 13, "title": "TAMPERED"}"#).query(&mut c).unwrap();
    let _: () = redis::cmd("HSET").arg(format!("{p}:film:14:summary")).arg("title").arg("TAMPERED").query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(format!("{p}:film:424242")).arg("{}").query(&mut c).unwrap();
    // A ledger entry for a record that does not exist (its view is gone too).
    let _: () = redis::cmd("HSET").arg(format!("{p}:_ledger:films")).arg("999999").arg(format!(r#"["{p}:film:999999"]"#)).query(&mut c).unwrap();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();

    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 1, "{report}");
    let keys = drifted_keys(&report);
    assert_eq!(keys, vec![format!("(key) {p}:film:424242"), "11".into(), "12".into(), "13".into(), "14".into(), "999999".into()], "{report}");
    let redis_target = report["pipelines"][0]["targets"].as_array().unwrap().iter().find(|t| t["target"] == "redis").unwrap();
    assert!(redis_target["extra"].as_array().unwrap().contains(&serde_json::json!("999999")), "{report}");
    let search = report["pipelines"][0]["targets"].as_array().unwrap().iter().find(|t| t["target"] == "search:films").unwrap();
    assert_eq!(search["missing"], serde_json::json!(["11"]));
    assert!(report["pipelines"][0]["diffs"].as_array().unwrap().iter().any(|d| d["key"] == "13"), "{report}");
    // The human table too.
    let (code, out, _) = w.run_cli(&["audit", "films"]);
    assert_eq!(code, 1);
    assert!(out.contains("films") && out.contains("missing: 11"), "{out}");

    let (code, report, err) = audit_json(&w, &["films", "--repair"]);
    assert_eq!(code, 0, "{report}\n{err}");
    assert_eq!(report["pipelines"][0]["remaining"], 0);
    check_films(&w);
    assert!(w.redis_get("film:424242").is_none());
    let ledger: Option<String> = redis::cmd("HGET").arg(format!("{p}:_ledger:films")).arg("999999").query(&mut c).unwrap();
    assert!(ledger.is_none(), "the orphan ledger entry is gone");
    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 0, "{report}");
    // The last audit shows in status.
    let (_, out, _) = w.run_cli(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["pipelines"][0]["audit"]["remaining"], 0, "{out}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn concurrent_writes_are_not_drift_and_sampling_works() {
    let mut w = World::new("auditload");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let url = w.url();
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                client
                    .batch_execute(&format!("UPDATE film SET title = 'L{n}', rental_rate = {}.99 WHERE film_id = {}", n % 5, 1 + (n * 37) % 1000))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
    });
    for args in [vec!["films"], vec!["films", "--sample", "30"]] {
        let (code, report, err) = audit_json(&w, &args);
        assert_eq!(code, 0, "false positives under load: {report}\n{err}");
        assert_eq!(report["pipelines"][0]["remaining"], 0);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_change_the_stream_can_no_longer_deliver_is_drift_until_deriver_resyncs() {
    let mut w = World::new("auditslot");
    w.add_repo_pipeline("actors");
    w.setup();
    w.start();
    w.catch_up(&["actors"], &["actors"]);
    assert_eq!(w.stop(), 0);
    // While deriver is down, a row changes and the slot is recreated past it.
    w.sql("UPDATE actor SET first_name = 'GONE' WHERE actor_id = 3");
    w.sql(&format!("SELECT pg_drop_replication_slot('{0}'); SELECT pg_create_logical_replication_slot('{0}', 'pgoutput')", w.db));
    let (code, report, _) = audit_json(&w, &["actors"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(drifted_keys(&report), vec!["3".to_string()]);
    // deriver sees its sinks behind the new slot and re-derives the pipeline.
    w.start();
    w.catch_up(&["actors"], &["actors"]);
    w.wait_ready();
    assert!(w.log_text().contains("a sink is behind the replication slot"), "{}", w.log_text());
    let (code, report, _) = audit_json(&w, &["actors"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(w.redis_hgetall("actor:3")["first_name"], "GONE");
    assert_eq!(w.stop(), 0);
}

/// One series of a metric in `GET /metrics` (`name{pipeline="…"}`), 0 when absent.
fn metric(w: &World, name: &str, pipeline: &str) -> f64 {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", w.http_port)).unwrap().text().unwrap();
    let series = format!("{name}{{pipeline=\"{pipeline}\"}}");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn status_audit(w: &World) -> serde_json::Value {
    let (_, out, _) = w.run_cli(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    doc["pipelines"][0]["audit"].clone()
}

/// Waits until `n` more continuous rounds of `films` have finished; returns the rounds so far.
fn wait_rounds(w: &World, after: f64, n: f64) -> f64 {
    let mut rounds = after;
    wait_for("continuous audit rounds", Duration::from_secs(90), || {
        rounds = metric(w, "deriver_audit_rounds_total", "films");
        rounds >= after + n
    });
    rounds
}

#[test]
fn continuous_mode_finds_drift_without_false_positives_and_repairs_only_when_told() {
    let mut w = World::new("auditcont");
    w.add_repo_pipeline("films");
    let conf = |repair: bool| format!("[audit]\ncontinuous = true\nsample_percent = 100\ninterval_secs = 1\nkeys_per_second = 0\nrepair = {repair}\n");
    std::fs::write(w.dir.join("deriver.toml"), conf(false)).unwrap();
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();

    // Clean, and clean under concurrent writes: every round reports zero.
    let rounds = wait_rounds(&w, 0.0, 1.0);
    let audit = status_audit(&w);
    assert_eq!(audit["records"], 1000, "{audit}");
    assert_eq!(audit["drifted"], 0, "{audit}");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let url = w.url();
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                // Films and the tables they join (actors' names) change all the time.
                let sql = if n.is_multiple_of(4) {
                    format!("UPDATE actor SET last_name = 'L{n}' WHERE actor_id = {}", 1 + n % 200)
                } else {
                    format!("UPDATE film SET title = 'C{n}', rental_rate = {}.99 WHERE film_id = {}", n % 5, 1 + (n * 37) % 1000)
                };
                client.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
    });
    let rounds = wait_rounds(&w, rounds, 3.0);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(metric(&w, "deriver_audit_drift_total", "films"), 0.0, "false positives under load; log:\n{}", w.log_text());
    assert!(!w.log_text().contains("continuous audit found drift"), "{}", w.log_text());

    // Drift behind deriver's back while it runs: found, reported, left alone.
    w.catch_up(&["films"], &["films"]);
    let mut c = env().redis.conn();
    let p = w.prefix();
    let _: () = redis::cmd("DEL").arg(format!("{p}:film:12")).query(&mut c).unwrap();
    let _: () = redis::cmd("HSET").arg(format!("{p}:film:14:summary")).arg("title").arg("TAMPERED").query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(format!("{p}:film:424242")).arg("{}").query(&mut c).unwrap();
    // A round that started before the injection may miss part of it; the one after sees all.
    let rounds = wait_rounds(&w, rounds, 2.0);
    assert_eq!(metric(&w, "deriver_audit_drifted", "films"), 3.0, "log:\n{}", w.log_text());
    assert_eq!(metric(&w, "deriver_audit_remaining", "films"), 3.0);
    assert!(metric(&w, "deriver_audit_drift_total", "films") >= 3.0);
    let audit = status_audit(&w);
    assert_eq!((audit["drifted"].as_u64(), audit["remaining"].as_u64(), audit["repaired"].as_u64()), (Some(3), Some(3), Some(0)), "{audit}");
    let log = strip_ansi(&w.log_text());
    assert!(log.contains("continuous audit found drift") && log.contains("keys=12, 14") && log.contains(&format!("(key) {p}:film:424242")), "{log}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(w.index_dir().join("_audit/films.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "continuous");
    assert_eq!(drifted_keys(&serde_json::json!({ "pipelines": [report] })), vec![format!("(key) {p}:film:424242"), "12".into(), "14".into()]);
    assert!(w.redis_get("film:12").is_none(), "repair = false leaves drift alone");
    assert!(rounds >= 2.0);

    // With repair = true the next round repairs it through the normal write path.
    assert_eq!(w.stop(), 0);
    std::fs::write(w.dir.join("deriver.toml"), conf(true)).unwrap();
    w.start();
    w.wait_ready();
    wait_for("a repairing round", Duration::from_secs(90), || {
        let a = status_audit(&w);
        a["repaired"].as_u64() == Some(3) && a["remaining"].as_u64() == Some(0)
    });
    check_films(&w);
    assert!(w.redis_get("film:424242").is_none());
    let rounds = wait_rounds(&w, metric(&w, "deriver_audit_rounds_total", "films"), 1.0);
    assert!(rounds >= 1.0);
    assert_eq!(status_audit(&w)["drifted"], 0, "clean again after the repair");
    assert_eq!(metric(&w, "deriver_audit_drifted", "films"), 0.0);
    assert_eq!(w.stop(), 0);
}
