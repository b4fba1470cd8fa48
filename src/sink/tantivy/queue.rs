//! The queue between a search sink and its index writer thread, bounded by the bytes of the
//! documents in it rather than by a count of chunks (a chunk of 1,000 large documents can weigh
//! a hundred times more than one of small ones).
//!
//! The bound depends on the batch. While the writer flushes a full segment (about a second per
//! 128 MiB of writer memory on two cores), tantivy's indexing thread takes no documents. A full
//! build (first start, reindex, resync) then keeps deriving into this queue, so Postgres, the
//! document building and the Redis sink go on using the other core: the queue holds up to the
//! writer's own memory budget. Streaming batches get a small bound, so that one very large
//! transaction does not add that much to the daemon's memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bound of the queue outside full builds.
pub const STREAM_QUEUE_MIB: u32 = 16;

/// What a queued document is assumed to cost beyond its record's JSON text: the tantivy document's
/// value nodes, its key and term, and the allocations around them. The JSON counts twice (the text
/// that is indexed and the stored `_source`). Measured on the benchmark corpus (about 360 bytes of
/// JSON a record): about 1.9 KiB of RSS per queued document.
pub const DOC_OVERHEAD_BYTES: usize = 1024;

/// The approximate bytes of one queued document made from `json_len` bytes of record JSON.
pub fn doc_bytes(json_len: usize) -> usize {
    DOC_OVERHEAD_BYTES + 2 * json_len
}

/// A byte budget counted in KiB. Streaming holds back all but [`STREAM_QUEUE_MIB`] of it; a full
/// build releases the rest.
pub struct QueueBudget {
    kib: Arc<Semaphore>,
    full_kib: u32,
    /// Held outside full builds: the part of the budget that streaming batches may not use.
    reserve: Option<OwnedSemaphorePermit>,
}

/// The share of the budget a queued chunk holds until the writer thread has applied it.
pub type Charge = OwnedSemaphorePermit;

impl QueueBudget {
    /// A budget of `bulk_mib` for full builds (at least the streaming bound), starting in
    /// streaming mode.
    pub fn new(bulk_mib: usize) -> QueueBudget {
        let full_kib = (bulk_mib.min(u32::MAX as usize / 1024) as u32).max(STREAM_QUEUE_MIB) * 1024;
        let kib = Arc::new(Semaphore::new(full_kib as usize));
        let reserve = kib.clone().try_acquire_many_owned(full_kib - STREAM_QUEUE_MIB * 1024).ok();
        QueueBudget { kib, full_kib, reserve }
    }

    /// Switches between the full-build and the streaming bound. Shrinking waits until the queue
    /// holds no more than the streaming bound (a batch begins after the previous one committed,
    /// so the queue is empty then).
    pub async fn set_bulk(&mut self, bulk: bool) {
        match (bulk, self.reserve.is_some()) {
            (true, true) => self.reserve = None,
            (false, false) => {
                let held = self.full_kib - STREAM_QUEUE_MIB * 1024;
                if held > 0 {
                    self.reserve = self.kib.clone().acquire_many_owned(held).await.ok();
                }
            }
            _ => {}
        }
    }

    /// The current bound in KiB.
    pub fn limit_kib(&self) -> u32 {
        if self.reserve.is_some() {
            STREAM_QUEUE_MIB * 1024
        } else {
            self.full_kib
        }
    }

    /// Waits until `bytes` fit in the queue. A chunk larger than the whole bound waits for an empty
    /// queue and then goes alone, so nothing is ever refused.
    pub async fn charge(&self, bytes: usize) -> Charge {
        let kib = (bytes.div_ceil(1024).min(u32::MAX as usize) as u32).clamp(1, self.limit_kib());
        self.kib.clone().acquire_many_owned(kib).await.expect("the queue budget is never closed")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn blocks<F: std::future::Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f).await.is_err()
    }

    #[tokio::test]
    async fn streaming_batches_queue_at_most_the_streaming_bound_and_full_builds_the_writer_budget() {
        let mib = 1024 * 1024;
        let mut budget = QueueBudget::new(64);
        assert_eq!(budget.limit_kib(), STREAM_QUEUE_MIB * 1024);
        let first = budget.charge(10 * mib).await;
        assert!(blocks(budget.charge(10 * mib)).await, "20 MiB queued while streaming is over the 16 MiB bound");
        drop(first);
        let second = budget.charge(10 * mib).await;
        drop(second);

        budget.set_bulk(true).await;
        assert_eq!(budget.limit_kib(), 64 * 1024);
        let held: Vec<Charge> = futures::future::join_all((0..6).map(|_| budget.charge(10 * mib))).await;
        assert!(blocks(budget.charge(10 * mib)).await, "70 MiB queued is over the 64 MiB bulk bound");

        // Back to streaming: shrinking waits for the queue to drain below the streaming bound.
        let mut shrink = Box::pin(budget.set_bulk(false));
        assert!(blocks(shrink.as_mut()).await, "the bound shrinks only once the queue drained");
        drop(held);
        shrink.await;
        assert_eq!(budget.limit_kib(), STREAM_QUEUE_MIB * 1024);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_bound_waits_for_an_empty_queue_and_then_goes_alone() {
        let budget = QueueBudget::new(16);
        let small = budget.charge(1024).await;
        let mut big = Box::pin(budget.charge(100 * 1024 * 1024));
        assert!(blocks(big.as_mut()).await, "a 100 MiB chunk waits while anything else is queued");
        drop(small);
        let big = big.await;
        assert!(blocks(budget.charge(1)).await, "nothing joins a chunk that fills the whole bound");
        drop(big);
        let _empty_again = budget.charge(1).await;
    }

    #[test]
    fn a_document_costs_its_json_twice_plus_a_fixed_overhead() {
        assert_eq!(doc_bytes(0), DOC_OVERHEAD_BYTES);
        assert_eq!(doc_bytes(360), DOC_OVERHEAD_BYTES + 720);
    }
}
