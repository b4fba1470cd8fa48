//! How the audit reaches the daemon (`Link`): over its HTTP API from the command line, or its
//! shared state from inside `deriver run` — to wait until it applied a position, to open the live
//! search indexes, to watch its change notices, and to have it repair keys.

use std::sync::Arc;
use std::time::Duration;

use super::sample::KeyFilter;
use super::search_side::{scan_hashes, Search};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::runtime::status::Shared;
use crate::sink::tantivy::schema::build_schema;
use crate::source::Lsn;

/// How long one re-check waits for the daemon to apply the position it needs.
const WAIT: Duration = Duration::from_secs(20);

/// How the audit reaches the daemon.
pub(crate) enum Link<'a> {
    /// From the command line: the daemon, when one runs, over its HTTP API; indexes from disk.
    Cli(&'a Config),
    /// Inside `deriver run`: its shared state (live index readers, applied positions, admin
    /// requests, change notices).
    Daemon(&'a Config, &'a Arc<Shared>),
}

pub(super) enum Applied {
    Yes,
    /// No daemon runs: nothing will change the targets, one re-check settles it.
    NoDaemon,
    TimedOut,
}

impl Link<'_> {
    pub(super) fn cfg(&self) -> &Config {
        match self {
            Link::Cli(c) | Link::Daemon(c, _) => c,
        }
    }

    /// Waits until the daemon has applied `lsn` for the pipeline.
    pub(super) async fn wait_applied(&self, pipeline: &str, lsn: Lsn) -> Applied {
        match self {
            Link::Cli(cfg) => {
                let body = serde_json::json!({ "lsn": lsn, "pipelines": [pipeline], "timeout_ms": WAIT.as_millis() as u64 }).to_string();
                match crate::http::client::daemon_request(&cfg.http.listen, "POST", "/v1/wait", cfg.http.token.as_deref(), Some(&body)).await {
                    Some((200, _)) => Applied::Yes,
                    Some(_) => Applied::TimedOut,
                    None => Applied::NoDaemon,
                }
            }
            Link::Daemon(_, shared) => {
                let reached = |s: &Shared| s.pipeline_applied(pipeline).is_some_and(|a| a >= lsn);
                if crate::http::freshness::wait_until(shared, WAIT, reached).await {
                    Applied::Yes
                } else {
                    Applied::TimedOut
                }
            }
        }
    }

    /// The live documents of a search target, restricted to `filter` (key → content hash).
    pub(super) async fn open_search(&self, p: &Pipeline, t: &crate::pipeline::SearchTarget, filter: KeyFilter, cap: usize) -> Result<Search> {
        let (index, searcher) = match self {
            Link::Cli(cfg) => {
                let dir = cfg.index.dir.join(&t.index);
                let gen = crate::sink::tantivy::current_generation(&cfg.index.dir, &t.index)
                    .ok_or_else(|| Error::config(format!("search index `{}` has not been built yet", t.index)))?;
                let index = tantivy::Index::open_in_dir(dir.join(format!("gen-{gen:06}")))?;
                let reader: tantivy::IndexReader = index.reader_builder().reload_policy(tantivy::ReloadPolicy::Manual).try_into()?;
                let searcher = reader.searcher();
                (index, searcher)
            }
            Link::Daemon(_, shared) => {
                let live = shared.indexes.read().expect("indexes lock").get(&t.index).cloned();
                let live = live.ok_or_else(|| Error::transient(format!("search index `{}` is not open", t.index)))?;
                (live.index.clone(), live.reader.searcher())
            }
        };
        if index.schema() != build_schema(t) {
            return Err(Error::config(format!("search index `{}` was built from another definition: reindex it first", t.index)));
        }
        let id_pos = p.text_fields().iter().position(|f| f == &t.id).expect("id is a text field");
        let scan_searcher = searcher.clone();
        let docs = tokio::task::spawn_blocking(move || scan_hashes(&scan_searcher, &filter, cap))
            .await
            .map_err(|e| Error::fatal("reading the search index failed").with_detail(e))??;
        Ok(Search { label: format!("search:{}", t.index), docs, searcher, target: t.clone(), id_pos })
    }

    /// Re-derives `keys` through the normal write path (same atomic checkpointed writes).
    pub(super) async fn repair(&self, p: &Pipeline, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        match self {
            Link::Cli(cfg) => repair_keys(cfg, p, keys).await,
            Link::Daemon(_, shared) => {
                let tx = shared.admin.lock().expect("admin lock").clone().ok_or_else(|| Error::transient("the daemon is not ready for repairs"))?;
                let (reply, rx) = tokio::sync::oneshot::channel();
                tx.send(crate::runtime::status::AdminRequest::Repair { pipeline: p.name.clone(), keys: keys.to_vec(), reply })
                    .await
                    .map_err(|_| Error::transient("the daemon is stopping"))?;
                match rx.await {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(e)) => Err(Error::fatal("the daemon refused the repair").with_detail(e)),
                    Err(_) => Err(Error::transient("the daemon stopped before the repair")),
                }
            }
        }
    }

    /// Change notices of the daemon from now on (inside the daemon only).
    pub(super) fn watch(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<crate::runtime::status::ChangeNotice>>> {
        match self {
            Link::Cli(_) => None,
            Link::Daemon(_, shared) => Some(shared.changes.subscribe()),
        }
    }
}

/// Re-derives `keys` through the normal write path: the daemon when one runs, else here.
async fn repair_keys(cfg: &Config, p: &Pipeline, keys: &[String]) -> Result<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    let body = serde_json::json!({ "pipeline": p.name, "keys": keys }).to_string();
    match crate::http::client::daemon_request(&cfg.http.listen, "POST", "/v1/admin/repair", cfg.http.token.as_deref(), Some(&body)).await {
        Some((200, _)) => Ok(keys.len()),
        Some((_, body)) => Err(Error::fatal("the daemon refused the repair").with_detail(body)),
        None => {
            let _owner = crate::runtime::lease::hold_for_command(cfg, "audit --repair").await?;
            let mut d = crate::runtime::Daemon::prepare(cfg.clone(), Default::default(), tokio_util::sync::CancellationToken::new(), false).await?;
            d.repair(&p.name, keys).await?;
            Ok(keys.len())
        }
    }
}
