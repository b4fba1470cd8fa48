//! What an on-call engineer relies on, checked on a real daemon: `/metrics` passes `promtool check
//! metrics` (Debian's `prometheus` package, `scripts/dev-stack.sh install --with-browser`) with
//! every per-pipeline series there from the start; the shipped alert rules pass `promtool check
//! rules`, and the shipped Grafana dashboard and rules query only metrics the daemon exports;
//! `/readyz` turns 503 while Redis writes are paused under a write load and 200 once caught up;
//! with `DERIVER_LOG_FORMAT=json` every stderr line is JSON and no secret appears.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::observe::{http_get, metric, metrics, start_with};
use support::*;

const PROMTOOL: &str = "promtool";

fn promtool() -> Command {
    let found = Command::new(PROMTOOL).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(
        found,
        "promtool is missing: these tests need Debian's prometheus package (run `scripts/dev-stack.sh install --with-browser`, or `apt-get install -y --no-install-recommends prometheus`)"
    );
    Command::new(PROMTOOL)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The films pipeline (search index and Redis views), started with `extra` environment and caught up.
fn films(name: &str, extra: &[(&str, String)]) -> World {
    let mut w = World::new(name);
    w.add_repo_pipeline("films");
    w.setup();
    start_with(&mut w, extra);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    w
}

/// Every metric name (`deriver_*`) a piece of PromQL or dashboard text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("deriver_") {
        if i > 0 && text[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        out.insert(name);
    }
    out
}

/// The sample names of an exposition (`name{…} value` and `name value` lines).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(|l| l.split(['{', ' ']).next().unwrap().to_string()).collect()
}

#[test]
fn metrics_pass_promtool_and_the_shipped_rules_and_dashboard_use_them() {
    let mut w = films("ops_metrics", &[]);
    // Right after the start, before any change: every per-pipeline series is there, at zero.
    let first = metrics(&w);
    for (name, labels) in [
        ("deriver_lag_seconds", vec![("pipeline", "films")]),
        ("deriver_changes_applied_total", vec![("pipeline", "films")]),
        ("deriver_transactions_applied_total", vec![("pipeline", "films")]),
        ("deriver_dead_letters_total", vec![("pipeline", "films")]),
        ("deriver_reindex_rows_done", vec![("pipeline", "films")]),
        ("deriver_freshness_seconds_count", vec![("pipeline", "films")]),
        ("deriver_sink_commit_duration_seconds_count", vec![("pipeline", "films"), ("sink", "redis")]),
        ("deriver_sink_commit_duration_seconds_count", vec![("pipeline", "films"), ("sink", "search")]),
        ("deriver_fenced_writes_total", vec![]),
    ] {
        assert_eq!(metric(&first, name, &labels), Some(0.0), "{name}{labels:?} is not registered at zero:\n{first}");
    }
    // 20 one-row transactions, one of three rows and one rolled back; then a search.
    for n in 1..=20 {
        w.sql(&format!("UPDATE film SET title = 'OPS {n}' WHERE film_id = {n}"));
    }
    w.sql("BEGIN; UPDATE film SET rental_rate = 1.23 WHERE film_id IN (30, 31, 32); COMMIT");
    w.sql("BEGIN; UPDATE film SET title = 'ROLLED BACK' WHERE film_id = 40; ROLLBACK");
    w.catch_up(&["films"], &["films"]);
    let client = reqwest::blocking::Client::new();
    let search = client.post(format!("http://127.0.0.1:{}/v1/indexes/films/search", w.http_port)).body(r#"{"q": "ops"}"#).send().unwrap();
    assert_eq!(search.status().as_u16(), 200);
    let missing = client.post(format!("http://127.0.0.1:{}/v1/indexes/nope/search", w.http_port)).body("{}").send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    // The counters reach their values within a scrape interval (Redis durability trails by up to a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics(&w);
        let settled = metric(&text, "deriver_transactions_applied_total", &[("pipeline", "films")]) == Some(21.0)
            && metric(&text, "deriver_lag_seconds", &[("pipeline", "films")]) == Some(0.0);
        if settled || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&text, "deriver_transactions_applied_total", &[("pipeline", "films")]), Some(21.0), "{text}");
    assert_eq!(metric(&text, "deriver_changes_applied_total", &[("pipeline", "films")]), Some(23.0), "{text}");
    // Every transaction's freshness is observed once.
    assert_eq!(metric(&text, "deriver_freshness_seconds_count", &[("pipeline", "films")]), Some(21.0), "{text}");
    assert_eq!(metric(&text, "deriver_lag_seconds", &[("pipeline", "films")]), Some(0.0), "caught up and durable: no lag\n{text}");
    assert_eq!(metric(&text, "deriver_search_duration_seconds_count", &[("index", "films"), ("status", "200")]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "deriver_search_duration_seconds_count", &[("index", "(unknown)"), ("status", "404")]), Some(1.0), "{text}");
    assert_eq!(metric(&text, "deriver_ready", &[]), Some(1.0));
    assert_eq!(metric(&text, "deriver_slot_wal_status", &[("wal_status", "reserved")]), Some(1.0), "{text}");
    assert!(!text.contains("quantile="), "latencies are histograms, not summaries");

    let mut child = promtool().args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on the live /metrics:\n{said}\n---\n{text}");
    // Every metric with help and a type.
    for name in metric_names(&text) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| text.contains(&format!("# TYPE {b} histogram"))))
            .unwrap_or(&name);
        assert!(text.contains(&format!("# HELP {base} ")), "{base} has no help");
        assert!(text.contains(&format!("# TYPE {base} ")), "{base} has no type");
    }

    // The shipped alert rules: valid, and over metrics this daemon exports.
    let rules = repo("deploy/prometheus/alerts.yml");
    let out = promtool().arg("check").arg("rules").arg(&rules).output().unwrap();
    assert!(out.status.success(), "promtool check rules:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let have = exported(&text);
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    for name in metric_names(&rules_text) {
        assert!(have.contains(&name), "alerts.yml uses {name}, which /metrics does not export:\n{text}");
    }
    for alert in [
        "DeriverLagHigh",
        "DeriverSlotWalRetained",
        "DeriverSlotWalNotReserved",
        "DeriverDeadLettersGrowing",
        "DeriverFencedWrites",
        "DeriverDown",
        "DeriverStandbyMissing",
        "DeriverAuditDrift",
        "DeriverPipelineFailed",
    ] {
        assert!(rules_text.contains(&format!("alert: {alert}\n")), "alerts.yml has no {alert}");
    }

    // The shipped dashboard: valid JSON, every panel queries, every metric it queries is exported.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/deriver.json")).unwrap()).expect("deriver.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    let mut charts = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a target of {} has no expr", p["title"]));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries no deriver metric");
            queried.extend(names);
        }
        charts += 1;
    }
    assert!(charts >= 10, "{charts} panels");
    for name in &queried {
        assert!(have.contains(name), "deriver.json queries {name}, which /metrics does not export:\n{text}");
    }
    for needed in ["deriver_lag_seconds", "deriver_freshness_seconds_bucket", "deriver_changes_applied_total", "deriver_search_duration_seconds_bucket"] {
        assert!(queried.contains(needed), "the dashboard shows no {needed}");
    }
    w.stop();
}

