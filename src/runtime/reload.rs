//! Live reload of the pipeline files (`SIGHUP`, `deriver apply`), carried out by the source task
//! between two transactions.
//!
//! Every file is parsed and every new or changed pipeline is checked against the source first; a
//! file with errors, or a pipeline that cannot run, changes nothing. Then the workers of removed
//! and changed pipelines are stopped (each applies what it was handed and closes its sinks), and
//! a worker starts for each new or changed pipeline at the position the stream has reached:
//! - a new pipeline builds its records from a snapshot in the background (a new search
//!   generation, Redis views written beside) while it streams;
//! - a changed pipeline whose search definition changed keeps serving its live generation while a
//!   new one is built from a snapshot and swapped in; Redis views derived differently are
//!   rewritten record by record (each record's new view keys and the removal of the keys it no
//!   longer produces in one atomic script), so no view is ever missing in between;
//! - unchanged pipelines keep streaming; their workers are not touched.
//!
//! The source task never waits during a reload: the files are read and checked by a task of
//! their own, and the switch (routes, queues) is instantaneous; a new worker's sinks are opened by
//! its own task once the worker it replaces let go of them, while its queue fills. A pipeline
//! whose sinks cannot be opened shows `failed` in status and stays stopped; the others go on.
//!
//! A reload that changes what the decoder extracts (tables, columns), or that stopped a worker
//! before it applied everything it was handed, reopens the stream from the workers' checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::assemble::{self, Checked, Publication};
use super::pipeline::{derivation_sql, PipelineRt};
use super::source_task::{SourceTask, WorkerHandle};
use super::worker::{Feed, Progress, Wiring, Worker};
use crate::error::{Cause, Error, Result};
use crate::pipeline::Pipeline;
use crate::source::postgres as pg;
use crate::source::Lsn;

/// What a reload does with one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A file declares it and nothing runs it: start it.
    Add,
    /// Its definition changed: replace its worker.
    Change,
    /// No file declares it any more: stop it.
    Remove,
    Keep,
}

/// The step of each pipeline, from what runs (name, definition hash) and what the files declare:
/// the files' order, then the removed pipelines in their running order.
pub fn plan(running: &[(&str, &str)], files: &[(&str, &str)]) -> Vec<(String, Step)> {
    let mut out: Vec<(String, Step)> = files
        .iter()
        .map(|(name, hash)| {
            let step = match running.iter().find(|(n, _)| n == name) {
                None => Step::Add,
                Some((_, h)) if h == hash => Step::Keep,
                Some(_) => Step::Change,
            };
            (name.to_string(), step)
        })
        .collect();
    for (name, _) in running {
        if !files.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), Step::Remove));
        }
    }
    out
}

/// What a reload did (the answer of `POST /v1/admin/reload`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Pipelines building their records in the background (`/v1/status` shows the progress).
    pub rebuilding: Vec<String>,
}

/// The files' problems as one configuration error (nothing changed).
fn invalid_files(diags: &[crate::pipeline::Diagnostic]) -> Error {
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    Error::config(format!("{} problem(s) in the pipeline files; nothing changed", diags.len())).with_detail(text.join("\n"))
}

/// A reload read and checked against the source, ready to be switched to.
pub struct Planned {
    steps: Vec<(String, Step)>,
    /// The new and changed pipelines, checked.
    checked: Vec<Checked>,
    defs: Vec<Pipeline>,
}

/// The answer channel of a reload request.
pub type ReloadReply = oneshot::Sender<Result<ReloadReport>>;

/// Reads the pipeline files and checks every new or changed pipeline against the source, on a
/// connection of its own: the stream goes on meanwhile.
async fn prepare(cfg: crate::config::Config, running: Vec<(String, String)>) -> Result<Planned> {
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| invalid_files(&d))?;
    let steps = plan(
        &running.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect::<Vec<_>>(),
        &defs.iter().map(|d| (d.name.as_str(), d.hash.as_str())).collect::<Vec<_>>(),
    );
    let step_of = |name: &str| steps.iter().find(|(n, _)| n == name).map_or(Step::Keep, |(_, s)| *s);
    let mut checked: Vec<Checked> = Vec::new();
    if steps.iter().any(|(_, s)| matches!(s, Step::Add | Step::Change)) {
        let client = pg::connect(cfg.postgres_url()?).await?;
        let publication = Publication::read(&client, &cfg.postgres.publication).await?;
        for def in defs.iter().filter(|d| matches!(step_of(&d.name), Step::Add | Step::Change)) {
            let name = def.name.clone();
            let refused =
                |e: Error| Error::config(format!("pipeline `{name}` cannot run; nothing changed: {}", e.message)).with_detail(e.detail.unwrap_or_default());
            let info = pg::table_info(&client, &def.source.table, def.source.key.as_deref()).await.map_err(refused)?;
            let sql = derivation_sql(&client, def, &info.key).await;
            checked.push(assemble::check(&client, def.clone(), info, sql, &publication).await.map_err(refused)?);
        }
    }
    Ok(Planned { steps, checked, defs })
}

