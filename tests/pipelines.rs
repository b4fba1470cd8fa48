//! Pipeline language v1 against real Postgres and Redis: lookups, children (direct and via link
//! tables), aggregates, dependency tracking without REPLICA IDENTITY FULL (including foreign keys
//! that change and rows that disappear), sorted-set views whose members move, crash safety of the
//! dependency ledger.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

#[test]
fn film_dependencies_re_derive_exactly_the_affected_films() {
    let mut w = World::new("deps");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    let copies = |w: &World, id: u32| -> i64 {
        serde_json::from_str::<serde_json::Value>(&w.redis_get(&format!("film:{id}")).unwrap()).unwrap()["copies"].as_i64().unwrap()
    };
    let film1_copies = copies(&w, 1);
    let film10_copies = copies(&w, 10);

    // Lookup row renamed: every film in that language changes.
    w.sql("UPDATE language SET name = 'Anglais' WHERE language_id = 1");
    // The foreign key of the source moves to another lookup row.
    w.sql("UPDATE film SET language_id = 2 WHERE film_id = 5");
    // A child through a link table is renamed; a link row is removed and another added.
    w.sql("UPDATE actor SET last_name = 'ZZTOP' WHERE actor_id = 1");
    w.sql("DELETE FROM film_actor WHERE actor_id = 1 AND film_id = 1");
    w.sql("INSERT INTO film_actor (actor_id, film_id) VALUES (1, 2)");
    // A child row is deleted together with its links.
    w.sql("BEGIN; DELETE FROM film_actor WHERE actor_id = 2; DELETE FROM actor WHERE actor_id = 2; COMMIT");
    // A direct child changes its parent: inventory.film_id is not in inventory's replica identity,
    // so the old film is only known from the ledger.
    w.sql("UPDATE inventory SET film_id = 10 WHERE inventory_id = 1");
    // A direct child disappears (again only its identity is in the WAL).
    let gone =
        w.sql("SELECT inventory_id FROM inventory WHERE film_id = 1 AND inventory_id NOT IN (SELECT inventory_id FROM rental) ORDER BY inventory_id LIMIT 1");
    if !gone.is_empty() {
        w.sql(&format!("DELETE FROM inventory WHERE inventory_id = {gone}"));
    }
    // A category renamed through film_category.
    w.sql("UPDATE category SET name = 'Dramatic' WHERE name = 'Drama'");
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert!(copies(&w, 1) < film1_copies, "film 1 lost a copy");
    assert_eq!(copies(&w, 10), film10_copies + 1, "film 10 gained a copy");
    let film5: serde_json::Value = serde_json::from_str(&w.redis_get("film:5").unwrap()).unwrap();
    assert_eq!(film5["language"], w.sql("SELECT trim(name) FROM language WHERE language_id = 2").as_str());

    // The ledger survives restarts: stop, move more inventory, restart.
    assert_eq!(w.stop(), 0);
    w.sql("UPDATE inventory SET film_id = 20 WHERE inventory_id = 2");
    w.start();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

#[test]
fn dependency_ledger_is_crash_safe_under_load() {
    let mut w = World::new("depkill");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    let url = w.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // Inventory rows hop between films; actors get renamed.
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut n: u64 = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sql = match n % 3 {
                    0 => format!("UPDATE inventory SET film_id = {} WHERE inventory_id = {}", 1 + (n * 31) % 1000, 1 + (n * 17) % 4000),
                    1 => format!("UPDATE actor SET first_name = 'A{n}' WHERE actor_id = {}", 1 + n % 200),
                    _ => format!(
                        "BEGIN; UPDATE inventory SET film_id = {} WHERE inventory_id = {}; UPDATE film SET language_id = {} WHERE film_id = {}; COMMIT",
                        1 + (n * 7) % 1000,
                        1 + (n * 13) % 4000,
                        1 + n % 6,
                        1 + (n * 3) % 1000
                    ),
                };
                client.batch_execute(&sql).await.unwrap();
            }
        });
    });
    for ms in [600u64, 1200, 200, 900] {
        std::thread::sleep(Duration::from_millis(ms));
        w.kill();
        std::thread::sleep(Duration::from_millis(100));
        w.start();
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    w.catch_up(&["films"], &["films"]);
    check_films(&w);
    assert_eq!(w.stop(), 0);
}

fn customers_expected(w: &World) -> BTreeMap<String, serde_json::Value> {
    w.expected(
        "SELECT c.customer_id::text, jsonb_build_object(
            'customer_id', c.customer_id, 'name', c.first_name || ' ' || c.last_name, 'email', c.email,
            'city', ci.city, 'country', co.country,
            'lifetime_value', coalesce((SELECT sum(amount) FROM payment p WHERE p.customer_id = c.customer_id), 0),
            'payment_count', (SELECT count(*) FROM payment p WHERE p.customer_id = c.customer_id),
            'rental_count', (SELECT count(*) FROM rental r WHERE r.customer_id = c.customer_id))
         FROM customer c JOIN address a ON a.address_id = c.address_id JOIN city ci ON ci.city_id = a.city_id
         JOIN country co ON co.country_id = ci.country_id WHERE c.activebool",
    )
}

