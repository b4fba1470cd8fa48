//! The decisions of a worker's loop, as a pure state machine: the loop (`worker.rs`) reads what
//! happened (an input, a timer, the result of a flush) into an [`Event`], hands it to
//! [`WorkerState::on`] and performs the [`Action`]s it gets back — flush the batch, back off,
//! store an idle checkpoint, publish progress. Which batch to flush when, how a failed batch is
//! retried, and how far the worker may call its stream applied are decided here, so they are
//! tested without Postgres, Redis or a clock (`tests` below drive it with an in-memory sink and
//! an in-memory source table).

use std::time::Duration;

use super::batch::{BatchPolicy, Position};
use super::retry::Retry;
use crate::source::Lsn;

/// What the loop knows about its open batch when an event happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchFacts {
    /// Changes taken into the batch (the open transaction's included).
    pub changes: usize,
    /// Since its first transaction committed (`None`: no complete transaction in it).
    pub age: Option<Duration>,
    /// Something to re-derive.
    pub has_work: bool,
}

/// The source task's passed position, as the loop read it, and whether the worker's queue was
/// empty when checked *after* reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    pub epoch: u64,
    pub lsn: Lsn,
    pub queue_empty: bool,
}

/// How a flush attempt ended. An error that must not be retried ends the loop before it gets
/// here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The batch is in every sink (or had nothing to write).
    Done,
    /// The batch is written and its commit runs in the background (the index writer's thread):
    /// the next batch may be derived meanwhile; [`Event::Committed`] tells how it ended.
    Started,
    /// A retryable error: the batch stays whole.
    Retryable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A transaction that touches this pipeline begins.
    Begin,
    /// The open transaction ended at `end_lsn` and is in the batch (`batch` counts it).
    Commit { end_lsn: Lsn, batch: BatchFacts, more_queued: bool },
    /// The flush timer ticked.
    FlushTick { batch: BatchFacts },
    /// After the flush timer's own work: the passed position may be stored now.
    PassedTick { batch: BatchFacts, passed: Passed },
    /// The idle timer ticked (`idle_ms`).
    IdleTick { batch: BatchFacts, passed: Passed },
    /// The back-off of a failed batch is over.
    BackoffOver,
    /// A flush asked for by [`Action::Flush`] (or done before a request) ended. When the commit
    /// running before it failed, the attempt fails too, and only [`Event::Committed`] is told.
    Flushed(Outcome),
    /// The commit running in the background ended: `Done` (durable) or `Retryable` (its
    /// transactions were put back into the open batch).
    Committed(Outcome),
    /// The stream restarts in `epoch` from the sinks' checkpoints.
    Restart { epoch: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Commit the batch to the sinks at its end LSN and report [`Event::Flushed`].
    Flush,
    /// Wait this long before the next attempt ([`Event::BackoffOver`]); take transactions into
    /// the batch meanwhile.
    BackOff(Duration),
    /// Store this position in the sinks that have nothing to write.
    CheckpointIdle(Lsn),
    /// Retry the dead letters that are due (their keys are derived as of this position).
    RetryDeadLetters(Lsn),
    /// Tell the source task (and the status) how far the sinks are durable.
    Publish,
    /// Drop the open transaction and batch, and whatever the sinks staged: they are replayed.
    DropBatch,
}

/// A worker's loop state: where it is in the stream and whether a failed batch is backing off.
#[derive(Debug)]
pub struct WorkerState {
    policy: BatchPolicy,
    pos: Position,
    retry: Retry,
    backing_off: bool,
    /// A batch's commit runs in the background.
    committing: bool,
    /// The applied position moved by the source's passed position and is not yet stored in the
    /// sinks (done on a flush tick once nothing is pending).
    idle_pending: bool,
}

impl WorkerState {
    pub fn new(policy: BatchPolicy, start: Lsn, epoch: u64, retry: Retry) -> WorkerState {
        WorkerState { policy, pos: Position::new(start, epoch), retry, backing_off: false, committing: false, idle_pending: false }
    }

    /// Everything up to here is in the sinks (or concerned none of them).
    pub fn applied(&self) -> Lsn {
        self.pos.applied()
    }

    pub fn in_txn(&self) -> bool {
        self.pos.in_txn()
    }

    pub fn backing_off(&self) -> bool {
        self.backing_off
    }

