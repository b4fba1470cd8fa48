//! Relevance settings of a search target (synonyms, stop words, prefix search, typo tolerance,
//! distinct) end to end: a daemon on real Postgres, searched through deriver's `/v1` API and
//! through the real `meilisearch` JS and Python clients, answers checked against SQL over the
//! same films.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const KEY: &str = "relevance-key";

/// Two indexes of the same films: `rel` with synonyms, stop words and the default typos and
/// prefix; `rel_distinct` with one hit per rating, exact words and no prefix.
const PIPELINE: &str = "version: 1
pipeline: rel
source: { table: public.film, key: film_id }
fields:
  film_id: film.film_id
  title: film.title
  rating: film.rating::text
  rate: { sql: film.rental_rate, type: f64 }
targets:
  - search:
      index: rel
      id: film_id
      fields:
        title: { type: text, stored: true, highlight: true }
        rating: { type: keyword, facet: true, stored: true }
        rate: { type: f64, filterable: true, sortable: true, stored: true }
      synonyms:
        saurian: [dinosaur]
        dinosaur: [saurian]
        reptile: [dinosaur]
      stop_words: [the, of]
  - search:
      index: rel_distinct
      id: film_id
      fields:
        title: { type: text, stored: true }
        rating: { type: keyword, facet: true, stored: true }
        rate: { type: f64, filterable: true, sortable: true, stored: true }
      distinct: rating
      prefix_search: off
      typo_tolerance: { enabled: false }
";

fn started(name: &str) -> World {
    let mut w = World::new(name);
    w.add_pipeline("rel", PIPELINE);
    w.setup();
    let mut cmd = w.command();
    cmd.env("DERIVER__HTTP__TOKEN", KEY);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&w.log).unwrap();
    w.daemon = Some(cmd.arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap());
    w.catch_up(&[], &["rel", "rel_distinct"]);
    w
}

fn search(w: &World, index: &str, body: Value) -> Value {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{}/v1/indexes/{index}/search", w.http_port))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .unwrap();
    r.json().unwrap()
}

fn total(w: &World, index: &str, q: &str) -> u64 {
    let r = search(w, index, json!({ "q": q, "limit": 0 }));
    r["total"]["value"].as_u64().unwrap_or_else(|| panic!("{q}: {r}"))
}

/// Films whose title matches a Postgres regular expression.
fn titles(w: &World, regex: &str) -> u64 {
    w.sql(&format!("SELECT count(*) FROM film WHERE title ~ '{regex}'")).parse().unwrap()
}

fn ratings(w: &World) -> Vec<String> {
    assert_eq!(w.sql("SELECT count(*) FROM film WHERE rating IS NULL"), "0", "every film has a rating: one group each");
    let mut v: Vec<String> = w.sql("SELECT string_agg(DISTINCT rating::text, ',') FROM film").split(',').map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn relevance_settings_through_the_native_api() {
    let w = started("relevance_native");
    let dinosaur = titles(&w, r"\mDINOSAUR\M");
    assert!(dinosaur > 1, "the corpus has DINOSAUR titles");
    assert_eq!(titles(&w, r"\m(SAURIAN|REPTILE)\M"), 0);
    // Typos (on by default: one from 5 letters); exact on the index that turns them off.
    assert_eq!(total(&w, "rel", "dinosaor "), dinosaur);
    assert_eq!(total(&w, "rel", "dinosuar "), dinosaur, "a transposition is one typo");
    assert_eq!(total(&w, "rel_distinct", "dinosaor "), 0);
    // Prefix search on the last word, unless a space follows or the target turns it off.
    assert_eq!(total(&w, "rel", "dino"), titles(&w, r"\mDINO"));
    assert_eq!(total(&w, "rel", "dino "), titles(&w, r"\mDINO\M"));
    assert_eq!(titles(&w, r"\mDINO\M"), 0);
    assert!(total(&w, "rel", "academy dino") >= 1);
    assert_eq!(total(&w, "rel", "dino academy"), 0, "only the last word is a prefix");
    let r = search(&w, "rel", json!({ "q": "academy dino", "highlight": {} }));
    assert_eq!(r["hits"][0]["highlights"]["title"], "<mark>ACADEMY</mark> <mark>DINOSAUR</mark>", "{r}");
    // Synonyms: both ways where declared both ways, one way otherwise; stop words left out.
    assert_eq!(total(&w, "rel", "saurian "), dinosaur);
    assert_eq!(total(&w, "rel", "reptile "), dinosaur);
    assert_eq!(total(&w, "rel", "the dinosaur of "), dinosaur);
    // Distinct: one hit per rating, facets counting those hits, every page a new rating.
    let all = search(&w, "rel_distinct", json!({ "facets": { "rating": {} }, "limit": 50 }));
    let expected = ratings(&w);
    assert_eq!(all["total"]["value"].as_u64(), Some(expected.len() as u64), "{all}");
    let mut got: Vec<String> = all["hits"].as_array().unwrap().iter().map(|h| h["doc"]["rating"].as_str().unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, expected);
    assert!(all["facets"]["rating"].as_object().unwrap().values().all(|n| n == 1), "{all}");
    let mut paged = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let p = search(&w, "rel_distinct", json!({ "limit": 2, "cursor": cursor, "sort": ["rate:desc"] }));
        paged.extend(p["hits"].as_array().unwrap().iter().map(|h| h["doc"]["rating"].as_str().unwrap().to_string()));
        if p["next_cursor"].is_null() {
            break;
        }
        cursor = p["next_cursor"].clone();
    }
    paged.sort();
    assert_eq!(paged, expected, "each rating once across cursor pages");
    // The best film of each rating: with a sort by rate, the most expensive one.
    let top = search(&w, "rel_distinct", json!({ "sort": ["rate:desc"], "filter": { "field": "rating", "eq": "PG" } }));
    let max_pg: f64 = w.sql("SELECT max(rental_rate) FROM film WHERE rating = 'PG'").parse().unwrap();
    assert_eq!(top["hits"][0]["doc"]["rate"].as_f64(), Some(max_pg), "{top}");
}

