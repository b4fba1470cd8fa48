//! `deriver prune [--dry-run] [--yes] [--redis-pipeline NAME…]`: removes what removed pipelines
//! left behind (see `orphans.rs` for what counts and why), never a live pipeline's data.
//!
//! It decides only while nothing can start running a pipeline it does not know of: when a daemon
//! answers on `http.listen` as the slot's owner, the pipelines it runs count as live (their files
//! may be gone); when none answers, prune holds the slot's ownership lock itself while it works, so
//! no daemon starts meanwhile; when another process owns the slot, it refuses. An index folder is
//! removed only while prune holds the writer lock of every generation in it.

use std::io::{IsTerminal, Write as _};
use std::path::Path;

use tantivy::directory::{DirectoryLock, MmapDirectory, INDEX_WRITER_LOCK};
use tantivy::Directory as _;

use crate::config::{Config, RedisConfig};
use crate::error::{Error, Result};
use crate::http::client::daemon_get;
use crate::runtime::lease;
use crate::runtime::orphans::{self, human_bytes, plural, Live, OrphanRedis, Orphans, Registry};
use crate::runtime::status::StatusDoc;
use crate::sink::redis::{self as rsink, Keys, RedisConn};

pub async fn run(cfg: &Config, dry_run: bool, yes: bool, named: Vec<String>) -> Result<i32> {
    let defs = orphans::load_defs(cfg)?;
    let mut live = Live::of(&cfg.redis, &defs);
    let declared = live.pipelines.clone();
    let guard = Guard::take(cfg, &mut live).await?;
    for p in live.pipelines.difference(&declared) {
        println!("left alone: pipeline `{p}`: the running daemon still runs it although its file is gone; restart the daemon, then run `deriver prune` again");
    }
    let result = prune(cfg, &live, dry_run, yes, named).await;
    guard.release(cfg).await;
    result
}

async fn prune(cfg: &Config, live: &Live, dry_run: bool, yes: bool, named: Vec<String>) -> Result<i32> {
    let mut found = Orphans { indexes: orphans::index_orphans(&cfg.index.dir, live), files: orphans::file_orphans(&cfg.index.dir, live), ..Default::default() };
    let mut redis = None;
    if cfg.redis.url.is_some() {
        let mut conn = rsink::connect(&cfg.redis).await?;
        let (ours, mut others) = orphans::redis_orphans(&mut conn, cfg, live).await?;
        found.redis_pipelines = ours;
        for name in named {
            if live.pipelines.contains(&name) {
                return Err(Error::config(format!(
                    "pipeline `{name}` is live (a pipeline file declares it, or the daemon runs it); prune never removes a live pipeline's state"
                )));
            }
            if found.redis_pipelines.iter().any(|r| r.name == name) {
                continue;
            }
            let keys = others
                .remove(&name)
                .ok_or_else(|| Error::config(format!("Redis holds no bookkeeping of a pipeline `{name}` under redis.prefix `{}`", cfg.redis.prefix)))?;
            found.redis_pipelines.push(orphans::describe(&mut conn, &cfg.redis, &name, keys).await?);
        }
        found.redis_unrecorded = others.into_keys().collect();
        redis = Some(conn);
    } else if let Some(name) = named.first() {
        return Err(Error::config(format!("--redis-pipeline {name}: no redis.url is configured")));
    }

    let left_alone = || {
        for n in &found.redis_unrecorded {
            println!(
                "left alone: Redis bookkeeping of pipeline `{n}`: no file declares it, but this deployment has no record of owning it last \
                 (another deriver sharing redis.prefix `{}` may run it); if it is this deployment's, `deriver prune --redis-pipeline {n}` removes it",
                cfg.redis.prefix
            );
        }
    };
    if found.is_empty() {
        println!("nothing to prune: no index folder, file or Redis state of a pipeline that no file declares");
        left_alone();
        return Ok(0);
    }
    println!("orphaned (no pipeline file declares it):");
    for i in &found.indexes {
        let gens: Vec<String> = i.generations.iter().map(u64::to_string).collect();
        println!("  index `{}`: {} ({}, generations {})", i.name, i.path, human_bytes(i.bytes), if gens.is_empty() { "none".into() } else { gens.join(", ") });
    }
    for r in &found.redis_pipelines {
        println!(
            "  Redis state of pipeline `{}`: the views its ledger lists for {}, and {} ({})",
            r.name,
            plural(r.ledger_entries as usize, "record"),
            plural(r.keys.len(), "bookkeeping key"),
            r.keys.join(", ")
        );
    }
    for f in &found.files {
        println!("  file of pipeline `{}`: {} ({})", f.pipeline, f.path, human_bytes(f.bytes));
    }
    left_alone();
    if dry_run {
        println!("dry run: nothing removed (`deriver prune --yes` removes the above)");
        return Ok(0);
    }
    if !yes && !confirm()? {
        println!("nothing removed");
        return Ok(1);
    }

    let mut skipped = 0;
    let mut freed = 0;
    for i in &found.indexes {
        let path = Path::new(&i.path);
        // Held until the folder is gone: no writer can open a generation meanwhile.
        match lock_generations(path) {
            Ok(_locks) => {
                std::fs::remove_dir_all(path).map_err(|e| Error::fatal(format!("cannot remove {}", path.display())).with_detail(e))?;
                sync_dir(&cfg.index.dir);
                freed += i.bytes;
                println!("removed index `{}` ({})", i.name, human_bytes(i.bytes));
            }
            Err(why) => {
                skipped += 1;
                println!("skipped index `{}`: {why}", i.name);
            }
        }
    }
    for f in &found.files {
        std::fs::remove_file(&f.path).map_err(|e| Error::fatal(format!("cannot remove {}", f.path)).with_detail(e))?;
        freed += f.bytes;
        println!("removed {} ({})", f.path, human_bytes(f.bytes));
    }
    let mut forgotten = Vec::new();
    if redis.is_some() {
        for r in &found.redis_pipelines {
            let mut conn = rsink::connect_pinned(&cfg.redis, &Keys::of(&cfg.redis, &r.name).checkpoint).await?;
            let done = remove_redis(&mut conn, &cfg.redis, live, r).await?;
            println!(
                "removed the Redis state of pipeline `{}`: {}, {}, {}",
                r.name,
                plural(done.views as usize, "view key"),
                plural(done.members as usize, "set/zset member"),
                plural(done.bookkeeping as usize, "bookkeeping key")
            );
            if !done.kept.is_empty() {
                println!(
                    "left alone: {} of `{}` that a live pipeline's key templates could also produce (e.g. {})",
                    plural(done.kept.len(), "view key"),
                    r.name,
                    done.kept.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                );
            }
            if done.unreadable > 0 {
                skipped += 1;
                println!("left alone: {} of `{}` could not be read; its ledger and bookkeeping stay", plural(done.unreadable, "ledger entry"), r.name);
            } else {
                forgotten.push(r.name.clone());
            }
        }
        if !forgotten.is_empty() {
            Registry::forget(&cfg.index.dir, &cfg.redis, &forgotten)?;
        }
    }
    println!(
        "done: {} freed on disk{}",
        human_bytes(freed),
        if skipped > 0 { format!("; {} left (see above)", plural(skipped, "item")) } else { String::new() }
    );
    Ok(if skipped > 0 { 1 } else { 0 })
}

