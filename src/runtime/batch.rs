//! A worker's open batch and the two decisions about it, kept pure so they can be tested without
//! Postgres or a sink: *whether and why* to flush ([`BatchPolicy`]) and *how far* the worker may
//! call its stream applied ([`Position`]).

use std::time::{Duration, Instant};

use super::dirty::DirtyKeys;
use crate::error::Result;
use crate::source::Lsn;

/// The changes of whole transactions one pipeline has received and not yet committed to its
/// sinks.
pub struct Batch {
    pub started: Option<Instant>,
    pub changes: usize,
    pub end_lsn: Option<Lsn>,
    pub dirty: Dirty,
    /// Transactions of this batch that changed something the pipeline reads: the derivation must
    /// not run before each of them is visible to new snapshots.
    pub xids: Vec<u32>,
}

/// What must be re-derived.
pub struct Dirty {
    pub truncate: bool,
    /// A dependency table was truncated: re-derive every record.
    pub rederive_all: bool,
    pub keys: DirtyKeys,
    /// Per dependency relation: join values whose source keys must be re-derived.
    pub probes: Vec<DirtyKeys>,
}

impl Dirty {
    pub fn has_work(&self) -> bool {
        self.truncate || self.rederive_all || !self.keys.is_empty() || self.probes.iter().any(|p| !p.is_empty())
    }
}

impl Batch {
    pub fn new(deps: usize, in_memory: usize) -> Batch {
        Batch {
            started: None,
            changes: 0,
            end_lsn: None,
            dirty: Dirty {
                truncate: false,
                rederive_all: false,
                keys: DirtyKeys::new(in_memory),
                probes: (0..deps).map(|_| DirtyKeys::new(in_memory)).collect(),
            },
            xids: Vec::new(),
        }
    }

    pub fn has_work(&self) -> bool {
        self.dirty.has_work()
    }

    pub fn age(&self) -> Option<Duration> {
        self.started.map(|t| t.elapsed())
    }

    /// Takes back an earlier batch whose commit failed: its keys are re-derived with this one's,
    /// and the result ends where the later of the two does (a key derived later than its batch
    /// holds a newer absolute value, which is what a replay would write too).
    pub fn absorb(&mut self, earlier: Batch) -> Result<()> {
        let Batch { started, changes, end_lsn, mut dirty, xids } = earlier;
        let mut keys = dirty.keys.chunks(4096)?;
        while let Some(part) = keys.next_chunk()? {
            for k in part {
                self.dirty.keys.insert(k)?;
            }
        }
        for (mine, theirs) in self.dirty.probes.iter_mut().zip(dirty.probes.iter_mut()) {
            let mut values = theirs.chunks(4096)?;
            while let Some(part) = values.next_chunk()? {
                for v in part {
                    mine.insert(v)?;
                }
            }
        }
        self.dirty.truncate |= dirty.truncate;
        self.dirty.rederive_all |= dirty.rederive_all;
        self.changes += changes;
        self.end_lsn = self.end_lsn.max(end_lsn);
        self.started = match (self.started, started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.xids.extend(xids);
        Ok(())
    }

    /// A transaction ended: `xid` joins the visibility wait when it added changes.
    pub fn close_transaction(&mut self, xid: u32, changes_before: usize, end_lsn: Lsn) -> Result<()> {
        if self.changes > changes_before {
            self.xids.push(xid);
        }
        self.end_lsn = Some(end_lsn);
        self.started.get_or_insert_with(Instant::now);
        Ok(())
    }
}

/// Why a batch is flushed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// It holds `batch_max_changes` changes.
    Full,
    /// Nothing more is queued: a quiet stream gets the lowest latency (under load, changes pile up
    /// while a batch commits, so batches grow by themselves).
    Quiet,
    /// Its first transaction waited `batch_max_ms`.
    Waited,
}

