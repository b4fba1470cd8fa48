//! One pipeline's worker: its own task, Postgres connection, batch, sinks, dead letters and
//! rebuilds. The source task (`runtime/source_task.rs`) hands it the transactions that touch its
//! pipeline, whole and in commit order, through a queue bounded by bytes; the worker batches
//! them, re-derives the dirty keys, commits every sink at the batch's end LSN and publishes how
//! far its sinks are durable. A worker that waits for a sink or rebuilds an index holds back only
//! its own pipeline (and the slot, as far as it needs).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::batch::{Batch, BatchPolicy};
use super::dead_letters::DeadLetters;
use super::derive::KeyTuple;
use super::dirty::DirtyKeys;
use super::pipeline::{PipelineRt, Route};
use super::reindex;
use super::retry::Retry;
use super::status::Shared;
use super::worker_state::{Action, BatchFacts, Event, Outcome, Passed, WorkerState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sink::{AnySink, BatchMode, Sink};
use crate::source::postgres as pg;
use crate::source::{Lsn, RowChange};

/// What the loop keeps between events: the state machine, the open batch it describes, and when
/// a failed batch may be tried again.
struct Looping {
    st: WorkerState,
    batch: Batch,
    retry_at: Option<tokio::time::Instant>,
}

/// The open batch as the state machine sees it.
fn facts(batch: &Batch) -> BatchFacts {
    BatchFacts { changes: batch.changes, age: batch.age(), has_work: batch.has_work() }
}

/// The source task's passed position, read before checking the queue.
fn passed(w: &Wiring) -> Passed {
    let (epoch, lsn) = *w.passed.borrow();
    Passed { epoch, lsn, queue_empty: w.rx.is_empty() }
}

/// The dead-letter store, shared by the workers (each writes only its pipeline's table).
pub type DeadStore = Arc<Mutex<DeadLetters>>;

/// What the source task hands a worker, in stream order.
#[derive(Debug)]
pub enum Input {
    /// A transaction that touches this pipeline begins.
    Begin {
        xid: u32,
    },
    Change {
        change: Arc<RowChange>,
        route: Route,
    },
    Truncate {
        route: Route,
    },
    /// The transaction ends at `end_lsn`: the batch may close here.
    Commit {
        end_lsn: Lsn,
    },
    /// The stream restarts in `epoch` from the sinks' checkpoints: drop the open transaction and
    /// batch (they are replayed).
    Restart {
        epoch: u64,
    },
    /// The pipeline cannot go on (a column it reads is gone): stop now, with this error, before
    /// anything queued after it is applied.
    Fail {
        error: Error,
    },
}

/// An input with the share of the worker's queue it holds (released when it is handled).
#[derive(Debug)]
pub struct Msg {
    pub input: Input,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The sending side of a worker's queue, bounded by the bytes of the changes in it.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Msg>,
    bytes: Arc<Semaphore>,
    capacity: u32,
}

impl Feed {
    pub fn new(capacity_bytes: usize) -> (Feed, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = u32::try_from(capacity_bytes.max(1)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        (Feed { tx, bytes: Arc::new(Semaphore::new(capacity as usize)), capacity }, rx)
    }

    /// Queues `input`, waiting while the queue holds its capacity in bytes. Err: the worker is gone.
    pub async fn send(&self, input: Input, bytes: usize) -> std::result::Result<(), ()> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.capacity);
        let permit = self.bytes.clone().acquire_many_owned(n).await.map_err(|_| ())?;
        self.tx.send(Msg { input, _bytes: Some(permit) }).map_err(|_| ())
    }
}

/// The approximate size of a change in a worker's queue.
pub fn change_bytes(c: &RowChange) -> usize {
    let texts = |t: &Option<Vec<Option<String>>>| t.as_ref().map_or(0, |v| v.iter().map(|x| x.as_ref().map_or(8, |s| s.len() + 24)).sum());
    64 + texts(&c.new) + texts(&c.old)
}

/// What a worker tells the source task about its sinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The newest position every sink of the pipeline holds durably (`None`: not known yet).
    pub durable: Option<Lsn>,
    /// The oldest checkpoint over its sinks: a restarted stream replays from there.
    pub checkpoint: Lsn,
}

