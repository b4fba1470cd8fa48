//! `deriver plan`: per pipeline, what applying the current files would do against what is
//! deployed: `unchanged`, `in-place` (only Redis views change: rewritten in place) or `rebuild`
//! (records or a search schema change: a new index generation).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::redis as rsink;
use crate::sink::tantivy;

pub async fn run(cfg: &Config) -> Result<i32> {
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| {
        Error::config("the pipeline files have problems (run `deriver validate`)").with_detail(d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n"))
    })?;
    print(cfg, defs).await?;
    Ok(0)
}

/// Prints the plan of `defs` against what is deployed (also what `deriver apply` shows first).
pub async fn print(cfg: &Config, defs: Vec<crate::pipeline::Pipeline>) -> Result<()> {
    let mut redis = None;
    for def in defs {
        let mut reasons = Vec::new();
        let mut rebuild = false;
        let mut in_place = false;
        let mut deployed = false;
        for t in &def.search {
            match tantivy::read_checkpoint(&cfg.index.dir, &t.index)? {
                None => {
                    rebuild = true;
                    reasons.push(format!("search index `{}` is not built yet", t.index));
                }
                Some((_, cp)) => {
                    deployed = true;
                    if cp.definition_hash.as_deref() != Some(def.search_hash(t).as_str()) {
                        rebuild = true;
                        reasons.push(format!("search index `{}`: records or search fields changed", t.index));
                    } else if tantivy::live_schema_matches(&cfg.index.dir, t)? == Some(false) {
                        rebuild = true;
                        reasons.push(format!("search index `{}`: this deriver lays out the index differently (rebuilt in the background)", t.index));
                    }
                }
            }
        }
        if !def.redis.is_empty() {
            if redis.is_none() {
                redis = Some(rsink::connect(&cfg.redis).await?);
            }
            let conn = redis.as_mut().expect("connected");
            match rsink::read_checkpoint(conn, &rsink::Keys::of(&cfg.redis, &def.name)).await? {
                None => {
                    in_place = true;
                    reasons.push("redis views are not written yet".into());
                }
                Some(cp) => {
                    deployed = true;
                    if cp.definition_hash.as_deref() != Some(def.redis_hash().as_str()) {
                        in_place = true;
                        reasons.push("redis views change (rewritten in place with absolute values)".into());
                    }
                }
            }
        }
        let verdict = if rebuild || !deployed {
            "rebuild"
        } else if in_place {
            "in-place"
        } else {
            "unchanged"
        };
        let note = if deployed { String::new() } else { " (new: derived in full on the next start)".into() };
        println!("{:<24} {verdict}{note}", def.name);
        for r in reasons {
            println!("    {r}");
        }
    }
    Ok(())
}
