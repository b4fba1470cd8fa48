//! `deriver setup`: create or extend the publication, check the source. Idempotent.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

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
        .query_one(
            "SELECT rolsuper OR rolreplication \
                 OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                         THEN pg_has_role('rds_replication', 'MEMBER') ELSE false END, \
                    current_user::text \
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let role: String = rights.get(1);
    if !rights.get::<_, bool>(0) {
        problems.push(format!(
            "role `{role}` lacks the REPLICATION attribute: an administrator must run `ALTER ROLE {} WITH REPLICATION;` (on Amazon RDS/Aurora: `GRANT rds_replication TO {};`)",
            quote_ident(&role),
            quote_ident(&role)
        ));
    }
    let loaded = load_pipelines(cfg, &client).await?;
    let mut tables: Vec<String> = loaded.iter().flat_map(|(d, _, _)| d.tables()).map(|t| t.quoted()).collect();
    tables.sort();
    tables.dedup();
    for t in &tables {
        let ok: bool = client.query_one("SELECT has_table_privilege($1::text::regclass, 'SELECT')", &[t]).await?.get(0);
        if !ok && grant_to.is_none() {
            problems.push(format!("role `{role}` may not read {t}: the table's owner must run `GRANT SELECT ON {t} TO {};`", quote_ident(&role)));
        }
    }
    let array = format!("ARRAY[{}]::text[]", tables.iter().map(|t| quote_literal(t)).collect::<Vec<_>>().join(", "));
    let publication = &cfg.postgres.publication;
    let needed = publication_changes(&client, publication, &tables).await?;
    if needed.is_empty() {
        println!("publication `{publication}` covers the {} table(s) the pipelines read: {}", tables.len(), tables.join(", "));
    } else {
        let sql = PUBLICATION_SQL.replace("{{publication}}", &quote_literal(publication)).replace("{{tables}}", &array);
        match client.batch_execute(&sql).await {
            Ok(()) => println!("publication `{publication}` covers {} table(s): {}", tables.len(), tables.join(", ")),
            // A role that may not create or change the publication (it belongs to the tables'
            // owner): say exactly what the owner must run.
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => problems.push(format!(
                "role `{role}` may not {} publication `{publication}` ({}); the tables' owner must run:\n    {}",
                if needed.iter().any(|c| matches!(c, Change::Create)) { "create" } else { "change" },
                crate::error::Error::from(e).message,
                needed.iter().map(|c| c.statement(publication, &tables)).collect::<Vec<_>>().join("\n    ")
            )),
            Err(e) => return Err(e.into()),
        }
    }
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
        Some(s) => println!(
            "replication slot `{}` exists (confirmed_flush_lsn {})",
            cfg.postgres.slot,
            s.confirmed_flush_lsn.map_or_else(|| "-".to_string(), |l| l.to_string())
        ),
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

/// What the publication lacks for the pipelines' tables.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    Create,
    /// Tables to add (quoted, schema-qualified).
    Add(Vec<String>),
    /// A partitioned table is read: its changes must arrive under its own name.
    ViaRoot,
}

impl Change {
    /// The statement the publication's owner runs.
    fn statement(&self, publication: &str, tables: &[String]) -> String {
        let name = quote_ident(publication);
        match self {
            Change::Create => format!(
                "CREATE PUBLICATION {name} FOR TABLE {} WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);",
                tables.join(", ")
            ),
            Change::Add(missing) => format!("ALTER PUBLICATION {name} ADD TABLE {};", missing.join(", ")),
            Change::ViaRoot => format!("ALTER PUBLICATION {name} SET (publish_via_partition_root = true);"),
        }
    }
}

/// Compares the publication (which may be `FOR ALL TABLES` or `FOR TABLES IN SCHEMA`) with the
/// tables the pipelines read; reads only.
async fn publication_changes(client: &Client, publication: &str, tables: &[String]) -> Result<Vec<Change>> {
    let Some(row) = client.query_opt("SELECT pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication]).await? else {
        return Ok(vec![Change::Create]);
    };
    let via_root: bool = row.get(0);
    let mut changes = Vec::new();
    let mut missing = Vec::new();
    let mut partitioned = false;
    for t in tables {
        let r = client
            .query_one(
                // Matched by name, not by casting every published name to regclass: a role
                // without USAGE on pg_toast cannot cast the names of toast tables.
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables pt \
                                  JOIN pg_class c ON c.relname = pt.tablename \
                                  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = pt.schemaname \
                                 WHERE pt.pubname = $1 AND c.oid = $2::text::regclass), \
                        (SELECT relkind = 'p' FROM pg_class WHERE oid = $2::text::regclass)",
                &[&publication, t],
            )
            .await?;
        if !r.get::<_, bool>(0) {
            missing.push(t.clone());
        }
        partitioned |= r.get::<_, Option<bool>>(1).unwrap_or(false);
    }
    if !missing.is_empty() {
        changes.push(Change::Add(missing));
    }
    if partitioned && !via_root {
        changes.push(Change::ViaRoot);
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn the_owner_gets_statements_to_run() {
        let tables = ["\"public\".\"film\"".to_string(), "\"App\".\"Item\"".to_string()];
        assert_eq!(
            Change::Create.statement("deriver", &tables),
            "CREATE PUBLICATION \"deriver\" FOR TABLE \"public\".\"film\", \"App\".\"Item\" WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);"
        );
        assert_eq!(Change::Add(vec![tables[1].clone()]).statement("deriver", &tables), "ALTER PUBLICATION \"deriver\" ADD TABLE \"App\".\"Item\";");
        assert_eq!(Change::ViaRoot.statement("deriver", &tables), "ALTER PUBLICATION \"deriver\" SET (publish_via_partition_root = true);");
    }
}