/// Requests for one pipeline, from the admin API (through the source task) or a command.
pub enum Admin {
    Reindex { reply: oneshot::Sender<Result<Vec<String>>> },
    Rollback { reply: oneshot::Sender<Result<Vec<u64>>> },
    Repair { keys: Vec<String>, reply: oneshot::Sender<Result<usize>> },
}

/// What a worker shares with the daemon.
#[derive(Clone)]
pub struct Context {
    pub cfg: Config,
    pub shared: Arc<Shared>,
    pub dead: DeadStore,
    pub cancel: CancellationToken,
    /// Cancelled when this process lost ownership of the slot: no sink commit may happen after.
    pub fence: CancellationToken,
}

/// The channels a running worker is driven by.
pub struct Wiring {
    pub rx: mpsc::UnboundedReceiver<Msg>,
    /// (epoch, position) the source task has passed: every transaction before it was queued.
    pub passed: watch::Receiver<(u64, Lsn)>,
    pub admin: mpsc::Receiver<Admin>,
    pub progress: watch::Sender<Progress>,
    pub start: Lsn,
    pub epoch: u64,
}

pub struct Worker {
    pub(super) p: PipelineRt,
    pub(super) ctx: Context,
    pub(super) pg: Client,
    pub(super) rebuilds: Vec<reindex::Rebuild>,
    pub(super) next_rebuild: u64,
    pub(super) built_tx: mpsc::Sender<reindex::Built>,
    pub(super) built_rx: Option<mpsc::Receiver<reindex::Built>>,
    /// Per index, since the last swap: the previous generation and the keys re-derived since, so
    /// a rollback can catch it up.
    pub(super) since_swap: HashMap<String, (u64, DirtyKeys)>,
    pub(super) last_sql_retry: Instant,
    /// The status shows a retry this worker is in (cleared once a batch goes through).
    pub(super) retrying: bool,
    /// A reindex requested before a restart resumes when the worker starts.
    pub(super) resume_reindex: bool,
    /// The Redis views are rewritten in the background when the worker starts (a reload changed
    /// how they are derived).
    pub(super) rewrite_redis: bool,
    /// The pipeline's place in the daemon's order (its meter in `Shared`).
    pub(super) index: usize,
    /// More connections (with the derivation statement prepared on each) that derive a batch's
    /// chunks beside `pg` (`runtime.derive_connections` − 1; opened when first needed).
    pub(super) helpers: Vec<(Client, tokio_postgres::Statement, String)>,
    /// The batch whose commit runs in the background while the next one is derived.
    pub(super) inflight: Option<super::inflight::InFlight>,
    /// How commits in flight ended since the loop last looked (for the state machine).
    pub(super) concluded: Vec<Outcome>,
}

