//! Ranking of search hits: the `sort` spec, the opaque `cursor` for deep paging, and the
//! collector that counts matches, counts facet values and keeps the best `offset + limit` hits.
//!
//! Hits are ordered by the sort keys, then by the document's search id (`_id`, in [`cmp_ids`]
//! order: integer ids by value, 1, 2, … 10, 100, before any other id, other ids by bytes), so the
//! order is total and stable across index reloads, and a search without words (every score equal)
//! lists the documents of an index of integer ids in numeric order. A cursor holds the last hit's sort values and
//! id; the next page keeps only hits strictly after it (search-after), which stays correct while
//! documents come and go between pages.
//!
//! Within a segment, values are compared as the fast fields store them: numbers through tantivy's
//! order-preserving `u64` mapping (comparable across segments), keywords and ids by their
//! segment-local term ordinal (dictionaries are sorted, so ordinal order is byte order), ids by
//! their rank in the segment's id dictionary re-sorted in [`cmp_ids`] order; only the surviving
//! hits of each segment are turned into bytes for the final merge.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::index::InvertedIndexReader;
use tantivy::query::Weight;
use tantivy::schema::Field;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use super::id_order::{build_id_ords, dict_pos, Pos};
pub use super::id_order::{cmp_ids, IdOrdCache, IdOrder, IdOrds};
pub use super::sort::{Cursor, Ranked, RankedHit, SortKey, SortKind, SortSpec, SortValue, MAX_SORT_KEYS};

pub struct RankCollector {
    pub spec: Arc<SortSpec>,
    pub cursor: Option<Arc<Cursor>>,
    /// How many hits to keep (`offset + limit`).
    pub keep: usize,
    pub facet_fields: Vec<String>,
    pub id_field: Field,
    /// From [`IdOrdCache::for_searcher`], by segment ordinal.
    pub id_ords: Vec<IdOrds>,
    /// Matches counted exactly up to this many when the hits come from pruning scorers (beyond,
    /// the total is reported as "at least"): counting every match of a frequent word walks its
    /// whole posting lists, which the pruning scorers exist to avoid.
    pub total_cap: u64,
    /// Matches counted so far by the segments of this search (against `total_cap`).
    pub counted: std::sync::atomic::AtomicU64,
    /// On the pruned path: the bits of a score that `keep` hits of one segment already reach (0:
    /// none yet). No hit scoring below it can make the page, so later segments start their
    /// pruning there instead of from nothing.
    pub floor: std::sync::atomic::AtomicU32,
    /// A keyword field with a column: of the matches sharing a value of it, only the best ranked
    /// counts (as a hit, in `total` and in facets); matches without a value all count.
    pub distinct: Option<String>,
}

enum LocalKey {
    Score { desc: bool },
    Num { col: Option<Column<u64>>, desc: bool },
    Str { col: Option<StrColumn>, desc: bool },
}

impl LocalKey {
    fn desc(&self) -> bool {
        match self {
            LocalKey::Score { desc } | LocalKey::Num { desc, .. } | LocalKey::Str { desc, .. } => *desc,
        }
    }
}

#[derive(Clone)]
struct Cand {
    vals: Vec<Option<u64>>,
    score: Score,
    id: u32,
    doc: DocId,
}

struct LocalBound {
    vals: Vec<Option<Pos>>,
    score: Score,
    id: Pos,
}

fn cmp_missing_last(a: Option<Pos>, b: Option<Pos>, desc: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            if desc {
                y.cmp(&x)
            } else {
                x.cmp(&y)
            }
        }
    }
}

/// The largest score below `s` (pruning keeps only scores strictly above its threshold).
fn next_down(s: Score) -> Score {
    if s.is_nan() || s == Score::NEG_INFINITY {
        return Score::MIN;
    }
    if s == 0.0 {
        return -Score::from_bits(1);
    }
    let bits = s.to_bits();
    Score::from_bits(if s > 0.0 { bits - 1 } else { bits + 1 })
}

fn cmp_score(a: Score, b: Score, desc: bool) -> Ordering {
    let o = a.total_cmp(&b);
    if desc {
        o.reverse()
    } else {
        o
    }
}

fn pos(v: Option<u64>) -> Option<Pos> {
    v.map(|v| 2 * v as Pos)
}

