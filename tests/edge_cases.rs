//! Replication edge cases against real Postgres and Redis: replica identities, tables without a
//! primary key, composite / text / uuid / array keys, TRUNCATE in all its forms, partitioned
//! tables, savepoints, two-phase commit, logical decoding messages, publication row filters and
//! column lists, schema changes while streaming, generated columns, non-ASCII identifiers and
//! unchanged TOAST values.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A pipeline whose records are `k` (the key text) plus `fields`, with a JSON view
/// `<name>:{k}` and a search index storing every field.
fn pipeline(name: &str, source: &str, key_sql: &str, fields: &[(&str, &str)]) -> String {
    let mut y = format!("version: 1\npipeline: {name}\nsource: {source}\nfields:\n  k: {}\n", yaml_str(&format!("({key_sql})::text")));
    for (f, sql) in fields {
        y.push_str(&format!("  {f}: {}\n", yaml_str(sql)));
    }
    y.push_str(&format!("targets:\n  - redis: {{ key: \"{name}:{{k}}\", type: json }}\n  - search:\n      id: k\n      fields:\n"));
    for (f, _) in fields {
        y.push_str(&format!("        {f}: {{ type: stored_only }}\n"));
    }
    y
}

/// A double-quoted YAML scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The expected records: key text → {k, fields…}, by a plain SELECT over `from`.
fn expected(w: &World, from: &str, key_sql: &str, fields: &[(&str, &str)], filter: &str) -> BTreeMap<String, Value> {
    let mut obj = format!("'k', ({key_sql})::text");
    for (f, sql) in fields {
        obj.push_str(&format!(", '{f}', to_jsonb(({sql}))"));
    }
    let filter = if filter.is_empty() { String::new() } else { format!(" WHERE {filter}") };
    w.expected(&format!("SELECT ({key_sql})::text, jsonb_build_object({obj}) FROM {from}{filter}"))
}

/// Asserts the JSON views and the search documents of pipeline `name` equal `want` exactly (no
/// missing, extra or different records).
fn check(w: &World, name: &str, want: &BTreeMap<String, Value>) {
    let mut keys = w.redis_keys(&format!("{name}:*"));
    keys.sort();
    let mut want_keys: Vec<String> = want.keys().map(|k| format!("{name}:{k}")).collect();
    want_keys.sort();
    assert_eq!(keys, want_keys, "{name}: Redis view keys");
    for (k, v) in want {
        let got: Value = serde_json::from_str(&w.redis_get(&format!("{name}:{k}")).unwrap()).unwrap();
        assert_eq!(&got, v, "{name}:{k}");
    }
    let docs = w.index_docs(name);
    let doc_keys: Vec<&String> = docs.keys().collect();
    let want_doc_keys: Vec<&String> = want.keys().collect();
    assert_eq!(doc_keys, want_doc_keys, "{name}: search documents (by source key text)");
    for (k, v) in want {
        for (f, fv) in v.as_object().unwrap() {
            assert_eq!(docs[k].get(f).unwrap_or(&Value::Null), fv, "{name} document {k} field {f}");
        }
    }
}

/// Starts the daemon and expects it to exit non-zero by itself; returns what it logged.
fn run_refused(w: &mut World) -> String {
    let before = w.log_text().len();
    w.start();
    let (code, log) = w.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0, "deriver run should have refused; log:\n{log}");
    strip_ansi(&log[before..])
}

fn plain_log(w: &World) -> String {
    strip_ansi(&w.log_text())
}

fn alive(w: &mut World) -> bool {
    w.daemon.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
}

