//! The thread that owns a generation's blocking `IndexWriter`: the commands the sink sends it,
//! which deletes an upsert needs (`DeleteFilter`), and the commit that carries the checkpoint.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use tantivy::schema::Field;
use tantivy::{IndexReader, IndexWriter, TantivyDocument, Term};
use tokio::sync::{mpsc, oneshot};

use super::priority::lower_merge_priority;
use super::queue::Charge;
use crate::error::{Error, Result};

pub(super) enum Cmd {
    Begin {
        clear_all: bool,
        /// The sink had seen the outcome of every commit it started before this batch began.
        follows_outcome: bool,
    },
    /// Documents (None: the key's document is deleted), holding their share of the queue budget.
    Docs(Vec<(String, Option<TantivyDocument>)>, Charge),
    Commit {
        payload: String,
        reply: oneshot::Sender<crate::sink::CommitOutcome>,
    },
    Abort {
        reply: oneshot::Sender<()>,
    },
}

/// Whether a key may already have a document that an upsert or delete must remove. Each
/// `delete_term` costs tantivy a boxed query weight (over 1 KiB) held in its delete queue until the
/// commit, so a million-row transaction or a full rebuild must not issue one per key blindly: a
/// delete is needed only when the key is in the last committed index (unless this batch cleared
/// it) or was added earlier in this batch (spilled dirty keys may repeat). Keys added in the batch
/// are remembered by a 64-bit hash; a collision only causes a harmless extra delete.
struct DeleteFilter {
    cleared: bool,
    added: HashSet<u64>,
    searcher: Option<tantivy::Searcher>,
}

impl DeleteFilter {
    fn new() -> DeleteFilter {
        DeleteFilter { cleared: false, added: HashSet::new(), searcher: None }
    }

    fn begin(&mut self, reader: &IndexReader, cleared: bool) {
        self.cleared = cleared;
        self.added = HashSet::new();
        self.searcher = Some(reader.searcher());
    }

    fn classify(&mut self, term: &Term, key: &str, adding: bool) -> Prior {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        let hash = h.finish();
        let seen = if adding { !self.added.insert(hash) } else { self.added.contains(&hash) };
        if seen {
            return Prior::ThisBatch;
        }
        if self.cleared {
            return Prior::None;
        }
        // No searcher (no Begin seen): be safe. A committed document counts even if deleted since.
        if self.searcher.as_ref().is_none_or(|s| s.doc_freq(term).map_or(true, |n| n > 0)) {
            Prior::Committed
        } else {
            Prior::None
        }
    }
}

/// Where an earlier document of a key may be.
enum Prior {
    None,
    /// In the last commit: deleted together with the rest of its group.
    Committed,
    /// Added earlier in this batch (a repeated key): the group before it must be applied first.
    ThisBatch,
}

/// Applies one group of upserts: a single set-delete for the keys that had documents (one weight
/// for the whole group instead of one per key), then the adds, whose later opstamps keep them.
fn apply_group(writer: &IndexWriter<TantivyDocument>, deletes: &mut Vec<Term>, adds: &mut Vec<TantivyDocument>, failed: &mut Option<String>) {
    match deletes.len() {
        0 => {}
        1 => {
            writer.delete_term(deletes.pop().expect("one term"));
        }
        _ => {
            let query = tantivy::query::TermSetQuery::new(std::mem::take(deletes));
            if let Err(e) = writer.delete_query(Box::new(query)) {
                failed.get_or_insert(e.to_string());
            }
        }
    }
    for doc in adds.drain(..) {
        if let Err(e) = writer.add_document(doc) {
            failed.get_or_insert(e.to_string());
        }
    }
}

/// Works around a tantivy 0.27 defect that loses deletes (duplicate documents). A writer opened
/// or rolled back on an index whose last commit has opstamp `C` stamps its first operation `C`
/// too (and `delete_all_documents` rewinds the stamper to `C`). A merge started before the next
/// commit applies the deletes up to `C` to each input segment, except that a segment whose
/// deletes were last applied at `C` is skipped as "up to date" — while the merged segment takes
/// its delete cursor from the first input, which did consume the operation stamped `C`. A delete
/// issued as the first operation of a fresh writer is then never applied to the documents of
/// such a merge. Found as a duplicated search document after the process re-opened the index
/// (ownership regained after an outage). Spending opstamp `C` on a delete that matches nothing
/// keeps every real delete above it.
fn spend_first_opstamp(writer: &IndexWriter<TantivyDocument>) -> tantivy::Result<()> {
    writer.delete_query(Box::new(tantivy::query::EmptyQuery)).map(|_| ())
}

/// Drops uncommitted work: a fresh writer on the last commit, its first opstamp spent.
fn rollback(writer: &mut IndexWriter<TantivyDocument>) {
    if let Err(e) = writer.rollback().and_then(|_| spend_first_opstamp(writer)) {
        tracing::warn!(error = %e, "rolling back the index writer failed");
    }
}

