//! Role and database defaults on the server must not change a derived value (`values.md`): the
//! role deriver connects as gets hostile defaults in its database — a `search_path` that puts a
//! schema `evil` (with a shadowing function, operator and table) before `pg_catalog`, and German
//! `lc_monetary` / `lc_time` / `lc_numeric` — and every value deriver stores, from the snapshot
//! and from the stream, is what the pinned session (`pg_catalog, public`, C locales) derives.
//!
//! Needs the `de_DE.UTF-8` locale (`scripts/dev-stack.sh install --with-browser` generates it);
//! without it the test fails and says so.

mod support;

use support::*;

const ITEMS: &str = r#"version: 1
pipeline: items
source: { table: item }
fields:
  id: item.id
  shout: upper(item.name)
  label: item.name || '!'
  price: item.price
  month: to_char(item.day, 'TMMonth')
  rel: item.tableoid::regclass
targets:
  - redis: { key: "item:{id}", type: json }
"#;

/// What a pinned session derives for a row `(name, price, day)`.
fn expected(id: i64, name: &str, price: &str, month: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "shout": name.to_uppercase(),
        "label": format!("{name}!"),
        "price": price,
        "month": month,
        "rel": "item",
    })
}

fn stored(w: &World, id: i64) -> serde_json::Value {
    let text = w.redis_get(&format!("item:{id}")).unwrap_or_else(|| panic!("item:{id} missing; log:\n{}", w.log_text()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn hostile_role_defaults_do_not_change_a_derived_value() {
    let locales = String::from_utf8(std::process::Command::new("locale").arg("-a").output().expect("locale -a runs").stdout).unwrap();
    assert!(
        locales.lines().any(|l| l.eq_ignore_ascii_case("de_DE.utf8") || l.eq_ignore_ascii_case("de_DE.UTF-8")),
        "the de_DE.UTF-8 locale is missing (locale -a: {locales:?}); run scripts/dev-stack.sh install --with-browser"
    );
    let mut w = World::on(&env().pg, "hostile", None);
    w.sql(
        "CREATE TABLE public.item (id int PRIMARY KEY, name text, price money, day date);
         INSERT INTO public.item VALUES (1, 'abc', 1234.5, '2024-01-15'), (2, 'def', 0.25, '2024-03-01');
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.upper(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'EVIL' $$;
         CREATE FUNCTION evil.cat(text, text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'EVIL' $$;
         CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.cat);
         CREATE TABLE evil.item (id int);",
    );
    for setting in ["search_path = evil, pg_catalog, public", "lc_monetary = 'de_DE.UTF-8'", "lc_time = 'de_DE.UTF-8'", "lc_numeric = 'de_DE.UTF-8'"] {
        w.sql(&format!("ALTER ROLE postgres IN DATABASE {} SET {setting}", w.db));
    }
    // The defaults bite a session that does not pin its settings (psql here).
    assert_eq!(
        w.sql(
            "SELECT concat_ws(' | ', upper('abc'), 'abc' || '!', 1234.5::money, to_char(date '2024-01-15', 'TMMonth'), \
             (SELECT tableoid::regclass FROM public.item LIMIT 1))"
        ),
        "EVIL | EVIL | 1.234,50 € | Januar | public.item",
        "the hostile defaults must be in force for an unpinned session"
    );
    w.add_pipeline("items", ITEMS);
    w.setup();
    w.start();
    w.catch_up(&["items"], &[]);
    // From the initial snapshot.
    assert_eq!(stored(&w, 1), expected(1, "abc", "$1,234.50", "January"));
    assert_eq!(stored(&w, 2), expected(2, "def", "$0.25", "March"));
    // From the stream.
    w.sql(
        "UPDATE public.item SET name = 'xyz', price = 99.99, day = '2024-10-03' WHERE id = 1; INSERT INTO public.item VALUES (3, 'ghi', 1000000, '2024-12-24')",
    );
    w.catch_up(&["items"], &[]);
    assert_eq!(stored(&w, 1), expected(1, "xyz", "$99.99", "October"));
    assert_eq!(stored(&w, 3), expected(3, "ghi", "$1,000,000.00", "December"));
    assert_eq!(w.stop(), 0);
}
