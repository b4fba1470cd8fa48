//! The data team's commands against real Postgres and Redis: `deriver test`, `preview`, `plan`
//! and `validate` with the environment.

mod support;

use support::*;

#[test]
fn pipeline_fixtures_pass_and_a_failing_fixture_shows_a_diff() {
    let w = World::new("fixtures");
    w.add_repo_pipeline("films");
    w.add_repo_pipeline("customers");
    let (code, out, err) = w.run_cli(&["test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok    films: films list their actors in order"), "{out}");
    assert!(out.contains("5 passed, 0 failed"), "{out}");
    // Fixtures never touch real data.
    assert_eq!(w.sql("SELECT count(*) FROM film WHERE film_id IN (7, 8) AND title IN ('Alpha', 'Solo')"), "0");

    let films = std::fs::read_to_string(w.pipelines.join("films.yaml")).unwrap();
    w.add_pipeline("films", &films.replace("actors: [Bo Abe, Ann Zed]", "actors: [Ann Zed, Bo Abe]"));
    let (code, out, _) = w.run_cli(&["test", "films"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  films: films list their actors in order"), "{out}");
    assert!(out.contains(r#"actors: expected ["Ann Zed","Bo Abe"], got ["Bo Abe","Ann Zed"]"#), "{out}");
    assert!(out.contains("2 passed, 1 failed"), "{out}");
    let (code, _, err) = w.run_cli(&["test", "nope"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn preview_shows_records_and_writes_without_writing() {
    let w = World::new("preview");
    w.add_repo_pipeline("films");
    w.add_repo_pipeline("category_films");
    let (code, out, err) = w.run_cli(&["preview", "films", "--key", "1", "424242"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"title\": \"ACADEMY DINOSAUR\""), "{out}");
    assert!(out.contains("search:films → upsert document 1"), "{out}");
    assert!(out.contains(&format!("redis json {}:film:1 ", w.prefix())) || out.contains("redis json deriver:film:1 "), "{out}");
    assert!(out.contains("key 424242: no record"), "{out}");
    let key = w.sql("SELECT film_id || ':' || category_id FROM film_category WHERE film_id = 1 ORDER BY category_id LIMIT 1");
    let category = w.sql("SELECT c.name FROM film_category fc JOIN category c USING (category_id) WHERE fc.film_id = 1 ORDER BY category_id LIMIT 1");
    let (code, out, _) = w.run_cli(&["preview", "category_films", "--key", &key]);
    assert_eq!(code, 0);
    assert!(out.contains("redis zset") && out.contains(&format!(":category:{category}:films [\"1\",\"0.99\"]")), "{out}");
    assert!(w.redis_keys("*").is_empty(), "preview wrote to Redis");
}

#[test]
fn plan_tells_unchanged_in_place_and_rebuild() {
    let mut w = World::new("plan");
    w.add_repo_pipeline("films");
    w.setup();
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("films") && out.contains("rebuild (new"), "{out}");
    w.start();
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.stop(), 0);
    let (code, out, err) = w.run_cli(&["plan"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("films") && out.contains("unchanged"), "{out}");

    let films = std::fs::read_to_string(w.pipelines.join("films.yaml")).unwrap();
    let with_new_view = films.replace(
        "  - redis:\n      key: \"film:{film_id}:summary\"",
        "  - redis:\n      key: \"film:{film_id}:title\"\n      type: hash\n      fields: [title]\n  - redis:\n      key: \"film:{film_id}:summary\"",
    );
    assert_ne!(with_new_view, films);
    w.add_pipeline("films", &with_new_view);
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("in-place"), "{out}");
    // An in-place change is applied on the next start: the new view appears, nothing else moves.
    w.start();
    wait_for("the new view", std::time::Duration::from_secs(60), || !w.redis_hgetall("film:1:title").is_empty());
    w.catch_up(&["films"], &["films"]);
    assert_eq!(w.redis_hgetall("film:1:title")["title"], "ACADEMY DINOSAUR");
    assert_eq!(w.stop(), 0);
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("unchanged"), "{out}");

    let changed_records = with_new_view.replace("title: film.title", "title: upper(film.title)");
    w.add_pipeline("films", &changed_records);
    let (_, out, _) = w.run_cli(&["plan"]);
    assert!(out.contains("rebuild") && out.contains("records or search fields changed"), "{out}");
}

#[test]
fn validate_checks_the_environment_and_maps_sql_errors_to_yaml() {
    let w = World::new("venv");
    w.add_repo_pipeline("films");
    w.add_pipeline(
        "typo",
        "version: 1\npipeline: typo\nsource: { table: film }\nfields:\n  id: film.film_id\n  label: \"upper(film.titel) || '!'\"\ntargets:\n  - redis: { key: \"x:{id}\" }\n",
    );
    let (code, _, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("publication `deriver` does not exist"), "{err}");
    assert!(err.contains("typo.yaml:6:17: error: the pipeline's SQL does not compile: column film.titel does not exist"), "{err}");
    assert!(err.contains("warning: no index on public.inventory(film_id)"), "{err}");
    std::fs::remove_file(w.pipelines.join("typo.yaml")).unwrap();
    w.setup();
    // A key column that is generated cannot come through logical replication.
    w.sql("CREATE TABLE gen (a int, b int GENERATED ALWAYS AS (a * 2) STORED, PRIMARY KEY (a)); ALTER PUBLICATION deriver ADD TABLE gen");
    w.add_pipeline("gens", "version: 1\npipeline: gens\nsource: { table: gen, key: b }\nfields: { b: gen.b }\ntargets:\n  - redis: { key: \"g:{b}\" }\n");
    let (code, _, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 1);
    assert!(err.contains("public.gen.b is a generated column"), "{err}");
}

#[test]
fn validate_says_when_earlier_errors_skip_the_database_checks() {
    let w = World::new("vskip");
    w.add_repo_pipeline("films");
    // A file error: no pipeline reaches the database, and validate says so.
    w.add_pipeline(
        "broken",
        "version: 1\npipeline: broken\nsource: { table: film, colour: red }\nfields: { id: film.film_id }\ntargets:\n  - redis: { key: \"x:{id}\" }\n",
    );
    let (code, _, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken.yaml:3:24: error: unknown key `colour`"), "{err}");
    assert!(err.contains("database checks skipped: they run once every pipeline file is valid"), "{err}");
    // With --no-environment there are no database checks to skip.
    let (code, _, err) = w.run_cli(&["validate", "--no-environment"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("skipped"), "{err}");
    std::fs::remove_file(w.pipelines.join("broken.yaml")).unwrap();

    // A missing source table stops that pipeline's other checks; a join column that does not exist
    // stops the checks of its joins. The other pipelines are checked in full.
    w.add_pipeline(
        "ghost",
        "version: 1\npipeline: ghost\nsource: { table: no_such_table, key: id }\nfields: { id: no_such_table.id }\ntargets:\n  - redis: { key: \"g:{id}\" }\n",
    );
    w.add_pipeline(
        "joins",
        "version: 1\npipeline: joins\nsource: { table: film }\nlookups:\n  lang: { table: language, on: \"film.language_id = lang.nope\" }\nfields: { id: film.film_id, lang: lang.name }\ntargets:\n  - redis: { key: \"j:{id}\" }\n",
    );
    let (code, _, err) = w.run_cli(&["validate"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("table public.no_such_table does not exist"), "{err}");
    assert!(err.contains("ghost.yaml: note: the other database checks of pipeline `ghost`"), "{err}");
    assert!(err.contains("joins.yaml: note: the checks of pipeline `joins`'s lookups and children"), "{err}");
    assert!(err.contains("warning: no index on public.inventory(film_id)"), "films is checked in full:\n{err}");
    assert!(!err.contains("films.yaml: note:"), "{err}");
}
