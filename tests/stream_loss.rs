//! The stream loses changes under deriver while it runs — its slot invalidated (WAL it still
//! needed removed past `max_slot_wal_keep_size`) or its publication dropped: deriver stops
//! loudly (non-zero exit, a message naming the cause) and skips nothing: the changes it cannot get
//! are neither applied nor acknowledged, and a restart refuses as well.

mod support;

use std::time::Duration;

use support::*;

const ITEMS: &str = "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, name: item.name }\n\
                     targets:\n  - redis: { key: \"item:{id}\", type: json }\n";

fn items_world(cluster: &'static Cluster, name: &str) -> World {
    let mut w = World::on(cluster, name, None);
    w.sql("CREATE TABLE item (id int PRIMARY KEY, name text); INSERT INTO item VALUES (1, 'before'); CREATE TABLE junk (x text)");
    w.add_pipeline("items", ITEMS);
    w.setup();
    w.start();
    w.wait_ready();
    w.catch_up(&["items"], &[]);
    w
}

fn name_of(w: &World, id: i64) -> String {
    let v: serde_json::Value = serde_json::from_str(&w.redis_get(&format!("item:{id}")).unwrap()).unwrap();
    v["name"].as_str().unwrap().to_string()
}

fn confirmed_flush(w: &World) -> Lsn {
    w.sql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'", w.db)).parse().unwrap()
}

/// Nothing at or after `lsn` (the first change deriver cannot get) was applied or acknowledged.
fn nothing_skipped(w: &World, lsn: Lsn) {
    let applied = w.redis_applied("items").unwrap();
    assert!(applied < lsn, "the views claim {applied}, past the lost change at {lsn}");
    assert_eq!(name_of(w, 1), "before");
    let confirmed = confirmed_flush(w);
    assert!(confirmed < lsn, "the slot was acknowledged to {confirmed}, past the lost change at {lsn}");
}

/// For the invalidated slot: deriver was stopped, not disconnected, so the walsender may have
/// sent the first update into the socket before the slot was lost, and deriver may apply it on
/// waking (re-deriving the row as it is then, which may already show the later update: values are
/// re-derived, not patched). What must never happen is a checkpoint or an acknowledgement at or
/// past `never`, the change made after the slot was lost, which the stream cannot deliver.
fn nothing_skipped_after(w: &World, maybe: Lsn, never: Lsn) {
    let applied = w.redis_applied("items").unwrap();
    assert!(applied < never, "the views claim {applied}, past the change made after the slot was lost at {never}");
    if applied < maybe {
        assert_eq!(name_of(w, 1), "before", "the views claim {applied}, before any change, yet hold one");
    }
    let confirmed = confirmed_flush(w);
    assert!(confirmed <= applied, "the slot was acknowledged to {confirmed}, past what the views hold ({applied})");
}

#[test]
fn a_slot_invalidated_while_streaming_stops_deriver_loudly() {
    let cluster: &'static Cluster =
        Box::leak(Box::new(Cluster::start("max_slot_wal_keep_size = 1MB\nmin_wal_size = 32MB\nmax_wal_size = 32MB\nwal_keep_size = 0")));
    let mut w = items_world(cluster, "invalid_live");
    // Deriver frozen (it cannot acknowledge): the slot holds WAL from here on.
    let pid = w.daemon.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    w.sql("UPDATE item SET name = 'lost' WHERE id = 1");
    let lsn = w.current_lsn();
    let slot = w.db.clone();
    wait_for("the slot to be invalidated", Duration::from_secs(60), || {
        w.sql("INSERT INTO junk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 4000) g; SELECT pg_switch_wal(); CHECKPOINT");
        w.sql(&format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'")) == "lost"
    });
    // A change the stream can no longer deliver.
    w.sql("UPDATE item SET name = 'after' WHERE id = 1");
    let never = w.current_lsn();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let (code, log) = w.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0, "log:\n{log}");
    assert!(log.contains("replication slot was invalidated") || log.contains("was invalidated (wal_status=lost)"), "log:\n{log}");
    assert!(log.contains("--resnapshot"), "the message says what to do; log:\n{log}");
    nothing_skipped_after(&w, lsn, never);
    // A restart refuses too.
    w.start();
    let (code, log) = w.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0);
    assert!(log.contains("was invalidated (wal_status=lost)"), "log:\n{log}");
    cluster.stop();
}

#[test]
fn a_publication_dropped_while_running_stops_deriver_loudly() {
    let mut w = items_world(&env().pg, "droppub_live");
    w.sql("DROP PUBLICATION deriver");
    w.sql("UPDATE item SET name = 'lost' WHERE id = 1");
    let lsn = w.current_lsn();
    // Some WAL after it, as an application keeps writing: keepalives must not carry the slot past it.
    w.sql("INSERT INTO junk SELECT md5(g::text) FROM generate_series(1, 100) g");
    let (code, log) = w.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0, "log:\n{log}");
    assert!(log.contains("publication `deriver` was dropped") || log.contains("the publication is missing"), "log:\n{log}");
    nothing_skipped(&w, lsn);
    // A restart refuses too.
    let (code, _, err) = w.run_cli(&["run"]);
    assert_ne!(code, 0);
    assert!(err.contains("publication `deriver` does not exist"), "{err}");
}

/// A key column renamed while deriver runs: its changes would look like rows with a NULL key and
/// be skipped. The pipeline stops instead (the daemon goes on), naming the column and the
/// pipeline, and applies nothing after the rename; `ADD COLUMN` (a column no pipeline reads)
/// costs nothing.
#[test]
fn a_key_column_renamed_while_running_stops_its_pipeline_naming_it() {
    let mut w = items_world(&env().pg, "rename_live");
    w.sql("ALTER TABLE item ADD COLUMN extra int; INSERT INTO item VALUES (3, 'added', 1)");
    w.catch_up(&["items"], &[]);
    assert_eq!(name_of(&w, 3), "added", "a new column nobody reads changes nothing");
    w.sql("ALTER TABLE item RENAME COLUMN id TO item_id");
    w.sql("INSERT INTO item VALUES (2, 'after the rename')");
    let lsn = w.current_lsn();
    let status = |w: &World| -> serde_json::Value {
        let (_, out, _) = w.run_cli(&["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["pipelines"][0].clone()
    };
    wait_for("the pipeline to fail", Duration::from_secs(60), || status(&w)["state"] == "failed");
    let error = status(&w)["error"].as_str().unwrap().to_string();
    assert!(error.contains("no longer has column `id`") && error.contains("pipeline `items`"), "{error}");
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon goes on");
    let applied = w.redis_applied("items").unwrap();
    assert!(applied < lsn, "the views claim {applied}, past the change at {lsn} that could not be derived");
    assert!(w.redis_get("item:2").is_none());
    assert!(confirmed_flush(&w) < lsn);
    assert_eq!(w.stop(), 0);
}
