//! The search sink: one tantivy index per search target, in generation directories
//! (`<index.dir>/<index>/gen-<n>`, the live one named by `CURRENT`). The blocking `IndexWriter`
//! lives on its own thread fed by a queue bounded by bytes (`queue.rs`); each commit carries the
//! batch LSN and the pipeline's definition hash as its payload, so the checkpoint is durable with
//! the data.

mod directory;
mod merge;
mod queue;
pub mod schema;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::schema::{Field, Schema};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::{mpsc, oneshot};

use super::{BatchMode, Checkpoint, Rejected, Sink, Write};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, SearchTarget};
use crate::source::Lsn;
use directory::DurableDirectory;
use queue::{Charge, QueueBudget};
use schema::{build_schema, register_tokenizers, DocBuilder};

pub const KEY_FIELD: &str = "_key";

/// A live index generation, shared with the HTTP API for reads.
pub struct SearchIndex {
    pub name: String,
    pub generation: u64,
    pub index: Index,
    pub reader: IndexReader,
    pub schema: Schema,
    pub target: SearchTarget,
}

enum Cmd {
    Begin {
        clear_all: bool,
    },
    /// Documents (None: the key's document is deleted), holding their share of the queue budget.
    Docs(Vec<(String, Option<TantivyDocument>)>, Charge),
    Commit {
        payload: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Abort {
        reply: oneshot::Sender<()>,
    },
}

pub struct SearchSink {
    pipeline: String,
    hash: String,
    live: Arc<SearchIndex>,
    builder: DocBuilder,
    /// Position of the target's `id` field in `Pipeline::text_fields()`.
    id_pos: usize,
    /// Unbounded by count: only `Cmd::Docs` carries data, and `queue` bounds it by bytes.
    tx: mpsc::UnboundedSender<Cmd>,
    queue: QueueBudget,
    open: Option<Lsn>,
    checkpoint: Option<Checkpoint>,
    frozen: bool,
}

fn read_generation(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("CURRENT")).ok()?.trim().parse().ok()
}

fn generation_dir(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("gen-{gen:06}"))
}

/// How much lower tantivy's merge threads run than the rest of deriver (a `nice` increment).
/// A merge is background work: it can wait, a commit cannot. Measured under steady churn on two
/// cores, merges took about 40 % of deriver's CPU and competed with every commit's segment write
/// and delete application, which sit on the path from a transaction's commit to its visibility.
/// At +10 (a tenth of the weight) a merge still uses whatever CPU is idle. The thread that makes
/// spare index files (`directory.rs`) runs at the same priority, for the same reason.
const BACKGROUND_NICE: i32 = 10;