/// Whether a changed pipeline's records must be built again from a snapshot (its search
/// definition or its Redis views changed), or it goes on from where the old definition stopped.
fn rebuilds(old: Option<&Pipeline>, new: &Pipeline) -> bool {
    match old {
        None => true,
        Some(old) => {
            old.redis_hash() != new.redis_hash()
                || new.search.iter().any(|t| old.search.iter().find(|o| o.index == t.index).is_none_or(|o| old.search_hash(o) != new.search_hash(t)))
        }
    }
}

impl SourceTask {
    /// (name, definition hash) of every pipeline with a worker place; a failed pipeline counts as
    /// changed, so that a reload starts it again.
    fn running(&self) -> Vec<(String, String)> {
        self.workers.iter().flatten().map(|w| (w.name.clone(), if w.gone { String::new() } else { w.def.hash.clone() })).collect()
    }

    /// A reload was asked for: a task reads and checks the files beside the stream; the source
    /// task switches to the result between two transactions (`switch`).
    pub(super) fn begin_reload(&mut self, reply: ReloadReply) {
        if self.reloading {
            let _ = reply.send(Err(Error::transient("a reload is in progress; try again once it is applied")));
            return;
        }
        self.reloading = true;
        let running: Vec<(String, String)> = self.running();
        let tx = self.planned_tx.clone();
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
            let planned = prepare(cfg, running).await;
            let _ = tx.send((planned, reply));
        });
    }

    /// Switches to a checked reload, between two transactions, without waiting for anything:
    /// the workers of removed and changed pipelines are told to stop (their queues close); the
    /// new and changed pipelines get a place and a queue at once, and a task per pipeline opens
    /// its sinks once the worker it replaces has let go of them, then runs its worker. Returns
    /// whether the stream must be reopened (the decoder must extract other tables or columns).
    pub(super) fn switch(&mut self, planned: Result<Planned>, reply: ReloadReply) -> bool {
        self.reloading = false;
        let Planned { steps, checked, defs } = match planned {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "reload refused; nothing changed");
                let _ = reply.send(Err(e));
                return false;
            }
        };
        // The running set changed meanwhile (a pipeline's worker stopped): plan again.
        let running: Vec<(String, String)> = self.running();
        let now = plan(
            &running.iter().map(|(n, h)| (n.as_str(), h.as_str())).collect::<Vec<_>>(),
            &defs.iter().map(|d| (d.name.as_str(), d.hash.as_str())).collect::<Vec<_>>(),
        );
        if now != steps {
            let _ = reply.send(Err(Error::transient("the running pipelines changed during the reload; try again")));
            return false;
        }
        let mut report = ReloadReport::default();
        for (name, step) in &steps {
            match step {
                Step::Add => report.added.push(name.clone()),
                Step::Change => report.changed.push(name.clone()),
                Step::Remove => report.removed.push(name.clone()),
                Step::Keep => report.unchanged.push(name.clone()),
            }
        }
        if steps.iter().all(|(_, s)| *s == Step::Keep) {
            info!("reload: the pipeline files are unchanged");
            let _ = reply.send(Ok(report));
            return false;
        }
        // 1. Stop the workers of removed and changed pipelines: closing a worker's queue makes it
        //    apply what it holds, store its batch and end.
        let mut stopping: HashMap<String, (Pipeline, watch::Receiver<Progress>, Lsn)> = HashMap::new();
        for (name, step) in steps.iter().filter(|(_, s)| matches!(s, Step::Remove | Step::Change)) {
            let Some(i) = self.workers.iter().position(|w| w.as_ref().is_some_and(|w| &w.name == name)) else { continue };
            let WorkerHandle { def, progress, last_sent, .. } = self.workers[i].take().expect("a running worker");
            self.shared.meter_retire(i);
            if *step == Step::Remove {
                let mut indexes = self.shared.indexes.write().expect("lock");
                for t in &def.search {
                    indexes.remove(&t.index);
                }
                drop(indexes);
                self.shared.update(|doc| doc.pipelines.retain(|p| &p.name != name));
                info!(pipeline = %name, "reload: the pipeline was removed; its views and index stay until `deriver prune` (or `deriver apply --prune`)");
                // Its worker ends by itself; nothing waits for it.
            }
            stopping.insert(name.clone(), (def, progress, last_sent));
        }
        // 2. A place, a queue and a starting task for each new or changed pipeline.
        let mut interest = self.interest.clone();
        let (epoch, start) = *self.passed.borrow();
        for mut c in checked {
            let slot = self.workers.len();
            let name = c.def.name.clone();
            let (key_pos, placed) = c.place(&mut interest, slot);
            let reads = assemble::wal_reads(&c);
            let sql = c.sql.keyed.clone();
            let previous = stopping.remove(&name);
            let rebuilding = rebuilds(previous.as_ref().map(|(d, _, _)| d), &c.def);
            if rebuilding {
                report.rebuilding.push(name.clone());
            }
            let meter = self.shared.meter_reserve(&name);
            debug_assert_eq!(meter, slot, "worker places and meter places advance together");
            // Until the worker runs, status shows it starting (`deriver apply` follows from here).
            let state = if rebuilding { "rebuilding" } else { "starting" };
            let def_for_status = c.def.clone();
            self.shared.update(|doc| match doc.pipelines.iter_mut().find(|p| p.name == name) {
                Some(p) => {
                    p.state = state.into();
                    p.definition_hash = def_for_status.hash.clone();
                    p.error = None;
                }
                None => doc.pipelines.push(super::status::PipelineStatus::new(&def_for_status, state)),
            });
            let (feed, rx) = Feed::new(super::WORKER_QUEUE_BYTES);
            let (admin_tx, admin) = mpsc::channel(16);
            let added = previous.is_none();
            // Nothing before this position concerns a new pipeline: its build reads a snapshot.
            let first = Progress { durable: None, checkpoint: if added { start } else { Lsn::ZERO } };
            let (progress_tx, progress) = watch::channel(first);
            let wiring = Wiring { rx, passed: self.passed.subscribe(), admin, progress: progress_tx, start, epoch };
            let starter = Starter { cfg: self.cfg.clone(), ctx: self.ctx.clone(), checked: c, key_pos, slot, previous, reopen: self.reopen_tx.clone(), state };
            self.tasks.spawn(async move { (slot, starter.run(wiring).await) });
            let handle = WorkerHandle {
                name: name.clone(),
                feed,
                admin: admin_tx,
                progress,
                def: defs.iter().find(|d| d.name == name).expect("a declared pipeline").clone(),
                routes: placed.into_iter().map(|(t, (_, r))| (t, r)).collect(),
                reads,
                last_sent: start,
                gone: false,
                sql,
            };
            self.workers.push(Some(handle));
        }
        // 3. Route by the new set; the decoder extracts what the running pipelines need.
        let reads = self.reroute();
        interest.retain_reads(&reads);
        let reopen = interest != self.interest;
        self.interest = interest;
        super::orphans::watch(self.cfg.clone(), self.shared.clone(), defs, self.cancel.clone());
        info!(
            added = report.added.len(),
            changed = report.changed.len(),
            removed = report.removed.len(),
            unchanged = report.unchanged.len(),
            reopen,
            "reload applied"
        );
        let _ = reply.send(Ok(report));
        reopen
    }

    /// Routes the running workers' tables to them; returns what each reads from the WAL
    /// (table, columns, pipeline), for the decoder's columns.
    pub(super) fn reroute(&mut self) -> Vec<(crate::source::TableName, Vec<String>, String)> {
        let mut routes: HashMap<crate::source::TableName, Vec<(usize, super::pipeline::Route)>> = HashMap::new();
        let mut reads = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            for (t, r) in &w.routes {
                routes.entry(t.clone()).or_default().push((i, *r));
            }
            for (t, cols) in &w.reads {
                reads.push((t.clone(), cols.clone(), w.name.clone()));
            }
        }
        self.routes = Arc::new(routes);
        reads
    }
}

