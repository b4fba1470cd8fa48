//! Client side of `bench/run.sh`: timing that must not include process start-up, so it lives in
//! one small binary instead of shell loops.
//!
//! * `watch`  — polls `GET /v1/status` every `--interval-ms` and appends `<unix_ms> <applied_lsn as u64>`
//!   for one pipeline to `--out` (one line per poll, flushed) until killed. The harness reads the
//!   first line whose LSN reaches a target.
//! * `probe`  — commit-to-visible latency: updates one of its own rows (autocommit), reads
//!   `pg_current_wal_insert_lsn()` after the COMMIT, then `POST /v1/wait {"lsn", "timeout_ms"}`;
//!   the time from the COMMIT's return to the wait's answer is one sample. Then (untimed) reads the
//!   document back through `GET /v1/indexes/<index>/documents/<id>` to check the new title is there.
//! * `search` — the same keyword queries through `POST /v1/indexes/<index>/search` and through
//!   Postgres full-text search (`plainto_tsquery('simple', q)`, `ts_rank`, top 10) on a table with a
//!   tsvector column and a GIN index; client-observed latency of each. Before those, in the same
//!   run, each word through deriver as an exact (quoted), a prefix and a one-typo query, each with
//!   its own latency summary, failed requests and zero-hit queries.
//!
//! Every subcommand prints one JSON object per line on stdout.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench_client: {msg}");
    std::process::exit(1)
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  bench_client watch  --http URL --pipeline NAME --out FILE [--interval-ms 20]\n  \
         bench_client probe  --http URL --pg URL --index NAME [--samples 200] [--interval-ms 50] [--duration-s S] [--timeout-ms 5000] [--rows 16] [--out FILE]\n  \
         bench_client search --http URL --pg URL --index NAME --words FILE [--reps 1] [--limit 10] [--fts-table doc_fts]"
    );
    std::process::exit(2)
}

struct Flags(Vec<(String, String)>);
impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(f) = it.next() {
            let Some(name) = f.strip_prefix("--") else { usage() };
            let v = it.next().unwrap_or_else(|| usage());
            out.push((name.to_string(), v.clone()));
        }
        Flags(out)
    }
    fn opt(&self, name: &str) -> Option<String> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
    fn req(&self, name: &str) -> String {
        self.opt(name).unwrap_or_else(|| fail(format!("--{name} is required")))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.opt(name) {
            Some(v) => v.parse().unwrap_or_else(|_| fail(format!("--{name}: not a number: {v}"))),
            None => default,
        }
    }
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    json!({ "n": v.len(), "p50": pct(&v, 50.0), "p90": pct(&v, 90.0), "p99": pct(&v, 99.0),
            "max": v.last().copied().unwrap_or(f64::NAN), "mean": mean })
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| fail(format!("postgres: {e}")));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("bench_client: postgres connection: {e}");
        }
    });
    client
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(4).tcp_nodelay(true).build().unwrap_or_else(|e| fail(e))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage() };
    let flags = Flags::parse(&args[1..]);
    match cmd.as_str() {
        "watch" => watch(&flags).await,
        "probe" => probe(&flags).await,
        "search" => search(&flags).await,
        _ => usage(),
    }
}

async fn watch(f: &Flags) {
    let base = f.req("http");
    let pipeline = f.req("pipeline");
    let out = f.req("out");
    let interval = Duration::from_millis(f.num("interval-ms", 20u64));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&out).unwrap_or_else(|e| fail(format!("{out}: {e}")));
    let http = http_client();
    let url = format!("{base}/v1/status");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(resp) = http.get(&url).timeout(Duration::from_secs(2)).send().await else { continue };
        let Ok(doc) = resp.json::<Value>().await else { continue };
        let applied = doc["pipelines"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == pipeline.as_str()))
            .and_then(|p| p["applied_lsn"].as_str())
            .and_then(parse_lsn);
        if let Some(lsn) = applied {
            let _ = writeln!(file, "{} {lsn}", unix_ms());
        }
    }
}

