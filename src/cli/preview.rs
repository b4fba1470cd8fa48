//! `deriver preview PIPELINE --key K…`: derive some keys from live data and show the records and
//! the writes they would make. Writes nothing.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::derive::derive_keys;
use crate::runtime::load_pipelines;
use crate::sink::tantivy::schema::{build_schema, DocBuilder};
use crate::sink::Write;
use crate::source::postgres as pg;

pub async fn run(cfg: &Config, pipeline: &str, keys: &[String]) -> Result<i32> {
    let client = pg::connect(cfg.postgres_url()?).await?;
    let loaded = load_pipelines(cfg, &client).await?;
    let Some((def, info, sql)) = loaded.into_iter().find(|(d, _, _)| d.name == pipeline) else {
        return Err(Error::config(format!("no pipeline named `{pipeline}`")));
    };
    let n = info.key.len();
    let mut tuples = Vec::new();
    for k in keys {
        let parts: Vec<String> = crate::runtime::derive::split_key_text(k, n).unwrap_or_default();
        if parts.len() != n {
            return Err(Error::config(format!(
                "key `{k}` needs {n} parts joined by `:` ({})",
                info.key.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(":")
            )));
        }
        tuples.push(parts);
    }
    let stmt = client.prepare(&sql.keyed).await?;
    let (writes, rejected) = derive_keys(&client, &stmt, n, &tuples).await?;
    let text_fields = def.text_fields();
    for w in &writes {
        match w {
            Write::Delete { key } => {
                println!("key {key}: no record (the row is missing or does not pass the filter); deriver would delete its views and document\n")
            }
            Write::Upsert(r) => {
                println!("key {}:", r.key);
                let pretty: serde_json::Value = serde_json::from_str(&r.json).unwrap_or(serde_json::Value::Null);
                println!("  record {}", serde_json::to_string_pretty(&pretty).unwrap_or_default().replace('\n', "\n  "));
                for t in &def.search {
                    let id_pos = text_fields.iter().position(|f| f == &t.id).expect("id is a text field");
                    let schema = build_schema(t);
                    match r.texts.get(id_pos).cloned().flatten() {
                        None => println!("  search:{} → rejected: the id field `{}` is NULL", t.index, t.id),
                        Some(id) => match DocBuilder::new(&schema, t).build(&id, &r.value) {
                            Ok(_) => println!("  search:{} → upsert document {id}", t.index),
                            Err(e) => println!("  search:{} → rejected: {e}", t.index),
                        },
                    }
                }
                match crate::sink::redis::preview(&crate::sink::redis::Keys::of(&cfg.redis, &def.name).views, &def, r) {
                    Ok(views) => {
                        for v in views {
                            println!("  redis {} {} {}", v.kind, v.key, serde_json::to_string(&v.values).unwrap_or_default());
                        }
                    }
                    Err(e) => println!("  redis → rejected: {e}"),
                }
                println!();
            }
        }
    }
    for r in rejected {
        println!("key {}: derivation failed: {}", r.key, r.reason);
    }
    Ok(0)
}