fn check_customers(w: &World) {
    let expected = customers_expected(w);
    assert_eq!(w.redis_keys("customer:*").len(), expected.len(), "customer hash count");
    let mut zsets: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (id, want) in &expected {
        let h = w.redis_hgetall(&format!("customer:{id}"));
        for f in ["name", "email", "city", "country", "payment_count", "rental_count"] {
            let want_text = match &want[f] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(h.get(f), Some(&want_text), "customer:{id} {f}");
        }
        let lv: f64 = h["lifetime_value"].parse().unwrap();
        assert!((lv - want["lifetime_value"].as_f64().unwrap()).abs() < 1e-9, "customer:{id} lifetime_value");
        zsets.entry(want["country"].as_str().unwrap().to_string()).or_default().insert(id.clone(), lv);
    }
    let keys: Vec<String> = w.redis_keys("country:*");
    assert_eq!(keys.len(), zsets.len(), "one zset per country with customers");
    for (country, members) in &zsets {
        let got: BTreeMap<String, f64> = w.redis_zrange(&format!("country:{country}:customers")).into_iter().collect();
        assert_eq!(got.len(), members.len(), "members of {country}");
        for (m, score) in members {
            assert!((got[m] - score).abs() < 1e-9, "{country} {m}");
        }
    }
}

#[test]
fn customers_aggregate_partitioned_payments_and_move_between_sorted_sets() {
    let mut w = World::new("customers");
    w.add_repo_pipeline("customers");
    w.setup();
    w.start();
    w.catch_up(&["customers"], &[]);
    check_customers(&w);
    // A payment in one partition, one moved to another customer (customer_id is not in the
    // partitioned table's identity), one moved across partitions, one deleted.
    w.sql("INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) VALUES (1, 1, 76, 100.00, '2022-03-15 10:00:00+00')");
    w.sql("UPDATE payment SET customer_id = 2 WHERE payment_id = (SELECT min(payment_id) FROM payment WHERE customer_id = 3)");
    w.sql("UPDATE payment SET payment_date = '2022-07-15 10:00:00+00' WHERE payment_id = (SELECT min(payment_id) FROM payment WHERE customer_id = 4 AND payment_date < '2022-03-01')");
    w.sql("DELETE FROM payment WHERE payment_id = (SELECT max(payment_id) FROM payment WHERE customer_id = 5)");
    // A customer moves to an address in another country: its member moves between sorted sets.
    w.sql("UPDATE customer SET address_id = (SELECT a.address_id FROM address a JOIN city ci USING (city_id) WHERE ci.country_id <> (SELECT ci2.country_id FROM customer c JOIN address a2 USING (address_id) JOIN city ci2 ON ci2.city_id = a2.city_id WHERE c.customer_id = 6) LIMIT 1) WHERE customer_id = 6");
    // A city changes country (two lookups away from the source).
    w.sql("UPDATE city SET country_id = 1 WHERE city_id = (SELECT a.city_id FROM customer c JOIN address a USING (address_id) WHERE c.customer_id = 7)");
    // A country is renamed: its sorted set key changes.
    w.sql("UPDATE country SET country = 'Republic of Testing' WHERE country_id = (SELECT ci.country_id FROM customer c JOIN address a USING (address_id) JOIN city ci USING (city_id) WHERE c.customer_id = 8)");
    // A customer stops passing the filter.
    w.sql("UPDATE customer SET activebool = false WHERE customer_id = 9");
    w.catch_up(&["customers"], &[]);
    check_customers(&w);
    assert!(w.redis_hgetall("customer:9").is_empty());
    assert_eq!(w.stop(), 0);
}

#[test]
fn category_sorted_sets_follow_scores_members_and_renames() {
    let mut w = World::new("catfilms");
    w.add_repo_pipeline("category_films");
    w.setup();
    w.start();
    w.catch_up(&["category_films"], &[]);
    let check = |w: &World| {
        let rows = w.sql("SELECT c.name, fc.film_id, f.rental_rate FROM film_category fc JOIN category c USING (category_id) JOIN film f USING (film_id)");
        let mut want: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for line in rows.lines() {
            let parts: Vec<&str> = line.split('|').collect();
            want.entry(parts[0].to_string()).or_default().insert(parts[1].to_string(), parts[2].parse().unwrap());
        }
        assert_eq!(w.redis_keys("category:*").len(), want.len());
        for (cat, members) in &want {
            let got: BTreeMap<String, f64> = w.redis_zrange(&format!("category:{cat}:films")).into_iter().collect();
            assert_eq!(&got, members, "category {cat}");
        }
    };
    check(&w);
    w.sql("UPDATE film SET rental_rate = 9.99 WHERE film_id = 1");
    w.sql("UPDATE film_category SET category_id = (SELECT min(category_id) FROM category WHERE category_id NOT IN (SELECT category_id FROM film_category WHERE film_id = 2)) WHERE film_id = 2 AND category_id = (SELECT min(category_id) FROM film_category WHERE film_id = 2)");
    w.sql("UPDATE category SET name = 'Sci Fi' WHERE name = 'Sci-Fi'");
    w.sql("DELETE FROM film_category WHERE film_id = 3");
    w.catch_up(&["category_films"], &[]);
    check(&w);
    assert!(w.redis_zrange("category:Sci-Fi:films").is_empty());
    assert_eq!(w.stop(), 0);
}

