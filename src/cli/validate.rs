//! `deriver validate`: every problem of every pipeline file, with file:line:col. Without
//! `--no-environment` it also checks the pipelines against Postgres: tables and columns exist,
//! the publication covers them (column lists included), replica identity, generated columns,
//! indexes on join columns (warnings), and it prepares every generated query, mapping Postgres's
//! error position back to the YAML line.

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::check::locate_sql_error;
use crate::pipeline::yaml::Pos;
use crate::pipeline::{self, Diagnostic, Pipeline};
use crate::runtime::{deps, replica_identity_problem};
use crate::source::postgres::{self as pg, TableInfo};
use crate::source::TableName;

/// Where file-level findings point: the `pipeline:` line.
fn top(_p: &Pipeline) -> Pos {
    Pos { line: 2, col: 1 }
}

/// Prepares `sql`; a failure becomes a diagnostic at the YAML fragment Postgres points to.
async fn prepare(client: &Client, p: &Pipeline, sql: &str, what: &str, out: &mut Vec<Diagnostic>) {
    if let Err(e) = client.prepare(sql).await {
        let (message, pos) = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{what} does not compile: {}", db.message());
                if let Some(h) = db.hint() {
                    m.push_str(&format!(" (hint: {h})"));
                }
                let pos = match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(n)) => locate_sql_error(p, sql, *n as usize),
                    _ => None,
                };
                (m, pos)
            }
            None => (format!("{what} could not be prepared: {e}"), None),
        };
        out.push(Diagnostic::at(&p.file, pos.unwrap_or(top(p)), message, false));
    }
}

