//! The source task: the one reader of the replication slot. It decodes the stream, hands each
//! transaction to the workers of the pipelines it touches (whole, in commit order, through queues
//! bounded by bytes), announces how far it has passed, and acknowledges the slot up to the
//! minimum position every worker's sinks hold durably. It also reopens the stream after an
//! outage, watches the publication, refreshes the server's position for status, and routes admin
//! requests to the worker of the pipeline they name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error_policy;
use super::failpoint::failpoint;
use super::pipeline::Route;
use super::retry::Retry;
use super::status::{AdminRequest, Shared};
use super::worker::{change_bytes, Admin, Feed, Input, Progress};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::source::postgres as pg;
use crate::source::walstream::{self, Acker};
use crate::source::{Interest, Lsn, SourceEvent, TableName};

/// One running worker as the source task sees it.
pub struct WorkerHandle {
    pub name: String,
    pub feed: Feed,
    pub admin: mpsc::Sender<Admin>,
    pub progress: watch::Receiver<Progress>,
    /// The definition it runs (a reload compares the files with it).
    pub def: crate::pipeline::Pipeline,
    /// The tables it reads and how (its entries in the routes).
    pub routes: Vec<(TableName, Route)>,
    /// The columns of each table it needs from the WAL.
    pub reads: Vec<(TableName, Vec<String>)>,
    /// The end of the last transaction handed to it.
    pub last_sent: Lsn,
    /// Its derivation SQL (which columns it reads, for schema changes).
    pub sql: String,
    /// Its queue closed without being asked to (it failed to start or stopped with an error):
    /// nothing is sent to it any more; its task's outcome says what happens next.
    pub gone: bool,
}

/// Why the stream of one connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// deriver stops.
    Stop,
    /// A reload changed what the stream must deliver: reopen it from the workers' checkpoints.
    Reopen,
}

pub struct SourceTask {
    pub cfg: Config,
    pub shared: Arc<Shared>,
    pub cancel: CancellationToken,
    pub pg: Client,
    pub interest: Interest,
    /// For each table, the workers whose pipeline reads it, and how.
    pub routes: Arc<HashMap<TableName, Vec<(usize, Route)>>>,
    /// Indexed by worker place; a place whose pipeline a reload stopped stays empty.
    pub workers: Vec<Option<WorkerHandle>>,
    /// What a worker a reload starts shares with the daemon.
    pub ctx: super::worker::Context,
    pub tasks: JoinSet<(usize, Result<()>)>,
    pub passed: watch::Sender<(u64, Lsn)>,
    pub epoch: u64,
    pub admin_rx: mpsc::Receiver<AdminRequest>,
    /// A reload is being read and checked (one at a time).
    pub reloading: bool,
    pub planned_tx: mpsc::UnboundedSender<(Result<super::reload::Planned>, super::reload::ReloadReply)>,
    pub planned_rx: mpsc::UnboundedReceiver<(Result<super::reload::Planned>, super::reload::ReloadReply)>,
    /// A worker a reload started asks for the stream to be replayed from the checkpoints.
    pub reopen_tx: mpsc::UnboundedSender<()>,
    pub reopen_rx: mpsc::UnboundedReceiver<()>,
    /// The columns (and types) of every table pipelines read, as last seen.
    pub columns: super::schema::Columns,
}

