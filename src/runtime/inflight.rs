//! The batch whose commit runs in the background while the worker derives the next one.
//!
//! A worker's flush writes batch N to its sinks, then starts their commits: the search index
//! commits on its writer thread, Redis commits in place, and the dependency ledger holds N's rows
//! (it writes them only once the data is durable). The worker goes on with batch N+1 — taking
//! transactions, waiting for their visibility, deriving, writing — while N's index commit runs
//! on the other core. At most two batches are in flight: N+1 waits for N to be durable before
//! its own commit starts; the documents N+1 queues meanwhile are bounded by the index writer's
//! queue (by bytes, `sink/tantivy/queue.rs`).
//!
//! The checkpoint rules do not change. A sink's checkpoint moves only when its own commit ended
//! well ([`crate::sink::Sink::finish_commit`]); progress is published from the sinks'
//! checkpoints, so the slot is never acknowledged past a commit still running. If N's commit
//! fails, N's batch goes back into the open one (its keys are re-derived with N+1's and committed
//! at N+1's end), the ledger's held rows go back under N+1's, and a batch the index began before
//! the failure was seen is refused by the writer thread.

use std::time::Instant;

use tracing::warn;

use super::batch::Batch;
use super::failpoint::failpoint;
use super::status::{sink_kind, ChangeNotice};
use super::worker::Worker;
use super::worker_state::{Event, Outcome};
use crate::error::{Error, Result};
use crate::sink::{AnySink, Committing, Sink};
use crate::source::Lsn;
use crate::telemetry;

/// What a flush started and has not seen the end of.
pub(super) struct InFlight {
    pub lsn: Lsn,
    /// The batch, to be put back if its commit fails (`None`: it was never taken from the open
    /// batch, which still holds it).
    pub batch: Option<Batch>,
    /// Per sink still committing (its index in the pipeline's sinks): the commit's handle.
    pub waits: Vec<(usize, Committing)>,
    /// The ledger holds the batch's rows until the data is durable.
    pub ledger: bool,
    /// What readers of the change feed are told once it is visible (`None`: nothing changed).
    pub notice: Option<ChangeNotice>,
    /// When the batch's stages began and when its commits started (for the metrics).
    pub stages: Instant,
    pub started: Instant,
    pub deriving: std::time::Duration,
    /// A large batch: memory is given back to the system once it is through.
    pub large: bool,
}

impl InFlight {
    /// Waits until every sink's commit ended. Cancel-safe: a wait dropped half-way is resumed.
    pub async fn wait(&mut self) {
        for (_, c) in &mut self.waits {
            c.wait().await;
        }
    }

    /// Whether every sink's commit ended, without waiting.
    pub fn ended(&mut self) -> bool {
        self.waits.iter_mut().all(|(_, c)| c.ended())
    }
}

/// Resolves when the commit in flight ended; never while none is (for a `select!` arm).
pub(super) async fn landed(inflight: &mut Option<InFlight>) {
    match inflight {
        Some(f) => f.wait().await,
        None => std::future::pending().await,
    }
}

/// Starts the commits of a batch written to the sinks `active`: the search indexes' commits go
/// to their writer threads first, then Redis commits in place (so the two run at once), then
/// the ledger holds the batch's rows. If a commit cannot start, the ones already started are
/// waited for before the error returns, so no sink is left with an outcome it never saw.
pub(super) async fn start_commits(
    pipeline: &str,
    sinks: &mut [AnySink],
    active: &[usize],
    fence: &tokio_util::sync::CancellationToken,
) -> Result<(Vec<(usize, Committing)>, bool)> {
    super::check_fence(fence)?;
    let mut order: Vec<usize> = active.iter().copied().filter(|&j| !matches!(sinks[j], AnySink::Ledger(_))).collect();
    order.sort_by_key(|&j| !matches!(sinks[j], AnySink::Search(_)));
    let mut waits = Vec::new();
    for j in order {
        let started = Instant::now();
        match sinks[j].start_commit().await {
            Ok(mut c) => {
                if c.ended() {
                    telemetry::record_sink_commit(pipeline, sink_kind(&sinks[j]), started.elapsed());
                    failpoint("between_sink_commits");
                }
                waits.push((j, c));
            }
            Err(e) => {
                for (k, mut c) in waits {
                    c.wait().await;
                    let _ = sinks[k].finish_commit(c.outcome());
                }
                return Err(e);
            }
        }
    }
    let mut ledger = false;
    if let Some(&j) = active.iter().find(|&&j| matches!(sinks[j], AnySink::Ledger(_))) {
        if let AnySink::Ledger(l) = &mut sinks[j] {
            l.hold()?;
            ledger = true;
        }
    }
    Ok((waits, ledger))
}

impl Worker {
    /// Waits for the commit in flight (if any) and concludes it. When it failed, its batch goes
    /// back into `open` and the error is returned.
    pub(super) async fn settle(&mut self, open: &mut Batch) -> Result<()> {
        let Some(mut f) = self.inflight.take() else { return Ok(()) };
        f.wait().await;
        self.conclude_into(f, open)
    }

