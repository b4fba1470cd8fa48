//! Provenance (`provenance: true`) against real Postgres and Redis: every record a json view, a
//! hash view and a search target write carries `_lsn` (the LSN of the batch that wrote it) and
//! `_version` (the short hash of the target's definition); audits ignore both, and a reindex with
//! an unchanged definition rewrites no view that differs only in `_lsn`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use deriver::source::Lsn;
use serde_json::{json, Value};
use support::*;

const PIPELINE: &str = r#"version: 1
pipeline: films
source: { table: public.film, key: film_id }
fields:
  film_id: film.film_id
  title: film.title
  rate: { sql: film.rental_rate, type: f64 }
targets:
  - search:
      index: films
      id: film_id
      provenance: true
      fields:
        title: { type: text, stored: true }
        rate: { type: f64, stored: true, sortable: true }
  - redis: { key: "film:{film_id}", type: json, provenance: true, notify: true }
  - redis: { key: "film:{film_id}:summary", type: hash, fields: [title, rate], provenance: true }
  - redis: { key: "film:{film_id}:plain", type: hash, fields: [title] }
"#;

/// `_lsn` and `_version` of a JSON view, a hash view and a search document.
fn stamp_of(v: &Value) -> (Lsn, String) {
    let lsn = v["_lsn"].as_str().unwrap_or_else(|| panic!("no _lsn in {v}")).parse().unwrap();
    (lsn, v["_version"].as_str().unwrap_or_else(|| panic!("no _version in {v}")).to_string())
}

fn json_view(w: &World, key: &str) -> Value {
    serde_json::from_str(&w.redis_get(key).unwrap_or_else(|| panic!("{key} missing"))).unwrap()
}

fn hash_view(w: &World, key: &str) -> Value {
    serde_json::to_value(w.redis_hgetall(key)).unwrap()
}

