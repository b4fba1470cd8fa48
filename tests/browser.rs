//! The status and search page (`GET /`) in a real headless Chromium driven over WebDriver:
//! the pipelines table fills in, typing in the search box shows highlighted hits and facet
//! counts, the index picker starts on the biggest index and then on the one used last, an empty
//! query lists integer ids numerically, a chosen facet value leaves the other values of its facet
//! listed with their counts, with `http.token` set the token form opens the page, and the charts
//! of the last 15 minutes (lag, changes applied per second) are drawn per pipeline and move under
//! a write load.
//! Screenshots go to `target/test-artifacts/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/dev-stack.sh install --with-browser`); without them
//! the test fails and says so.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn require_browser() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: the browser test needs Debian's chromium and chromium-driver packages \
             (run `scripts/dev-stack.sh install --with-browser`, or `apt-get install -y --no-install-recommends chromium chromium-driver`)"
        );
    }
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("deriver-chromedriver-{port}.log"));
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port, _profile: tempfile::Builder::new().prefix("deriver-chromium-").tempdir().unwrap() }
    }

    async fn session(&self) -> Client {
        let profile = self._profile.path().display().to_string();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={profile}")])
        .collect::<Vec<_>>();
        let caps = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": args } });
        let Value::Object(caps) = caps else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Starts the films pipeline (with extra environment) and waits until it has caught up.
fn world(name: &str, extra: &[(&str, &str)]) -> World {
    world_of(name, &["films"], extra)
}

/// Starts these repository pipelines (each with a search index of its name) and waits until
/// they have caught up.
fn world_of(name: &str, pipelines: &[&str], extra: &[(&str, &str)]) -> World {
    let mut w = World::new(name);
    for p in pipelines {
        w.add_repo_pipeline(p);
    }
    w.setup();
    let mut cmd = w.command();
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(pipelines, pipelines);
    w
}

const WAIT: Duration = Duration::from_secs(30);

/// Types a query and waits for highlighted hits; returns the first hit's HTML.
async fn search_shows_marks(c: &Client, q: &str) -> String {
    let input = c.wait().at_most(WAIT).for_element(Locator::Css("#q")).await.expect("the search box");
    input.send_keys(q).await.unwrap();
    let mark = c.wait().at_most(WAIT).for_element(Locator::Css("#hits .hit mark")).await.expect("highlighted hits");
    assert_eq!(mark.text().await.unwrap().to_lowercase(), q.to_lowercase());
    c.find(Locator::Css("#hits .hit")).await.unwrap().html(false).await.unwrap()
}

#[test]
fn page_shows_pipelines_and_highlighted_search_hits() {
    require_browser();
    let mut w = world("browser", &[]);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        let row = c.wait().at_most(WAIT).for_element(Locator::Css("#pipelines tr[data-pipeline='films']")).await.expect("the films row");
        let text = row.text().await.unwrap();
        assert!(text.contains("films") && text.contains("streaming"), "{text}");
        let hit = search_shows_marks(&c, "dinosaur").await;
        assert!(hit.to_lowercase().contains("<mark>dinosaur</mark>"), "{hit}");
        // Facet counts for the keyword facets of the index.
        let facet = c.wait().at_most(WAIT).for_element(Locator::Css("#facets [data-facet='rating'] button")).await.expect("rating facet counts");
        assert!(facet.text().await.unwrap().chars().any(|ch| ch.is_ascii_digit()));
        let summary = c.find(Locator::Css("#summary")).await.unwrap().text().await.unwrap();
        assert!(summary.contains("hits"), "{summary}");
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(artifacts().join("ui.png"), png).unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}

/// The chart of `series` of the films pipeline as drawn: (points of its line, its `data-max`,
/// rendered width and height).
async fn films_chart(c: &Client, series: &str) -> Option<(String, usize, f64, f64, f64)> {
    let script = format!(
        "var svg = document.querySelector(\"#trends svg[data-pipeline='films'][data-series='{series}']\"); \
         if (!svg) {{ return null; }} var line = svg.querySelector('polyline'); var r = svg.getBoundingClientRect(); \
         return [line.getAttribute('points'), Number(svg.getAttribute('data-points')), Number(svg.getAttribute('data-max')), r.width, r.height];"
    );
    let v = js(c, &script).await;
    let a = v.as_array()?;
    Some((a[0].as_str().unwrap().to_string(), a[1].as_u64().unwrap() as usize, a[2].as_f64().unwrap(), a[3].as_f64().unwrap(), a[4].as_f64().unwrap()))
}

#[test]
fn the_last_15_minutes_are_drawn_per_pipeline_and_move_under_load() {
    require_browser();
    let mut w = world("browser_trends", &[]);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        // Both charts of films drawn with a few samples (one a second), at a visible size.
        let deadline = Instant::now() + WAIT;
        let (lag_before, rate_before) = loop {
            if let (Some(lag), Some(rate)) = (films_chart(&c, "lag_seconds").await, films_chart(&c, "changes_per_second").await) {
                if lag.1 >= 3 && rate.1 >= 3 {
                    break (lag, rate);
                }
            }
            assert!(Instant::now() < deadline, "the films charts were not drawn with 3 samples");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (series, chart) in [("lag", &lag_before), ("rate", &rate_before)] {
            assert!(chart.3 > 100.0 && chart.4 > 20.0, "the {series} chart has a size: {chart:?}");
            assert_eq!(chart.0.split(' ').count(), chart.1, "one point per sample: {chart:?}");
        }
        assert_eq!(rate_before.2, 0.0, "no writes yet: the rate line is flat at zero ({rate_before:?})");
        // A write load: the rate chart rises and both lines move.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let load = support::load::paced_film_load(w.url(), 50, stop.clone(), done.clone());
        let deadline = Instant::now() + WAIT;
        let (lag_after, rate_after) = loop {
            let lag = films_chart(&c, "lag_seconds").await.expect("the lag chart");
            let rate = films_chart(&c, "changes_per_second").await.expect("the rate chart");
            if rate.2 >= 5.0 && lag.1 >= lag_before.1 + 3 {
                break (lag, rate);
            }
            assert!(Instant::now() < deadline, "the charts did not move under load: lag {lag:?}, rate {rate:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap();
        assert!(done.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_ne!(rate_after.0, rate_before.0, "the rate line moved");
        assert_ne!(lag_after.0, lag_before.0, "the lag line moved");
        let caption = js(&c, "return document.querySelector(\"#trends svg[data-series='changes_per_second']\").parentNode.textContent;").await;
        assert!(caption.as_str().unwrap().starts_with("Changes applied: now"), "{caption}");
        std::fs::write(artifacts().join("ui-trends.png"), c.screenshot().await.unwrap()).unwrap();
        c.close().await.unwrap();
    });
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.stop(), 0);
}

/// Runs `script` (a function body) in the page and returns what it returns.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until the index picker lists `names` and holds the choice the page made; returns it.
async fn picked_index(c: &Client, names: &[&str]) -> String {
    for name in names {
        c.wait()
            .at_most(WAIT)
            .for_element(Locator::Css(&format!("#index option[value='{name}']")))
            .await
            .unwrap_or_else(|_| panic!("index {name} in the picker"));
    }
    js(c, "return document.getElementById('index').value;").await.as_str().unwrap().to_string()
}

/// The ids of the listed hits, in order, once the first page (20 hits) of an unfiltered search
/// of `index`, which holds `total` documents, is shown.
async fn listed_ids(c: &Client, index: &str, total: u64) -> Vec<String> {
    let script = format!(
        "var hits = document.querySelectorAll('#hits .hit'); \
         return document.getElementById('index').value === '{index}' && hits.length === 20 \
             && document.getElementById('summary').textContent.indexOf('{total} hits ') === 0 \
           ? Array.prototype.map.call(hits, function (h) {{ return h.getAttribute('data-id'); }}) : null;"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if let Value::Array(ids) = js(c, &script).await {
            return ids.iter().map(|v| v.as_str().unwrap().to_string()).collect();
        }
        assert!(Instant::now() < deadline, "no page of 20 hits of {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The values of a facet as listed: (value, count, selected).
async fn facet_values(c: &Client, facet: &str) -> Vec<(String, u64, bool)> {
    let script = format!(
        "return Array.prototype.map.call(document.querySelectorAll(\"#facets [data-facet='{facet}'] button\"), function (b) {{ \
           return [b.children[0].textContent, b.children[1].textContent, b.classList.contains('on')]; }});"
    );
    js(c, &script)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let n = v[1].as_str().unwrap();
            (v[0].as_str().unwrap().to_string(), n.parse().unwrap_or_else(|_| panic!("a count: {n:?}")), v[2].as_bool().unwrap())
        })
        .collect()
}

/// The number of hits the summary reports.
async fn summary_hits(c: &Client) -> u64 {
    let text = c.find(Locator::Css("#summary")).await.unwrap().text().await.unwrap();
    text.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a hit count in {text:?}"))
}

#[test]
fn picks_the_index_lists_ids_in_order_and_keeps_facet_values() {
    require_browser();
    // actors comes first alphabetically, films has the most documents.
    let mut w = world_of("browser_picker", &["actors", "films"], &[]);
    let films: u64 = w.sql("SELECT count(*) FROM film").parse().unwrap();
    let actors: u64 = w.sql("SELECT count(*) FROM actor").parse().unwrap();
    assert!(films > actors && actors > 20, "{films} films, {actors} actors");
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        // 1. Nothing used yet in this browser: the index with the most documents.
        assert_eq!(picked_index(&c, &["actors", "films"]).await, "films");

        // 2. An empty query lists integer ids numerically (not 1, 10, 100, 1000, 101, …).
        let expected: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        assert_eq!(listed_ids(&c, "films", films).await, expected);

        // 3. Choosing a facet value: the facet keeps listing its other values with the counts
        // they had (no other filter), the chosen one marked, and the hits are that value's.
        let before = facet_values(&c, "rating").await;
        assert!(before.len() >= 3 && before.iter().all(|(_, n, on)| *n > 0 && !on), "{before:?}");
        let (value, count, _) = before[1].clone();
        assert!(count < films);
        c.find(Locator::Css("#facets [data-facet='rating'] button:nth-of-type(2)")).await.unwrap().click().await.unwrap();
        c.wait().at_most(WAIT).for_element(Locator::Css("#facets [data-facet='rating'] button.on")).await.expect("the chosen rating");
        let after = facet_values(&c, "rating").await;
        let expect: Vec<(String, u64, bool)> = before.iter().map(|(v, n, _)| (v.clone(), *n, *v == value)).collect();
        assert_eq!(after, expect, "after choosing {value}");
        assert_eq!(summary_hits(&c).await, count);
        // A second value of the same facet adds its films (any of the chosen values).
        let (second, second_count, _) = before[0].clone();
        c.find(Locator::Css("#facets [data-facet='rating'] button:nth-of-type(1)")).await.unwrap().click().await.unwrap();
        let deadline = Instant::now() + WAIT;
        while summary_hits(&c).await != count + second_count {
            assert!(Instant::now() < deadline, "choosing {second} too shows {} hits", count + second_count);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = facet_values(&c, "rating").await;
        let expect: Vec<(String, u64, bool)> = before.iter().map(|(v, n, _)| (v.clone(), *n, *v == value || *v == second)).collect();
        assert_eq!(after, expect, "after choosing {value} and {second}");
        // Another facet counts only the chosen ratings' films.
        let categories: u64 = facet_values(&c, "category").await.iter().map(|(_, n, _)| n).sum();
        assert!(categories > 0 && categories <= count + second_count, "{categories}");
        let png = c.screenshot().await.unwrap();
        std::fs::write(artifacts().join("ui-facets.png"), png).unwrap();

        // 4. The index chosen last wins after a reload.
        c.find(Locator::Css("#index")).await.unwrap().select_by_value("actors").await.unwrap();
        assert_eq!(listed_ids(&c, "actors", actors).await, expected);
        c.refresh().await.unwrap();
        assert_eq!(picked_index(&c, &["actors", "films"]).await, "actors");
        assert_eq!(listed_ids(&c, "actors", actors).await, expected);
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}

#[test]
fn with_a_token_the_form_opens_the_page() {
    require_browser();
    let mut w = world("browser_token", &[("DERIVER__HTTP__TOKEN", "page-token")]);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}/", w.http_port);
    runtime().block_on(async {
        let c = driver.session().await;
        c.goto(&base).await.unwrap();
        let field = c.wait().at_most(WAIT).for_element(Locator::Css("form#login input#token")).await.expect("the token form");
        field.send_keys("page-token").await.unwrap();
        c.find(Locator::Css("form#login button")).await.unwrap().click().await.unwrap();
        c.wait().at_most(WAIT).for_element(Locator::Css("#pipelines tr[data-pipeline='films']")).await.expect("the page after the token");
        let hit = search_shows_marks(&c, "academy").await;
        assert!(hit.to_lowercase().contains("<mark>academy</mark>"), "{hit}");
        let png = c.screenshot().await.unwrap();
        std::fs::write(artifacts().join("ui-token.png"), png).unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}
