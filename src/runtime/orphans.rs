//! State that removed pipelines leave behind ("orphans"), found for `deriver status`, the
//! daemon's start-up warning and `deriver prune` (which removes it).
//!
//! What counts as an orphan, and why it can be attributed with certainty:
//! - **Search indexes**: a folder under `index.dir` whose name is an index name and that holds an
//!   index (`CURRENT`, `LAST` or `gen-NNNNNN`), but that no pipeline declares. `index.dir` belongs
//!   to one deployment (docs/operations.md), so everything in it is this deployment's.
//! - **Files**: `_ledger/<pipeline>.redb` (dependency ledger) and `_audit/<pipeline>.json` (last
//!   audit) of a pipeline no file declares.
//! - **Redis**: a pipeline's bookkeeping (`<prefix>:_meta:<pipeline>:…`, `<prefix>:_ledger:<pipeline>`)
//!   and the view keys its ledger lists. Several deployments may share a Redis prefix, so bookkeeping
//!   under the prefix is not enough: the daemon records in `<index.dir>/_state/redis_pipelines.json`
//!   each pipeline it ran with the owner epoch it claimed; a pipeline's Redis state is this
//!   deployment's only while that epoch is still the pipeline's current one (no process claimed it
//!   since). Other bookkeeping under the prefix is listed as `redis_unrecorded` and left alone.
//!   View keys are known only from the ledger (the key templates went with the file): keys that no
//!   ledger entry lists (there should be none) cannot be attributed and stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RedisConfig};
use crate::error::{Error, Result};
use crate::pipeline::{KeyTemplate, Pipeline, TemplatePart};
use crate::runtime::status::Shared;
use crate::sink::redis::{self as rsink, Keys, RedisConn};
use crate::status::StatusDoc;
pub use crate::status::{OrphanFile, OrphanIndex, OrphanRedis, Orphans};

