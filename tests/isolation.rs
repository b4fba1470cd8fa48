//! One worker per pipeline: a pipeline whose sink cannot take writes holds back only itself. The
//! other pipelines keep applying with their usual freshness, and the stuck one converges once its
//! sink is back.

mod support;

use std::time::{Duration, Instant};

use support::*;

const NOTES: &str = "version: 1\npipeline: notes\nsource: { table: note }\nfields:\n  id: note.id\n  body: note.body\ntargets:\n  - search:\n      id: id\n      fields:\n        body: { type: text, stored: true }\n";

#[test]
fn a_paused_redis_holds_back_only_the_pipelines_that_write_to_it() {
    let mut w = World::new("isolation");
    w.sql("CREATE TABLE note (id int PRIMARY KEY, body text); INSERT INTO note SELECT g, 'note ' || g FROM generate_series(1, 20) g");
    w.add_pipeline("notes", NOTES);
    w.add_repo_pipeline("actors");
    w.setup();
    // A short lag bound, so that the stuck pipeline's own readiness turns within the test.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(w.command().env("DERIVER__RUNTIME__READY_MAX_LAG_SECS", "2").arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["actors"], &["actors", "notes"]);
    w.wait_ready();
    let port = w.http_port;
    let ready = |pipeline: &str| {
        let url = format!("http://127.0.0.1:{port}/readyz?pipeline={pipeline}");
        reqwest::blocking::get(url).unwrap().status().as_u16()
    };
    assert_eq!((ready("notes"), ready("actors"), ready("nope")), (200, 200, 404));

    // Every write to Redis blocks (reads go on) until unpaused.
    let mut redis = env().redis.conn();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query(&mut redis).unwrap();
    w.sql("UPDATE actor SET first_name = 'PAUSED' WHERE actor_id = 1");
    let stuck_at = w.current_lsn();
    // The search-only pipeline keeps applying, transaction after transaction, within its usual
    // freshness (a few hundred ms here; 5 s leaves room for a loaded machine).
    for i in 0..5 {
        w.sql(&format!("UPDATE note SET body = 'while paused {i}' WHERE id = {}", i + 1));
        let lsn = w.current_lsn();
        let started = Instant::now();
        w.wait_applied(&[], &["notes"], lsn, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(w.index_docs("notes")["5"]["body"], "while paused 4");
    // Readiness per pipeline: the stuck one turns 503 once it lags past the bound; the other
    // stays 200 all along.
    wait_for("the paused pipeline to be not ready", Duration::from_secs(20), || {
        assert_eq!(ready("notes"), 200, "the search-only pipeline is ready throughout");
        ready("actors") == 503
    });
    // The Redis pipeline has not got past its paused commit.
    assert!(w.redis_applied("actors").is_none_or(|a| a < stuck_at), "the paused Redis took a write");
    assert_ne!(w.redis_hgetall("actor:1").get("first_name").map(String::as_str), Some("PAUSED"));

    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut redis).unwrap();
    w.catch_up(&["actors"], &["actors", "notes"]);
    assert_eq!(w.redis_hgetall("actor:1")["first_name"], "PAUSED");
    assert_eq!(w.stop(), 0, "{}", w.log_text());
}