/// When a batch closes. Batches close only at a transaction boundary.
///
/// The limits adapt to load: a batch that filled up while more input was already queued (a
/// backlog draining) doubles the limits of the next ones, up to `backlog_factor` times the
/// configured ones, so a backlog drains in fewer, larger commits; the first batch that finds
/// nothing more queued (the stream has caught up) brings them back, so a quiet stream keeps the
/// lowest latency.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// The configured limits (`runtime.batch_max_changes`, `runtime.batch_max_ms`).
    pub max_changes: usize,
    pub max_wait: Duration,
    /// How far the limits may grow while a backlog drains (`runtime.backlog_batch_factor`).
    pub backlog_factor: usize,
    /// The current scale of the limits: 1, 2, 4, … up to `backlog_factor`.
    scale: usize,
}

impl BatchPolicy {
    pub fn new(max_changes: usize, max_wait: Duration) -> BatchPolicy {
        BatchPolicy { max_changes: max_changes.max(1), max_wait, backlog_factor: 1, scale: 1 }
    }

    /// Lets the limits grow up to `factor` times while a backlog drains (1: never).
    pub fn adapting(self, factor: usize) -> BatchPolicy {
        BatchPolicy { backlog_factor: factor.max(1), ..self }
    }

    /// The limits in force now: (changes, wait).
    pub fn limits(&self) -> (usize, Duration) {
        (self.max_changes.saturating_mul(self.scale), self.max_wait.saturating_mul(self.scale as u32))
    }

    /// At a commit: `changes` in the batch, its `age`, and whether more input is already queued.
    pub fn at_commit(&mut self, changes: usize, age: Duration, more_queued: bool) -> Option<FlushReason> {
        let (max_changes, max_wait) = self.limits();
        if changes >= max_changes {
            if more_queued {
                // Full with more waiting: a backlog. Larger batches, fewer commits.
                self.scale = (self.scale * 2).min(self.backlog_factor);
            }
            Some(FlushReason::Full)
        } else if !more_queued {
            self.scale = 1;
            Some(FlushReason::Quiet)
        } else if age >= max_wait {
            Some(FlushReason::Waited)
        } else {
            None
        }
    }

    /// On the timer, between transactions: a batch that waited long enough goes even while more
    /// input keeps arriving.
    pub fn on_tick(&self, age: Option<Duration>) -> Option<FlushReason> {
        age.filter(|a| *a >= self.limits().1).map(|_| FlushReason::Waited)
    }
}

/// How far one worker has applied the stream. Transactions reach a worker only when they touch
/// its pipeline; the source announces separately how far it has *passed* (every transaction up
/// to there was handed to the workers first). A worker with no open transaction, no unflushed
/// batch and nothing queued may count the passed position as applied: nothing before it concerns
/// it. A restart of the stream opens a new epoch; positions of an older epoch no longer count.
#[derive(Debug, Clone)]
pub struct Position {
    applied: Lsn,
    epoch: u64,
    in_txn: bool,
    /// The end of the open batch's last transaction.
    pending: Option<Lsn>,
    /// The end of the batch whose commit runs in the background.
    committing: Option<Lsn>,
}

impl Position {
    pub fn new(start: Lsn, epoch: u64) -> Position {
        Position { applied: start, epoch, in_txn: false, pending: None, committing: None }
    }

    /// Everything up to here is in the sinks (or concerned none of them).
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    pub fn in_txn(&self) -> bool {
        self.in_txn
    }

    pub fn begin(&mut self) {
        self.in_txn = true;
    }

    pub fn commit(&mut self, end_lsn: Lsn) {
        self.in_txn = false;
        self.pending = Some(self.pending.map_or(end_lsn, |p| p.max(end_lsn)));
    }

    /// The open batch was committed to the sinks (or had nothing to write).
    pub fn flushed(&mut self) {
        if let Some(p) = self.pending.take() {
            self.applied = self.applied.max(p);
        }
    }

    /// The open batch is written and its commit runs in the background: the next batch opens,
    /// and nothing moves until that commit is durable.
    pub fn commit_started(&mut self) {
        if let Some(p) = self.pending.take() {
            self.committing = Some(self.committing.map_or(p, |c| c.max(p)));
        }
    }

