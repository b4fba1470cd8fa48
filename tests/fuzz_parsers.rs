//! Property-based fuzzing (proptest) of deriver's public parsers: none may panic on any input,
//! and each keeps its own invariants (round trips, bounds, positions inside the file, 4xx and
//! never 5xx for a malformed search). Bounded so the whole file runs in well under a minute.
//!
//! - pipeline files: `pipeline::check::check` on arbitrary YAML-ish text and on mutations of the
//!   repository's pipeline files, plus deep nesting;
//! - `check::parse_on`, `check::parse_table_name`, `model::KeyTemplate::parse` / `render`,
//!   `check::locate_sql_error`;
//! - the search API: `http::query::parse`, `http::filter::parse` + `compile`, `SortSpec::parse`,
//!   `Cursor::decode`, and whole `search::Plan::new` + `run` against a small real index;
//! - `Lsn` text, `schema::parse_date`, `redact::redact`.

use std::path::Path;
use std::sync::OnceLock;

use deriver::http::filter;
use deriver::http::query;
use deriver::http::ranking::{Cursor, IdOrdCache, SortSpec};
use deriver::http::search::{Plan, SearchRequest};
use deriver::pipeline::check::{check, locate_sql_error, parse_on, parse_table_name};
use deriver::pipeline::model::{KeyTemplate, TemplatePart};
use deriver::sink::tantivy::schema::{build_schema, parse_date, register_tokenizers, DocBuilder};
use deriver::sink::tantivy::SearchIndex;
use deriver::source::Lsn;
use proptest::prelude::*;
use serde_json::{json, Value};

const FILMS: &str = include_str!("../pipelines/films.yaml");
const ACTORS: &str = include_str!("../pipelines/actors.yaml");
const CUSTOMERS: &str = include_str!("../pipelines/customers.yaml");

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 2000, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text that looks like YAML: indentation, keys, flow collections, quotes, anchors, tags.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("{ ".to_string()),
        Just(" }".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("<<: ".to_string()),
        Just("|\n".to_string()),
        Just(">-\n".to_string()),
        Just("# c\n".to_string()),
        Just("---\n".to_string()),
        Just("...\n".to_string()),
        Just("\t".to_string()),
        Just("version: 1\n".to_string()),
        Just("pipeline: p\n".to_string()),
        Just("source: { table: t }\n".to_string()),
        Just("fields:\n".to_string()),
        Just("targets:\n".to_string()),
        Just("  - redis: { key: \"k:{id}\" }\n".to_string()),
        Just("  - search: { id: id, fields: { id: { type: i64 } } }\n".to_string()),
        Just("lookups:\n".to_string()),
        Just("children:\n".to_string()),
        Just("tests:\n".to_string()),
        Just("on_error: stop\n".to_string()),
        "[a-z_]{1,8}".prop_map(|s| s),
        "[0-9.eE+-]{1,6}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
        "\\PC{0,12}".prop_map(|s| s),
    ];
    prop::collection::vec(token, 0..60).prop_map(|v| v.concat())
}

