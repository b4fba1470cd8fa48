//! The order of search ids ([`cmp_ids`]: integer ids by value, then other ids by bytes), and
//! per segment the rank of each document's id in that order, cached across searches.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tantivy::index::{InvertedIndexReader, SegmentId};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocSet, Searcher, SegmentReader, TERMINATED};

/// The order of search ids: ids that are integers in canonical decimal form (`-?[1-9][0-9]*` or
/// `0`) by value, of any length, before every other id; other ids by bytes. Consistent with
/// equality (distinct ids never compare equal), so it is a total order.
pub fn cmp_ids(a: &[u8], b: &[u8]) -> Ordering {
    fn int(s: &[u8]) -> Option<(bool, &[u8])> {
        let (neg, digits) = match s.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, s),
        };
        let canonical = match digits {
            [] => false,
            [b'0'] => !neg,
            [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
        };
        canonical.then_some((neg, digits))
    }
    match (int(a), int(b)) {
        (Some((an, ad)), Some((bn, bd))) => {
            let magnitude = ad.len().cmp(&bd.len()).then_with(|| ad.cmp(bd));
            match (an, bn) {
                (false, false) => magnitude,
                (true, true) => magnitude.reverse(),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The ids of one segment in [`cmp_ids`] order (segments never change, so this is cached).
#[derive(Debug, Default)]
pub struct IdOrder {
    /// Document → rank of its `_id` among the segment's ids (`u32::MAX`: no id).
    pub by_doc: Vec<u32>,
    /// Rank → ordinal of the `_id` term in the segment's dictionary.
    pub by_rank: Vec<u32>,
}

impl IdOrder {
    /// The id of rank `rank`, appended to `out` (nothing for an unknown rank).
    pub(super) fn id_bytes(&self, dict: &InvertedIndexReader, rank: u32, out: &mut Vec<u8>) -> std::io::Result<()> {
        if let Some(ord) = self.by_rank.get(rank as usize) {
            dict.terms().ord_to_term(u64::from(*ord), out)?;
        }
        Ok(())
    }

    /// The position of `id` in this order: `2 * rank` when the segment has it, else the odd
    /// number just before the rank of the first greater id.
    pub(super) fn pos(&self, dict: &InvertedIndexReader, id: &str) -> std::io::Result<Pos> {
        let (mut lo, mut hi) = (0usize, self.by_rank.len());
        let mut buf = Vec::new();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            buf.clear();
            self.id_bytes(dict, mid as u32, &mut buf)?;
            match cmp_ids(&buf, id.as_bytes()) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(dict_pos(Some(mid as u64), 0)),
            }
        }
        Ok(dict_pos(None, lo as u64))
    }
}

pub type IdOrds = Arc<IdOrder>;

/// A cache of [`IdOrds`] by segment, shared by all searches.
#[derive(Default)]
pub struct IdOrdCache {
    entries: Mutex<HashMap<SegmentId, (String, IdOrds)>>,
}

impl IdOrdCache {
    /// The id ordinals of every segment of `searcher`, in segment order. Entries of segments of
    /// this index that the searcher no longer has are dropped.
    pub fn for_searcher(&self, index: &str, searcher: &Searcher, id_field: Field) -> tantivy::Result<Vec<IdOrds>> {
        let mut out = Vec::new();
        let mut live = HashSet::new();
        for seg in searcher.segment_readers() {
            let sid = seg.segment_id();
            live.insert(sid);
            let cached = self.entries.lock().ok().and_then(|m| m.get(&sid).map(|(_, o)| o.clone()));
            let ords = match cached {
                Some(o) if o.by_doc.len() == seg.max_doc() as usize => o,
                _ => {
                    let o = Arc::new(build_id_ords(seg, id_field)?);
                    if let Ok(mut m) = self.entries.lock() {
                        m.insert(sid, (index.to_string(), o.clone()));
                    }
                    o
                }
            };
            out.push(ords);
        }
        if let Ok(mut m) = self.entries.lock() {
            m.retain(|sid, (name, _)| name != index || live.contains(sid));
        }
        Ok(out)
    }
}

pub(super) fn build_id_ords(seg: &SegmentReader, id_field: Field) -> tantivy::Result<IdOrder> {
    let inv = seg.inverted_index(id_field)?;
    // The dictionary is in byte order: read every term, re-sort their ordinals in id order.
    let mut bytes: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    let mut stream = inv.terms().stream()?;
    while stream.advance() {
        bytes.extend_from_slice(stream.key());
        ends.push(bytes.len());
    }
    let term = |ord: usize| &bytes[if ord == 0 { 0 } else { ends[ord - 1] }..ends[ord]];
    let n = u32::try_from(ends.len()).unwrap_or(u32::MAX - 1);
    let mut by_rank: Vec<u32> = (0..n).collect();
    // Stable, and byte order already is the order of the ids that are not integers.
    by_rank.sort_by(|a, b| cmp_ids(term(*a as usize), term(*b as usize)));
    let mut rank_of = vec![u32::MAX - 1; by_rank.len()];
    for (rank, ord) in by_rank.iter().enumerate() {
        rank_of[*ord as usize] = rank as u32;
    }
    let mut by_doc = vec![u32::MAX; seg.max_doc() as usize];
    let mut stream = inv.terms().stream()?;
    while stream.advance() {
        let rank = usize::try_from(stream.term_ord()).ok().and_then(|o| rank_of.get(o)).copied().unwrap_or(u32::MAX - 1);
        let info = stream.value().clone();
        let mut postings = inv.read_postings_from_terminfo(&info, IndexRecordOption::Basic)?;
        let mut doc = postings.doc();
        while doc != TERMINATED {
            if let Some(slot) = by_doc.get_mut(doc as usize) {
                *slot = rank;
            }
            doc = postings.advance();
        }
    }
    Ok(IdOrder { by_doc, by_rank })
}

/// A position in a segment's order: `2 * ordinal` for a value present in the segment, an odd
/// number between two ordinals for a cursor value the segment does not hold.
pub(super) type Pos = i128;

/// The position of `key` in a sorted dictionary given its exact ordinal (if present) and the
/// ordinal of the first greater term.
pub(super) fn dict_pos(exact: Option<u64>, next: u64) -> Pos {
    match exact {
        Some(o) => 2 * o as Pos,
        None => 2 * next as Pos - 1,
    }
}
