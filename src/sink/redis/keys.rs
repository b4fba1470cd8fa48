//! Where a pipeline's Redis data lives: the names of its bookkeeping keys (checkpoint, ledger,
//! definition hash, owner epoch) and the prefix of its view keys, on one server or a cluster.

use crate::config::RedisConfig;

/// Key layout of one pipeline: its bookkeeping keys, and what its view keys start with.
///
/// On a single server (`redis.cluster = false`): views `<prefix>:<template>`, bookkeeping
/// `<prefix>:_meta:<pipeline>:…`, `<prefix>:_ledger:<pipeline>`. On a Redis Cluster the pipeline
/// name becomes the hash tag `{<pipeline>}` in every key: views `<prefix>:{<pipeline>}:<template>`,
/// `<prefix>:_meta:{<pipeline>}:…`, `<prefix>:_ledger:{<pipeline>}`, so one pipeline is one hash
/// slot. Every Redis key deriver reads or writes is built here or from [`Keys::views`].
#[derive(Debug, Clone)]
pub struct Keys {
    /// What every view key of the pipeline starts with, before `:<rendered template>`.
    pub views: String,
    pub checkpoint: String,
    pub ledger: String,
    pub hash: String,
    /// The notice channel (a channel, not a key: the same name on a cluster, where PUBLISH
    /// reaches subscribers on every node).
    pub changes: String,
    /// Incremented by each process that takes ownership; batches carry the value they claimed.
    pub epoch: String,
    /// Batches refused because they carried an old epoch (a fenced process tried to write).
    pub fenced: String,
}

impl Keys {
    pub fn new(prefix: &str, pipeline: &str, cluster: bool) -> Keys {
        let p = if cluster { format!("{{{pipeline}}}") } else { pipeline.to_string() };
        Keys {
            views: if cluster { format!("{prefix}:{p}") } else { prefix.to_string() },
            checkpoint: format!("{prefix}:_meta:{p}:applied_lsn"),
            ledger: format!("{prefix}:_ledger:{p}"),
            hash: format!("{prefix}:_meta:{p}:definition_hash"),
            changes: format!("{prefix}:_changes:{pipeline}"),
            epoch: format!("{prefix}:_meta:{p}:owner_epoch"),
            fenced: format!("{prefix}:_meta:{p}:fenced_writes"),
        }
    }

    /// The layout the configuration asks for.
    pub fn of(cfg: &RedisConfig, pipeline: &str) -> Keys {
        Keys::new(&cfg.prefix, pipeline, cfg.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn key_layout_single_server_and_cluster() {
        let k = Keys::new("deriver", "films", false);
        assert_eq!(k.views, "deriver");
        assert_eq!(k.checkpoint, "deriver:_meta:films:applied_lsn");
        assert_eq!(k.ledger, "deriver:_ledger:films");
        assert_eq!(k.hash, "deriver:_meta:films:definition_hash");
        assert_eq!(k.epoch, "deriver:_meta:films:owner_epoch");
        assert_eq!(k.fenced, "deriver:_meta:films:fenced_writes");
        assert_eq!(k.changes, "deriver:_changes:films");

        let k = Keys::new("deriver", "films", true);
        assert_eq!(k.views, "deriver:{films}");
        assert_eq!(k.checkpoint, "deriver:_meta:{films}:applied_lsn");
        assert_eq!(k.ledger, "deriver:_ledger:{films}");
        assert_eq!(k.hash, "deriver:_meta:{films}:definition_hash");
        assert_eq!(k.epoch, "deriver:_meta:{films}:owner_epoch");
        assert_eq!(k.fenced, "deriver:_meta:{films}:fenced_writes");
        // A channel, not a key: no slot.
        assert_eq!(k.changes, "deriver:_changes:films");
        // The first `{…}` of every key is the pipeline's tag (Redis hashes only that part).
        for key in [format!("{}:film:1", k.views), k.checkpoint, k.ledger, k.hash, k.epoch, k.fenced] {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            assert_eq!(&key[open + 1..close], "films", "{key}");
        }
    }
}