/// One edit of a text, at a position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, String),
    DuplicateLine(f64),
    SwapLines(f64, f64),
    Indent(f64, i8),
    Replace(f64, usize, String),
    Truncate(f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let frac = 0.0f64..1.0;
    prop_oneof![
        (frac.clone(), 1usize..20).prop_map(|(p, n)| Edit::Delete(p, n)),
        (frac.clone(), prop_oneof![yamlish(), "\\PC{1,5}".prop_map(|s| s), Just("{".to_string()), Just("\"".to_string()), Just("\n  ".to_string())])
            .prop_map(|(p, s)| Edit::Insert(p, s)),
        frac.clone().prop_map(Edit::DuplicateLine),
        (frac.clone(), frac.clone()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (frac.clone(), -4i8..4).prop_map(|(p, d)| Edit::Indent(p, d)),
        (
            frac.clone(),
            1usize..8,
            prop_oneof![
                Just("i64".to_string()),
                Just("nope".to_string()),
                Just("{x}".to_string()),
                Just("1".to_string()),
                Just("[]".to_string()),
                Just("~".to_string()),
                "[a-z]{1,6}".prop_map(|s| s)
            ]
        )
            .prop_map(|(p, n, s)| Edit::Replace(p, n, s)),
        frac.prop_map(Edit::Truncate),
    ]
}

fn boundary(text: &str, frac: f64) -> usize {
    let mut at = ((text.len() as f64) * frac) as usize;
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, e: &Edit) -> String {
    let lines = |t: &str| t.split('\n').map(str::to_string).collect::<Vec<_>>();
    match e {
        Edit::Delete(p, n) => {
            let a = boundary(text, *p);
            let mut b = (a + n).min(text.len());
            while !text.is_char_boundary(b) {
                b += 1;
            }
            format!("{}{}", &text[..a], &text[b..])
        }
        Edit::Insert(p, s) => {
            let a = boundary(text, *p);
            format!("{}{s}{}", &text[..a], &text[a..])
        }
        Edit::DuplicateLine(p) => {
            let mut l = lines(text);
            let i = ((l.len() as f64) * p) as usize % l.len().max(1);
            let line = l[i].clone();
            l.insert(i, line);
            l.join("\n")
        }
        Edit::SwapLines(a, b) => {
            let mut l = lines(text);
            let n = l.len().max(1);
            l.swap(((n as f64) * a) as usize % n, ((n as f64) * b) as usize % n);
            l.join("\n")
        }
        Edit::Indent(p, d) => {
            let mut l = lines(text);
            let i = ((l.len() as f64) * p) as usize % l.len().max(1);
            if *d >= 0 {
                l[i] = format!("{}{}", " ".repeat(*d as usize), l[i]);
            } else {
                let strip = (-*d as usize).min(l[i].len() - l[i].trim_start().len());
                l[i] = l[i][strip..].to_string();
            }
            l.join("\n")
        }
        Edit::Replace(p, n, s) => {
            let a = boundary(text, *p);
            let mut b = (a + n).min(text.len());
            while !text.is_char_boundary(b) {
                b += 1;
            }
            format!("{}{s}{}", &text[..a], &text[b..])
        }
        Edit::Truncate(p) => text[..boundary(text, *p)].to_string(),
    }
}

/// `check` never panics; a rejection lists at least one problem, each with a message and a
/// position inside the text (line 1..=lines+1).
fn check_invariants(text: &str) -> Result<(), TestCaseError> {
    let lines = text.split('\n').count() as u64;
    match check(Path::new("pipelines/films.yaml"), text) {
        Ok(p) => {
            prop_assert_eq!(&p.name, "films");
            prop_assert!(!p.fields.is_empty());
            prop_assert!(!p.search.is_empty() || !p.redis.is_empty());
            // Whatever passed the checker has a stable definition hash.
            let again = check(Path::new("pipelines/films.yaml"), text).unwrap();
            prop_assert_eq!(&p.hash, &again.hash);
        }
        Err(diags) => {
            prop_assert!(!diags.is_empty(), "a rejection with no diagnostic");
            for d in &diags {
                prop_assert!(!d.message.trim().is_empty(), "empty diagnostic message");
                prop_assert!(d.pos.line >= 1 && d.pos.line <= lines + 1, "line {} outside the file ({} lines): {}", d.pos.line, lines, d.message);
                let shown = d.to_string();
                prop_assert!(!shown.is_empty());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn check_survives_yamlish_text(text in yamlish()) {
        check_invariants(&text)?;
    }

    #[test]
    fn check_survives_arbitrary_unicode(text in "\\PC{0,300}") {
        check_invariants(&text)?;
    }

    #[test]
    fn check_survives_mutated_pipeline_files(which in 0usize..3, edits in prop::collection::vec(edit(), 1..6)) {
        let mut text = [FILMS, ACTORS, CUSTOMERS][which].to_string();
        for e in &edits {
            text = apply(&text, e);
        }
        // Named as films so the name check passes for FILMS; others produce a name diagnostic.
        check_invariants(&text)?;
    }
}

#[test]
fn the_repository_pipelines_are_valid() {
    for (name, text) in [("films", FILMS), ("actors", ACTORS), ("customers", CUSTOMERS)] {
        let p = check(Path::new(&format!("pipelines/{name}.yaml")), text);
        assert!(p.is_ok(), "{name}: {:?}", p.err());
    }
}

#[test]
fn check_survives_deep_nesting_and_huge_inputs() {
    // Run on a thread with a main-thread-sized stack, as deriver checks files on its main thread.
    let handle = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(|| {
            for depth in [100usize, 1_000, 10_000, 100_000] {
                for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
                    let text = if open == "- " {
                        (0..depth.min(5_000)).map(|i| format!("{}- x\n", "  ".repeat(i))).collect::<String>()
                    } else {
                        format!("fields: {}1{}", open.repeat(depth), close.repeat(depth))
                    };
                    let r = check(Path::new("p.yaml"), &text);
                    assert!(r.is_err());
                }
            }
            // Very long scalars and many keys.
            let long = format!(
                "version: 1\npipeline: p\nsource: {{ table: {} }}\nfields: {{ id: t.id }}\ntargets:\n  - redis: {{ key: \"k:{{id}}\" }}\n",
                "t".repeat(1 << 20)
            );
            let _ = check(Path::new("p.yaml"), &long);
            let many: String = (0..20_000).map(|i| format!("  f{i}: t.c{i}\n")).collect();
            let text = format!("version: 1\npipeline: p\nsource: {{ table: t }}\nfields:\n{many}targets:\n  - redis: {{ key: \"k:{{f1}}\" }}\n");
            let p = check(Path::new("p.yaml"), &text).expect("a pipeline with 20000 fields is valid");
            assert_eq!(p.fields.len(), 20_000);
            // Duplicate keys are an error, not a silent overwrite.
            let dup = "version: 1\npipeline: p\nsource: { table: t }\nfields: { id: t.id, id: t.other }\ntargets:\n  - redis: { key: \"k:{id}\" }\n";
            let errs = check(Path::new("p.yaml"), dup).unwrap_err();
            assert!(errs.iter().any(|d| d.message.contains("id")), "{errs:?}");
            // YAML aliases (billion laughs) do not blow up.
            let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..10 {
                laughs.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
            }
            laughs.push_str("version: 1\npipeline: p\nsource: { table: t }\nfields: { id: t.id }\ntargets:\n  - redis: { key: \"k:{id}\" }\n");
            let started = std::time::Instant::now();
            let _ = check(Path::new("p.yaml"), &laughs);
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "alias expansion took {:?}", started.elapsed());
        })
        .unwrap();
    handle.join().expect("check panicked on deep or huge input");
}

// ---------------------------------------------------------------------------------------------
// Small parsers
// ---------------------------------------------------------------------------------------------

fn identish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_$]{0,10}",
        "\"[^\"]{0,10}\"",
        "\"([^\"]|\"\"){0,10}\"",
        "\\PC{0,6}",
        Just(".".to_string()),
        Just(" ".to_string()),
        Just("\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(config(700))]

    #[test]
    fn parse_table_name_round_trips_through_quoting(parts in prop::collection::vec(identish(), 1..4), seps in prop::collection::vec(prop_oneof![Just("."), Just(" . "), Just(""), Just("..")], 0..3)) {
        let mut text = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                text.push_str(seps.get(i - 1).copied().unwrap_or("."));
            }
            text.push_str(p);
        }
        if let Ok(t) = parse_table_name(&text) {
            prop_assert!(!t.schema.is_empty() && !t.name.is_empty());
            let again = parse_table_name(&t.quoted());
            prop_assert_eq!(again.as_ref().ok(), Some(&t), "quoted form {} does not parse back", t.quoted());
        }
    }

    #[test]
    fn parse_table_name_survives_anything(text in "\\PC{0,40}") {
        let _ = parse_table_name(&text);
    }

    #[test]
    fn parse_on_survives_and_returns_equalities(
        terms in prop::collection::vec((identish(), identish(), identish(), identish()), 0..4),
        glue in prop::collection::vec(prop_oneof![Just(" AND "), Just(" and "), Just(" OR "), Just(" "), Just(" = "), Just("("), Just(")"), Just("AnD")], 0..4),
        noise in "\\PC{0,10}",
    ) {
        let mut text = String::new();
        for (i, (a, b, c, d)) in terms.iter().enumerate() {
            if i > 0 {
                text.push_str(glue.get(i - 1).copied().unwrap_or(" AND "));
            }
            text.push_str(&format!("{a}.{b} = {c}.{d}"));
        }
        for candidate in [text.clone(), format!("{text}{noise}"), format!("({text})"), noise.clone()] {
            if let Ok(eqs) = parse_on(&candidate) {
                prop_assert!(!eqs.is_empty(), "an accepted `on` has at least one equality: {candidate:?}");
                // Unquoted names fold to lower case, as Postgres does.
                for ((r1, c1), (r2, c2)) in &eqs {
                    for n in [r1, c1, r2, c2] {
                        prop_assert!(!n.chars().any(|c| c.is_whitespace() && !candidate.contains('"')), "{candidate:?} gave {eqs:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn key_templates_parse_and_render_back(parts in prop::collection::vec(prop_oneof!["[a-z_:/| -]{1,6}", "\\{[a-z_][a-z0-9_]{0,6}\\}", "\\PC{1,3}", Just("{".to_string()), Just("}".to_string()), Just("{}".to_string())], 0..8)) {
        let raw = parts.concat();
        if let Ok(t) = KeyTemplate::parse(&raw) {
            prop_assert!(t.fields().count() >= 1);
            prop_assert!(!raw.starts_with('_'));
            // Rendering every field as `{name}` gives the template back.
            let rendered = t.render(|f| Some(format!("{{{f}}}")));
            prop_assert_eq!(rendered.as_deref(), Some(raw.as_str()));
            // A NULL field: no key.
            prop_assert_eq!(t.render(|_| None), None);
            for p in &t.parts {
                if let TemplatePart::Literal(l) = p {
                    // (A stray `}` is accepted as a literal before a field but refused after
                    // the last one; both are harmless for Redis, so only `{` is checked.)
                    prop_assert!(!l.is_empty() && !l.contains('{'), "literal part {:?}", l);
                }
            }
        }
    }

    #[test]
    fn locate_sql_error_accepts_any_position(position in 0usize..100_000, extra in "\\PC{0,30}") {
        let p = check(Path::new("pipelines/films.yaml"), FILMS).unwrap();
        let sql = format!("SELECT {extra} FROM film");
        let _ = locate_sql_error(&p, &sql, position);
        let _ = locate_sql_error(&p, "", position);
        let _ = locate_sql_error(&p, &extra, position);
    }

    #[test]
    fn lsn_text_round_trips(v in any::<u64>(), junk in "\\PC{0,20}") {
        let lsn = Lsn(v);
        let text = lsn.to_string();
        prop_assert_eq!(text.parse::<Lsn>().ok(), Some(lsn));
        prop_assert_eq!(text.to_lowercase().parse::<Lsn>().ok(), Some(lsn));
        let _ = junk.parse::<Lsn>();
    }

    #[test]
    fn parse_date_never_panics(text in prop_oneof![
        "\\PC{0,40}",
        "[+-]?[0-9]{1,7}-[0-9]{1,2}-[0-9]{1,2}(T[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{1,12})?([+-][0-9]{2}:[0-9]{2}|Z)?)?( BC)?",
    ]) {
        if let Some(d) = parse_date(&text) {
            // Whatever is accepted is representable and stable.
            prop_assert_eq!(parse_date(&text), Some(d));
        }
    }

    #[test]
    fn redact_removes_url_and_conninfo_passwords(
        user in "[a-z]{1,8}",
        pw in "[A-Za-z0-9_~.-]{4,16}(%[0-9A-F]{2}[A-Za-z0-9]{1,4})?",
        host in "[a-z0-9.]{1,12}",
        before in "[a-z ]{0,10}",
        after in "[a-z ]{0,10}",
        scheme in prop_oneof![Just("postgres"), Just("postgresql"), Just("redis"), Just("rediss")],
    ) {
        let url = format!("{before}{scheme}://{user}:{pw}@{host}:5432/db?sslmode=disable {after}");
        let r = deriver::redact::redact(&url);
        prop_assert!(!r.contains(&pw), "{url} -> {r}");
        let kv = format!("{before} host={host} user={user} password={pw} dbname=x {after}");
        let r = deriver::redact::redact(&kv);
        prop_assert!(!r.contains(&pw), "{kv} -> {r}");
        let q = format!("{scheme}://{user}@{host}/db?password={pw}&x=1");
        let r = deriver::redact::redact(&q);
        prop_assert!(!r.contains(&pw), "{q} -> {r}");
    }

    #[test]
    fn redact_survives_anything(text in "\\PC{0,80}") {
        let _ = deriver::redact::redact(&text);
    }
}

// ---------------------------------------------------------------------------------------------
// The search API against a small real index
// ---------------------------------------------------------------------------------------------

const SEARCH_PIPELINE: &str = r#"version: 1
pipeline: films
source: { table: film }
fields:
  id: film.film_id
  title: film.title
  description: film.description
  category: film.category
  tags: film.tags
  rate: film.rate
  year: film.year
  count: film.count
  at: film.at
  flag: film.flag
targets:
  - search:
      id: id
      fields:
        title: { type: text, stored: true, highlight: true, boost: 2.0 }
        description: { type: text, stored: true, highlight: true, analyzer: en_stem, fuzzy: 1 }
        category: { type: keyword, facet: true, stored: true }
        tags: { type: keyword, facet: true, filterable: true }
        rate: { type: f64, filterable: true, sortable: true, stored: true }
        year: { type: i64, filterable: true, sortable: true }
        count: { type: u64, filterable: true }
        at: { type: date, sortable: true, filterable: true }
        flag: { type: bool, filterable: true }
      default_search_fields: [title, description]
"#;

fn index() -> &'static (SearchIndex, IdOrdCache) {
    static INDEX: OnceLock<(SearchIndex, IdOrdCache)> = OnceLock::new();
    INDEX.get_or_init(|| {
        let p = check(Path::new("films.yaml"), SEARCH_PIPELINE).unwrap();
        let target = p.search[0].clone();
        let schema = build_schema(&target);
        let index = tantivy::Index::create_in_ram(schema.clone());
        register_tokenizers(&index, &target);
        let builder = DocBuilder::new(&schema, &target);
        let key = schema.get_field("_key").unwrap();
        let mut writer: tantivy::IndexWriter<tantivy::TantivyDocument> = index.writer(20_000_000).unwrap();
        const CATEGORIES: [&str; 4] = ["Drama", "Sci-Fi", "Comedy", "Ünï"];
        let words = ["robot", "drama", "space", "ünïcødé", "love", "war", "cat", "dog", "night", "day"];
        for i in 0..60u64 {
            let rec = json!({
                "id": i,
                "title": format!("{} {} {i}", words[i as usize % 10], words[(i as usize * 3) % 10]),
                "description": format!("a tale of {} and {}", words[(i as usize + 1) % 10], words[(i as usize + 7) % 10]),
                "category": CATEGORIES[i as usize % 4],
                "tags": [format!("t{}", i % 5), format!("t{}", i % 7)],
                "rate": (i as f64) * 0.25,
                "year": 1990 + (i as i64 % 30) - 15,
                "count": i * 3,
                "at": format!("20{:02}-0{}-1{}T10:00:00+00:00", i % 30, 1 + i % 9, i % 10),
                "flag": i % 2 == 0,
            });
            let mut doc = builder.build(&i.to_string(), rec.as_object().unwrap()).unwrap();
            doc.add_text(key, i.to_string());
            writer.add_document(doc).unwrap();
            if i % 20 == 19 {
                writer.commit().unwrap();
            }
        }
        writer.commit().unwrap();
        let reader = index.reader().unwrap();
        reader.reload().unwrap();
        (SearchIndex { name: "films".into(), generation: 1, index, reader, schema, target }, IdOrdCache::default())
    })
}

const FIELDS: &[&str] = &["id", "title", "description", "category", "tags", "rate", "year", "count", "at", "flag", "nope", "_id", "_source", "_score", ""];
const OPS: &[&str] = &["eq", "in", "gt", "gte", "lt", "lte", "exists", "and", "or", "not", "field", "ne", "range"];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::num::f64::NORMAL.prop_map(|f| json!(f)),
        (-5i64..40).prop_map(|n| json!(n)),
        prop::sample::select(FIELDS).prop_map(|s| json!(s)),
        prop::sample::select(&["Drama", "t1", "2010-01-01", "2010-01-01T00:00:00Z", "NaN", "infinity", "1e400", "-0", "robot", ""][..]).prop_map(|s| json!(s)),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![prop::sample::select(OPS).prop_map(String::from), prop::sample::select(FIELDS).prop_map(String::from), "\\PC{0,6}"],
                    inner.clone()
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            // A well-formed condition with a random field, op and value.
            (prop::sample::select(FIELDS), prop::sample::select(&["eq", "in", "gt", "gte", "lt", "lte", "exists"][..]), inner.clone())
                .prop_map(|(f, op, v)| json!({ "field": f, op: v })),
            (prop::sample::select(&["and", "or", "not"][..]), inner).prop_map(|(c, v)| json!({ c: v })),
        ]
    })
}

