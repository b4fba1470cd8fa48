//! The search sink: one tantivy index per search target, in generation directories
//! (`<index.dir>/<index>/gen-<n>`, the live one named by `CURRENT`). The blocking `IndexWriter`
//! lives on its own thread fed by a bounded channel; each commit carries the batch LSN and the
//! pipeline's definition hash as its payload, so the checkpoint is durable with the data.

pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::schema::{Field, Schema};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::{mpsc, oneshot};

use super::{BatchMode, Checkpoint, Rejected, Sink, Write};
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, SearchTarget};
use crate::source::Lsn;
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
    Begin { clear_all: bool },
    Docs(Vec<(String, Option<TantivyDocument>)>),
    Commit { payload: String, reply: oneshot::Sender<Result<()>> },
    Abort { reply: oneshot::Sender<()> },
}

pub struct SearchSink {
    pipeline: String,
    hash: String,
    live: Arc<SearchIndex>,
    builder: DocBuilder,
    /// Position of the target's `id` field in `Pipeline::text_fields()`.
    id_pos: usize,
    tx: mpsc::Sender<Cmd>,
    open: Option<Lsn>,
    checkpoint: Option<Checkpoint>,
}

fn read_generation(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("CURRENT")).ok()?.trim().parse().ok()
}

fn generation_dir(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("gen-{gen:06}"))
}

/// Reads the checkpoint of an index directory without opening a writer (for `status`).
pub fn read_checkpoint(index_root: &Path, index: &str) -> Result<Option<(u64, Checkpoint)>> {
    let dir = index_root.join(index);
    let Some(gen) = read_generation(&dir) else { return Ok(None) };
    let idx = Index::open_in_dir(generation_dir(&dir, gen))?;
    Ok(payload_checkpoint(&idx)?.map(|c| (gen, c)))
}

fn payload_checkpoint(index: &Index) -> Result<Option<Checkpoint>> {
    let metas = index.load_metas()?;
    match metas.payload {
        None => Ok(None),
        Some(p) => serde_json::from_str(&p)
            .map(Some)
            .map_err(|e| Error::fatal("the search index's commit payload is unreadable").with_detail(e)),
    }
}

impl SearchSink {
    pub fn open(index_root: &Path, pipeline: &Pipeline, target: &SearchTarget, writer_mb: usize) -> Result<SearchSink> {
        let dir = index_root.join(&target.index);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::fatal(format!("cannot create the index directory {}", dir.display())).with_detail(e))?;
        let schema = build_schema(target);
        let (gen, index) = match read_generation(&dir) {
            Some(gen) => {
                let index = Index::open_in_dir(generation_dir(&dir, gen))?;
                (gen, index)
            }
            None => {
                let gen = 1;
                let path = generation_dir(&dir, gen);
                if path.exists() {
                    std::fs::remove_dir_all(&path)?;
                }
                std::fs::create_dir_all(&path)?;
                let index = Index::create_in_dir(&path, schema.clone())?;
                let tmp = dir.join("CURRENT.tmp");
                std::fs::write(&tmp, format!("{gen}\n"))?;
                std::fs::rename(&tmp, dir.join("CURRENT"))?;
                (gen, index)
            }
        };
        let checkpoint = payload_checkpoint(&index)?;
        if index.schema() != schema {
            return Err(Error::config(format!(
                "the search schema of index `{}` changed (pipeline `{}`); it needs a new index generation: run `deriver reindex {}`",
                target.index, pipeline.name, pipeline.name
            )));
        }
        register_tokenizers(&index, target);
        let writer: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, writer_mb.max(16) * 1024 * 1024).map_err(|e| {
            if matches!(e, tantivy::TantivyError::LockFailure(..)) {
                Error::fatal(format!("search index `{}` is locked by another process (only one writer per index generation)", target.index))
            } else {
                Error::from(e)
            }
        })?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let live = Arc::new(SearchIndex { name: target.index.clone(), generation: gen, index, reader, schema: schema.clone(), target: target.clone() });
        let key_field = schema.get_field(KEY_FIELD).expect("schema has _key");
        let (tx, rx) = mpsc::channel(8);
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
            open: None,
            checkpoint,
        })
    }

    pub fn index(&self) -> Arc<SearchIndex> {
        self.live.clone()
    }

    async fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| Error::fatal(format!("the index writer of `{}` stopped", self.live.name)))
    }
}