    /// The background commit is durable.
    pub fn committed(&mut self) {
        if let Some(c) = self.committing.take() {
            self.applied = self.applied.max(c);
        }
    }

    /// The background commit failed: its transactions are back in the open batch.
    pub fn commit_failed(&mut self) {
        if let Some(c) = self.committing.take() {
            self.pending = Some(self.pending.map_or(c, |p| p.max(c)));
        }
    }

    /// The source passed `lsn` in `epoch`; `queue_empty` says whether the worker's input queue was
    /// empty when checked *after* reading that position. True when the applied position moved.
    pub fn passed(&mut self, epoch: u64, lsn: Lsn, queue_empty: bool) -> bool {
        if epoch != self.epoch || self.in_txn || self.pending.is_some() || self.committing.is_some() || !queue_empty || lsn <= self.applied {
            return false;
        }
        self.applied = lsn;
        true
    }

    /// The stream restarts in `epoch`: the open transaction and batch are dropped (the stream
    /// replays them from the checkpoints).
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.in_txn = false;
        self.pending = None;
        self.committing = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_flushes_when_full_quiet_or_old() {
        let mut p = BatchPolicy::new(100, Duration::from_millis(50));
        assert_eq!(p.at_commit(100, Duration::ZERO, true), Some(FlushReason::Full));
        assert_eq!(p.at_commit(1, Duration::ZERO, false), Some(FlushReason::Quiet));
        assert_eq!(p.at_commit(1, Duration::from_millis(50), true), Some(FlushReason::Waited));
        assert_eq!(p.at_commit(1, Duration::from_millis(10), true), None);
        assert_eq!(p.on_tick(None), None);
        assert_eq!(p.on_tick(Some(Duration::from_millis(10))), None);
        assert_eq!(p.on_tick(Some(Duration::from_millis(60))), Some(FlushReason::Waited));
        assert_eq!(BatchPolicy::new(0, Duration::ZERO).max_changes, 1);
    }

    #[test]
    fn limits_grow_while_a_backlog_drains_and_come_back_when_it_is_gone() {
        let ms = Duration::from_millis;
        let mut p = BatchPolicy::new(100, ms(50)).adapting(8);
        assert_eq!(p.limits(), (100, ms(50)));
        // Full with more queued: a backlog; the next batches may be twice as large, up to 8×.
        assert_eq!(p.at_commit(100, ms(1), true), Some(FlushReason::Full));
        assert_eq!(p.limits(), (200, ms(100)));
        assert_eq!(p.at_commit(150, ms(60), true), None, "neither full nor waited long enough at the larger limits");
        assert_eq!(p.on_tick(Some(ms(60))), None);
        assert_eq!(p.on_tick(Some(ms(100))), Some(FlushReason::Waited));
        for _ in 0..5 {
            assert_eq!(p.at_commit(100_000, ms(1), true), Some(FlushReason::Full));
        }
        assert_eq!(p.limits(), (800, ms(400)), "at most backlog_factor times the configured limits");
        // Waited batches keep the scale; full ones with nothing queued do not grow it.
        assert_eq!(p.at_commit(1, ms(400), true), Some(FlushReason::Waited));
        assert_eq!(p.limits(), (800, ms(400)));
        // Caught up: the first batch that finds nothing queued brings the limits back.
        assert_eq!(p.at_commit(3, ms(1), false), Some(FlushReason::Quiet));
        assert_eq!(p.limits(), (100, ms(50)));
        // Without adapting, the limits never move.
        let mut fixed = BatchPolicy::new(100, ms(50));
        assert_eq!(fixed.at_commit(100, ms(1), true), Some(FlushReason::Full));
        assert_eq!(fixed.limits(), (100, ms(50)));
    }

