//! An index's generation directories (`<index.dir>/<index>/gen-<n>`, the live one named by
//! `CURRENT`, the highest number ever used by `LAST`): finding, numbering, opening, switching and
//! collecting them, and reading the checkpoint a generation's last commit carries.

use std::path::{Path, PathBuf};

use tantivy::Index;

use super::directory::DurableDirectory;
use super::schema::build_schema;
use crate::error::{Error, Result};
use crate::pipeline::SearchTarget;
use crate::sink::Checkpoint;

pub(super) fn read_generation(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("CURRENT")).ok()?.trim().parse().ok()
}

pub(super) fn generation_dir(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("gen-{gen:06}"))
}

/// The directory an index generation's writer needs ([`DurableDirectory`]).
pub(super) fn durable_directory(path: &Path) -> Result<DurableDirectory> {
    DurableDirectory::open(path).map_err(|e| Error::from(tantivy::TantivyError::from(e)))
}

/// Opens an index generation for writing.
pub(super) fn open_for_writing(path: &Path) -> Result<Index> {
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

pub(super) fn payload_checkpoint(index: &Index) -> Result<Option<Checkpoint>> {
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

#[cfg(test)]
mod tests {
    use tantivy::schema::Schema;
    use tantivy::Index;

    /// A generation written with another field layout (here: text fields stored in tantivy as
    /// well as in `_source`, as deriver did before) is recognised, so `plan` says `rebuild`.
    #[test]
    fn a_generation_with_another_field_layout_is_told_apart() {
        let target = super::super::schema::tests::target();
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
}
