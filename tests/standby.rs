//! Several `deriver run` processes on one slot: one owns it (a Postgres advisory lock), the
//! others stand by and take over; a process that loses its lock is fenced (Redis refuses its
//! batches, the index writer lock keeps it out) and stands by again.

mod support;

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A second process beside the world's daemon, with its own HTTP port and log.
struct Other {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Other {
    fn start(w: &World, tag: &str) -> Other {
        Other::start_with(w, tag, &[])
    }

    fn start_with(w: &World, tag: &str, env: &[(&str, &str)]) -> Other {
        let port = free_port();
        let log = w.dir.join(format!("deriver-{tag}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd: Command = w.command();
        cmd.envs(env.iter().copied());
        cmd.env("DERIVER__HTTP__LISTEN", format!("127.0.0.1:{port}")).arg("run").stdout(file.try_clone().unwrap()).stderr(file);
        Other { child: cmd.spawn().unwrap(), port, log }
    }

    fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, serde_json::Value)> {
    let resp = reqwest::blocking::Client::new().get(format!("http://127.0.0.1:{port}{path}")).timeout(Duration::from_secs(5)).send().ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.json().unwrap_or(serde_json::Value::Null)))
}

fn role(port: u16) -> Option<String> {
    http_get(port, "/v1/status").and_then(|(_, v)| v["role"].as_str().map(str::to_string))
}

fn redis_int(w: &World, suffix: &str) -> i64 {
    let mut c = env().redis.conn();
    let v: Option<i64> = redis::cmd("GET").arg(format!("{}:_meta:films:{suffix}", w.prefix())).query(&mut c).unwrap();
    v.unwrap_or(0)
}

fn films_world(name: &str) -> World {
    let w = World::new(name);
    w.add_repo_pipeline("films");
    w.setup();
    w
}

#[test]
fn a_standby_takes_over_when_the_owner_dies() {
    let mut w = films_world("standby");
    w.start();
    w.wait_ready();
    assert_eq!(role(w.http_port).as_deref(), Some("owner"));
    let standby = Other::start(&w, "standby");
    wait_for("the second process to stand by", Duration::from_secs(30), || role(standby.port).as_deref() == Some("standby"));
    let (code, st) = http_get(standby.port, "/v1/status").unwrap();
    assert_eq!(code, 200);
    let owner_pid = w.daemon.as_ref().unwrap().id();
    assert!(st["owner"]["application_name"].as_str().is_some_and(|a| a.ends_with(&format!("pid {owner_pid}"))), "the standby names the owner: {st}");
    assert_eq!(http_get(standby.port, "/readyz").map(|r| r.0), Some(503), "a standby is not ready");
    assert_eq!(redis_int(&w, "owner_epoch"), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    std::thread::sleep(Duration::from_millis(1500));
    w.kill();
    let killed = Instant::now();
    // The standby takes over: Postgres released the dead owner's lock with its session.
    wait_for("the standby to take over", Duration::from_secs(60), || http_get(standby.port, "/readyz").is_some_and(|r| r.0 == 200));
    println!("takeover after the owner's SIGKILL: {:.1} s", killed.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 50, "the load ran");

    // The standby is now the world's daemon.
    w.http_port = standby.port;
    w.daemon = Some(standby.child);
    w.log = standby.log.clone();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(redis_int(&w, "owner_epoch"), 2, "each owner claimed the views once");
    assert_eq!(redis_int(&w, "fenced_writes"), 0, "the killed owner never wrote after the takeover");
    // Resumed from the checkpoints, not re-snapshotted.
    let log = strip_ansi(&w.log_text());
    assert!(log.contains("standing by"), "{log}");
    assert!(log.contains("this process owns the slot now"), "{log}");
    assert!(!log.contains("derived every record"), "the new owner resumed from the checkpoints: {log}");
    // The search API of the new owner answers from the same index, at least as fresh as before.
    let id = w.sql("SELECT min(film_id) FROM film");
    let (code, doc) = http_get(w.http_port, &format!("/v1/indexes/films/documents/{}", id.trim())).unwrap_or((0, serde_json::Value::Null));
    assert_eq!(code, 200, "{doc}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn an_owner_that_loses_its_lock_is_fenced_and_stands_by() {
    let mut w = films_world("fence");
    w.start();
    w.wait_ready();
    let owner_pid = w.daemon.as_ref().unwrap().id() as i32;
    // The second process keeps its own index generations (another host, say): the Redis owner
    // epoch is what fences the old owner there.
    let b = Other::start_with(&w, "b", &[("DERIVER__INDEX__DIR", w.dir.join("index-b").to_str().unwrap())]);
    wait_for("the second process to stand by", Duration::from_secs(30), || role(b.port).as_deref() == Some("standby"));

    // Freeze the owner, end its lock session behind its back, and write while it is frozen.
    unsafe {
        libc::kill(owner_pid, libc::SIGSTOP);
    }
    let ended = w.sql(&format!(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'deriver lock % pid {owner_pid}') t"
    ));
    assert_eq!(ended.trim(), "1", "the frozen owner's lock session was found");
    wait_for("the standby to take the lock and claim the views", Duration::from_secs(60), || redis_int(&w, "owner_epoch") == 2);
    w.sql("UPDATE film SET title = 'WRITTEN WHILE FROZEN' WHERE film_id = 7");
    std::thread::sleep(Duration::from_millis(300));
    unsafe {
        libc::kill(owner_pid, libc::SIGCONT);
    }
    // The old owner notices, stops writing and stands by; the new one streams (the slot was
    // still attached to the frozen process's replication connection until then).
    wait_for("the old owner to stand by", Duration::from_secs(60), || role(w.http_port).as_deref() == Some("standby"));
    wait_for("the new owner to be ready", Duration::from_secs(120), || http_get(b.port, "/readyz").is_some_and(|r| r.0 == 200));
    let old_log = strip_ansi(&w.log_text());
    assert!(old_log.contains("lost ownership of the slot; standing by again"), "{old_log}");
    assert_eq!(redis_int(&w, "owner_epoch"), 2, "only the new owner claimed the views");

    // The new owner applies everything, including the write made while the old one was frozen.
    let lsn = w.current_lsn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.redis_applied("films").is_none_or(|a| a < lsn) {
        assert!(Instant::now() < deadline, "the new owner did not catch up; log:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let film: serde_json::Value = serde_json::from_str(&w.redis_get("film:7").unwrap()).unwrap();
    assert_eq!(film["title"], "WRITTEN WHILE FROZEN");

    // And back: when the new owner stops, the old process (standing by) takes over again, with
    // its own index, and everything converges.
    let mut b = b;
    unsafe {
        libc::kill(b.child.id() as i32, libc::SIGTERM);
    }
    assert!(b.child.wait().unwrap().success(), "{}", b.log_text());
    wait_for("the first process to own the slot again", Duration::from_secs(60), || http_get(w.http_port, "/readyz").is_some_and(|r| r.0 == 200));
    assert_eq!(redis_int(&w, "owner_epoch"), 3);
    w.sql("UPDATE film SET title = 'BACK AGAIN' WHERE film_id = 7");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

/// The Redis side of fencing, exactly: once a second process claimed a pipeline's views, every
/// batch of the first is refused whole (small or chunked in MULTI) and counted; nothing of it lands.
#[test]
fn redis_refuses_every_batch_of_an_earlier_owner() {
    let prefix = format!("t:fence-{}", std::process::id());
    let cfg = deriver::config::RedisConfig { url: Some(env().redis.url()), prefix: prefix.clone(), durability_delay_ms: Some(0), ..Default::default() };
    let get = |key: &str| -> Option<String> { redis::cmd("GET").arg(format!("{prefix}:{key}")).query(&mut env().redis.conn()).unwrap() };
    support::fencing::redis_refuses_every_batch_of_an_earlier_owner(cfg, "items", "", &get);
}
