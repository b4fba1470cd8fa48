//! The search sink: one tantivy index per search target, in generation directories
//! (`<index.dir>/<index>/gen-<n>`, the live one named by `CURRENT`). The blocking `IndexWriter`
//! lives on its own thread fed by a queue bounded by bytes (`queue.rs`); each commit carries the
//! batch LSN and the pipeline's definition hash as its payload, so the checkpoint is durable with
//! the data.

mod directory;
mod generation;
mod merge;
mod priority;
mod queue;
pub mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;

use tantivy::schema::Schema;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument};
use tokio::sync::{mpsc, oneshot};

use super::{BatchMode, Checkpoint, Committing, Rejected, Sink, Write};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, SearchTarget};
use crate::sink::provenance::Stamp;
use crate::source::Lsn;
pub use generation::{collect_garbage, current_generation, generations, live_schema_matches, next_generation, read_checkpoint, set_current};
use generation::{durable_directory, generation_dir, open_for_writing, payload_checkpoint, read_generation};
use queue::QueueBudget;
use schema::{build_schema, register_tokenizers, DocBuilder};
use writer::{writer_thread, Cmd};

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
    /// The open batch's provenance, when the target has `provenance: true`.
    stamp: Option<Stamp>,
    checkpoint: Option<Checkpoint>,
    /// The checkpoint of a commit the writer thread is running (its outcome not yet seen).
    committing: Option<Checkpoint>,
    frozen: bool,
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
            stamp: None,
            checkpoint,
            committing: None,
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
            stamp: None,
            checkpoint,
            committing: None,
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
        // A batch that begins while the previous commit is still running must not be committed
        // if that one fails: the writer then refuses it until a batch begins after the failure
        // was seen here.
        self.send(Cmd::Begin { clear_all, follows_outcome: self.committing.is_none() })?;
        self.open = Some(lsn);
        self.stamp = self.live.target.provenance.then(|| Stamp::new(lsn, &self.hash));
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
                        rejected.push(Rejected::by_target(r.key.clone(), format!("search id field `{}` is NULL", self.live.target.id)));
                        continue;
                    };
                    match self.builder.build_stamped(&id, &r.value, self.stamp.as_ref()) {
                        Ok(mut doc) => {
                            doc.add_text(self.live.schema.get_field(KEY_FIELD).expect("_key"), &r.key);
                            doc.add_u64(self.live.schema.get_field(schema::HASH_FIELD).expect("_hash"), super::content_hash(&r.json));
                            docs.push((r.key.clone(), Some(doc)))
                        }
                        Err(reason) => rejected.push(Rejected::by_target(r.key.clone(), reason)),
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
                    None => Some(Rejected::by_target(r.key.clone(), format!("search id field `{}` is NULL", self.live.target.id))),
                    Some(id) => self.builder.build(&id, &r.value).err().map(|reason| Rejected::by_target(r.key.clone(), reason)),
                },
                Write::Delete { .. } => None,
            })
            .collect()
    }

    async fn commit(&mut self) -> Result<()> {
        let mut committing = self.start_commit().await?;
        committing.wait().await;
        self.finish_commit(committing.outcome())
    }

    async fn start_commit(&mut self) -> Result<Committing> {
        let Some(lsn) = self.open.take() else { return Ok(Committing::ready()) };
        let cp = Checkpoint { lsn, definition_hash: Some(self.hash.clone()) };
        let payload = serde_json::json!({ "lsn": cp.lsn, "definition_hash": cp.definition_hash, "pipeline": self.pipeline }).to_string();
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Commit { payload, reply })?;
        self.committing = Some(cp);
        Ok(Committing::waiting(rx))
    }

    fn finish_commit(&mut self, outcome: Result<()>) -> Result<()> {
        let Some(cp) = self.committing.take() else { return outcome };
        crate::health::observe(&format!("index:{}", self.live.name), outcome)?;
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
