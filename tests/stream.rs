//! The core daemon against real Postgres and Redis: snapshot then stream, DML, key changes,
//! unchanged TOAST, transactions, idle acknowledgement, clean stop.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn snapshot_then_stream_insert_update_delete_and_key_change() {
    let mut w = World::new("films");
    w.add_repo_pipeline("films");
    w.setup();
    // Written before the slot exists: must come through the snapshot.
    w.sql("UPDATE film SET title = 'BEFORE SNAPSHOT' WHERE film_id = 1");
    w.start();
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.index_docs("films").len(), 1000);
    check_films(&w);

    // Insert, update, delete, and a multi-statement transaction.
    w.sql("INSERT INTO film (film_id, title, language_id, rental_rate) VALUES (5001, 'NEW FILM', 1, 1.99)");
    w.sql("UPDATE film SET rental_rate = 0.5, description = 'changed' WHERE film_id = 2");
    w.sql("BEGIN; INSERT INTO film (film_id, title, language_id) VALUES (5002, 'TX ONE', 1); UPDATE film SET title = 'TX TWO' WHERE film_id = 5002; INSERT INTO film (film_id, title, language_id) VALUES (5003, 'TX THREE', 1); COMMIT;");
    // Rolled back: no trace.
    w.sql("BEGIN; INSERT INTO film (film_id, title, language_id) VALUES (5004, 'ROLLED BACK', 1); UPDATE film SET title = 'NOPE' WHERE film_id = 1; ROLLBACK;");
    // Primary-key change: the old key's views and document must go.
    w.sql("UPDATE film SET film_id = 6001 WHERE film_id = 5003");
    // A film deleted outright (no dependants).
    w.sql("DELETE FROM film WHERE film_id = 5001");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert!(w.redis_get("film:5003").is_none(), "old key after a key change");
    assert!(w.redis_get("film:5003:summary").is_none() && w.redis_hgetall("film:5003:summary").is_empty());
    assert!(w.redis_get("film:6001").unwrap().contains("TX THREE"));
    assert!(w.redis_get("film:5004").is_none(), "rolled-back insert");
    assert!(w.redis_get("film:1").unwrap().contains("BEFORE SNAPSHOT"));
    assert!(!w.index_docs("films").contains_key("5003"));
    assert!(w.redis_get("film:5001").is_none(), "deleted film");

    // A clean stop exits 0 and a restart resumes without re-deriving everything.
    assert_eq!(w.stop(), 0, "log:\n{}", w.log_text());
    w.sql("UPDATE film SET title = 'WHILE STOPPED' WHERE film_id = 10");
    w.start();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.log_text().matches("derived every record").count(), 1, "a restart must not re-snapshot");
    assert_eq!(w.stop(), 0);
}

#[test]
fn unchanged_toast_stays_indexed_and_cached() {
    let mut w = World::new("toast");
    w.sql("CREATE TABLE doc (id int PRIMARY KEY, title text, body text); ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;");
    w.sql("INSERT INTO doc SELECT g, 'doc ' || g, repeat('lorem ipsum ' || g || ' ', 400) FROM generate_series(1, 20) g");
    w.add_pipeline(
        "docs",
        "version: 1\npipeline: docs\nsource: { table: doc }\nfields:\n  id: doc.id\n  title: doc.title\n  body: doc.body\n  body_len: length(doc.body)\ntargets:\n  - search:\n      id: id\n      fields:\n        title: { type: text, stored: true }\n        body: { type: text, stored: true }\n  - redis: { key: \"doc:{id}\", type: hash }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["docs"], &["docs"]);
    let before = w.redis_hgetall("doc:7");
    assert!(before["body"].len() > 2048, "body is large enough to be TOASTed");
    // Update another column: pgoutput sends the body as "unchanged TOAST".
    w.sql("UPDATE doc SET title = 'renamed' WHERE id = 7");
    w.sql("INSERT INTO doc VALUES (21, 'new', repeat('x', 5000))");
    w.catch_up(&["docs"], &["docs"]);
    let after = w.redis_hgetall("doc:7");
    assert_eq!(after["title"], "renamed");
    assert_eq!(after["body"], before["body"], "unchanged TOAST body kept");
    let docs = w.index_docs("docs");
    assert_eq!(docs["7"]["body"].as_str(), Some(before["body"].as_str()));
    assert_eq!(docs["7"]["title"], "renamed");
    assert_eq!(docs.len(), 21);
    // The key changes while the body is untouched.
    w.sql("UPDATE doc SET id = 70 WHERE id = 7");
    w.catch_up(&["docs"], &["docs"]);
    assert!(w.redis_hgetall("doc:7").is_empty());
    assert_eq!(w.redis_hgetall("doc:70")["body"], before["body"]);
    assert_eq!(w.stop(), 0);
}

#[test]
fn idle_publication_advances_the_slot() {
    let mut w = World::new("idle");
    w.add_repo_pipeline("actors");
    w.setup();
    w.sql("CREATE TABLE busy (id serial PRIMARY KEY, v text)");
    w.start();
    w.catch_up(&["actors"], &["actors"]);
    // Writes to a table outside the publication only: the slot must still move past them.
    for _ in 0..20 {
        w.sql("INSERT INTO busy (v) SELECT md5(g::text) FROM generate_series(1, 200) g");
    }
    let target = w.current_lsn();
    let slot = w.db.clone();
    wait_for("confirmed_flush_lsn to pass the idle writes", Duration::from_secs(30), || {
        let v = w.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"));
        v.parse::<Lsn>().map(|l| l >= target).unwrap_or(false)
    });
    // The sinks' stored checkpoints moved as well (so a restart does not replay the idle span).
    w.wait_applied(&["actors"], &["actors"], target, Duration::from_secs(10));
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_large_transaction_spills_and_applies_whole() {
    let mut w = World::new("bigtx");
    w.sql("CREATE TABLE doc (id int PRIMARY KEY, body text)");
    w.add_pipeline(
        "docs",
        "version: 1\npipeline: docs\nsource: { table: doc }\nfields: { id: doc.id, body: doc.body }\ntargets:\n  - search: { id: id, fields: { body: { type: text } } }\n  - redis: { key: \"doc:{id}\" }\n",
    );
    w.setup();
    // Keep very few dirty keys in memory so the transaction below spills to disk.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(w.command().env("DERIVER__RUNTIME__DIRTY_KEYS_IN_MEMORY", "500").arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["docs"], &["docs"]);
    w.sql("BEGIN; INSERT INTO doc SELECT g, 'body ' || g FROM generate_series(1, 20000) g; UPDATE doc SET body = 'updated' WHERE id % 1000 = 0; DELETE FROM doc WHERE id % 777 = 0; COMMIT;");
    w.catch_up(&["docs"], &["docs"]);
    let expected = w.expected("SELECT id::text, jsonb_build_object('id', id, 'body', body) FROM doc");
    assert_eq!(expected.len(), 20000 - 20000 / 777);
    let docs = w.index_docs("docs");
    assert_eq!(docs.len(), expected.len());
    let keys = w.redis_keys("doc:*");
    assert_eq!(keys.len(), expected.len());
    for id in ["1000", "1", "20000"] {
        let got: serde_json::Value = serde_json::from_str(&w.redis_get(&format!("doc:{id}")).unwrap()).unwrap();
        assert_eq!(got, expected[id]);
    }
    assert!(w.redis_get("doc:777").is_none());
    assert!(w.log_text().contains("spilling dirty keys to a temporary file"), "the spill path ran");
    assert_eq!(w.stop(), 0);
}
