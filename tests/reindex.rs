//! Full reprocess without downtime against real Postgres and Redis: reindex under write load,
//! searches answering throughout, SIGKILL mid-reindex, rollback, rebuild on a definition change,
//! no stale Redis keys after a key-template change, and the CLI working without a daemon.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn current_gen(w: &World, index: &str) -> u64 {
    std::fs::read_to_string(w.index_dir().join(index).join("CURRENT")).unwrap().trim().parse().unwrap()
}

fn gens(w: &World, index: &str) -> Vec<u64> {
    let mut g: Vec<u64> =
        std::fs::read_dir(w.index_dir().join(index)).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("gen-")?.parse().ok()).collect();
    g.sort();
    g
}

/// Hits of an empty query through the HTTP API (None when it did not answer 200).
fn search_total(w: &World) -> Option<u64> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-X", "POST", "-H", "content-type: application/json", "-d", r#"{"q": "", "limit": 1}"#])
        .arg(format!("http://127.0.0.1:{}/v1/indexes/films/search", w.http_port))
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["total"]["value"].as_u64()
}

/// Hits of an empty query (HTTP 200 with a total), or what went wrong.
fn search_at(port: u16) -> Result<u64, String> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let resp = client
        .post(format!("http://127.0.0.1:{port}/v1/indexes/films/search"))
        .json(&serde_json::json!({ "q": "", "limit": 1 }))
        .send()
        .map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body: serde_json::Value = resp.json().map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    body["total"]["value"].as_u64().ok_or_else(|| format!("no total: {body}"))
}