async fn generated_columns(client: &Client, table: &TableName) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND a.attgenerated <> ''",
            &[&table.schema, &table.name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Whether some index of `table` starts with exactly these columns (in any order).
async fn has_index(client: &Client, table: &TableName, cols: &[String]) -> Result<bool> {
    let rows = client
        .query(
            "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE n.nspname = $1 AND c.relname = $2 GROUP BY i.indexrelid",
            &[&table.schema, &table.name],
        )
        .await?;
    Ok(rows.iter().any(|r| {
        let idx: Vec<String> = r.get(0);
        idx.len() >= cols.len() && cols.iter().all(|c| idx[..cols.len()].contains(c))
    }))
}

/// What the database checks of one pipeline found, and which of them an earlier error stopped.
struct Checked {
    diagnostics: Vec<Diagnostic>,
    /// The checks that did not run, and why (printed as a note).
    skipped: Option<String>,
}

async fn check_pipeline(client: &Client, cfg: &Config, p: &Pipeline, published: &Option<pg::PublishedTables>) -> Result<Checked> {
    let mut out = Vec::new();
    let mut skipped = None;
    let at = |m: String, warning: bool| Diagnostic::at(&p.file, top(p), m, warning);
    let info: TableInfo = match pg::table_info(client, &p.source.table, p.source.key.as_deref()).await {
        Ok(i) => i,
        Err(e) => {
            return Ok(Checked {
                diagnostics: vec![at(e.message, false)],
                skipped: Some(format!(
                    "the other database checks of pipeline `{}` (its SQL, replica identity, publication coverage, indexes) were skipped: they need its source table",
                    p.name
                )),
            })
        }
    };
    let sql = pipeline::sql::compile(p, &info.key);
    prepare(client, p, &sql.keyed, "the pipeline's SQL", &mut out).await;
    if let Some(problem) = replica_identity_problem(p, &info) {
        out.push(at(problem, false));
    }
    let deps = match deps::resolve(client, p, &info.key).await {
        Ok(d) => d,
        Err(e) => {
            out.push(at(e.message, false));
            skipped = Some(format!(
                "the checks of pipeline `{}`'s lookups and children (their reverse queries, publication coverage and indexes) were skipped: they need the error above fixed",
                p.name
            ));
            Vec::new()
        }
    };
    for d in &deps {
        prepare(client, p, &d.reverse_sql, &format!("the reverse query of its {}", d.dep.name(p)), &mut out).await;
    }
    // Columns deriver reads from the WAL: published, not generated (pgoutput does not send them).
    for (t, cols) in &deps::wal_columns(p, &info.key, &deps) {
        let generated = generated_columns(client, t).await?;
        for c in cols.iter().filter(|c| generated.contains(c)) {
            out.push(at(format!("{t}.{c} is a generated column: logical replication does not send it, so deriver cannot key or join on it"), false));
        }
        match published {
            None => {}
            Some(tables) => match tables.iter().find(|(pt, _)| pt == t) {
                None => out.push(at(format!("publication `{}` does not cover {t} (run `deriver setup`)", cfg.postgres.publication), false)),
                Some((_, Some(list))) => {
                    for c in cols.iter().filter(|c| !list.contains(c)) {
                        out.push(at(format!("publication `{}` does not publish column {t}.{c}, which deriver needs", cfg.postgres.publication), false));
                    }
                }
                Some((_, None)) => {}
            },
        }
    }
    // Indexes: the derivation joins children on their join columns; reverse queries look parents up by theirs.
    for d in &deps {
        let eqs = d.dep.on(p);
        if !has_index(client, &d.table, &d.this_cols).await? {
            out.push(at(format!("no index on {}({}): deriving each record scans {}", d.table, d.this_cols.join(", "), d.table), true));
        }
        let parent = &eqs[0].parent;
        if eqs.iter().all(|e| &e.parent == parent) {
            let parent_table = if *parent == p.source.alias {
                Some(p.source.table.clone())
            } else {
                p.lookups
                    .iter()
                    .find(|l| &l.alias == parent)
                    .map(|l| l.table.clone())
                    .or_else(|| p.children.iter().filter_map(|c| c.via.as_ref()).find(|v| &v.alias == parent).map(|v| v.table.clone()))
            };
            let cols: Vec<String> = eqs.iter().map(|e| e.parent_column.clone()).collect();
            if let Some(pt) = parent_table {
                if !has_index(client, &pt, &cols).await? {
                    out.push(at(format!("no index on {pt}({}): a change to {} scans {pt} to find the records it affects", cols.join(", "), d.table), true));
                }
            }
        }
    }
    Ok(Checked { diagnostics: out, skipped })
}

/// Prints, per search target, how its queries match (typos, prefix, synonyms, stop words, distinct).
fn print_search_relevance(pipelines: &[Pipeline]) {
    for p in pipelines {
        for t in &p.search {
            println!("{}: search:{}: {}", p.name, t.index, t.relevance.summary().join("; "));
        }
    }
}

/// Returns the process exit code.
pub async fn run(config: Option<&std::path::Path>, no_environment: bool) -> Result<i32> {
    let cfg_result = Config::load(config);
    let dir = match &cfg_result {
        Ok(cfg) => cfg.pipelines.dir.clone(),
        Err(_) if no_environment => std::env::var("DERIVER__PIPELINES__DIR").map(Into::into).unwrap_or_else(|_| "pipelines".into()),
        Err(e) => return Err(Error::config(e.message.clone()).with_detail(e.detail.clone().unwrap_or_default())),
    };
    let pipelines = match pipeline::load_dir(&dir) {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{} problem(s) found", diags.len());
            if !no_environment {
                // The database checks work on the parsed pipelines: none ran.
                eprintln!("database checks skipped: they run once every pipeline file is valid (fix the errors above, then run `deriver validate` again)");
            }
            return Ok(1);
        }
    };
    // relevance (issue 27): each search target's query-time settings.
    print_search_relevance(&pipelines);
    if no_environment {
        println!("{} pipeline(s) valid (files only)", pipelines.len());
        return Ok(0);
    }
    let cfg = cfg_result?;
    let client = pg::connect(cfg.postgres_url()?).await?;
    let published = pg::publication_tables(&client, &cfg.postgres.publication).await?;
    if published.is_none() {
        eprintln!("error: publication `{}` does not exist (run `deriver setup`)", cfg.postgres.publication);
    }
    let mut errors = usize::from(published.is_none());
    let mut warnings = 0;
    for p in &pipelines {
        let checked = check_pipeline(&client, &cfg, p, &published).await?;
        for d in &checked.diagnostics {
            if d.warning {
                warnings += 1;
            } else {
                errors += 1;
            }
            eprintln!("{d}");
        }
        if let Some(note) = checked.skipped {
            eprintln!("{}: note: {note}", p.file.display());
        }
    }
    if errors > 0 {
        eprintln!("{errors} problem(s) found, {warnings} warning(s)");
        return Ok(1);
    }
    println!("{} pipeline(s) valid, {warnings} warning(s)", pipelines.len());
    Ok(0)
}