/// Lowers one thread of this process (`0`: the calling thread) to [`BACKGROUND_NICE`]. A thread
/// whose priority cannot be changed is left as it is (it only shapes latency, never correctness).
#[cfg(target_os = "linux")]
fn lower_thread_priority(tid: libc::id_t) {
    // SAFETY: setpriority takes plain integers; 0 or a thread id of this process is valid.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(_tid: u32) {}

/// Lowers the scheduling priority of this process's tantivy merge threads (`merge_thread_<n>`)
/// to [`BACKGROUND_NICE`]. tantivy creates a writer's merge pool when the writer is created (and again
/// on a rollback) and gives no hook to set its threads' priority, so they are found by name; the
/// writer thread calls this at a writer's first commit, when they are running and named.
#[cfg(target_os = "linux")]
fn lower_merge_priority() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::id_t>().ok()) else { continue };
        let is_merge = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("merge_thread_"));
        if is_merge {
            lower_thread_priority(tid);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_merge_priority() {}

/// The directory an index generation's writer needs ([`DurableDirectory`]).
fn durable_directory(path: &Path) -> Result<DurableDirectory> {
    DurableDirectory::open(path).map_err(|e| Error::from(tantivy::TantivyError::from(e)))
}

/// Opens an index generation for writing.
fn open_for_writing(path: &Path) -> Result<Index> {
    Ok(Index::open(durable_directory(path)?)?)
}

/// Reads the checkpoint of an index directory without opening a writer (for `status`).
pub fn read_checkpoint(index_root: &Path, index: &str) -> Result<Option<(u64, Checkpoint)>> {
    let Some((gen, idx)) = open_live(index_root, index)? else { return Ok(None) };
    Ok(payload_checkpoint(&idx)?.map(|c| (gen, c)))
}

/// Whether the live generation of `target`'s index has the schema this binary builds (`None`: not
/// built yet). A generation written by a deriver that laid fields out differently opens frozen
/// and is rebuilt in the background.
pub fn live_schema_matches(index_root: &Path, target: &SearchTarget) -> Result<Option<bool>> {
    Ok(open_live(index_root, &target.index)?.map(|(_, idx)| idx.schema() == build_schema(target)))
}

/// The live generation of an index, opened read-only (`None`: not built yet).
fn open_live(index_root: &Path, index: &str) -> Result<Option<(u64, Index)>> {
    let dir = index_root.join(index);
    let Some(gen) = read_generation(&dir) else { return Ok(None) };
    Ok(Some((gen, Index::open_in_dir(generation_dir(&dir, gen))?)))
}

fn payload_checkpoint(index: &Index) -> Result<Option<Checkpoint>> {
    let metas = index.load_metas()?;
    match metas.payload {
        None => Ok(None),
        Some(p) => serde_json::from_str(&p).map(Some).map_err(|e| Error::fatal("the search index's commit payload is unreadable").with_detail(e)),
    }
}

/// The generations present under an index directory, ascending.
pub fn generations(index_root: &Path, index: &str) -> Vec<u64> {
    let dir = index_root.join(index);
    let mut out: Vec<u64> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("gen-")).and_then(|n| n.parse().ok())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The number for a new generation: above every generation this index ever had (`LAST`), so
/// numbers are never reused even after old generations are collected.
pub fn next_generation(index_root: &Path, index: &str) -> Result<u64> {
    let dir = index_root.join(index);
    let last: u64 = std::fs::read_to_string(dir.join("LAST")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let next = last.max(generations(index_root, index).into_iter().max().unwrap_or(0)) + 1;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("LAST"), format!("{next}\n"))?;
    Ok(next)
}

/// The live generation of an index (`CURRENT`).
pub fn current_generation(index_root: &Path, index: &str) -> Option<u64> {
    read_generation(&index_root.join(index))
}

/// Makes `gen` the live generation: an atomic rename of `CURRENT`.
pub fn set_current(index_root: &Path, index: &str, gen: u64) -> Result<()> {
    let dir = index_root.join(index);
    let tmp = dir.join("CURRENT.tmp");
    std::fs::write(&tmp, format!("{gen}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("CURRENT"))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deletes generations other than the live one beyond the `keep` most recent older ones, and
/// generations newer than the live one (an interrupted build), unless `spare` names one.
pub fn collect_garbage(index_root: &Path, index: &str, keep: usize, spare: Option<u64>) -> Result<Vec<u64>> {
    let Some(live) = current_generation(index_root, index) else { return Ok(Vec::new()) };
    let gens = generations(index_root, index);
    let older: Vec<u64> = gens.iter().copied().filter(|g| *g < live).collect();
    let mut removed = Vec::new();
    let drop_older = older.len().saturating_sub(keep);
    for g in older.into_iter().take(drop_older).chain(gens.iter().copied().filter(|g| *g > live)) {
        if Some(g) == spare {
            continue;
        }
        std::fs::remove_dir_all(generation_dir(&index_root.join(index), g))?;
        removed.push(g);
    }
    Ok(removed)
}

impl SearchSink {
    /// Opens the live generation (creating generation 1 when there is none). When it was built
    /// from another definition (or schema), it opens *frozen*: it keeps answering searches and
    /// takes no writes until a new generation, built in the background, replaces it.
    pub fn open(index_root: &Path, pipeline: &Pipeline, target: &SearchTarget, writer_mb: usize) -> Result<SearchSink> {
        let dir = index_root.join(&target.index);
        std::fs::create_dir_all(&dir).map_err(|e| Error::fatal(format!("cannot create the index directory {}", dir.display())).with_detail(e))?;
        match read_generation(&dir) {
            None => {
                let sink = SearchSink::create_generation(index_root, pipeline, target, 1, writer_mb)?;
                set_current(index_root, &target.index, 1)?;
                Ok(sink)
            }
            Some(gen) => {
                let path = generation_dir(&dir, gen);
                let index = open_for_writing(&path)?;
                let checkpoint = payload_checkpoint(&index)?;
                let stale_def = checkpoint.as_ref().is_some_and(|c| c.definition_hash.as_deref() != Some(pipeline.search_hash(target).as_str()));
                if index.schema() != build_schema(target) || stale_def {
                    SearchSink::frozen(pipeline, target, gen, index, checkpoint)
                } else {
                    SearchSink::with_writer(pipeline, target, gen, &path, index, checkpoint, writer_mb)
                }
            }
        }
    }

    /// Creates a new, empty generation `gen` (not live until [`set_current`]).
    pub fn create_generation(index_root: &Path, pipeline: &Pipeline, target: &SearchTarget, gen: u64, writer_mb: usize) -> Result<SearchSink> {
        let path = generation_dir(&index_root.join(&target.index), gen);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        let index = Index::create(durable_directory(&path)?, build_schema(target), Default::default())?;
        SearchSink::with_writer(pipeline, target, gen, &path, index, None, writer_mb)
    }

    /// Opens an existing generation with a writer (rollback).
    pub fn open_generation(index_root: &Path, pipeline: &Pipeline, target: &SearchTarget, gen: u64, writer_mb: usize) -> Result<SearchSink> {
        let path = generation_dir(&index_root.join(&target.index), gen);
        if !path.exists() {
            return Err(Error::config(format!("generation {gen} of index `{}` does not exist (any more)", target.index)));
        }
        let index = open_for_writing(&path)?;
        if index.schema() != build_schema(target) {
            return Err(Error::config(format!("generation {gen} of index `{}` was built with another search schema", target.index)));
        }
        let checkpoint = payload_checkpoint(&index)?;
        SearchSink::with_writer(pipeline, target, gen, &path, index, checkpoint, writer_mb)
    }

    fn frozen(pipeline: &Pipeline, target: &SearchTarget, gen: u64, index: Index, checkpoint: Option<Checkpoint>) -> Result<SearchSink> {
        schema::register_all_tokenizers(&index);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let schema = index.schema();
        let live = Arc::new(SearchIndex { name: target.index.clone(), generation: gen, index, reader, schema, target: target.clone() });
        let (tx, _rx) = mpsc::unbounded_channel();
        Ok(SearchSink {
            pipeline: pipeline.name.clone(),
            hash: pipeline.search_hash(target),
            builder: DocBuilder::new(&build_schema(target), target),
            live,
            id_pos: pipeline.text_fields().iter().position(|f| f == &target.id).expect("id is a text field"),
            tx,
            queue: QueueBudget::new(0),
            open: None,
            checkpoint,
            frozen: true,
        })
    }

    fn with_writer(
        pipeline: &Pipeline,
        target: &SearchTarget,
        gen: u64,
        path: &Path,
        index: Index,
        checkpoint: Option<Checkpoint>,
        writer_mb: usize,
    ) -> Result<SearchSink> {
        let schema = index.schema();
        register_tokenizers(&index, target);
        let writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, writer_mb.max(16) * 1024 * 1024).map_err(|e| {
            if matches!(e, tantivy::TantivyError::LockFailure(..)) {
                Error::transient(format!(
                    "search index `{}` is locked by another process (one writer per index generation; a previous owner may still be letting go)",
                    target.index
                ))
                .with_cause(crate::error::Cause::IndexLocked)
            } else {
                Error::from(e)
            }
        })?;
        writer.set_merge_policy(Box::new(merge::MergePolicy::new(path)));
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let live = Arc::new(SearchIndex { name: target.index.clone(), generation: gen, index, reader, schema: schema.clone(), target: target.clone() });
        let key_field = schema.get_field(KEY_FIELD).expect("schema has _key");
        let (tx, rx) = mpsc::unbounded_channel();
        let reader_for_thread = live.reader.clone();
        std::thread::Builder::new()
            .name(format!("tantivy-{}", target.index))
            .spawn(move || writer_thread(writer, reader_for_thread, key_field, rx))
            .map_err(|e| Error::fatal("cannot start the index writer thread").with_detail(e))?;
        let id_pos = pipeline.text_fields().iter().position(|f| f == &target.id).expect("id is a text field");
        Ok(SearchSink {
            pipeline: pipeline.name.clone(),
            hash: pipeline.search_hash(target),
            builder: DocBuilder::new(&schema, target),
            live,
            id_pos,
            tx,
            queue: QueueBudget::new(writer_mb.max(16)),
            open: None,
            checkpoint,
            frozen: false,
        })
    }

    /// Frozen: built from another definition; it serves searches until replaced.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    pub fn generation(&self) -> u64 {
        self.live.generation
    }

    pub fn target(&self) -> &SearchTarget {
        &self.live.target
    }

    pub fn index(&self) -> Arc<SearchIndex> {
        self.live.clone()
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::fatal(format!("the index writer of `{}` stopped", self.live.name)))
    }
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

fn writer_thread(mut writer: IndexWriter<TantivyDocument>, reader: IndexReader, key_field: Field, mut rx: mpsc::UnboundedReceiver<Cmd>) {
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
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Begin { clear_all } => {
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
                }
                filter = DeleteFilter::new();
                let _ = reply.send(result);
            }
            Cmd::Abort { reply } => {
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

impl Sink for SearchSink {
    fn labels(&self) -> Vec<String> {
        vec![format!("search:{}", self.live.name)]
    }

    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint.clone())
    }

    async fn begin(&mut self, lsn: Lsn, mode: BatchMode) -> Result<bool> {
        if self.frozen {
            // Built from another definition: a new generation replaces it; nothing writes here.
            return Ok(false);
        }
        if matches!(mode, BatchMode::Incremental { .. }) && self.checkpoint.as_ref().is_some_and(|c| c.lsn >= lsn) {
            return Ok(false);
        }
        let lsn = match (mode, &self.checkpoint) {
            (BatchMode::Repair, Some(c)) => c.lsn.max(lsn),
            _ => lsn,
        };
        let clear_all = matches!(mode, BatchMode::Replace | BatchMode::Rewrite | BatchMode::Incremental { clear_all: true });
        // A full build may queue up to the writer's memory budget (see `queue.rs`).
        self.queue.set_bulk(matches!(mode, BatchMode::Replace)).await;
        self.send(Cmd::Begin { clear_all })?;
        self.open = Some(lsn);
        Ok(true)
    }

    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut docs = Vec::with_capacity(writes.len());
        let mut bytes = 0;
        for w in writes {
            match w {
                Write::Delete { key } => {
                    bytes += queue::doc_bytes(key.len());
                    docs.push((key.clone(), None))
                }
                Write::Upsert(r) => {
                    bytes += queue::doc_bytes(r.json.len());
                    let Some(id) = r.texts.get(self.id_pos).cloned().flatten() else {
                        rejected.push(Rejected { key: r.key.clone(), reason: format!("search id field `{}` is NULL", self.live.target.id) });
                        continue;
                    };
                    match self.builder.build(&id, &r.value) {
                        Ok(mut doc) => {
                            doc.add_text(self.live.schema.get_field(KEY_FIELD).expect("_key"), &r.key);
                            doc.add_u64(self.live.schema.get_field(schema::HASH_FIELD).expect("_hash"), super::content_hash(&r.json));
                            docs.push((r.key.clone(), Some(doc)))
                        }
                        Err(reason) => rejected.push(Rejected { key: r.key.clone(), reason }),
                    }
                }
            }
        }
        let charge = self.queue.charge(bytes).await;
        self.send(Cmd::Docs(docs, charge))?;
        Ok(rejected)
    }

    fn validate(&self, writes: &[Write]) -> Vec<Rejected> {
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Upsert(r) => match r.texts.get(self.id_pos).cloned().flatten() {
                    None => Some(Rejected { key: r.key.clone(), reason: format!("search id field `{}` is NULL", self.live.target.id) }),
                    Some(id) => self.builder.build(&id, &r.value).err().map(|reason| Rejected { key: r.key.clone(), reason }),
                },
                Write::Delete { .. } => None,
            })
            .collect()
    }

    async fn commit(&mut self) -> Result<()> {
        let Some(lsn) = self.open.take() else { return Ok(()) };
        let cp = Checkpoint { lsn, definition_hash: Some(self.hash.clone()) };
        let payload = serde_json::json!({ "lsn": cp.lsn, "definition_hash": cp.definition_hash, "pipeline": self.pipeline }).to_string();
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Commit { payload, reply })?;
        let committed = rx.await.map_err(|_| Error::fatal("the index writer stopped during a commit"))?;
        crate::health::observe(&format!("index:{}", self.live.name), committed)?;
        self.checkpoint = Some(cp);
        Ok(())
    }

    async fn abort(&mut self) {
        if self.open.take().is_some() {
            let (reply, rx) = oneshot::channel();
            if self.send(Cmd::Abort { reply }).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

impl SearchSink {
    /// The definition hash this sink's content must be built from.
    pub fn definition_hash(&self) -> &str {
        &self.hash
    }

    /// The checkpoint of the last commit (no I/O).
    pub fn current_checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint.clone()
    }
}

#[cfg(test)]
mod tests {
    use tantivy::schema::{Schema, STORED, STRING};
    use tantivy::{doc, Index, IndexWriter, TantivyDocument, Term};

    /// A generation written with another field layout (here: text fields stored in tantivy as
    /// well as in `_source`, as deriver did before) is recognised, so `plan` says `rebuild`.
    #[test]
    fn a_generation_with_another_field_layout_is_told_apart() {
        let target = super::schema::tests::target();
        let root = tempfile::tempdir().unwrap();
        assert_eq!(super::live_schema_matches(root.path(), &target).unwrap(), None, "nothing built yet");
        let build = |gen: u64, schema: Schema| {
            let dir = super::generation_dir(&root.path().join(&target.index), gen);
            std::fs::create_dir_all(&dir).unwrap();
            Index::create_in_dir(&dir, schema).unwrap();
            super::set_current(root.path(), &target.index, gen).unwrap();
        };
        build(1, super::build_schema(&target));
        assert_eq!(super::live_schema_matches(root.path(), &target).unwrap(), Some(true));
        let mut old = Schema::builder();
        for (_, entry) in super::build_schema(&target).fields() {
            // The same field with the same indexing, only stored as well.
            let entry = match entry.field_type() {
                tantivy::schema::FieldType::Str(opts) if entry.name() == "title" => {
                    tantivy::schema::FieldEntry::new_text("title".into(), opts.clone().set_stored())
                }
                _ => entry.clone(),
            };
            old.add_field(entry);
        }
        build(2, old.build());
        assert_eq!(super::live_schema_matches(root.path(), &target).unwrap(), Some(false));
    }

    /// Every merge thread of a writer runs at the lowered priority once `lower_merge_priority`
    /// has seen it (other tests' writers may start merge threads meanwhile: those are caught by
    /// the next call, as the writer thread's next commit would).
    #[cfg(target_os = "linux")]
    #[test]
    fn merge_threads_run_at_a_lower_priority() {
        let index = Index::create_in_ram(Schema::builder().build());
        let _writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        let merge_nices = || -> Vec<i32> {
            let mut out = Vec::new();
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let named = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with("merge_thread_"));
                let tid: libc::id_t = task.file_name().to_str().unwrap().parse().unwrap();
                if named {
                    // SAFETY: plain integers; errno is not consulted (a nice of -1 fails the test).
                    out.push(unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) });
                }
            }
            out
        };
        let mut nices = Vec::new();
        for _ in 0..50 {
            super::lower_merge_priority();
            nices = merge_nices();
            if !nices.is_empty() && nices.iter().all(|&n| n == super::BACKGROUND_NICE) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("merge threads' nice values: {nices:?} (want all {})", super::BACKGROUND_NICE);
    }

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
