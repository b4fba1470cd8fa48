//! Commands that only read (`deriver status`, `deriver dead-letters` without a daemon) never take a
//! lock the daemon needs: they open the dead-letter store read-only, beside its one writer. A
//! daemon starting while they run neither fails ("Database already open. Cannot acquire lock")
//! nor waits for them. Commands that do a daemon's work without one (`reindex`, `dead-letters
//! --retry`, `audit --repair`) hold the slot's ownership instead: a starting daemon stands by.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deriver::runtime::dead_letters::DeadLetters;
use support::*;

/// The daemon's note when it meets the store held for writing by another process.
const WAITED: &str = "another process has the dead-letter store open for writing";

const ITEMS: &str = "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, inv: 100 / item.n }\n\
                     targets:\n  - redis: { key: \"item:{id}\", type: json }\n";

fn items_world(name: &str) -> World {
    let w = World::new(name);
    w.sql("CREATE TABLE item (id int PRIMARY KEY, n int); INSERT INTO item SELECT g, 1 FROM generate_series(1, 10) g");
    w.add_pipeline("items", ITEMS);
    w.setup();
    w
}

/// (exit code, stderr) of every run.
type Runs = Arc<Mutex<Vec<(i32, String)>>>;

/// `deriver status --json` run over and over from another thread until `stop`.
fn status_loop(w: &World, stop: Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Runs) {
    let template = w.command();
    let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = template.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
    let dir = template.get_current_dir().unwrap().to_path_buf();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = runs.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_deriver"));
            c.current_dir(&dir).args(["status", "--json"]);
            for (k, v) in &envs {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            let out = c.output().unwrap();
            seen.lock().unwrap().push((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()));
        }
    });
    (handle, runs)
}

#[test]
fn status_in_a_tight_loop_beside_daemon_starts_costs_no_start() {
    let mut w = items_world("readers");
    w.start();
    w.wait_ready();
    assert_eq!(w.stop(), 0);
    assert!(w.index_dir().join("_state/dead_letters.redb").exists(), "the first start created the store");
    let stop = Arc::new(AtomicBool::new(false));
    let (looping, runs) = status_loop(&w, stop.clone());
    const STARTS: usize = 12;
    for i in 0..STARTS {
        w.start();
        // Panics, with the log, if the start fails.
        w.wait_ready();
        assert_eq!(w.stop(), 0, "start {i}");
        // Stopped a moment: the readers open the store alone, as they do before a start.
        std::thread::sleep(Duration::from_millis(30 * (i as u64 % 4)));
    }
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    let runs = runs.lock().unwrap();
    assert!(runs.len() >= STARTS, "the status loop ran {} times", runs.len());
    for (code, err) in runs.iter() {
        assert_eq!(*code, 0, "deriver status failed: {err}");
        assert!(!err.contains("dead-letter store"), "deriver status could not read the store: {err}");
    }
    let log = w.log_text();
    assert!(!log.contains(WAITED), "a start waited for a reader; log:\n{log}");
}

#[test]
fn a_reader_holding_the_store_neither_delays_a_start_nor_misses_its_commits() {
    let mut w = items_world("reader_held");
    w.start();
    w.wait_ready();
    assert_eq!(w.stop(), 0);
    // What `deriver status` opens, held across a start (the daemon used to wait 10 s and exit 1).
    let reader = DeadLetters::open_read_only(&deriver::runtime::state_dir(&w.index_dir())).unwrap();
    assert_eq!(reader.count("items"), 0);
    let started = Instant::now();
    w.start();
    w.wait_ready();
    assert!(started.elapsed() < Duration::from_secs(8), "the start took {:?}", started.elapsed());
    // The daemon records a dead letter; the held reader sees the commit.
    w.sql("UPDATE item SET n = 0 WHERE id = 7");
    wait_for("the dead letter to be recorded", Duration::from_secs(30), || reader.list("items", 10).unwrap().iter().any(|d| d.key == "7"));
    // And the command line, offline and with the daemon, shows it too.
    let (code, out, err) = w.run_cli(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"][0]["key"], "7", "{out}");
    // Offline after a crash (the store was not closed cleanly), and after a clean stop.
    w.kill();
    let (code, out, err) = w.run_cli(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"][0]["key"], "7", "offline after a crash: {out}{err}");
    w.start();
    w.wait_ready();
    assert_eq!(w.stop(), 0);
    let (code, out, err) = w.run_cli(&["dead-letters", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["items"][0]["key"], "7", "offline: {out}");
    let log = w.log_text();
    assert!(!log.contains(WAITED), "the start waited for the reader; log:\n{log}");
    drop(reader);
}

/// A command doing a daemon's work without one (`deriver reindex` here) holds the slot's
/// ownership while it works: a daemon starting meanwhile stands by (it neither fails on nor waits
/// for the stores and index the command holds) and takes over when the command is done.
#[test]
fn a_daemon_started_during_an_offline_reindex_stands_by_until_it_is_done() {
    let mut w = World::new("reindex_owner");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.stop(), 0);
    let reindex = w.command().args(["reindex", "films"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    register_kill(reindex.id());
    // The command is building generation 2: start the daemon now.
    wait_for("the offline reindex to start building", Duration::from_secs(30), || w.index_dir().join("films/gen-000002").exists());
    w.start();
    let out = reindex.wait_with_output().unwrap();
    assert!(out.status.success(), "the offline reindex failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    w.wait_ready();
    let log = w.log_text();
    assert!(log.contains("another deriver owns this slot; standing by"), "the daemon did not stand by while the command ran; log:\n{log}");
    assert!(!log.contains(WAITED), "the daemon met the command's stores; log:\n{log}");
    assert_eq!(std::fs::read_to_string(w.index_dir().join("films/CURRENT")).unwrap().trim(), "2");
    w.sql("UPDATE film SET title = 'AFTER THE OFFLINE REINDEX' WHERE film_id = 5");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}
