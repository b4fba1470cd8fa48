//! The Meilisearch-compatible API (`src/http/meili/`) driven by the real clients, against a daemon
//! on real Postgres: the `meilisearch` JS client over every route (tests/meili/client.mjs), the
//! Python client (tests/meili/smoke.py), and the InstantSearch page of `examples/instantsearch`
//! in headless Chromium. Answers are checked against SQL and against deriver's own `/v1` API.
//!
//! The clients are pinned in tests/meili/ and installed by `scripts/dev-stack.sh install
//! --with-browser` into `.dev/meili-clients` (or `DERIVER_MEILI_CLIENTS`); without them the tests
//! fail and say so.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::*;

const KEY: &str = "meili-master-key";

fn clients_dir() -> PathBuf {
    let dir = std::env::var_os("DERIVER_MEILI_CLIENTS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/meili-clients"));
    for need in ["node_modules/meilisearch/package.json", "node_modules/@meilisearch/instant-meilisearch/package.json", "py/bin/python"] {
        assert!(
            dir.join(need).exists(),
            "{} is missing: install the pinned Meilisearch clients with `scripts/dev-stack.sh install --with-browser`",
            dir.join(need).display()
        );
    }
    dir
}

fn started(name: &str) -> World {
    let mut w = World::new(name);
    w.add_repo_pipeline("films");
    w.setup();
    let mut cmd = w.command();
    cmd.env("DERIVER__HTTP__TOKEN", KEY);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&["films"], &["films"]);
    w
}

/// Counts films (as the films pipeline derives them) matching a SQL condition.
fn films_where(w: &World, cond: &str) -> u64 {
    let sql = format!(
        "WITH d AS (SELECT f.film_id, f.rating::text AS rating, f.rental_rate AS rate, f.release_year, \
           (SELECT min(c.name) FROM film_category fc JOIN category c USING (category_id) WHERE fc.film_id = f.film_id) AS category, \
           (SELECT count(*) FROM inventory i WHERE i.film_id = f.film_id) AS copies FROM film f) \
         SELECT count(*) FROM d WHERE {cond}"
    );
    w.sql(&sql).parse().unwrap()
}

/// Meilisearch counts hits up to `maxTotalHits` (1000).
fn capped(n: u64) -> u64 {
    n.min(1000)
}

fn v1_total(w: &World, body: Value) -> u64 {
    let r: Value = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/indexes/films/search", w.http_port))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    r["total"]["value"].as_u64().unwrap_or_else(|| panic!("{r}"))
}

fn run_script(program: &Path, script: &str, envs: &[(&str, String)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/meili").join(script);
    let out =
        Command::new(program).arg(&path).envs(envs.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}"))
}

fn error_of<'a>(v: &'a Value, name: &str, status: u64, code: &str) -> &'a Value {
    let e = &v[name]["error"];
    assert_eq!((e["status"].as_u64(), e["code"].as_str()), (Some(status), Some(code)), "{name}: {}", v[name]);
    let link = e["link"].as_str().unwrap_or_default();
    assert!(!link.is_empty() && e["type"].is_string(), "{name}: Meilisearch's error shape: {e}");
    e
}