#[test]
fn reindex_under_write_load_swaps_atomically_and_rolls_back() {
    let mut w = World::new("reindex");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();
    wait_for("search to answer", Duration::from_secs(20), || search_total(&w).is_some_and(|t| t > 0));
    assert_eq!(current_gen(&w, "films"), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = film_load(w.url(), stop.clone(), done.clone());
    // Searches from another thread for the whole reindex: every one must be answered from a
    // complete generation (no error, no empty or partial index at the swap).
    let searching = Arc::new(AtomicBool::new(true));
    let searcher = {
        let (port, searching) = (w.http_port, searching.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while searching.load(Ordering::Relaxed) {
                let at = Instant::now();
                seen.push((at, search_at(port), Instant::now()));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    let (code, out, err) = w.run_cli(&["reindex", "films"]);
    let ended = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    searching.store(false, Ordering::Relaxed);
    let searches = searcher.join().unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", w.log_text());
    assert!(err.contains("films") && err.contains("done: generation 2 is live"), "{err}");
    for (at, answer, _) in &searches {
        assert!(answer.as_ref().is_ok_and(|t| *t >= 900), "a search {:?} after the reindex began was answered {answer:?}", at.saturating_duration_since(began));
    }
    let during = searches.iter().filter(|(at, _, done)| *at >= began && *done <= ended).count();
    eprintln!("{} searches, {during} of them inside the reindex ({:?})", searches.len(), ended - began);
    assert!(during >= 10, "only {during} searches ran inside the reindex ({:?}); the test proves nothing", ended - began);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 20);
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(current_gen(&w, "films"), 2);
    assert_eq!(gens(&w, "films"), vec![1, 2], "the previous generation is kept");

    // Rollback: generation 1 is caught up and live again.
    w.sql("UPDATE film SET title = 'AFTER THE SWAP' WHERE film_id = 3");
    let (code, out, err) = w.run_cli(&["reindex", "films", "--rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(current_gen(&w, "films"), 1);
    w.sql("UPDATE film SET title = 'AFTER THE ROLLBACK' WHERE film_id = 4");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.index_docs("films")["3"]["title"], "AFTER THE SWAP");
    assert_eq!(w.stop(), 0);

    // After a restart the rolled-back-from generation 2 is gone; a second reindex creates
    // generation 3 (numbers are never reused) and keeps the one it replaced (keep_generations = 1).
    w.start();
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let (code, _, err) = w.run_cli(&["reindex", "films"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(current_gen(&w, "films"), 3);
    assert_eq!(gens(&w, "films"), vec![1, 3]);
    assert_eq!(w.stop(), 0);
}

#[test]
fn killed_mid_reindex_restarts_cleanly() {
    let mut w = World::new("reindexkill");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    // Ask the daemon, then kill it before the new generation can be live.
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-H", "content-type: application/json", "-d", r#"{"pipelines": ["films"]}"#])
        .arg(format!("http://127.0.0.1:{}/v1/admin/reindex", w.http_port))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("started"), "{}", String::from_utf8_lossy(&out.stdout));
    w.kill();
    assert_eq!(current_gen(&w, "films"), 1, "the live generation did not move");
    w.sql("UPDATE film SET title = 'WHILE DOWN' WHERE film_id = 5");
    w.start();
    // The requested reindex resumes (starting over) and completes.
    wait_for("the resumed reindex to go live", Duration::from_secs(60), || current_gen(&w, "films") >= 2);
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert!(!w.index_dir().join("films").join("REINDEX").exists());
    assert_eq!(w.stop(), 0);
}

#[test]
fn definition_changes_rebuild_or_rewrite_in_place_without_stale_keys() {
    let mut w = World::new("defchange");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.stop(), 0);

    // A search field option changes (rebuild) and the JSON view's key template changes (in place).
    let films = std::fs::read_to_string(w.pipelines.join("films.yaml")).unwrap();
    let changed = films
        .replace(
            "title:            { type: text, stored: true, boost: 3.0, highlight: true }",
            "title:            { type: text, stored: true, boost: 5.0, highlight: true, fuzzy: 1 }",
        )
        .replace("key: \"film:{film_id}\"\n", "key: \"movie:{film_id}\"\n");
    assert_ne!(changed, films);
    w.add_pipeline("films", &changed);
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("rebuild"), "{out}");
    w.sql("UPDATE film SET title = 'CHANGED WHILE STOPPED' WHERE film_id = 6");
    w.start();
    wait_for("the rebuilt generation to go live", Duration::from_secs(60), || current_gen(&w, "films") == 2);
    w.catch_up(&["films"], &["films"]);
    // Old JSON keys are gone; new ones hold every film.
    let film_json: Vec<String> = w.redis_keys("film:*").into_iter().filter(|k| !k.ends_with(":summary")).collect();
    assert!(film_json.is_empty(), "stale keys: {:?}", &film_json[..film_json.len().min(5)]);
    let expected = w.expected(FILMS_EXPECTED);
    assert_eq!(w.redis_keys("movie:*").len(), expected.len());
    let got: serde_json::Value = serde_json::from_str(&w.redis_get("movie:6").unwrap()).unwrap();
    assert_eq!(got["title"], "CHANGED WHILE STOPPED");
    assert_eq!(w.index_docs("films").len(), expected.len());
    assert_eq!(w.index_docs("films")["6"]["title"], "CHANGED WHILE STOPPED");
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(w.stop(), 0);
}

#[test]
fn reindex_without_a_daemon() {
    let mut w = World::new("reindexoff");
    w.add_repo_pipeline("films");
    w.setup();
    let (code, _, err) = w.run_cli(&["reindex", "films"]);
    assert_ne!(code, 0);
    assert!(err.contains("no replication slot yet"), "{err}");
    w.start();
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.stop(), 0);
    w.sql("UPDATE film SET title = 'OFFLINE' WHERE film_id = 7");
    let (code, out, err) = w.run_cli(&["reindex", "films"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(current_gen(&w, "films"), 2);
    assert_eq!(w.index_docs("films")["7"]["title"], "OFFLINE");
    w.start();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
    // Offline rollback: generation 1 goes live and is brought up to date by the next run.
    let (code, out, err) = w.run_cli(&["reindex", "films", "--rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(current_gen(&w, "films"), 1);
    w.start();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

/// A reindex reads each Redis view back and rewrites exactly those Redis does not hold as
/// derived (changed, missing, with a stray field, of the wrong type, or with a wrong ledger
/// entry); every other view is left as it is.
#[test]
fn reindex_rewrites_the_redis_views_that_differ_and_only_those() {
    let mut w = World::new("reindexverify");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    w.wait_ready();
    let (p, ledger) = (w.view_prefix(), format!("{}:_ledger:films", w.prefix()));
    {
        // Behind deriver's back: seven films' views drift in seven ways.
        let mut c = w.redis_conn();
        let mut run = |cmd: &mut redis::Cmd| cmd.query::<redis::Value>(&mut *c).unwrap();
        run(redis::cmd("SET").arg(format!("{p}:film:1")).arg(r#"{"title":"TAMPERED"}"#));
        run(redis::cmd("DEL").arg(format!("{p}:film:2:summary")));
        run(redis::cmd("HSET").arg(format!("{p}:film:3:summary")).arg("stray").arg("x"));
        run(redis::cmd("HSET").arg(format!("{p}:film:4:summary")).arg("title").arg("WRONG"));
        run(redis::cmd("DEL").arg(format!("{p}:film:5")));
        run(redis::cmd("HSET").arg(&ledger).arg("6").arg(format!(r#"["{p}:film:6"]"#)));
        run(redis::cmd("DEL").arg(format!("{p}:film:7")));
        run(redis::cmd("RPUSH").arg(format!("{p}:film:7")).arg("not a string"));
    }
    let (code, out, err) = w.run_cli(&["reindex", "films"]);
    assert_eq!(code, 0, "{out}{err}\n{}", w.log_text());
    check_films(&w);
    assert!(!w.redis_hgetall("film:3:summary").contains_key("stray"), "the stray field is gone");
    let mut c = w.redis_conn();
    let entry: String = redis::cmd("HGET").arg(&ledger).arg("6").query(&mut *c).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry, serde_json::json!([format!("{p}:film:6"), format!("{p}:film:6:summary")]), "the ledger entry is whole again");
    // deriver's own count of the records it found exact and did not rewrite.
    let log: String = {
        // Without colour codes.
        let mut out = String::new();
        let mut chars = w.log_text().chars().collect::<Vec<_>>().into_iter();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                out.push(c);
            }
        }
        out
    };
    let line = log.lines().find(|l| l.contains("Redis views rewritten where they differed")).unwrap_or_else(|| panic!("no rewrite summary in the log:\n{log}"));
    let exact: usize = line
        .split("already_exact=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(exact, w.expected(FILMS_EXPECTED).len() - 7, "{line}");
    assert_eq!(w.stop(), 0);
}

/// A column whose type changes under a running daemon (`ALTER TABLE … TYPE`, which Postgres does
/// not stream) from one that skips `to_jsonb` (text) to one that needs it (float8): the reindex
/// operations.md asks for afterwards derives every record as `to_jsonb` gives it, not as the SQL
/// compiled at start would (`1e+300` instead of the digits `to_jsonb` writes).
#[test]
fn a_reindex_after_a_column_type_change_derives_as_to_jsonb_gives_it() {
    let mut w = World::new("typechange");
    w.sql("CREATE TABLE reading (id int PRIMARY KEY, value text); INSERT INTO reading VALUES (1, '1e300'), (2, '0.1'), (3, '12345678.125')");
    w.add_pipeline(
        "readings",
        "version: 1\npipeline: readings\nsource: { table: reading }\nfields: { id: reading.id, value: reading.value }\ntargets:\n  - redis: { key: \"reading:{id}\" }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["readings"], &[]);
    let view = |id: u32| -> serde_json::Value { serde_json::from_str(&w.redis_get(&format!("reading:{id}")).expect("view")).unwrap() };
    assert_eq!(view(1)["value"], "1e300", "a text column is a JSON string");

    w.sql("ALTER TABLE reading ALTER COLUMN value TYPE float8 USING value::float8");
    let (code, out, err) = w.run_cli(&["reindex", "readings"]);
    assert_eq!(code, 0, "{out}{err}\n{}", w.log_text());
    let expected = w.expected("SELECT id::text, json_build_object('id', to_jsonb(id), 'value', to_jsonb(value)) FROM reading");
    for id in 1..=3u32 {
        assert_eq!(view(id), expected[&id.to_string()], "reading {id} after the reindex");
    }
    assert!(w.log_text().contains("a field's type changed since the derivation SQL was compiled"), "{}", w.log_text());
    assert_eq!(w.stop(), 0);
}

/// `deriver reindex` run by a person at a terminal (a pseudo-terminal made by `script`): a
/// progress bar, then one final line per pipeline, through the daemon and without one.
#[test]
fn on_a_terminal_reindex_ends_with_a_final_line() {
    let mut w = World::new("reindex_tty");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    let on_tty = |w: &World| {
        let mut c = w.command();
        // `script` runs the command on a pseudo-terminal and copies what it shows.
        c.args(["-qec", &format!("{} reindex films", env!("CARGO_BIN_EXE_deriver")), "/dev/null"]);
        let program = std::process::Command::new("script");
        let mut cmd = program;
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(&w.dir).args(c.get_args()).env("TERM", "xterm");
        let out = cmd.output().expect("script (util-linux) runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        strip_ansi(&String::from_utf8_lossy(&out.stdout))
    };
    let shown = on_tty(&w);
    assert!(shown.contains("reindex films: done: generation 2 is live, ") && shown.contains(" rows in "), "{shown}");
    // Rates are whole numbers (`12,345/s`), not `12345.6789/s`.
    assert!(!shown.split_whitespace().any(|t| t.ends_with("/s") && t.contains('.')), "{shown}");
    assert_eq!(w.stop(), 0);
    // Without a daemon: the same final line.
    let shown = on_tty(&w);
    assert!(shown.contains("reindex films: done: generation 3 is live") && shown.contains(" rows in "), "{shown}");
}