/// Starts the worker of a new or changed pipeline: waits for the worker it replaces to end,
/// opens the sinks and runs the worker on the queue the source task has been filling.
struct Starter {
    cfg: crate::config::Config,
    ctx: super::worker::Context,
    checked: Checked,
    key_pos: Vec<usize>,
    slot: usize,
    /// The definition it replaces, that worker's progress and the end of the last transaction
    /// it was handed.
    previous: Option<(Pipeline, watch::Receiver<Progress>, Lsn)>,
    reopen: mpsc::UnboundedSender<()>,
    state: &'static str,
}

impl Starter {
    async fn run(self, wiring: Wiring) -> Result<()> {
        let name = self.checked.def.name.clone();
        let mut old_def = None;
        if let Some((def, progress, last_sent)) = self.previous {
            let stopped_at = wait_ended(&name, progress).await;
            if stopped_at < last_sent {
                // The old worker could not store all it was handed (its sink was down): only a
                // replay of the stream fills that gap.
                info!(pipeline = %name, %stopped_at, %last_sent, "reload: the replaced worker stopped short; replaying the stream from the checkpoints");
                let _ = self.reopen.send(());
            }
            old_def = Some(def);
        }
        let shared = self.ctx.shared.clone();
        let started = async {
            let p = open_when_unlocked(&self.checked, &self.cfg, &shared, self.key_pos.clone()).await?;
            Worker::new(p, self.ctx.clone(), old_def.is_none()).await
        }
        .await;
        let mut w = match started {
            Ok(w) => w,
            Err(e) => {
                // It stays stopped (loudly: status and log) until the next reload or restart;
                // the other pipelines go on. Its queue closes with this task.
                error!(pipeline = %name, error = %e, "reload: the pipeline could not start");
                let error = format!("could not start: {e}");
                shared.update(|doc| {
                    if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                        p.state = "failed".into();
                        p.error = Some(error.clone());
                    }
                });
                return Ok(());
            }
        };
        let def = &w.p.def;
        w.rewrite_redis = old_def.as_ref().is_some_and(|o| o.redis_hash() != def.redis_hash()) && !def.redis.is_empty();
        if old_def.as_ref().is_none_or(|o| o.ledger_hash() != def.ledger_hash()) {
            let at = wiring.start;
            if let Err(e) = w.fill_ledger(at).await {
                error!(pipeline = %name, error = %e, "reload: the pipeline's dependency ledger could not be filled");
                shared.update(|doc| {
                    if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                        p.state = "failed".into();
                        p.error = Some(format!("could not start: {e}"));
                    }
                });
                return Ok(());
            }
        }
        w.index = self.slot;
        shared.meter_register(&w.p);
        metrics::gauge!(crate::telemetry::PIPELINE_FAILED, "pipeline" => name.clone()).set(0.0);
        let entry = super::status_entry(&w.p, &self.ctx.dead, if self.state == "starting" { "streaming" } else { self.state }, None);
        shared.update(|doc| match doc.pipelines.iter_mut().find(|p| p.name == entry.name) {
            Some(p) => *p = entry.clone(),
            None => doc.pipelines.push(entry.clone()),
        });
        info!(pipeline = %name, new = old_def.is_none(), "reload: the pipeline's worker started");
        w.run(wiring).await
    }
}

