//! Lag in seconds, and what was applied, per pipeline, from the events the runtime sees: a change
//! routed to the pipeline, a transaction's commit (its commit time on the Postgres server and its
//! end LSN), a batch made visible in the pipeline's targets, and the LSN every target holds
//! durably. Pure: time comes in as an argument.
//!
//! The lag of a pipeline at time `now` is the age of the oldest transaction it has seen that is
//! not yet durable in every one of its targets (`now − commit time`), and zero when there is none.
//! It grows while a target is stuck (nothing becomes durable), also when the runtime is blocked:
//! readers ask at their own `now`.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Transactions committed closer together than this are kept as one entry (with the older
/// commit time and the newer LSN): the lag and freshness read at most this much too high.
pub const RESOLUTION: Duration = Duration::from_millis(10);
/// Entries kept per pipeline at most; past it, new transactions join the newest entry. Bounds the
/// memory of a long stall (the apply loop stops reading anyway while a batch is stuck).
pub const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    lsn: u64,
    committed: SystemTime,
    changes: u64,
    transactions: u64,
}

/// What a call made visible or durable: row changes and transactions, and for each newly
/// visible entry its commit-to-visible time in seconds with the number of transactions it holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub changes: u64,
    pub transactions: u64,
    pub freshness: Vec<(f64, u64)>,
}

impl Applied {
    fn add(&mut self, e: &Entry) {
        self.changes += e.changes;
        self.transactions += e.transactions;
    }
}

/// One pipeline's clock.
#[derive(Debug, Default, Clone)]
pub struct LagClock {
    /// Seen and not yet durable, oldest first (LSNs ascending). The first `visible` of them are
    /// already visible in the targets.
    entries: VecDeque<Entry>,
    visible: usize,
    /// Changes routed to the pipeline in the transaction still open.
    open_changes: u64,
    durable: u64,
    visible_lsn: u64,
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

impl LagClock {
    /// `n` changes of the open transaction concern this pipeline.
    pub fn change(&mut self, n: u64) {
        self.open_changes += n;
    }

    /// A transaction ended at `lsn`, committed at `committed` (the server's clock). It counts
    /// only when it had changes for this pipeline.
    pub fn commit(&mut self, lsn: u64, committed: SystemTime) {
        let changes = std::mem::take(&mut self.open_changes);
        if changes == 0 || lsn <= self.durable {
            return;
        }
        let full = self.entries.len() >= MAX_ENTRIES;
        if self.entries.len() > self.visible {
            if let Some(last) = self.entries.back_mut() {
                let close = committed.duration_since(last.committed).map(|d| d < RESOLUTION).unwrap_or(true);
                if close || full {
                    last.lsn = last.lsn.max(lsn);
                    last.changes += changes;
                    last.transactions += 1;
                    return;
                }
            }
        }
        self.entries.push_back(Entry { lsn, committed, changes, transactions: 1 });
    }

    /// The pipeline's targets now show everything up to `lsn`.
    pub fn visible(&mut self, lsn: u64, now: SystemTime) -> Applied {
        let mut out = Applied::default();
        self.visible_lsn = self.visible_lsn.max(lsn);
        while let Some(e) = self.entries.get(self.visible) {
            if e.lsn > lsn {
                break;
            }
            out.add(e);
            out.freshness.push((age(now, e.committed).as_secs_f64(), e.transactions));
            self.visible += 1;
        }
        out
    }

    /// Every target of the pipeline holds everything up to `lsn` durably. Entries that were
    /// never made visible (a batch with nothing to write, a replay the targets already held)
    /// count as applied here.
    pub fn durable(&mut self, lsn: u64) -> Applied {
        let mut out = Applied::default();
        self.durable = self.durable.max(lsn);
        while let Some(e) = self.entries.front() {
            if e.lsn > self.durable {
                break;
            }
            if self.visible > 0 {
                self.visible -= 1;
            } else {
                out.add(e);
            }
            self.entries.pop_front();
        }
        out
    }

    /// Age at `now` of the oldest transaction not yet durable (zero when none is pending).
    pub fn lag_at(&self, now: SystemTime) -> Duration {
        self.entries.front().map_or(Duration::ZERO, |e| age(now, e.committed))
    }