fn writer_thread(mut writer: IndexWriter<TantivyDocument>, reader: IndexReader, key_field: Field, mut rx: mpsc::Receiver<Cmd>) {
    let mut failed: Option<String> = None;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Begin { clear_all } => {
                failed = None;
                if clear_all {
                    if let Err(e) = writer.delete_all_documents() {
                        failed = Some(e.to_string());
                    }
                }
            }
            Cmd::Docs(docs) => {
                for (key, doc) in docs {
                    writer.delete_term(Term::from_field_text(key_field, &key));
                    if let Some(doc) = doc {
                        if let Err(e) = writer.add_document(doc) {
                            failed.get_or_insert(e.to_string());
                        }
                    }
                }
            }
            Cmd::Commit { payload, reply } => {
                let result = match failed.take() {
                    Some(e) => {
                        let _ = writer.rollback();
                        Err(Error::transient("writing to the search index failed").with_detail(e))
                    }
                    None => commit(&mut writer, &payload).and_then(|_| reader.reload().map_err(Error::from)),
                };
                if result.is_err() {
                    let _ = writer.rollback();
                }
                let _ = reply.send(result);
            }
            Cmd::Abort { reply } => {
                let _ = writer.rollback();
                failed = None;
                let _ = reply.send(());
            }
        }
    }
    // Channel closed: drop uncommitted work and release the lock.
    let _ = writer.rollback();
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
        if mode != BatchMode::Replace && self.checkpoint.as_ref().is_some_and(|c| c.lsn >= lsn) {
            return Ok(false);
        }
        let clear_all = matches!(mode, BatchMode::Replace | BatchMode::Incremental { clear_all: true });
        self.send(Cmd::Begin { clear_all }).await?;
        self.open = Some(lsn);
        Ok(true)
    }

    async fn write(&mut self, writes: &[Write]) -> Result<Vec<Rejected>> {
        let mut rejected = Vec::new();
        let mut docs = Vec::with_capacity(writes.len());
        for w in writes {
            match w {
                Write::Delete { key } => docs.push((key.clone(), None)),
                Write::Upsert(r) => {
                    let Some(id) = r.texts.get(self.id_pos).cloned().flatten() else {
                        rejected.push(Rejected { key: r.key.clone(), reason: format!("search id field `{}` is NULL", self.live.target.id) });
                        continue;
                    };
                    match self.builder.build(&id, &r.value) {
                        Ok(mut doc) => {
                            doc.add_text(self.live.schema.get_field(KEY_FIELD).expect("_key"), &r.key);
                            docs.push((r.key.clone(), Some(doc)))
                        }
                        Err(reason) => rejected.push(Rejected { key: r.key.clone(), reason }),
                    }
                }
            }
        }
        self.send(Cmd::Docs(docs)).await?;
        Ok(rejected)
    }

    async fn commit(&mut self) -> Result<()> {
        let Some(lsn) = self.open.take() else { return Ok(()) };
        let cp = Checkpoint { lsn, definition_hash: Some(self.hash.clone()) };
        let payload = serde_json::json!({ "lsn": cp.lsn, "definition_hash": cp.definition_hash, "pipeline": self.pipeline }).to_string();
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Commit { payload, reply }).await?;
        rx.await.map_err(|_| Error::fatal("the index writer stopped during a commit"))??;
        self.checkpoint = Some(cp);
        Ok(())
    }

    async fn abort(&mut self) {
        if self.open.take().is_some() {
            let (reply, rx) = oneshot::channel();
            if self.send(Cmd::Abort { reply }).await.is_ok() {
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