/// Chinook: artist → albums → tracks (a child through a link table), with track counts.
#[test]
fn chinook_artists_count_tracks_through_albums() {
    let cluster = &env().pg;
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| {
        // The script creates and fills database `chinook` itself.
        cluster.psql_file("postgres", &shared_dir().join("data/chinook/Chinook_PostgreSql.sql"));
    });
    let mut w = World::on(cluster, "chinook", Some("chinook"));
    std::fs::copy(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chinook/pipelines/artists.yaml"), w.pipelines.join("artists.yaml")).unwrap();
    w.setup();
    let expected = |w: &World| {
        w.expected(
            "SELECT a.artist_id::text, jsonb_build_object('artist_id', a.artist_id, 'name', a.name,
                'albums', coalesce((SELECT array_agg(al.title ORDER BY al.title) FROM album al WHERE al.artist_id = a.artist_id), '{}'),
                'album_count', (SELECT count(*) FROM album al WHERE al.artist_id = a.artist_id),
                'track_count', (SELECT count(*) FROM album al JOIN track t ON t.album_id = al.album_id WHERE al.artist_id = a.artist_id),
                'total_ms', coalesce((SELECT sum(t.milliseconds) FROM album al JOIN track t ON t.album_id = al.album_id WHERE al.artist_id = a.artist_id), 0))
             FROM artist a",
        )
    };
    let check = |w: &World| {
        let want = expected(w);
        assert_eq!(w.redis_keys("artist:*").len(), want.len());
        for (id, v) in &want {
            let got: serde_json::Value = serde_json::from_str(&w.redis_get(&format!("artist:{id}")).unwrap()).unwrap();
            assert_eq!(&got, v, "artist {id}");
        }
        assert_eq!(w.index_docs("artists").len(), want.len());
    };
    w.start();
    w.catch_up(&["artists"], &["artists"]);
    check(&w);
    // A track moves to another artist's album (track.album_id is not in track's identity: the
    // ledger knows the old album), an album moves artist, a track is deleted.
    w.sql("UPDATE track SET album_id = 2 WHERE track_id = 1");
    w.sql("UPDATE album SET artist_id = 3 WHERE album_id = 5");
    w.sql("DELETE FROM playlist_track WHERE track_id = 3; DELETE FROM invoice_line WHERE track_id = 3; DELETE FROM track WHERE track_id = 3");
    w.catch_up(&["artists"], &["artists"]);
    check(&w);
    assert_eq!(w.stop(), 0);
}

/// The spec's `via` form (both joins in `via.on`) derives the same records as the split form, on
/// the first snapshot and after changes to the link table and the child.
#[test]
fn the_specs_via_form_derives_what_the_split_form_does() {
    let file = |name: &str, children: &str| {
        format!(
            "version: 1\npipeline: {name}\nsource: {{ table: film }}\nchildren:\n{children}\nfields:\n  film_id: film.film_id\n  actors: {{ child: actors, agg: \"array_agg(actor.last_name ORDER BY actor.actor_id)\", default: \"'{{}}'::text[]\" }}\ntargets:\n  - redis: {{ key: \"{name}:{{film_id}}\", type: json }}\n"
        )
    };
    let mut w = World::new("viaform");
    w.add_pipeline(
        "split",
        &file("split", "  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id\" }\n    on: \"actor.actor_id = film_actor.actor_id\""),
    );
    w.add_pipeline(
        "spec",
        &file(
            "spec",
            "  actors:\n    table: actor\n    via: { table: film_actor, on: \"film_actor.film_id = film.film_id AND film_actor.actor_id = actor.actor_id\" }",
        ),
    );
    w.setup();
    w.start();
    w.catch_up(&["split", "spec"], &[]);
    let same = |w: &World| {
        for id in [1, 2, 3, 10, 500, 1000] {
            let (a, b) = (w.redis_get(&format!("split:{id}")), w.redis_get(&format!("spec:{id}")));
            assert!(a.is_some(), "film {id} has a record");
            assert_eq!(a, b, "film {id}");
        }
    };
    same(&w);
    w.sql("DELETE FROM film_actor WHERE film_id = 1 AND actor_id = (SELECT min(actor_id) FROM film_actor WHERE film_id = 1); UPDATE actor SET last_name = 'RENAMED' WHERE actor_id IN (SELECT actor_id FROM film_actor WHERE film_id = 2)");
    w.catch_up(&["split", "spec"], &[]);
    same(&w);
    assert!(w.redis_get("spec:2").unwrap().contains("RENAMED"));
    assert_eq!(w.stop(), 0);
}