async fn probe(f: &Flags) {
    let base = f.req("http");
    let index = f.req("index");
    let samples: usize = f.num("samples", 200);
    let duration = f.opt("duration-s").map(|s| Duration::from_secs_f64(s.parse().unwrap_or_else(|_| usage())));
    let interval = Duration::from_millis(f.num("interval-ms", 50u64));
    let timeout_ms: u64 = f.num("timeout-ms", 5000);
    let n_rows: usize = f.num("rows", 16);
    let out = f.opt("out");
    let pg = pg_connect(&f.req("pg")).await;
    let http = http_client();

    // The prober's own rows: new ids above the corpus range the churn script picks from. Should the
    // churn still delete one, the prober re-creates it and skips that sample.
    let tag = format!("probe-{}", std::process::id());
    let mut ids: Vec<i64> = Vec::new();
    for i in 0..n_rows {
        let row = pg
            .query_one(
                "INSERT INTO doc(source, source_key, title, body) VALUES ('probe', $1, 'probe', 'freshness probe row') RETURNING id",
                &[&format!("{tag}-{i}")],
            )
            .await
            .unwrap_or_else(|e| fail(e));
        ids.push(row.get(0));
    }
    let update = pg.prepare("UPDATE doc SET title = $2, updated_at = now() WHERE id = $1").await.unwrap_or_else(|e| fail(e));
    let lsn_stmt = pg.prepare("SELECT pg_current_wal_insert_lsn()::text").await.unwrap_or_else(|e| fail(e));
    // Let the inserts become visible before measuring.
    let lsn0: String = pg.query_one(&lsn_stmt, &[]).await.unwrap_or_else(|e| fail(e)).get(0);
    let _ = http.post(format!("{base}/v1/wait")).json(&json!({"lsn": lsn0, "timeout_ms": 20000})).send().await;

    let mut file = out.map(|p| std::fs::File::create(&p).unwrap_or_else(|e| fail(format!("{p}: {e}"))));
    let mut lat = Vec::new();
    let (mut timeouts, mut errors, mut stale) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    loop {
        match duration {
            Some(d) if started.elapsed() >= d => break,
            None if i >= samples => break,
            _ => {}
        }
        tick.tick().await;
        let id = ids[i % ids.len()];
        let title = format!("probe {tag} n{i}");
        let n = pg.execute(&update, &[&id, &title]).await.unwrap_or_else(|e| fail(e));
        let committed = Instant::now();
        if n == 0 {
            // The churn deleted this row; put it back (not a sample).
            let row = pg
                .query_one(
                    "INSERT INTO doc(source, source_key, title, body) VALUES ('probe', $1, 'probe', 'freshness probe row') RETURNING id",
                    &[&format!("{tag}-r{i}")],
                )
                .await
                .unwrap_or_else(|e| fail(e));
            let k = i % ids.len();
            ids[k] = row.get(0);
            i += 1;
            continue;
        }
        let lsn: String = pg.query_one(&lsn_stmt, &[]).await.unwrap_or_else(|e| fail(e)).get(0);
        let resp = http.post(format!("{base}/v1/wait")).json(&json!({"lsn": lsn, "timeout_ms": timeout_ms})).send().await;
        let visible = Instant::now();
        let ms = visible.duration_since(committed).as_secs_f64() * 1000.0;
        let status = resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        match status {
            200 => lat.push(ms),
            504 => {
                timeouts += 1;
                lat.push(ms);
            }
            _ => errors += 1,
        }
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{ms:.3}\t{status}\t{lsn}");
        }
        // Untimed check that the document really shows the new title.
        if status == 200 {
            if let Ok(r) = http.get(format!("{base}/v1/indexes/{index}/documents/{id}")).send().await {
                let doc: Value = r.json().await.unwrap_or(Value::Null);
                let shown = doc["doc"]["title"].as_str().or_else(|| doc["title"].as_str()).unwrap_or("");
                if shown != title {
                    stale += 1;
                }
            }
        }
        i += 1;
    }
    let _ = pg.execute("DELETE FROM doc WHERE source = 'probe' AND source_key LIKE $1", &[&format!("{tag}-%")]).await;
    let mut s = summary(lat);
    s["timeouts"] = json!(timeouts);
    s["errors"] = json!(errors);
    s["stale_after_wait"] = json!(stale);
    s["secs"] = json!(started.elapsed().as_secs_f64());
    println!("{s}");
}

