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
    w.start();
    w.catch_up(&["actors"], &["actors", "notes"]);
    w.wait_ready();

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
    // The Redis pipeline has not got past its paused commit.
    assert!(w.redis_applied("actors").is_none_or(|a| a < stuck_at), "the paused Redis took a write");
    assert_ne!(w.redis_hgetall("actor:1").get("first_name").map(String::as_str), Some("PAUSED"));

    let _: () = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut redis).unwrap();
    w.catch_up(&["actors"], &["actors", "notes"]);
    assert_eq!(w.redis_hgetall("actor:1")["first_name"], "PAUSED");
    assert_eq!(w.stop(), 0, "{}", w.log_text());
}
