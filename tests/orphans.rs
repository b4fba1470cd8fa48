//! State a removed pipeline leaves behind: named in the start-up log and in `status` (daemon and
//! offline), listed by `deriver prune --dry-run` without change, and removed by `deriver prune`
//! exactly — the remaining pipeline goes on, bookkeeping this deployment cannot attribute stays.

mod support;

use std::time::Duration;

use support::*;

fn status_json(w: &World) -> serde_json::Value {
    let (code, out, err) = w.run_cli(&["status", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|x| x["name"].as_str().or(x.as_str()).unwrap().to_string()).collect()).unwrap_or_default()
}

fn exists(w: &World, key: &str) -> bool {
    let n: u64 = redis::cmd("EXISTS").arg(format!("{}:{key}", w.prefix())).query(&mut env().redis.conn()).unwrap();
    n == 1
}

#[test]
fn a_removed_pipelines_state_is_named_and_pruned_exactly() {
    let mut w = World::new("orphans");
    w.add_repo_pipeline("films");
    w.add_repo_pipeline("actors");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["films", "actors"], &["films", "actors"]);
    let (code, out, err) = w.run_cli(&["audit", "actors"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.stop(), 0);
    let index = w.index_dir();
    assert!(index.join("actors/CURRENT").exists() && index.join("_audit/actors.json").exists());
    assert_eq!(w.redis_keys("actor:*").len(), 200);
    // Bookkeeping under the prefix that this deployment never wrote (another deriver sharing the
    // prefix), and a folder that is not an index: neither may be touched.
    let _: () = redis::cmd("SET").arg(format!("{}:_meta:ghost:applied_lsn", w.prefix())).arg("0/1").query(&mut env().redis.conn()).unwrap();
    std::fs::create_dir_all(index.join("backup")).unwrap();
    std::fs::write(index.join("backup/notes.txt"), "mine").unwrap();

    std::fs::remove_file(w.pipelines.join("actors.yaml")).unwrap();

    // Offline status reads the disk and Redis itself.
    let doc = status_json(&w);
    let o = &doc["orphans"];
    assert_eq!(names(&o["indexes"]), ["actors"], "{doc:#}");
    assert!(o["indexes"][0]["bytes"].as_u64().unwrap() > 10_000, "{o:#}");
    assert_eq!(o["indexes"][0]["generations"], serde_json::json!([1]), "{o:#}");
    assert_eq!(names(&o["redis_pipelines"]), ["actors"], "{o:#}");
    assert_eq!(o["redis_pipelines"][0]["ledger_entries"], 200, "{o:#}");
    assert_eq!(names(&o["redis_unrecorded"]), ["ghost"], "{o:#}");
    assert!(o["files"][0]["path"].as_str().unwrap().ends_with("_audit/actors.json"), "{o:#}");

    // The daemon: one warning at start-up, the same in /v1/status and the text status.
    w.start();
    w.wait_ready();
    wait_for("the orphan warning", Duration::from_secs(30), || w.log_text().contains("no pipeline file declares index `actors`"));
    let log = w.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("no pipeline file declares")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("Redis state of pipeline `actors` (200 records with views)")
            && warnings[0].contains("`deriver prune`"),
        "{}",
        warnings[0]
    );
    assert!(!warnings[0].contains("ghost"), "{}", warnings[0]);
    let doc = status_json(&w);
    assert_eq!(doc["role"], "owner", "{doc:#}");
    assert_eq!(names(&doc["orphans"]["indexes"]), ["actors"], "{doc:#}");
    assert_eq!(names(&doc["orphans"]["redis_pipelines"]), ["actors"], "{doc:#}");
    let (code, text, _) = w.run_cli(&["status"]);
    assert_eq!(code, 0);
    let line = text.lines().find(|l| l.starts_with("orphaned")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("index `actors` (") && line.contains("`deriver prune` removes it"), "{line}");
    assert!(text.contains("`ghost`"), "{text}");

    // Another process owns the slot and does not answer where prune looks: it refuses.
    let out = w.command().env("DERIVER__HTTP__LISTEN", format!("127.0.0.1:{}", free_port())).args(["prune", "--dry-run"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("owns slot") && err.contains("no daemon answers"), "{err}");

    // --dry-run lists with sizes and changes nothing; without --yes (no terminal) nothing happens.
    let (code, out, err) = w.run_cli(&["prune", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("index `actors`: ") && out.contains("B, generations 1)"), "{out}");
    assert!(out.contains("Redis state of pipeline `actors`: the views its ledger lists for 200 records"), "{out}");
    assert!(out.contains("_audit/actors.json") && out.contains("dry run: nothing removed"), "{out}");
    assert!(out.contains("left alone: Redis bookkeeping of pipeline `ghost`"), "{out}");
    assert!(!out.contains("films"), "{out}");
    let (code, _, err) = w.run_cli(&["prune"]);
    assert_eq!(code, 1);
    assert!(err.contains("pass --yes"), "{err}");
    assert!(index.join("actors/CURRENT").exists());
    assert_eq!(w.redis_keys("actor:*").len(), 200);
    assert!(exists(&w, "_meta:actors:applied_lsn") && exists(&w, "_ledger:actors"));

    // prune removes exactly the orphan, while the daemon runs the remaining pipeline.
    let film_keys = w.redis_keys("film:*");
    assert!(!film_keys.is_empty());
    let (code, out, err) = w.run_cli(&["prune", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed index `actors`"), "{out}");
    assert!(out.contains("removed the Redis state of pipeline `actors`: 200 view keys, 0 set/zset members, 4 bookkeeping keys"), "{out}");
    assert!(!index.join("actors").exists());
    assert!(!index.join("_audit/actors.json").exists());
    assert!(index.join("films/CURRENT").exists() && index.join("backup/notes.txt").exists() && index.join("_state").exists());
    assert!(w.redis_keys("actor:*").is_empty());
    for k in ["_ledger:actors", "_meta:actors:applied_lsn", "_meta:actors:definition_hash", "_meta:actors:owner_epoch"] {
        assert!(!exists(&w, k), "{k}");
    }
    assert!(exists(&w, "_meta:ghost:applied_lsn"));
    assert!(exists(&w, "_meta:films:applied_lsn") && exists(&w, "_ledger:films"));
    assert_eq!(w.redis_keys("film:*"), film_keys);

    // The remaining pipeline keeps working, and status no longer names the orphan.
    w.sql("UPDATE film SET title = 'PRUNED DINOSAUR' WHERE film_id = 1");
    w.catch_up(&["films"], &["films"]);
    assert!(w.redis_get("film:1").unwrap().contains("PRUNED DINOSAUR"));
    check_films(&w);
    let doc = status_json(&w);
    assert_eq!(names(&doc["orphans"]["indexes"]), Vec::<String>::new(), "{doc:#}");
    assert_eq!(names(&doc["orphans"]["redis_pipelines"]), Vec::<String>::new(), "{doc:#}");
    assert!(!w.run_cli(&["status"]).1.contains("orphaned"));
    assert_eq!(w.stop(), 0);

    // Without a daemon (prune holds the slot's lock): nothing left; named bookkeeping goes on request.
    let (code, out, err) = w.run_cli(&["prune", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to prune"), "{out}");
    let (code, _, err) = w.run_cli(&["prune", "--yes", "--redis-pipeline", "films"]);
    assert_eq!(code, 2, "a live pipeline is refused: {err}");
    let (code, out, err) = w.run_cli(&["prune", "--yes", "--redis-pipeline", "ghost"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed the Redis state of pipeline `ghost`: 0 view keys, 0 set/zset members, 1 bookkeeping key"), "{out}");
    assert!(!exists(&w, "_meta:ghost:applied_lsn"));
    assert!(exists(&w, "_meta:films:applied_lsn"));

    // The next start has nothing to warn about and resumes the remaining pipeline.
    w.start();
    w.wait_ready();
    w.sql("UPDATE film SET title = 'AFTER PRUNE' WHERE film_id = 2");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.log_text().lines().filter(|l| l.contains("no pipeline file declares")).count(), 1, "only the earlier start warned");
}

#[test]
fn on_a_redis_cluster_prune_removes_the_tagged_state_and_set_members() {
    let mut w = World::new("orphans_cluster");
    w.use_redis_cluster("films");
    w.add_repo_pipeline("films");
    w.add_repo_pipeline("category_films");
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["films", "category_films"], &["films"]);
    assert_eq!(w.stop(), 0);
    let cluster = support::cluster::redis_cluster();
    let keys = |tag: &str| cluster.keys_by_node(&format!("{}:*{{{tag}}}*", w.prefix()));
    let films = keys("films");
    assert!(!keys("category_films").is_empty() && !films.is_empty());

    std::fs::remove_file(w.pipelines.join("category_films.yaml")).unwrap();
    let doc = status_json(&w);
    assert_eq!(names(&doc["orphans"]["redis_pipelines"]), ["category_films"], "{doc:#}");
    assert_eq!(names(&doc["orphans"]["indexes"]), Vec::<String>::new(), "{doc:#}");

    let (code, out, err) = w.run_cli(&["prune", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let rows = w.sql("SELECT count(*) FROM film_category");
    assert!(out.contains(&format!("removed the Redis state of pipeline `category_films`: 0 view keys, {rows} set/zset members")), "{out}");
    assert_eq!(keys("category_films"), Vec::new(), "views and bookkeeping under the pipeline's hash tag");
    assert_eq!(keys("films"), films);
    w.start();
    w.wait_ready();
    w.sql("UPDATE film SET title = 'CLUSTER PRUNED' WHERE film_id = 3");
    w.catch_up(&["films"], &["films"]);
    assert!(w.redis_get("film:3").unwrap().contains("CLUSTER PRUNED"));
}
