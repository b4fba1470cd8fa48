//! Redis Cluster (`redis.cluster = true`) against a local 3-master cluster and real Postgres:
//! snapshot and streaming, a restart resuming from the checkpoint, reindex and in-place rewrites,
//! `deriver audit`, and the key layout (one pipeline = one hash slot).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::cluster::redis_cluster;
use support::*;

fn cluster_world(name: &str, pipelines: &[&str]) -> World {
    let mut w = World::new(name);
    w.use_redis_cluster(pipelines[0]);
    for p in pipelines {
        w.add_repo_pipeline(p);
    }
    w
}

/// `category_films`: category name → (film id → rental rate), independently of deriver.
fn expected_category_films(w: &World) -> BTreeMap<String, BTreeMap<String, f64>> {
    let rows = w.sql(
        "SELECT c.name || '|' || fc.film_id || '|' || f.rental_rate FROM film_category fc \
         JOIN category c ON c.category_id = fc.category_id JOIN film f ON f.film_id = fc.film_id",
    );
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for line in rows.lines() {
        let parts: Vec<&str> = line.split('|').collect();
        out.entry(parts[0].to_string()).or_default().insert(parts[1].to_string(), parts[2].parse().unwrap());
    }
    out
}

/// The `category_films` sorted sets on the cluster equal a fresh derivation, and no other
/// `category:*` key exists under the pipeline's hash tag.
fn check_category_films(w: &World) {
    let want = expected_category_films(w);
    let prefix = format!("{}:{{category_films}}", w.prefix());
    let mut c = redis_cluster().conn();
    for (category, films) in &want {
        let got: Vec<(String, f64)> =
            redis::cmd("ZRANGE").arg(format!("{prefix}:category:{category}:films")).arg(0).arg(-1).arg("WITHSCORES").query(&mut c).unwrap();
        let got: BTreeMap<String, f64> = got.into_iter().collect();
        assert_eq!(&got, films, "category {category}");
    }
    let keys = redis_cluster().keys_by_node(&format!("{prefix}:category:*"));
    assert_eq!(keys.len(), want.len(), "category keys: {keys:?}");
}

/// `EXEC` calls a cluster node has served so far (`INFO commandstats`).
fn exec_calls(port: u16) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut redis_cluster().node(port)).unwrap();
    info.lines().find_map(|l| l.strip_prefix("cmdstat_exec:calls=")).and_then(|v| v.split(',').next()?.parse().ok()).unwrap_or(0)
}