pub(super) fn writer_thread(mut writer: IndexWriter<TantivyDocument>, reader: IndexReader, key_field: Field, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    if let Err(e) = spend_first_opstamp(&writer) {
        tracing::warn!(error = %e, "preparing the index writer failed");
    }
    let mut failed: Option<String> = None;
    let mut filter = DeleteFilter::new();
    // The writer's merge threads get a lower priority at the first commit, when they have long
    // been running and named (not right after the writer is made, when a thread may not have
    // named itself yet); a rollback makes a new writer with new merge threads, lowered at the
    // commit after it.
    let mut merge_priority_set = false;
    // A commit failed and the sink has not seen it yet: a batch that began before it did (the
    // sink derives the next batch while one commits) would commit without the failed one's
    // changes, so it is refused; a batch begun after the sink saw the failure goes ahead.
    let mut refusing = false;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Begin { follows_outcome, .. } if refusing && !follows_outcome => {}
            Cmd::Docs(..) if refusing => {}
            Cmd::Commit { reply, .. } if refusing => {
                let _ = reply.send((Err(Error::transient("a search index commit before this batch failed; the batch is retried")), std::time::Instant::now()));
            }
            Cmd::Begin { clear_all, .. } => {
                refusing = false;
                failed = None;
                if clear_all {
                    if let Err(e) = writer.delete_all_documents().and_then(|_| spend_first_opstamp(&writer)) {
                        failed = Some(e.to_string());
                    }
                }
                filter.begin(&reader, clear_all);
            }
            Cmd::Docs(docs, charge) => {
                let (mut deletes, mut adds) = (Vec::new(), Vec::new());
                for (key, doc) in docs {
                    let term = Term::from_field_text(key_field, &key);
                    match filter.classify(&term, &key, doc.is_some()) {
                        Prior::None => {}
                        Prior::Committed => deletes.push(term),
                        Prior::ThisBatch => {
                            apply_group(&writer, &mut deletes, &mut adds, &mut failed);
                            writer.delete_term(term);
                        }
                    }
                    adds.extend(doc);
                }
                apply_group(&writer, &mut deletes, &mut adds, &mut failed);
                // Handed to tantivy (its own channel holds up to 10,000 more): the space is free.
                drop(charge);
            }
            Cmd::Commit { payload, reply } => {
                if !merge_priority_set {
                    lower_merge_priority();
                    merge_priority_set = true;
                }
                let result = match failed.take() {
                    Some(e) => Err(Error::transient("writing to the search index failed").with_detail(e)),
                    None => {
                        let started = std::time::Instant::now();
                        let committed = commit(&mut writer, &payload);
                        let reloading = std::time::Instant::now();
                        let result = committed.and_then(|_| reader.reload().map_err(Error::from));
                        tracing::debug!(
                            commit_ms = (reloading - started).as_secs_f64() * 1e3,
                            reload_ms = reloading.elapsed().as_secs_f64() * 1e3,
                            segments = reader.searcher().segment_readers().len(),
                            "index commit"
                        );
                        result
                    }
                };
                if result.is_err() {
                    rollback(&mut writer);
                    merge_priority_set = false;
                    refusing = true;
                }
                filter = DeleteFilter::new();
                let _ = reply.send((result, std::time::Instant::now()));
            }
            Cmd::Abort { reply } => {
                refusing = false;
                rollback(&mut writer);
                merge_priority_set = false;
                failed = None;
                filter = DeleteFilter::new();
                let _ = reply.send(());
            }
        }
    }
    // Channel closed: dropping the writer discards uncommitted work and releases the index lock.
    // Merges still running end unpublished (the writer's segment updater is killed on drop).
    drop(writer);
}

fn commit(writer: &mut IndexWriter<TantivyDocument>, payload: &str) -> Result<()> {
    let mut prepared = writer.prepare_commit().map_err(|e| Error::transient("search index commit failed").with_detail(e))?;
    prepared.set_payload(payload);
    prepared.commit().map_err(|e| Error::transient("search index commit failed").with_detail(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tantivy::schema::{Schema, STORED, STRING};
    use tantivy::{doc, Index, IndexWriter, TantivyDocument, Term};

    /// The defect `spend_first_opstamp` works around, reproduced step by step: segment A's
    /// deletes were last applied at the last commit's opstamp; a re-opened writer deletes a
    /// key of A as its first operation, and a merge of B (listed first) and A starts before the
    /// next commit. The deleted document must stay deleted.
    #[test]
    fn a_delete_that_is_the_first_operation_of_a_reopened_writer_survives_a_merge() {
        let mut builder = Schema::builder();
        let key = builder.add_text_field("_key", STRING | STORED);
        let schema = builder.build();
        let dir = tempfile::tempdir().unwrap();
        let index = Index::create_in_dir(dir.path(), schema).unwrap();
        let open = |index: &Index| -> IndexWriter<TantivyDocument> {
            let w = index.writer_with_num_threads(1, 15_000_000).unwrap();
            w.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
            w
        };
        {
            let mut w = open(&index);
            for k in ["a1", "a2", "a3"] {
                w.add_document(doc!(key => k)).unwrap();
            }
            w.commit().unwrap();
            for k in ["b1", "b2", "b3"] {
                w.add_document(doc!(key => k)).unwrap();
            }
            w.commit().unwrap();
            // A's deletes are now applied at the last commit's opstamp; B has none.
            w.delete_term(Term::from_field_text(key, "a1"));
            w.commit().unwrap();
        }
        let segments = index.searchable_segment_metas().unwrap();
        let a = segments.iter().find(|m| m.has_deletes()).unwrap().id();
        let b = segments.iter().find(|m| !m.has_deletes()).unwrap().id();

        let mut w = open(&index);
        super::spend_first_opstamp(&w).unwrap();
        w.delete_term(Term::from_field_text(key, "a2"));
        w.merge(&[b, a]).wait().unwrap();
        w.add_document(doc!(key => "a2")).unwrap();
        w.commit().unwrap();

        let reader = index.reader().unwrap();
        let searcher = reader.searcher();
        let alive = |k: &str| {
            searcher
                .search(&tantivy::query::TermQuery::new(Term::from_field_text(key, k), tantivy::schema::IndexRecordOption::Basic), &tantivy::collector::Count)
                .unwrap()
        };
        assert_eq!(alive("a1"), 0);
        assert_eq!(alive("a2"), 1, "the old document of a2 came back with the merge");
        assert_eq!(alive("a3"), 1);
        assert_eq!(searcher.num_docs(), 5);
    }
}