    /// [`Worker::conclude`], putting a failed batch back into `open`.
    pub(super) fn conclude_into(&mut self, f: InFlight, open: &mut Batch) -> Result<()> {
        match self.conclude(f) {
            Ok(()) => Ok(()),
            Err((e, back)) => {
                if let Some(b) = back {
                    open.absorb(*b)?;
                }
                Err(e)
            }
        }
    }

    /// The commit in flight ended (every handle in `f` has its outcome): the sinks learn it; if
    /// all went well, the ledger writes the held rows and the batch becomes visible (meters,
    /// change notices, status). On failure: the error and the batch to put back.
    pub(super) fn conclude(&mut self, f: InFlight) -> std::result::Result<(), (Error, Option<Box<Batch>>)> {
        let InFlight { lsn, batch, waits, ledger, notice, stages, started, deriving, large } = f;
        let name = self.p.def.name.clone();
        let mut first_err: Option<Error> = None;
        // How long the commits took (not when the worker looked: it may have been deriving).
        let mut took = std::time::Duration::ZERO;
        for (j, c) in waits {
            let waited = !matches!(self.p.sinks[j], AnySink::Redis(_));
            let took_here = c.ended_at().map_or_else(|| started.elapsed(), |at| at.saturating_duration_since(started));
            took = took.max(took_here);
            if let Err(e) = self.p.sinks[j].finish_commit(c.outcome()) {
                first_err.get_or_insert(e);
            } else if waited {
                telemetry::record_sink_commit(&name, sink_kind(&self.p.sinks[j]), took_here);
            }
        }
        if first_err.is_none() && ledger {
            failpoint("between_sink_commits");
            let ledger_started = std::time::Instant::now();
            let written = super::check_fence(&self.ctx.fence).and_then(|()| self.p.ledger().map_or(Ok(()), |l| l.commit_held()));
            match written {
                Ok(()) => {
                    telemetry::record_sink_commit(&name, "ledger", ledger_started.elapsed());
                    took += ledger_started.elapsed();
                }
                Err(e) => first_err = Some(e),
            }
        }
        if let Some(e) = first_err {
            if let Some(l) = self.p.ledger() {
                l.release_held();
            }
            self.concluded.push(Outcome::Retryable);
            return Err((e, batch.map(Box::new)));
        }
        self.concluded.push(Outcome::Done);
        failpoint("after_sink_commits");
        self.ctx.shared.meter_visible(self.index, lsn);
        telemetry::record_pipeline(telemetry::DERIVE_SECONDS, &name, deriving);
        telemetry::record_pipeline(telemetry::BATCH_SECONDS, &name, stages.elapsed());
        telemetry::record_pipeline(telemetry::COMMIT_LATENCY, &name, took);
        tracing::debug!(pipeline = %name, %lsn, commit_ms = took.as_secs_f64() * 1e3, seen_after_ms = started.elapsed().as_secs_f64() * 1e3, "batch durable");
        if let Some(notice) = notice {
            self.ctx.shared.notify_change(notice);
        }
        if large {
            super::release_memory();
        }
        self.update_targets();
        Ok(())
    }

    /// The loop saw the commit in flight end: what the state machine is told. A retryable
    /// failure puts the batch back into `open`; another one ends the worker.
    pub(super) async fn landed(&mut self, open: &mut Batch) -> Result<Event> {
        let Some(f) = self.inflight.take() else { return Ok(Event::Committed(Outcome::Done)) };
        let concluded = self.conclude_into(f, open);
        self.concluded.clear();
        match concluded {
            Ok(()) => Ok(Event::Committed(Outcome::Done)),
            Err(e) if super::error_policy::retries(&e) => {
                self.note_retry(&e).await;
                Ok(Event::Committed(Outcome::Retryable))
            }
            Err(e) => Err(e),
        }
    }

    /// Before the stream restarts: the commit in flight is seen to its end (its outcome decides
    /// the sinks' checkpoints, from which the stream replays); a failure only means more replay.
    pub(super) async fn drop_inflight(&mut self) {
        if let Some(mut f) = self.inflight.take() {
            f.wait().await;
            if let Err((e, _)) = self.conclude(f) {
                warn!(pipeline = %self.name(), error = %e, "a batch's commit failed as the stream restarts; it is replayed");
            }
            self.concluded.clear();
        }
    }

    /// A retryable failure: every sink drops its open batch, the status says the worker is
    /// retrying, and a lost Postgres connection is opened again.
    pub(super) async fn note_retry(&mut self, e: &Error) {
        for s in &mut self.p.sinks {
            s.abort().await;
        }
        warn!(pipeline = %self.name(), error = %e, "applying a batch failed; retrying");
        self.retrying = true;
        self.set_error(Some(format!("retrying: {}", e.message)));
        if let Err(e2) = self.reconnect_pg().await {
            warn!(pipeline = %self.name(), error = %e2, "reconnecting to Postgres failed");
        }
    }
}