    #[test]
    fn a_passed_position_counts_only_with_nothing_open_and_in_the_same_epoch() {
        let mut pos = Position::new(Lsn(10), 1);
        assert!(pos.passed(1, Lsn(20), true));
        assert_eq!(pos.applied(), Lsn(20));
        pos.begin();
        assert!(!pos.passed(1, Lsn(30), true), "inside a transaction");
        pos.commit(Lsn(25));
        assert!(!pos.passed(1, Lsn(30), true), "a batch is not flushed");
        pos.flushed();
        assert_eq!(pos.applied(), Lsn(25));
        assert!(!pos.passed(1, Lsn(30), false), "input still queued");
        assert!(!pos.passed(0, Lsn(30), true), "an older epoch");
        assert!(pos.passed(1, Lsn(30), true));
        pos.begin();
        pos.restart(2);
        assert!(!pos.in_txn());
        assert!(!pos.passed(1, Lsn(40), true), "the epoch before the restart");
        assert!(pos.passed(2, Lsn(40), true));
        assert!(!pos.passed(2, Lsn(35), true), "never backwards");
        assert_eq!(pos.applied(), Lsn(40));
    }

    /// One step of a simulated source and worker, interleaved arbitrarily.
    #[derive(Debug, Clone)]
    enum Step {
        /// The source sends a transaction (to this worker or another one), then passes its end.
        Txn { ours: bool },
        /// The worker takes the next queued transaction into its batch.
        Receive,
        /// The worker flushes its batch.
        Flush,
        /// The worker reads the passed position (remembering it) ...
        ReadPassed,
        /// ... and later checks its queue and offers that position.
        OfferPassed,
        /// The stream restarts from the worker's applied position.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<bool>().prop_map(|ours| Step::Txn { ours }),
            Just(Step::Receive),
            Just(Step::Flush),
            Just(Step::ReadPassed),
            Just(Step::OfferPassed),
            Just(Step::Restart),
        ]
    }

    proptest! {
        /// The applied position never passes a transaction of this worker that is not in its
        /// sinks, and never moves backwards.
        #[test]
        fn applied_never_passes_an_unflushed_transaction(steps in proptest::collection::vec(step(), 1..80)) {
            let mut next_lsn = 1u64;
            let mut epoch = 1u64;
            let mut passed = (epoch, Lsn(0));
            let mut queue: std::collections::VecDeque<Lsn> = Default::default();
            let mut batch: Vec<Lsn> = Vec::new();
            // Our transactions the source sent, not yet in the sinks (replays included).
            let mut unflushed: Vec<Lsn> = Vec::new();
            let mut read: Option<(u64, Lsn)> = None;
            let mut pos = Position::new(Lsn(0), epoch);
            for s in steps {
                let before = pos.applied();
                match s {
                    Step::Txn { ours } => {
                        let lsn = Lsn(next_lsn);
                        next_lsn += 1;
                        if ours {
                            queue.push_back(lsn);
                            unflushed.push(lsn);
                        }
                        passed = (epoch, lsn);
                    }
                    Step::Receive => {
                        if let Some(l) = queue.pop_front() {
                            pos.begin();
                            pos.commit(l);
                            batch.push(l);
                        }
                    }
                    Step::Flush => {
                        pos.flushed();
                        unflushed.retain(|l| !batch.contains(l));
                        batch.clear();
                    }
                    Step::ReadPassed => read = Some(passed),
                    Step::OfferPassed => {
                        if let Some((e, l)) = read.take() {
                            pos.passed(e, l, queue.is_empty());
                        }
                    }
                    Step::Restart => {
                        // The source replays everything after the worker's checkpoint.
                        epoch += 1;
                        pos.restart(epoch);
                        batch.clear();
                        queue.clear();
                        let replay: Vec<Lsn> = unflushed.clone();
                        queue.extend(replay);
                        passed = (epoch, Lsn(next_lsn - 1));
                    }
                }
                prop_assert!(pos.applied() >= before, "applied moved backwards");
                if let Some(first) = unflushed.iter().min() {
                    prop_assert!(pos.applied() < *first, "applied {} passed unflushed {}", pos.applied(), first);
                }
            }
        }
    }
}
