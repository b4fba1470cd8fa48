//! Value fidelity (values.md) against real Postgres and Redis: every built-in type family goes
//! through a pipeline exactly as `to_jsonb` gives it (JSON view, hash view, stored search source,
//! key templates), unchanged under hostile database and role defaults; declared search types
//! reject values that do not fit (dead letters) without stopping the pipeline; rows Postgres
//! cannot derive are dead-lettered while the rest goes on.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The session settings deriver pins (values.md); expectations are computed under them.
const PINNED: &str = "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; SET bytea_output = hex; SET timezone = UTC; ";

/// Runs `sql` (rows of key text, JSON) under the pinned settings and returns key → JSON.
fn pinned_expected(w: &World, sql: &str) -> BTreeMap<String, Value> {
    let out = w.sql(&format!("{PINNED}SELECT coalesce(json_object_agg(k, v), '{{}}')::text FROM ({sql}) AS q(k, v)"));
    serde_json::from_str::<serde_json::Map<String, Value>>(&out).unwrap().into_iter().collect()
}

/// One text value under the pinned settings.
fn pinned_text(w: &World, sql: &str) -> String {
    w.sql(&format!("{PINNED}{sql}"))
}

/// The daemon's log without ANSI colour sequences.
fn plain_log(w: &World) -> String {
    strip_ansi(&w.log_text())
}

fn http_status(w: &World) -> Value {
    let body = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{}/v1/status", w.http_port))
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
}

