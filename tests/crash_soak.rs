//! The crash soak (`scripts/crash-soak.sh`): cycles of SIGKILL at a random moment under a mixed
//! write load on pagila — `film` itself (updates, inserts, deletes, key changes, multi-statement
//! and rolled-back transactions) and every table the `films` pipeline depends on (actors and the
//! `film_actor` link, categories and `film_category`, languages, copies in `inventory`, moved
//! between films so that only the dependency ledger knows the old film) — then a restart, still
//! under load, and after each cycle a convergence check: every view and document equals a fresh
//! derivation of the source. Prints `converged N/TOTAL`; fails unless every cycle converged.

mod support;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// The `n`-th statement on the tables `films` depends on (films 1..=1000 only, which the film
/// load never deletes, so that no foreign key refuses a statement).
fn dependency_statement(n: u64) -> String {
    let film = 1 + (n * 7919) % 1000;
    let actor = 1 + (n * 31) % 200;
    match n % 10 {
        0 => format!("UPDATE actor SET first_name = 'A{n}' WHERE actor_id = {actor}"),
        1 => format!("INSERT INTO film_actor (actor_id, film_id) VALUES ({actor}, {film}) ON CONFLICT DO NOTHING"),
        2 => format!("DELETE FROM film_actor WHERE (actor_id, film_id) = (SELECT actor_id, film_id FROM film_actor WHERE film_id = {film} LIMIT 1)"),
        3 => format!("INSERT INTO inventory (inventory_id, film_id, store_id) VALUES ({}, {film}, 1)", 900_000 + n),
        4 => format!("UPDATE inventory SET film_id = {film} WHERE inventory_id = (SELECT max(inventory_id) FROM inventory WHERE inventory_id >= 900000)"),
        5 => "DELETE FROM inventory WHERE inventory_id = (SELECT min(inventory_id) FROM inventory WHERE inventory_id >= 900000)".to_string(),
        6 => format!("UPDATE category SET name = 'C{}' WHERE category_id = {}", n % 50, 1 + n % 16),
        7 => format!("UPDATE language SET name = 'L{}' WHERE language_id = {}", n % 10, 1 + n % 6),
        8 => format!(
            "UPDATE film_category SET category_id = {c} WHERE (film_id, category_id) = (SELECT film_id, category_id FROM film_category WHERE film_id = {film} LIMIT 1) \
             AND NOT EXISTS (SELECT 1 FROM film_category WHERE film_id = {film} AND category_id = {c})",
            c = 1 + n % 16
        ),
        _ => format!(
            "BEGIN; UPDATE actor SET last_name = 'L{n}' WHERE actor_id = {actor}; INSERT INTO film_actor (actor_id, film_id) VALUES ({actor}, {}) ON CONFLICT DO NOTHING; \
             UPDATE film SET title = 'MIXED {n}' WHERE film_id = {film}; COMMIT",
            1 + (film + 17) % 1000
        ),
    }
}

/// Film and dependency statements, alternating, until `stop`.
fn mixed_load(url: String, first: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut n = first;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = if n.is_multiple_of(2) { support::load::film_statement(n / 2) } else { dependency_statement(n / 2) };
                if let Err(e) = client.batch_execute(&sql).await {
                    panic!("load statement failed: {sql}: {:?}", e.as_db_error().map(|d| d.message()));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    })
}

/// The text of a caught panic, cut short (a failed check carries the whole daemon log).
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    let text = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
    text.chars().take(600).collect()
}

#[test]
#[ignore = "long: run scripts/crash-soak.sh"]
fn crash_soak() {
    let cycles: u64 = std::env::var("DERIVER_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut seed: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("soak: {cycles} cycles, seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut w = World::new("crashsoak");
    w.add_repo_pipeline("films");
    w.setup();
    w.start();
    w.catch_up(&["films"], &["films"]);
    let started = Instant::now();
    let (mut converged, mut statements) = (0u64, 0u64);
    let mut failures: Vec<(u64, String)> = Vec::new();
    for cycle in 1..=cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let load = mixed_load(w.url(), statements + cycle * 1_000_000, stop.clone(), done.clone());
        // Killed at a random moment: mid-batch, mid-commit, mid-catch-up after the last restart.
        std::thread::sleep(Duration::from_millis(150 + rand(1350)));
        w.kill();
        std::thread::sleep(Duration::from_millis(rand(200)));
        w.start();
        // The restart recovers under load.
        std::thread::sleep(Duration::from_millis(300 + rand(700)));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        statements += done.load(Ordering::Relaxed);
        let check = std::panic::catch_unwind(AssertUnwindSafe(|| {
            w.catch_up(&["films"], &["films"]);
            check_films(&w);
        }));
        match check {
            Ok(()) => converged += 1,
            Err(p) => {
                let why = panic_text(p);
                println!("soak: cycle {cycle} did NOT converge: {why}");
                failures.push((cycle, why));
                // Start afresh for the next cycle if the daemon is gone.
                w.kill();
                w.start();
            }
        }
        println!("soak: cycle {cycle}/{cycles}: converged {converged}/{cycle} ({statements} statements so far, {:.0} s)", started.elapsed().as_secs_f64());
    }
    assert_eq!(w.stop(), 0);
    // Nothing was re-snapshotted: every recovery came from the checkpoints.
    let snapshots = w.log_text().matches("derived every record").count();
    println!(
        "soak result: converged {converged}/{cycles} SIGKILL cycles under mixed DML ({statements} statements, film and dependency tables), \
         {snapshots} full derivation(s), {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "cycles that did not converge: {failures:#?}");
    assert_eq!(snapshots, 1, "a restart re-derived everything instead of recovering from its checkpoints");
}
