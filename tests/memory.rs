//! Bounded memory with slow consumers, measured: deriver's peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) while Redis is reachable only through a proxy throttled to a trickle,
//! under write load with large transactions, while HTTP clients open the change feed (SSE) and
//! large searches and then do not read. The bound asserted is generous (512 MiB); the figures
//! are printed (`cargo test --test memory -- --nocapture`; `scripts/memory-bounds.sh` runs it
//! longer and prints a table).
//!
//! Environment: `DERIVER_MEMORY_SECS` (the slow-Redis phase, default 30 s), `DERIVER_MEMORY_BOUND_MIB`
//! (default 512).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::observe::*;
use support::proxy::{Dir, Proxy};
use support::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A client that sends one request and then reads nothing (its receive buffer stays at the
/// kernel's initial size, as it grows only when the application reads).
fn stalled_client(port: u16, request: String) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    (&s).write_all(request.as_bytes()).unwrap();
    s
}

/// RSS samples of a process, taken every 200 ms until stopped: (peak VmRSS KiB, samples).
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, usize)> {
    std::thread::spawn(move || {
        let (mut peak, mut n) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = proc_kib(pid, "VmRSS") {
                peak = peak.max(kib);
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (peak, n)
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn memory_stays_bounded_with_a_slow_redis_and_slow_http_clients() {
    let slow_secs = env_u64("DERIVER_MEMORY_SECS", 30);
    let bound_mib = env_u64("DERIVER_MEMORY_BOUND_MIB", 512);
    let proxy = Proxy::start(env().redis.port);
    let mut w = World::new("memory");
    w.add_repo_pipeline("films");
    // Rows for large transactions (~13 MB of Redis writes each).
    w.sql(
        "INSERT INTO film (film_id, title, description, language_id, rental_rate, release_year)
         SELECT g, 'BIG ' || g, repeat('lorem ipsum ' || g || ' ', 90), 1, 0.99, 2100 FROM generate_series(50001, 55000) g",
    );
    w.setup();
    start_with(&mut w, &[("DERIVER__REDIS__URL", proxy.url(&env().redis.url()))]);
    w.wait_ready();
    w.catch_up(&["films"], &["films"]);
    let pid = pid(&w);
    let base_rss = proc_kib(pid, "VmRSS").unwrap();
    let base_hwm = proc_kib(pid, "VmHWM").unwrap();

    // Slow consumers: Redis at 256 KiB/s each way; 20 change-feed clients and 20 clients of
    // 1000-hit searches that never read.
    proxy.throttle(Some(256 << 10));
    let feed = "GET /v1/pipelines/films/changes HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
    let body = r#"{"q": "", "limit": 1000, "highlight": {"fields": ["description"]}}"#;
    let search = format!("POST /v1/indexes/films/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let feeds: Vec<TcpStream> = (0..20).map(|_| stalled_client(w.http_port, feed.clone())).collect();
    let searches: Vec<TcpStream> = (0..20).map(|_| stalled_client(w.http_port, search.clone())).collect();
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop_rss.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = support::load::paced_film_load(w.url(), 500, stop.clone(), done.clone());
    let started = Instant::now();
    let mut big = 0;
    let redis_before = proxy.bytes(Dir::Up);
    while started.elapsed() < Duration::from_secs(slow_secs) {
        if started.elapsed() >= Duration::from_secs(big * slow_secs / 3) && big < 3 {
            big += 1;
            w.sql(&format!("UPDATE film SET release_year = {} WHERE film_id BETWEEN 50001 AND 55000", 2100 + big));
        }
        assert_alive(&mut w, "with slow consumers");
        std::thread::sleep(Duration::from_millis(500));
    }
    let lag = w.current_lsn().0.saturating_sub(w.redis_applied("films").map_or(0, |l| l.0));
    let redis_sent = proxy.bytes(Dir::Up) - redis_before;

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    // Redis fast again: it catches up and converges.
    proxy.throttle(None);
    w.wait_applied(&["films"], &["films"], w.current_lsn(), Duration::from_secs(300));
    stop_rss.store(true, Ordering::Relaxed);
    let (peak_rss, samples) = rss.join().unwrap();
    let hwm = proc_kib(pid, "VmHWM").unwrap();
    check_films(&w);
    drop(feeds);
    drop(searches);
    eprintln!(
        "memory: after the snapshot VmRSS {:.0} MiB (VmHWM {:.0} MiB); slow phase {slow_secs}s: {} load statements, 3 transactions of 5000 rows, \
         {:.1} MB sent to Redis at 256 KiB/s, Redis {:.1} MB of WAL behind at its end; peak VmRSS {:.0} MiB ({samples} samples), VmHWM {:.0} MiB \
         (bound {bound_mib} MiB)",
        mib(base_rss),
        mib(base_hwm),
        done.load(Ordering::Relaxed),
        redis_sent as f64 / 1e6,
        lag as f64 / 1e6,
        mib(peak_rss),
        mib(hwm)
    );
    assert!(hwm < bound_mib * 1024, "peak RSS {:.0} MiB is over the bound of {bound_mib} MiB", mib(hwm));
    assert_eq!(w.stop(), 0);
}

#[test]
fn stalled_change_feed_clients_hold_no_memory_and_are_told_they_fell_behind() {
    let mut w = World::new("feedmem");
    // 1000-character keys and 10 rows a transaction: every notice is ~10 kB on the wire, so
    // hyper's write buffer (~400 kB) and the kernel's socket buffers (up to 4 MB here) fill after
    // a few hundred notices; the feed stream itself then falls more than the shared buffer (1024
    // notices) behind.
    w.sql("CREATE TABLE item (id text PRIMARY KEY, num int UNIQUE, n int); INSERT INTO item SELECT lpad(g::text, 1000, 'k'), g, 0 FROM generate_series(1, 1000) g");
    w.add_pipeline(
        "items",
        "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, n: item.n }\ntargets:\n  - redis: { key: \"item:{id}\", type: json }\n",
    );
    w.setup();
    // One batch per transaction however far behind deriver is: a notice per transaction.
    start_with(&mut w, &[("DERIVER__RUNTIME__BATCH_MAX_CHANGES", "1".into()), ("DERIVER__RUNTIME__BATCH_MAX_MS", "1".into())]);
    w.wait_ready();
    w.catch_up(&["items"], &[]);
    let pid = pid(&w);
    let base_rss = proc_kib(pid, "VmRSS").unwrap();
    let feed = "GET /v1/pipelines/items/changes HTTP/1.1\r\nHost: x\r\n\r\n".to_string();
    let clients = 50;
    let mut feeds: Vec<TcpStream> = (0..clients).map(|_| stalled_client(w.http_port, feed.clone())).collect();
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop_rss.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let url = w.url();
    let (s2, d2) = (stop.clone(), done.clone());
    let load = std::thread::spawn(move || {
        let mut c = postgres_client(&url);
        let mut i = 0u64;
        while !s2.load(Ordering::Relaxed) {
            i += 1;
            let from = (i * 10) % 1000;
            c.batch_execute(&format!("UPDATE item SET n = n + 1 WHERE num > {from} AND num <= {from} + 10")).unwrap();
            d2.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Far more notices than the feed buffers (1024) while the clients read nothing: the
    // server's feed stream is not even polled (TCP back-pressure), the shared ring buffer just
    // moves on.
    let started = Instant::now();
    wait_for("the load", Duration::from_secs(300), || {
        assert_alive(&mut w, "with stalled feed clients");
        done.load(Ordering::Relaxed) >= 2_500
    });
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    w.wait_applied(&["items"], &[], w.current_lsn(), Duration::from_secs(300));
    stop_rss.store(true, Ordering::Relaxed);
    let (peak_rss, _) = rss.join().unwrap();
    let m = metrics(&w);
    let batches = metric(&m, "deriver_batch_latency_seconds_count", &[]);
    // Each of them finds the `dropped` event once it reads.
    let mut told = 0;
    // Bytes each client read before its `dropped` event: what was buffered for it (hyper's write
    // buffer and the kernel's socket buffers).
    let mut buffered = Vec::new();
    for f in &mut feeds {
        f.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut total = 0usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    buf.extend_from_slice(&chunk[..n])
                }
            }
            if buf.windows(14).any(|x| x == b"event: dropped") {
                told += 1;
                buffered.push(total);
                break;
            }
            // Keep only a tail: the event may straddle two reads.
            if buf.len() > 1 << 16 {
                buf.drain(..buf.len() - 64);
            }
        }
        if told == 0 {
            break; // the first one did not get it: the others will not either
        }
    }
    eprintln!(
        "memory: {clients} stalled change-feed clients during {} transactions in {:.0}s ({batches:?} batches): VmRSS {:.0} MiB before, peak {:.0} MiB; \
         {told} read `event: dropped` when they read again, after {:.1} to {:.1} MB buffered for each",
        done.load(Ordering::Relaxed),
        took.as_secs_f64(),
        mib(base_rss),
        mib(peak_rss),
        buffered.iter().min().copied().unwrap_or(0) as f64 / 1e6,
        buffered.iter().max().copied().unwrap_or(0) as f64 / 1e6,
    );
    assert_eq!(told, clients, "every stalled client finds `event: dropped` when it reads");
    assert!(metric(&metrics(&w), "deriver_http_sse_dropped_total", &[]).unwrap_or(0.0) >= clients as f64);
    // What grows: hyper's write buffer of each stalled client (≤ ~400 kB) and the change
    // history (every notice of this test, ~10 kB each); generous.
    assert!(peak_rss < base_rss + 128 * 1024, "stalled feed clients cost {:.0} MiB", mib(peak_rss - base_rss));
    assert_eq!(w.stop(), 0);
}

/// A synchronous Postgres client for a load thread.
fn postgres_client(url: &str) -> SyncClient {
    SyncClient::connect(url)
}

/// tokio-postgres driven by a private current-thread runtime.
struct SyncClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl SyncClient {
    fn connect(url: &str) -> SyncClient {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        });
        SyncClient { rt, client }
    }

    fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.rt.block_on(self.client.batch_execute(sql))
    }
}