    /// Transactions entries held (for tests and memory checks).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }
}

/// The clocks of every pipeline of the running daemon, with their running totals.
#[derive(Debug, Default, Clone)]
pub struct Meter {
    pipelines: Vec<PipelineMeter>,
}

#[derive(Debug, Default, Clone)]
pub struct PipelineMeter {
    pub name: String,
    pub clock: LagClock,
    /// Row changes and transactions applied since this meter was made.
    pub changes_applied: u64,
    pub transactions_applied: u64,
    /// The pipeline stopped (removed or replaced by a reload); its place is never reused.
    pub retired: bool,
}

impl Meter {
    pub fn new(names: impl IntoIterator<Item = String>) -> Meter {
        Meter { pipelines: names.into_iter().map(|name| PipelineMeter { name, ..Default::default() }).collect() }
    }

    /// The pipelines running now.
    pub fn pipelines(&self) -> impl Iterator<Item = &PipelineMeter> {
        self.pipelines.iter().filter(|p| !p.retired)
    }

    /// A pipeline that starts while the daemon runs (a reload): its place.
    pub fn add(&mut self, name: String) -> usize {
        self.pipelines.push(PipelineMeter { name, ..Default::default() });
        self.pipelines.len() - 1
    }

    /// Pipeline `i` stopped: it no longer counts.
    pub fn retire(&mut self, i: usize) {
        if let Some(p) = self.pipelines.get_mut(i) {
            p.retired = true;
            p.clock = LagClock::default();
        }
    }

    pub fn name(&self, i: usize) -> Option<&str> {
        self.pipelines.get(i).map(|p| p.name.as_str())
    }

    pub fn change(&mut self, i: usize, n: u64) {
        if let Some(p) = self.pipelines.get_mut(i) {
            p.clock.change(n);
        }
    }

    pub fn commit(&mut self, lsn: u64, committed: SystemTime) {
        for p in self.pipelines.iter_mut().filter(|p| !p.retired) {
            p.clock.commit(lsn, committed);
        }
    }

    pub fn visible(&mut self, i: usize, lsn: u64, now: SystemTime) -> Applied {
        let Some(p) = self.pipelines.get_mut(i) else { return Applied::default() };
        let a = p.clock.visible(lsn, now);
        p.changes_applied += a.changes;
        p.transactions_applied += a.transactions;
        a
    }

    pub fn durable(&mut self, i: usize, lsn: u64) -> Applied {
        let Some(p) = self.pipelines.get_mut(i) else { return Applied::default() };
        let a = p.clock.durable(lsn);
        p.changes_applied += a.changes;
        p.transactions_applied += a.transactions;
        a
    }