fn query_text() -> impl Strategy<Value = String> {
    let tok = prop_oneof![
            prop::sample::select(
                &[
                    "robot",
                    "drama",
                    "OR",
                    "AND",
                    "NOT",
                    "-",
                    "+",
                    "\"",
                    "(",
                    ")",
                    ":",
                    "title:",
                    "category:",
                    "nope:",
                    "rate:",
                    "-\"",
                    "*",
                    "~",
                    "\\",
                    "^2",
                    " "
                ][..]
            )
            .prop_map(String::from),
            "[a-zü]{1,8}",
            "\\PC{1,4}",
        ];
    prop::collection::vec(tok, 0..30).prop_map(|v| v.join(" "))
}

fn assert_client_error(what: &str, e: &deriver::http::error::ApiError) -> Result<(), TestCaseError> {
    prop_assert!(e.status.is_client_error(), "{what}: a malformed request gave {} {}: {}", e.status, e.code, e.message);
    prop_assert!(!e.message.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn query_parse_is_lenient_and_bounded(q in prop_oneof![query_text(), "\\PC{0,200}".prop_map(|s| s)]) {
        let parsed = query::parse(&q, |f| matches!(f, "title" | "description" | "category"));
        let terms: usize = parsed.clauses.iter().map(|c| match c {
            query::Clause::Any(t) => t.len(),
            query::Clause::Not(_) => 1,
        }).sum();
        prop_assert!(terms <= query::MAX_TERMS, "{terms} terms");
        for c in &parsed.clauses {
            let ts: Vec<&query::Term> = match c {
                query::Clause::Any(t) => t.iter().collect(),
                query::Clause::Not(t) => vec![t],
            };
            for t in ts {
                prop_assert!(t.text.chars().count() <= query::MAX_TERM_CHARS);
                if let Some(f) = &t.field {
                    prop_assert!(matches!(f.as_str(), "title" | "description" | "category"), "unknown field {f} kept");
                }
            }
        }
    }

    #[test]
    fn filters_parse_and_compile_or_fail_with_a_4xx(v in json_value()) {
        let (idx, _) = index();
        match filter::parse(&v) {
            Ok(f) => {
                if let Err(e) = filter::compile(&f, idx) {
                    assert_client_error("compile", &e)?;
                }
            }
            Err(e) => assert_client_error("parse", &e)?,
        }
    }

    #[test]
    fn sort_specs_and_cursors_never_panic(sort in prop::collection::vec(prop_oneof![
        prop::sample::select(&["rate", "rate:desc", "rate:asc", "year:desc", "_score", "_score:asc", "at", "title", "nope", "rate:up", ":desc", "", "category"][..]).prop_map(String::from),
        "\\PC{0,10}",
    ], 0..10), cursor in prop_oneof!["[A-Za-z0-9_=+/-]{0,40}", "\\PC{0,30}"]) {
        let (idx, _) = index();
        match SortSpec::parse(Some(&sort), &idx.target) {
            Ok(spec) => {
                if let Err(e) = Cursor::decode(&cursor, &spec) {
                    assert_client_error("cursor", &e)?;
                }
            }
            Err(e) => assert_client_error("sort", &e)?,
        }
    }

    #[test]
    fn whole_searches_answer_or_fail_with_a_4xx(
        q in prop::option::of(query_text()),
        filter in prop::option::of(json_value()),
        sort in prop::option::of(prop::collection::vec(prop::sample::select(&["rate:desc", "year", "_score", "at:desc", "title", "nope"][..]).prop_map(String::from), 0..3)),
        limit in prop::option::of(prop_oneof![0usize..30, Just(1000usize), Just(usize::MAX)]),
        offset in prop::option::of(prop_oneof![0usize..70, Just(usize::MAX)]),
        facets in prop::option::of(prop::collection::vec((prop::sample::select(FIELDS), prop::option::of(prop_oneof![0usize..5, Just(usize::MAX)])), 0..3)),
        highlight in prop::option::of((prop::option::of(prop::collection::vec(prop::sample::select(FIELDS), 0..3)), prop::option::of("\\PC{0,5}"), prop::option::of(prop_oneof![0usize..50, Just(usize::MAX)]))),
        fields in prop::option::of(prop::collection::vec(prop::sample::select(FIELDS), 0..4)),
    ) {
        let (idx, cache) = index();
        let mut body = serde_json::Map::new();
        if let Some(q) = q { body.insert("q".into(), json!(q)); }
        if let Some(f) = filter { body.insert("filter".into(), f); }
        if let Some(s) = sort { body.insert("sort".into(), json!(s)); }
        if let Some(l) = limit { body.insert("limit".into(), json!(l)); }
        if let Some(o) = offset { body.insert("offset".into(), json!(o)); }
        if let Some(fs) = facets {
            body.insert("facets".into(), Value::Object(fs.into_iter().map(|(f, size)| (f.to_string(), json!({ "size": size }))).collect()));
        }
        if let Some((hf, tag, max)) = highlight {
            body.insert("highlight".into(), json!({ "fields": hf, "pre_tag": tag, "max_chars": max }));
        }
        if let Some(f) = fields { body.insert("fields".into(), json!(f)); }
        let body = Value::Object(body);
        let req: SearchRequest = match serde_json::from_value(body.clone()) {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        let plan = match Plan::new(req, idx) {
            Ok(p) => p,
            Err(e) => return assert_client_error(&body.to_string(), &e),
        };
        match plan.run(idx, cache, None) {
            Ok(resp) => {
                let v = serde_json::to_value(&resp).unwrap();
                let hits = v["hits"].as_array().unwrap();
                prop_assert!(hits.len() as u64 <= v["total"]["value"].as_u64().unwrap_or(u64::MAX).max(hits.len() as u64));
                prop_assert!(hits.len() <= body.get("limit").and_then(Value::as_u64).unwrap_or(20) as usize);
                // Following next_cursor never fails.
                if let Some(c) = v["next_cursor"].as_str() {
                    let mut next = body.as_object().unwrap().clone();
                    next.insert("cursor".into(), json!(c));
                    next.remove("offset");
                    if let Ok(req) = serde_json::from_value::<SearchRequest>(Value::Object(next)) {
                        match Plan::new(req, idx) {
                            Ok(p) => { if let Err(e) = p.run(idx, cache, None) { assert_client_error("next page", &e)?; } }
                            Err(e) => assert_client_error("next page plan", &e)?,
                        }
                    }
                }
            }
            Err(e) => assert_client_error(&body.to_string(), &e)?,
        }
    }
}

#[test]
fn deeply_nested_and_oversized_filters_are_refused_not_crashed() {
    let (idx, _) = index();
    for comb in ["not", "and", "or"] {
        let mut v = json!({ "field": "rate", "gte": 1 });
        for _ in 0..2_000 {
            // Built by moving (json! would serialize the whole tree again, recursively).
            let inner = if comb == "not" { v } else { Value::Array(vec![v]) };
            v = Value::Object(std::iter::once((comb.to_string(), inner)).collect());
        }
        let e = filter::parse(&v).unwrap_err();
        assert!(e.status.is_client_error() && e.message.contains("nested"), "{}", e.message);
        // Dropping such a value must not blow the stack either (serde_json drops recursively).
        std::mem::forget(v);
    }
    let wide = json!({ "and": (0..10_000).map(|i| json!({ "field": "year", "eq": i })).collect::<Vec<_>>() });
    let e = filter::parse(&wide).unwrap_err();
    assert!(e.status.is_client_error(), "{}", e.message);
    let many_in = json!({ "field": "category", "in": (0..100_000).map(|i| json!(format!("c{i}"))).collect::<Vec<_>>() });
    match filter::parse(&many_in) {
        Ok(f) => assert!(filter::compile(&f, idx).is_err()),
        Err(e) => assert!(e.status.is_client_error()),
    }
    let huge_q = "robot ".repeat(200_000);
    let parsed = query::parse(&huge_q, |_| false);
    assert!(parsed.clauses.len() <= query::MAX_TERMS);
}
