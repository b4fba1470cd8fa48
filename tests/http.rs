//! The HTTP API (`../shared/spec/http-api.md`) of a running daemon on real Postgres and Redis:
//! every search parameter, errors, read-your-writes (`min_lsn`, `/v1/wait`), cursor paging across
//! index reloads, the change feed (SSE) and authentication.

mod support;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use support::*;

/// A second pipeline on `film`: titles only, with fuzzy matching.
const TITLES: &str = "version: 1
pipeline: titles
source: { table: public.film, key: film_id }
fields:
  film_id: film.film_id
  title: film.title
targets:
  - search:
      index: titles
      id: film_id
      fields:
        title: { type: text, stored: true, fuzzy: 1, highlight: true }
";

struct Api {
    base: String,
    client: Client,
    token: Option<String>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body
    }

    fn err(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        &self.body["error"]
    }
}

impl Api {
    fn new(w: &World) -> Api {
        Api { base: format!("http://127.0.0.1:{}", w.http_port), client: Client::builder().timeout(Duration::from_secs(60)).build().unwrap(), token: None }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    fn answer(resp: Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, headers, body }
    }

    fn get(&self, path: &str) -> Answer {
        Api::answer(self.request(reqwest::Method::GET, path).send().unwrap())
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        Api::answer(self.request(reqwest::Method::POST, path).json(&body).send().unwrap())
    }

    fn search(&self, index: &str, body: Value) -> Answer {
        self.post(&format!("/v1/indexes/{index}/search"), body)
    }

    fn total(&self, body: Value) -> u64 {
        let r = self.search("films", body.clone()).ok();
        assert_eq!(r["total"]["relation"], "eq");
        r["total"]["value"].as_u64().unwrap_or_else(|| panic!("{body}: {r}"))
    }

    /// Waits until the daemon serves HTTP, then until it has applied everything committed so far.
    fn ready(&self, w: &mut World, redis: &[&str], indexes: &[&str]) {
        wait_for("the HTTP API", Duration::from_secs(60), || self.client.get(format!("{}/healthz", self.base)).send().is_ok_and(|r| r.status().is_success()));
        w.catch_up(redis, indexes);
        let lsn = w.current_lsn();
        self.post("/v1/wait", json!({ "lsn": lsn.to_string(), "timeout_ms": 20000 })).ok();
    }
}