impl Worker {
    /// A worker for `p`, on a connection of its own.
    pub async fn new(mut p: PipelineRt, ctx: Context, resume_reindex: bool) -> Result<Worker> {
        let client = pg::connect(ctx.cfg.postgres_url()?).await?;
        p.prepare_on(&client).await?;
        let (built_tx, built_rx) = mpsc::channel(16);
        Ok(Worker {
            p,
            ctx,
            pg: client,
            rebuilds: Vec::new(),
            next_rebuild: 1,
            built_tx,
            built_rx: Some(built_rx),
            since_swap: HashMap::new(),
            last_sql_retry: Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now),
            retrying: false,
            resume_reindex,
            rewrite_redis: false,
            index: 0,
            helpers: Vec::new(),
            inflight: None,
            concluded: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.p.def.name
    }

    pub fn into_pipeline(self) -> PipelineRt {
        self.p
    }

    pub(super) fn new_batch(&self) -> Batch {
        Batch::new(self.p.deps.len(), self.ctx.cfg.runtime.dirty_keys_in_memory)
    }

    /// Runs until cancelled (Ok) or an error this worker must not retry (Err).
    pub async fn run(mut self, mut w: Wiring) -> Result<()> {
        let result = self.run_inner(&mut w).await;
        // The final durable position, for the last acknowledgement.
        let _ = w.progress.send(self.progress());
        if let Err(e) = &result {
            self.set_error(Some(e.to_string()));
        }
        // The sinks close (an index writer lets go of its lock) before whoever waits for the
        // progress channel to close learns that this worker ended.
        drop(self);
        drop(w);
        result
    }

    /// The loop: each arm turns what happened into an [`Event`] (or, for a request that waits
    /// for a batch boundary, flushes and serves it); [`Worker::step`] hands the event to the
    /// state machine (`worker_state.rs`, which decides) and performs its actions.
    async fn run_inner(&mut self, w: &mut Wiring) -> Result<()> {
        let start = w.start;
        // A search index built from another definition is rebuilt in the background; so is a
        // reindex requested before a restart.
        let frozen = self.p.sinks.iter().any(|s| matches!(s, AnySink::Search(x) if x.is_frozen()));
        let rewrite_redis = std::mem::take(&mut self.rewrite_redis);
        if frozen {
            info!(pipeline = %self.name(), "its search definition changed: building a new index generation in the background");
            // One snapshot read feeds the new generation and, when they changed too, the Redis views.
            self.start_rebuild(rewrite_redis, start).await?;
        } else if rewrite_redis {
            self.start_rebuild_of(false, true, start).await?;
        }
        if std::mem::take(&mut self.resume_reindex) {
            self.start_rebuild(true, start).await?;
        }
        let mut built_rx = self.built_rx.take().expect("built receiver");
        let rt = &self.ctx.cfg.runtime;
        let policy = BatchPolicy::new(rt.batch_max_changes, rt.batch_max_wait()).adapting(rt.backlog_batch_factor);
        let mut flush_tick = tokio::time::interval(policy.max_wait.max(Duration::from_millis(5)));
        let mut cp_tick = tokio::time::interval(Duration::from_millis(rt.idle_ms.max(100)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        cp_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut l = Looping {
            st: WorkerState::new(policy, start, w.epoch, Retry::new(Duration::from_millis(200), Duration::from_secs(30))),
            batch: self.new_batch(),
            retry_at: None,
        };
        // The open transaction's xid and the batch's change count when it began.
        let mut txn: (u32, usize) = (0, 0);
        loop {
            let backoff = l.retry_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let event: Option<Event> = tokio::select! {
                biased;
                _ = self.ctx.cancel.cancelled() => {
                    super::check_fence(&self.ctx.fence)?;
                    if l.st.between_batches() {
                        self.flush_for_request(&mut l, &w.progress).await?;
                        self.checkpoint_idle_sinks(l.st.applied()).await?;
                    }
                    return Ok(());
                }
                Some(built) = built_rx.recv(), if l.st.between_batches() => {
                    self.flush_for_request(&mut l, &w.progress).await?;
                    self.finish_rebuild(built, l.st.applied()).await?;
                    super::release_memory();
                    self.publish(&w.progress);
                    None
                }
                Some(req) = w.admin.recv(), if l.st.between_batches() => {
                    self.flush_for_request(&mut l, &w.progress).await?;
                    self.admin(req, l.st.applied()).await;
                    self.publish(&w.progress);
                    None
                }
                () = super::inflight::landed(&mut self.inflight) => Some(self.landed(&mut l.batch).await?),
                _ = tokio::time::sleep_until(backoff), if l.st.backoff_due() => Some(Event::BackoffOver),
                _ = flush_tick.tick() => {
                    let tick = Event::FlushTick { batch: facts(&l.batch) };
                    self.step(&mut l, tick, &w.progress).await?;
                    Some(Event::PassedTick { batch: facts(&l.batch), passed: passed(w) })
                }
                _ = cp_tick.tick() => {
                    if !self.rebuilds.is_empty() {
                        self.publish_reindex_status();
                    }
                    Some(Event::IdleTick { batch: facts(&l.batch), passed: passed(w) })
                }
                msg = w.rx.recv() => {
                    // The source task closed the queue (a reload stops this pipeline, or the daemon
                    // stops): everything queued was handled; store the complete batch and stop.
                    let Some(msg) = msg else {
                        super::check_fence(&self.ctx.fence)?;
                        if l.st.between_batches() {
                            self.flush_for_request(&mut l, &w.progress).await?;
                        }
                        return Ok(());
                    };
                    match msg.input {
                        Input::Begin { xid } => {
                            txn = (xid, l.batch.changes);
                            Some(Event::Begin)
                        }
                        Input::Change { change, route } => {
                            self.route(&change, route, &mut l.batch)?;
                            None
                        }
                        Input::Truncate { route } => {
                            self.truncate(route, &mut l.batch);
                            None
                        }
                        Input::Commit { end_lsn } => {
                            super::failpoint::failpoint("after_buffer");
                            l.batch.close_transaction(txn.0, txn.1, end_lsn)?;
                            Some(Event::Commit { end_lsn, batch: facts(&l.batch), more_queued: !w.rx.is_empty() })
                        }
                        Input::Restart { epoch } => Some(Event::Restart { epoch }),
                        Input::Fail { error } => return Err(error),
                    }
                }
            };
            if let Some(event) = event {
                self.step(&mut l, event, &w.progress).await?;
            }
        }
    }

    /// Hands `event` to the state machine and performs the actions it decides, in order; a
    /// flush's outcome goes back to it, and what that decides is done next.
    async fn step(&mut self, l: &mut Looping, event: Event, progress: &watch::Sender<Progress>) -> Result<()> {
        let mut todo: VecDeque<Action> = l.st.on(event).into();
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Flush => {
                    let mut next = Vec::new();
                    for event in self.attempt(&mut l.batch).await? {
                        next.extend(l.st.on(event));
                    }
                    if !l.st.backing_off() {
                        l.retry_at = None;
                    }
                    for a in next.into_iter().rev() {
                        todo.push_front(a);
                    }
                }
                Action::BackOff(delay) => l.retry_at = Some(tokio::time::Instant::now() + delay),
                Action::CheckpointIdle(lsn) => self.checkpoint_idle_sinks(lsn).await?,
                Action::RetryDeadLetters(lsn) => self.retry_dead_letters(lsn).await?,
                Action::Publish => self.publish(progress),
                Action::DropBatch => {
                    self.drop_inflight().await;
                    // Staged join values of transactions that will be replayed go too.
                    if let Some(ledger) = self.p.ledger() {
                        ledger.discard_staged();
                    }
                    for s in &mut self.p.sinks {
                        s.abort().await;
                    }
                    l.batch = self.new_batch();
                    l.retry_at = None;
                }
            }
        }
        Ok(())
    }

    /// Before a request that needs a batch boundary (stopping, an admin request, a finished
    /// rebuild): the batch is flushed and every commit seen to its end first; an error here ends
    /// the worker, as it did before.
    async fn flush_for_request(&mut self, l: &mut Looping, progress: &watch::Sender<Progress>) -> Result<()> {
        self.flush(&mut l.batch).await?;
        self.settle(&mut l.batch).await?;
        self.concluded.clear();
        self.step(l, Event::Committed(Outcome::Done), progress).await?;
        self.step(l, Event::Flushed(Outcome::Done), progress).await
    }

    /// One flush attempt, and what the state machine is told: how commits in flight ended
    /// meanwhile, then how this one went. A retryable failure keeps the batch whole for the
    /// next attempt; when the failure was the previous batch's commit, only that is told.
    async fn attempt(&mut self, batch: &mut Batch) -> Result<Vec<Event>> {
        let result = self.flush(batch).await;
        let concluded = std::mem::take(&mut self.concluded);
        let mut events: Vec<Event> = concluded.iter().map(|&o| Event::Committed(o)).collect();
        match result {
            Ok(outcome) => {
                if std::mem::take(&mut self.retrying) {
                    self.set_error(None);
                }
                events.push(Event::Flushed(outcome));
            }
            Err(e) if super::error_policy::retries(&e) => {
                self.note_retry(&e).await;
                if concluded.last() != Some(&Outcome::Retryable) {
                    events.push(Event::Flushed(Outcome::Retryable));
                }
            }
            Err(e) => return Err(e),
        }
        Ok(events)
    }

    fn route(&mut self, change: &RowChange, route: Route, batch: &mut Batch) -> Result<()> {
        match route {
            Route::Source => {
                let p = &self.p;
                let key_of = |texts: &Option<Vec<Option<String>>>| -> Option<KeyTuple> {
                    let texts = texts.as_ref()?;
                    p.key_pos.iter().map(|&pos| texts.get(pos).cloned().flatten()).collect()
                };
                let new = key_of(&change.new);
                let old = key_of(&change.old);
                if new.is_none() && old.is_none() {
                    // A NULL in a key column (the replica identity is checked at start, so the
                    // column is there): such a row has no key and cannot be a record.
                    warn!(pipeline = %p.def.name, table = %change.table, kind = ?change.kind, "a row with a NULL key was skipped");
                    metrics::counter!("deriver_null_keys_total", "pipeline" => p.def.name.clone()).increment(1);
                }
                for k in [new, old].into_iter().flatten() {
                    batch.dirty.keys.insert(k)?;
                }
            }
            Route::Dep(di) => {
                let p = &mut self.p;
                let ledger = p.sinks.iter_mut().find_map(|s| match s {
                    AnySink::Ledger(l) => Some(l),
                    _ => None,
                });
                p.deps[di].probe(di, change, &mut batch.dirty.probes[di], ledger)?;
            }
        }
        batch.changes += 1;
        Ok(())
    }

    fn truncate(&mut self, route: Route, batch: &mut Batch) {
        match route {
            Route::Source => batch.dirty.truncate = true,
            Route::Dep(di) => {
                batch.dirty.rederive_all = true;
                if let Some(l) = self.p.ledger() {
                    l.clear_relation(di);
                }
            }
        }
        batch.changes += 1;
    }

    /// How far this pipeline's sinks are durable and checkpointed.
    pub(super) fn progress(&mut self) -> Progress {
        let mut durable: Option<Lsn> = None;
        let mut known = true;
        for s in &mut self.p.sinks {
            match s.durable_lsn() {
                Some(d) => durable = Some(durable.map_or(d, |m| m.min(d))),
                None => known = false,
            }
        }
        let checkpoint = self.p.sinks.iter().map(|s| s.current_checkpoint().map_or(Lsn::ZERO, |c| c.lsn)).min().unwrap_or(Lsn::ZERO);
        Progress { durable: if known { durable } else { None }, checkpoint }
    }

    fn publish(&mut self, progress: &watch::Sender<Progress>) {
        let now = self.progress();
        self.ctx.shared.meter_durable(self.index, now.durable);
        progress.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
    }

    pub(super) async fn reconnect_pg(&mut self) -> Result<()> {
        self.helpers.retain(|(c, _, _)| !c.is_closed());
        if !self.pg.is_closed() {
            return Ok(());
        }
        let client = pg::connect(self.ctx.cfg.postgres_url()?).await?;
        self.p.prepare_on(&client).await?;
        self.pg = client;
        Ok(())
    }

    /// Sinks with nothing to write still advance their stored checkpoint, so the slot can be
    /// acknowledged while their tables are quiet.
    pub(super) async fn checkpoint_idle_sinks(&mut self, applied: Lsn) -> Result<()> {
        let mut changed = false;
        for s in &mut self.p.sinks {
            let behind = s.checkpoint().await?.is_none_or(|c| c.lsn < applied);
            if behind && applied > Lsn::ZERO {
                super::check_fence(&self.ctx.fence)?;
                let result = async {
                    if s.begin(applied, BatchMode::Incremental { clear_all: false }).await? {
                        s.commit().await?;
                    }
                    Ok::<(), Error>(())
                }
                .await;
                match result {
                    Ok(()) => changed = true,
                    Err(e) if super::error_policy::retries(&e) => {
                        s.abort().await;
                        warn!(pipeline = %self.p.def.name, error = %e, "could not store an idle checkpoint; will retry");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if changed {
            self.update_targets();
        }
        Ok(())
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        let name = self.p.def.name.clone();
        self.ctx.shared.update(|doc| {
            if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                p.error = error;
            }
        });
    }

    /// The pipeline's targets, generation and dead letters into status and metrics.
    pub(super) fn update_targets(&mut self) {
        let mut targets = Vec::new();
        for s in &self.p.sinks {
            let cp = s.current_checkpoint();
            for l in s.labels() {
                targets.push((l, cp.as_ref().map(|c| c.lsn)));
            }
        }
        let name = self.p.def.name.clone();
        let generation = self.p.generation();
        let (dead, dead_list) = {
            let d = self.ctx.dead.lock().expect("dead-letter lock");
            (d.count(&name) as u64, d.list(&name, 20).unwrap_or_default())
        };
        self.ctx.shared.update(|doc| {
            if let Some(ps) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                ps.generation = generation;
                for (label, lsn) in targets {
                    ps.targets.insert(label, lsn);
                }
                ps.dead_letters = dead;
                ps.dead_letter_list = dead_list;
                if ps.reindex.is_none() {
                    ps.state = "streaming".into();
                }
            }
        });
    }
}
