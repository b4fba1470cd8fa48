//! Raw tantivy limit for `bench/run.sh`: the same records deriver derives (the pipeline's own bulk
//! SQL, run by tokio-postgres, turned into records by deriver's `row_to_record`), turned into
//! documents by deriver's own schema code (`build_schema`, `DocBuilder`, `register_tokenizers`),
//! written straight to a tantivy `IndexWriter` with none of deriver's machinery in between.
//!
//! * bulk:   a fresh index, `add_document` for every record, one commit.
//! * upsert: on the bulk-built index, `delete_term(_key)` + `add_document` for `--upsert-docs`
//!   records picked at random, a commit (with payload) and a reader reload every `--commit-every`.
//!
//! Records are read from Postgres once, before any timing; each repetition prints one JSON line.
//!
//! ```sh
//! cargo run --release --example bench_raw_tantivy -- --pipeline bench/pipelines/docs.yaml \
//!     --url postgres://postgres@127.0.0.1:5432/bench --dir /tmp/raw --reps 3
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::{pin_mut, TryStreamExt};
use tantivy::schema::Field;
use tantivy::{Index, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use deriver::pipeline::check::check;
use deriver::runtime::derive::row_to_record;
use deriver::sink::tantivy::schema::{build_schema, register_tokenizers, DocBuilder, HASH_FIELD};
use deriver::sink::tantivy::KEY_FIELD;
use deriver::sink::{content_hash, Record};

/// The same allocator as deriver's binary, so the raw limits are not handicapped by another one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    pipeline: PathBuf,
    url: String,
    dir: PathBuf,
    reps: usize,
    threads: usize,
    writer_mb: usize,
    upsert_docs: usize,
    commit_every: usize,
    limit: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_raw_tantivy --pipeline FILE --url POSTGRES_URL --dir WORKDIR [--reps N] [--threads N] \
         [--writer-mb MB] [--upsert-docs N] [--commit-every N] [--limit N]\n\
         defaults: reps 1, threads 1 and writer-mb 128 (deriver's writer settings), upsert-docs 100000, commit-every 5000"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        pipeline: PathBuf::new(),
        url: String::new(),
        dir: PathBuf::new(),
        reps: 1,
        threads: 1,
        writer_mb: 128,
        upsert_docs: 100_000,
        commit_every: 5000,
        limit: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--pipeline" => a.pipeline = val().into(),
            "--url" => a.url = val(),
            "--dir" => a.dir = val().into(),
            "--reps" => a.reps = val().parse().unwrap_or_else(|_| usage()),
            "--threads" => a.threads = val().parse().unwrap_or_else(|_| usage()),
            "--writer-mb" => a.writer_mb = val().parse().unwrap_or_else(|_| usage()),
            "--upsert-docs" => a.upsert_docs = val().parse().unwrap_or_else(|_| usage()),
            "--commit-every" => a.commit_every = val().parse().unwrap_or_else(|_| usage()),
            "--limit" => a.limit = Some(val().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if a.pipeline.as_os_str().is_empty() || a.url.is_empty() || a.dir.as_os_str().is_empty() {
        usage()
    }
    a
}

/// xorshift64*: a fixed, dependency-free pseudo-random sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench_raw_tantivy: {msg}");
    std::process::exit(1)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let args = parse_args();
    let text = std::fs::read_to_string(&args.pipeline).unwrap_or_else(|e| fail(format!("{}: {e}", args.pipeline.display())));
    let pipeline = check(&args.pipeline, &text).unwrap_or_else(|diags| {
        for d in diags {
            eprintln!("{d}");
        }
        fail("the pipeline file has problems")
    });
    let target = pipeline.search.first().cloned().unwrap_or_else(|| fail("the pipeline has no search target"));
    let id_pos = pipeline.text_fields().iter().position(|f| f == &target.id).expect("id is a text field");

    // 1. Read every record once (not timed as part of the tantivy figures).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let read_started = Instant::now();
    let records: Vec<Record> = rt.block_on(async {
        let client = deriver::source::postgres::connect(&args.url).await.unwrap_or_else(|e| fail(e));
        let info = deriver::source::postgres::table_info(&client, &pipeline.source.table, pipeline.source.key.as_deref()).await.unwrap_or_else(|e| fail(e));
        let sql = deriver::runtime::derivation_sql(&client, &pipeline, &info.key).await;
        let bulk = match args.limit {
            Some(n) => format!("{} LIMIT {n}", sql.bulk),
            None => sql.bulk.clone(),
        };
        let stream = client.query_raw(bulk.as_str(), std::iter::empty::<&str>()).await.unwrap_or_else(|e| fail(e));
        pin_mut!(stream);
        let mut out = Vec::new();
        while let Some(row) = stream.try_next().await.unwrap_or_else(|e| fail(e)) {
            out.push(row_to_record(&row).unwrap_or_else(|e| fail(e)));
        }
        out
    });
    let read_secs = read_started.elapsed().as_secs_f64();
    eprintln!("bench_raw_tantivy: read {} records in {read_secs:.1}s (RSS {} MiB)", records.len(), rss_kib() / 1024);
    if records.is_empty() {
        fail("no records")
    }

    let schema = build_schema(&target);
    let builder = DocBuilder::new(&schema, &target);
    let key_field = schema.get_field(KEY_FIELD).expect("_key");
    let hash_field = schema.get_field(HASH_FIELD).expect("_hash");
    // The document deriver's search sink writes: the built fields, the key, the content hash.
    let make_doc = |r: &Record| -> Option<TantivyDocument> {
        let id = r.texts.get(id_pos).cloned().flatten()?;
        let mut doc = builder.build(&id, &r.value).ok()?;
        doc.add_text(key_field, &r.key);
        doc.add_u64(hash_field, content_hash(&r.json));
        Some(doc)
    };

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for rep in 1..=args.reps {
        let dir = args.dir.join(format!("rep-{rep}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));

        // 2. Bulk: add everything, one commit.
        let index = Index::create_in_dir(&dir, schema.clone()).unwrap_or_else(|e| fail(e));
        register_tokenizers(&index, &target);
        let started = Instant::now();
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(args.threads, args.writer_mb.max(16) * 1024 * 1024).unwrap_or_else(|e| fail(e));
        let mut skipped = 0usize;
        for r in &records {
            match make_doc(r) {
                Some(doc) => {
                    writer.add_document(doc).unwrap_or_else(|e| fail(e));
                }
                None => skipped += 1,
            }
        }
        commit(&mut writer, "bulk");
        let bulk_secs = started.elapsed().as_secs_f64();
        let bulk_docs = records.len() - skipped;

        // 3. Upsert: delete_term + add on the built index, a commit + reader reload every N.
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().unwrap_or_else(|e: tantivy::TantivyError| fail(e));
        let n = args.upsert_docs.min(records.len() * 4);
        let picks: Vec<usize> = (0..n).map(|_| (rng.next() % records.len() as u64) as usize).collect();
        let started = Instant::now();
        let mut since_commit = 0usize;
        let mut commits = 0usize;
        for &i in &picks {
            upsert(&writer, key_field, &records[i].key, make_doc(&records[i]));
            since_commit += 1;
            if since_commit >= args.commit_every.max(1) {
                commit(&mut writer, "upsert");
                reader.reload().unwrap_or_else(|e| fail(e));
                since_commit = 0;
                commits += 1;
            }
        }
        if since_commit > 0 {
            commit(&mut writer, "upsert");
            reader.reload().unwrap_or_else(|e| fail(e));
            commits += 1;
        }
        let upsert_secs = started.elapsed().as_secs_f64();
        drop(writer);
        let index_bytes = dir_size(&dir);
        println!(
            "{}",
            serde_json::json!({
                "rep": rep,
                "threads": args.threads,
                "writer_mb": args.writer_mb,
                "read_records": records.len(),
                "read_secs": read_secs,
                "bulk_docs": bulk_docs,
                "bulk_secs": bulk_secs,
                "bulk_docs_per_s": bulk_docs as f64 / bulk_secs,
                "upsert_docs": n,
                "upsert_commits": commits,
                "upsert_secs": upsert_secs,
                "upsert_docs_per_s": n as f64 / upsert_secs,
                "index_bytes": index_bytes,
                "rss_mib": rss_kib() / 1024,
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn upsert(writer: &IndexWriter<TantivyDocument>, key_field: Field, key: &str, doc: Option<TantivyDocument>) {
    writer.delete_term(Term::from_field_text(key_field, key));
    if let Some(doc) = doc {
        writer.add_document(doc).unwrap_or_else(|e| fail(e));
    }
}

fn commit(writer: &mut IndexWriter<TantivyDocument>, what: &str) {
    let mut prepared = writer.prepare_commit().unwrap_or_else(|e| fail(e));
    prepared.set_payload(&format!("{{\"bench\":\"{what}\"}}"));
    prepared.commit().unwrap_or_else(|e| fail(e));
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}