impl SourceTask {
    /// Streams until cancelled (Ok) or a condition deriver must stop for (Err). `first` is the
    /// stream opened at start; it starts at `start`.
    pub async fn run(&mut self, first: walstream::Replication, start: Lsn) -> Result<()> {
        let url = self.cfg.postgres_url()?.to_string();
        let conninfo = pg::replication_conninfo(&url)?;
        let slot = self.cfg.postgres.slot.clone();
        let publication = self.cfg.postgres.publication.clone();
        let idle = Duration::from_millis(self.cfg.runtime.idle_ms.max(100));
        let mut replication = Some(first);
        let mut start = start;
        let mut retry = Retry::outage();
        loop {
            let repl = match replication.take() {
                Some(r) => r,
                None => match walstream::open(&conninfo, &slot, &publication).await {
                    Ok(r) => r,
                    Err(e) if error_policy::retries(&e) => {
                        warn!(error = %e, "cannot reopen the replication connection; retrying");
                        if self.sleep_or_cancel(retry.next_delay()).await {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let stream_cancel = self.cancel.child_token();
            let (rx, acker) = match repl.start(start, self.interest.clone(), idle, stream_cancel.clone()).await {
                Ok(x) => {
                    // Streaming again: the next outage starts from the shortest wait.
                    retry.reset();
                    self.report_replication_encryption(&slot).await;
                    x
                }
                Err(e) if error_policy::retries(&e) => {
                    warn!(error = %e, "cannot start streaming; retrying");
                    if self.sleep_or_cancel(retry.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = self.pump(rx, &acker).await;
            stream_cancel.cancel();
            match result {
                Ok(Flow::Stop) => {
                    self.finish(&acker).await?;
                    return Ok(());
                }
                Ok(Flow::Reopen) => {
                    self.ack(&acker);
                    start = self.restart().await?;
                }
                Err(e) if error_policy::retries(&e) => {
                    warn!(error = %e, "replication interrupted; resuming from the sinks' checkpoints");
                    if self.sleep_or_cancel(retry.next_delay()).await {
                        self.finish(&acker).await?;
                        return Ok(());
                    }
                    start = self.restart().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A new stream epoch from the oldest checkpoint over the workers: they drop what they hold
    /// of unfinished batches, and the stream replays it.
    async fn restart(&mut self) -> Result<Lsn> {
        self.epoch += 1;
        let start = self.workers.iter().flatten().map(|w| w.progress.borrow().checkpoint).min().unwrap_or(Lsn::ZERO);
        self.passed.send_replace((self.epoch, start));
        for i in 0..self.workers.len() {
            if !self.send(i, Input::Restart { epoch: self.epoch }, 16).await? {
                break;
            }
        }
        Ok(start)
    }

    /// Once cancelled: the workers finish their complete batches, then the slot is acknowledged
    /// as far as they made durable.
    async fn finish(&mut self, acker: &Acker) -> Result<()> {
        let mut first_err = None;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = flatten(joined) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(m) = self.ack(acker) {
            info!(lsn = %m, "acknowledged");
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Hands the stream to the workers until it ends or deriver stops.
    async fn pump(&mut self, mut rx: mpsc::Receiver<Result<SourceEvent>>, acker: &Acker) -> Result<Flow> {
        let mut ack_tick = tokio::time::interval(Duration::from_millis(20));
        let mut status_tick = tokio::time::interval(Duration::from_millis(self.cfg.runtime.idle_ms.max(100)));
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pub_check = Instant::now();
        if self.columns.is_empty() {
            // What the tables look like as streaming starts: later checks compare with it.
            self.check_schema().await;
        }
        // The open transaction's xid, and the workers it was handed to so far.
        let mut xid = 0u32;
        let mut began: Vec<usize> = Vec::new();
        let mut in_txn = false;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(Flow::Stop),
                Some(joined) = self.tasks.join_next() => {
                    // A worker stops with the daemon, when a reload stops its pipeline, or with
                    // an error deriver must stop for.
                    match joined {
                        Ok((slot, Ok(()))) => self.ended_on_its_own(slot),
                        Ok((slot, Err(e))) => self.worker_failed(slot, e)?,
                        Err(e) => return Err(Error::fatal("a pipeline worker panicked").with_detail(e)),
                    }
                }
                Some(req) = self.admin_rx.recv() => {
                    if let AdminRequest::Reload { reply } = req {
                        self.begin_reload(reply);
                    } else {
                        self.dispatch_admin(req);
                    }
                }
                // Between transactions, so that a reload changes the routes at a boundary.
                Some((planned, reply)) = self.planned_rx.recv(), if !in_txn => {
                    if self.switch(planned, reply) {
                        return Ok(Flow::Reopen);
                    }
                }
                Some(()) = self.reopen_rx.recv() => return Ok(Flow::Reopen),
                _ = ack_tick.tick() => {
                    self.ack(acker);
                }
                _ = status_tick.tick() => {
                    self.refresh_server_status().await;
                    if last_pub_check.elapsed() >= Duration::from_secs(5) {
                        self.check_publication().await?;
                        self.check_schema().await;
                        last_pub_check = Instant::now();
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Err(Error::transient("the replication stream ended")) };
                    match ev? {
                        SourceEvent::Begin { xid: x } => {
                            xid = x;
                            began.clear();
                            in_txn = true;
                        }
                        SourceEvent::Change(change) => {
                            // An `Arc` of the table, not a copy of the routes, for each change.
                            let all = self.routes.clone();
                            let Some(routes) = all.get(&*change.table) else { continue };
                            let bytes = change_bytes(&change);
                            let change = Arc::new(change);
                            for &(w, route) in routes {
                                if !began.contains(&w) {
                                    began.push(w);
                                    if !self.send(w, Input::Begin { xid }, 16).await? {
                                        return Ok(Flow::Stop);
                                    }
                                }
                                if !self.send(w, Input::Change { change: change.clone(), route }, bytes).await? {
                                    return Ok(Flow::Stop);
                                }
                                self.shared.meter_change(w);
                            }
                        }
                        SourceEvent::Truncate { tables } => {
                            for t in tables {
                                let all = self.routes.clone();
                                for &(w, route) in all.get(&*t).into_iter().flatten() {
                                    if !began.contains(&w) {
                                        began.push(w);
                                        if !self.send(w, Input::Begin { xid }, 16).await? {
                                            return Ok(Flow::Stop);
                                        }
                                    }
                                    if !self.send(w, Input::Truncate { route }, 64).await? {
                                        return Ok(Flow::Stop);
                                    }
                                    self.shared.meter_change(w);
                                }
                            }
                        }
                        SourceEvent::Commit { end_lsn, committed, .. } => {
                            tracing::debug!(%end_lsn, workers = began.len(), "commit");
                            self.shared.meter_commit(end_lsn, committed);
                            in_txn = false;
                            for w in std::mem::take(&mut began) {
                                if !self.send(w, Input::Commit { end_lsn }, 16).await? {
                                    return Ok(Flow::Stop);
                                }
                                if let Some(h) = &mut self.workers[w] {
                                    h.last_sent = end_lsn;
                                }
                            }
                            // Every transaction up to here is queued: workers it did not touch
                            // may count it as applied.
                            self.passed.send_replace((self.epoch, end_lsn));
                        }
                        SourceEvent::ColumnsLost { table, present } => self.columns_lost(&table, &present).await,
                        SourceEvent::Idle { lsn } => {
                            tracing::trace!(%lsn, "idle");
                            self.passed.send_if_modified(|p| {
                                let moved = p.0 == self.epoch && lsn > p.1;
                                if moved {
                                    p.1 = lsn;
                                }
                                moved
                            });
                        }
                    }
                }
            }
        }
    }

    /// Queues `input` for worker `w`, waiting while its queue is full. Ok(false): deriver stops.
    pub(super) async fn send(&mut self, w: usize, input: Input, bytes: usize) -> Result<bool> {
        let Some(handle) = &mut self.workers[w] else { return Ok(true) };
        if handle.gone {
            return Ok(true);
        }
        let sent = tokio::select! {
            r = handle.feed.send(input, bytes) => r,
            _ = self.cancel.cancelled() => return Ok(false),
        };
        if sent.is_err() {
            // The worker is gone: its task's outcome (an error stops deriver; a pipeline that
            // could not start leaves the routes) comes through `tasks`.
            handle.gone = true;
        }
        Ok(true)
    }

    /// A worker's task ended without an error while its place was still routed: a pipeline a
    /// reload could not start. It leaves the routes and holds nothing back.
    fn ended_on_its_own(&mut self, slot: usize) {
        if self.cancel.is_cancelled() || self.workers.get(slot).is_none_or(Option::is_none) {
            return;
        }
        if let Some(h) = self.workers[slot].take() {
            warn!(pipeline = %h.name, "the pipeline's worker is not running; it starts again with the next reload or restart");
        }
        self.shared.meter_retire(slot);
        // The decoder keeps its columns (they cost nothing): only the routes change.
        self.reroute();
    }

    /// Acknowledges the slot up to what every worker has made durable.
    fn ack(&self, acker: &Acker) -> Option<Lsn> {
        let mut min: Option<Lsn> = None;
        for w in self.workers.iter().flatten() {
            let d = w.progress.borrow().durable?;
            min = Some(min.map_or(d, |m| m.min(d)));
        }
        let m = min?;
        failpoint("before_ack");
        acker.ack(m);
        failpoint("after_ack");
        metrics::gauge!("deriver_acked_lsn").set(m.0 as f64);
        Some(m)
    }

    fn dispatch_admin(&self, req: AdminRequest) {
        let find = |name: &str| self.workers.iter().flatten().find(|w| w.name == name).map(|w| w.admin.clone());
        let unknown = |name: &str| Error::config(format!("no pipeline named `{name}`"));
        match req {
            AdminRequest::Reindex { pipelines, reply } => {
                let mut targets = Vec::new();
                for name in &pipelines {
                    match find(name) {
                        Some(tx) => targets.push(tx),
                        None => {
                            let _ = reply.send(Err(unknown(name)));
                            return;
                        }
                    }
                }
                tokio::spawn(async move {
                    let mut started = Vec::new();
                    for tx in targets {
                        match ask(&tx, |reply| Admin::Reindex { reply }).await {
                            Ok(s) => started.extend(s),
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = reply.send(Ok(started));
                });
            }
            AdminRequest::Rollback { pipeline, reply } => match find(&pipeline) {
                Some(tx) => {
                    tokio::spawn(async move {
                        let _ = reply.send(ask(&tx, |reply| Admin::Rollback { reply }).await);
                    });
                }
                None => {
                    let _ = reply.send(Err(unknown(&pipeline)));
                }
            },
            AdminRequest::Reload { reply, .. } => {
                // `pump` carries reloads out itself, between transactions.
                let _ = reply.send(Err(Error::transient("deriver is not streaming yet; try again shortly")));
            }
            AdminRequest::Repair { pipeline, keys, reply } => match find(&pipeline) {
                Some(tx) => {
                    tokio::spawn(async move {
                        let _ = reply.send(ask(&tx, |reply| Admin::Repair { keys, reply }).await);
                    });
                }
                None => {
                    let _ = reply.send(Err(unknown(&pipeline)));
                }
            },
        }
    }

    /// true when cancelled during the sleep.
    async fn sleep_or_cancel(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

/// Sends a request to a worker and waits for its answer.
async fn ask<T>(tx: &mpsc::Sender<Admin>, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Admin) -> Result<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| Error::transient("the pipeline's worker is stopping"))?;
    rx.await.map_err(|_| Error::transient("the pipeline's worker stopped before answering"))?
}

/// A worker task's outcome (a panic is an error that stops deriver, naming the pipeline).
fn flatten(joined: std::result::Result<(usize, Result<()>), tokio::task::JoinError>) -> Result<()> {
    match joined {
        Ok((_, r)) => r,
        Err(e) => Err(Error::fatal("a pipeline worker panicked").with_detail(e)),
    }
}