    /// (pipeline, lag at `now`) for every pipeline.
    pub fn lags_at(&self, now: SystemTime) -> Vec<(String, Duration)> {
        self.pipelines().map(|p| (p.name.clone(), p.clock.lag_at(now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_change_not_yet_durable() {
        let mut c = LagClock::default();
        assert_eq!(c.lag_at(t(0)), Duration::ZERO, "nothing seen: no lag");
        c.change(2);
        c.commit(100, t(0));
        c.change(1);
        c.commit(200, t(500));
        assert_eq!(c.lag_at(t(1_000)), Duration::from_millis(1_000));
        // Stuck: the lag grows with the clock.
        assert_eq!(c.lag_at(t(7_000)), Duration::from_millis(7_000));
        // Visible is not durable: the lag stays, but the changes count as applied with their freshness.
        let a = c.visible(100, t(7_100));
        assert_eq!((a.changes, a.transactions), (2, 1));
        assert_eq!(a.freshness, vec![(7.1, 1)]);
        assert_eq!(c.lag_at(t(7_200)), Duration::from_millis(7_200));
        let a = c.durable(100);
        assert_eq!(a, Applied::default(), "already counted when visible");
        assert_eq!(c.lag_at(t(7_500)), Duration::from_millis(7_000), "the second transaction is the oldest now");
        let a = c.durable(250);
        assert_eq!((a.changes, a.transactions), (1, 1), "never made visible: counted when durable");
        assert!(a.freshness.is_empty());
        assert_eq!(c.lag_at(t(9_000)), Duration::ZERO);
        assert_eq!(c.entries(), 0);
    }

    #[test]
    fn transactions_without_changes_for_the_pipeline_do_not_count() {
        let mut c = LagClock::default();
        c.commit(100, t(0));
        assert_eq!(c.lag_at(t(5_000)), Duration::ZERO);
        c.change(1);
        c.durable(300);
        c.commit(200, t(0));
        assert_eq!(c.lag_at(t(5_000)), Duration::ZERO, "a replay of what the targets already hold");
    }

    #[test]
    fn a_commit_time_ahead_of_the_local_clock_is_no_negative_lag() {
        let mut c = LagClock::default();
        c.change(1);
        c.commit(100, t(2_000));
        assert_eq!(c.lag_at(t(1_000)), Duration::ZERO);
        assert_eq!(c.visible(100, t(1_000)).freshness, vec![(0.0, 1)]);
    }

    #[test]
    fn close_transactions_share_an_entry_and_memory_is_bounded() {
        let mut c = LagClock::default();
        for i in 0..(MAX_ENTRIES as u64 * 3) {
            c.change(1);
            c.commit(10 + i, t(i * 20));
        }
        assert_eq!(c.entries(), MAX_ENTRIES);
        assert_eq!(c.lag_at(t(0)), Duration::ZERO);
        let a = c.durable(u64::MAX);
        assert_eq!(a.transactions, MAX_ENTRIES as u64 * 3, "nothing is lost when entries merge");
        let mut c = LagClock::default();
        for i in 0..100 {
            c.change(1);
            c.commit(10 + i, t(i / 20));
        }
        assert_eq!(c.entries(), 1, "100 transactions within 5 ms");
    }

    #[test]
    fn the_meter_keeps_totals_per_pipeline() {
        let mut m = Meter::new(["a".to_string(), "b".to_string()]);
        m.change(0, 3);
        m.commit(10, t(0));
        m.change(1, 1);
        m.change(9, 1);
        m.commit(20, t(100));
        m.visible(0, 20, t(200));
        m.durable(1, 20);
        let p: Vec<&PipelineMeter> = m.pipelines().collect();
        assert_eq!((p[0].changes_applied, p[0].transactions_applied), (3, 1));
        assert_eq!((p[1].changes_applied, p[1].transactions_applied), (1, 1));
        let lags = m.lags_at(t(1_000));
        assert_eq!(lags, vec![("a".to_string(), Duration::from_secs(1)), ("b".to_string(), Duration::ZERO)]);
    }

    #[test]
    fn a_pipeline_added_or_retired_by_a_reload_keeps_the_others_places() {
        let mut m = Meter::new(["a".to_string(), "b".to_string()]);
        m.change(1, 1);
        m.commit(10, t(0));
        m.retire(1);
        let c = m.add("b".to_string());
        assert_eq!(c, 2, "a place is never reused: a stopping worker may still report on the old one");
        m.change(2, 1);
        m.commit(20, t(500));
        m.durable(1, 20);
        let names: Vec<&str> = m.pipelines().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        // The retired place does not count towards the lag; the new one does.
        assert_eq!(m.lags_at(t(1_000)), vec![("a".to_string(), Duration::ZERO), ("b".to_string(), Duration::from_millis(500))]);
    }

    proptest! {
        /// Against a plain model (every transaction kept): the lag is never below the true lag and
        /// at most RESOLUTION above it; every transaction is counted exactly once.
        #[test]
        fn lag_matches_a_model(steps in proptest::collection::vec((0u8..4, 1u64..40, 0u64..30), 1..200)) {
            let mut c = LagClock::default();
            // (lsn, commit ms) of every transaction seen and not yet durable
            let mut model: Vec<(u64, u64)> = Vec::new();
            let (mut lsn, mut ms, mut durable, mut counted, mut seen) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut seen_lsns = Vec::new();
            for (op, n, dt) in steps {
                ms += dt;
                match op {
                    0 | 1 => {
                        lsn += n;
                        c.change(1);
                        c.commit(lsn, t(ms));
                        model.push((lsn, ms));
                        seen += 1;
                        seen_lsns.push(lsn);
                    }
                    2 => {
                        let v = seen_lsns.get((n as usize) % seen_lsns.len().max(1)).copied().unwrap_or(0);
                        counted += c.visible(v, t(ms)).transactions;
                    }
                    _ => {
                        let d = seen_lsns.get((n as usize) % seen_lsns.len().max(1)).copied().unwrap_or(0);
                        durable = durable.max(d);
                        counted += c.durable(d).transactions;
                        model.retain(|(l, _)| *l > durable);
                    }
                }
                let truth = model.first().map_or(Duration::ZERO, |(_, m)| Duration::from_millis(ms - m));
                let got = c.lag_at(t(ms));
                prop_assert!(got >= truth, "lag {got:?} below the true {truth:?}");
                prop_assert!(got <= truth + RESOLUTION, "lag {got:?} too far above {truth:?}");
            }
            counted += c.durable(u64::MAX).transactions;
            prop_assert_eq!(counted, seen);
        }
    }
}
