//! Write load at a fixed pace: the statement mix of [`super::film_load`] (updates, inserts,
//! deletes, key changes, multi-statement and rolled-back transactions on pagila's `film`), at
//! most `per_sec` statements a second, so a fault test measures deriver and not a race against
//! a load generator that a loaded 2-core machine cannot follow.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn paced_film_load(url: String, per_sec: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let started = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = film_statement(n);
                if let Err(e) = client.batch_execute(&sql).await {
                    panic!("load statement failed: {sql}: {e}");
                }
                done.fetch_add(1, Ordering::Relaxed);
                let due = started + Duration::from_secs_f64(n as f64 / per_sec.max(1) as f64);
                tokio::time::sleep_until(due.into()).await;
            }
        });
    })
}

/// The `n`-th statement of the film load mix.
pub fn film_statement(n: u64) -> String {
    let id = 1 + (n * 7919) % 1000;
    match n % 7 {
        0 => format!("UPDATE film SET title = 'T{n}', rental_rate = {}.{:02} WHERE film_id = {id}", n % 5, n % 100),
        1 => format!("INSERT INTO film (film_id, title, language_id, rental_rate) VALUES ({}, 'NEW {n}', 1, 1.99)", 100000 + n),
        2 => "DELETE FROM film WHERE film_id = (SELECT min(film_id) FROM film WHERE film_id > 100000)".to_string(),
        3 => format!("BEGIN; UPDATE film SET description = 'D{n}' WHERE film_id = {id}; UPDATE film SET length = {} WHERE film_id = {}; COMMIT", n % 180, 1 + (id + 13) % 1000),
        4 => format!("BEGIN; UPDATE film SET title = 'ROLLED BACK' WHERE film_id = {id}; ROLLBACK"),
        5 => format!("UPDATE film SET film_id = film_id + 500000 WHERE film_id = (SELECT max(film_id) FROM film WHERE film_id BETWEEN 100000 AND 500000) AND {n} % 2 = 0"),
        _ => format!("UPDATE film SET special_features = ARRAY['Trailers', 'T{n}'] WHERE film_id = {id}"),
    }
}