/// The LSN the daemon logged for its snapshot ("deriving every record", `lsn=X/Y`).
fn snapshot_lsn(w: &World) -> Lsn {
    let log = strip_ansi(&w.log_text());
    let line = log.lines().find(|l| l.contains("deriving every record")).unwrap_or_else(|| panic!("no snapshot line in the log:\n{log}"));
    line.split("lsn=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).parse().unwrap()
}

fn already_exact(w: &World) -> usize {
    let log = strip_ansi(&w.log_text());
    let line = log.lines().find(|l| l.contains("Redis views rewritten where they differed")).unwrap_or_else(|| panic!("no rewrite summary in the log:\n{log}"));
    line.split("already_exact=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn records_carry_the_lsn_and_version_that_made_them_and_audits_ignore_them() {
    let mut w = World::new("provenance");
    w.add_pipeline("films", PIPELINE);
    w.setup();
    let before_start = w.current_lsn();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();

    // The versions: the short form of each target's own definition hash, as stored beside its data.
    let def = deriver::pipeline::check::check(Path::new("films.yaml"), PIPELINE).unwrap();
    let redis_version = def.redis_hash()[..12].to_string();
    let search_version = def.search_hash(&def.search[0])[..12].to_string();
    assert_ne!(redis_version, search_version);
    let stored_redis_hash: String = redis::cmd("GET").arg(format!("{}:_meta:films:definition_hash", w.prefix())).query(&mut *w.redis_conn()).unwrap();
    assert_eq!(&stored_redis_hash[..12], redis_version);
    let (_, search_cp) = deriver::sink::tantivy::read_checkpoint(&w.index_dir(), "films").unwrap().unwrap();
    assert_eq!(&search_cp.definition_hash.unwrap()[..12], search_version);

    // After the snapshot: every record carries the snapshot's position.
    let snap = snapshot_lsn(&w);
    assert!(before_start <= snap && snap <= w.current_lsn(), "{before_start} <= {snap}");
    let docs = w.index_docs("films");
    assert_eq!(docs.len(), 1000);
    for id in [1, 7, 500, 1000] {
        assert_eq!(stamp_of(&json_view(&w, &format!("film:{id}"))), (snap, redis_version.clone()), "film:{id}");
        assert_eq!(stamp_of(&hash_view(&w, &format!("film:{id}:summary"))), (snap, redis_version.clone()), "film:{id}:summary");
    }
    let stamps: BTreeSet<(Lsn, String)> = docs.values().map(stamp_of).collect();
    assert_eq!(stamps, BTreeSet::from([(snap, search_version.clone())]), "every document");
    // The values are the record's, and a target without provenance carries no stamp.
    let expected = w.expected("SELECT film_id::text, json_build_object('film_id', film_id, 'title', title, 'rate', rental_rate) FROM film");
    let mut seven = json_view(&w, "film:7");
    seven.as_object_mut().unwrap().retain(|k, _| !k.starts_with('_'));
    assert_eq!(seven, expected["7"]);
    assert_eq!(hash_view(&w, "film:7:plain"), json!({"title": expected["7"]["title"]}));
    assert_eq!(docs["7"]["title"], expected["7"]["title"]);

    // A streamed change: its records carry the LSN of the batch that wrote them — the one the
    // change notice of that batch names, which is the transaction's commit LSN (between the WAL
    // positions read just before and just after it); the others keep the snapshot's.
    let mut notices = env().redis.conn();
    let mut notices = notices.as_pubsub();
    notices.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    notices.subscribe(format!("{}:_changes:films", w.prefix())).unwrap();
    let before = w.current_lsn();
    w.sql("UPDATE film SET title = 'PROVENANCE SEVEN' WHERE film_id = 7");
    let after = w.current_lsn();
    let batch_lsn: Lsn = loop {
        let notice: Value = serde_json::from_str(&notices.get_message().expect("a change notice").get_payload::<String>().unwrap()).unwrap();
        if notice["keys"].as_array().is_some_and(|k| k.contains(&json!(format!("{}:film:7", w.view_prefix())))) {
            break notice["lsn"].as_str().unwrap().parse().unwrap();
        }
    };
    drop(notices);
    w.wait_applied(&["films"], &["films"], after, std::time::Duration::from_secs(60));
    let (lsn, version) = stamp_of(&json_view(&w, "film:7"));
    assert_eq!(lsn, batch_lsn, "the batch's LSN");
    assert!(before < lsn && lsn <= after, "{before} < {lsn} <= {after}");
    assert_eq!(version, redis_version);
    assert_eq!(json_view(&w, "film:7")["title"], "PROVENANCE SEVEN");
    assert_eq!(stamp_of(&hash_view(&w, "film:7:summary")), (lsn, redis_version.clone()));
    let docs = w.index_docs("films");
    assert_eq!(stamp_of(&docs["7"]), (lsn, search_version.clone()));
    assert_eq!(stamp_of(&json_view(&w, "film:8")), (snap, redis_version.clone()), "an untouched record keeps its stamp");
    assert_eq!(stamp_of(&docs["8"]), (snap, search_version.clone()));

    // The HTTP API returns the stored documents with their stamp.
    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{}", w.http_port);
    let answer: Value = http.get(format!("{base}/v1/indexes/films/documents/7")).send().unwrap().json().unwrap();
    assert_eq!(stamp_of(&answer["doc"]), (lsn, search_version.clone()), "{answer}");
    assert_eq!(answer["doc"]["title"], "PROVENANCE SEVEN");
    let found: Value = http.post(format!("{base}/v1/indexes/films/search")).json(&json!({"q": "provenance seven"})).send().unwrap().json().unwrap();
    let hit = found["hits"].as_array().and_then(|h| h.first()).unwrap_or_else(|| panic!("{found}"));
    assert_eq!(hit["id"], "7", "{found}");
    assert_eq!(stamp_of(&hit["doc"]), (lsn, search_version.clone()), "{found}");

    // The audit compares values only: no drift, although the stamps differ from record to record.
    let (code, report, err) = audit_json(&w, &["films"]);
    assert_eq!(code, 0, "{report}\n{err}");
    assert_eq!(report["pipelines"][0]["records"], 1000);
    assert!(drifted_keys(&report).is_empty(), "{report}");

    // A reindex with the definition unchanged: every Redis view differs from what the rewrite
    // would write only in `_lsn` (the rewrite's snapshot position), so none is rewritten.
    let (code, out, err) = w.run_cli(&["reindex", "films"]);
    assert_eq!(code, 0, "{out}{err}\n{}", w.log_text());
    assert_eq!(already_exact(&w), 1000, "every record's views were already exact");
    assert_eq!(stamp_of(&json_view(&w, "film:7")), (lsn, redis_version.clone()), "left as it was");
    assert_eq!(stamp_of(&json_view(&w, "film:8")), (snap, redis_version.clone()), "left as it was");
    // The new search generation was derived from the rewrite's snapshot, past the update.
    let docs = w.index_docs("films");
    let rebuilt: BTreeSet<(Lsn, String)> = docs.values().map(stamp_of).collect();
    assert_eq!(rebuilt.len(), 1, "one snapshot: {rebuilt:?}");
    let (rebuilt_lsn, rebuilt_version) = rebuilt.into_iter().next().unwrap();
    assert!(rebuilt_lsn >= after && rebuilt_version == search_version, "{rebuilt_lsn} >= {after}");

    // Drift is still found: a tampered value (stamp intact) is drift; a tampered stamp alone is not.
    let p = w.view_prefix();
    let mut tampered = json_view(&w, "film:13");
    tampered["title"] = json!("TAMPERED");
    let mut restamped = json_view(&w, "film:14");
    restamped["_lsn"] = json!("0/1");
    restamped["_version"] = json!("000000000000");
    {
        let mut c = w.redis_conn();
        let _: () = redis::cmd("SET").arg(format!("{p}:film:13")).arg(tampered.to_string()).query(&mut *c).unwrap();
        let _: () = redis::cmd("SET").arg(format!("{p}:film:14")).arg(restamped.to_string()).query(&mut *c).unwrap();
        let _: () = redis::cmd("HSET").arg(format!("{p}:film:15:summary")).arg("_lsn").arg("0/2").query(&mut *c).unwrap();
        let _: () = redis::cmd("HSET").arg(format!("{p}:film:16:summary")).arg("rate").arg("0.01").query(&mut *c).unwrap();
    }
    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(drifted_keys(&report), vec!["13".to_string(), "16".into()], "{report}");
    // A repair writes the values back with a fresh stamp; the audit is clean again.
    let (code, report, err) = audit_json(&w, &["films", "--repair"]);
    assert_eq!(code, 0, "{report}\n{err}");
    let (repaired_lsn, version) = stamp_of(&json_view(&w, "film:13"));
    assert!(repaired_lsn >= after && version == redis_version, "{repaired_lsn}");
    assert_eq!(json_view(&w, "film:13")["title"], expected["13"]["title"]);
    assert_eq!(w.stop(), 0);
}
