//! Which segments of a search index generation tantivy merges, and how big a merge may get.
//!
//! tantivy's log merge policy groups segments by document count and merges a group once it has
//! eight members, whatever their size; as an index grows, its top group ends up being most of the
//! index, so now and then one merge reads all of it. A merge reads its inputs through memory maps:
//! every page of every input counts in deriver's RSS (and in a container's memory) until the merge
//! ends. Measured in the benchmark: a merge of the top group of an 810k-document index took RSS
//! from 240 MiB to 578 MiB during catch-up, and to 660 MiB during a million-row transaction, for the
//! length of the merge. So a merge here reads at most [`MergePolicy::budget`] bytes of segments:
//! 64 MiB, or an eighth of the segments considered, whichever is larger. The floor keeps small
//! indexes in few segments; the eighth keeps a big index in about 8 to 16 large segments (each
//! between half the budget and the budget) instead of hundreds of small ones: each segment costs
//! every search and every commit a little.
//!
//! * A segment larger than half the budget no longer takes part in size-class merges (two of
//!   them would exceed it). It is rewritten alone once more than half of its documents are deleted
//!   (an update deletes the old document where it is), so deleted documents do not pile up.
//! * Size classes come from tantivy's [`LogMergePolicy`] over the other segments, with a first class
//!   of 1,000 documents; a class over the budget is merged in pieces that each fit in it. A class
//!   holding a segment that is more than half deleted is merged too, even when it is not full.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tantivy::index::{SegmentComponent, SegmentId};
use tantivy::indexer::{LogMergePolicy, MergeCandidate, MergePolicy as _};
use tantivy::SegmentMeta;

/// Segments below this many documents count as one size class when merging. Streaming commits a
/// small segment every batch (tens to hundreds of documents); with tantivy's default class of
/// 10,000 documents, every merge of eight small segments rewrites the growing one of up to 10,000
/// documents again, a merge load that took half a core under steady churn and delayed commits.
/// With a class of 1,000, documents are rewritten a few times on their way up, not dozens.
const MIN_MERGE_LAYER_DOCS: u32 = 1_000;

/// The smallest merge budget, in bytes of input segments.
const MIN_MERGE_BYTES: u64 = 64 << 20;

/// A merge may read up to this fraction (1/n) of the segments considered, when that is more than
/// [`MIN_MERGE_BYTES`].
const MERGE_INDEX_FRACTION: u64 = 8;

/// Past this share of deleted documents, a segment is rewritten (alone when it is too large for
/// size-class merges, else with its class).
const REWRITE_DELETED_SHARE: f64 = 0.5;

/// The segment files whose size a merge reads (the delete bitset is small and changes per commit).
const COMPONENTS: [SegmentComponent; 6] = [
    SegmentComponent::Postings,
    SegmentComponent::Positions,
    SegmentComponent::Terms,
    SegmentComponent::Store,
    SegmentComponent::FastFields,
    SegmentComponent::FieldNorms,
];

/// Remembered segment sizes beyond which the memo is cleared (segments are immutable, so a
/// size never changes; merged-away segments just stop being asked about).
const MAX_REMEMBERED: usize = 4_096;

/// The merge policy of every index writer (module docs).
#[derive(Debug)]
pub struct MergePolicy {
    log: LogMergePolicy,
    /// The generation directory, where segment files are measured.
    root: PathBuf,
    /// Bytes of each segment measured so far.
    sizes: Mutex<HashMap<SegmentId, u64>>,
}

impl MergePolicy {
    pub fn new(root: &Path) -> MergePolicy {
        let mut log = LogMergePolicy::default();
        log.set_min_layer_size(MIN_MERGE_LAYER_DOCS);
        log.set_del_docs_ratio_before_merge(REWRITE_DELETED_SHARE as f32);
        MergePolicy { log, root: root.to_path_buf(), sizes: Mutex::default() }
    }

    /// The most bytes of input segments one merge may read, for segments totalling `total` bytes.
    pub fn budget(total: u64) -> u64 {
        MIN_MERGE_BYTES.max(total / MERGE_INDEX_FRACTION)
    }