impl Orphans {
    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty() && self.redis_pipelines.is_empty() && self.files.is_empty()
    }

    /// One line naming what `deriver prune` would remove (`None`: nothing).
    pub fn summary(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut parts: Vec<String> =
            self.indexes.iter().map(|i| format!("index `{}` ({}, {})", i.name, human_bytes(i.bytes), plural(i.generations.len(), "generation"))).collect();
        parts.extend(
            self.redis_pipelines.iter().map(|r| format!("Redis state of pipeline `{}` ({} with views)", r.name, plural(r.ledger_entries as usize, "record"))),
        );
        if !self.files.is_empty() {
            let bytes = self.files.iter().map(|f| f.bytes).sum();
            parts.push(format!("{} of removed pipelines ({})", plural(self.files.len(), "file"), human_bytes(bytes)));
        }
        Some(parts.join(", "))
    }

    /// The line about bookkeeping this deployment cannot attribute to itself (`None`: none).
    pub fn unrecorded_note(&self) -> Option<String> {
        (!self.redis_unrecorded.is_empty()).then(|| {
            let them = if self.redis_unrecorded.len() == 1 { "it" } else { "them" };
            format!(
                "Redis also holds the bookkeeping of {} that no file declares and that this deployment has no record of owning last \
                 (another deriver sharing redis.prefix may run {them}); left alone, see `deriver prune --help`",
                self.redis_unrecorded.iter().map(|n| format!("pipeline `{n}`")).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

pub fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if b < 1000 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// What is in use: the pipelines and indexes declared (and run), with their key templates.
#[derive(Debug, Default)]
pub struct Live {
    pub pipelines: BTreeSet<String>,
    pub indexes: BTreeSet<String>,
    /// (what the pipeline's view keys start with, a key template).
    templates: Vec<(String, KeyTemplate)>,
}

impl Live {
    pub fn of(cfg: &RedisConfig, defs: &[Pipeline]) -> Live {
        let mut live = Live::default();
        for d in defs {
            live.pipelines.insert(d.name.clone());
            live.indexes.extend(d.search.iter().map(|t| t.index.clone()));
            let views = Keys::of(cfg, &d.name).views;
            live.templates.extend(d.redis.iter().map(|t| (views.clone(), t.key.clone())));
        }
        live
    }

    /// Adds what a running daemon runs (its files may be gone): names, and from the target
    /// labels (`search:<index>`, `redis:<template>`) its indexes and key templates.
    pub fn add_running(&mut self, cfg: &RedisConfig, doc: &StatusDoc) {
        for p in &doc.pipelines {
            self.pipelines.insert(p.name.clone());
            let views = Keys::of(cfg, &p.name).views;
            for label in p.targets.keys() {
                if let Some(index) = label.strip_prefix("search:") {
                    self.indexes.insert(index.to_string());
                } else if let Some(t) = label.strip_prefix("redis:").and_then(|raw| KeyTemplate::parse(raw).ok()) {
                    self.templates.push((views.clone(), t));
                }
            }
        }
    }

    /// Whether a live pipeline's key templates could produce `key`: such a key is never removed.
    pub fn may_own_key(&self, key: &str) -> bool {
        self.templates
            .iter()
            .any(|(views, t)| key.strip_prefix(views.as_str()).and_then(|k| k.strip_prefix(':')).is_some_and(|k| template_matches(&t.parts, k)))
    }
}

/// Whether some field values render `parts` as `s` (a field may render as any text).
fn template_matches(parts: &[TemplatePart], s: &str) -> bool {
    match parts.split_first() {
        None => s.is_empty(),
        Some((TemplatePart::Literal(l), rest)) => s.strip_prefix(l.as_str()).is_some_and(|t| template_matches(rest, t)),
        Some((TemplatePart::Field(_), rest)) => (0..=s.len()).filter(|i| s.is_char_boundary(*i)).any(|i| template_matches(rest, &s[i..])),
    }
}

/// Pipeline and index names: `[a-z][a-z0-9_]*` (the checker's rule).
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

// ---- disk -------------------------------------------------------------------------------------

/// Whether a folder's entries are those of a search index (`CURRENT`, `LAST`, `gen-NNNNNN`).
pub fn looks_like_index<'a>(entries: impl IntoIterator<Item = &'a str>) -> bool {
    entries.into_iter().any(|e| e == "CURRENT" || e == "LAST" || e.strip_prefix("gen-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// The decision for one folder under `index.dir`: an orphan is an index folder (by name and
/// content) that no live pipeline declares. `_state`, `_ledger`, `_audit` and anything else not
/// named like an index are never orphans.
pub fn is_orphan_index<'a>(name: &str, entries: impl IntoIterator<Item = &'a str>, live: &BTreeSet<String>) -> bool {
    valid_name(name) && !live.contains(name) && looks_like_index(entries)
}

pub(crate) fn entry_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Bytes of the files under `path` (symbolic links are not followed).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum()).unwrap_or(0)
}

pub fn index_orphans(index_dir: &Path, live: &Live) -> Vec<OrphanIndex> {
    let mut out = Vec::new();
    let mut names = entry_names(index_dir);
    names.sort();
    for name in names {
        let path = index_dir.join(&name);
        if !path.is_dir() {
            continue;
        }
        let entries = entry_names(&path);
        if is_orphan_index(&name, entries.iter().map(String::as_str), &live.indexes) {
            out.push(OrphanIndex {
                generations: crate::sink::tantivy::generations(index_dir, &name),
                bytes: disk_bytes(&path),
                path: path.display().to_string(),
                name,
            });
        }
    }
    out
}

/// `_ledger/<pipeline>.redb` and `_audit/<pipeline>.json` of pipelines no file declares.
pub fn file_orphans(index_dir: &Path, live: &Live) -> Vec<OrphanFile> {
    let mut out = Vec::new();
    for (sub, ext) in [("_ledger", ".redb"), ("_audit", ".json")] {
        let dir = index_dir.join(sub);
        let mut names = entry_names(&dir);
        names.sort();
        for name in names {
            let Some(pipeline) = name.strip_suffix(ext).filter(|p| valid_name(p) && !live.pipelines.contains(*p)) else { continue };
            let path = dir.join(&name);
            if path.is_file() {
                out.push(OrphanFile { pipeline: pipeline.to_string(), bytes: disk_bytes(&path), path: path.display().to_string() });
            }
        }
    }
    out
}

// ---- the record of Redis state this deployment owned ------------------------------------------

/// One pipeline whose Redis views this deployment ran, with the owner epoch it last claimed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub pipeline: String,
    pub redis_prefix: String,
    pub redis_cluster: bool,
    pub owner_epoch: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    pub pipelines: Vec<Recorded>,
}

fn registry_path(index_dir: &Path) -> PathBuf {
    crate::runtime::state_dir(index_dir).join("redis_pipelines.json")
}

impl Registry {
    pub fn load(index_dir: &Path) -> Registry {
        std::fs::read(registry_path(index_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save(&self, index_dir: &Path) -> Result<()> {
        let path = registry_path(index_dir);
        std::fs::create_dir_all(path.parent().expect("under _state"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serializes"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The recorded epoch of `pipeline` under this Redis layout (`None`: never recorded here).
    pub fn epoch_of(&self, cfg: &RedisConfig, pipeline: &str) -> Option<Option<u64>> {
        self.pipelines.iter().find(|r| r.pipeline == pipeline && r.redis_prefix == cfg.prefix && r.redis_cluster == cfg.cluster).map(|r| r.owner_epoch)
    }

    /// Removes the record of these pipelines (their Redis state is gone).
    pub fn forget(index_dir: &Path, cfg: &RedisConfig, pipelines: &[String]) -> Result<()> {
        let mut reg = Registry::load(index_dir);
        reg.pipelines.retain(|r| !(pipelines.contains(&r.pipeline) && r.redis_prefix == cfg.prefix && r.redis_cluster == cfg.cluster));
        reg.save(index_dir)
    }
}

async fn read_epoch(conn: &mut RedisConn, keys: &Keys) -> Result<Option<u64>> {
    let v: Option<String> = redis::cmd("GET").arg(&keys.epoch).query_async(conn).await?;
    Ok(v.and_then(|s| s.trim().parse().ok()))
}

/// Records the Redis pipelines this daemon runs, with the owner epochs it claimed (call it after
/// claiming them).
pub async fn record(cfg: &Config, conn: &mut RedisConn, defs: &[Pipeline]) -> Result<()> {
    let mut reg = Registry::load(&cfg.index.dir);
    for d in defs.iter().filter(|d| !d.redis.is_empty()) {
        let owner_epoch = read_epoch(conn, &Keys::of(&cfg.redis, &d.name)).await?;
        reg.pipelines.retain(|r| !(r.pipeline == d.name && r.redis_prefix == cfg.redis.prefix && r.redis_cluster == cfg.redis.cluster));
        reg.pipelines.push(Recorded { pipeline: d.name.clone(), redis_prefix: cfg.redis.prefix.clone(), redis_cluster: cfg.redis.cluster, owner_epoch });
    }
    reg.save(&cfg.index.dir)
}

// ---- Redis ------------------------------------------------------------------------------------

/// The pipeline a bookkeeping key belongs to: `<prefix>:_meta:<pipeline>:<what>` or
/// `<prefix>:_ledger:<pipeline>` (on a cluster `{<pipeline>}`); `None` for any other key.
pub fn bookkeeping_owner(prefix: &str, cluster: bool, key: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    let (name, tail) = if let Some(r) = rest.strip_prefix("_meta:") {
        let (name, what) = if cluster { r.strip_prefix('{')?.split_once("}:")? } else { r.split_once(':')? };
        (name, what)
    } else {
        let r = rest.strip_prefix("_ledger:")?;
        let name = if cluster { r.strip_prefix('{')?.strip_suffix('}')? } else { r };
        (name, "ledger")
    };
    (valid_name(name) && !tail.is_empty()).then(|| name.to_string())
}

fn glob_escape(s: &str) -> String {
    s.chars().flat_map(|c| if matches!(c, '*' | '?' | '[' | ']' | '\\') { vec!['\\', c] } else { vec![c] }).collect()
}

/// A master's slot for each master of a cluster (SCAN runs per node).
fn master_slots(reply: &redis::Value) -> Vec<u16> {
    use redis::Value;
    let Value::Array(ranges) = reply else { return Vec::new() };
    let mut seen = BTreeMap::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (parts.first(), parts.get(2)) else { continue };
        seen.entry(format!("{master:?}")).or_insert(*start as u16);
    }
    seen.into_values().collect()
}

/// Every bookkeeping key under the prefix, by pipeline (a SCAN of the whole key space).
pub async fn scan_bookkeeping(conn: &mut RedisConn, cfg: &RedisConfig) -> Result<BTreeMap<String, Vec<String>>> {
    let pattern = format!("{}:_*", glob_escape(&cfg.prefix));
    let slots: Vec<Option<u16>> = match conn {
        RedisConn::Single(_) => vec![None],
        RedisConn::Cluster(_) => {
            let reply: redis::Value = conn.query_at_slot(Some(0), redis::cmd("CLUSTER").arg("SLOTS")).await?;
            master_slots(&reply).into_iter().map(Some).collect()
        }
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for slot in slots {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) =
                conn.query_at_slot(slot, redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000)).await?;
            for k in keys {
                if let Some(p) = bookkeeping_owner(&cfg.prefix, cfg.cluster, &k) {
                    out.entry(p).or_default().push(k);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    for keys in out.values_mut() {
        keys.sort();
        keys.dedup();
    }
    Ok(out)
}

/// The ledger size and checkpoint of a pipeline's Redis state.
pub async fn describe(conn: &mut RedisConn, cfg: &RedisConfig, name: &str, keys: Vec<String>) -> Result<OrphanRedis> {
    let k = Keys::of(cfg, name);
    let (entries, lsn): (u64, Option<String>) = redis::pipe().hlen(&k.ledger).get(&k.checkpoint).query_async(conn).await?;
    Ok(OrphanRedis { name: name.to_string(), ledger_entries: entries, applied_lsn: lsn.and_then(|l| l.parse().ok()), keys })
}

/// Redis state of pipelines no file declares: (this deployment's, other bookkeeping by pipeline).
pub async fn redis_orphans(conn: &mut RedisConn, cfg: &Config, live: &Live) -> Result<(Vec<OrphanRedis>, BTreeMap<String, Vec<String>>)> {
    let registry = Registry::load(&cfg.index.dir);
    let mut ours = Vec::new();
    let mut others = BTreeMap::new();
    for (name, keys) in scan_bookkeeping(conn, &cfg.redis).await? {
        if live.pipelines.contains(&name) {
            continue;
        }
        let recorded = registry.epoch_of(&cfg.redis, &name);
        let current = read_epoch(conn, &Keys::of(&cfg.redis, &name)).await?;
        if recorded.is_some_and(|e| e == current) {
            ours.push(describe(conn, &cfg.redis, &name, keys).await?);
        } else {
            others.insert(name, keys);
        }
    }
    Ok((ours, others))
}

/// Everything orphaned; Redis is looked at when a connection is given.
pub async fn find(cfg: &Config, live: &Live, redis: Option<&mut RedisConn>) -> Result<Orphans> {
    let mut o = Orphans { indexes: index_orphans(&cfg.index.dir, live), files: file_orphans(&cfg.index.dir, live), ..Default::default() };
    if let Some(conn) = redis {
        let (ours, others) = redis_orphans(conn, cfg, live).await?;
        o.redis_pipelines = ours;
        o.redis_unrecorded = others.into_keys().collect();
    }
    Ok(o)
}

/// Drops what is gone since the orphans were found (pruned meanwhile).
pub async fn reverify(cfg: &RedisConfig, redis: Option<&mut RedisConn>, o: &mut Orphans) {
    o.indexes.retain(|i| looks_like_index(entry_names(Path::new(&i.path)).iter().map(String::as_str)));
    o.files.retain(|f| Path::new(&f.path).exists());
    let Some(conn) = redis else { return };
    let mut gone = BTreeSet::new();
    for name in o.redis_pipelines.iter().map(|r| &r.name).chain(&o.redis_unrecorded) {
        let k = Keys::of(cfg, name);
        let exists: std::result::Result<(u64, u64, u64), _> = redis::pipe().exists(&k.ledger).exists(&k.checkpoint).exists(&k.epoch).query_async(conn).await;
        if exists.is_ok_and(|(a, b, c)| a + b + c == 0) {
            gone.insert(name.clone());
        }
    }
    o.redis_pipelines.retain(|r| !gone.contains(&r.name));
    o.redis_unrecorded.retain(|n| !gone.contains(n));
}

/// The daemon's part, once it owns its pipelines: records their Redis state as this deployment's,
/// looks for orphans, logs one warning naming them and shows them in `/v1/status`, then drops
/// from status what `deriver prune` removes meanwhile.
pub fn watch(cfg: Config, shared: Arc<Shared>, defs: Vec<Pipeline>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let live = Live::of(&cfg.redis, &defs);
        let mut redis = None;
        if cfg.redis.url.is_some() {
            match rsink::connect(&cfg.redis).await {
                Ok(mut conn) => {
                    if let Err(e) = record(&cfg, &mut conn, &defs).await {
                        tracing::warn!(error = %e, "cannot record which pipelines' Redis state this deployment owns");
                    }
                    redis = Some(conn);
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for Redis state of removed pipelines"),
            }
        }
        let found = match find(&cfg, &live, redis.as_mut()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for Redis state of removed pipelines");
                find(&cfg, &live, None).await.unwrap_or_default()
            }
        };
        if let Some(line) = found.summary() {
            tracing::warn!("no pipeline file declares {line}: `deriver prune` lists and removes them");
        }
        if let Some(note) = found.unrecorded_note() {
            tracing::info!("{note}");
        }
        let mut current = found;
        shared.update(|doc| doc.orphans = Some(current.clone()));
        while !current.is_empty() || !current.redis_unrecorded.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let before = current.clone();
            reverify(&cfg.redis, redis.as_mut(), &mut current).await;
            if current != before {
                shared.update(|doc| doc.orphans = Some(current.clone()));
            }
        }
    });
}

/// Every pipeline file, or a configuration error when any has a problem: what is orphaned can
/// only be told when every file is understood.
pub fn load_defs(cfg: &Config) -> Result<Vec<Pipeline>> {
    crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| {
        Error::config("the pipeline files have problems (run `deriver validate`)").with_detail(d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_undeclared_index_folders_are_orphans() {
        let live = set(&["films"]);
        assert!(is_orphan_index("actors", ["CURRENT", "LAST", "gen-000001"], &live));
        assert!(is_orphan_index("actors", ["gen-000002"], &live), "an interrupted first build");
        assert!(is_orphan_index("actors", ["LAST", "REINDEX"], &live));
        assert!(!is_orphan_index("films", ["CURRENT", "gen-000001"], &live), "declared");
        for reserved in ["_state", "_ledger", "_audit", ".deriver-spares-1-0"] {
            assert!(!is_orphan_index(reserved, ["CURRENT", "gen-000001"], &live), "{reserved}");
        }
        assert!(!is_orphan_index("backup", ["films.tar", "notes.txt"], &live), "not an index");
        assert!(!is_orphan_index("backup", ["gen-", "gen-x1"], &live));
        assert!(!is_orphan_index("Actors", ["CURRENT"], &live), "not an index name");
    }

    #[test]
    fn the_disk_scan_finds_orphan_indexes_and_files_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (p, bytes) in [
            ("films/CURRENT", 2),
            ("films/gen-000001/a", 10),
            ("actors/CURRENT", 2),
            ("actors/gen-000001/a", 100),
            ("actors/gen-000002/b", 50),
            ("_state/dead_letters.redb", 7),
            ("_ledger/films.redb", 3),
            ("_ledger/actors.redb", 30),
            ("_audit/actors.json", 4),
            ("notes/readme", 1),
        ] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![b'x'; bytes]).unwrap();
        }
        let live = Live { pipelines: set(&["films"]), indexes: set(&["films"]), templates: Vec::new() };
        let idx = index_orphans(root, &live);
        assert_eq!(idx.len(), 1, "{idx:?}");
        assert_eq!((idx[0].name.as_str(), idx[0].bytes, idx[0].generations.clone()), ("actors", 152, vec![1, 2]));
        let files: Vec<(String, u64)> = file_orphans(root, &live).into_iter().map(|f| (f.pipeline, f.bytes)).collect();
        assert_eq!(files, vec![("actors".to_string(), 30), ("actors".to_string(), 4)]);
    }

    #[test]
    fn bookkeeping_keys_name_their_pipeline() {
        assert_eq!(bookkeeping_owner("deriver", false, "deriver:_meta:actors:applied_lsn").as_deref(), Some("actors"));
        assert_eq!(bookkeeping_owner("deriver", false, "deriver:_ledger:actors").as_deref(), Some("actors"));
        assert_eq!(bookkeeping_owner("a:b", false, "a:b:_meta:film_x:owner_epoch").as_deref(), Some("film_x"));
        assert_eq!(bookkeeping_owner("deriver", true, "deriver:_meta:{actors}:applied_lsn").as_deref(), Some("actors"));
        assert_eq!(bookkeeping_owner("deriver", true, "deriver:_ledger:{actors}").as_deref(), Some("actors"));
        for (cluster, key) in [
            (false, "deriver:film:1"),
            (false, "deriver:_changes:actors"),
            (false, "deriver:_meta:actors"),
            (false, "deriver:_meta:{actors}:applied_lsn"),
            (true, "deriver:_meta:actors:applied_lsn"),
            (false, "other:_meta:actors:applied_lsn"),
            (false, "deriverx:_meta:actors:applied_lsn"),
        ] {
            assert_eq!(bookkeeping_owner("deriver", cluster, key), None, "{key}");
        }
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn keys_a_live_template_could_produce_are_kept() {
        let t = |raw: &str| KeyTemplate::parse(raw).unwrap();
        let live = Live {
            templates: vec![
                ("deriver".into(), t("film:{film_id}")),
                ("deriver".into(), t("film:{film_id}:summary")),
                ("deriver:{cats}".into(), t("c:{a}-{b}")),
            ],
            ..Default::default()
        };
        assert!(live.may_own_key("deriver:film:1"));
        assert!(live.may_own_key("deriver:film:1:summary"));
        assert!(live.may_own_key("deriver:film:"), "an empty field");
        assert!(live.may_own_key("deriver:{cats}:c:x-y-z"));
        assert!(!live.may_own_key("deriver:actor:1"));
        assert!(!live.may_own_key("other:film:1"));
        assert!(!live.may_own_key("deriver:{cats}:c:xy"));
        assert!(!live.may_own_key("deriver:{dogs}:c:x-y"));
    }

    #[test]
    fn summaries_name_sizes() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(141_234_567), "141.2 MB");
        let o = Orphans {
            indexes: vec![OrphanIndex { name: "actors".into(), path: "x".into(), bytes: 141_234_567, generations: vec![1, 2] }],
            redis_pipelines: vec![OrphanRedis { name: "actors".into(), ledger_entries: 1, applied_lsn: None, keys: Vec::new() }],
            ..Default::default()
        };
        assert_eq!(o.summary().unwrap(), "index `actors` (141.2 MB, 2 generations), Redis state of pipeline `actors` (1 record with views)");
        assert_eq!(Orphans::default().summary(), None);
    }
}