fn ids(r: &Value) -> Vec<String> {
    r["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_string()).collect()
}

fn lsn(v: &Value) -> Lsn {
    v.as_str().unwrap_or_else(|| panic!("not an LSN: {v}")).parse().unwrap()
}

fn started(name: &str, extra: &[(&str, &str)]) -> (World, Api) {
    let mut w = World::new(name);
    w.add_repo_pipeline("films");
    w.add_pipeline("titles", TITLES);
    w.setup();
    let mut cmd = w.command();
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    let api = Api::new(&w);
    (w, api)
}

#[test]
fn search_parameters_results_and_errors() {
    let (mut w, api) = started("http_search", &[]);
    w.sql("INSERT INTO film (film_id, title, description, language_id, rental_rate) VALUES (5100, 'ROBOT <b>&</b> FRIENDS', 'A tale about a robot', 1, 1.50)");
    api.ready(&mut w, &["films"], &["films", "titles"]);

    // Everything, with the response shape of the spec.
    let all = api.search("films", json!({})).ok();
    let films: u64 = w.sql("SELECT count(*) FROM film").parse().unwrap();
    assert_eq!(all["total"], json!({ "value": films, "relation": "eq" }));
    assert_eq!(all["hits"].as_array().unwrap().len(), 20, "default limit");
    assert!(all["took_ms"].as_f64().is_some());
    assert!(lsn(&all["applied_lsn"]) > Lsn(0));
    assert_eq!(all["generation"], 1);
    assert!(all["next_cursor"].is_string());
    let hit = &all["hits"][0];
    for k in ["id", "score", "doc", "highlights"] {
        assert!(hit.get(k).is_some(), "hit has `{k}`: {hit}");
    }

    // q: words ANDed, phrases, field:term, -term, OR.
    let dinosaur = api.total(json!({ "q": "dinosaur" }));
    let academy = api.total(json!({ "q": "academy" }));
    let both = api.total(json!({ "q": "dinosaur academy" }));
    assert!(dinosaur > both && academy > both && both >= 1, "{dinosaur} {academy} {both}");
    assert_eq!(api.total(json!({ "q": "dinosaur -academy" })), dinosaur - both);
    assert_eq!(api.total(json!({ "q": "dinosaur OR academy" })), dinosaur + academy - both);
    let first = api.search("films", json!({ "q": "academy dinosaur", "limit": 1 })).ok();
    assert_eq!(ids(&first), ["1"], "the title match ranks first (boost 3)");
    let phrase = api.search("films", json!({ "q": "title:\"academy dinosaur\"" })).ok();
    assert_eq!(ids(&phrase), ["1"]);
    assert_eq!(api.total(json!({ "q": "title:\"dinosaur academy\"" })), 0, "a phrase keeps its order");
    let pg = api.total(json!({ "q": "rating:PG" }));
    assert_eq!(pg.to_string(), w.sql("SELECT count(*) FROM film WHERE rating = 'PG'"));
    assert_eq!(api.total(json!({ "q": "release_year:2012" })).to_string(), w.sql("SELECT count(*) FROM film WHERE release_year = 2012"));
    // Hostile input never fails.
    for q in ["\"", "\"unclosed phrase", "-", "title:", "OR OR", "((", "東京 café", "-robot -dinosaur", ":::", "rate:abc", "+", &"x".repeat(10_000)] {
        let r = api.search("films", json!({ "q": q }));
        assert_eq!(r.status, 200, "q={q}: {}", r.body);
    }
    // Typos: one from 5 letters, in every text field unless turned off (Meilisearch's default).
    let fuzzy = api.search("titles", json!({ "q": "dinosaor", "highlight": {} })).ok();
    let academy_dinosaur = fuzzy["hits"].as_array().unwrap().iter().find(|h| h["id"] == "1").unwrap_or_else(|| panic!("{fuzzy}"));
    assert_eq!(academy_dinosaur["highlights"]["title"], "ACADEMY <mark>DINOSAUR</mark>");
    let dinosaur_titles: u64 = w.sql(r"SELECT count(*) FROM film WHERE title ~ '\mDINOSAUR\M'").parse().unwrap();
    assert!(dinosaur_titles > 0);
    assert_eq!(api.total(json!({ "q": "title:dinosaor " })), dinosaur_titles);
    // `distinct` in a request: one hit per rating (a film without one counts alone).
    let per_rating = w.sql(r"SELECT count(DISTINCT rating) + count(*) FILTER (WHERE rating IS NULL) FROM film WHERE title ~ '\mDINOSAUR\M'");
    assert_eq!(api.total(json!({ "q": "title:dinosaor ", "distinct": "rating" })).to_string(), per_rating);
    api.search("films", json!({ "distinct": "title" })).err(400, "invalid_distinct");

    // filter: and / in / range / not, checked against SQL.
    let filtered = api.total(json!({ "filter": { "and": [
        { "field": "rating", "in": ["G", "PG", "NC-17"] },
        { "field": "rate", "gte": 0.99, "lt": 4.99 },
        { "not": { "field": "rating", "eq": "NC-17" } } ] } }));
    let expected = w.sql("SELECT count(*) FROM film WHERE rating::text IN ('G', 'PG') AND rental_rate >= 0.99 AND rental_rate < 4.99");
    assert_eq!(filtered.to_string(), expected);
    let or = api.total(json!({ "filter": { "or": [ { "field": "release_year", "lte": 2007 }, { "field": "rating", "eq": "G" } ] } }));
    assert_eq!(or.to_string(), w.sql("SELECT count(*) FROM film WHERE release_year <= 2007 OR rating = 'G'"));
    let with_category = api.total(json!({ "filter": { "field": "category", "exists": true } }));
    assert_eq!(with_category.to_string(), w.sql("SELECT count(DISTINCT film_id) FROM film_category"));
    assert_eq!(api.total(json!({ "filter": [ { "field": "category", "exists": false } ] })), films - with_category);

    // sort, with the score as tie-break, and offset pages.
    let by_rate = api.search("films", json!({ "q": "drama", "sort": ["rate:desc", "_score"], "limit": 100 })).ok();
    let rates: Vec<f64> = by_rate["hits"].as_array().unwrap().iter().map(|h| h["doc"]["rate"].as_f64().unwrap()).collect();
    assert!(rates.windows(2).all(|p| p[0] >= p[1]), "{rates:?}");
    let years = api.search("films", json!({ "sort": ["release_year"], "limit": 50, "fields": ["release_year"] })).ok();
    let ys: Vec<i64> = years["hits"].as_array().unwrap().iter().map(|h| h["doc"]["release_year"].as_i64().unwrap()).collect();
    assert!(ys.windows(2).all(|p| p[0] <= p[1]), "{ys:?}");
    assert_eq!(ys[0].to_string(), w.sql("SELECT min(release_year) FROM film"));
    let page2 = api.search("films", json!({ "q": "drama", "sort": ["rate:desc", "_score"], "limit": 10, "offset": 10 })).ok();
    assert_eq!(ids(&page2), ids(&by_rate)[10..20]);

    // facets, counted over the matching documents.
    let f = api.search("films", json!({ "limit": 0, "facets": { "rating": { "size": 10 }, "category": { "size": 3 } } })).ok();
    assert!(f["hits"].as_array().unwrap().is_empty());
    let ratings: Value =
        serde_json::from_str(&w.sql("SELECT json_object_agg(rating, n) FROM (SELECT rating::text, count(*) n FROM film GROUP BY 1) x")).unwrap();
    assert_eq!(f["facets"]["rating"].as_object().unwrap().len(), ratings.as_object().unwrap().len());
    for (k, v) in ratings.as_object().unwrap() {
        assert_eq!(&f["facets"]["rating"][k], v, "rating {k}");
    }
    let top: Vec<(String, u64)> = f["facets"]["category"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();
    let sql_top = w.sql(
        "SELECT string_agg(cat || '=' || n, ',' ORDER BY n DESC, cat) FROM (SELECT cat, count(*) n FROM (SELECT (SELECT min(c.name) FROM film_category fc JOIN category c USING (category_id) WHERE fc.film_id = f.film_id) cat FROM film f) x WHERE cat IS NOT NULL GROUP BY cat ORDER BY n DESC, cat LIMIT 3) y",
    );
    assert_eq!(top.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(","), sql_top);
    let drama_pg = api.search("films", json!({ "q": "drama", "filter": { "field": "rating", "eq": "PG" }, "facets": { "rating": {} }, "limit": 0 })).ok();
    assert_eq!(drama_pg["facets"]["rating"].as_object().unwrap().len(), 1);
    assert_eq!(drama_pg["facets"]["rating"]["PG"], drama_pg["total"]["value"]);

    // highlight (HTML-escaped around the tags) and fields.
    let r = api
        .search("films", json!({ "q": "robot", "highlight": { "fields": ["title", "description"] }, "fields": ["film_id", "title", "rate"], "limit": 50 }))
        .ok();
    let robot = r["hits"].as_array().unwrap().iter().find(|h| h["id"] == "5100").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(robot["highlights"]["title"], "<mark>ROBOT</mark> &lt;b&gt;&amp;&lt;/b&gt; FRIENDS");
    assert_eq!(robot["highlights"]["description"], "A tale about a <mark>robot</mark>");
    let doc = robot["doc"].as_object().unwrap();
    assert_eq!(doc.keys().collect::<Vec<_>>(), ["film_id", "title", "rate"], "the requested fields only");
    assert_eq!((doc["film_id"].as_i64(), doc["title"].as_str(), doc["rate"].as_f64()), (Some(5100), Some("ROBOT <b>&</b> FRIENDS"), Some(1.5)));
    let custom = api.search("films", json!({ "q": "title:robot", "highlight": { "fields": ["title"], "pre_tag": "[[", "post_tag": "]]" } })).ok();
    assert_eq!(custom["hits"][0]["highlights"]["title"], "[[ROBOT]] &lt;b&gt;&amp;&lt;/b&gt; FRIENDS");
    let plain = api.search("films", json!({ "q": "title:robot" })).ok();
    assert_eq!(plain["hits"][0]["highlights"], json!({}), "no highlights unless asked");

    // Documents.
    let doc = api.get("/v1/indexes/films/documents/1").ok();
    assert_eq!(doc["doc"]["title"], "ACADEMY DINOSAUR");
    assert_eq!(doc["id"], "1");
    api.get("/v1/indexes/films/documents/999999").err(404, "not_found");
    api.get("/v1/indexes/nope/documents/1").err(404, "unknown_index");

    // The index list.
    let list = api.get("/v1/indexes").ok();
    let names: Vec<&str> = list["indexes"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["films", "titles"]);
    assert_eq!(list["indexes"][0]["pipeline"], "films");
    assert!(list["indexes"][0]["fields"].as_array().unwrap().iter().any(|f| f["name"] == "category" && f["facet"] == true));

    // 400s and 404s.
    let e = api.search("films", json!({ "filter": { "field": "title", "eq": "x" } }));
    assert_eq!(e.err(400, "invalid_filter")["field"], "title");
    let e = api.search("films", json!({ "filter": { "and": [ { "field": "length", "gt": 100 } ] } }));
    assert_eq!(e.err(400, "invalid_filter")["field"], "length");
    api.search("films", json!({ "filter": { "field": "rate", "eq": "cheap" } })).err(400, "invalid_filter");
    api.search("films", json!({ "offset": 990, "limit": 20 })).err(400, "invalid_paging");
    api.search("films", json!({ "offset": 1000 })).err(400, "invalid_paging");
    api.search("films", json!({ "sort": ["title"] })).err(400, "invalid_sort");
    api.search("films", json!({ "facets": { "title": {} } })).err(400, "invalid_facet");
    api.search("films", json!({ "cursor": "not-a-cursor" })).err(400, "invalid_cursor");
    api.search("films", json!({ "min_lsn": "yesterday" })).err(400, "invalid_lsn");
    api.search("films", json!({ "qq": "typo" })).err(400, "invalid_request");
    let bad_json = Api::answer(api.request(reqwest::Method::POST, "/v1/indexes/films/search").body("{\"q\": ").send().unwrap());
    bad_json.err(400, "invalid_request");
    api.search("nope", json!({})).err(404, "unknown_index");
    api.get("/v1/nothing/here").err(404, "not_found");

    // Request metrics.
    let metrics = api.client.get(format!("{}/metrics", api.base)).send().unwrap().text().unwrap();
    assert!(metrics.contains("deriver_http_requests_total{method=\"POST\",route=\"/v1/indexes/{index}/search\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("status=\"400\""));
    assert!(metrics.contains("deriver_http_request_duration_seconds"));
    assert_eq!(w.stop(), 0);
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

struct Feed {
    reader: BufReader<Response>,
}

impl Feed {
    fn open(api: &Api, pipeline: &str, since: Option<Lsn>) -> Feed {
        let path = match since {
            Some(s) => format!("/v1/pipelines/{pipeline}/changes?since={s}"),
            None => format!("/v1/pipelines/{pipeline}/changes"),
        };
        let resp = api.request(reqwest::Method::GET, &path).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Feed { reader: BufReader::new(resp) }
    }

    fn next(&mut self) -> Event {
        let mut ev = Event::default();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("reading the change feed");
            assert!(n > 0, "the change feed ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if ev.event.is_some() || !ev.data.is_empty() {
                    return ev;
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let v = v.strip_prefix(' ').unwrap_or(v);
            match k {
                "event" => ev.event = Some(v.to_string()),
                "id" => ev.id = Some(v.to_string()),
                "data" => ev.data.push_str(v),
                _ => {}
            }
        }
    }

    fn next_change(&mut self) -> (Lsn, Value) {
        let ev = self.next();
        assert_eq!(ev.event, None, "{ev:?}");
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        let lsn = lsn(&data["lsn"]);
        assert_eq!(ev.id.as_deref(), Some(lsn.to_string().as_str()));
        (lsn, data)
    }
}

#[test]
fn read_your_writes_cursors_waits_and_the_change_feed() {
    let (mut w, api) = started("http_fresh", &[]);
    w.sql("INSERT INTO film (film_id, title, language_id, rental_rate) VALUES (5003, 'DOOMED', 1, 4.99)");
    api.ready(&mut w, &["films"], &["films", "titles"]);
    let films: usize = w.sql("SELECT count(*) FROM film").parse().unwrap();

    // min_lsn: the write is visible in the answer.
    w.sql("UPDATE film SET title = 'FRESH TITLE' WHERE film_id = 7");
    let after = w.current_lsn();
    let r = api.search("films", json!({ "q": "title:fresh", "min_lsn": after.to_string(), "timeout_ms": 20000 })).ok();
    assert_eq!(ids(&r), ["7"]);
    assert!(lsn(&r["applied_lsn"]) >= after);
    let d = api.get(&format!("/v1/indexes/films/documents/7?min_lsn={after}&timeout_ms=20000")).ok();
    assert_eq!(d["doc"]["title"], "FRESH TITLE");
    // … and 503 with Retry-After when the index cannot reach it in time.
    let far = api.search("films", json!({ "min_lsn": "FFFFFFF/0", "timeout_ms": 200 }));
    let e = far.err(503, "lsn_not_reached");
    assert!(lsn(&e["applied_lsn"]) >= after);
    assert_eq!(far.headers["retry-after"], "1");
    let far_doc = api.get("/v1/indexes/films/documents/7?min_lsn=FFFFFFF/0&timeout_ms=100");
    far_doc.err(503, "lsn_not_reached");
    assert!(far_doc.headers.contains_key("retry-after"));
    api.get("/v1/indexes/films/documents/7?min_lsn=zzz").err(400, "invalid_lsn");

    // POST /v1/wait.
    let waited = api.post("/v1/wait", json!({ "lsn": after.to_string(), "pipelines": ["films"], "timeout_ms": 20000 })).ok();
    assert!(lsn(&waited["applied_lsn"]) >= after);
    api.post("/v1/wait", json!({ "lsn": after.to_string() })).ok();
    api.post("/v1/wait", json!({ "lsn": "FFFFFFF/0", "pipelines": ["films", "titles"], "timeout_ms": 200 })).err(504, "lsn_not_reached");
    api.post("/v1/wait", json!({ "lsn": "16B3F70" })).err(400, "invalid_lsn");
    api.post("/v1/wait", json!({ "lsn": "0/1", "pipelines": ["nope"] })).err(404, "unknown_pipeline");

    // Cursor paging across index reloads: writes land between pages.
    let sort = json!(["rate:asc"]);
    let first = api.search("films", json!({ "sort": sort, "limit": 100 })).ok();
    let mut seen: Vec<String> = ids(&first);
    let mut cursor = first["next_cursor"].as_str().unwrap().to_string();
    w.sql("INSERT INTO film (film_id, title, language_id, rental_rate) VALUES (5001, 'BEHIND THE CURSOR', 1, 0.10)");
    w.sql("INSERT INTO film (film_id, title, language_id, rental_rate) VALUES (5002, 'AHEAD OF THE CURSOR', 1, 9.99)");
    w.sql("DELETE FROM film WHERE film_id = 5003");
    let written = w.current_lsn();
    let generation = first["generation"].clone();
    loop {
        let page = api.search("films", json!({ "sort": sort, "limit": 100, "cursor": cursor, "min_lsn": written.to_string(), "timeout_ms": 20000 })).ok();
        assert_eq!(page["generation"], generation);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no film twice");
    assert!(seen.contains(&"5002".to_string()), "a film added after the cursor shows up");
    assert!(!seen.contains(&"5001".to_string()), "a film added before the cursor does not");
    assert!(!seen.contains(&"5003".to_string()), "a film deleted before its page does not");
    // Every film once: 5003 went, 5002 came, 5001 sorted before the pages still to read.
    assert_eq!(seen.len(), films);

    // The change feed: resume after a known LSN, then follow live changes.
    w.sql("UPDATE film SET title = 'CHANGE ONE' WHERE film_id = 11");
    api.ready(&mut w, &["films"], &["films"]);
    let since = w.current_lsn();
    w.sql("UPDATE film SET title = 'CHANGE TWO' WHERE film_id = 12");
    api.ready(&mut w, &["films"], &["films"]);
    w.sql("UPDATE film SET title = 'CHANGE THREE' WHERE film_id = 13");
    api.ready(&mut w, &["films"], &["films"]);
    let mut feed = Feed::open(&api, "films", Some(since));
    let (l2, two) = feed.next_change();
    assert_eq!(two["keys"], json!(["12"]), "{two}");
    assert!(l2 > since);
    let (l3, three) = feed.next_change();
    assert_eq!(three["keys"], json!(["13"]));
    assert!(l3 > l2);
    w.sql("DELETE FROM film WHERE film_id = 5002");
    let (l4, four) = feed.next_change();
    assert_eq!(four["deleted"], json!(["5002"]), "{four}");
    assert!(l4 > l3);
    // Resuming from the last id received gives what came after it, nothing before.
    w.sql("UPDATE film SET title = 'CHANGE FIVE' WHERE film_id = 15");
    let mut resumed = Feed::open(&api, "films", Some(l4));
    let (_, five) = resumed.next_change();
    assert_eq!(five["keys"], json!(["15"]));
    // From before the daemon started: re-read everything.
    let mut old = Feed::open(&api, "films", Some(Lsn(1)));
    let reset = old.next();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    api.get("/v1/pipelines/nope/changes").err(404, "unknown_pipeline");
    api.get("/v1/pipelines/films/changes?since=nope").err(400, "invalid_lsn");
    drop((feed, resumed));
    // A clean stop does not wait for change-feed clients to leave.
    assert_eq!(w.stop(), 0);
    drop(old);
}

#[test]
fn token_auth_body_limit_and_page() {
    let (mut w, mut api) = started("http_auth", &[("DERIVER__HTTP__TOKEN", "s3cret-token")]);
    wait_for("the HTTP API", Duration::from_secs(60), || api.client.get(format!("{}/healthz", api.base)).send().is_ok_and(|r| r.status().is_success()));
    // Without the token: only /healthz.
    for path in ["/v1/status", "/v1/indexes", "/readyz", "/metrics", "/v1/pipelines/films/changes"] {
        api.get(path).err(401, "unauthorized");
    }
    api.search("films", json!({})).err(401, "unauthorized");
    api.token = Some("wrong".into());
    api.get("/v1/status").err(401, "unauthorized");
    api.token = None;
    // A browser opening the page without the token gets the token form, not the page.
    let login = api.client.get(format!("{}/", api.base)).header("accept", "text/html").send().unwrap();
    assert_eq!(login.status().as_u16(), 401);
    let html = login.text().unwrap();
    assert!(html.contains("id=\"token\"") && !html.contains("id=\"pipelines\""), "{html}");

    api.token = Some("s3cret-token".into());
    api.ready(&mut w, &["films"], &["films", "titles"]);
    api.get("/v1/status").ok();
    assert_eq!(api.search("films", json!({ "q": "academy dinosaur", "limit": 1 })).ok()["hits"][0]["id"], "1");
    let page = api.request(reqwest::Method::GET, "/").header("accept", "text/html").send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(page.text().unwrap().contains("id=\"pipelines\""));

    // Bodies over 1 MiB are refused with a JSON error.
    let big = json!({ "q": "x".repeat(2 * 1024 * 1024) });
    api.search("films", big).err(413, "payload_too_large");
    assert_eq!(w.stop(), 0);
}

/// A position past the last change — a write followed by WAL with nothing for deriver in it (a
/// checkpoint record) — is reached as soon as the server reports it, not at the next idle
/// heartbeat (here 30 s, beyond the wait's timeout).
#[test]
fn wait_past_the_last_change_does_not_wait_for_the_idle_heartbeat() {
    let (mut w, api) = started("http_waitidle", &[("DERIVER__RUNTIME__IDLE_MS", "30000")]);
    api.ready(&mut w, &["films"], &["films", "titles"]);
    for round in 0..3 {
        w.sql(&format!("UPDATE film SET title = 'QUIET {round}' WHERE film_id = 8"));
        w.sql("CHECKPOINT");
        let past = w.current_lsn();
        let r = api.post("/v1/wait", json!({ "lsn": past.to_string(), "timeout_ms": 10000 }));
        assert_eq!(r.status, 200, "round {round}: {}\n{}", r.body, w.log_text());
        assert!(lsn(&r.body["applied_lsn"]) >= past, "{}", r.body);
        assert_eq!(w.index_docs("films")["8"]["title"], format!("QUIET {round}"));
    }
    assert_eq!(w.stop(), 0);
}
