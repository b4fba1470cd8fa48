//! `deriver status`: from the running daemon (GET /v1/status), else from the sinks' own
//! checkpoints and the slot.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::client::daemon_get;
use crate::runtime::status::{PipelineStatus, SlotStatus, StatusDoc};
use crate::sink::redis as rsink;
use crate::sink::tantivy;
use crate::source::postgres as pg;

pub async fn collect(cfg: &Config) -> Result<StatusDoc> {
    if let Some((200, body)) = daemon_get(&cfg.http.listen, "/v1/status", cfg.http.token.as_deref()).await {
        if let Ok(mut doc) = serde_json::from_str::<StatusDoc>(&body) {
            // The daemon looks for new audit reports every few seconds; the report files are
            // the source, so an audit that just finished shows here at once.
            for p in &mut doc.pipelines {
                if let Some(report) = crate::audit::last_report(cfg, &p.name) {
                    p.audit = Some(crate::runtime::status::AuditSummary::from(&report));
                }
            }
            // What `deriver prune` removed since the daemon last looked is gone at once here too.
            if let Some(o) = doc.orphans.as_mut() {
                let mut redis = None;
                if !o.redis_pipelines.is_empty() || !o.redis_unrecorded.is_empty() {
                    redis = rsink::connect(&cfg.redis).await.ok();
                }
                crate::runtime::orphans::reverify(&cfg.redis, redis.as_mut(), o).await;
            }
            return Ok(doc);
        }
    }
    offline(cfg).await
}

/// Status without a daemon: read each sink's stored checkpoint.
async fn offline(cfg: &Config) -> Result<StatusDoc> {
    let client = pg::connect(cfg.postgres_url()?).await?;
    let server_lsn = pg::current_wal_lsn(&client).await.ok();
    let slot = pg::slot_info(&client, &cfg.postgres.slot).await?.map(|s| SlotStatus {
        name: cfg.postgres.slot.clone(),
        confirmed_flush_lsn: s.confirmed_flush_lsn,
        wal_status: s.wal_status,
    });
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| {
        Error::config("the pipeline files have problems (run `deriver validate`)").with_detail(d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n"))
    })?;
    let live = crate::runtime::orphans::Live::of(&cfg.redis, &defs);
    let mut redis = None;
    let mut pipelines = Vec::new();
    // Read-only: a daemon starting meanwhile opens the store for writing beside this reader.
    let dead = match crate::runtime::dead_letters::DeadLetters::open_read_only(&crate::runtime::state_dir(&cfg.index.dir)) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dead-letter store; dead letters are not shown");
            None
        }
    };
    for def in defs {
        let mut targets = BTreeMap::new();
        let mut generation = None;
        for t in &def.search {
            let cp = tantivy::read_checkpoint(&cfg.index.dir, &t.index).ok().flatten();
            generation = cp.as_ref().map(|(g, _)| *g).or(generation);
            targets.insert(format!("search:{}", t.index), cp.map(|(_, c)| c.lsn));
        }
        if !def.redis.is_empty() {
            if redis.is_none() {
                redis = Some(rsink::connect(&cfg.redis).await?);
            }
            let conn = redis.as_mut().expect("connected");
            let cp = rsink::read_checkpoint(conn, &rsink::Keys::of(&cfg.redis, &def.name)).await?;
            for t in &def.redis {
                targets.insert(t.label(), cp.as_ref().map(|c| c.lsn));
            }
        }
        let mut p = PipelineStatus {
            name: def.name.clone(),
            state: "stopped".into(),
            generation,
            definition_hash: def.hash.clone(),
            applied_lsn: None,
            targets,
            lag_bytes: None,
            dead_letters: dead.as_ref().map_or(0, |d| d.count(&def.name) as u64),
            dead_letter_list: dead.as_ref().and_then(|d| d.list(&def.name, 20).ok()).unwrap_or_default(),
            description: def.description.clone(),
            owner: def.owner.clone(),
            error: None,
            reindex: None,
            audit: crate::audit::last_report(cfg, &def.name).as_ref().map(crate::runtime::status::AuditSummary::from),
        };
        p.refresh(server_lsn);
        pipelines.push(p);
    }
    // State of pipelines no file declares (Redis when it is configured and answers).
    if redis.is_none() && cfg.redis.url.is_some() {
        redis = rsink::connect(&cfg.redis).await.ok();
    }
    let orphans = match crate::runtime::orphans::find(cfg, &live, redis.as_mut()).await {
        Ok(o) => Some(o),
        Err(_) => crate::runtime::orphans::find(cfg, &live, None).await.ok(),
    };
    // This command's own connection: whether it is encrypted.
    let dependencies = Some(crate::health::snapshot());
    Ok(StatusDoc { server_lsn, slot, pipelines, role: None, owner: None, dependencies, orphans })
}

pub fn print_table(doc: &StatusDoc) {
    let lsn = |l: Option<crate::source::Lsn>| l.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
    println!("server LSN {}", lsn(doc.server_lsn));
    match &doc.slot {
        Some(s) => println!("slot {}: confirmed_flush_lsn {}, wal_status {}", s.name, lsn(s.confirmed_flush_lsn), s.wal_status.as_deref().unwrap_or("-")),
        None => println!("slot: none yet"),
    }
    if let Some(role) = &doc.role {
        println!("role {role}{}", doc.owner.as_ref().map(|o| format!(" (slot owned by {o})")).unwrap_or_default());
    }
    for (name, h) in doc.dependencies.iter().flatten() {
        if let Some(e) = &h.encryption {
            println!("connection {name}: {e}");
        }
    }
    for (name, h) in doc.dependencies.iter().flatten().filter(|(_, h)| !h.up) {
        println!("DOWN {name} since {}: {}", h.since, h.last_error.as_deref().unwrap_or("-"));
    }
    println!();
    println!("{:<20} {:<12} {:>4} {:<14} {:>12} {:>6}  HASH", "PIPELINE", "STATE", "GEN", "APPLIED", "LAG(bytes)", "DEAD");
    for p in &doc.pipelines {
        println!(
            "{:<20} {:<12} {:>4} {:<14} {:>12} {:>6}  {}",
            p.name,
            p.state,
            p.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            lsn(p.applied_lsn),
            p.lag_bytes.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            p.dead_letters,
            &p.definition_hash[..12.min(p.definition_hash.len())]
        );
        for (t, l) in &p.targets {
            println!("    {:<40} {}", t, lsn(*l));
        }
        for d in &p.dead_letter_list {
            println!("    dead letter {}: {} (attempts {})", d.key, d.reason, d.attempts);
        }
    }
    if let Some(o) = &doc.orphans {
        if let Some(line) = o.summary() {
            println!();
            println!("orphaned (no pipeline file declares it): {line}; `deriver prune` removes it");
        }
        if let Some(note) = o.unrecorded_note() {
            println!("{note}");
        }
    }
}