fn confirm() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::fatal("not removing anything without confirmation: pass --yes (or --dry-run to only list)"));
    }
    print!("remove them? [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// tantivy's writer lock of every generation under an index folder (the one a daemon's writer
/// holds), or why it cannot be had.
fn lock_generations(path: &Path) -> std::result::Result<Vec<DirectoryLock>, String> {
    let mut locks = Vec::new();
    for name in orphans::entry_names(path).into_iter().filter(|n| n.starts_with("gen-")) {
        let gen = path.join(&name);
        if !gen.is_dir() {
            continue;
        }
        let dir = MmapDirectory::open(&gen).map_err(|e| format!("cannot open {}: {e}", gen.display()))?;
        match dir.acquire_lock(&INDEX_WRITER_LOCK) {
            Ok(lock) => locks.push(lock),
            Err(tantivy::directory::error::LockError::LockBusy) => {
                return Err(format!("a process holds the writer lock of {name} (a deriver still writing it?); nothing removed"));
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", gen.display())),
        }
    }
    Ok(locks)
}

#[derive(Default)]
struct RedisRemoved {
    views: u64,
    members: u64,
    bookkeeping: u64,
    kept: Vec<String>,
    unreadable: usize,
}

/// Removes the views a pipeline's ledger lists (a chunk at a time, with their ledger entries, so
/// an interrupted prune resumes), then its bookkeeping. A key that a live pipeline's template
/// could produce is left: it may be that pipeline's now.
async fn remove_redis(conn: &mut RedisConn, cfg: &RedisConfig, live: &Live, o: &OrphanRedis) -> Result<RedisRemoved> {
    let keys = Keys::of(cfg, &o.name);
    let mut done = RedisRemoved::default();
    let mut cursor = 0u64;
    loop {
        let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN").arg(&keys.ledger).arg(cursor).arg("COUNT").arg(500).query_async(conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for pair in flat.chunks(2) {
            let [source, list] = pair else { continue };
            let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(list) else {
                done.unreadable += 1;
                continue;
            };
            for e in entries {
                let (key, member) = match &e {
                    serde_json::Value::String(k) => (k.as_str(), None),
                    serde_json::Value::Array(a) => {
                        match (a.first().and_then(|v| v.as_str()), a.get(1).and_then(|v| v.as_str()), a.get(2).and_then(|v| v.as_str())) {
                            (Some(k), Some(m), Some(kind)) => (k, Some((m, kind))),
                            _ => continue,
                        }
                    }
                    _ => continue,
                };
                if live.may_own_key(key) {
                    done.kept.push(key.to_string());
                    continue;
                }
                match member {
                    None => {
                        pipe.cmd("UNLINK").arg(key).ignore();
                        done.views += 1;
                    }
                    Some((m, kind)) => {
                        pipe.cmd(if kind == "z" { "ZREM" } else { "SREM" }).arg(key).arg(m).ignore();
                        done.members += 1;
                    }
                }
            }
            pipe.cmd("HDEL").arg(&keys.ledger).arg(source).ignore();
        }
        if !flat.is_empty() {
            pipe.query_async::<()>(conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if done.unreadable > 0 {
        return Ok(done);
    }
    // The bookkeeping last: until it is gone the pipeline still shows as orphaned.
    let mut all: Vec<&String> = o.keys.iter().collect();
    for k in [&keys.ledger, &keys.checkpoint, &keys.hash, &keys.epoch, &keys.fenced] {
        if !all.contains(&k) {
            all.push(k);
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for k in &all {
        pipe.cmd("UNLINK").arg(*k);
    }
    let removed: Vec<u64> = pipe.query_async(conn).await?;
    // Found at the start (the ledger is gone already once its last entry went) or removed now.
    done.bookkeeping = all.iter().zip(&removed).filter(|(k, n)| **n > 0 || o.keys.contains(k)).count() as u64;
    done.kept.sort();
    done.kept.dedup();
    Ok(done)
}

/// What keeps other processes from running pipelines prune does not know of while it works.
enum Guard {
    /// The daemon answering on `http.listen` owns the slot; its pipelines were added to `Live`.
    Daemon,
    /// No daemon runs: prune holds the slot's ownership lock on this session.
    Lease(tokio_postgres::Client),
}

impl Guard {
    async fn take(cfg: &Config, live: &mut Live) -> Result<Guard> {
        let listen = &cfg.http.listen;
        let slot = &cfg.postgres.slot;
        match daemon_get(listen, "/v1/status", cfg.http.token.as_deref()).await {
            Some((200, body)) => {
                let doc: StatusDoc = serde_json::from_str(&body).map_err(|e| Error::fatal("unreadable status from the daemon").with_detail(e))?;
                if doc.role.as_deref() == Some("standby") {
                    let owner = doc.owner.as_ref().map(|o| format!(" ({o})")).unwrap_or_default();
                    return Err(Error::fatal(format!(
                        "the daemon at http://{listen} stands by: the process that owns slot `{slot}`{owner} may run pipelines whose files are gone here, \
                         so prune cannot tell what is orphaned; run `deriver prune` where that process runs"
                    )));
                }
                live.add_running(&cfg.redis, &doc);
                Ok(Guard::Daemon)
            }
            Some((code, _)) => Err(Error::fatal(format!(
                "the daemon at http://{listen} answered HTTP {code} to GET /v1/status; prune must know which pipelines it runs (is it still starting? is http.token set?)"
            ))),
            None => {
                let client = crate::source::postgres::connect(cfg.postgres_url()?).await?;
                let got: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lease::lock_key(slot)]).await?.get(0);
                if !got {
                    let who = lease::holder(&client, slot).await.ok().flatten().map(|h| format!(" (pid {}, {})", h.pid, h.application_name.unwrap_or_default())).unwrap_or_default();
                    return Err(Error::fatal(format!(
                        "a deriver process owns slot `{slot}`{who} but no daemon answers at http://{listen} (http.listen), so prune cannot ask which pipelines it runs; \
                         run `deriver prune` where it runs, or stop it"
                    )));
                }
                Ok(Guard::Lease(client))
            }
        }
    }

    async fn release(self, cfg: &Config) {
        if let Guard::Lease(client) = self {
            let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&lease::lock_key(&cfg.postgres.slot)]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_whose_writer_lock_is_held_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("actors");
        for gen in ["gen-000001", "gen-000002"] {
            std::fs::create_dir_all(index.join(gen)).unwrap();
        }
        std::fs::write(index.join("CURRENT"), "2\n").unwrap();
        let held = MmapDirectory::open(index.join("gen-000002")).unwrap().acquire_lock(&INDEX_WRITER_LOCK).unwrap();
        let Err(why) = lock_generations(&index) else { panic!("locked while held elsewhere") };
        assert!(why.contains("gen-000002"), "{why}");
        drop(held);
        let locks = lock_generations(&index).unwrap();
        assert_eq!(locks.len(), 2);
        // While prune holds them, a writer cannot open a generation.
        assert!(MmapDirectory::open(index.join("gen-000001")).unwrap().acquire_lock(&INDEX_WRITER_LOCK).is_err());
    }
}
