//! The search side of the comparison: the content hash of every live document, read from the
//! index's fast fields in one pass, and the stored document of a key when a diff is wanted.

use std::collections::HashMap;

use serde_json::Value;
use tantivy::schema::Value as _;

use super::findings::Held;
use super::sample::KeyFilter;
use crate::error::{Error, Result};
use crate::sink::tantivy::schema::{build_schema, DocBuilder, HASH_FIELD, SOURCE_FIELD};
use crate::sink::tantivy::KEY_FIELD;
use crate::sink::{content_hash, Record};

/// A fast, non-keyed hasher for the audit's big in-memory maps (the keys come from deriver's own
/// targets; collisions only cost probing).
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Key → content hash of the documents of `searcher` whose key passes `filter` (fast fields
/// only: each segment's key dictionary is read once, in order).
pub(super) fn scan_hashes(searcher: &tantivy::Searcher, filter: &KeyFilter, cap: usize) -> Result<FastMap<String, Doc>> {
    let mut docs = FastMap::default();
    if matches!(filter, KeyFilter::Sample(s) if s.is_all()) {
        docs.reserve(searcher.num_docs().min(cap as u64) as usize);
    }
    for seg in searcher.segment_readers() {
        let ff = seg.fast_fields();
        let keys = ff.str(KEY_FIELD)?.ok_or_else(|| Error::fatal("the index has no _key column"))?;
        let hashes = ff.u64(HASH_FIELD)?;
        let dict = keys.dictionary();
        let mut terms: Vec<Option<String>> = Vec::with_capacity(dict.num_terms());
        let mut stream = dict.stream()?;
        while stream.advance() {
            let k = std::str::from_utf8(stream.key()).ok().filter(|k| filter.contains(k)).map(str::to_string);
            terms.push(k);
        }
        for doc in seg.doc_ids_alive() {
            let Some(ord) = keys.term_ords(doc).next() else { continue };
            if let Some(Some(k)) = terms.get(ord as usize) {
                if docs.len() >= cap {
                    return Ok(docs);
                }
                docs.insert(k.clone(), Doc { hash: hashes.first(doc).unwrap_or(0), compared: false });
            }
        }
    }
    Ok(docs)
}

/// A search document as the audit knows it: its content hash, and whether a record was
/// compared with it (documents no record was compared with are extras).
pub(super) struct Doc {
    hash: u64,
    pub(super) compared: bool,
}

pub(super) struct Search {
    pub(super) label: String,
    pub(super) docs: FastMap<String, Doc>,
    pub(super) searcher: tantivy::Searcher,
    pub(super) target: crate::pipeline::SearchTarget,
    pub(super) id_pos: usize,
}

impl Search {
    pub(super) fn held(&mut self, key: &str, record: Option<&Record>) -> Held {
        match (self.docs.get_mut(key), record) {
            (None, None) => Held::Same,
            (None, Some(_)) => Held::Absent,
            (Some(d), None) => {
                d.compared = true;
                Held::Different
            }
            (Some(d), Some(r)) => {
                d.compared = true;
                if d.hash == content_hash(&r.json) {
                    Held::Same
                } else {
                    Held::Different
                }
            }
        }
    }

    /// The stored document of a key, for diffs (without `_lsn` and `_version`: audits compare
    /// values only).
    pub(super) fn stored(&self, key: &str) -> Option<serde_json::Map<String, Value>> {
        let schema = self.searcher.schema();
        let field = schema.get_field(KEY_FIELD).ok()?;
        let src = schema.get_field(SOURCE_FIELD).ok()?;
        let q = tantivy::query::TermQuery::new(tantivy::Term::from_field_text(field, key), tantivy::schema::IndexRecordOption::Basic);
        let top = self.searcher.search(&q, &tantivy::collector::TopDocs::with_limit(1).order_by_score()).ok()?;
        let (_, addr) = top.first()?;
        let doc: tantivy::TantivyDocument = self.searcher.doc(*addr).ok()?;
        let mut stored: serde_json::Map<String, Value> = serde_json::from_str(doc.get_first(src)?.as_str()?).ok()?;
        for f in crate::pipeline::PROVENANCE_FIELDS {
            stored.shift_remove(f);
        }
        Some(stored)
    }

    pub(super) fn expected_stored(&self, r: &Record) -> Option<serde_json::Map<String, Value>> {
        let id = r.texts.get(self.id_pos).cloned().flatten()?;
        let schema = build_schema(&self.target);
        let doc = DocBuilder::new(&schema, &self.target).build(&id, &r.value).ok()?;
        let src = schema.get_field(SOURCE_FIELD).ok()?;
        serde_json::from_str(doc.get_first(src)?.as_str()?).ok()
    }
}