/// Waits until a stopped worker ended (its progress channel closes after its sinks did); returns
/// where its sinks stopped.
async fn wait_ended(name: &str, mut progress: watch::Receiver<Progress>) -> Lsn {
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), progress.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => break,
            Err(_) => {
                waited += Duration::from_secs(10);
                warn!(pipeline = %name, waited_secs = waited.as_secs(), "reload: waiting for the replaced worker to finish its batch");
            }
        }
    }
    let stopped = progress.borrow().checkpoint;
    stopped
}

/// Opens a pipeline's sinks; the index writer of a worker that just stopped may take a moment to
/// let go of its lock.
async fn open_when_unlocked(c: &Checked, cfg: &crate::config::Config, shared: &Arc<super::status::Shared>, key_pos: Vec<usize>) -> Result<PipelineRt> {
    let mut attempt = 0u32;
    loop {
        match c.open(cfg, shared, key_pos.clone()).await {
            Ok(p) => return Ok(p),
            Err(e) if e.cause == Some(Cause::IndexLocked) && attempt < 40 => {
                if attempt.is_multiple_of(8) {
                    info!(pipeline = %c.def.name, "reload: waiting for the previous index writer to let go");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_each_pipeline_once() {
        let running = [("films", "h1"), ("actors", "h2"), ("gone", "h3")];
        let files = [("actors", "h2"), ("films", "h9"), ("new", "h4")];
        assert_eq!(
            plan(&running, &files),
            vec![("actors".into(), Step::Keep), ("films".into(), Step::Change), ("new".into(), Step::Add), ("gone".into(), Step::Remove)]
        );
        assert!(plan(&running, &running).iter().all(|(_, s)| *s == Step::Keep), "the same files change nothing");
        assert_eq!(plan(&[], &[("a", "x")]), vec![("a".into(), Step::Add)]);
        assert_eq!(plan(&[("a", "x")], &[]), vec![("a".into(), Step::Remove)]);
    }
}