    /// The bytes of a segment's files on disk (a file that cannot be read counts as empty).
    fn size(&self, segment: &SegmentMeta) -> u64 {
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&size) = sizes.get(&segment.id()) {
            return size;
        }
        let size = COMPONENTS.iter().filter_map(|c| std::fs::metadata(self.root.join(segment.relative_path(c.clone()))).ok()).map(|m| m.len()).sum();
        if sizes.len() >= MAX_REMEMBERED {
            sizes.clear();
        }
        sizes.insert(segment.id(), size);
        size
    }

    /// The merges to start among `segments`, whose sizes in bytes `size` gives.
    fn plan(&self, segments: &[SegmentMeta], size: impl Fn(&SegmentMeta) -> u64) -> Vec<MergeCandidate> {
        let sized: HashMap<SegmentId, u64> = segments.iter().map(|s| (s.id(), size(s))).collect();
        let budget = MergePolicy::budget(sized.values().sum());
        let mut merges = Vec::new();
        let mut classed = Vec::new();
        for segment in segments {
            if sized[&segment.id()] <= budget / 2 {
                classed.push(segment.clone());
            } else if segment.max_doc() > 0 && f64::from(segment.num_deleted_docs()) / f64::from(segment.max_doc()) > REWRITE_DELETED_SHARE {
                merges.push(MergeCandidate(vec![segment.id()]));
            }
        }
        for MergeCandidate(class) in self.log.compute_merge_candidates(&classed) {
            if class.iter().map(|id| sized[id]).sum::<u64>() <= budget {
                merges.push(MergeCandidate(class));
                continue;
            }
            let mut piece: Vec<SegmentId> = Vec::new();
            let mut bytes = 0;
            for id in class {
                if bytes + sized[&id] > budget && !piece.is_empty() {
                    if piece.len() > 1 {
                        merges.push(MergeCandidate(std::mem::take(&mut piece)));
                    }
                    piece.clear();
                    bytes = 0;
                }
                bytes += sized[&id];
                piece.push(id);
            }
            if piece.len() > 1 {
                merges.push(MergeCandidate(piece));
            }
        }
        merges
    }
}

impl tantivy::indexer::MergePolicy for MergePolicy {
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        self.plan(segments, |s| self.size(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index, IndexWriter, TantivyDocument};

    const MIB: u64 = 1 << 20;

    fn segment(index: &Index, docs: u32, deleted: u32) -> SegmentMeta {
        let meta = index.new_segment_meta(SegmentId::generate_random(), docs);
        if deleted > 0 {
            meta.with_delete_meta(deleted, 1)
        } else {
            meta
        }
    }

    fn sizes_of(plan: &[MergeCandidate], sized: &HashMap<SegmentId, u64>) -> Vec<Vec<u64>> {
        plan.iter().map(|MergeCandidate(ids)| ids.iter().map(|id| sized[id] / MIB).collect()).collect()
    }

    #[test]
    fn merges_stay_within_the_budget_and_large_segments_are_rewritten_only_when_mostly_deleted() {
        let index = Index::create_in_ram(Schema::builder().build());
        let policy = MergePolicy::new(Path::new("/nonexistent"));
        // Eight segments of one size class (50,000 documents each), 20 MiB each: 160 MiB in all,
        // a budget of 64 MiB (the floor), so merges of three (60 MiB) and one of two.
        let mut segments: Vec<SegmentMeta> = (0..8).map(|_| segment(&index, 50_000, 0)).collect();
        let mut sized: HashMap<SegmentId, u64> = segments.iter().map(|s| (s.id(), 20 * MIB)).collect();
        // Over half the budget: left alone, unless more than half of it is deleted.
        let big = segment(&index, 300_000, 100_000);
        let mostly_deleted = segment(&index, 300_000, 200_000);
        sized.insert(big.id(), 100 * MIB);
        sized.insert(mostly_deleted.id(), 100 * MIB);
        segments.push(big);
        segments.push(mostly_deleted.clone());
        // Total 360 MiB: the budget is 64 MiB (an eighth is 45 MiB).
        assert_eq!(MergePolicy::budget(360 * MIB), 64 * MIB);
        let plan = policy.plan(&segments, |s| sized[&s.id()]);
        assert_eq!(plan[0].0, vec![mostly_deleted.id()], "a mostly deleted large segment is rewritten alone");
        assert_eq!(sizes_of(&plan[1..], &sized), vec![vec![20, 20, 20], vec![20, 20, 20], vec![20, 20]]);
        for MergeCandidate(ids) in &plan {
            assert!(ids.len() == 1 || ids.iter().map(|id| sized[id]).sum::<u64>() <= 64 * MIB);
        }

        // A large index: the budget grows to an eighth of it, and the same class merges whole.
        let huge = segment(&index, 4_000_000, 0);
        sized.insert(huge.id(), 2_000 * MIB);
        segments.push(huge);
        assert_eq!(MergePolicy::budget(2_360 * MIB), 295 * MIB);
        let plan = policy.plan(&segments, |s| sized[&s.id()]);
        assert_eq!(sizes_of(&plan, &sized), vec![vec![100], vec![20; 8]]);
    }

    #[test]
    fn segment_sizes_are_the_bytes_of_their_files() {
        let mut builder = Schema::builder();
        let key = builder.add_text_field("_key", STRING);
        let dir = tempfile::tempdir().unwrap();
        let index = Index::create_in_dir(dir.path(), builder.build()).unwrap();
        let mut w: IndexWriter<TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for k in 0..1_000 {
            w.add_document(doc!(key => format!("key-{k}"))).unwrap();
        }
        w.commit().unwrap();
        let metas = index.searchable_segment_metas().unwrap();
        assert_eq!(metas.len(), 1);
        let id = metas[0].id().uuid_string();
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&id) && !e.file_name().to_string_lossy().ends_with(".del"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(on_disk > 1_000, "{on_disk} bytes");
        assert_eq!(MergePolicy::new(dir.path()).size(&metas[0]), on_disk);
    }
}