/// Waits up to `timeout` for the daemon to exit; `Some((code, log))` if it did.
fn exited_within(w: &mut World, timeout: Duration) -> Option<(i32, String)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = w.daemon.as_mut().unwrap().try_wait().unwrap() {
            w.daemon = None;
            return Some((st.code().unwrap_or(-1), plain_log(w)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Waits (bounded) for the Redis checkpoint of `pipeline` to reach the current WAL position.
/// Returns false if it did not (for tests that expect the daemon might have stopped).
fn try_catch_up(w: &mut World, pipeline: &str, timeout: Duration) -> bool {
    let lsn = w.current_lsn();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if w.redis_applied(pipeline).is_some_and(|a| a >= lsn) {
            return true;
        }
        if !alive(w) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn json_view(w: &World, key: &str) -> Option<Value> {
    w.redis_get(key).map(|t| serde_json::from_str(&t).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Replica identity and keys
// ---------------------------------------------------------------------------------------------

const RI_FIELDS: &[(&str, &str)] = &[("name", "t.name"), ("n", "t.n")];

#[test]
fn replica_identity_default_full_and_using_index_stream_every_change() {
    let mut w = World::on(&env().pg, "ident", None);
    w.sql(
        "CREATE TABLE rd (id integer PRIMARY KEY, name text, n integer);
         CREATE TABLE rf (id integer PRIMARY KEY, name text, n integer); ALTER TABLE rf REPLICA IDENTITY FULL;
         CREATE TABLE ri (id integer PRIMARY KEY, code text NOT NULL, name text, n integer);
         CREATE UNIQUE INDEX ri_code ON ri (code); ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code;
         INSERT INTO rd SELECT g, 'd' || g, g FROM generate_series(1, 20) g;
         INSERT INTO rf SELECT g, 'f' || g, g FROM generate_series(1, 20) g;
         INSERT INTO ri SELECT g, 'c' || g, 'i' || g, g FROM generate_series(1, 20) g;",
    );
    w.add_pipeline("rd", &pipeline("rd", "{ table: rd, as: t }", "t.id", RI_FIELDS));
    w.add_pipeline("rf", &pipeline("rf", "{ table: rf, as: t }", "t.id", RI_FIELDS));
    w.add_pipeline("ri", &pipeline("ri", "{ table: ri, as: t, key: code }", "t.code", &[("name", "t.name"), ("n", "t.n"), ("id", "t.id")]));
    w.setup();
    w.start();
    w.catch_up(&["rd", "rf", "ri"], &["rd", "rf", "ri"]);
    let all = |w: &World| {
        check(w, "rd", &expected(w, "rd AS t", "t.id", RI_FIELDS, ""));
        check(w, "rf", &expected(w, "rf AS t", "t.id", RI_FIELDS, ""));
        check(w, "ri", &expected(w, "ri AS t", "t.code", &[("name", "t.name"), ("n", "t.n"), ("id", "t.id")], ""));
    };
    all(&w);
    for t in ["rd", "rf"] {
        w.sql(&format!(
            "UPDATE {t} SET name = 'renamed' WHERE id = 1;
             UPDATE {t} SET id = 101 WHERE id = 2;
             DELETE FROM {t} WHERE id IN (3, 4);
             INSERT INTO {t} VALUES (200, 'new', NULL);
             BEGIN; UPDATE {t} SET id = id + 1000 WHERE id BETWEEN 5 AND 8; DELETE FROM {t} WHERE id = 1005; COMMIT;
             UPDATE {t} SET n = NULL, name = NULL WHERE id = 9;"
        ));
    }
    w.sql(
        "UPDATE ri SET name = 'renamed' WHERE code = 'c1';
         UPDATE ri SET code = 'c1-new' WHERE code = 'c2';
         UPDATE ri SET id = 500 WHERE code = 'c3';
         DELETE FROM ri WHERE code IN ('c4', 'c5');
         INSERT INTO ri VALUES (300, 'c300', 'new', 1);
         BEGIN; UPDATE ri SET code = code || 'x' WHERE id BETWEEN 6 AND 8; DELETE FROM ri WHERE code = 'c6x'; COMMIT;",
    );
    w.catch_up(&["rd", "rf", "ri"], &["rd", "rf", "ri"]);
    all(&w);
    assert!(w.redis_get("rd:2").is_none() && w.redis_get("rf:2").is_none() && w.redis_get("ri:c2").is_none());
    assert!(w.redis_get("ri:c6x").is_none() && w.redis_get("ri:c6").is_none());
    assert_eq!(w.stop(), 0);
}

#[test]
fn replica_identity_nothing_or_without_the_key_is_a_clear_refusal() {
    let mut w = World::on(&env().pg, "identno", None);
    w.sql("CREATE TABLE rn (id integer PRIMARY KEY, name text); ALTER TABLE rn REPLICA IDENTITY NOTHING; INSERT INTO rn VALUES (1, 'a')");
    w.add_pipeline("rn", &pipeline("rn", "{ table: rn, as: t }", "t.id", &[("name", "t.name")]));
    let (code, out, err) = w.run_cli(&["setup"]);
    assert_eq!(code, 1, "setup must report the problem:\n{out}\n{err}");
    assert!(err.contains("REPLICA IDENTITY NOTHING") && err.contains("rn"), "{err}");
    let log = run_refused(&mut w);
    assert!(log.contains("has REPLICA IDENTITY NOTHING, so deletes carry no key"), "{log}");

    // Identity by an index that does not hold the pipeline key.
    std::fs::remove_file(w.pipelines.join("rn.yaml")).unwrap();
    w.sql("CREATE TABLE ri (id integer PRIMARY KEY, code text NOT NULL, name text); CREATE UNIQUE INDEX ri_code ON ri (code); ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code");
    w.add_pipeline("ri", &pipeline("ri", "{ table: ri, as: t }", "t.id", &[("name", "t.name")]));
    let (code, out, err) = w.run_cli(&["setup"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("which its replica identity does not include"), "{err}");
    let log = run_refused(&mut w);
    assert!(log.contains("which its replica identity does not include") && log.contains("REPLICA IDENTITY FULL"), "{log}");
}

#[test]
fn a_table_without_a_primary_key_needs_a_key_and_full_identity() {
    let mut w = World::on(&env().pg, "nopk", None);
    w.sql("CREATE TABLE nk (code text NOT NULL, name text, n integer); INSERT INTO nk SELECT 'k' || g, 'n' || g, g FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("name", "t.name"), ("n", "t.n")];
    // No key at all.
    w.add_pipeline("nk", &pipeline("nk", "{ table: nk, as: t }", "t.code", fields));
    let (code, out, err) = w.run_cli(&["setup"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("has no primary key; set `source.key`"), "{err}");
    // A key, but the default identity (no primary key: nothing) cannot carry it.
    w.add_pipeline("nk", &pipeline("nk", "{ table: nk, as: t, key: code }", "t.code", fields));
    let (code, out, err) = w.run_cli(&["setup"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    let log = run_refused(&mut w);
    assert!(log.contains("REPLICA IDENTITY FULL"), "{log}");
    // FULL: works end to end, deletes and key changes included.
    w.sql("ALTER TABLE nk REPLICA IDENTITY FULL");
    w.setup();
    w.start();
    w.catch_up(&["nk"], &["nk"]);
    check(&w, "nk", &expected(&w, "nk AS t", "t.code", fields, ""));
    w.sql("UPDATE nk SET name = 'x' WHERE code = 'k1'; UPDATE nk SET code = 'k2b' WHERE code = 'k2'; DELETE FROM nk WHERE code = 'k3'; INSERT INTO nk VALUES ('k99', 'new', 99)");
    w.catch_up(&["nk"], &["nk"]);
    check(&w, "nk", &expected(&w, "nk AS t", "t.code", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_null_in_a_declared_key_column_does_not_stop_the_pipeline() {
    let mut w = World::on(&env().pg, "nullkey", None);
    w.sql("CREATE TABLE nk (code text, name text); ALTER TABLE nk REPLICA IDENTITY FULL; INSERT INTO nk VALUES ('a', 'A'), (NULL, 'snapshot null')");
    let fields: &[(&str, &str)] = &[("name", "t.name")];
    w.add_pipeline("nk", &pipeline("nk", "{ table: nk, as: t, key: code }", "t.code", fields));
    w.setup();
    w.start();
    w.catch_up(&["nk"], &["nk"]);
    w.sql("INSERT INTO nk VALUES (NULL, 'streamed null')");
    w.sql("INSERT INTO nk VALUES ('b', 'B')");
    w.sql("UPDATE nk SET name = 'still null' WHERE code IS NULL");
    w.sql("DELETE FROM nk WHERE code IS NULL AND name = 'still null' AND ctid = (SELECT min(ctid) FROM nk WHERE code IS NULL)");
    let applied = try_catch_up(&mut w, "nk", Duration::from_secs(30));
    assert!(applied && alive(&mut w), "a row with a NULL key stopped the pipeline; log:\n{}", plain_log(&w));
    check(&w, "nk", &expected(&w, "nk AS t", "t.code", fields, "t.code IS NOT NULL"));
    assert_eq!(w.stop(), 0);
}

#[test]
fn composite_text_uuid_and_array_keys() {
    let mut w = World::on(&env().pg, "keys", None);
    w.sql(
        "CREATE TABLE ck (a integer, b text, v text, PRIMARY KEY (a, b));
         CREATE TABLE tk (k text PRIMARY KEY, v text);
         CREATE TABLE uk (id uuid PRIMARY KEY, v text);
         CREATE TABLE ak (k integer[] PRIMARY KEY, v text);
         INSERT INTO ck VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three'), (3, 'with space', 's'), (4, 'ünï ✓', 'u'), (5, 'quote''s \"q\"', 'q');
         INSERT INTO tk VALUES ('plain', '1'), ('with space', '2'), ('ünï ✓ 🦀', '3'), ('quote''s \"q\"', '4'), ('{braces}', '5'), ('a/b\\c', '6'),
                               ('', 'empty'), (' lead', '7'), ('trail ', '8'), ('UPPER', '9'), ('upper', '10'), (repeat('long', 100), '11');
         INSERT INTO uk VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1'), ('00000000-0000-0000-0000-000000000000', '2');
         INSERT INTO ak VALUES ('{1,2}', 'a'), ('{}', 'empty'), ('{1,NULL}', 'null elem'), ('[0:1]={1,2}', 'lower bound 0'), ('{{1,2},{3,4}}', '2d');",
    );
    let ck_key = "concat_ws(':', t.a::text, t.b::text)";
    w.add_pipeline("ck", &pipeline("ck", "{ table: ck, as: t }", ck_key, &[("v", "t.v"), ("a", "t.a"), ("b", "t.b")]));
    w.add_pipeline("tk", &pipeline("tk", "{ table: tk, as: t }", "t.k", &[("v", "t.v")]));
    w.add_pipeline("uk", &pipeline("uk", "{ table: uk, as: t }", "t.id", &[("v", "t.v")]));
    w.add_pipeline("ak", &pipeline("ak", "{ table: ak, as: t }", "t.k", &[("v", "t.v"), ("dims", "array_dims(t.k)")]));
    w.setup();
    w.start();
    w.catch_up(&["ck", "tk", "uk", "ak"], &["ck", "tk", "uk", "ak"]);
    let all = |w: &World| {
        check(w, "ck", &expected(w, "ck AS t", ck_key, &[("v", "t.v"), ("a", "t.a"), ("b", "t.b")], ""));
        check(w, "tk", &expected(w, "tk AS t", "t.k", &[("v", "t.v")], ""));
        check(w, "uk", &expected(w, "uk AS t", "t.id", &[("v", "t.v")], ""));
        check(w, "ak", &expected(w, "ak AS t", "t.k", &[("v", "t.v"), ("dims", "array_dims(t.k)")], ""));
    };
    all(&w);
    assert_eq!(w.redis_keys("ak:*").len(), 5, "'[0:1]={{1,2}}' and '{{1,2}}' are distinct keys");
    w.sql(
        "UPDATE ck SET v = 'changed' WHERE a = 1 AND b = 'x';
         UPDATE ck SET b = 'z' WHERE a = 1 AND b = 'y';
         UPDATE ck SET a = 20 WHERE a = 2;
         DELETE FROM ck WHERE a = 3;
         INSERT INTO ck VALUES (6, '', 'empty b');
         UPDATE tk SET v = 'changed' WHERE k = 'ünï ✓ 🦀';
         UPDATE tk SET k = 'moved' WHERE k = 'with space';
         UPDATE tk SET k = '' WHERE k = 'plain' AND NOT EXISTS (SELECT 1 FROM tk WHERE k = '');
         DELETE FROM tk WHERE k = '';
         UPDATE tk SET k = 'was empty' WHERE k = 'plain';
         DELETE FROM tk WHERE k IN ('UPPER', 'quote''s \"q\"');
         UPDATE uk SET id = 'ffffffff-ffff-ffff-ffff-ffffffffffff' WHERE v = '1';
         DELETE FROM uk WHERE v = '2';
         INSERT INTO uk VALUES (gen_random_uuid(), '3');
         UPDATE ak SET v = 'changed' WHERE k = '[0:1]={1,2}';
         UPDATE ak SET k = '{9}' WHERE k = '{1,2}';
         DELETE FROM ak WHERE k = '{}';
         INSERT INTO ak VALUES ('{-1,-2,-3}', 'neg');",
    );
    w.catch_up(&["ck", "tk", "uk", "ak"], &["ck", "tk", "uk", "ak"]);
    all(&w);
    assert!(w.redis_get("ck:1:y").is_none() && w.redis_get("ck:2:x").is_none() && w.redis_get("ak:{1,2}").is_none());
    let lb: Value = json_view(&w, "ak:[0:1]={1,2}").unwrap();
    assert_eq!(lb["v"], "changed");
    assert_eq!(w.stop(), 0);
}

#[test]
fn composite_keys_whose_text_contains_the_separator_stay_distinct() {
    let mut w = World::on(&env().pg, "keysep", None);
    w.sql("CREATE TABLE cs (a text, b text, v text, PRIMARY KEY (a, b)); INSERT INTO cs VALUES ('x:y', 'z', 'first'), ('x', 'y:z', 'second')");
    // Views keyed by a separator that cannot occur, so the Redis views themselves are distinct.
    w.add_pipeline(
        "cs",
        "version: 1\npipeline: cs\nsource: { table: cs }\nfields: { a: cs.a, b: cs.b, v: cs.v, id: \"cs.a || '|' || cs.b\" }\ntargets:\n  - redis: { key: \"cs:{a}|{b}\", type: json }\n  - search: { id: id, fields: { v: { type: text, stored: true } } }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["cs"], &["cs"]);
    let both = |w: &World| -> (Option<Value>, Option<Value>) { (json_view(w, "cs:x:y|z"), json_view(w, "cs:x|y:z")) };
    let (a, b) = both(&w);
    assert_eq!(a.unwrap()["v"], "first");
    assert_eq!(b.unwrap()["v"], "second");
    let search = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/indexes/cs/search", w.http_port))
        .json(&serde_json::json!({ "limit": 10 }))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(search["total"]["value"], 2, "two rows, two documents: {search}");
    // Deleting one must not remove the other.
    w.sql("DELETE FROM cs WHERE a = 'x' AND b = 'y:z'");
    w.catch_up(&["cs"], &["cs"]);
    let (a, b) = both(&w);
    assert!(b.is_none());
    assert_eq!(a.expect("deleting ('x','y:z') removed the record of ('x:y','z')")["v"], "first");
    w.sql("UPDATE cs SET v = 'first again' WHERE a = 'x:y'");
    w.catch_up(&["cs"], &["cs"]);
    assert_eq!(json_view(&w, "cs:x:y|z").unwrap()["v"], "first again");
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// TRUNCATE
// ---------------------------------------------------------------------------------------------

const PARENTS: &str = r#"version: 1
pipeline: parents
source: { table: parent }
lookups:
  color: { table: color, on: "parent.color_id = color.id" }
children:
  kids: { table: child, on: "child.parent_id = parent.id" }
fields:
  k: parent.id::text
  name: parent.name
  color: color.name
  kids: { child: kids, agg: "array_agg(child.name ORDER BY child.name)", default: "'{}'::text[]" }
  kid_count: { child: kids, agg: "count(*)" }
targets:
  - redis: { key: "parents:{k}", type: json }
  - search: { id: k, fields: { name: { type: stored_only }, color: { type: stored_only }, kids: { type: stored_only }, kid_count: { type: stored_only } } }
"#;

const KIDS: &str = r#"version: 1
pipeline: kids
source: { table: child }
lookups:
  parent: { table: parent, on: "child.parent_id = parent.id" }
fields:
  k: child.id::text
  name: child.name
  parent: parent.name
targets:
  - redis: { key: "kids:{k}", type: json }
  - search: { id: k, fields: { name: { type: stored_only }, parent: { type: stored_only } } }
"#;

fn check_family(w: &World) {
    let parents = w.expected(
        "SELECT p.id::text, jsonb_build_object('k', p.id::text, 'name', p.name, 'color', (SELECT c.name FROM color c WHERE c.id = p.color_id),
            'kids', coalesce((SELECT array_agg(ch.name ORDER BY ch.name) FROM child ch WHERE ch.parent_id = p.id), '{}'),
            'kid_count', (SELECT count(*) FROM child ch WHERE ch.parent_id = p.id)) FROM parent p",
    );
    check(w, "parents", &parents);
    let kids = w.expected(
        "SELECT c.id::text, jsonb_build_object('k', c.id::text, 'name', c.name, 'parent', (SELECT p.name FROM parent p WHERE p.id = c.parent_id)) FROM child c",
    );
    check(w, "kids", &kids);
}

const FAMILY_ROWS: &str = "INSERT INTO color (id, name) VALUES (1, 'red'), (2, 'blue') ON CONFLICT DO NOTHING;
    INSERT INTO parent (name, color_id) SELECT 'p' || g, 1 + g % 2 FROM generate_series(1, 5) g;
    INSERT INTO child (parent_id, name) SELECT p.id, p.name || '-kid' || g FROM parent p, generate_series(1, 2) g;";

#[test]
fn truncate_of_sources_lookups_and_children_in_every_form() {
    let mut w = World::on(&env().pg, "trunc", None);
    w.sql(
        "CREATE TABLE color (id integer PRIMARY KEY, name text);
         CREATE TABLE parent (id serial PRIMARY KEY, name text, color_id integer);
         CREATE TABLE child (id serial PRIMARY KEY, parent_id integer REFERENCES parent, name text);",
    );
    w.sql(FAMILY_ROWS);
    w.add_pipeline("parents", PARENTS);
    w.add_pipeline("kids", KIDS);
    w.setup();
    w.start();
    let sync = |w: &mut World| w.catch_up(&["parents", "kids"], &["parents", "kids"]);
    sync(&mut w);
    check_family(&w);
    assert_eq!(w.redis_keys("kids:*").len(), 10);

    // A child table truncated: its own pipeline empties, the parents re-derive every record.
    w.sql("TRUNCATE child");
    sync(&mut w);
    check_family(&w);
    assert!(w.redis_keys("kids:*").is_empty());
    assert_eq!(json_view(&w, "parents:1").unwrap()["kid_count"], 0);

    // A lookup table truncated (no foreign key): every parent loses its colour.
    w.sql("INSERT INTO child (parent_id, name) VALUES (1, 'back')");
    w.sql("TRUNCATE color");
    sync(&mut w);
    check_family(&w);
    assert_eq!(json_view(&w, "parents:2").unwrap()["color"], Value::Null);

    // TRUNCATE … CASCADE empties both sources.
    w.sql("TRUNCATE parent CASCADE");
    sync(&mut w);
    check_family(&w);
    assert!(w.redis_keys("parents:*").is_empty() && w.redis_keys("kids:*").is_empty());
    assert!(w.index_docs("parents").is_empty() && w.index_docs("kids").is_empty());

    // RESTART IDENTITY: new rows reuse the old ids; their records are the new ones.
    w.sql(FAMILY_ROWS);
    sync(&mut w);
    w.sql("TRUNCATE parent, child RESTART IDENTITY");
    w.sql(&FAMILY_ROWS.replace("'p' ||", "'again' ||"));
    sync(&mut w);
    check_family(&w);
    assert_eq!(json_view(&w, "parents:1").unwrap()["name"], "again1");

    // TRUNCATE and new rows in one transaction; then a truncate rolled back leaves everything.
    w.sql(&format!("BEGIN; TRUNCATE parent CASCADE; {} COMMIT;", FAMILY_ROWS.replace("'p' ||", "'tx' ||")));
    sync(&mut w);
    check_family(&w);
    assert_eq!(w.redis_keys("parents:*").len(), 5);
    w.sql("BEGIN; TRUNCATE parent CASCADE; ROLLBACK;");
    w.sql("UPDATE parent SET name = 'after rollback' WHERE id = (SELECT min(id) FROM parent)");
    sync(&mut w);
    check_family(&w);
    assert_eq!(w.redis_keys("parents:*").len(), 5);

    // After a restart the state is still exact.
    assert_eq!(w.stop(), 0);
    w.sql("TRUNCATE child");
    w.start();
    sync(&mut w);
    check_family(&w);
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// Partitions, transactions
// ---------------------------------------------------------------------------------------------

#[test]
fn partitioned_source_with_rows_moving_between_partitions() {
    let mut w = World::on(&env().pg, "parts", None);
    w.sql(
        "CREATE TABLE ev (id integer, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
         CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us');
         CREATE TABLE ev_other PARTITION OF ev DEFAULT;
         INSERT INTO ev SELECT g, (ARRAY['eu', 'us', 'apac'])[1 + g % 3], 'v' || g FROM generate_series(1, 30) g;
         CREATE PUBLICATION deriver;",
    );
    let key = "concat_ws(':', t.id::text, t.region)";
    let fields: &[(&str, &str)] = &[("v", "t.v"), ("region", "t.region"), ("part", "t.tableoid::regclass::text")];
    w.add_pipeline("ev", &pipeline("ev", "{ table: ev, as: t }", key, fields));
    w.setup();
    assert_eq!(w.sql("SELECT pubviaroot FROM pg_publication WHERE pubname = 'deriver'"), "t", "setup publishes partitions via their root");
    w.start();
    w.catch_up(&["ev"], &["ev"]);
    check(&w, "ev", &expected(&w, "ev AS t", key, fields, ""));
    w.sql(
        "UPDATE ev SET v = 'changed' WHERE id = 1;
         UPDATE ev SET region = 'us' WHERE id = 3;                 -- eu -> us (moves partition, key changes)
         UPDATE ev SET region = 'mars' WHERE id = 4;               -- us -> default partition
         INSERT INTO ev_eu VALUES (100, 'eu', 'into a partition directly');
         UPDATE ev_us SET v = 'via partition' WHERE id = 7;
         DELETE FROM ev_other WHERE id = 2;
         BEGIN; UPDATE ev SET region = 'eu' WHERE region = 'apac' AND id < 15; UPDATE ev SET v = 'moved' WHERE region = 'eu'; COMMIT;",
    );
    w.catch_up(&["ev"], &["ev"]);
    check(&w, "ev", &expected(&w, "ev AS t", key, fields, ""));
    assert!(w.redis_get("ev:3:eu").is_none() && w.redis_get("ev:3:us").is_some());
    // A partition attached later with rows: its later changes arrive under the root.
    w.sql("CREATE TABLE ev_jp (LIKE ev INCLUDING ALL); ALTER TABLE ev ATTACH PARTITION ev_jp FOR VALUES IN ('jp')");
    w.sql("INSERT INTO ev VALUES (200, 'jp', 'japan'); UPDATE ev SET region = 'jp' WHERE id = 5");
    w.catch_up(&["ev"], &["ev"]);
    check(&w, "ev", &expected(&w, "ev AS t", key, fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn savepoints_rolled_back_subtransactions_leave_no_trace() {
    let mut w = World::on(&env().pg, "savepoints", None);
    w.sql("CREATE TABLE s (id integer PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("s", &pipeline("s", "{ table: s, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["s"], &["s"]);
    w.sql(
        "BEGIN;
         INSERT INTO s VALUES (100, 'kept');
         SAVEPOINT a;
           INSERT INTO s VALUES (101, 'rolled back');
           UPDATE s SET v = 'rolled back' WHERE id = 1;
           DELETE FROM s WHERE id = 2;
           UPDATE s SET id = 300 WHERE id = 3;
         ROLLBACK TO SAVEPOINT a;
         INSERT INTO s VALUES (102, 'kept after rollback');
         SAVEPOINT b;
           INSERT INTO s VALUES (103, 'released');
           SAVEPOINT c;
             INSERT INTO s SELECT g, 'deep rolled back' FROM generate_series(1000, 3000) g;
             UPDATE s SET v = 'deep' WHERE id = 4;
           ROLLBACK TO SAVEPOINT c;
           UPDATE s SET v = 'after c' WHERE id = 5;
         RELEASE SAVEPOINT b;
         SAVEPOINT d;
           DELETE FROM s WHERE id = 6;
         ROLLBACK TO SAVEPOINT d;
         INSERT INTO s SELECT g, 'bulk kept' FROM generate_series(5000, 5500) g;
         SAVEPOINT e;
           DELETE FROM s WHERE id BETWEEN 5000 AND 5100;
         ROLLBACK TO SAVEPOINT e;
         COMMIT;",
    );
    w.catch_up(&["s"], &["s"]);
    check(&w, "s", &expected(&w, "s AS t", "t.id", fields, ""));
    for gone in ["101", "300", "1000", "2000", "3000"] {
        assert!(w.redis_get(&format!("s:{gone}")).is_none(), "rolled-back key {gone}");
    }
    assert_eq!(json_view(&w, "s:1").unwrap()["v"], "v1");
    assert!(w.redis_get("s:2").is_some() && w.redis_get("s:6").is_some());
    // A whole transaction rolled back after savepoints.
    w.sql("BEGIN; SAVEPOINT x; INSERT INTO s VALUES (7000, 'no'); RELEASE SAVEPOINT x; UPDATE s SET v = 'no' WHERE id = 7; ROLLBACK;");
    w.sql("UPDATE s SET v = 'marker' WHERE id = 8");
    w.catch_up(&["s"], &["s"]);
    check(&w, "s", &expected(&w, "s AS t", "t.id", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn two_phase_commit_applies_once_and_rollback_prepared_leaves_no_trace() {
    let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start("max_prepared_transactions = 10")));
    let mut w = World::on(cluster, "twopc", None);
    w.sql("CREATE TABLE tp (id integer PRIMARY KEY, v text); INSERT INTO tp SELECT g, 'v' || g FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("tp", &pipeline("tp", "{ table: tp, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["tp"], &["tp"]);
    w.sql("BEGIN; INSERT INTO tp VALUES (50, 'prepared'); UPDATE tp SET v = 'prepared' WHERE id = 1; PREPARE TRANSACTION 'g1'");
    w.sql("BEGIN; INSERT INTO tp VALUES (60, 'to roll back'); DELETE FROM tp WHERE id = 2; PREPARE TRANSACTION 'g2'");
    // A regular transaction commits while both are prepared.
    w.sql("INSERT INTO tp VALUES (70, 'regular')");
    w.catch_up(&["tp"], &["tp"]);
    check(&w, "tp", &expected(&w, "tp AS t", "t.id", fields, ""));
    assert!(w.redis_get("tp:50").is_none(), "a prepared transaction is not committed yet");
    // A restart while transactions are prepared.
    assert_eq!(w.stop(), 0);
    w.start();
    w.sql("COMMIT PREPARED 'g1'");
    w.sql("ROLLBACK PREPARED 'g2'");
    w.catch_up(&["tp"], &["tp"]);
    check(&w, "tp", &expected(&w, "tp AS t", "t.id", fields, ""));
    assert_eq!(json_view(&w, "tp:50").unwrap()["v"], "prepared");
    assert!(w.redis_get("tp:60").is_none() && w.redis_get("tp:2").is_some());
    assert_eq!(w.stop(), 0);
    cluster.stop();
}

#[test]
fn logical_decoding_messages_are_ignored_harmlessly() {
    let mut w = World::on(&env().pg, "messages", None);
    w.sql("CREATE TABLE m (id integer PRIMARY KEY, v text); INSERT INTO m VALUES (1, 'a')");
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("m", &pipeline("m", "{ table: m, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["m"], &["m"]);
    w.sql("SELECT pg_logical_emit_message(false, 'deriver', 'non-transactional')");
    w.sql("BEGIN; INSERT INTO m VALUES (2, 'b'); SELECT pg_logical_emit_message(true, 'deriver', '\\x00ff'::bytea); UPDATE m SET v = 'c' WHERE id = 1; COMMIT");
    w.sql("BEGIN; SELECT pg_logical_emit_message(true, 'only', 'a message alone'); COMMIT");
    w.sql("BEGIN; INSERT INTO m VALUES (3, 'rolled back'); SELECT pg_logical_emit_message(true, 'x', 'rolled back'); ROLLBACK");
    w.sql("INSERT INTO m VALUES (4, 'd')");
    w.catch_up(&["m"], &["m"]);
    check(&w, "m", &expected(&w, "m AS t", "t.id", fields, ""));
    assert!(alive(&mut w));
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// Publication changes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_publication_column_list_without_the_key_is_refused_and_one_without_other_columns_is_fine() {
    let mut w = World::on(&env().pg, "collist", None);
    w.sql("CREATE TABLE c (id integer PRIMARY KEY, name text, secret text); INSERT INTO c SELECT g, 'n' || g, 's' || g FROM generate_series(1, 5) g");
    let fields: &[(&str, &str)] = &[("name", "t.name"), ("secret", "t.secret")];
    w.add_pipeline("c", &pipeline("c", "{ table: c, as: t }", "t.id", fields));
    w.setup();
    // The key column is not published.
    w.sql("ALTER PUBLICATION deriver SET TABLE c (name, secret)");
    let log = run_refused(&mut w);
    assert!(log.contains("does not publish column public.c.id"), "{log}");
    // Only non-key columns hidden: deriver re-reads them with SQL, so records stay exact.
    w.sql("ALTER PUBLICATION deriver SET TABLE c (id)");
    w.start();
    w.catch_up(&["c"], &["c"]);
    w.sql("UPDATE c SET secret = 'changed', name = 'changed' WHERE id = 1; UPDATE c SET id = 10 WHERE id = 2; DELETE FROM c WHERE id = 3");
    w.catch_up(&["c"], &["c"]);
    check(&w, "c", &expected(&w, "c AS t", "t.id", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_publication_row_filter_is_refused_or_harmless() {
    let mut w = World::on(&env().pg, "rowfilter", None);
    w.sql("CREATE TABLE r (id integer PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("r", &pipeline("r", "{ table: r, as: t }", "t.id", fields));
    w.setup();
    w.sql("ALTER PUBLICATION deriver SET TABLE r WHERE (id > 5)");
    w.start();
    if let Some((code, log)) = exited_within(&mut w, Duration::from_secs(10)) {
        assert_ne!(code, 0);
        assert!(log.contains("filter"), "the refusal must name the row filter: {log}");
        return;
    }
    w.catch_up(&["r"], &["r"]);
    w.sql("UPDATE r SET v = 'hidden by the filter' WHERE id = 1; DELETE FROM r WHERE id = 2; INSERT INTO r VALUES (3000, 'visible')");
    w.catch_up(&["r"], &["r"]);
    check(&w, "r", &expected(&w, "r AS t", "t.id", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_table_dropped_from_the_publication_while_running_is_loud() {
    let mut w = World::on(&env().pg, "droppub", None);
    w.sql("CREATE TABLE d (id integer PRIMARY KEY, v text); INSERT INTO d SELECT g, 'v' || g FROM generate_series(1, 5) g");
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("d", &pipeline("d", "{ table: d, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["d"], &["d"]);
    w.sql("ALTER PUBLICATION deriver DROP TABLE d");
    w.sql("UPDATE d SET v = 'unseen' WHERE id = 1");
    if let Some((code, log)) = exited_within(&mut w, Duration::from_secs(15)) {
        assert_ne!(code, 0);
        assert!(log.contains("public.d") || log.contains("publication"), "the error must name the table or the publication: {log}");
        return;
    }
    // Still running: then its records must still be right.
    let fresh = try_catch_up(&mut w, "d", Duration::from_secs(10));
    assert!(fresh, "checkpoint did not advance");
    assert_eq!(
        json_view(&w, "d:1").unwrap()["v"],
        "unseen",
        "deriver keeps running and acknowledging while the table's changes are no longer published; status: {}",
        w.run_cli(&["status", "--json"]).1
    );
}

// ---------------------------------------------------------------------------------------------
// Schema changes while streaming
// ---------------------------------------------------------------------------------------------

/// Whether the pipeline `a` stopped (`state: failed`).
fn failed(w: &World) -> bool {
    let (_, out, _) = w.run_cli(&["status", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .is_ok_and(|d| d["pipelines"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "a" && p["state"] == "failed")))
}

/// Brings a stopped daemon or pipeline back: a start, or `deriver apply` (a reload restarts a
/// failed pipeline from its checkpoint).
fn resume(w: &mut World) {
    if !alive(w) {
        w.start();
    } else if failed(w) {
        let (code, out, err) = w.run_cli(&["apply"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
}

#[test]
fn alter_table_while_streaming_never_stores_wrong_values_silently() {
    let mut w = World::on(&env().pg, "ddl", None);
    w.sql("CREATE TABLE a (id integer PRIMARY KEY, name text, price numeric, spare text); INSERT INTO a SELECT g, 'n' || g, g * 1.5, 'x' FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("name", "t.name"), ("price", "t.price")];
    w.add_pipeline("a", &pipeline("a", "{ table: a, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["a"], &["a"]);
    // Columns the pipeline does not read come and go.
    w.sql("ALTER TABLE a ADD COLUMN extra integer DEFAULT 7; UPDATE a SET name = 'after add' WHERE id = 1");
    w.sql("ALTER TABLE a DROP COLUMN spare; UPDATE a SET name = 'after drop' WHERE id = 2");
    w.sql("INSERT INTO a (id, name, price, extra) VALUES (11, 'new', 1, 8)");
    w.catch_up(&["a"], &["a"]);
    check(&w, "a", &expected(&w, "a AS t", "t.id", fields, ""));

    // A column the pipeline reads is renamed: the next change of a row cannot be derived. It must
    // be loud (a fatal error or a dead letter), and nothing may be written for it.
    let dead_before = plain_log(&w).matches("record rejected (dead letter)").count();
    let before3 = w.redis_get("a:3").unwrap();
    w.sql("ALTER TABLE a RENAME COLUMN name TO title; UPDATE a SET title = 'after rename', price = 99 WHERE id = 3");
    let caught_up = try_catch_up(&mut w, "a", Duration::from_secs(20));
    let log = plain_log(&w);
    // Loud: the pipeline stops (`failed`, the column named), a dead letter, or a fatal error.
    let loud = !alive(&mut w) || failed(&w) || log.matches("record rejected (dead letter)").count() > dead_before;
    assert!(loud, "a record that cannot be derived any more was neither rejected nor fatal; log:\n{log}");
    if caught_up {
        assert_eq!(w.redis_get("a:3").unwrap(), before3, "nothing was written for the row that cannot be derived");
    }
    assert_ne!(json_view(&w, "a:3").unwrap()["name"], "after rename", "nothing was written for the row that cannot be derived");
    // Renamed back: derivation works again for new changes (a stopped pipeline once reloaded).
    w.sql("ALTER TABLE a RENAME COLUMN title TO name; UPDATE a SET name = 'after rename back' WHERE id = 4");
    resume(&mut w);
    w.catch_up(&["a"], &["a"]);
    assert_eq!(json_view(&w, "a:4").unwrap()["name"], "after rename back");

    // A type change: rows changed afterwards carry the new type's JSON.
    w.sql("ALTER TABLE a ALTER COLUMN price TYPE text USING price::text; UPDATE a SET price = price || '!' WHERE id = 5");
    w.catch_up(&["a"], &["a"]);
    assert_eq!(json_view(&w, "a:5").unwrap()["price"], "7.5!");

    // A used column dropped: loud as well.
    let dead_before = plain_log(&w).matches("record rejected (dead letter)").count();
    w.sql("ALTER TABLE a DROP COLUMN price; UPDATE a SET name = 'after price dropped' WHERE id = 6");
    try_catch_up(&mut w, "a", Duration::from_secs(20));
    let log = plain_log(&w);
    assert!(!alive(&mut w) || failed(&w) || log.matches("record rejected (dead letter)").count() > dead_before, "log:\n{log}");
    assert_ne!(json_view(&w, "a:6").unwrap()["name"], "after price dropped", "a record half-derived from a broken pipeline");
    w.kill();
}

#[test]
fn records_changed_while_the_pipeline_sql_was_broken_converge_after_the_fix() {
    let mut w = World::on(&env().pg, "ddlfix", None);
    w.sql("CREATE TABLE a (id integer PRIMARY KEY, name text); INSERT INTO a SELECT g, 'n' || g FROM generate_series(1, 10) g");
    let fields: &[(&str, &str)] = &[("name", "t.name")];
    w.add_pipeline("a", &pipeline("a", "{ table: a, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["a"], &["a"]);
    w.sql("ALTER TABLE a RENAME COLUMN name TO title; UPDATE a SET title = 'changed while broken' WHERE id = 3; DELETE FROM a WHERE id = 4");
    try_catch_up(&mut w, "a", Duration::from_secs(20));
    if !alive(&mut w) {
        w.kill();
        w.sql("ALTER TABLE a RENAME COLUMN title TO name");
        w.start();
    } else {
        w.sql("ALTER TABLE a RENAME COLUMN title TO name");
    }
    w.sql("UPDATE a SET name = 'unrelated' WHERE id = 9");
    w.catch_up(&["a"], &["a"]);
    std::thread::sleep(Duration::from_secs(3));
    check(&w, "a", &expected(&w, "a AS t", "t.id", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn generated_columns_are_derived_like_any_column() {
    let mut w = World::on(&env().pg, "generated", None);
    w.sql(
        "CREATE TABLE g (id integer PRIMARY KEY, price numeric, qty integer, total numeric GENERATED ALWAYS AS (price * qty) STORED,
                         label text GENERATED ALWAYS AS (upper(coalesce(price::text, '?'))) STORED);
         INSERT INTO g (id, price, qty) SELECT n, n * 1.25, n FROM generate_series(1, 10) n",
    );
    let fields: &[(&str, &str)] = &[("total", "t.total"), ("label", "t.label"), ("computed", "t.price * t.qty * 2")];
    w.add_pipeline("g", &pipeline("g", "{ table: g, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["g"], &["g"]);
    check(&w, "g", &expected(&w, "g AS t", "t.id", fields, ""));
    w.sql("UPDATE g SET qty = 100 WHERE id = 1; UPDATE g SET price = NULL WHERE id = 2; INSERT INTO g (id, price, qty) VALUES (50, 0.1, 3)");
    w.catch_up(&["g"], &["g"]);
    check(&w, "g", &expected(&w, "g AS t", "t.id", fields, ""));
    assert_eq!(json_view(&w, "g:50").unwrap()["total"].to_string(), "0.3");
    assert_eq!(w.stop(), 0);
}

#[test]
fn quoted_and_non_ascii_identifiers() {
    let mut w = World::on(&env().pg, "idents", None);
    w.sql(
        "CREATE SCHEMA \"Schéma Ü\";
         CREATE TABLE \"Schéma Ü\".\"Ünïcødé Tàblé\" (\"Ïd\" integer PRIMARY KEY, \"Spaltè Name\" text, \"select\" integer);
         INSERT INTO \"Schéma Ü\".\"Ünïcødé Tàblé\" SELECT g, 'wert ' || g, g FROM generate_series(1, 5) g;
         CREATE TABLE \"MiXeD\" (\"ID\" integer PRIMARY KEY, \"a\"\"quote\" text);
         INSERT INTO \"MiXeD\" VALUES (1, 'q1'), (2, 'q2');",
    );
    let u_fields: &[(&str, &str)] = &[("name", "\"Ünïcødé Tàblé\".\"Spaltè Name\""), ("sel", "\"Ünïcødé Tàblé\".\"select\"")];
    w.add_pipeline("uni", &pipeline("uni", "{ table: '\"Schéma Ü\".\"Ünïcødé Tàblé\"' }", "\"Ünïcødé Tàblé\".\"Ïd\"", u_fields));
    let m_fields: &[(&str, &str)] = &[("q", "m.\"a\"\"quote\"")];
    w.add_pipeline("mixed", &pipeline("mixed", "{ table: '\"MiXeD\"', as: m, key: '\"ID\"' }", "m.\"ID\"", m_fields));
    w.setup();
    w.start();
    w.catch_up(&["uni", "mixed"], &["uni", "mixed"]);
    let all = |w: &World| {
        check(w, "uni", &expected(w, "\"Schéma Ü\".\"Ünïcødé Tàblé\"", "\"Ünïcødé Tàblé\".\"Ïd\"", u_fields, ""));
        check(w, "mixed", &expected(w, "\"MiXeD\" AS m", "m.\"ID\"", m_fields, ""));
    };
    all(&w);
    w.sql(
        "UPDATE \"Schéma Ü\".\"Ünïcødé Tàblé\" SET \"Spaltè Name\" = 'geändert ✓' WHERE \"Ïd\" = 1;
         UPDATE \"Schéma Ü\".\"Ünïcødé Tàblé\" SET \"Ïd\" = 10 WHERE \"Ïd\" = 2;
         DELETE FROM \"Schéma Ü\".\"Ünïcødé Tàblé\" WHERE \"Ïd\" = 3;
         UPDATE \"MiXeD\" SET \"a\"\"quote\" = 'changed' WHERE \"ID\" = 1; DELETE FROM \"MiXeD\" WHERE \"ID\" = 2;",
    );
    w.catch_up(&["uni", "mixed"], &["uni", "mixed"]);
    all(&w);
    w.sql("TRUNCATE \"Schéma Ü\".\"Ünïcødé Tàblé\"; INSERT INTO \"Schéma Ü\".\"Ünïcødé Tàblé\" VALUES (42, 'nach truncate', 0)");
    w.catch_up(&["uni", "mixed"], &["uni", "mixed"]);
    all(&w);
    assert_eq!(w.redis_keys("uni:*"), vec!["uni:42".to_string()]);
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// Unchanged TOAST
// ---------------------------------------------------------------------------------------------

#[test]
fn unchanged_toast_with_and_without_a_key_change_in_one_transaction() {
    let mut w = World::on(&env().pg, "toast2", None);
    for t in ["doc", "docf"] {
        w.sql(&format!(
            "CREATE TABLE {t} (id integer PRIMARY KEY, title text, body text); ALTER TABLE {t} ALTER COLUMN body SET STORAGE EXTERNAL;
             INSERT INTO {t} SELECT g, 'doc ' || g, repeat('lorem ipsum ' || g || ' ', 500) FROM generate_series(1, 20) g;"
        ));
    }
    w.sql("ALTER TABLE docf REPLICA IDENTITY FULL");
    let fields: &[(&str, &str)] = &[("title", "t.title"), ("body", "t.body"), ("len", "length(t.body)")];
    w.add_pipeline("doc", &pipeline("doc", "{ table: doc, as: t }", "t.id", fields));
    w.add_pipeline("docf", &pipeline("docf", "{ table: docf, as: t }", "t.id", fields));
    w.setup();
    w.start();
    w.catch_up(&["doc", "docf"], &["doc", "docf"]);
    for t in ["doc", "docf"] {
        w.sql(&format!(
            "BEGIN;
             UPDATE {t} SET title = 'no key change' WHERE id = 7;
             UPDATE {t} SET id = 80 WHERE id = 8;
             UPDATE {t} SET id = 90, title = 'key and title' WHERE id = 9;
             UPDATE {t} SET title = 'moved then retitled' WHERE id = 80;
             UPDATE {t} SET id = 110, title = 'swap a' WHERE id = 10;
             UPDATE {t} SET id = 10 WHERE id = 12;
             COMMIT;"
        ));
    }
    w.catch_up(&["doc", "docf"], &["doc", "docf"]);
    for t in ["doc", "docf"] {
        let want = expected(&w, &format!("{t} AS t"), "t.id", fields, "");
        check(&w, t, &want);
        assert!(want["7"]["len"].as_i64().unwrap() > 4000, "body is TOASTed");
        assert!(w.redis_get(&format!("{t}:8")).is_none() && w.redis_get(&format!("{t}:9")).is_none());
    }
    assert_eq!(w.stop(), 0);
}

// ---------------------------------------------------------------------------------------------
// Key types whose text form could differ between the WAL and `key::text`
// ---------------------------------------------------------------------------------------------

/// One table per key type, keyed by that type, with values whose text depends on session
/// settings (set hostile on the database) or on the type's own text conversions.
const KEY_TYPES: &[(&str, &str, &[&str])] = &[
    ("k_tstz", "timestamptz", &["'2020-01-01 00:00:00+00'", "'1999-12-31 23:59:59.123456+05:30'", "'infinity'"]),
    ("k_ts", "timestamp", &["'2020-01-01 00:00:00'", "'0044-03-15 12:00:00 BC'"]),
    ("k_date", "date", &["'2020-03-15'", "'4713-01-01 BC'"]),
    ("k_float", "float8", &["1.0/3", "'1e-310'", "'-0.5'", "'NaN'"]),
    ("k_real", "real", &["1.0/3", "'3.4e38'"]),
    ("k_numeric", "numeric", &["'1.50'", "'123456789012345678901234567890.000001'", "'NaN'"]),
    ("k_interval", "interval", &["'1 day 02:03:04'", "'-1 year 2 mons'"]),
    ("k_bytea", "bytea", &["'\\x00ff'", "'\\x'"]),
    ("k_jsonb", "jsonb", &["'{\"b\": 1, \"a\": [1, 2.50]}'", "'\"s\"'"]),
    ("k_cidr", "cidr", &["'10.0.0.0/8'", "'2001:db8::/32'"]),
    ("k_varchar", "varchar(5)", &["'ab'", "'abcde'"]),
    ("k_time", "timetz", &["'24:00:00+02'", "'00:00:00-15:59'"]),
];

#[test]
fn keys_of_every_text_form_survive_updates_key_changes_and_deletes_under_hostile_defaults() {
    let mut w = World::on(&env().pg, "keytypes", None);
    let db = w.db.clone();
    w.sql(&format!(
        "ALTER DATABASE {db} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {db} SET TimeZone = 'Asia/Kolkata';
         ALTER DATABASE {db} SET extra_float_digits = 0; ALTER DATABASE {db} SET bytea_output = 'escape';
         ALTER DATABASE {db} SET IntervalStyle = 'sql_standard'"
    ));
    for (t, ty, vals) in KEY_TYPES {
        w.sql(&format!("CREATE TABLE {t} (k {ty} PRIMARY KEY, v text)"));
        for (i, v) in vals.iter().enumerate() {
            w.sql(&format!("INSERT INTO {t} VALUES ({v}, 'row {i}')"));
        }
        w.add_pipeline(t, &pipeline(t, &format!("{{ table: {t}, as: t }}"), "t.k", &[("v", "t.v")]));
    }
    let names: Vec<&str> = KEY_TYPES.iter().map(|(t, _, _)| *t).collect();
    // Expected key texts under deriver's pinned settings.
    let pinned = "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex; SET timezone = UTC;";
    let expect = |w: &World, t: &str| -> BTreeMap<String, Value> {
        let out =
            w.sql(&format!("{pinned} SELECT coalesce(json_object_agg(t.k::text, jsonb_build_object('k', t.k::text, 'v', t.v)), '{{}}')::text FROM {t} AS t"));
        serde_json::from_str::<serde_json::Map<String, Value>>(&out).unwrap().into_iter().collect()
    };
    w.setup();
    w.start();
    w.catch_up(&names, &names);
    for t in &names {
        check(&w, t, &expect(&w, t));
    }
    // Every row updated (non-key), then the first key of each table changed, then the last deleted.
    for (t, _, vals) in KEY_TYPES {
        w.sql(&format!("UPDATE {t} SET v = v || ' updated'"));
        if vals.len() > 1 {
            w.sql(&format!("DELETE FROM {t} WHERE k = {}", vals[vals.len() - 1]));
        }
    }
    w.catch_up(&names, &names);
    for t in &names {
        check(&w, t, &expect(&w, t));
    }
    assert_eq!(w.stop(), 0);
}

#[test]
fn char_n_keys_follow_updates_and_deletes() {
    let mut w = World::on(&env().pg, "charkey", None);
    w.sql("CREATE TABLE ck (code char(5) PRIMARY KEY, v text); INSERT INTO ck VALUES ('ab', 'short'), ('abcde', 'full'), ('x', 'gone')");
    w.add_pipeline("ck", &pipeline("ck", "{ table: ck, as: t }", "t.code", &[("v", "t.v")]));
    w.setup();
    w.start();
    w.catch_up(&["ck"], &["ck"]);
    check(&w, "ck", &expected(&w, "ck AS t", "t.code", &[("v", "t.v")], ""));
    w.sql("UPDATE ck SET v = 'short updated' WHERE code = 'ab'; UPDATE ck SET v = 'full updated' WHERE code = 'abcde'; DELETE FROM ck WHERE code = 'x'");
    w.catch_up(&["ck"], &["ck"]);
    check(&w, "ck", &expected(&w, "ck AS t", "t.code", &[("v", "t.v")], ""));
    assert_eq!(w.stop(), 0);
}

/// One table keyed by `ty`, rows `vals`; updates every row and deletes the last one.
fn key_type_round(name: &str, ty: &str, vals: &[&str]) {
    let mut w = World::on(&env().pg, name, None);
    w.sql(&format!("CREATE TABLE kt (k {ty} PRIMARY KEY, v text)"));
    for (i, v) in vals.iter().enumerate() {
        w.sql(&format!("INSERT INTO kt VALUES ({v}, 'row {i}')"));
    }
    let fields: &[(&str, &str)] = &[("v", "t.v")];
    w.add_pipeline("kt", &pipeline("kt", "{ table: kt, as: t }", "t.k", fields));
    w.setup();
    w.start();
    w.catch_up(&["kt"], &["kt"]);
    check(&w, "kt", &expected(&w, "kt AS t", "t.k", fields, ""));
    w.sql("UPDATE kt SET v = v || ' updated'");
    w.sql(&format!("DELETE FROM kt WHERE k = {}", vals[vals.len() - 1]));
    w.catch_up(&["kt"], &["kt"]);
    check(&w, "kt", &expected(&w, "kt AS t", "t.k", fields, ""));
    assert_eq!(w.stop(), 0);
}

#[test]
fn boolean_keys_follow_updates_and_deletes() {
    key_type_round("boolkey", "boolean", &["true", "false"]);
}

#[test]
fn inet_keys_follow_updates_and_deletes() {
    key_type_round("inetkey", "inet", &["'192.168.0.1/24'", "'10.1.2.3'", "'::1'"]);
}

#[test]
fn bit_n_keys_follow_updates_and_deletes() {
    key_type_round("bitkey", "bit(8)", &["B'10100101'", "B'00000000'"]);
}
