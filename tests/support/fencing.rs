//! The Redis side of fencing, exactly — shared by the single-server test (`standby.rs`) and the
//! Redis Cluster test (`cluster.rs`), which differ only in where the keys live.

use deriver::sink::redis::RedisSink;
use deriver::sink::{BatchMode, Record, Sink, Write};
use deriver::source::Lsn;

/// Once a second sink claimed the `items` pipeline's views, every batch of the first is refused
/// whole (a small one, and one chunked in MULTI as several script calls) and counted; nothing of
/// it lands and the checkpoint stays; the new owner then writes normally, a chunked batch
/// included. `get` reads a key by its name under `cfg.prefix`; `tag` is the pipeline's name as
/// keys spell it (`items`, or `{items}` on a cluster); `views` prefixes view keys (`""`, or
/// `{items}:` on a cluster).
pub fn redis_refuses_every_batch_of_an_earlier_owner(cfg: deriver::config::RedisConfig, tag: &str, views: &str, get: &dyn Fn(&str) -> Option<String>) {
    let yaml =
        "version: 1\npipeline: items\nsource: { table: item }\nfields: { id: item.id, title: item.title }\ntargets:\n  - redis: { key: \"item:{id}\" }\n";
    let p = deriver::pipeline::check::check(std::path::Path::new("items.yaml"), yaml).unwrap_or_else(|d| panic!("{d:?}"));
    let fields = p.text_fields();
    let record = |id: u64, title: &str| {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({ "id": id, "title": title })).unwrap();
        let texts = fields.iter().map(|f| Some(if f == "id" { id.to_string() } else { title.to_string() })).collect();
        Write::Upsert(Record { key: id.to_string(), json: serde_json::Value::Object(value.clone()).to_string(), value, texts })
    };
    let item = |id: u64| get(&format!("{views}item:{id}"));
    let meta = |name: &str| get(&format!("_meta:{tag}:{name}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut a = RedisSink::open(&cfg, &p).await.unwrap();
        let mut b = RedisSink::open(&cfg, &p).await.unwrap();
        assert_eq!(a.claim_ownership().await.unwrap(), 1);
        assert!(a.begin(Lsn(100), BatchMode::Incremental { clear_all: false }).await.unwrap());
        a.write(&[record(1, "from a")]).await.unwrap();
        a.commit().await.unwrap();
        assert!(item(1).unwrap().contains("from a"));

        assert_eq!(b.claim_ownership().await.unwrap(), 2);
        // A small batch of the old owner.
        assert!(a.begin(Lsn(200), BatchMode::Incremental { clear_all: false }).await.unwrap());
        a.write(&[record(1, "stale"), record(2, "stale")]).await.unwrap();
        let e = a.commit().await.expect_err("the old owner's batch is refused");
        assert_eq!(e.kind, deriver::error::ErrorKind::Fenced, "{e}");
        // A batch large enough to be queued in MULTI as several script calls.
        assert!(a.begin(Lsn(300), BatchMode::Incremental { clear_all: false }).await.unwrap());
        let big = "x".repeat(64 * 1024);
        let writes: Vec<Write> = (10..110).map(|i| record(i, &big)).collect();
        let r = async {
            a.write(&writes).await?;
            a.commit().await
        }
        .await;
        assert_eq!(r.expect_err("the old owner's chunked batch is refused").kind, deriver::error::ErrorKind::Fenced);
        a.abort().await;
        assert!(item(1).unwrap().contains("from a"), "nothing of the refused batches landed");
        assert_eq!(item(2), None);
        assert_eq!(item(10), None);
        assert_eq!(meta("applied_lsn").as_deref(), Some("0/64"), "the checkpoint stayed where the real owner left it");
        let fenced: i64 = meta("fenced_writes").unwrap().parse().unwrap();
        assert!(fenced >= 2, "refusals are counted: {fenced}");

        // The new owner writes normally, a chunked batch included (one EXEC).
        assert!(b.begin(Lsn(400), BatchMode::Incremental { clear_all: false }).await.unwrap());
        b.write(&[record(1, "from b")]).await.unwrap();
        b.write(&writes).await.unwrap();
        b.commit().await.unwrap();
        assert!(item(1).unwrap().contains("from b"));
        let v: serde_json::Value = serde_json::from_str(&item(109).unwrap()).unwrap();
        assert_eq!(v["title"].as_str(), Some(big.as_str()));
        assert_eq!(meta("applied_lsn").as_deref(), Some("0/190"));
    });
}