/// The `streaming from the replication slot start=…` positions in the log, in order.
fn stream_starts(w: &World) -> Vec<Lsn> {
    strip_ansi(&w.log_text())
        .lines()
        .filter(|l| l.contains("streaming from the replication slot"))
        .filter_map(|l| l.split("start=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn snapshot_streaming_and_restart_on_a_cluster() {
    let mut w = cluster_world("clstream", &["films", "category_films"]);
    w.setup();
    w.start();
    w.catch_up(&["films", "category_films"], &["films"]);
    w.wait_ready();
    check_films(&w);
    check_category_films(&w);

    // Streaming under write load (updates, inserts, deletes, key changes, rollbacks).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(3));
    w.sql("UPDATE film SET rental_rate = rental_rate + 1 WHERE film_id IN (SELECT film_id FROM film_category WHERE category_id = 1)");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20, "the load ran");
    w.catch_up(&["films", "category_films"], &["films"]);
    check_films(&w);
    check_category_films(&w);

    // One transaction whose views exceed a script call (4 MiB): its chunks are queued in MULTI
    // on the master of the pipeline's slot and applied by one EXEC.
    let films_master = redis_cluster().master_of(redis_cluster().keyslot("{films}"));
    let execs = exec_calls(films_master);
    w.sql("UPDATE film SET description = repeat(md5(film_id::text), 200)");
    w.catch_up(&["films", "category_films"], &["films"]);
    assert!(exec_calls(films_master) > execs, "the batch went through MULTI/EXEC on the slot's master");
    check_films(&w);

    // A clean stop, writes while stopped, a restart: deriver resumes from the checkpoints (no
    // re-derivation) and applies each write once.
    assert_eq!(w.stop(), 0);
    // `status` without a daemon reads the checkpoints from the cluster.
    let (code, out, err) = w.run_cli(&["status", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let films = doc["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == "films").unwrap().clone();
    assert_eq!(films["state"], "stopped", "{films}");
    let applied: Lsn = films["targets"]["redis:film:{film_id}"].as_str().unwrap_or_else(|| panic!("{films}")).parse().unwrap();
    assert_eq!(Some(applied), w.redis_applied("films"));
    let films_cp = w.redis_applied("films").unwrap();
    let cat_cp = w.redis_applied("category_films").unwrap();
    let index_cp = w.index_applied("films").unwrap();
    let runs_before = stream_starts(&w).len();
    let derived_before = strip_ansi(&w.log_text()).matches("deriving every record").count();
    w.sql("UPDATE film SET rental_rate = rental_rate + 1, title = 'WHILE STOPPED' WHERE film_id = 1");
    w.sql("DELETE FROM film_category WHERE film_id = 2");
    w.start();
    w.wait_ready();
    w.catch_up(&["films", "category_films"], &["films"]);
    let starts = stream_starts(&w);
    assert_eq!(starts.len(), runs_before + 1);
    assert_eq!(*starts.last().unwrap(), films_cp.min(cat_cp).min(index_cp), "resumed from the minimum checkpoint");
    assert_eq!(strip_ansi(&w.log_text()).matches("deriving every record").count(), derived_before, "nothing was re-derived");
    check_films(&w);
    check_category_films(&w);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&w.redis_get("film:1").unwrap()).unwrap()["title"], "WHILE STOPPED");
    assert_eq!(w.stop(), 0);
}

#[test]
fn keys_of_a_pipeline_share_one_slot_and_pipelines_spread() {
    let pipelines = ["films", "actors", "category_films", "customers"];
    let mut w = cluster_world("clslots", &pipelines);
    w.setup();
    w.start();
    w.catch_up(&pipelines, &["films", "actors"]);
    w.wait_ready();
    let cl = redis_cluster();
    let prefix = w.prefix();
    let all = cl.keys_by_node(&format!("{prefix}:*"));
    assert!(all.len() > 2000, "{} keys", all.len());
    let mut nodes_used = BTreeSet::new();
    for p in pipelines {
        let slot = cl.keyslot(&format!("{{{p}}}"));
        let node = cl.master_of(slot);
        nodes_used.insert(node);
        let tag = format!("{{{p}}}");
        let mine: Vec<&(u16, String)> = all.iter().filter(|(_, k)| k.contains(&tag)).collect();
        // Views, ledger, checkpoint, definition hash, owner epoch: all with the hash tag …
        assert!(mine.iter().any(|(_, k)| k == &format!("{prefix}:_meta:{tag}:applied_lsn")), "{p}: checkpoint");
        assert!(mine.iter().any(|(_, k)| k == &format!("{prefix}:_meta:{tag}:definition_hash")), "{p}: definition hash");
        assert!(mine.iter().any(|(_, k)| k == &format!("{prefix}:_meta:{tag}:owner_epoch")), "{p}: owner epoch");
        assert!(mine.iter().any(|(_, k)| k == &format!("{prefix}:_ledger:{tag}")), "{p}: ledger");
        assert!(mine.iter().filter(|(_, k)| k.starts_with(&format!("{prefix}:{tag}:"))).count() >= 16, "{p}: views");
        // … in that one slot, on the master serving it.
        for (port, k) in &mine {
            assert_eq!(*port, node, "{k} is on the master of slot {slot}");
        }
        for (_, k) in mine.iter().take(50) {
            assert_eq!(cl.keyslot(k), slot, "{k}");
        }
        // The slot holds exactly these keys of this world (other tests share the cluster).
        let mut c = cl.node(node);
        let in_slot: Vec<String> = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1_000_000).query(&mut c).unwrap();
        let in_slot: BTreeSet<&String> = in_slot.iter().filter(|k| k.starts_with(&format!("{prefix}:"))).collect();
        assert_eq!(in_slot, mine.iter().map(|(_, k)| k).collect::<BTreeSet<_>>(), "{p}: slot {slot}");
    }
    // Nothing of this world lives outside its pipelines' slots.
    assert!(all.iter().all(|(_, k)| pipelines.iter().any(|p| k.contains(&format!("{{{p}}}")))), "a key without a pipeline's hash tag");
    // The four pipeline names hash to slots on at least two of the three masters (documented in
    // docs/operations.md: spread load by having several pipelines).
    assert!(nodes_used.len() >= 2, "{nodes_used:?}");
    // preview shows the cluster key names.
    let (code, out, err) = w.run_cli(&["preview", "films", "--key", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("redis json {prefix}:{{films}}:film:1 ")), "{out}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn reindex_and_in_place_rewrite_on_a_cluster() {
    let mut w = cluster_world("clreindex", &["films"]);
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();

    // A manual full reindex under write load: a new search generation is swapped in and the
    // Redis views are rewritten in place (which repairs a view changed behind deriver's back).
    let mut c = redis_cluster().conn();
    let _: () = redis::cmd("SET").arg(format!("{}:film:20", w.view_prefix())).arg("{}").query(&mut c).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    let (code, out, err) = w.run_cli(&["reindex", "films"]);
    assert_eq!(code, 0, "{out}{err}\n{}", w.log_text());
    assert!(err.contains("done: generation 2 is live"), "{err}");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert!(strip_ansi(&w.log_text()).contains("the new generation is live pipeline=films index=films generation=2"), "{}", w.log_text());
    assert_eq!(w.stop(), 0);

    // A key-template change: the views are rewritten in place, the old keys go.
    let films = std::fs::read_to_string(w.pipelines.join("films.yaml")).unwrap();
    let changed = films.replace("key: \"film:{film_id}\"\n", "key: \"movie:{film_id}\"\n");
    assert_ne!(changed, films);
    w.add_pipeline("films", &changed);
    w.sql("UPDATE film SET title = 'CHANGED WHILE STOPPED' WHERE film_id = 6");
    w.start();
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let film_json: Vec<String> = w.redis_keys("film:*").into_iter().filter(|k| !k.ends_with(":summary")).collect();
    assert!(film_json.is_empty(), "stale keys: {:?}", &film_json[..film_json.len().min(5)]);
    let expected = w.expected(FILMS_EXPECTED);
    assert_eq!(w.redis_keys("movie:*").len(), expected.len());
    let got: serde_json::Value = serde_json::from_str(&w.redis_get("movie:6").unwrap()).unwrap();
    assert_eq!(got["title"], "CHANGED WHILE STOPPED");
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_pipeline_follows_its_slot_to_another_master() {
    // A pipeline of its own (the films definition under another name), so moving its slot
    // disturbs no other test on the shared cluster.
    let mut w = World::new("clmove");
    w.use_redis_cluster("moved_films");
    let films = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/films.yaml")).unwrap();
    w.add_pipeline("moved_films", &films.replace("pipeline: films\n", "pipeline: moved_films\n"));
    w.setup();
    w.start();
    w.catch_up(&["moved_films"], &["films"]);
    w.wait_ready();
    check_films(&w);
    let cl = redis_cluster();
    let slot = cl.keyslot("{moved_films}");
    let from = cl.master_of(slot);
    let to = *cl.ports.iter().find(|&&p| p != from).unwrap();

    // The slot moves to another master while deriver streams a write load into it.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    std::thread::sleep(Duration::from_millis(500));
    cl.move_slot(slot, to);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    w.catch_up(&["moved_films"], &["films"]);
    check_films(&w);
    let keys = cl.keys_by_node(&format!("{}:*", w.prefix()));
    assert!(keys.len() > 2000 && keys.iter().all(|(p, _)| *p == to), "every key is on the new master");

    // A restart resumes from the checkpoint that moved with the slot (nothing is re-derived).
    assert_eq!(w.stop(), 0);
    let derived = strip_ansi(&w.log_text()).matches("deriving every record").count();
    w.sql("UPDATE film SET title = 'AFTER THE MOVE' WHERE film_id = 9");
    w.start();
    w.wait_ready();
    w.catch_up(&["moved_films"], &["films"]);
    assert_eq!(strip_ansi(&w.log_text()).matches("deriving every record").count(), derived, "nothing was re-derived");
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

/// Fencing on the cluster: once a second process claimed a pipeline's views, every batch of the
/// first is refused whole (small, or chunked in MULTI on the slot's master) and counted.
#[test]
fn redis_cluster_refuses_every_batch_of_an_earlier_owner() {
    let prefix = format!("t:clfence-{}", std::process::id());
    let cfg = deriver::config::RedisConfig {
        url: Some(redis_cluster().url()),
        cluster: true,
        prefix: prefix.clone(),
        durability_delay_ms: Some(0),
        ..Default::default()
    };
    let get = |key: &str| -> Option<String> { redis::cmd("GET").arg(format!("{prefix}:{key}")).query(&mut redis_cluster().conn()).unwrap() };
    support::fencing::redis_refuses_every_batch_of_an_earlier_owner(cfg, "{items}", "{items}:", &get);
}

#[test]
fn audit_on_a_cluster_is_clean_finds_drift_and_repairs_it() {
    let mut w = cluster_world("claudit", &["films"]);
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();
    for args in [vec!["films"], vec!["films", "--sample", "30"]] {
        let (code, report, err) = audit_json(&w, &args);
        assert_eq!(code, 0, "a clean deployment: {report}\n{err}");
        assert!(drifted_keys(&report).is_empty(), "{report}");
    }
    let (_, report, _) = audit_json(&w, &["films"]);
    assert_eq!(report["pipelines"][0]["records"], 1000);

    // Drift behind deriver's back, in the pipeline's slot.
    let mut c = redis_cluster().conn();
    let vp = w.view_prefix();
    let p = w.prefix();
    let _: () = redis::cmd("DEL").arg(format!("{vp}:film:12")).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(format!("{vp}:film:13")).arg(r#"{"film_id": 13, "title": "TAMPERED"}"#).query(&mut c).unwrap();
    let _: () = redis::cmd("HSET").arg(format!("{vp}:film:14:summary")).arg("title").arg("TAMPERED").query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(format!("{vp}:film:424242")).arg("{}").query(&mut c).unwrap();
    let _: () = redis::cmd("HSET").arg(format!("{p}:_ledger:{{films}}")).arg("999999").arg(format!(r#"["{vp}:film:999999"]"#)).query(&mut c).unwrap();

    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(drifted_keys(&report), vec![format!("(key) {vp}:film:424242"), "12".into(), "13".into(), "14".into(), "999999".into()], "{report}");
    let (code, report, err) = audit_json(&w, &["films", "--repair"]);
    assert_eq!(code, 0, "{report}\n{err}");
    assert_eq!(report["pipelines"][0]["remaining"], 0);
    check_films(&w);
    assert!(w.redis_get("film:424242").is_none());
    let ledger: Option<String> = redis::cmd("HGET").arg(format!("{p}:_ledger:{{films}}")).arg("999999").query(&mut c).unwrap();
    assert!(ledger.is_none(), "the orphan ledger entry is gone");
    let (code, report, _) = audit_json(&w, &["films"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn cluster_configuration_errors_are_clear() {
    let mut w = World::new("clconfig");
    w.add_repo_pipeline("films");
    let run = |w: &World, env: &[(&str, &str)]| {
        let out = w.command().envs(env.iter().copied()).arg("status").output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A seed list without redis.cluster = true.
    let (code, err) = run(&w, &[("DERIVER__REDIS__URL", "redis://127.0.0.1:1/,redis://127.0.0.1:2/")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("set redis.cluster = true"), "{err}");
    w.use_redis_cluster("films");
    // A prefix that would carry a hash tag of its own.
    let (code, err) = run(&w, &[("DERIVER__REDIS__PREFIX", "a{b}")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must not contain `{` or `}`"), "{err}");
    // A unix socket is no cluster node.
    let (code, err) = run(&w, &[("DERIVER__REDIS__URL", "unix:///tmp/redis.sock")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a redis:// or rediss:// URL"), "{err}");
}
