//! Poison records and dependency faults against real Postgres and Redis: dead letters with
//! reasons, backoff retries and CLI retries, other keys and pipelines unaffected, `on_error: stop`;
//! Redis and Postgres restarted under deriver; convergence afterwards.

mod support;

use std::time::Duration;

use support::*;

const ITEMS: &str = "version: 1\npipeline: items\nsource: { table: item }\nfields:\n  id: item.id\n  n: item.n\n  ratio: \"100 / item.d\"\n  body: item.body\ntargets:\n  - search:\n      id: id\n      fields:\n        n: { type: i64, filterable: true, stored: true }\n  - redis: { key: \"item:{id}\", type: json }\nON_ERROR";

fn items_world(name: &str, on_error: &str) -> World {
    let w = World::new(name);
    w.sql("CREATE TABLE item (id int PRIMARY KEY, n numeric, d int, body text); INSERT INTO item SELECT g, g, 1, 'ok' FROM generate_series(1, 50) g");
    w.add_pipeline("items", &ITEMS.replace("ON_ERROR", on_error));
    w.add_repo_pipeline("actors");
    w
}

fn status(w: &World) -> serde_json::Value {
    let (_, out, _) = w.run_cli(&["status", "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn pipeline<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
}

#[test]
fn poison_records_become_dead_letters_and_are_retried() {
    let mut w = items_world("poison", "");
    w.setup();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(w.command().env("DERIVER__REDIS__MAX_VALUE_BYTES", "2000").arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["items", "actors"], &["items", "actors"]);
    w.wait_ready();
    // A value that does not fit i64, an SQL error on one key, a Redis value over the limit.
    w.sql("UPDATE item SET n = 4.5 WHERE id = 1; UPDATE item SET d = 0 WHERE id = 2; UPDATE item SET body = repeat('x', 5000) WHERE id = 3");
    // Other keys and pipelines go on.
    w.sql("UPDATE item SET body = 'fine' WHERE id = 4; UPDATE actor SET first_name = 'STILL' WHERE actor_id = 1");
    w.catch_up(&["items", "actors"], &["items", "actors"]);
    wait_for("three dead letters", Duration::from_secs(20), || pipeline(&status(&w), "items")["dead_letters"] == 3);
    let doc = status(&w);
    let list = pipeline(&doc, "items")["dead_letter_list"].as_array().unwrap().clone();
    let reason = |k: &str| list.iter().find(|d| d["key"] == k).map(|d| d["reason"].as_str().unwrap().to_string()).unwrap_or_default();
    assert!(reason("1").contains("does not fit type i64"), "{list:?}");
    assert!(reason("2").contains("division by zero"), "{list:?}");
    assert!(reason("3").contains("max_value_bytes"), "{list:?}");
    // Each carries which step rejected it: the derivation (SQL) or a target.
    let cause = |k: &str| list.iter().find(|d| d["key"] == k).map(|d| d["cause"].clone()).unwrap_or_default();
    assert_eq!((cause("1"), cause("2"), cause("3")), (serde_json::json!("target"), serde_json::json!("derivation"), serde_json::json!("target")), "{list:?}");
    assert!(w.redis_get("item:4").unwrap().contains("fine"));
    assert_eq!(w.redis_hgetall("actor:1")["first_name"], "STILL");
    assert!(w.log_text().contains("record rejected (dead letter)"));
    // Never indexed as 0: the document still holds the last good value.
    assert_eq!(w.index_docs("items")["1"]["n"], 1);
    // Retried with backoff: attempts grow while the data stays bad.
    wait_for("a retry", Duration::from_secs(30), || {
        pipeline(&status(&w), "items")["dead_letter_list"].as_array().unwrap().iter().any(|d| d["attempts"].as_u64().unwrap_or(0) >= 2)
    });
    // Fixing the row clears its dead letter through normal streaming.
    w.sql("UPDATE item SET n = 4 WHERE id = 1");
    w.catch_up(&["items"], &["items"]);
    wait_for("key 1 to leave the dead letters", Duration::from_secs(20), || pipeline(&status(&w), "items")["dead_letters"] == 2);
    // Fixing something the row does not show (here: the data of key 2 through a CLI retry).
    w.sql("UPDATE item SET d = 5 WHERE id = 2");
    let (code, out, err) = w.run_cli(&["dead-letters", "items", "--retry"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("items: ") && out.contains("key 3"), "{out}");
    wait_for("key 2 to leave the dead letters", Duration::from_secs(20), || pipeline(&status(&w), "items")["dead_letters"] == 1);
    let got: serde_json::Value = serde_json::from_str(&w.redis_get("item:2").unwrap()).unwrap();
    assert_eq!(got["ratio"], 20);
    assert_eq!(w.stop(), 0);
    // Dead letters are durable: listed without a daemon.
    let (code, out, _) = w.run_cli(&["dead-letters", "items"]);
    assert_eq!(code, 0);
    assert!(out.contains("items: 1 dead letter(s)") && out.contains("key 3"), "{out}");
}

/// `on_error: stop` stops that pipeline (state `failed`, the reason in status), not the others;
/// the slot stays held at what it applied; `deriver apply` resumes it once the cause is fixed.
#[test]
fn on_error_stop_stops_the_pipeline_with_the_reason_and_apply_resumes_it() {
    let mut w = items_world("onerrorstop", "on_error: stop\n");
    w.setup();
    w.start();
    w.catch_up(&["items", "actors"], &["items", "actors"]);
    let before = w.redis_applied("items").unwrap();
    w.sql("UPDATE item SET d = 0 WHERE id = 7");
    wait_for("the pipeline to fail", Duration::from_secs(30), || pipeline(&status(&w), "items")["state"] == "failed");
    let doc = status(&w);
    let error = pipeline(&doc, "items")["error"].as_str().unwrap().to_string();
    assert!(error.contains("rejected key 7") && error.contains("on_error: stop"), "{error}");
    assert!(w.log_text().contains("the pipeline stopped; the other pipelines go on"), "{}", w.log_text());
    // The other pipeline goes on.
    w.sql("UPDATE actor SET first_name = 'STILL' WHERE actor_id = 3");
    w.catch_up(&["actors"], &["actors"]);
    assert_eq!(w.redis_hgetall("actor:3")["first_name"], "STILL");
    assert_eq!(pipeline(&status(&w), "actors")["state"], "streaming");
    // Nothing of the failed pipeline passed its failing change, and the slot is held for it.
    assert!(w.redis_applied("items").unwrap() < w.current_lsn());
    assert!(w.redis_applied("items").unwrap() >= before);
    let url = format!("http://127.0.0.1:{}/readyz?pipeline=items", w.http_port);
    assert_eq!(reqwest::blocking::get(url).unwrap().status().as_u16(), 503);
    // Fixed at the source: a reload starts it again from its checkpoint, and it converges.
    w.sql("UPDATE item SET d = 1 WHERE id = 7");
    let (code, out, err) = w.run_cli(&["apply"]);
    assert_eq!(code, 0, "{out}\n{err}");
    w.catch_up(&["items", "actors"], &["items", "actors"]);
    assert_eq!(pipeline(&status(&w), "items")["state"], "streaming");
    let view: serde_json::Value = serde_json::from_str(&w.redis_get("item:7").unwrap()).unwrap();
    assert_eq!(view["ratio"], 100);
    assert_eq!(w.stop(), 0, "{}", w.log_text());
}

#[test]
fn redis_and_postgres_restarts_are_survived() {
    // A Redis server of this test's own, restarted under deriver.
    let mut redis = RedisServer::start();
    let mut w = World::new("restarts");
    w.add_repo_pipeline("films");
    w.setup();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(w.command().env("DERIVER__REDIS__URL", redis.url()).arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.wait_ready();
    let redis_url = redis.url();
    let redis_applied = |w: &World| -> Option<Lsn> {
        let mut c = redis::Client::open(redis_url.as_str()).ok()?.get_connection().ok()?;
        let v: Option<String> = redis::cmd("GET").arg(format!("{}:_meta:films:applied_lsn", w.prefix())).query(&mut c).ok()?;
        v.map(|s| s.parse().unwrap())
    };
    wait_for("the snapshot", Duration::from_secs(60), || redis_applied(&w).is_some());
    // Redis goes away for a while (SIGKILL: with appendfsync everysec the last second may be lost).
    redis.kill();
    w.sql("UPDATE film SET title = 'DURING REDIS OUTAGE' WHERE film_id = 1");
    std::thread::sleep(Duration::from_secs(3));
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "deriver must keep running while Redis is down");
    redis.restart();
    let target = w.current_lsn();
    wait_for("Redis views to catch up after the outage", Duration::from_secs(60), || redis_applied(&w).is_some_and(|l| l >= target));
    let mut c = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let v: String = redis::cmd("GET").arg(format!("{}:film:1", w.prefix())).query(&mut c).unwrap();
    assert!(v.contains("DURING REDIS OUTAGE"));

    // Postgres restarts (fast shutdown disconnects the replication connection).
    env().pg.restart();
    w.sql("UPDATE film SET title = 'AFTER PG RESTART' WHERE film_id = 2");
    let target = w.current_lsn();
    wait_for("views to catch up after the Postgres restart", Duration::from_secs(60), || redis_applied(&w).is_some_and(|l| l >= target));
    let v: String = redis::cmd("GET").arg(format!("{}:film:2", w.prefix())).query(&mut c).unwrap();
    assert!(v.contains("AFTER PG RESTART"), "{}", w.log_text());
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "deriver survived: {}", w.log_text());
    assert_eq!(w.stop(), 0);
}