    /// Between transactions and not waiting out a failed batch: a request (admin, a finished
    /// rebuild, stopping) may flush the batch and run now.
    pub fn between_batches(&self) -> bool {
        !self.pos.in_txn() && !self.backing_off
    }

    /// Whether a batch's commit runs in the background.
    pub fn committing(&self) -> bool {
        self.committing
    }

    /// Between batches, with no commit running: idle checkpoints and dead-letter retries may
    /// write to the sinks now.
    fn settled(&self) -> bool {
        self.between_batches() && !self.committing
    }

    /// Whether the back-off timer counts now (a transaction is taken whole before retrying).
    pub fn backoff_due(&self) -> bool {
        self.backing_off && !self.pos.in_txn()
    }

    /// The state after `event`, and what the loop must do, in order.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Begin => {
                self.pos.begin();
                Vec::new()
            }
            Event::Commit { end_lsn, batch, more_queued } => {
                self.pos.commit(end_lsn);
                let age = batch.age.unwrap_or_default();
                if !self.backing_off && self.policy.at_commit(batch.changes, age, more_queued).is_some() {
                    vec![Action::Flush]
                } else {
                    Vec::new()
                }
            }
            Event::FlushTick { batch } => {
                if self.between_batches() && self.policy.on_tick(batch.age).is_some() {
                    vec![Action::Flush]
                } else {
                    Vec::new()
                }
            }
            Event::PassedTick { batch, passed } => {
                // The stream moved past this pipeline's last transaction: store that position
                // now (at most once a tick), so a reader waiting for a position after its own
                // commit is answered without waiting for the idle tick.
                self.idle_pending |= self.take_passed(&batch, passed);
                if self.idle_pending && !self.pos.in_txn() && !batch.has_work && !self.committing {
                    self.idle_pending = false;
                    vec![Action::CheckpointIdle(self.pos.applied()), Action::Publish]
                } else {
                    Vec::new()
                }
            }
            Event::IdleTick { batch, passed } => {
                let mut actions = Vec::new();
                if self.settled() {
                    self.take_passed(&batch, passed);
                    actions.push(Action::CheckpointIdle(self.pos.applied()));
                    actions.push(Action::RetryDeadLetters(self.pos.applied()));
                }
                actions.push(Action::Publish);
                actions
            }
            Event::BackoffOver => {
                if self.backoff_due() {
                    vec![Action::Flush]
                } else {
                    Vec::new()
                }
            }
            Event::Flushed(Outcome::Done) => {
                if self.committing {
                    // Nothing of its own to write, but its position counts only once the batch
                    // before it is durable.
                    self.pos.commit_started();
                } else {
                    self.pos.flushed();
                }
                self.went_through();
                vec![Action::Publish]
            }
            Event::Flushed(Outcome::Started) => {
                // The outage is over only once the commit is durable (`Committed(Done)`).
                self.pos.commit_started();
                self.committing = true;
                self.backing_off = false;
                vec![Action::Publish]
            }
            Event::Flushed(Outcome::Retryable) => {
                self.backing_off = true;
                vec![Action::BackOff(self.retry.next_delay())]
            }
            Event::Committed(Outcome::Retryable) => {
                self.pos.commit_failed();
                self.committing = false;
                self.backing_off = true;
                vec![Action::BackOff(self.retry.next_delay())]
            }
            Event::Committed(_) => {
                self.pos.committed();
                self.committing = false;
                if !self.backing_off {
                    // (A batch derived meanwhile may have failed and be backing off: its wait stays.)
                    self.went_through();
                }
                vec![Action::Publish]
            }
            Event::Restart { epoch } => {
                self.pos.restart(epoch);
                self.backing_off = false;
                self.committing = false;
                vec![Action::DropBatch]
            }
        }
    }

    /// A batch went through (written, at least): a retried one means the outage is over.
    fn went_through(&mut self) {
        self.backing_off = false;
        if self.retry.waits() > 0 {
            self.retry.reset();
        }
    }

    /// Offers the source task's passed position. True when the applied position moved.
    fn take_passed(&mut self, batch: &BatchFacts, passed: Passed) -> bool {
        !batch.has_work && self.pos.passed(passed.epoch, passed.lsn, passed.queue_empty)
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven the way `worker.rs` drives it, with a [`MemorySink`] for the
    //! sinks and a [`SourceTable`] for Postgres: derivation reads the table's current state, as
    //! the real one re-derives from the source, and writes absolute values.

    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;
    use crate::sink::memory::MemorySink;
    use crate::sink::{BatchMode, Committing, Record, Sink, Write};

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    /// The source database: every version of each row, by the LSN of the transaction that wrote it.
    #[derive(Default)]
    struct SourceTable {
        versions: BTreeMap<u32, Vec<(Lsn, Option<i64>)>>,
    }

    impl SourceTable {
        fn current(&self, key: u32) -> Option<i64> {
            self.versions.get(&key).and_then(|v| v.last()).and_then(|(_, x)| *x)
        }

        /// What deriving `keys` now gives: absolute values.
        fn derive(&self, keys: &BTreeSet<u32>) -> Vec<Write> {
            keys.iter()
                .map(|&k| match self.current(k) {
                    Some(v) => {
                        let json = format!(r#"{{"v":{v}}}"#);
                        Write::Upsert(Record { key: k.to_string(), value: serde_json::from_str(&json).unwrap(), json, texts: Vec::new() })
                    }
                    None => Write::Delete { key: k.to_string() },
                })
                .collect()
        }

        /// The values a sink checkpointed at `lsn` may hold for `key`: its version as of `lsn`
        /// or a newer one (`None` = no constraint: no transaction up to `lsn` wrote it).
        fn acceptable(&self, key: u32, lsn: Lsn) -> Option<Vec<Option<i64>>> {
            let v = self.versions.get(&key)?;
            let at = v.iter().rposition(|(l, _)| *l <= lsn)?;
            Some(v[at..].iter().map(|(_, x)| *x).collect())
        }
    }

    #[derive(Debug, Clone)]
    enum Msg {
        Begin,
        Change(u32),
        Commit(Lsn),
    }

    /// A worker's loop around a [`WorkerState`], a source task feeding it, and a [`MemorySink`].
    struct Rig {
        src: SourceTable,
        /// This pipeline's transactions: end LSN and the keys it changed.
        ours: Vec<(Lsn, Vec<u32>)>,
        /// Every position a transaction (anyone's) or an idle message ended at.
        boundaries: BTreeSet<Lsn>,
        next_lsn: u64,
        epoch: u64,
        queue: VecDeque<Msg>,
        passed: (u64, Lsn),
        st: WorkerState,
        // The open batch.
        dirty: BTreeSet<u32>,
        changes: usize,
        end_lsn: Option<Lsn>,
        age: Option<Duration>,
        /// A failed batch waits for this back-off.
        backoff: Option<Duration>,
        sink: MemorySink,
        published: usize,
        /// The batch whose commit runs in the background: its handle and what it held.
        inflight: Option<(Committing, BTreeSet<u32>, Lsn, usize)>,
    }

    impl Rig {
        fn new(max_changes: usize) -> Rig {
            let policy = BatchPolicy::new(max_changes, Duration::from_secs(3));
            Rig {
                src: SourceTable::default(),
                ours: Vec::new(),
                boundaries: BTreeSet::from([Lsn::ZERO]),
                next_lsn: 1,
                epoch: 1,
                queue: VecDeque::new(),
                passed: (1, Lsn::ZERO),
                st: WorkerState::new(policy, Lsn::ZERO, 1, Retry::new(Duration::from_millis(200), Duration::from_secs(30))),
                dirty: BTreeSet::new(),
                changes: 0,
                end_lsn: None,
                age: None,
                backoff: None,
                sink: MemorySink::new(),
                published: 0,
                inflight: None,
            }
        }

        /// Commits run in the background, as the search index's do.
        fn pipelined(max_changes: usize) -> Rig {
            let mut r = Rig::new(max_changes);
            r.sink.commit_in_background();
            r
        }

        /// A transaction commits in the source: `writes` (key, new value or deleted) to this
        /// pipeline's table when `ours` (its messages are queued for the worker), else to a table
        /// of another pipeline; then the source passes its end.
        fn txn(&mut self, writes: &[(u32, Option<i64>)], ours: bool) -> Lsn {
            let lsn = Lsn(self.next_lsn);
            self.next_lsn += 1;
            self.boundaries.insert(lsn);
            if ours {
                for &(k, v) in writes {
                    self.src.versions.entry(k).or_default().push((lsn, v));
                }
                let keys: Vec<u32> = writes.iter().map(|w| w.0).collect();
                self.enqueue(lsn, &keys);
                self.ours.push((lsn, keys));
            }
            self.passed = (self.epoch, lsn);
            lsn
        }

        /// A transaction that rolled back: its changes never reach deriver; the stream only
        /// moves past its WAL (an idle position).
        fn rolled_back(&mut self) {
            let lsn = Lsn(self.next_lsn);
            self.next_lsn += 1;
            self.boundaries.insert(lsn);
            self.passed = (self.epoch, lsn);
        }

        fn enqueue(&mut self, lsn: Lsn, keys: &[u32]) {
            self.queue.push_back(Msg::Begin);
            self.queue.extend(keys.iter().map(|&k| Msg::Change(k)));
            self.queue.push_back(Msg::Commit(lsn));
        }

        fn facts(&self) -> BatchFacts {
            BatchFacts { changes: self.changes, age: self.age, has_work: !self.dirty.is_empty() }
        }

        fn passed_now(&self) -> Passed {
            Passed { epoch: self.passed.0, lsn: self.passed.1, queue_empty: self.queue.is_empty() }
        }

        /// The worker takes the next queued message, as `run_inner` does.
        fn deliver(&mut self) -> bool {
            let Some(msg) = self.queue.pop_front() else { return false };
            match msg {
                Msg::Begin => self.step(Event::Begin),
                Msg::Change(k) => {
                    self.dirty.insert(k);
                    self.changes += 1;
                }
                Msg::Commit(lsn) => {
                    self.end_lsn = Some(lsn);
                    self.age.get_or_insert(Duration::ZERO);
                    let batch = self.facts();
                    self.step(Event::Commit { end_lsn: lsn, batch, more_queued: !self.queue.is_empty() });
                }
            }
            true
        }

        fn flush_tick(&mut self) {
            if let Some(a) = self.age.as_mut() {
                *a += Duration::from_secs(1);
            }
            self.step(Event::FlushTick { batch: self.facts() });
            self.step(Event::PassedTick { batch: self.facts(), passed: self.passed_now() });
        }

        fn idle_tick(&mut self) {
            self.step(Event::IdleTick { batch: self.facts(), passed: self.passed_now() });
        }

        /// The back-off timer fires (`run_inner` polls it only while `backoff_due`).
        fn backoff_over(&mut self) {
            if self.st.backoff_due() && self.backoff.take().is_some() {
                self.step(Event::BackoffOver);
            }
        }

        /// The stream restarts from the sink's checkpoint: everything after it is replayed.
        fn restart(&mut self) {
            self.epoch += 1;
            self.queue.clear();
            let from = self.sink.checkpoint.as_ref().map_or(Lsn::ZERO, |c| c.lsn);
            for (lsn, keys) in self.ours.clone() {
                if lsn > from {
                    self.enqueue(lsn, &keys);
                }
            }
            self.passed = (self.epoch, Lsn(self.next_lsn - 1));
            self.step(Event::Restart { epoch: self.epoch });
        }

        /// `Worker::step`: hand the event over, perform the actions.
        fn step(&mut self, event: Event) {
            let mut todo: VecDeque<Action> = self.st.on(event).into();
            while let Some(action) = todo.pop_front() {
                match action {
                    Action::Flush => {
                        let mut next = Vec::new();
                        for event in self.flush() {
                            next.extend(self.st.on(event));
                        }
                        for a in next.into_iter().rev() {
                            todo.push_front(a);
                        }
                    }
                    Action::BackOff(d) => self.backoff = Some(d),
                    Action::CheckpointIdle(lsn) => self.checkpoint_idle(lsn),
                    Action::RetryDeadLetters(_) => {}
                    Action::Publish => self.published += 1,
                    Action::DropBatch => {
                        if let Some((mut c, ..)) = self.inflight.take() {
                            self.sink.land();
                            block(c.wait());
                            if self.sink.finish_commit(c.outcome()).is_ok() {
                                self.check_commit();
                            }
                        }
                        block(self.sink.abort());
                        self.clear_batch();
                        self.backoff = None;
                    }
                }
            }
        }

        fn clear_batch(&mut self) {
            self.dirty.clear();
            self.changes = 0;
            self.end_lsn = None;
            self.age = None;
        }

        /// `Worker::flush` + `attempt`: derive the dirty keys now, write, let the commit in
        /// flight end, start this batch's commit at the end LSN; what the state machine is told.
        fn flush(&mut self) -> Vec<Event> {
            assert!(!self.st.in_txn(), "a flush inside a transaction would split it");
            let Some(lsn) = self.end_lsn else { return vec![Event::Flushed(Outcome::Done)] };
            let mut events = Vec::new();
            if !self.dirty.is_empty() && block(self.sink.begin(lsn, BatchMode::Incremental { clear_all: false })).unwrap() {
                block(self.sink.write(&self.src.derive(&self.dirty))).unwrap();
                if let Some(ended) = self.settle() {
                    events.push(ended);
                    if ended == Event::Committed(Outcome::Retryable) {
                        block(self.sink.abort());
                        return events;
                    }
                }
                let started =
                    block(self.sink.start_commit()).and_then(|mut c| if c.ended() { self.sink.finish_commit(c.outcome()).map(|()| None) } else { Ok(Some(c)) });
                let c = match started {
                    Ok(c) => c,
                    Err(e) => {
                        assert!(e.is_transient(), "{e}");
                        block(self.sink.abort());
                        events.push(Event::Flushed(Outcome::Retryable));
                        return events;
                    }
                };
                if let Some(c) = c {
                    self.inflight = Some((c, std::mem::take(&mut self.dirty), lsn, self.changes));
                    self.clear_batch();
                    events.push(Event::Flushed(Outcome::Started));
                    return events;
                }
                self.check_commit();
            }
            self.clear_batch();
            events.push(Event::Flushed(Outcome::Done));
            events
        }

        /// `Worker::settle`: the commit in flight (if any) lands and is seen to its end; a
        /// failed one puts its batch back into the open one.
        fn settle(&mut self) -> Option<Event> {
            let (mut c, dirty, lsn, changes) = self.inflight.take()?;
            self.sink.land();
            block(c.wait());
            match self.sink.finish_commit(c.outcome()) {
                Ok(()) => {
                    self.check_commit();
                    Some(Event::Committed(Outcome::Done))
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    self.dirty.extend(dirty);
                    self.end_lsn = self.end_lsn.max(Some(lsn));
                    self.changes += changes;
                    self.age.get_or_insert(Duration::ZERO);
                    Some(Event::Committed(Outcome::Retryable))
                }
            }
        }

        /// The index writer finishes the commit in flight and the loop sees it (its `select!` arm).
        fn land(&mut self) {
            if self.inflight.is_some() {
                let ended = self.settle().expect("a commit in flight");
                if ended == Event::Committed(Outcome::Retryable) {
                    block(self.sink.abort());
                }
                self.step(ended);
            }
        }

        /// `Worker::checkpoint_idle_sinks`.
        fn checkpoint_idle(&mut self, lsn: Lsn) {
            let behind = self.sink.checkpoint.as_ref().is_none_or(|c| c.lsn < lsn);
            if behind && lsn > Lsn::ZERO && block(self.sink.begin(lsn, BatchMode::Incremental { clear_all: false })).unwrap() {
                if let Err(e) = block(self.sink.commit()) {
                    // Only a told failure; a commit while one is in flight would be a defect.
                    assert!(e.is_transient(), "{e}");
                    block(self.sink.abort());
                    return;
                }
                self.check_commit();
            }
        }

        /// The contracts, after every commit: it is at a transaction boundary; the checkpoint
        /// never goes backwards; and it passes no transaction whose values are not in the sink
        /// (each key holds its value as of the checkpoint, or a newer one).
        fn check_commit(&self) {
            let commits = &self.sink.commits;
            let last = commits.last().expect("a commit").lsn;
            assert!(self.boundaries.contains(&last), "commit at {last}, inside a transaction");
            if commits.len() > 1 {
                assert!(commits[commits.len() - 2].lsn <= last, "the checkpoint went back: {commits:?}");
            }
            for &k in self.src.versions.keys() {
                if let Some(ok) = self.src.acceptable(k, last) {
                    let held = self.sink.records.get(&k.to_string()).map(|j| serde_json::from_str::<serde_json::Value>(j).unwrap()["v"].as_i64().unwrap());
                    assert!(ok.contains(&held), "checkpoint {last} passes key {k}: the sink holds {held:?}, the source had {ok:?}");
                }
            }
        }

        /// Everything queued is delivered and flushed (the sink works again).
        fn drain(&mut self) {
            self.sink.fail_commits(0);
            for _ in 0..10_000 {
                if !self.deliver() {
                    self.land();
                    self.backoff_over();
                    self.flush_tick();
                    if self.end_lsn.is_none() && !self.st.backing_off() && self.inflight.is_none() {
                        break;
                    }
                }
            }
            assert!(self.queue.is_empty() && self.end_lsn.is_none() && self.inflight.is_none(), "drained");
            self.flush_tick();
        }

        /// After draining: the sink holds exactly the source's current state.
        fn assert_converged(&self) {
            for &k in self.src.versions.keys() {
                let want = self.src.current(k).map(|v| format!(r#"{{"v":{v}}}"#));
                assert_eq!(self.sink.records.get(&k.to_string()), want.as_ref(), "key {k}");
            }
            let cp = self.sink.checkpoint.as_ref().map_or(Lsn::ZERO, |c| c.lsn);
            if let Some((last, _)) = self.ours.last() {
                assert!(cp >= *last, "checkpoint {cp} behind the last transaction {last}");
            }
        }

        fn commit_lsns(&self) -> Vec<Lsn> {
            self.sink.commits.iter().map(|c| c.lsn).collect()
        }
    }

    #[test]
    fn a_transaction_is_never_split_even_when_it_fills_the_batch() {
        let mut r = Rig::new(2);
        let lsn = r.txn(&[(1, Some(10)), (2, Some(20)), (3, Some(30)), (4, Some(40))], true);
        // Begin and two changes: the batch is full, but the transaction is open.
        for _ in 0..3 {
            r.deliver();
        }
        r.flush_tick();
        r.flush_tick();
        r.flush_tick();
        r.flush_tick();
        r.idle_tick();
        assert!(r.sink.commits.is_empty(), "nothing before the commit: {:?}", r.sink.commits);
        while r.deliver() {}
        assert_eq!(r.commit_lsns(), vec![lsn]);
        assert_eq!(r.sink.commits[0].writes.len(), 4, "the whole transaction in one commit");
        r.assert_converged();
    }

    #[test]
    fn a_failed_batch_is_retried_whole_and_keeps_taking_transactions() {
        let mut r = Rig::new(100);
        r.sink.fail_commits(2);
        let first = r.txn(&[(1, Some(1))], true);
        while r.deliver() {}
        let first_wait = r.backoff.expect("backing off");
        assert!(r.st.backing_off());
        // More transactions arrive while it backs off: into the same batch, no flush.
        r.txn(&[(2, Some(2))], true);
        let last = r.txn(&[(1, Some(11)), (3, Some(3))], true);
        while r.deliver() {}
        r.flush_tick();
        r.idle_tick();
        assert_eq!(r.sink.failed_commits, 1);
        assert!(r.sink.commits.is_empty(), "no checkpoint passes the failed batch: {:?}", r.sink.commits);
        // The second attempt fails too, and waits longer.
        r.backoff_over();
        assert_eq!(r.sink.failed_commits, 2);
        assert!(r.backoff.expect("backing off again") > first_wait, "waits longer");
        r.backoff_over();
        assert_eq!(r.commit_lsns(), vec![last], "one commit for the whole batch, at its last transaction");
        assert_eq!(r.sink.commits[0].writes.keys().cloned().collect::<Vec<_>>(), vec!["1", "2", "3"]);
        assert!(!r.commit_lsns().contains(&first));
        assert!(!r.st.backing_off());
        // The outage is over: the next failure starts from the shortest wait again.
        r.sink.fail_commits(1);
        r.txn(&[(4, Some(4))], true);
        while r.deliver() {}
        assert_eq!(r.backoff, Some(first_wait));
        r.drain();
        r.assert_converged();
    }

    #[test]
    fn the_next_batch_is_derived_while_one_commits_and_a_failed_commit_puts_its_batch_back() {
        let mut r = Rig::pipelined(1);
        let a = r.txn(&[(1, Some(1))], true);
        while r.deliver() {}
        assert!(r.st.committing());
        assert!(r.sink.commits.is_empty(), "not durable before it lands");
        assert_eq!(r.st.applied(), Lsn::ZERO, "nothing applied while the commit runs");
        r.flush_tick();
        r.idle_tick();
        assert!(r.sink.commits.is_empty(), "no idle checkpoint while a commit runs");
        // The next batch is derived and written while the first one commits; its own commit
        // starts once the first one is durable.
        let b = r.txn(&[(2, Some(2))], true);
        while r.deliver() {}
        assert_eq!(r.commit_lsns(), vec![a]);
        assert_eq!(r.st.applied(), a);
        assert!(r.st.committing());
        r.land();
        assert_eq!(r.commit_lsns(), vec![a, b]);
        assert_eq!(r.st.applied(), b);
        // A commit that fails: its batch goes back into the open one and commits with it.
        r.sink.fail_commits(1);
        let c = r.txn(&[(3, Some(3))], true);
        while r.deliver() {}
        let d = r.txn(&[(1, Some(11))], true);
        while r.deliver() {}
        assert!(r.st.backing_off());
        assert_eq!(r.commit_lsns(), vec![a, b], "neither c nor d is durable");
        assert_eq!(r.st.applied(), b);
        r.backoff_over();
        r.land();
        assert_eq!(r.commit_lsns(), vec![a, b, d], "c's keys commit with d, at d");
        assert_eq!(r.sink.commits[2].writes.keys().cloned().collect::<Vec<_>>(), vec!["1", "3"]);
        assert!(!r.commit_lsns().contains(&c));
        assert_eq!(r.st.applied(), d);
        r.drain();
        r.assert_converged();
    }

    #[test]
    fn idle_checkpoints_advance_only_with_nothing_pending() {
        let mut r = Rig::new(100);
        // Other pipelines' transactions: this one's checkpoint follows the stream.
        r.txn(&[(50, Some(1))], false);
        r.flush_tick();
        let other = r.txn(&[(51, Some(1))], false);
        r.flush_tick();
        assert_eq!(r.commit_lsns().last(), Some(&other));
        // One of ours fails and backs off; the stream moves on meanwhile.
        r.sink.fail_commits(1);
        let ours = r.txn(&[(1, Some(1))], true);
        while r.deliver() {}
        r.txn(&[(52, Some(1))], false);
        r.rolled_back();
        r.flush_tick();
        r.idle_tick();
        assert_eq!(r.commit_lsns().last(), Some(&other), "no checkpoint while a batch is pending");
        // Queued, not yet taken: the passed position does not count either.
        let queued = r.txn(&[(2, Some(2))], true);
        r.backoff_over();
        assert_eq!(r.commit_lsns().last(), Some(&ours));
        r.flush_tick();
        r.idle_tick();
        assert_eq!(r.commit_lsns().last(), Some(&ours), "a transaction is still queued");
        while r.deliver() {}
        assert_eq!(r.commit_lsns().last(), Some(&queued));
        r.rolled_back();
        r.flush_tick();
        assert_eq!(r.commit_lsns().last(), Some(&r.passed.1), "nothing pending: the passed position is stored");
        r.assert_converged();
    }

    #[test]
    fn after_a_restart_the_replay_gives_the_same_state() {
        let run = |restart_at: Option<usize>| {
            let mut r = Rig::new(3);
            for i in 0..12u32 {
                r.txn(&[(i % 4, Some(i64::from(i))), ((i + 1) % 5, if i % 3 == 0 { None } else { Some(100 + i64::from(i)) })], true);
                r.deliver();
                r.deliver();
                if Some(i as usize) == restart_at {
                    // Mid-transaction, with a flushed prefix and an unflushed batch.
                    r.restart();
                }
                if i % 4 == 0 {
                    r.flush_tick();
                }
            }
            r.drain();
            r.assert_converged();
            r.sink.records.clone()
        };
        let plain = run(None);
        for at in [0, 3, 7, 11] {
            assert_eq!(run(Some(at)), plain, "restart after transaction {at}");
        }
    }

    #[test]
    fn a_request_waits_for_the_transaction_and_the_back_off() {
        let mut s = WorkerState::new(BatchPolicy::new(10, Duration::from_secs(1)), Lsn(5), 1, Retry::new(Duration::from_millis(200), Duration::from_secs(1)));
        assert!(s.between_batches());
        assert!(s.on(Event::Begin).is_empty());
        assert!(!s.between_batches() && !s.backoff_due());
        let batch = BatchFacts { changes: 1, age: Some(Duration::ZERO), has_work: true };
        assert_eq!(s.on(Event::Commit { end_lsn: Lsn(9), batch, more_queued: false }), vec![Action::Flush]);
        assert_eq!(s.on(Event::Flushed(Outcome::Retryable)), vec![Action::BackOff(Duration::from_millis(200))]);
        assert!(!s.between_batches() && s.backoff_due());
        assert_eq!(s.on(Event::FlushTick { batch }), vec![], "the timer does not retry early");
        let passed = Passed { epoch: 1, lsn: Lsn(20), queue_empty: true };
        assert_eq!(s.on(Event::IdleTick { batch, passed }), vec![Action::Publish]);
        assert_eq!(s.applied(), Lsn(5));
        // A transaction that began during the back-off is taken whole first.
        s.on(Event::Begin);
        assert!(!s.backoff_due());
        assert_eq!(s.on(Event::BackoffOver), vec![]);
        assert_eq!(s.on(Event::Commit { end_lsn: Lsn(12), batch, more_queued: false }), vec![], "no flush while backing off");
        assert_eq!(s.on(Event::BackoffOver), vec![Action::Flush]);
        assert_eq!(s.on(Event::Flushed(Outcome::Done)), vec![Action::Publish]);
        assert_eq!(s.applied(), Lsn(12));
        assert_eq!(s.on(Event::Restart { epoch: 2 }), vec![Action::DropBatch]);
        assert_eq!(s.applied(), Lsn(12), "a restart keeps what is applied");
    }

    /// One step of the source, the sink or the worker's loop.
    #[derive(Debug, Clone)]
    enum Step {
        Txn {
            writes: Vec<(u32, Option<i64>)>,
            ours: bool,
        },
        RolledBack,
        Deliver,
        FlushTick,
        IdleTick,
        BackoffOver,
        FailCommits(usize),
        Restart,
        /// The commit in flight (pipelined rigs) ends.
        Land,
    }

    fn step() -> impl Strategy<Value = Step> {
        let write = (0u32..6, proptest::option::weighted(0.8, -50i64..50));
        prop_oneof![
            3 => (proptest::collection::vec(write, 1..4), proptest::bool::weighted(0.7)).prop_map(|(writes, ours)| Step::Txn { writes, ours }),
            1 => Just(Step::RolledBack),
            6 => Just(Step::Deliver),
            2 => Just(Step::FlushTick),
            1 => Just(Step::IdleTick),
            2 => Just(Step::BackoffOver),
            1 => (1usize..4).prop_map(Step::FailCommits),
            1 => Just(Step::Restart),
            3 => Just(Step::Land),
        ]
    }

    proptest! {
        /// Any interleaving of transactions, rollbacks, timers, failing commits and restarts:
        /// every commit is at a transaction boundary, never moves the checkpoint back, never
        /// passes a transaction whose values the sink lacks; once the sink works again and the
        /// queue is drained, the sink holds the source's state.
        #[test]
        fn the_worker_loop_keeps_its_contracts(steps in proptest::collection::vec(step(), 1..120), max_changes in 1usize..6, pipelined: bool) {
            let mut r = if pipelined { Rig::pipelined(max_changes) } else { Rig::new(max_changes) };
            let mut applied = r.st.applied();
            for s in steps {
                match s {
                    Step::Txn { writes, ours } => {
                        r.txn(&writes, ours);
                    }
                    Step::RolledBack => r.rolled_back(),
                    Step::Deliver => {
                        r.deliver();
                    }
                    Step::FlushTick => r.flush_tick(),
                    Step::IdleTick => r.idle_tick(),
                    Step::BackoffOver => r.backoff_over(),
                    Step::FailCommits(n) => r.sink.fail_commits(n),
                    Step::Restart => r.restart(),
                    Step::Land => r.land(),
                }
                prop_assert!(r.st.applied() >= applied, "applied moved back");
                applied = r.st.applied();
            }
            r.drain();
            r.assert_converged();
            r.idle_tick();
            let cp = r.sink.checkpoint.as_ref().map_or(Lsn::ZERO, |c| c.lsn);
            prop_assert_eq!(cp, r.passed.1.max(cp), "the idle checkpoint reaches the passed position");
        }
    }
}