fn dead_letters(w: &World, pipeline: &str) -> u64 {
    let s = http_status(w);
    s["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == pipeline).unwrap_or_else(|| panic!("pipeline {pipeline} not in status: {s}"))
        ["dead_letters"]
        .as_u64()
        .unwrap_or_else(|| panic!("dead_letters missing: {s}"))
}

/// Every column of the fidelity table: (name, SQL type).
const COLUMNS: &[(&str, &str)] = &[
    ("c_smallint", "smallint"),
    ("c_int", "integer"),
    ("c_bigint", "bigint"),
    ("c_numeric", "numeric"),
    ("c_numeric_scaled", "numeric(60,20)"),
    ("c_real", "real"),
    ("c_double", "double precision"),
    ("c_money", "money"),
    ("c_char", "char(5)"),
    ("c_varchar", "varchar(40)"),
    ("c_text", "text"),
    ("c_name", "name"),
    ("c_bytea", "bytea"),
    ("c_bool", "boolean"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_timestamp", "timestamp"),
    ("c_timestamptz", "timestamptz"),
    ("c_interval", "interval"),
    ("c_uuid", "uuid"),
    ("c_inet", "inet"),
    ("c_cidr", "cidr"),
    ("c_macaddr", "macaddr"),
    ("c_macaddr8", "macaddr8"),
    ("c_bit", "bit(8)"),
    ("c_varbit", "varbit"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_int_arr", "integer[]"),
    ("c_text_arr", "text[]"),
    ("c_int_2d", "integer[]"),
    ("c_tstz_arr", "timestamptz[]"),
    ("c_float_arr", "float8[]"),
    ("c_num_arr", "numeric[]"),
    ("c_bytea_arr", "bytea[]"),
    ("c_interval_arr", "interval[]"),
    ("c_enum", "mood"),
    ("c_enum_arr", "mood[]"),
    ("c_domain", "posint"),
    ("c_domain_citext", "email"),
    ("c_composite", "complex"),
    ("c_composite_arr", "complex[]"),
    ("c_int4range", "int4range"),
    ("c_numrange", "numrange"),
    ("c_tsrange", "tsrange"),
    ("c_tstzrange", "tstzrange"),
    ("c_daterange", "daterange"),
    ("c_int4multirange", "int4multirange"),
    ("c_tstzmultirange", "tstzmultirange"),
    ("c_hstore", "hstore"),
    ("c_citext", "citext"),
    ("c_tsvector", "tsvector"),
    ("c_tsquery", "tsquery"),
    ("c_xml", "xml"),
    ("c_oid", "oid"),
    ("c_pg_lsn", "pg_lsn"),
    ("c_point", "point"),
    ("c_box", "box"),
    ("c_circle", "circle"),
    ("c_lseg", "lseg"),
    ("c_path", "path"),
    ("c_polygon", "polygon"),
];

const TYPES_DDL: &str = "CREATE EXTENSION hstore; CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'with space', 'Ünï \"q\"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN email AS citext;
CREATE TYPE complex AS (r float8, i float8, label text);";

/// Row values, one string of SQL literals per row in COLUMNS order.
fn rows() -> Vec<(i32, Vec<&'static str>)> {
    vec![
        (
            1,
            vec![
                "1",
                "42",
                "9000000000",
                "3.14159",
                "2.50",
                "1.5",
                "2.25",
                "12.34",
                "'ab'",
                "'plain'",
                "'hello world'",
                "'nm'",
                "'\\x0001'",
                "true",
                "'2020-03-15'",
                "'13:45:00'",
                "'13:45:00+02'",
                "'2020-03-15 13:45:00.123456'",
                "'2020-03-15 13:45:00.5+02'",
                "'1 year 2 months 3 days 04:05:06'",
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                "'192.168.0.1/24'",
                "'10.0.0.0/8'",
                "'08:00:2b:01:02:03'",
                "'08:00:2b:01:02:03:04:05'",
                "B'10100101'",
                "B'101'",
                "'{\"b\": 1, \"a\": [1, 2.0]}'",
                "'{\"z\": 1, \"a\": {\"n\": null}}'",
                "'{1,2,3}'",
                "'{a,b}'",
                "'{{1,2},{3,4}}'",
                "ARRAY['2020-01-01 00:00:00+00'::timestamptz]",
                "'{1.5,2}'",
                "'{1.10,2}'",
                "ARRAY['\\x01'::bytea]",
                "ARRAY['1 day'::interval]",
                "'ok'",
                "'{sad,ok}'",
                "7",
                "'Me@Example.COM'",
                "ROW(1.5, 2.5, 'one')",
                "ARRAY[ROW(1, 2, 'x')::complex]",
                "'[1,10)'",
                "'[1.5,2.5]'",
                "'[2020-01-01 10:00,2020-01-02 10:00)'",
                "'[2020-01-01 10:00+00,2020-01-02 10:00+00)'",
                "'[2020-01-01,2020-02-01)'",
                "'{[1,3),[5,7)}'",
                "'{[2020-01-01 00:00+00,2020-01-02 00:00+00)}'",
                "'a=>1, b=>2'",
                "'CamelCase'",
                "'a fat cat'",
                "'fat & cat'",
                "'<a>x</a>'",
                "12345",
                "'16/B374D848'",
                "'(1,2)'",
                "'((0,0),(1,1))'",
                "'<(0,0),1>'",
                "'[(0,0),(1,1)]'",
                "'[(0,0),(1,1),(2,0)]'",
                "'((0,0),(1,1),(2,0))'",
            ],
        ),
        (
            2,
            vec![
                "-32768",
                "-2147483648",
                "9223372036854775807",
                "'123456789012345678901234567890.123456789012345678901234567890'",
                "'-0.00000000000000000001'",
                "'-0'",
                "'Infinity'",
                "'-92233720368547758.08'",
                "'é'",
                "'ünïcødé ✓ 🦀 \"quoted\" \\ back'",
                "E'line1\\nline2\\ttab \\u0001 ctl \\\\ \\' \"'",
                "repeat('n', 63)",
                "'\\x00ff5c27225c'",
                "false",
                "'4713-01-01 BC'",
                "'24:00:00'",
                "'24:00:00-15:59'",
                "'294247-01-01 00:00:00'",
                "'0044-03-15 12:00:00+00 BC'",
                "'-178000000 years -1 second'",
                "'00000000-0000-0000-0000-000000000000'",
                "'::ffff:1.2.3.4/128'",
                "'2001:db8::/32'",
                "'ff:ff:ff:ff:ff:ff'",
                "'ff:ff:ff:ff:ff:ff:ff:ff'",
                "B'00000000'",
                "B''",
                "'{\"a\": 1, \"a\": 2, \"n\": 1e400, \"s\": \"\\u00e9\", \"x\": 0.10}'",
                "'{\"big\": 123456789012345678901234567890, \"e\": 1.5e-7, \"arr\": [null, true, \"\"]}'",
                "'[0:1]={1,2}'",
                "ARRAY[NULL, 'x', '', 'NULL', 'with,comma', 'quote\"d']",
                "'{{1,NULL},{NULL,4}}'",
                "ARRAY[NULL::timestamptz, 'infinity', '-infinity']",
                "ARRAY['NaN', 'Infinity', '-Infinity', '-0', '1e-310', '1.7976931348623157e308']::float8[]",
                "ARRAY['NaN', '1e-30', '100000000000000000000000000000.5']::numeric[]",
                "ARRAY[NULL, '\\x']::bytea[]",
                "ARRAY['-1 mon 2 days', '00:00:00.000001']::interval[]",
                "'with space'",
                "ARRAY['Ünï \"q\"', NULL]::mood[]",
                "2147483647",
                "'ÄÖÜ@x.y'",
                "ROW('NaN', '-0', 'a,b \"q\" (p)')",
                "ARRAY[NULL, ROW(NULL, NULL, NULL)::complex]",
                "'empty'",
                "'(,)'",
                "'[2020-01-01,infinity)'",
                "'(-infinity,2020-01-01 00:00+00]'",
                "'[,2020-01-01)'",
                "'{}'",
                "'{[2020-01-01 00:00+00,),(,1999-01-01 00:00+00)}'",
                "'\"k y\"=>\"v\\\"q\", b=>NULL, \"\"=>\"\"'",
                "'ÀÉÎ'",
                "'a:1A fat:2B,4C cat:5D'",
                "'!(a | b) <-> c:*'",
                "'<a b=\"1\">x &amp; y<!-- c --><![CDATA[<z>]]></a>'",
                "4294967295",
                "'FFFFFFFF/FFFFFFFF'",
                "'(0.1,-0)'",
                "'((1e300,1e-300),(-1,-1))'",
                "'<(1,1),0.3333333333333333>'",
                "'[(1,2),(3,4)]'",
                "'((0,0),(1,1))'",
                "'((0,0),(0,1),(1,1),(1,0))'",
            ],
        ),
        (3, vec!["NULL"; COLUMNS.len()]),
        (
            4,
            vec![
                "0",
                "0",
                "0",
                "'NaN'",
                "'0.10000000000000000000'",
                "'NaN'",
                "'-Infinity'",
                "0",
                "'     '",
                "''",
                "''",
                "''",
                "'\\x'",
                "NULL",
                "'infinity'",
                "'00:00:00'",
                "'00:00:00+15:59'",
                "'-infinity'",
                "'infinity'",
                "'0'",
                "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
                "'0.0.0.0/0'",
                "'::/0'",
                "'00:00:00:00:00:00'",
                "'00:00:00:00:00:00:00:00'",
                "B'11111111'",
                "B'1'",
                "'null'",
                "'null'",
                "'{}'",
                "'{}'",
                "'{}'",
                "'{}'",
                "ARRAY[1::float8/3, (1::float4/3)::float8, 0.1::float8, 100::float8]",
                "'{}'",
                "'{}'",
                "'{}'",
                "'sad'",
                "'{}'",
                "1",
                "''",
                "ROW(1::float8/3, 1e-310, '')",
                "'{}'",
                "'(,)'",
                "'empty'",
                "'empty'",
                "'empty'",
                "'empty'",
                "'{}'",
                "'{}'",
                "''",
                "''",
                "''",
                "''",
                "''",
                "0",
                "'0/0'",
                "'(0.3333333333333333,1e-310)'",
                "'((0,0),(0,0))'",
                "'<(0,0),0>'",
                "'[(0,0),(0,0)]'",
                "'[(0,0)]'",
                "'((0,0))'",
            ],
        ),
        (
            5,
            vec![
                "1",
                "1",
                "1",
                "'1e-1000'",
                "'99999999999999999999999999999999999999.99999999999999999999'",
                "'3.4028235e38'",
                "'4.9e-324'",
                "'92233720368547758.07'",
                "'x'",
                "'ok'",
                "'ok'",
                "'ok'",
                "'\\x00'",
                "true",
                "'0001-01-01'",
                "'23:59:59.999999'",
                "'23:59:59.999999+00'",
                "'1970-01-01 00:00:00'",
                "'1969-12-31 23:59:59.999999+00'",
                "'-1 days +23:59:59.999999'",
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                "'1.2.3.4'",
                "'1.2.3.4/32'",
                "'01:02:03:04:05:06'",
                "'01:02:03:ff:fe:04:05:06'",
                "B'00000001'",
                "B'0101010101010101010101010101010101'",
                "'[1, 2, 3]'",
                "'[]'",
                "'{0}'",
                "'{\"\"}'",
                "'{{{1}}}'",
                "ARRAY['2000-02-29 12:00:00+05:30'::timestamptz]",
                "ARRAY[1e15, 1e16, 1e17, 123456789.123456789]::float8[]",
                "'{0.0, -0.0, 1.000}'",
                "'{}'",
                "'{}'",
                "'ok'",
                "'{ok,ok}'",
                "1",
                "'a@b'",
                "ROW('Infinity', '-Infinity', NULL)",
                "'{}'",
                "'[-2147483648,2147483647)'",
                "'[-1e-20,1e20)'",
                "'[1999-12-31 23:59:59.999999,2000-01-01 00:00:00)'",
                "'[2000-01-01 00:00+14,2000-01-01 00:00-12)'",
                "'[0001-01-01,9999-12-31]'",
                "'{[1,2),[3,4),[5,6)}'",
                "'{}'",
                "'a=>\"\"'",
                "'ß'",
                "'ü:1'",
                "'ü'",
                "'<é/>'",
                "1",
                "'1/0'",
                "'(1e-310,-1e308)'",
                "'((0.1,0.2),(0.3,0.4))'",
                "'<(0.1,0.2),0.3>'",
                "'[(0.1,0.2),(0.3,0.4)]'",
                "'[(0.1,0.2),(0.3,0.4)]'",
                "'((0.1,0.2),(0.3,0.4),(0.5,0.6))'",
            ],
        ),
    ]
}

fn create_fidelity_table(w: &World) {
    w.sql(TYPES_DDL);
    let cols: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    w.sql(&format!("CREATE TABLE v (id integer PRIMARY KEY, dummy integer NOT NULL DEFAULT 0, {})", cols.join(", ")));
    for (id, vals) in rows() {
        assert_eq!(vals.len(), COLUMNS.len(), "row {id} has every column");
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        w.sql(&format!("INSERT INTO v (id, {}) VALUES ({id}, {})", names.join(", "), vals.join(", ")));
    }
}

/// A pipeline with one field per column: a JSON view, a hash view, a key template over date and
/// timestamptz text, and a search target storing every field.
fn fidelity_pipeline(name: &str) -> String {
    let mut y = format!("version: 1\npipeline: {name}\nsource: {{ table: v }}\nfields:\n  id: v.id\n");
    for (n, _) in COLUMNS {
        y.push_str(&format!("  {n}: v.{n}\n"));
    }
    y.push_str("targets:\n");
    y.push_str(&format!("  - redis: {{ key: \"{name}:{{id}}\", type: json }}\n"));
    y.push_str(&format!("  - redis: {{ key: \"{name}h:{{id}}\", type: hash }}\n"));
    y.push_str(&format!("  - redis: {{ key: \"{name}k:{{c_date}}|{{c_timestamptz}}|{{c_interval}}|{{c_double}}|{{id}}\", type: hash, fields: [id] }}\n"));
    y.push_str("  - search:\n      id: id\n      fields:\n");
    for (n, _) in COLUMNS {
        y.push_str(&format!("        {n}: {{ type: stored_only }}\n"));
    }
    y
}

/// The records as `to_jsonb` gives each column, under the pinned settings.
fn fidelity_expected(w: &World) -> BTreeMap<String, Value> {
    let pairs: Vec<String> =
        std::iter::once("('id', to_jsonb(v.id))".to_string()).chain(COLUMNS.iter().map(|(n, _)| format!("('{n}', to_jsonb(v.{n}))"))).collect();
    pinned_expected(w, &format!("SELECT v.id::text, (SELECT jsonb_object_agg(k, val) FROM (VALUES {}) AS f(k, val)) FROM v", pairs.join(", ")))
}

/// The key-template view keys as Postgres prints the fields under the pinned settings.
fn fidelity_template_keys(w: &World, name: &str) -> Vec<String> {
    let out = pinned_text(
        w,
        &format!(
            "SELECT '{name}k:' || c_date::text || '|' || c_timestamptz::text || '|' || c_interval::text || '|' || c_double::text || '|' || id::text \
             FROM v WHERE c_date IS NOT NULL AND c_timestamptz IS NOT NULL AND c_interval IS NOT NULL AND c_double IS NOT NULL ORDER BY 1"
        ),
    );
    let mut keys: Vec<String> = out.lines().map(str::to_string).collect();
    keys.sort();
    keys
}

/// Asserts the JSON view, the hash view, the key-template keys and the stored search source of
/// every record equal the independent expectation. Returns the raw JSON views.
fn check_fidelity(w: &World, name: &str, expected: &BTreeMap<String, Value>, template_keys: &[String]) -> BTreeMap<String, String> {
    let mut raw = BTreeMap::new();
    assert_eq!(w.redis_keys(&format!("{name}:*")).len(), expected.len(), "json view count");
    for (id, want) in expected {
        let text = w.redis_get(&format!("{name}:{id}")).unwrap_or_else(|| panic!("{name}:{id} missing"));
        let got: Value = serde_json::from_str(&text).unwrap();
        let (got_obj, want_obj) = (got.as_object().unwrap(), want.as_object().unwrap());
        assert_eq!(got_obj.keys().collect::<Vec<_>>().len(), want_obj.len(), "{name}:{id} field count");
        for (field, w_val) in want_obj {
            assert_eq!(got_obj.get(field), Some(w_val), "{name}:{id} field {field}: JSON view differs from to_jsonb");
        }
        // The hash view: strings unquoted, other values as their JSON text, nulls absent.
        let hash = w.redis_hgetall(&format!("{name}h:{id}"));
        for (field, w_val) in want_obj {
            match (w_val, hash.get(field)) {
                (Value::Null, None) => {}
                (Value::Null, Some(h)) => panic!("{name}h:{id} stores null field {field} as {h:?}"),
                (_, None) => panic!("{name}h:{id} lacks field {field} (want {w_val})"),
                (Value::String(s), Some(h)) => assert_eq!(h, s, "{name}h:{id} field {field}: string stored unquoted"),
                (other, Some(h)) => {
                    let parsed: Value = serde_json::from_str(h).unwrap_or_else(|e| panic!("{name}h:{id} field {field} is not JSON text ({e}): {h}"));
                    assert_eq!(&parsed, other, "{name}h:{id} field {field}");
                }
            }
        }
        assert_eq!(hash.len(), want_obj.values().filter(|v| !v.is_null()).count(), "{name}h:{id}: one hash field per non-null field");
        raw.insert(id.clone(), text);
    }
    let mut keys = w.redis_keys(&format!("{name}k:*"));
    keys.sort();
    assert_eq!(keys, template_keys, "key-template keys use each field's text under the pinned settings");
    let docs = w.index_docs(name);
    assert_eq!(docs.len(), expected.len(), "index document count");
    for (id, want) in expected {
        let doc = docs.get(id).unwrap_or_else(|| panic!("document {id} missing"));
        for (field, w_val) in want.as_object().unwrap() {
            assert_eq!(doc.get(field).unwrap_or(&Value::Null), w_val, "document {id} stored field {field}");
        }
    }
    raw
}

#[test]
fn every_type_family_is_stored_as_to_jsonb_gives_it_even_under_hostile_server_defaults() {
    let mut w = World::on(&env().pg, "values", None);
    create_fidelity_table(&w);
    w.add_pipeline("vals", &fidelity_pipeline("vals"));
    let expected = fidelity_expected(&w);
    assert_eq!(expected.len(), 5);
    let template_keys = fidelity_template_keys(&w, "vals");
    assert!(template_keys.len() >= 3, "{template_keys:?}");
    w.setup();
    w.start();
    w.catch_up(&["vals"], &["vals"]);
    let before = check_fidelity(&w, "vals", &expected, &template_keys);

    // Streamed (keyed) derivation gives the same values as the snapshot.
    w.sql("UPDATE v SET dummy = dummy + 1");
    w.catch_up(&["vals"], &["vals"]);
    let streamed = check_fidelity(&w, "vals", &expected, &template_keys);
    assert_eq!(streamed, before, "streamed records are byte-identical to snapshot records");
    assert_eq!(w.stop(), 0);

    // Hostile defaults on the database and on the role in this database (which does not leak to
    // other tests' databases).
    let db = w.db.clone();
    w.sql(&format!(
        "ALTER DATABASE {db} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {db} SET TimeZone = 'Asia/Kolkata'; \
         ALTER DATABASE {db} SET extra_float_digits = 0; ALTER DATABASE {db} SET bytea_output = 'escape'; \
         ALTER DATABASE {db} SET IntervalStyle = 'sql_standard'; \
         ALTER ROLE postgres IN DATABASE {db} SET DateStyle = 'German, MDY'; \
         ALTER ROLE postgres IN DATABASE {db} SET TimeZone = 'America/St_Johns'; \
         ALTER ROLE postgres IN DATABASE {db} SET extra_float_digits = -15; \
         ALTER ROLE postgres IN DATABASE {db} SET IntervalStyle = 'iso_8601'"
    ));
    // They are in effect for new sessions (and change what a plain session prints).
    assert_eq!(w.sql("SHOW TimeZone"), "America/St_Johns");
    assert_eq!(w.sql("SHOW extra_float_digits"), "-15");
    assert_eq!(w.sql("SHOW bytea_output"), "escape");
    assert_ne!(w.sql("SELECT to_jsonb(c_timestamptz)::text FROM v WHERE id = 1"), pinned_text(&w, "SELECT to_jsonb(c_timestamptz)::text FROM v WHERE id = 1"));
    assert_ne!(w.sql("SELECT to_jsonb(c_float_arr)::text FROM v WHERE id = 4"), pinned_text(&w, "SELECT to_jsonb(c_float_arr)::text FROM v WHERE id = 4"));

    // Restart; a second pipeline over the same table is derived by a fresh snapshot under those
    // defaults, the first one by keyed re-derivation of every row.
    w.add_pipeline("vals2", &fidelity_pipeline("vals2"));
    w.setup();
    w.start();
    w.sql("UPDATE v SET dummy = dummy + 1");
    w.catch_up(&["vals", "vals2"], &["vals", "vals2"]);
    let hostile = check_fidelity(&w, "vals", &expected, &template_keys);
    assert_eq!(hostile, before, "hostile defaults changed what deriver stores");
    let template_keys2 = fidelity_template_keys(&w, "vals2");
    let snap = check_fidelity(&w, "vals2", &expected, &template_keys2);
    for (id, text) in &snap {
        let a: Value = serde_json::from_str(text).unwrap();
        let b: Value = serde_json::from_str(&before[id]).unwrap();
        assert_eq!(a, b, "snapshot under hostile defaults: record {id}");
    }
    assert_eq!(w.stop(), 0);
}

const TYPED_DDL: &str = "CREATE TABLE typed (id integer PRIMARY KEY, n numeric, fx jsonb, d timestamptz, b jsonb, k jsonb, label text)";

const TYPED_PIPELINE: &str = r#"version: 1
pipeline: typed
source: { table: typed }
fields:
  id: typed.id
  n: { sql: typed.n, type: i64 }
  fx: { sql: typed.fx, type: f64 }
  d: { sql: typed.d, type: date }
  b: { sql: typed.b, type: bool }
  k: { sql: typed.k, type: keyword }
  label: typed.label
targets:
  - search:
      id: id
      fields:
        n: { type: i64, stored: true, filterable: true }
        fx: { type: f64, stored: true, sortable: true }
        d: { type: date, stored: true, sortable: true }
        b: { type: bool, stored: true, filterable: true }
        k: { type: keyword, stored: true, facet: true }
        label: { type: text, stored: true }
  - redis: { key: "typed:{id}", type: json }
"#;

/// (id, n, fx, d, b, k, fits every declared type)
const TYPED_ROWS: &[(i32, &str, &str, &str, &str, &str, bool)] = &[
    (1, "42", "'1.5'", "'2020-05-01 10:00+00'", "'true'", "'\"alpha\"'", true),
    (2, "4.5", "'1.5'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (3, "1e30", "'1.5'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (4, "9223372036854775807", "'-0'", "'1970-01-01 00:00+00'", "'false'", "'1'", true),
    (5, "9223372036854775808", "'2'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (6, "'NaN'", "'2'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (7, "-3", "'\"abc\"'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (8, "-3", "'\"NaN\"'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", true),
    (9, "-3", "'true'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (10, "-3", "'2.5'", "'infinity'", "'true'", "'\"a\"'", false),
    (11, "-3", "'2.5'", "'0044-03-15 12:00+00 BC'", "'true'", "'\"a\"'", false),
    (12, "-3", "'2.5'", "'294247-01-01 00:00+00'", "'true'", "'\"a\"'", false),
    (13, "-3", "'2.5'", "'2020-05-01 10:00+00'", "'\"yes\"'", "'\"a\"'", false),
    (14, "-3", "'2.5'", "'2020-05-01 10:00+00'", "'1'", "'\"a\"'", false),
    (15, "NULL", "NULL", "NULL", "NULL", "NULL", true),
    (16, "0", "'{\"x\": 1}'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (17, "7", "'[1, 2.5]'", "'2020-05-01 10:00+00'", "'[true, false]'", "'[\"x\", \"y\", null]'", true),
    (18, "7", "'[1, \"oops\"]'", "'2020-05-01 10:00+00'", "'true'", "'\"a\"'", false),
    (19, "-0", "'1e-300'", "'2262-04-11 00:00+00'", "'false'", "'{\"obj\": true}'", true),
];

/// The types deriver hands to `json_build_object` without `to_jsonb` (`JSON_AS_IS_TYPES`) come
/// out exactly as through `to_jsonb`, for values at the edges of each type, in the pinned session
/// and in one with another time zone and date style.
#[test]
fn json_as_is_types_are_written_as_to_jsonb_writes_them() {
    let w = World::new("json_as_is");
    let strings = [
        "''",
        "'plain words'",
        r#"E'quote " backslash \\ slash / tab \t nl \n cr \r bell \007 esc \033 del \177 u001f \037'"#,
        "'é ☃ 𝄞 \u{2028} \u{2029} \u{feff}'",
        "'trailing spaces   '",
        "repeat('long ', 20000)",
    ];
    let values: &[(&str, &[&str])] = &[
        ("text", &strings),
        ("varchar", &strings),
        ("bpchar", &["'a'", "'padded'::char(12)", r#"E'x"y\\z'::char(8)"#, "''"]),
        ("int2", &["0", "-32768", "32767"]),
        ("int4", &["0", "-2147483648", "2147483647"]),
        ("int8", &["0", "-9223372036854775808", "9223372036854775807"]),
        ("bool", &["true", "false"]),
        ("date", &["'2024-02-29'", "'0001-01-01 BC'", "'294276-12-31'", "'infinity'", "'-infinity'", "'epoch'"]),
        ("timestamp", &["'2024-02-29 23:59:59.999999'", "'1999-01-08 04:05:06'", "'4713-01-01 00:00:00 BC'", "'infinity'", "'-infinity'"]),
        ("timestamptz", &["'2024-02-29 23:59:59.123456+05:45'", "'1901-12-13 20:45:52-00:00'", "'0010-06-01 12:00:00+14 BC'", "'infinity'", "'-infinity'"]),
    ];
    let listed: Vec<&str> = values.iter().map(|(t, _)| *t).collect();
    assert_eq!(listed, deriver::pipeline::sql::JSON_AS_IS_TYPES, "every as-is type has values to check");
    for session in [PINNED, "SET datestyle = 'SQL, DMY'; SET timezone = 'America/St_Johns'; SET extra_float_digits = 0; "] {
        for (ty, vals) in values {
            let rows: Vec<String> = std::iter::once("(NULL)".to_string()).chain(vals.iter().map(|v| format!("(({v})::{ty})"))).collect();
            let out = w.sql(&format!(
                "{session}SELECT count(*) || ' ' || count(*) FILTER (WHERE a IS DISTINCT FROM b) || coalesce(' ' || string_agg(a || ' <> ' || b, ' | ') FILTER (WHERE a IS DISTINCT FROM b), '') \
                 FROM (SELECT json_build_object('v', v)::text AS a, json_build_object('v', to_jsonb(v))::text AS b FROM (VALUES {}) AS t(v)) AS q",
                rows.join(", ")
            ));
            assert_eq!(out, format!("{} 0", vals.len() + 1), "{ty} under `{session}`: a value differs");
        }
    }
}

fn insert_typed(w: &World, rows: &[(i32, &str, &str, &str, &str, &str, bool)]) {
    for (id, n, fx, d, b, k, _) in rows {
        w.sql(&format!("INSERT INTO typed VALUES ({id}, {n}, {fx}, {d}, {b}, {k}, 'row {id}')"));
    }
}

/// What the index must hold for a fitting record: the i64 and bool values as Postgres has them.
fn check_typed_doc(w: &World, docs: &BTreeMap<String, Value>, id: i32) {
    let doc = docs.get(&id.to_string()).unwrap_or_else(|| panic!("fitting record {id} is not indexed; log:\n{}", w.log_text()));
    let want = pinned_expected(
        w,
        &format!("SELECT id::text, jsonb_build_object('n', to_jsonb(n), 'fx', fx, 'd', to_jsonb(d), 'b', b, 'k', k) FROM typed WHERE id = {id}"),
    );
    let want = &want[&id.to_string()];
    for f in ["n", "fx", "d", "b", "k"] {
        assert_eq!(doc.get(f).unwrap_or(&Value::Null), &want[f], "document {id} field {f}");
    }
}

#[test]
fn declared_search_types_dead_letter_values_that_do_not_fit_and_go_on() {
    let mut w = World::on(&env().pg, "typed", None);
    w.sql(TYPED_DDL);
    insert_typed(&w, TYPED_ROWS);
    w.add_pipeline("typed", TYPED_PIPELINE);
    w.setup();
    w.start();
    w.catch_up(&["typed"], &["typed"]);
    w.wait_ready();

    let docs = w.index_docs("typed");
    let fitting: Vec<i32> = TYPED_ROWS.iter().filter(|r| r.6).map(|r| r.0).collect();
    let misfits: Vec<i32> = TYPED_ROWS.iter().filter(|r| !r.6).map(|r| r.0).collect();
    for id in &fitting {
        check_typed_doc(&w, &docs, *id);
    }
    for id in &misfits {
        assert!(!docs.contains_key(&id.to_string()), "record {id} does not fit its declared types but was indexed as {}", docs[&id.to_string()]);
    }
    assert_eq!(docs.len(), fitting.len(), "only fitting records are indexed");
    // Redis has no declared types: every record is there.
    assert_eq!(w.redis_keys("typed:*").len(), TYPED_ROWS.len());
    // Every misfit is reported, by key.
    let log = plain_log(&w);
    for id in &misfits {
        assert!(
            log.lines().any(|l| l.contains("record rejected (dead letter)") && (l.contains(&format!("key={id} ")) || l.ends_with(&format!("key={id}")))),
            "no dead letter logged for record {id}; log:\n{log}"
        );
    }
    assert!(dead_letters(&w, "typed") >= misfits.len() as u64, "status dead_letters: {}", http_status(&w));
    // A search over the i64 field finds the fitting values only (no misfit indexed as 0).
    let hits = search_ids(&w, serde_json::json!({ "filter": { "field": "n", "eq": 0 }, "limit": 100 }));
    assert_eq!(hits, vec!["19".to_string()], "only the record whose n is really (-)0 matches n = 0");

    // Streaming goes on: new fitting and misfitting rows, a misfit fixed, a fitting row broken.
    w.sql("INSERT INTO typed VALUES (100, 5, '1', '2021-01-01 00:00+00', 'true', '\"new\"', 'new good')");
    w.sql("INSERT INTO typed VALUES (101, 5.5, '1', '2021-01-01 00:00+00', 'true', '\"new\"', 'new bad')");
    w.sql("UPDATE typed SET n = 4 WHERE id = 2");
    w.catch_up(&["typed"], &["typed"]);
    let docs = w.index_docs("typed");
    check_typed_doc(&w, &docs, 100);
    check_typed_doc(&w, &docs, 2);
    assert!(!docs.contains_key("101"), "a streamed misfit was indexed: {}", docs["101"]);
    assert!(plain_log(&w).lines().any(|l| l.contains("record rejected (dead letter)") && l.contains("key=101")));
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon must keep running");
    assert_eq!(w.stop(), 0);
}

fn search_ids(w: &World, body: Value) -> Vec<String> {
    let r: Value =
        reqwest::blocking::Client::new().post(format!("http://127.0.0.1:{}/v1/indexes/typed/search", w.http_port)).json(&body).send().unwrap().json().unwrap();
    let mut ids: Vec<String> = r["hits"].as_array().unwrap_or_else(|| panic!("{r}")).iter().map(|h| h["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn a_rejected_update_does_not_leave_the_previous_document_searchable() {
    let mut w = World::on(&env().pg, "typedstale", None);
    w.sql(TYPED_DDL);
    insert_typed(&w, &TYPED_ROWS[..1]);
    w.add_pipeline("typed", TYPED_PIPELINE);
    w.setup();
    w.start();
    w.catch_up(&["typed"], &["typed"]);
    assert!(w.index_docs("typed").contains_key("1"));
    // The row changes to a value its declared type cannot hold: the record is a dead letter for
    // every target at once, so the index and Redis keep agreeing (both on the previous version)
    // until the row is fixed.
    w.sql("UPDATE typed SET n = 4.5, label = 'changed' WHERE id = 1");
    w.catch_up(&["typed"], &["typed"]);
    wait_for_log(&w, "record rejected (dead letter)");
    let json: Value = serde_json::from_str(&w.redis_get("typed:1").unwrap()).unwrap();
    let docs = w.index_docs("typed");
    let doc = docs.get("1").expect("the previous document stays");
    assert_ne!(json["label"], "changed", "Redis took a record the index refused");
    assert_eq!(doc["n"], json["n"], "the index and Redis disagree about record 1: {doc} vs {json}");
    w.sql("UPDATE typed SET n = 4 WHERE id = 1");
    w.catch_up(&["typed"], &["typed"]);
    let json: Value = serde_json::from_str(&w.redis_get("typed:1").unwrap()).unwrap();
    assert_eq!(json["label"], "changed");
    assert_eq!(w.index_docs("typed")["1"]["n"], 4);
    assert_eq!(w.stop(), 0);
}

const POISON_PIPELINE: &str = "version: 1\npipeline: poison\nsource: { table: p }\nfields:\n  id: p.id\n  inv: 100 / p.d\n  j: p.j\n  r: risky(p.id)\ntargets:\n  - redis: { key: \"p:{id}\" }\n  - search: { id: id, fields: { inv: { type: i64, stored: true } } }\n";

/// `1 / d` fails for d = 0, to_jsonb fails on a json NUL escape, `risky` raises for 13: per-row
/// SQL errors.
fn poison_table(w: &World) {
    w.sql("CREATE TABLE p (id integer PRIMARY KEY, d integer, j json); INSERT INTO p SELECT g, g, '{}' FROM generate_series(1, 50) g WHERE g <> 13");
    w.sql("CREATE FUNCTION risky(x integer) RETURNS integer LANGUAGE plpgsql AS $$ BEGIN IF x = 13 THEN RAISE EXCEPTION 'unlucky %', x; END IF; RETURN x * 2; END $$");
}

#[test]
fn a_row_postgres_cannot_derive_does_not_block_the_initial_snapshot() {
    let mut w = World::on(&env().pg, "poisonsnap", None);
    poison_table(&w);
    w.sql("UPDATE p SET d = 0 WHERE id = 7; UPDATE p SET j = '{\"a\": \"\\u0000\"}' WHERE id = 9");
    w.add_pipeline("poison", POISON_PIPELINE);
    w.setup();
    w.start();
    w.catch_up(&["poison"], &["poison"]);
    let keys = w.redis_keys("p:*");
    assert_eq!(keys.len(), 47, "every derivable record is there: {keys:?}");
    assert!(w.redis_get("p:7").is_none() && w.redis_get("p:9").is_none());
    assert_eq!(w.index_docs("poison").len(), 47);
    assert!(plain_log(&w).contains("record rejected (dead letter)"));
    assert!(dead_letters(&w, "poison") >= 2);
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_row_postgres_cannot_derive_is_dead_lettered_in_the_stream() {
    let mut w = World::on(&env().pg, "poison", None);
    poison_table(&w);
    w.add_pipeline("poison", POISON_PIPELINE);
    w.setup();
    w.start();
    w.catch_up(&["poison"], &["poison"]);
    assert_eq!(w.redis_keys("p:*").len(), 49);
    // Bad rows between good ones, in one transaction and alone.
    w.sql("BEGIN; UPDATE p SET d = 0, j = '[]' WHERE id = 20; UPDATE p SET d = 5 WHERE id = 21; INSERT INTO p VALUES (60, 0, '{}'), (61, 1, '{}'); COMMIT");
    w.sql("UPDATE p SET j = '{\"a\": \"\\u0000\"}' WHERE id = 9");
    w.sql("INSERT INTO p VALUES (13, 1, '{}')");
    w.sql("UPDATE p SET d = 2 WHERE id = 2");
    w.catch_up(&["poison"], &["poison"]);
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon must keep running");
    let r21: Value = serde_json::from_str(&w.redis_get("p:21").unwrap()).unwrap();
    assert_eq!(r21["inv"], 20);
    let r2: Value = serde_json::from_str(&w.redis_get("p:2").unwrap()).unwrap();
    assert_eq!(r2["inv"], 50);
    assert!(w.redis_get("p:61").is_some());
    assert!(w.redis_get("p:60").is_none() && w.redis_get("p:13").is_none());
    let log = plain_log(&w);
    for key in ["20", "60", "9", "13"] {
        assert!(
            log.lines().any(|l| l.contains("record rejected (dead letter)") && (l.contains(&format!("key={key} ")) || l.ends_with(&format!("key={key}")))),
            "no dead letter for {key}; log:\n{log}"
        );
    }
    assert!(dead_letters(&w, "poison") >= 4);
    assert_eq!(w.stop(), 0);
}

#[test]
fn a_dead_letter_is_retried_after_its_cause_is_fixed() {
    let mut w = World::on(&env().pg, "retry", None);
    poison_table(&w);
    w.add_pipeline("poison", POISON_PIPELINE);
    w.setup();
    w.start();
    w.catch_up(&["poison"], &["poison"]);
    w.sql("INSERT INTO p VALUES (13, 1, '{}')");
    w.catch_up(&["poison"], &["poison"]);
    assert!(w.redis_get("p:13").is_none());
    assert!(plain_log(&w).contains("record rejected (dead letter)"));
    // The cause goes away without touching the row (the function is fixed).
    w.sql("CREATE OR REPLACE FUNCTION risky(x integer) RETURNS integer LANGUAGE plpgsql AS $$ BEGIN RETURN x * 2; END $$");
    let mut present = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if w.redis_get("p:13").is_some() {
            present = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !present {
        // Not even a restart retries it.
        assert_eq!(w.stop(), 0);
        w.start();
        w.catch_up(&["poison"], &["poison"]);
        std::thread::sleep(Duration::from_secs(3));
    }
    let rec: Value = serde_json::from_str(&w.redis_get("p:13").expect("record 13 was never retried after its cause was fixed")).unwrap();
    assert_eq!(rec["r"], 26);
    assert!(w.index_docs("poison").contains_key("13"));
    assert_eq!(w.stop(), 0);
}

#[test]
fn sorted_set_scores_that_are_not_numbers_are_rejected_not_fatal() {
    let mut w = World::on(&env().pg, "zscore", None);
    w.sql("CREATE TABLE z (id integer PRIMARY KEY, grp text, score float8); INSERT INTO z VALUES (1, 'g', 1.5), (2, 'g', 'NaN'), (3, 'g', 'Infinity'), (4, 'g', '-Infinity'), (5, 'g', NULL), (6, 'g', 1e-310)");
    w.add_pipeline(
        "zs",
        "version: 1\npipeline: zs\nsource: { table: z }\nfields: { id: z.id, grp: z.grp, score: z.score }\ntargets:\n  - redis: { key: \"zs:{grp}\", type: zset, member: id, score: score }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["zs"], &[]);
    let got: BTreeMap<String, f64> = w.redis_zrange("zs:g").into_iter().collect();
    assert_eq!(got.get("1"), Some(&1.5));
    assert_eq!(got.get("3"), Some(&f64::INFINITY));
    assert_eq!(got.get("4"), Some(&f64::NEG_INFINITY));
    assert!(!got.contains_key("2"), "a NaN score cannot be a member: {got:?}");
    assert!(!got.contains_key("5"), "a NULL score contributes nothing: {got:?}");
    assert!(got.contains_key("6"));
    w.sql("UPDATE z SET score = 'NaN' WHERE id = 1; INSERT INTO z VALUES (7, 'g', 2)");
    w.catch_up(&["zs"], &[]);
    let got: BTreeMap<String, f64> = w.redis_zrange("zs:g").into_iter().collect();
    assert_eq!(got.get("7"), Some(&2.0));
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(w.stop(), 0);
}

#[test]
fn deeply_nested_json_is_stored_or_dead_lettered_by_key() {
    let mut w = World::on(&env().pg, "deepjson", None);
    let deep = |n: usize| format!("'{}{}'", "[".repeat(n), "]".repeat(n));
    w.sql(&format!("CREATE TABLE dj (id integer PRIMARY KEY, j jsonb); INSERT INTO dj VALUES (1, '{{}}'), (2, {}), (3, {})", deep(300), deep(100)));
    w.add_pipeline(
        "dj",
        "version: 1\npipeline: dj\nsource: { table: dj }\nfields: { id: dj.id, j: dj.j }\ntargets:\n  - redis: { key: \"dj:{id}\", type: json }\n",
    );
    w.setup();
    w.start();
    w.catch_up(&["dj"], &[]);
    w.sql(&format!("INSERT INTO dj VALUES (4, {}); UPDATE dj SET j = '[1]' WHERE id = 1", deep(300)));
    w.catch_up(&["dj"], &[]);
    assert!(w.daemon.as_mut().unwrap().try_wait().unwrap().is_none());
    // Compared as text: serde_json's recursion limit (128) cannot parse these values back.
    let rows = pinned_text(&w, "SELECT id::text || '|' || json_build_object('id', id, 'j', j)::text FROM dj ORDER BY id");
    let log = plain_log(&w);
    let mut stored = 0;
    for line in rows.lines() {
        let (id, want) = line.split_once('|').unwrap();
        match w.redis_get(&format!("dj:{id}")) {
            Some(text) => {
                stored += 1;
                assert_eq!(text.replace(' ', ""), want.replace(' ', ""), "dj:{id}");
            }
            None => assert!(
                log.lines().any(|l| l.contains("record rejected") && (l.contains(&format!("key={id} ")) || l.ends_with(&format!("key={id}")))),
                "record {id} is neither stored nor dead-lettered under its key; log:\n{}",
                log.lines().filter(|l| l.contains("reject")).collect::<Vec<_>>().join("\n")
            ),
        }
    }
    assert!(stored >= 2, "the shallow records are stored");
    assert_eq!(w.stop(), 0);
}

fn wait_for_log(w: &World, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !w.log_text().contains(text) {
        assert!(std::time::Instant::now() < deadline, "log never said {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
