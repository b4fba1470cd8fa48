//! `deriver setup`: create or extend the publication, check the source. Idempotent.

use crate::config::Config;
use crate::error::Result;
use crate::runtime::{load_pipelines, replica_identity_problem};
use crate::source::postgres as pg;
use crate::source::{quote_ident, quote_literal};

const PUBLICATION_SQL: &str = include_str!("../../migrations/001_publication.sql");
const GRANTS_SQL: &str = include_str!("../../migrations/002_grants.sql");

pub async fn run(cfg: &Config, grant_to: Option<&str>) -> Result<i32> {
    let client = pg::connect(cfg.postgres_url()?).await?;
    let mut problems: Vec<String> = Vec::new();
    let level = pg::wal_level(&client).await?;
    if level != "logical" {
        problems.push(format!("wal_level is `{level}`; set wal_level=logical in postgresql.conf and restart Postgres"));
    }
    let rights = client
        .query_one("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await?;
    if !rights.get::<_, bool>(0) {
        problems.push("the configured role lacks the REPLICATION attribute (ALTER ROLE … WITH REPLICATION)".into());
    }
    let loaded = load_pipelines(cfg, &client).await?;
    let mut tables: Vec<String> = loaded.iter().flat_map(|(d, _, _)| d.tables()).map(|t| t.quoted()).collect();
    tables.sort();
    tables.dedup();
    let array = format!("ARRAY[{}]::text[]", tables.iter().map(|t| quote_literal(t)).collect::<Vec<_>>().join(", "));
    let sql = PUBLICATION_SQL.replace("{{publication}}", &quote_literal(&cfg.postgres.publication)).replace("{{tables}}", &array);
    client.batch_execute(&sql).await?;
    println!("publication `{}` covers {} table(s): {}", cfg.postgres.publication, tables.len(), tables.join(", "));
    if let Some(role) = grant_to {
        let sql = GRANTS_SQL.replace("{{role}}", &quote_literal(&quote_ident(role))).replace("{{tables}}", &array);
        client.batch_execute(&sql).await?;
        println!("granted REPLICATION and SELECT on {} table(s) to {role}", tables.len());
    }
    for (def, info, sql) in &loaded {
        if let Some(p) = replica_identity_problem(def, info) {
            problems.push(p);
        }
        if let Err(e) = crate::runtime::deps::resolve(&client, def, &info.key).await {
            problems.push(e.message);
        }
        if let Err(e) = client.prepare(&sql.keyed).await {
            problems.push(format!("pipeline `{}`: its SQL does not compile: {}", def.name, crate::error::Error::from(e).message));
        }
    }
    match pg::slot_info(&client, &cfg.postgres.slot).await? {
        Some(s) if s.wal_status.as_deref() == Some("lost") => {
            problems.push(format!("replication slot `{}` is invalidated (wal_status=lost)", cfg.postgres.slot))
        }
        Some(s) => println!("replication slot `{}` exists (confirmed_flush_lsn {:?})", cfg.postgres.slot, s.confirmed_flush_lsn.map(|l| l.to_string())),
        None => println!("replication slot `{}` will be created by `deriver run`", cfg.postgres.slot),
    }
    if problems.is_empty() {
        println!("setup ok");
        Ok(0)
    } else {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        Ok(1)
    }
}
