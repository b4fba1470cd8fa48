//! Network faults between deriver and its dependencies, through a TCP proxy
//! (`tests/support/proxy.rs`) that cuts every connection and refuses new ones for a while:
//! Postgres (the replication and the derivation connections) and Redis, each cut in the middle
//! of a large transaction that is being streamed or applied, under concurrent write load.
//! Checked during the outage: the daemon keeps running, each sink shows a transaction whole or
//! not at all, the slot is never acknowledged past what every sink holds, and status / metrics /
//! readiness report the outage; after it: the daemon resumes by itself and every view equals a
//! fresh derivation.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::observe::*;
use support::proxy::{Dir, Proxy, Step};
use support::*;

/// Films the write load never touches (it updates 1..1000, inserts, deletes and moves above
/// 100000): the large transactions rewrite exactly these, so each sink must show all of them
/// with one `release_year` — the old one or the new one — at any moment.
const BIG_FIRST: i64 = 50001;
const BIG_LAST: i64 = 55000;
const MIDDLE: i64 = 52500;

/// How a key travels in the keyed query's `text[]` parameter (binary array: a 4-byte length,
/// then the text), so a pattern matches this key and no longer one that contains it.
fn key_param(key: i64) -> Vec<u8> {
    let text = key.to_string();
    let mut out = (text.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn big_world(name: &str) -> World {
    let w = World::new(name);
    w.add_repo_pipeline("films");
    // ~1.4 kB per row in the WAL, ~2.5 kB per JSON view: one rewrite of all of them is a
    // transaction of about 7 MB in the replication stream and 12 MB of Redis writes.
    w.sql(&format!(
        "INSERT INTO film (film_id, title, description, language_id, rental_rate, release_year)
         SELECT g, 'BIG ' || g, repeat('lorem ipsum ' || g || ' ', 90), 1, 0.99, 2100 FROM generate_series({BIG_FIRST}, {BIG_LAST}) g"
    ));
    w
}

/// How many of the large rows show each `release_year` in Redis (one MGET: an atomic read).
fn redis_years(w: &World) -> BTreeMap<String, usize> {
    let mut c = env().redis.conn();
    let keys: Vec<String> = (BIG_FIRST..=BIG_LAST).map(|id| format!("{}:film:{id}", w.prefix())).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
    let mut out = BTreeMap::new();
    for v in values {
        let year = match v {
            None => "missing".to_string(),
            Some(text) => serde_json::from_str::<serde_json::Value>(&text).unwrap()["release_year"].to_string(),
        };
        *out.entry(year).or_insert(0) += 1;
    }
    out
}

/// The same over the search index's last commit.
fn index_years(w: &World) -> BTreeMap<String, usize> {
    let docs = w.index_docs("films");
    let mut out = BTreeMap::new();
    for id in BIG_FIRST..=BIG_LAST {
        let year = docs.get(&id.to_string()).map_or("missing".to_string(), |d| d["release_year"].to_string());
        *out.entry(year).or_insert(0) += 1;
    }
    out
}

/// Every large row shows the same year, one of `allowed`; returns it.
fn whole(what: &str, years: &BTreeMap<String, usize>, allowed: &[i64]) -> i64 {
    assert_eq!(years.len(), 1, "{what}: a transaction is partly visible: {years:?}");
    let (year, _) = years.iter().next().unwrap();
    let y: i64 = year.parse().unwrap_or_else(|_| panic!("{what}: {years:?}"));
    assert!(allowed.contains(&y), "{what}: year {y}, expected one of {allowed:?}");
    y
}

/// What the daemon reported about its dependencies while one of them was away.
#[derive(Default, Debug)]
struct Reported {
    /// `deriver_dependency_up{dependency=…} 0` in `/metrics`.
    metric_down: bool,
    /// `/readyz` answered 503.
    not_ready: bool,
    /// `dependencies.<name>.up == false` in `/v1/status`.
    status_down: bool,
    /// A pipeline's `error` in `/v1/status` (see `the_status_document_names_the_outage_per_pipeline`).
    pipeline_error: bool,
}

impl Reported {
    fn all(&self) -> bool {
        self.metric_down && self.not_ready && self.status_down
    }
}

fn observe_degraded(w: &World, dependencies: &[&str], seen: &mut Reported) {
    let m = metrics(w);
    if dependencies.iter().any(|d| metric(&m, "deriver_dependency_up", &[("dependency", d)]) == Some(0.0)) {
        seen.metric_down = true;
    }
    if let Some((503, body)) = http_get(w, "/readyz") {
        if dependencies.iter().any(|d| body.contains(&format!("{d} is failing"))) {
            seen.not_ready = true;
        }
    }
    let doc = status(w);
    if dependencies.iter().any(|d| doc["dependencies"][d]["up"] == false) {
        seen.status_down = true;
    }
    if doc["pipelines"].as_array().unwrap().iter().any(|p| p["error"].is_string()) {
        seen.pipeline_error = true;
    }
}

/// After an outage: every dependency is reported up again and the daemon is ready.
fn wait_reported_healthy(w: &mut World, dependencies: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert_alive(w, "after the outage");
        let m = metrics(w);
        let up = dependencies.iter().all(|d| metric(&m, "deriver_dependency_up", &[("dependency", d)]) == Some(1.0));
        let ready = http_get(w, "/readyz").is_some_and(|(c, _)| c == 200);
        if up && ready {
            return;
        }
        assert!(Instant::now() < deadline, "still reported unhealthy after the outage: {:?}; log:\n{}", http_get(w, "/readyz"), w.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One large transaction with a cut armed by `arm`: checks during the outage (`outage` long)
/// and until the transaction is applied everywhere after the proxy is restored.
fn cut_round(w: &mut World, proxy: &Proxy, dependencies: &[&str], year: i64, outage: Duration, arm: impl FnOnce(&Proxy)) -> Reported {
    let before = year - 1;
    // Connected and caught up before the round.
    let lsn = w.current_lsn();
    w.wait_applied(&["films"], &["films"], lsn, Duration::from_secs(300));
    whole("redis before", &redis_years(w), &[before]);
    arm(proxy);
    let txn_start = Instant::now();
    w.sql(&format!("UPDATE film SET release_year = {year} WHERE film_id BETWEEN {BIG_FIRST} AND {BIG_LAST}"));
    assert!(proxy.wait_down(Duration::from_secs(120)), "the armed cut never happened ({} bytes up, {} down)", proxy.bytes(Dir::Up), proxy.bytes(Dir::Down));
    let cut_after = txn_start.elapsed();
    let mut seen = Reported::default();
    let redis_at_cut = whole("redis at the cut", &redis_years(w), &[before, year]);
    let index_at_cut = whole("index at the cut", &index_years(w), &[before, year]);
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < outage {
        assert_alive(w, "during the outage");
        whole("redis during the outage", &redis_years(w), &[before, year]);
        whole("index during the outage", &index_years(w), &[before, year]);
        assert_ack_within_checkpoints(w, &["films"], &["films"]);
        observe_degraded(w, dependencies, &mut seen);
        samples += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.restore();
    let restored = Instant::now();
    // Resumes unattended; the transaction lands whole in each sink.
    let deadline = restored + Duration::from_secs(240);
    loop {
        assert_alive(w, "after the outage");
        let r = whole("redis after the outage", &redis_years(w), &[before, year]);
        let i = whole("index after the outage", &index_years(w), &[before, year]);
        assert_ack_within_checkpoints(w, &["films"], &["films"]);
        if r == year && i == year {
            break;
        }
        assert!(Instant::now() < deadline, "the transaction was not applied after the outage; log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_reported_healthy(w, dependencies);
    assert!(seen.all(), "the outage was not reported (dependencies {dependencies:?}): {seen:?}");
    eprintln!(
        "round {year}: cut {:.1}s after the commit; at the cut redis={redis_at_cut} index={index_at_cut}; {samples} samples in {:.1}s of outage; \
         applied {:.1}s after the restore; reported {seen:?}",
        cut_after.as_secs_f64(),
        outage.as_secs_f64(),
        restored.elapsed().as_secs_f64()
    );
    seen
}

fn load(w: &World) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let h = support::load::paced_film_load(w.url(), 200, stop.clone(), done.clone());
    (stop, done, h)
}

#[test]
fn postgres_connections_cut_mid_transaction_under_load() {
    let proxy = Proxy::start(env().pg.port);
    let mut w = big_world("netpg");
    w.setup();
    let url = proxy.url(&w.url());
    start_with(&mut w, &[("DERIVER__POSTGRES__URL", url)]);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let (stop, done, h) = load(&w);
    let mut reports = Vec::new();
    // Mid-stream: the walsender is sending the transaction's middle row.
    reports.push(cut_round(&mut w, &proxy, &["postgres", "replication"], 2101, Duration::from_secs(4), |p| {
        p.cut_when(vec![Step::Pattern(Dir::Down, format!("lorem ipsum {MIDDLE} ").into_bytes())])
    }));
    // Mid-derivation: the keyed query that re-derives the middle row is on its way.
    reports.push(cut_round(&mut w, &proxy, &["postgres", "replication"], 2102, Duration::from_secs(4), |p| {
        p.cut_when(vec![Step::Pattern(Dir::Up, key_param(MIDDLE))])
    }));
    // Mid-result: 256 kB into the rows of that query, with a longer outage (several backoff steps).
    reports.push(cut_round(&mut w, &proxy, &["postgres", "replication"], 2103, Duration::from_secs(8), |p| {
        p.cut_when(vec![Step::Pattern(Dir::Up, key_param(MIDDLE)), Step::Bytes(Dir::Down, 256 << 10)])
    }));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 50, "the load ran");
    let lsn = w.current_lsn();
    w.wait_applied(&["films"], &["films"], lsn, Duration::from_secs(300));
    check_films(&w);
    let log = w.log_text();
    assert!(log.contains("replication interrupted"), "the replication connection was cut; log:\n{log}");
    eprintln!("reports: {reports:?}");
    assert!(proxy.cuts() >= 3);
    assert_eq!(w.stop(), 0);
}

#[test]
fn redis_connection_cut_mid_batch_under_load() {
    let proxy = Proxy::start(env().redis.port);
    let mut w = big_world("netredis");
    w.setup();
    start_with(&mut w, &[("DERIVER__REDIS__URL", proxy.url(&env().redis.url()))]);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let (stop, done, h) = load(&w);
    let mut reports = Vec::new();
    // The batch is ~13 MB of script arguments, sent as 4 MiB script calls queued in MULTI: cut
    // in the second call (MULTI open, one call queued) ...
    reports.push(cut_round(&mut w, &proxy, &["redis"], 2101, Duration::from_secs(4), |p| {
        p.cut_when(vec![Step::Pattern(Dir::Up, b"MULTI\r\n".to_vec()), Step::Bytes(Dir::Up, 6 << 20)])
    }));
    // ... just before EXEC (every call queued, nothing executed) ...
    reports.push(cut_round(&mut w, &proxy, &["redis"], 2102, Duration::from_secs(4), |p| p.cut_when(vec![Step::Pattern(Dir::Up, b"$4\r\nEXEC\r\n".to_vec())])));
    // ... and after EXEC, before its reply reaches deriver (applied, but deriver cannot know),
    // with a longer outage.
    reports.push(cut_round(&mut w, &proxy, &["redis"], 2103, Duration::from_secs(8), |p| {
        p.cut_when(vec![Step::Pattern(Dir::Up, b"$4\r\nEXEC\r\n".to_vec()), Step::Bytes(Dir::Down, 1)])
    }));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 50, "the load ran");
    let lsn = w.current_lsn();
    w.wait_applied(&["films"], &["films"], lsn, Duration::from_secs(300));
    check_films(&w);
    eprintln!("reports: {reports:?}");
    assert_eq!(w.stop(), 0);
}

// Defects found by these tests in `src/runtime/mod.rs` (owned elsewhere at the time of
// writing): each test below states what should happen and fails today; see
// docs/guarantees.md, "Known defects".

/// While a dependency is failing, the pipelines it blocks say so in `/v1/status` (`error`),
/// and their lag keeps growing there and in `/metrics`.
#[test]
fn the_status_document_names_the_outage_per_pipeline() {
    let proxy = Proxy::start(env().redis.port);
    let mut w = World::new("netstatus");
    w.add_repo_pipeline("films");
    w.setup();
    start_with(&mut w, &[("DERIVER__REDIS__URL", proxy.url(&env().redis.url()))]);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let lag_before = status(&w)["pipelines"][0]["lag_bytes"].as_u64().unwrap();
    proxy.cut();
    for i in 0..50 {
        w.sql(&format!("UPDATE film SET title = 'OUTAGE {i}' WHERE film_id = {}", 1 + i));
    }
    let mut seen_error = false;
    let mut max_lag = lag_before;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let doc = status(&w);
        let p = &doc["pipelines"][0];
        seen_error |= p["error"].as_str().is_some_and(|e| e.to_lowercase().contains("redis"));
        max_lag = max_lag.max(p["lag_bytes"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(300));
    }
    // `deriver status` shows the failing dependency too (JSON and table).
    let (_, out, _) = w.run_cli(&["status", "--json"]);
    let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["dependencies"]["redis"]["up"], false, "{out}");
    assert_eq!(cli["role"], "owner", "{out}");
    let (_, table, _) = w.run_cli(&["status"]);
    assert!(table.contains("DOWN redis"), "{table}");
    proxy.restore();
    w.catch_up(&["films"], &["films"]);
    assert!(seen_error, "no pipeline error in /v1/status during the Redis outage");
    assert!(max_lag > lag_before + 1000, "lag_bytes did not grow during the outage ({lag_before} -> {max_lag})");
    wait_for("the error to clear", Duration::from_secs(30), || status(&w)["pipelines"][0]["error"].is_null());
    assert_eq!(w.stop(), 0);
}

/// SIGTERM while a batch is being retried stops the daemon within a few seconds, however long
/// the outage has lasted.
#[test]
fn sigterm_during_a_long_outage_stops_promptly() {
    let proxy = Proxy::start(env().redis.port);
    let mut w = World::new("netsigterm");
    w.add_repo_pipeline("films");
    w.setup();
    start_with(&mut w, &[("DERIVER__REDIS__URL", proxy.url(&env().redis.url()))]);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    proxy.cut();
    w.sql("UPDATE film SET title = 'PENDING' WHERE film_id = 1");
    // Long enough for the backoff to reach its 30 s ceiling (0.2 s doubling: ~50 s).
    std::thread::sleep(Duration::from_secs(60));
    let asked = Instant::now();
    unsafe {
        libc::kill(pid(&w) as i32, libc::SIGTERM);
    }
    let (code, _) = w.wait_exit(Duration::from_secs(60));
    let took = asked.elapsed();
    eprintln!("stopped {:.1}s after SIGTERM with code {code}", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "deriver took {:.1}s to stop", took.as_secs_f64());
}

/// A short Postgres outage while nothing is written must not leave the daemon with a dead
/// derivation connection: the publication check ("checked every 5 s") and the status refresh go
/// on, so a table dropped from the publication afterwards still stops deriver loudly.
#[test]
fn a_postgres_outage_while_idle_leaves_the_publication_check_working() {
    let proxy = Proxy::start(env().pg.port);
    let mut w = World::new("netidle");
    w.add_repo_pipeline("actors");
    w.setup();
    let url = proxy.url(&w.url());
    start_with(&mut w, &[("DERIVER__POSTGRES__URL", url)]);
    w.wait_ready();
    w.catch_up(&["actors"], &["actors"]);
    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    proxy.restore();
    wait_for("the replication connection to be back", Duration::from_secs(60), || {
        metric(&metrics(&w), "deriver_dependency_up", &[("dependency", "replication")]) == Some(1.0)
    });
    w.sql("ALTER PUBLICATION deriver DROP TABLE actor");
    let (code, log) = w.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0);
    // Either the running check saw it, or (when the outage cost the process its ownership lock
    // and it re-opened the pipelines) the start-up check did: both stop loudly.
    assert!(log.contains("was removed from publication") || log.contains("does not cover table public.actor"), "{log}");
}

/// The reconnect backoff starts small again after a successful reconnection: the tenth short
/// outage is recovered from as fast as the first.
#[test]
fn repeated_outages_do_not_accumulate_backoff() {
    let proxy = Proxy::start(env().pg.port);
    let mut w = World::new("netbackoff");
    w.add_repo_pipeline("actors");
    w.setup();
    let url = proxy.url(&w.url());
    start_with(&mut w, &[("DERIVER__POSTGRES__URL", url)]);
    w.wait_ready();
    let mut took = Vec::new();
    for i in 0..8 {
        w.catch_up(&["actors"], &["actors"]);
        proxy.cut();
        std::thread::sleep(Duration::from_millis(500));
        proxy.restore();
        w.sql(&format!("UPDATE actor SET first_name = 'ROUND {i}' WHERE actor_id = 1"));
        let restored = Instant::now();
        w.catch_up(&["actors"], &["actors"]);
        took.push(restored.elapsed().as_secs_f64());
    }
    eprintln!("resumed after each outage in (s): {took:?}");
    assert!(took.last().unwrap() < &10.0, "the last outage took {took:?}");
}