async fn search(f: &Flags) {
    let base = f.req("http");
    let index = f.req("index");
    let words: Vec<String> =
        std::fs::read_to_string(f.req("words")).unwrap_or_else(|e| fail(e)).lines().map(str::trim).filter(|w| !w.is_empty()).map(str::to_string).collect();
    let reps: usize = f.num("reps", 1);
    let limit: i64 = f.num("limit", 10);
    let table = f.opt("fts-table").unwrap_or_else(|| "doc_fts".into());
    let pg = pg_connect(&f.req("pg")).await;
    let http = http_client();
    let url = format!("{base}/v1/indexes/{index}/search");
    let stmt = pg
        .prepare(&format!("SELECT id, ts_rank(tsv, q) AS rank FROM {table}, plainto_tsquery('simple', $1) q WHERE tsv @@ q ORDER BY rank DESC LIMIT $2"))
        .await
        .unwrap_or_else(|e| fail(e));

    let run_deriver = |w: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let t = Instant::now();
            let r = http.post(&url).json(&json!({"q": w, "limit": limit})).send().await;
            let (ok, hits) = match r {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (true, v["total"]["value"].as_u64().unwrap_or(0))
                }
                _ => (false, 0),
            };
            (t.elapsed().as_secs_f64() * 1000.0, ok, hits)
        }
    };
    // Warm-up: every query once on each side (caches, prepared plans), not measured.
    for w in &words {
        let _ = run_deriver(w.clone()).await;
        let _ = pg.query(&stmt, &[w, &limit]).await;
    }
    // The same words as relevance variants, measured in the same run: exact (quoted: no prefix, no
    // typos, what Postgres FTS does), a prefix (the first half, at least 3 letters, typed as the
    // last word), a typo (two middle letters swapped, a space after it: no prefix; words of 5+).
    // The swapped pair is the one nearest the middle whose letters differ (so "seeing" does not
    // come back unchanged); the first letter is kept.
    let variants = |w: &str| -> (String, String, Option<String>) {
        let chars: Vec<char> = w.chars().collect();
        let prefix: String = chars.iter().take(chars.len().div_ceil(2).max(3)).collect();
        let mid = chars.len() / 2;
        let mut pairs: Vec<usize> = (1..chars.len().saturating_sub(1)).collect();
        pairs.sort_by_key(|&i| (i + 1).abs_diff(mid));
        let typo = pairs.into_iter().find(|&i| chars.len() >= 5 && chars[i] != chars[i + 1]).map(|i| {
            let mut c = chars.clone();
            c.swap(i, i + 1);
            format!("{} ", c.into_iter().collect::<String>())
        });
        (format!("\"{w}\""), prefix, typo)
    };
    // A variant's latencies with its failed requests and zero-hit queries: a variant that matched
    // nothing (or failed) would be cheap for the wrong reason.
    #[derive(Default)]
    struct Variant {
        lat: Vec<f64>,
        errors: u64,
        zero_hits: u64,
    }
    impl Variant {
        fn add(&mut self, (ms, ok, hits): (f64, bool, u64)) {
            self.lat.push(ms);
            self.errors += u64::from(!ok);
            self.zero_hits += u64::from(hits == 0);
        }
        fn report(self) -> Value {
            let mut s = summary(self.lat);
            s["errors"] = json!(self.errors);
            s["zero_hits"] = json!(self.zero_hits);
            s
        }
    }
    for rep in 1..=reps {
        let (mut exact_v, mut prefix_v, mut typo_v) = (Variant::default(), Variant::default(), Variant::default());
        for w in &words {
            let (exact, prefix, typo) = variants(w);
            exact_v.add(run_deriver(exact).await);
            prefix_v.add(run_deriver(prefix).await);
            if let Some(t) = typo {
                typo_v.add(run_deriver(t).await);
            }
        }
        let (mut d_lat, mut p_lat) = (Vec::new(), Vec::new());
        let (mut d_err, mut d_hits_zero, mut p_rows_zero) = (0u64, 0u64, 0u64);
        let mut d_hits_total = 0u64;
        for w in &words {
            let (ms, ok, hits) = run_deriver(w.clone()).await;
            if !ok {
                d_err += 1;
            }
            if hits == 0 {
                d_hits_zero += 1;
            }
            d_hits_total += hits;
            d_lat.push(ms);
            let t = Instant::now();
            let rows = pg.query(&stmt, &[w, &limit]).await.unwrap_or_else(|e| fail(e));
            p_lat.push(t.elapsed().as_secs_f64() * 1000.0);
            if rows.is_empty() {
                p_rows_zero += 1;
            }
        }
        println!(
            "{}",
            json!({
                "rep": rep,
                "queries": words.len(),
                "deriver": summary(d_lat),
                "deriver_exact": exact_v.report(),
                "deriver_prefix": prefix_v.report(),
                "deriver_typo": typo_v.report(),
                "postgres": summary(p_lat),
                "deriver_errors": d_err,
                "deriver_zero_hits": d_hits_zero,
                "deriver_mean_total_hits": d_hits_total as f64 / words.len().max(1) as f64,
                "postgres_zero_rows": p_rows_zero,
            })
        );
    }
}
