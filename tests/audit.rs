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

fn audit_json(w: &World, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = w.run_cli(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {out}\n{err}"));
    (code, v, err)
}

fn drifted_keys(report: &serde_json::Value) -> Vec<String> {
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
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();

    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 1, "{report}");
    let keys = drifted_keys(&report);
    assert_eq!(keys, vec!["(key) t:".to_string() + &w.db + ":film:424242", "11".into(), "12".into(), "13".into(), "14".into()].into_iter().map(|k| k.replace(&format!("t:{}", w.db), &p)).collect::<Vec<_>>(), "{report}");
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
                client.batch_execute(&format!("UPDATE film SET title = 'L{n}', rental_rate = {}.99 WHERE film_id = {}", n % 5, 1 + (n * 37) % 1000)).await.unwrap();
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
