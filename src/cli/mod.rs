//! The `deriver` command line.

pub mod apply;
pub mod audit;
pub mod dead_letters;
pub mod pipeline_test;
pub mod plan;
pub mod preview;
pub mod prune;
pub mod reindex;
pub mod setup;
pub mod status;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "deriver",
    version,
    about = "Derive search indexes and Redis cache views from Postgres logical replication",
    long_about = "deriver tails a Postgres logical replication slot and keeps derived state in step: an embedded \
full-text index served over HTTP, and cache views in Redis. Pipelines are YAML files in the pipelines \
directory. Configuration: --config FILE, else $DERIVER_CONFIG, else ./deriver.toml, overlaid by \
DERIVER__<SECTION>__<KEY> environment variables (e.g. DERIVER__POSTGRES__URL)."
)]
pub struct Cli {
    /// Configuration file (TOML). Default: $DERIVER_CONFIG, else ./deriver.toml when present.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or extend the publication for the pipelines' tables and check the source (wal_level, rights, replica identity).
    Setup(SetupArgs),
    /// Run the daemon: initial snapshot on first start, then stream changes; serves HTTP. Stops cleanly on SIGINT/SIGTERM; re-reads and applies the pipeline files on SIGHUP.
    Run(RunArgs),
    /// Show per pipeline: state, applied LSN per target, lag, generation, definition hash.
    Status(StatusArgs),
    /// Check every pipeline file and report all problems with file:line:col.
    Validate(ValidateArgs),
    /// Run the pipelines' `tests:` fixtures against Postgres (in rolled-back transactions) and show diffs.
    Test(TestArgs),
    /// Derive some keys from live data and print the records and the writes they would make; writes nothing.
    Preview(PreviewArgs),
    /// Per pipeline: `unchanged`, `in-place` or `rebuild`, comparing the files with what is deployed.
    Plan,
    /// Ask the running daemon to apply the edited pipeline files (as SIGHUP does): prints the plan, then follows the rebuilds.
    ///
    /// Every file is checked first; a file with errors changes nothing (the problems are printed with
    /// file:line:col, exit code 1). New pipelines are built in the background while they stream,
    /// changed ones are rebuilt beside the live version and swapped in, removed ones stop. The other
    /// pipelines keep streaming throughout; the daemon keeps its PID.
    Apply(ApplyArgs),
    /// Full reprocess into a new index generation while streaming goes on, then an atomic swap (asks the daemon when one runs).
    Reindex(ReindexArgs),
    /// Compare every target with a fresh derivation from Postgres; list missing, extra and different keys; --repair re-derives them.
    Audit(AuditArgs),
    /// List the records a target could not take, with reasons; --retry re-derives them now.
    DeadLetters(DeadLettersArgs),
    /// Remove what removed pipelines left behind: index folders, per-pipeline files, Redis bookkeeping and views.
    ///
    /// Orphaned are: folders under index.dir holding a search index that no pipeline file declares;
    /// `_ledger/<pipeline>.redb` and `_audit/<pipeline>.json` of pipelines no file declares; and the
    /// Redis state of such a pipeline that this deployment owned last (its `<prefix>:_meta:<pipeline>:*`
    /// keys, its ledger `<prefix>:_ledger:<pipeline>`, and the view keys and set/zset members that
    /// ledger lists). View keys are known only from the ledger, and a key that a live pipeline's key
    /// template could also produce is left alone. `deriver status` and the daemon's start-up log name
    /// what is orphaned.
    ///
    /// prune lists everything with its size first, then asks (or takes --yes). It never removes a
    /// live pipeline's data: with a daemon answering on http.listen, the pipelines it runs count as
    /// live; without one, prune holds the slot's ownership lock while it works (a daemon starting
    /// meanwhile stands by until it is done); it refuses while another process owns the slot, and
    /// skips an index whose writer lock a process holds.
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Also remove what removed pipelines leave behind (as `deriver prune --yes`).
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Only list what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove without asking (needed when stdin is not a terminal).
    #[arg(long, conflicts_with = "dry_run")]
    pub yes: bool,
    /// Also remove the Redis state of this pipeline, which Redis holds under redis.prefix but this
    /// deployment has no record of owning last (state from before deriver kept that record, or of
    /// another deriver sharing the prefix: name only pipelines that are this deployment's).
    #[arg(long = "redis-pipeline", value_name = "PIPELINE")]
    pub redis_pipelines: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeadLettersArgs {
    /// Pipelines (default: all).
    pub pipelines: Vec<String>,
    /// Re-derive the dead letters now instead of waiting for their backoff.
    #[arg(long)]
    pub retry: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Pipelines to audit.
    pub pipelines: Vec<String>,
    /// Audit every pipeline.
    #[arg(long, conflicts_with = "pipelines")]
    pub all: bool,
    /// Re-derive the drifted keys through the normal write path, then verify them again.
    #[arg(long)]
    pub repair: bool,
    /// Audit only this percentage of the keys (a stable sample by key hash).
    #[arg(long, value_name = "PCT")]
    pub sample: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// Pipelines to reprocess.
    pub pipelines: Vec<String>,
    /// Reprocess every pipeline.
    #[arg(long, conflicts_with = "pipelines")]
    pub all: bool,
    /// Swap back to the previous generation (while it is kept) instead.
    #[arg(long)]
    pub rollback: bool,
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Pipelines to test (default: all).
    pub pipelines: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Source keys as deriver prints them (`key::text`; composite keys joined with `:`).
    #[arg(long = "key", required = true, num_args = 1..)]
    pub keys: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Also grant a role the least privilege deriver needs (REPLICATION, SELECT on the pipeline tables).
    #[arg(long, value_name = "ROLE")]
    pub grant_to: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Drop the replication slot (if any) and re-derive every record from a new one. Use after a lost slot.
    #[arg(long)]
    pub resnapshot: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the status document as JSON (the same as GET /v1/status).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Only parse and check the files; do not connect to Postgres.
    #[arg(long)]
    pub no_environment: bool,
}