#[test]
fn readyz_is_503_while_redis_writes_are_paused_and_200_once_caught_up() {
    // Under a steady load the lag stays below about 2.5 s (Redis writes count as durable 1.5 s
    // after they are made, with appendfsync everysec): a bound of 5 s is kept while writes flow.
    let bound = Duration::from_secs(5);
    // Its own Redis: the pause must not stall the other tests of this binary.
    let own = RedisServer::start();
    let mut w = World::new("ops_ready");
    w.add_repo_pipeline("films");
    w.setup();
    start_with(&mut w, &[("DERIVER__RUNTIME__READY_MAX_LAG_SECS", "5".into()), ("DERIVER__REDIS__URL", own.url())]);
    w.wait_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = support::load::paced_film_load(w.url(), 50, stop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(1));
    let get = |path: &str| http_get(&w, path).expect("the daemon answers");
    let steady = Instant::now();
    while steady.elapsed() < Duration::from_secs(3) {
        let (code, body) = get("/readyz");
        assert_eq!(code, 200, "ready under a steady write load: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Redis refuses writes (scripts included) for 12 s: batches wait, the lag grows.
    let pause_ms = 12_000;
    let mut redis = own.conn();
    let paused = Instant::now();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(pause_ms).arg("WRITE").query(&mut redis).unwrap();
    let mut not_ready = None;
    while paused.elapsed() < Duration::from_millis(pause_ms - 500) {
        let (code, body) = get("/readyz");
        assert_eq!(get("/healthz").0, 200, "healthz stays 200 while the process serves");
        if code == 503 && body.contains("films lags") {
            not_ready = Some((paused.elapsed(), body));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (after, body) = not_ready.unwrap_or_else(|| panic!("/readyz stayed 200 through the pause; log:\n{}", w.log_text()));
    // The lag passes the bound at most the bound after the pause began (plus a poll).
    assert!(after <= bound + Duration::from_millis(1_000), "503 only after {after:?}");
    assert!(body.contains("runtime.ready_max_lag_secs = 5"), "{body}");
    let text = metrics(&w);
    let lag = metric(&text, "deriver_lag_seconds", &[("pipeline", "films")]).unwrap();
    assert!(lag > bound.as_secs_f64(), "the lag gauge moves while the batch is stuck: {lag}");
    assert_eq!(metric(&text, "deriver_ready", &[]), Some(0.0));
    // The pause ends: caught up and ready again.
    let deadline = paused + Duration::from_millis(pause_ms) + Duration::from_secs(20);
    loop {
        let (code, body) = get("/readyz");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz did not come back: {body}; log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(paused.elapsed() >= Duration::from_millis(pause_ms), "ready again before the pause ended");
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 100, "the load ran");
    // Everything written during the pause reached the paused Redis and the index.
    let lsn = w.current_lsn();
    w.wait_applied(&[], &["films"], lsn, Duration::from_secs(60));
    let checkpoint = format!("{}:_meta:films:applied_lsn", w.prefix());
    wait_for("the paused Redis to catch up", Duration::from_secs(60), || {
        let applied: Option<String> = redis::cmd("GET").arg(&checkpoint).query(&mut redis).unwrap();
        applied.is_some_and(|a| a.parse::<Lsn>().unwrap() >= lsn)
    });
    let views: Vec<String> = redis::cmd("KEYS").arg(format!("{}:film:*:summary", w.prefix())).query(&mut redis).unwrap();
    assert_eq!(views.len() as u64, w.sql("SELECT count(*) FROM film").parse::<u64>().unwrap(), "one summary view per film");
    assert_eq!(w.stop(), 0);
}

/// A Postgres URL with a password (the test cluster trusts loopback, so it is not checked but
/// travels everywhere a URL does).
fn url_with_password(w: &World, password: &str) -> String {
    w.url().replacen("postgres@", &format!("postgres:{password}@"), 1)
}

#[test]
fn json_logs_are_json_lines_with_pipeline_and_without_secrets() {
    let pg_secret = "pgS3cretPw";
    let token = "tokS3cretTk";
    let redis_secret = "rdS3cretPw";
    let mut w = World::new("ops_json");
    w.add_repo_pipeline("films");
    w.setup();
    let pg_url = url_with_password(&w, pg_secret);
    let json = |w: &World| -> Vec<(String, Value)> {
        w.log_text().lines().map(|l| (l.to_string(), serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))).collect()
    };
    start_with(
        &mut w,
        &[
            ("DERIVER_LOG_FORMAT", "json".into()),
            ("DERIVER_LOG", "info,deriver=debug".into()),
            ("DERIVER__POSTGRES__URL", pg_url.clone()),
            ("DERIVER__HTTP__TOKEN", token.into()),
            // A view over 64 KiB is refused: a dead letter.
            ("DERIVER__REDIS__MAX_VALUE_BYTES", "65536".into()),
        ],
    );
    // The token gates /readyz: poll it with the header.
    let client = reqwest::blocking::Client::new();
    let ready_url = format!("http://127.0.0.1:{}/readyz", w.http_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(&ready_url).bearer_auth(token).send().is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "not ready; log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A change (debug lines per batch), a record every target refuses (a dead letter), a wrong token.
    w.sql("UPDATE film SET title = 'JSON LOGS' WHERE film_id = 3");
    w.sql(&format!("UPDATE film SET description = repeat('x', {}) WHERE film_id = 4", 100 * 1024));
    assert_eq!(client.get(&ready_url).bearer_auth("wrong").send().unwrap().status().as_u16(), 401);
    w.catch_up(&["films"], &["films"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.stop(), 0);

    // A second run whose Redis URL (with a password) points nowhere: the start fails, in JSON.
    let dead_port = free_port();
    start_with(
        &mut w,
        &[
            ("DERIVER_LOG_FORMAT", "json".into()),
            ("DERIVER__POSTGRES__URL", pg_url.clone()),
            ("DERIVER__REDIS__URL", format!("redis://:{redis_secret}@127.0.0.1:{dead_port}/")),
        ],
    );
    let (code, _) = w.wait_exit(Duration::from_secs(60));
    assert_eq!(code, 1, "an unreachable Redis at start stops the start");

    let lines = json(&w);
    assert!(lines.len() > 10, "{} lines", lines.len());
    for (raw, v) in &lines {
        for secret in [pg_secret, token, redis_secret] {
            assert!(!raw.contains(secret), "a secret in the log: {raw}");
        }
        assert!(v["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "timestamp: {raw}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or_default()), "level: {raw}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {raw}");
        if let Some(p) = v.get("pipeline") {
            assert_eq!(p, "films", "{raw}");
        }
    }
    let with = |message: &str| lines.iter().filter(|(_, v)| v["message"].as_str().is_some_and(|m| m.contains(message))).collect::<Vec<_>>();
    for message in ["batch durable", "record rejected (dead letter)"] {
        let found = with(message);
        assert!(!found.is_empty(), "no `{message}` line");
        for (raw, v) in found {
            assert_eq!(v["pipeline"], "films", "a line about a pipeline names it: {raw}");
        }
    }
    let last = &lines.last().unwrap().1;
    assert_eq!(last["level"], "ERROR", "the failed start ends with its error: {last}");
    assert!(last["message"].as_str().unwrap().to_lowercase().contains("redis"), "{last}");
}