fn clients_dir() -> PathBuf {
    let dir = std::env::var_os("DERIVER_MEILI_CLIENTS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/meili-clients"));
    for need in ["node_modules/meilisearch/package.json", "py/bin/python"] {
        assert!(
            dir.join(need).exists(),
            "{} is missing: install the Meilisearch clients with `scripts/dev-stack.sh install --with-browser`",
            dir.join(need).display()
        );
    }
    dir
}

fn run_script(program: &Path, script: &str, envs: &[(&str, String)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/meili").join(script);
    let out = Command::new(program).arg(&path).envs(envs.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{script} printed no JSON ({e}):\n{stdout}"))
}

#[test]
fn relevance_settings_through_the_meilisearch_clients() {
    let clients = clients_dir();
    let w = started("relevance_meili");
    let env = [("MEILI_CLIENTS", clients.display().to_string()), ("MEILI_HOST", format!("http://127.0.0.1:{}", w.http_port)), ("MEILI_KEY", KEY.to_string())];
    let v = run_script(Path::new("node"), "relevance.mjs", &env);
    let s = &v["settings"];
    assert_eq!(s["synonyms"], json!({ "dinosaur": ["saurian"], "reptile": ["dinosaur"], "saurian": ["dinosaur"] }), "{s}");
    assert_eq!(v["synonyms"], s["synonyms"]);
    assert_eq!(s["stopWords"], json!(["of", "the"]));
    assert_eq!(s["distinctAttribute"], Value::Null);
    assert_eq!(s["typoTolerance"]["enabled"], true);
    assert_eq!(s["typoTolerance"]["minWordSizeForTypos"], json!({ "oneTypo": 5, "twoTypos": 9 }));
    assert_eq!(s["prefixSearch"], "indexingTime");
    let dinosaur = titles(&w, r"\mDINOSAUR\M");
    assert_eq!((v["typo"].as_u64(), v["exact"].as_u64()), (Some(dinosaur), Some(dinosaur)), "{v}");
    assert_eq!(v["prefix"].as_u64(), Some(titles(&w, r"\mDINO")));
    assert_eq!(v["prefix_done"].as_u64(), Some(titles(&w, r"\mDINO\M")));
    assert_eq!((v["synonym"].as_u64(), v["stop_words"].as_u64()), (Some(dinosaur), Some(dinosaur)));
    let expected = ratings(&w);
    let d = &v["distinct"];
    assert_eq!(d["total"].as_u64(), Some(expected.len() as u64), "{d}");
    let mut got: Vec<String> = d["ratings"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, expected);
    assert!(d["facets"]["rating"].as_object().unwrap().values().all(|n| n == 1), "{d}");
    let mut pages: Vec<String> = v["distinct_pages"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    pages.sort();
    assert_eq!(pages, expected);
    assert_eq!(
        (v["distinct_bad"]["error"]["code"].as_str(), v["distinct_bad"]["error"]["status"].as_u64()),
        (Some("invalid_search_distinct"), Some(400)),
        "{v}"
    );

    let py = run_script(&clients.join("py/bin/python"), "relevance.py", &env[1..]);
    assert_eq!(py["distinct_attribute"], Value::Null);
    assert_eq!(py["stop_words"], json!(["of", "the"]));
    assert_eq!(py["typo"], json!({ "enabled": true, "one": 5, "two": 9 }));
    let per_rating: u64 = w.sql(r"SELECT count(DISTINCT rating) FROM film WHERE title ~ '\mDINOSAUR\M'").parse().unwrap();
    assert_eq!(py["distinct_typo"]["total"].as_u64(), Some(per_rating), "{py}");
}