fn cmp_cands(keys: &[LocalKey], a: &Cand, b: &Cand) -> Ordering {
    for (i, k) in keys.iter().enumerate() {
        let o = match k {
            LocalKey::Score { desc } => cmp_score(a.score, b.score, *desc),
            _ => cmp_missing_last(pos(a.vals[i]), pos(b.vals[i]), k.desc()),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.id.cmp(&b.id)
}

fn cmp_to_bound(keys: &[LocalKey], a: &Cand, b: &LocalBound) -> Ordering {
    for (i, k) in keys.iter().enumerate() {
        let o = match k {
            LocalKey::Score { desc } => cmp_score(a.score, b.score, *desc),
            _ => cmp_missing_last(pos(a.vals[i]), b.vals[i], k.desc()),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    (2 * a.id as Pos).cmp(&b.id)
}

fn str_pos(col: &StrColumn, s: &str) -> std::io::Result<Pos> {
    use tantivy::columnar::TermOrdHit;
    Ok(match col.dictionary().term_ord_or_next(s.as_bytes())? {
        TermOrdHit::Exact(o) => dict_pos(Some(o), 0),
        TermOrdHit::Next(o) => dict_pos(None, o.min(i64::MAX as u64)),
    })
}

pub struct SegCollector {
    keep: usize,
    count: u64,
    segment_ord: SegmentOrdinal,
    keys: Vec<LocalKey>,
    id_ords: IdOrds,
    id_dict: Arc<InvertedIndexReader>,
    bound: Option<LocalBound>,
    cands: Vec<Cand>,
    worst: Option<Cand>,
    facets: Vec<(Option<StrColumn>, HashMap<u64, u64>)>,
    scratch: Vec<u64>,
    distinct: Option<SegDistinct>,
}

/// The best match of each value of the `distinct` field in one segment (by term ordinal).
struct SegDistinct {
    col: Option<StrColumn>,
    groups: HashMap<u64, Cand>,
}

/// The best match of one `distinct` value in a segment, with its facet values.
pub struct Group {
    value: String,
    hit: RankedHit,
    facets: Vec<Vec<String>>,
}

impl Collector for RankCollector {
    type Fruit = Ranked;
    type Child = SegCollector;

    fn for_segment(&self, segment_ord: SegmentOrdinal, segment: &SegmentReader) -> tantivy::Result<SegCollector> {
        let ff = segment.fast_fields();
        let mut keys = Vec::new();
        for k in &self.spec.keys {
            keys.push(match &k.kind {
                SortKind::Score => LocalKey::Score { desc: k.desc },
                SortKind::Field { name, keyword: true } => LocalKey::Str { col: ff.str(name)?, desc: k.desc },
                SortKind::Field { name, keyword: false } => LocalKey::Num { col: ff.u64_lenient(name)?.map(|(c, _)| c), desc: k.desc },
            });
        }
        let id_dict = segment.inverted_index(self.id_field)?;
        let id_ords = match self.id_ords.get(segment_ord as usize) {
            Some(o) if o.by_doc.len() == segment.max_doc() as usize => o.clone(),
            _ => Arc::new(build_id_ords(segment, self.id_field)?),
        };
        let bound = match &self.cursor {
            None => None,
            Some(c) => {
                let mut vals = Vec::new();
                let mut score = 0.0;
                for (k, v) in keys.iter().zip(&c.values) {
                    vals.push(match (k, v) {
                        (LocalKey::Score { .. }, SortValue::Score(bits)) => {
                            score = f32::from_bits(*bits);
                            None
                        }
                        (_, SortValue::Missing) => None,
                        (LocalKey::Num { .. }, SortValue::Num(n)) => Some(2 * *n as Pos),
                        (LocalKey::Str { col: Some(col), .. }, SortValue::Str(s)) => Some(str_pos(col, s)?),
                        // The segment has no value at all for this field: every value is past it.
                        (LocalKey::Str { col: None, .. }, SortValue::Str(_)) => Some(-1),
                        _ => None,
                    });
                }
                Some(LocalBound { vals, score, id: id_ords.pos(&id_dict, &c.id)? })
            }
        };
        let mut facets = Vec::new();
        for name in &self.facet_fields {
            facets.push((ff.str(name)?, HashMap::new()));
        }
        let distinct = match &self.distinct {
            Some(name) => Some(SegDistinct { col: ff.str(name)?, groups: HashMap::new() }),
            None => None,
        };
        Ok(SegCollector {
            keep: self.keep,
            count: 0,
            segment_ord,
            keys,
            id_ords,
            id_dict,
            bound,
            cands: Vec::new(),
            worst: None,
            facets,
            scratch: Vec::new(),
            distinct,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    /// Sorted by score (descending) alone, without facets: the best hits come from tantivy's
    /// pruning scorers (block-max WAND on unions), which skip blocks that cannot beat the worst
    /// kept hit, and the total from counting without scoring, exactly up to `total_cap` matches
    /// over all segments. The hits are the same as visiting every match.
    fn collect_segment(&self, weight: &dyn Weight, segment_ord: u32, reader: &SegmentReader) -> tantivy::Result<tantivy::Result<SegFruit>> {
        let mut seg = self.for_segment(segment_ord, reader)?;
        let prunable = seg.facets.is_empty() && seg.distinct.is_none() && seg.keep > 0 && matches!(seg.keys.as_slice(), [LocalKey::Score { desc: true }]);
        if !prunable {
            match reader.alive_bitset() {
                Some(alive) => weight.for_each(reader, &mut |doc, score| {
                    if alive.is_alive(doc) {
                        seg.collect(doc, score);
                    }
                })?,
                None => weight.for_each(reader, &mut |doc, score| seg.collect(doc, score))?,
            }
            return Ok(seg.harvest_inner());
        }
        let budget = self.total_cap.saturating_sub(self.counted.load(std::sync::atomic::Ordering::Relaxed));
        let (count, capped) = count_up_to(weight, reader, budget)?;
        self.counted.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let alive = reader.alive_bitset();
        // Ties with a kept hit's score still compete (by id): thresholds sit just below it.
        let floor = Score::from_bits(self.floor.load(std::sync::atomic::Ordering::Relaxed));
        let start = if floor > 0.0 { next_down(floor) } else { Score::MIN };
        weight.for_each_pruning(start, reader, &mut |doc, score| {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                seg.collect(doc, score);
            }
            match &seg.worst {
                Some(w) => next_down(w.score).max(start),
                None => start,
            }
        })?;
        seg.count = count;
        let keep = seg.keep;
        let mut fruit = seg.harvest_inner();
        if let Ok(f) = fruit.as_mut() {
            f.capped = capped;
            // The segment's page is full: its worst hit's score is a floor for the others.
            if let Some(worst) = f.hits.last().filter(|h| f.hits.len() == keep && h.score > 0.0) {
                // Positive floats order as their bits do.
                self.floor.fetch_max(worst.score.to_bits(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(fruit)
    }

    fn merge_fruits(&self, fruits: Vec<tantivy::Result<SegFruit>>) -> tantivy::Result<Ranked> {
        let mut ranked = Ranked { facets: vec![HashMap::new(); self.facet_fields.len()], ..Default::default() };
        let mut best: HashMap<String, Group> = HashMap::new();
        for fruit in fruits {
            let mut fruit = fruit?;
            for g in fruit.groups.drain(..) {
                match best.entry(g.value.clone()) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(g);
                    }
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        if cmp_hits(&self.spec, &g.hit, &e.get().hit) == Ordering::Less {
                            e.insert(g);
                        }
                    }
                }
            }
            ranked.total += fruit.count;
            ranked.total_capped |= fruit.capped;
            ranked.hits.extend(fruit.hits);
            for (into, from) in ranked.facets.iter_mut().zip(fruit.facets) {
                for (k, n) in from {
                    *into.entry(k).or_insert(0) += n;
                }
            }
        }
        // Each distinct value counts once, by its best match; the cursor applies after that, so a
        // value shown on an earlier page never comes back with a worse match.
        ranked.total += best.len() as u64;
        let bound = self.cursor.as_deref().map(|c| cursor_hit(&self.spec, c));
        for g in best.into_values() {
            for (into, values) in ranked.facets.iter_mut().zip(g.facets) {
                for v in values {
                    *into.entry(v).or_insert(0) += 1;
                }
            }
            if bound.as_ref().is_none_or(|b| cmp_hits(&self.spec, &g.hit, b) == Ordering::Greater) {
                ranked.hits.push(g.hit);
            }
        }
        ranked.hits.sort_by(|a, b| cmp_hits(&self.spec, a, b));
        ranked.hits.truncate(self.keep);
        Ok(ranked)
    }
}

/// Live matches of `weight` in a segment, counted up to `budget`: (count, whether it stopped
/// there, leaving matches uncounted).
fn count_up_to(weight: &dyn Weight, reader: &SegmentReader, budget: u64) -> tantivy::Result<(u64, bool)> {
    use tantivy::{DocSet, TERMINATED};
    let mut scorer = weight.scorer(reader, 1.0)?;
    let alive = reader.alive_bitset();
    let mut n = 0u64;
    let mut doc = scorer.doc();
    while doc != TERMINATED {
        if alive.is_none_or(|a| a.is_alive(doc)) {
            if n == budget {
                return Ok((n, true));
            }
            n += 1;
        }
        doc = scorer.advance();
    }
    Ok((n, false))
}

/// Where a cursor points, as a hit (to compare hits with it by [`cmp_hits`]).
fn cursor_hit(spec: &SortSpec, c: &Cursor) -> RankedHit {
    let score = spec
        .keys
        .iter()
        .zip(&c.values)
        .find_map(|(k, v)| match (&k.kind, v) {
            (SortKind::Score, SortValue::Score(bits)) => Some(f32::from_bits(*bits)),
            _ => None,
        })
        .unwrap_or(0.0);
    RankedHit { addr: DocAddress::new(0, 0), score, values: c.values.clone(), id: c.id.clone() }
}

/// The global order of hits from different segments.
pub fn cmp_hits(spec: &SortSpec, a: &RankedHit, b: &RankedHit) -> Ordering {
    for (i, k) in spec.keys.iter().enumerate() {
        let o = match k.kind {
            SortKind::Score => cmp_score(a.score, b.score, k.desc),
            SortKind::Field { .. } => {
                let (x, y) = (&a.values[i], &b.values[i]);
                match (x, y) {
                    (SortValue::Missing, SortValue::Missing) => Ordering::Equal,
                    (SortValue::Missing, _) => Ordering::Greater,
                    (_, SortValue::Missing) => Ordering::Less,
                    _ => {
                        let o = match (x, y) {
                            (SortValue::Num(p), SortValue::Num(q)) => p.cmp(q),
                            (SortValue::Str(p), SortValue::Str(q)) => p.cmp(q),
                            _ => Ordering::Equal,
                        };
                        if k.desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    cmp_ids(a.id.as_bytes(), b.id.as_bytes())
}

pub struct SegFruit {
    count: u64,
    /// Counting stopped at the budget: `count` is a lower bound.
    capped: bool,
    hits: Vec<RankedHit>,
    facets: Vec<HashMap<String, u64>>,
    /// With `distinct`: the best match of each value in this segment.
    groups: Vec<Group>,
}

impl SegCollector {
    fn compact(&mut self) {
        let keys = &self.keys;
        self.cands.sort_by(|a, b| cmp_cands(keys, a, b));
        self.cands.truncate(self.keep);
        if self.cands.len() == self.keep {
            self.worst = self.cands.last().cloned();
        }
    }

    fn hit(&self, c: &Cand) -> tantivy::Result<RankedHit> {
        let mut values = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            values.push(match (k, c.vals[i]) {
                (LocalKey::Score { .. }, _) => SortValue::Score(c.score.to_bits()),
                (_, None) => SortValue::Missing,
                (LocalKey::Num { .. }, Some(v)) => SortValue::Num(v),
                (LocalKey::Str { col: Some(col), .. }, Some(ord)) => {
                    let mut s = String::new();
                    col.ord_to_str(ord, &mut s)?;
                    SortValue::Str(s)
                }
                (LocalKey::Str { col: None, .. }, Some(_)) => SortValue::Missing,
            });
        }
        let mut bytes = Vec::new();
        self.id_ords.id_bytes(&self.id_dict, c.id, &mut bytes)?;
        Ok(RankedHit { addr: DocAddress::new(self.segment_ord, c.doc), score: c.score, values, id: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// The best match of each distinct value, with the facet values it counts under.
    fn groups(&mut self) -> tantivy::Result<Vec<Group>> {
        let Some(d) = self.distinct.take() else { return Ok(Vec::new()) };
        let Some(col) = &d.col else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(d.groups.len());
        for (ord, c) in &d.groups {
            let mut value = String::new();
            col.ord_to_str(*ord, &mut value)?;
            let mut facets = Vec::with_capacity(self.facets.len());
            for (fcol, _) in &self.facets {
                let mut values: Vec<String> = Vec::new();
                if let Some(fcol) = fcol {
                    let mut ords: Vec<u64> = fcol.term_ords(c.doc).collect();
                    ords.sort_unstable();
                    ords.dedup();
                    for o in ords {
                        let mut s = String::new();
                        if fcol.ord_to_str(o, &mut s)? {
                            values.push(s);
                        }
                    }
                }
                facets.push(values);
            }
            out.push(Group { value, hit: self.hit(c)?, facets });
        }
        Ok(out)
    }

    fn harvest_inner(mut self) -> tantivy::Result<SegFruit> {
        self.compact();
        let groups = self.groups()?;
        let mut hits = Vec::with_capacity(self.cands.len());
        for c in &self.cands {
            hits.push(self.hit(c)?);
        }
        let mut facets = Vec::with_capacity(self.facets.len());
        for (col, counts) in &self.facets {
            let mut named = HashMap::with_capacity(counts.len());
            if let Some(col) = col {
                for (ord, n) in counts {
                    let mut s = String::new();
                    if col.ord_to_str(*ord, &mut s)? {
                        named.insert(s, *n);
                    }
                }
            }
            facets.push(named);
        }
        Ok(SegFruit { count: self.count, capped: false, hits, facets, groups })
    }
}

impl SegCollector {
    fn cand(&self, doc: DocId, score: Score) -> Cand {
        let vals: Vec<Option<u64>> = self
            .keys
            .iter()
            .map(|k| match k {
                LocalKey::Score { .. } => None,
                LocalKey::Num { col, .. } => col.as_ref().and_then(|c| c.first(doc)),
                LocalKey::Str { col, .. } => col.as_ref().and_then(|c| c.ords().first(doc)),
            })
            .collect();
        let id = self.id_ords.by_doc.get(doc as usize).copied().unwrap_or(u32::MAX);
        Cand { vals, score, id, doc }
    }
}

impl SegmentCollector for SegCollector {
    type Fruit = tantivy::Result<SegFruit>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if let Some(ord) = self.distinct.as_ref().and_then(|d| d.col.as_ref()).and_then(|c| c.ords().first(doc)) {
            let cand = self.cand(doc, score);
            let keys = &self.keys;
            let Some(d) = self.distinct.as_mut() else { return };
            match d.groups.entry(ord) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(cand);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if cmp_cands(keys, &cand, e.get()) == Ordering::Less {
                        e.insert(cand);
                    }
                }
            }
            return;
        }
        self.count += 1;
        for (col, counts) in &mut self.facets {
            if let Some(col) = col {
                self.scratch.clear();
                self.scratch.extend(col.term_ords(doc));
                self.scratch.sort_unstable();
                self.scratch.dedup();
                for ord in &self.scratch {
                    *counts.entry(*ord).or_insert(0) += 1;
                }
            }
        }
        if self.keep == 0 {
            return;
        }
        // Sorted by score first: a worse score than the worst kept hit cannot enter, whatever
        // the other keys (no candidate is built for the bulk of the matches).
        if let (Some(LocalKey::Score { desc }), Some(w)) = (self.keys.first(), &self.worst) {
            if cmp_score(score, w.score, *desc) == Ordering::Greater {
                return;
            }
        }
        let cand = self.cand(doc, score);
        if let Some(b) = &self.bound {
            if cmp_to_bound(&self.keys, &cand, b) != Ordering::Greater {
                return;
            }
        }
        if let Some(w) = &self.worst {
            if cmp_cands(&self.keys, &cand, w) != Ordering::Less {
                return;
            }
        }
        self.cands.push(cand);
        if self.cands.len() >= (2 * self.keep).max(64) {
            self.compact();
        }
    }

    fn harvest(self) -> Self::Fruit {
        self.harvest_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SearchTarget;
    use tantivy::schema::IndexRecordOption;

    fn target() -> SearchTarget {
        crate::sink::tantivy::schema::tests::target()
    }

    #[test]
    fn sort_specs() {
        let t = target();
        let s = SortSpec::parse(None, &t).unwrap();
        assert_eq!(s.keys, vec![SortKey { kind: SortKind::Score, desc: true }]);
        let s = SortSpec::parse(Some(&["n:desc".into(), "_score".into()]), &t).unwrap();
        assert_eq!(s.keys[0], SortKey { kind: SortKind::Field { name: "n".into(), keyword: false }, desc: true });
        assert_eq!(s.keys[1], SortKey { kind: SortKind::Score, desc: true });
        assert!(!SortSpec::parse(Some(&["n".into()]), &t).unwrap().keys[0].desc);
        for bad in ["title", "nope", "n:up", "at"] {
            let e = SortSpec::parse(Some(&[bad.to_string()]), &t).unwrap_err();
            assert_eq!(e.code, "invalid_sort", "{bad}");
        }
        assert!(SortSpec::parse(Some(&["n".into(), "n:desc".into()]), &t).is_err());
    }

    impl RankCollector {
        /// The same request, counters reset.
        fn clone_spec(&self) -> RankCollector {
            RankCollector {
                spec: self.spec.clone(),
                cursor: self.cursor.clone(),
                keep: self.keep,
                facet_fields: self.facet_fields.clone(),
                id_field: self.id_field,
                id_ords: self.id_ords.clone(),
                total_cap: self.total_cap,
                counted: Default::default(),
                floor: Default::default(),
                distinct: self.distinct.clone(),
            }
        }
    }

    /// The pruned path (score order, no facets) returns exactly the order of visiting every
    /// match — score descending, id ascending on ties — page after page, with deletes.
    #[test]
    fn pruned_score_ranking_equals_the_full_order_across_pages() {
        use tantivy::schema::{Schema, STORED, STRING, TEXT};
        let mut b = Schema::builder();
        let id = b.add_text_field("_id", STRING | STORED);
        let body = b.add_text_field("body", TEXT);
        let index = tantivy::Index::create_in_ram(b.build());
        let mut w: tantivy::IndexWriter<tantivy::TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        w.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        // Few distinct texts: many exact score ties, and ids that decrease along the documents,
        // so a tie found later always wins over the kept ones; several segments; some deletes.
        for n in 0..3000u32 {
            let text = format!("{} filler {}", "w ".repeat(1 + (n % 4) as usize), "x ".repeat((n % 7) as usize));
            w.add_document(tantivy::doc!(id => format!("d{:05}", 9999 - n), body => text)).unwrap();
            if n % 900 == 899 {
                w.commit().unwrap();
            }
        }
        for n in (0..3000u32).step_by(13) {
            w.delete_term(tantivy::Term::from_field_text(id, &format!("d{:05}", 9999 - n)));
        }
        w.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        assert!(searcher.segment_readers().len() >= 3);
        let query = tantivy::query::TermQuery::new(tantivy::Term::from_field_text(body, "w"), IndexRecordOption::WithFreqs);
        // The full order, from every match.
        let all = searcher.search(&query, &tantivy::collector::TopDocs::with_limit(10_000).order_by_score()).unwrap();
        let mut expected: Vec<(Score, String)> = all
            .iter()
            .map(|(score, addr)| {
                let doc: tantivy::TantivyDocument = searcher.doc(*addr).unwrap();
                (*score, tantivy::schema::Value::as_str(&doc.get_first(id).unwrap()).unwrap().to_string())
            })
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let spec = Arc::new(SortSpec { keys: vec![SortKey { kind: SortKind::Score, desc: true }] });
        let mut cursor: Option<Arc<Cursor>> = None;
        let mut got: Vec<(Score, String)> = Vec::new();
        loop {
            let c = RankCollector {
                spec: spec.clone(),
                cursor: cursor.clone(),
                keep: 7,
                facet_fields: Vec::new(),
                id_field: id,
                id_ords: Vec::new(),
                total_cap: u64::MAX,
                counted: Default::default(),
                floor: Default::default(),
                distinct: None,
            };
            let ranked = searcher.search(&query, &c).unwrap();
            if cursor.is_none() {
                assert_eq!(ranked.total, expected.len() as u64, "the total counts every live match");
                assert!(!ranked.total_capped);
                // A cap below the number of matches: the same hits, the total stops at the cap
                // (counted across segments, deleted documents not counted) and says so.
                for cap in [1u64, 899, 1000, expected.len() as u64 - 1] {
                    let capped = RankCollector { total_cap: cap, cursor: None, ..c.clone_spec() };
                    let r = searcher.search(&query, &capped).unwrap();
                    assert_eq!((r.total, r.total_capped), (cap, true), "cap {cap}");
                    assert_eq!(r.hits.iter().map(|h| &h.id).collect::<Vec<_>>(), ranked.hits.iter().map(|h| &h.id).collect::<Vec<_>>());
                }
                let exact = RankCollector { total_cap: expected.len() as u64, cursor: None, ..c.clone_spec() };
                let r = searcher.search(&query, &exact).unwrap();
                assert_eq!((r.total, r.total_capped), (expected.len() as u64, false), "a cap equal to the matches is exact");
            }
            let Some(last) = ranked.hits.last() else { break };
            cursor = Some(Arc::new(Cursor::after(&spec, last)));
            got.extend(ranked.hits.iter().map(|h| (h.score, h.id.clone())));
        }
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);
    }

    #[test]
    fn ids_order_integers_by_value_then_other_ids_by_bytes() {
        let sorted = ["-100", "-20", "-3", "0", "1", "2", "9", "10", "99", "100", "18446744073709551616", "", "-", "-0", "007", "1.5", "10a", "a", "b2", "é"];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(cmp_ids(a.as_bytes(), b.as_bytes()), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    /// The id order of a segment: ranks follow [`cmp_ids`], and a cursor id the segment does not
    /// hold falls between the right ranks.
    #[test]
    fn segments_rank_their_ids_in_id_order() {
        use tantivy::schema::{Schema, STORED, STRING};
        let mut b = Schema::builder();
        let id = b.add_text_field("_id", STRING | STORED);
        let index = tantivy::Index::create_in_ram(b.build());
        let mut w: tantivy::IndexWriter<tantivy::TantivyDocument> = index.writer_with_num_threads(1, 15_000_000).unwrap();
        for text in ["10", "x", "2", "100", "1"] {
            w.add_document(tantivy::doc!(id => text)).unwrap();
        }
        w.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let seg = searcher.segment_reader(0);
        let order = build_id_ords(seg, id).unwrap();
        let dict = seg.inverted_index(id).unwrap();
        // Documents in insertion order: 10, x, 2, 100, 1.
        assert_eq!(order.by_doc, [2, 4, 1, 3, 0]);
        let mut listed = Vec::new();
        for rank in 0..5 {
            let mut bytes = Vec::new();
            order.id_bytes(&dict, rank, &mut bytes).unwrap();
            listed.push(String::from_utf8(bytes).unwrap());
        }
        assert_eq!(listed, ["1", "2", "10", "100", "x"]);
        assert_eq!(order.pos(&dict, "10").unwrap(), 4);
        assert_eq!(order.pos(&dict, "0").unwrap(), -1);
        assert_eq!(order.pos(&dict, "3").unwrap(), 3);
        assert_eq!(order.pos(&dict, "1000").unwrap(), 7);
        assert_eq!(order.pos(&dict, "y").unwrap(), 9);
    }

    #[test]
    fn cursors_round_trip_and_check_their_sort() {
        let t = target();
        let spec = SortSpec::parse(Some(&["n:desc".into(), "_score".into()]), &t).unwrap();
        let hit =
            RankedHit { addr: DocAddress::new(0, 0), score: 1.25, values: vec![SortValue::Num(42), SortValue::Score(1.25f32.to_bits())], id: "x/é".into() };
        let c = Cursor::after(&spec, &hit);
        let text = c.encode();
        assert_eq!(Cursor::decode(&text, &spec).unwrap(), c);
        let other = SortSpec::parse(Some(&["n".into()]), &t).unwrap();
        assert_eq!(Cursor::decode(&text, &other).unwrap_err().code, "invalid_cursor");
        for junk in ["", "!!!", "eyJ4IjoxfQ", &"A".repeat(100_000)] {
            assert_eq!(Cursor::decode(junk, &spec).unwrap_err().code, "invalid_cursor");
        }
    }
}