#[test]
fn the_js_client_drives_every_route() {
    let clients = clients_dir();
    let mut w = started("meili_js");
    // Read-your-writes: a film committed just before the client starts, read at its LSN.
    w.sql("INSERT INTO film (film_id, title, description, language_id, rental_rate, rating) VALUES (9001, 'ZEPHYR QUOKKA', 'A quokka story', 1, 2.99, 'G')");
    let lsn = w.current_lsn();
    let v = run_script(
        Path::new("node"),
        "client.mjs",
        &[
            ("MEILI_CLIENTS", clients.display().to_string()),
            ("MEILI_HOST", format!("http://127.0.0.1:{}", w.http_port)),
            ("MEILI_KEY", KEY.to_string()),
            ("MIN_LSN", lsn.to_string()),
            ("RYW_ID", "9001".to_string()),
        ],
    );
    let total: u64 = w.sql("SELECT count(*) FROM film").parse().unwrap();
    assert_eq!(v["ryw_param"]["hits"][0]["title"], "ZEPHYR QUOKKA", "{}", v["ryw_param"]);
    assert_eq!(v["ryw_header"]["title"], "ZEPHYR QUOKKA", "{}", v["ryw_header"]);

    assert_eq!(v["health"], json!({ "status": "available" }));
    assert!(v["version"]["pkgVersion"].is_string());
    assert_eq!(v["indexes"], json!([{ "uid": "films", "primaryKey": "film_id" }]));
    assert_eq!(v["index"], json!({ "uid": "films", "primaryKey": "film_id" }));
    assert_eq!((v["raw_index"]["uid"].as_str(), v["raw_index"]["dates"].as_bool()), (Some("films"), Some(true)));
    assert_eq!(v["stats"]["numberOfDocuments"], total);
    assert_eq!(v["stats"]["fieldDistribution"]["category"], films_where(&w, "category IS NOT NULL"));
    assert_eq!(v["global_stats"]["indexes"]["films"]["numberOfDocuments"], total);
    let filterable = json!(["language", "category", "rating", "rate", "release_year", "copies", "special_features", "last_update"]);
    assert_eq!(v["settings"]["filterableAttributes"], filterable);
    assert_eq!(v["settings"]["searchableAttributes"], json!(["title", "description", "actors"]));
    assert_eq!(v["filterable"], filterable);
    assert_eq!(v["tasks"]["results"], json!([]));

    // One search with every parameter.
    let s = &v["search"];
    let expected = v1_total(&w, json!({ "q": "dinosaur", "filter": { "and": [ { "field": "rating", "eq": "PG" }, { "field": "rate", "gte": 2.99 } ] } }));
    assert!(expected > 0);
    assert_eq!(s["estimatedTotalHits"], expected, "{s}");
    assert_eq!((s["limit"].as_u64(), s["offset"].as_u64(), s["query"].as_str()), (Some(5), Some(0), Some("dinosaur")));
    let hits = s["hits"].as_array().unwrap();
    assert_eq!(hits.len() as u64, expected.min(5));
    for h in hits {
        assert_eq!(h["rating"], "PG");
        assert!(h["rate"].as_f64().unwrap() >= 2.99, "{h}");
        assert!(h.get("category").is_none(), "attributesToRetrieve: {h}");
        let score = h["_rankingScore"].as_f64().unwrap();
        assert!(score > 0.0 && score <= 1.0, "{h}");
        let f = &h["_formatted"];
        let marked = format!("{}{}", f["title"], f["description"]).to_lowercase();
        assert!(marked.contains("<b>dinosaur</b>"), "highlighted: {f}");
        assert!(f["description"].as_str().unwrap().split_whitespace().count() <= 7, "cropped to 5 words: {f}");
        assert!(f["film_id"].is_string(), "numbers as strings in _formatted");
        assert!(h["_matchesPosition"].as_object().is_some_and(|m| !m.is_empty()), "{h}");
    }
    assert_eq!(s["facetDistribution"]["rating"], json!({ "PG": expected }));
    let cats: u64 = s["facetDistribution"]["category"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert!(cats <= expected && cats > 0);
    assert!(s["facetStats"]["rate"]["min"].as_f64().unwrap() >= 2.99, "{s}");

    let g = &v["search_get"];
    assert_eq!(g["estimatedTotalHits"], v1_total(&w, json!({ "q": "academy", "filter": { "field": "rating", "eq": "PG" } })));
    assert!(g["hits"].as_array().unwrap().iter().all(|h| h.as_object().unwrap().len() == 2), "{g}");

    let sorted: Vec<(f64, i64)> =
        v["sorted"]["hits"].as_array().unwrap().iter().map(|h| (h["rate"].as_f64().unwrap(), h["release_year"].as_i64().unwrap())).collect();
    assert!(sorted.windows(2).all(|p| p[0].0 > p[1].0 || (p[0].0 == p[1].0 && p[0].1 <= p[1].1)), "{sorted:?}");
    assert_eq!(sorted[0].0.to_string(), w.sql("SELECT max(rental_rate)::float8 FROM film"));

    let p = &v["paged"];
    let g_count = films_where(&w, "rating = 'G'");
    assert_eq!((p["totalHits"].as_u64(), p["totalPages"].as_u64(), p["page"].as_u64()), (Some(capped(g_count)), Some(capped(g_count).div_ceil(7)), Some(3)));
    assert_eq!(p["hits"].as_array().unwrap().len(), 7);

    let c = &v["counts"];
    for (name, cond) in [
        ("eq", "rating = 'NC-17'"),
        ("ne", "rating IS DISTINCT FROM 'G'"),
        ("gt", "rate > 2.99"),
        ("lte", "rate <= 0.99"),
        ("to", "release_year BETWEEN 2006 AND 2010"),
        ("in", "category IN ('Action', 'Sci-Fi', 'Documentary')"),
        ("not_in", "category IS DISTINCT FROM 'Action'"),
        ("exists", "category IS NOT NULL"),
        ("not_exists", "category IS NULL"),
        ("is_null", "category IS NULL"),
        ("or_and", "rating IN ('G', 'PG') AND rate <> 4.99"),
        ("array", "rating IN ('G', 'PG') AND copies > 5"),
    ] {
        assert_eq!(c[name].as_u64(), Some(capped(films_where(&w, cond))), "{name}: {cond}");
    }

    assert_eq!(v["multi"]["results"][0]["indexUid"], "films");
    assert!(v["multi"]["results"][0]["hits"].as_array().unwrap().len() <= 2);
    assert_eq!(v["multi"]["results"][1]["estimatedTotalHits"], films_where(&w, "rating = 'R'"));
    let fed = v["federated"]["hits"].as_array().unwrap();
    let distinct = v1_total(&w, json!({ "q": "dinosaur" })) + v1_total(&w, json!({ "q": "academy" })) - v1_total(&w, json!({ "q": "dinosaur academy" }));
    assert_eq!(fed.len() as u64, distinct.min(6), "each film once: {}", v["federated"]);
    let weighted: Vec<f64> = fed.iter().map(|h| h["_federation"]["weightedRankingScore"].as_f64().unwrap()).collect();
    assert!(weighted.windows(2).all(|p| p[0] >= p[1]), "{weighted:?}");
    assert_eq!(fed[0]["_federation"]["queriesPosition"], 1, "the academy query weighs double");

    assert_eq!(v["facet_search"]["facetHits"], json!([{ "value": "Documentary", "count": films_where(&w, "category = 'Documentary'") }]));
    let by_rating: Value = serde_json::from_str(&w.sql(
        "SELECT json_object_agg(rating, n) FROM (SELECT f.rating::text AS rating, count(*) AS n FROM film f WHERE (SELECT min(c.name) FROM film_category fc JOIN category c USING (category_id) WHERE fc.film_id = f.film_id) = 'Documentary' GROUP BY 1) x",
    ))
    .unwrap();
    let got: serde_json::Map<String, Value> =
        v["facet_search_filtered"]["facetHits"].as_array().unwrap().iter().map(|h| (h["value"].as_str().unwrap().to_string(), h["count"].clone())).collect();
    assert_eq!(Value::Object(got), by_rating);

    assert_eq!(v["document"], json!({ "film_id": 1, "title": "ACADEMY DINOSAUR" }));
    let d = &v["documents"];
    assert_eq!((d["offset"].as_u64(), d["limit"].as_u64(), d["total"].as_u64()), (Some(10), Some(3), Some(total)));
    assert_eq!(
        d["results"],
        json!([{ "film_id": 11, "title": "ALAMO VIDEOTAPE" }, { "film_id": 12, "title": "ALASKA PHANTOM" }, { "film_id": 13, "title": "ALI FOREVER" }])
    );
    let df = &v["documents_filtered"];
    assert_eq!(df["total"], g_count);
    let first_g: Vec<u64> = w
        .sql("SELECT string_agg(film_id::text, ',' ORDER BY film_id) FROM (SELECT film_id FROM film WHERE rating = 'G' ORDER BY film_id LIMIT 2) x")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(df["results"], json!([{ "film_id": first_g[0], "rating": "G" }, { "film_id": first_g[1], "rating": "G" }]));

    error_of(&v, "err_index", 404, "index_not_found");
    let e = error_of(&v, "err_filter", 400, "invalid_search_filter");
    assert!(e["message"].as_str().unwrap().contains("Attribute `title` is not filterable"), "{e}");
    error_of(&v, "err_filter_syntax", 400, "invalid_search_filter");
    error_of(&v, "err_sort", 400, "invalid_search_sort");
    error_of(&v, "err_document", 404, "document_not_found");
    for name in ["err_add", "err_settings", "err_delete", "err_create"] {
        let e = error_of(&v, name, 405, "index_derived_from_postgres");
        assert!(e["message"].as_str().unwrap().contains("derived from PostgreSQL"), "{e}");
    }
    error_of(&v, "err_no_key", 401, "missing_authorization_header");
    error_of(&v, "err_bad_key", 403, "invalid_api_key");

    // Tenant tokens made by the client's own generateTenantToken.
    let t = &v["tenant_search"];
    assert_eq!(t["estimatedTotalHits"], g_count, "{t}");
    assert!(t["hits"].as_array().unwrap().iter().all(|h| h["rating"] == "G"), "{t}");
    assert_eq!(v["tenant_widen"]["estimatedTotalHits"], 0);
    assert_eq!(v["tenant_multi"]["results"][0]["estimatedTotalHits"], g_count);
    for name in ["tenant_documents", "tenant_other_index", "tenant_expired", "tenant_forged"] {
        error_of(&v, name, 403, "invalid_api_key");
    }
    assert!(v["tenant_expired"]["error"]["message"].as_str().unwrap().contains("expired"));
    assert_eq!(w.stop(), 0);
}

#[test]
fn the_python_client_smoke_test() {
    let clients = clients_dir();
    let mut w = started("meili_py");
    let v =
        run_script(&clients.join("py/bin/python"), "smoke.py", &[("MEILI_HOST", format!("http://127.0.0.1:{}", w.http_port)), ("MEILI_KEY", KEY.to_string())]);
    assert_eq!(v["health"], json!({ "status": "available" }));
    assert_eq!(v["indexes"], json!(["films"]));
    let expected = v1_total(
        &w,
        json!({ "q": "dinosaur", "filter": { "and": [ { "field": "rating", "eq": "PG" }, { "or": [ { "field": "rate", "eq": 0.99 }, { "field": "rate", "eq": 2.99 } ] } ] } }),
    );
    assert!(expected > 0);
    assert_eq!(v["search"]["total"], expected);
    assert_eq!(v["search"]["ratings"], json!(["PG"]));
    assert_eq!(v["document"], "ACADEMY DINOSAUR");
    assert!(v["settings"].as_array().unwrap().contains(&json!("category")));
    assert_eq!(v["write"], json!({ "code": "index_derived_from_postgres", "status": 405 }));
    assert_eq!(v["bad_filter"]["code"], "invalid_search_filter");
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------- the browser

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(30);

/// A child process killed when dropped (chromedriver, the static file server).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn browser(port: u16, profile: &Path) -> Browser {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let Value::Object(caps) = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": args } }) else { unreachable!() };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session")
}

async fn js(c: &Browser, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns something other than null or false; returns it.
async fn until(c: &Browser, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = js(c, script).await;
        if !v.is_null() && v != json!(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const HITS: &str = "var items = document.querySelectorAll('#hits .ais-Hits-item'); \
    return items.length ? Array.prototype.map.call(items, function (i) { return { html: i.innerHTML, rating: i.querySelector('[data-rating]').getAttribute('data-rating') }; }) : null;";

#[test]
fn the_instantsearch_example_searches_filters_and_pages_in_chromium() {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(Path::new(bin).exists(), "{bin} is missing: run `scripts/dev-stack.sh install --with-browser`");
    }
    let clients = clients_dir();
    let mut w = started("meili_instantsearch");
    // The example folder as a user serves it: index.html beside its node_modules.
    let site = tempfile::Builder::new().prefix("deriver-instantsearch-").tempdir().unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/instantsearch/index.html"), site.path().join("index.html")).unwrap();
    std::os::unix::fs::symlink(clients.join("node_modules"), site.path().join("node_modules")).unwrap();
    let web_port = free_port();
    let _web = Proc(
        Command::new("python3")
            .args(["-m", "http.server", &web_port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(site.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(web_port, "the static file server");
    let driver_port = free_port();
    let _driver = Proc(Command::new(CHROMEDRIVER).arg(format!("--port={driver_port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_port(driver_port, "chromedriver");
    let profile = tempfile::Builder::new().prefix("deriver-chromium-").tempdir().unwrap();
    let page = format!("http://127.0.0.1:{web_port}/index.html?host=http://127.0.0.1:{}&key={KEY}&index=films", w.http_port);
    let drama = v1_total(&w, json!({ "q": "drama" }));
    assert!(drama > 12, "{drama} dramas: enough to page");
    // (Counted here: the blocking HTTP client cannot run inside the browser's runtime.)
    let by_rating: std::collections::HashMap<String, u64> = ["G", "PG", "PG-13", "R", "NC-17"]
        .into_iter()
        .map(|r| (r.to_string(), v1_total(&w, json!({ "q": "drama", "filter": { "field": "rating", "eq": r } }))))
        .collect();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let c = browser(driver_port, profile.path()).await;
        c.goto(&page).await.unwrap();
        // Placeholder search: the first hits show up before anything is typed.
        until(&c, "the first hits", HITS).await;
        // Type a query: highlighted hits, and the count the index has.
        let input = c.wait().at_most(WAIT).for_element(Locator::Css(".ais-SearchBox-input")).await.expect("the search box");
        input.send_keys("drama").await.unwrap();
        let hits = until(&c, "highlighted hits", &format!("var h = (function () {{ {HITS} }})(); return h && h.every(function (x) {{ return /<mark[^>]*>drama/i.test(x.html); }}) ? h : null;")).await;
        assert_eq!(hits.as_array().unwrap().len() as u64, drama.min(6));
        let stats = until(&c, "the stats", "var s = document.querySelector('#stats'); return s && /\\d/.test(s.textContent) ? s.textContent : null;").await;
        assert!(stats.as_str().unwrap().contains(&format!("{drama} result")), "{stats} ({drama} expected)");
        // Click a rating: every hit has it, and the count is the v1 API's for the same search.
        let label = until(&c, "the rating facet", "var l = document.querySelector('#rating .ais-RefinementList-labelText'); return l ? l.textContent : null;").await;
        let rating = label.as_str().unwrap().to_string();
        c.find(Locator::Css("#rating .ais-RefinementList-checkbox")).await.unwrap().click().await.unwrap();
        let filtered = by_rating[&rating];
        until(
            &c,
            "hits of the chosen rating",
            &format!("var h = (function () {{ {HITS} }})(); return h && h.every(function (x) {{ return x.rating === '{rating}'; }}) && document.querySelector('#stats').textContent.indexOf('{filtered} result') >= 0;"),
        )
        .await;
        std::fs::write(artifacts.join("instantsearch-filtered.png"), c.screenshot().await.unwrap()).unwrap();
        // Page 2: other hits, still highlighted (and of that rating when it has a second page).
        if filtered <= 6 {
            // Too few to page through: page the unfiltered search instead.
            c.find(Locator::Css("#rating .ais-RefinementList-checkbox")).await.unwrap().click().await.unwrap();
        }
        let first: Vec<String> = until(&c, "page 1", HITS).await.as_array().unwrap().iter().map(|h| h["html"].as_str().unwrap().to_string()).collect();
        c.find(Locator::Css(".ais-Pagination-item--nextPage a")).await.expect("a next page link").click().await.unwrap();
        until(&c, "page 2 selected", "var s = document.querySelector('.ais-Pagination-item--selected'); return s && s.textContent.trim() === '2';").await;
        let first_html = serde_json::to_string(&first[0]).unwrap();
        let second = until(&c, "page 2 hits", &format!("var h = (function () {{ {HITS} }})(); return h && h[0].html !== {first_html} ? h : null;")).await;
        let second: Vec<String> = second.as_array().unwrap().iter().map(|h| h["html"].as_str().unwrap().to_string()).collect();
        assert!(second.iter().all(|h| !first.contains(h)), "page 2 shows other hits");
        assert!(second.iter().all(|h| h.to_lowercase().contains(">drama")), "{second:?}");
        std::fs::write(artifacts.join("instantsearch-page2.png"), c.screenshot().await.unwrap()).unwrap();
        c.close().await.unwrap();
    });
    assert_eq!(w.stop(), 0);
}
