//! `deriver test`: runs the pipelines' `tests:` fixtures against the real Postgres. Each test runs
//! in a transaction that is rolled back: the pipeline's tables are recreated as empty temporary
//! tables (`LIKE` the real ones: same columns, types and defaults; no NOT NULL, constraints or
//! triggers, so fixtures list only the columns that matter), the fixture rows are inserted, the pipeline's own SQL derives the
//! records, and they are compared with the expectations. Nothing is written anywhere.

use serde_json::{Map, Value};
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline::sql::compile;
use crate::pipeline::{Pipeline, TestCase};
use crate::runtime::derive::row_to_record;
use crate::source::postgres as pg;
use crate::source::{quote_ident, TableName};

fn temp_name(t: &TableName) -> TableName {
    TableName::new("pg_temp", format!("{}__{}", t.schema, t.name))
}

/// The pipeline reading the temporary copies of its tables.
fn on_temp_tables(p: &Pipeline) -> Pipeline {
    let mut q = p.clone();
    q.source.table = temp_name(&q.source.table);
    for l in &mut q.lookups {
        l.table = temp_name(&l.table);
    }
    for c in &mut q.children {
        c.table = temp_name(&c.table);
        if let Some(v) = &mut c.via {
            v.table = temp_name(&v.table);
        }
    }
    q
}

/// Numbers compare by value (2.5 == 2.50); objects in `expected` are subsets of `actual`.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().zip(b.as_f64()).is_some_and(|(x, y)| (x - y).abs() <= 1e-9 * x.abs().max(1.0)),
        (Value::Number(a), Value::String(b)) | (Value::String(b), Value::Number(a)) => a.to_string() == *b,
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| matches(x, y)),
        (Value::Object(a), Value::Object(b)) => a.iter().all(|(k, v)| b.get(k).is_some_and(|w| matches(v, w))),
        (a, b) => a == b,
    }
}

fn diff(expected: &Map<String, Value>, actual: &Map<String, Value>) -> Vec<String> {
    expected
        .iter()
        .filter(|(k, v)| !actual.get(*k).is_some_and(|a| matches(v, a)))
        .map(|(k, v)| match actual.get(k) {
            Some(a) => format!("      {k}: expected {v}, got {a}"),
            None => format!("      {k}: expected {v}, but the record has no such field"),
        })
        .collect()
}

async fn run_case(client: &Client, p: &Pipeline, case: &TestCase) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for t in p.tables() {
        let tmp = temp_name(&t);
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY) ON COMMIT DROP",
                quote_ident(&tmp.name),
                t.quoted()
            ))
            .await?;
        // Fixtures list only the columns a test cares about: no NOT NULL on the copies.
        client
            .batch_execute(&format!(
                "DO $deriver$ DECLARE c text; BEGIN FOR c IN SELECT attname FROM pg_attribute WHERE attrelid = {lit}::regclass \
                 AND attnum > 0 AND attnotnull AND NOT attisdropped LOOP EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', {lit}, c); \
                 END LOOP; END $deriver$",
                lit = crate::source::quote_literal(&tmp.quoted())
            ))
            .await?;
    }
    let tables = p.tables();
    for (table, rows) in &case.given {
        if !tables.contains(table) {
            problems.push(format!("    fixture table {table} is not read by this pipeline"));
            continue;
        }
        let tmp = temp_name(table).quoted();
        for row in rows {
            let cols: Vec<String> = row.keys().map(|k| quote_ident(k)).collect();
            let sql = format!("INSERT INTO {tmp} ({cols}) SELECT {cols} FROM json_populate_record(NULL::{tmp}, $1::text::json)", cols = cols.join(", "));
            let json = Value::Object(row.clone()).to_string();
            client
                .execute(sql.as_str(), &[&json])
                .await
                .map_err(|e| Error::config(format!("fixture row {json} does not fit {table}")).with_detail(Error::from(e).message))?;
        }
    }
    let info = pg::table_info(client, &p.source.table, p.source.key.as_deref()).await?;
    let sql = compile(&on_temp_tables(p), &info.key);
    let rows = client
        .query(sql.bulk.as_str(), &[])
        .await
        .map_err(|e| Error::config("the pipeline's SQL failed on the fixture").with_detail(Error::from(e).message))?;
    let mut records = Vec::new();
    for r in &rows {
        records.push(row_to_record(r)?);
    }
    let mut used = vec![false; records.len()];
    for want in &case.records {
        let found = records.iter().enumerate().find(|(i, r)| !used[*i] && matches(&Value::Object(want.clone()), &Value::Object(r.value.clone())));
        match found {
            Some((i, _)) => used[i] = true,
            None => {
                problems.push(format!("    expected a record matching {}", Value::Object(want.clone())));
                // The closest record, field by field.
                let best = records.iter().min_by_key(|r| diff(want, &r.value).len());
                match best {
                    Some(r) => {
                        problems.push(format!("    closest record (key {}):", r.key));
                        problems.extend(diff(want, &r.value));
                    }
                    None => problems.push("    but the pipeline derived no record at all".into()),
                }
            }
        }
    }
    for key in &case.absent {
        if let Some(r) = records.iter().find(|r| &r.key == key) {
            problems.push(format!("    expected no record for key {key}, got {}", r.json));
        }
    }
    Ok(problems)
}

/// Returns the exit code: 0 when every test passes.
pub async fn run(cfg: &Config, only: &[String]) -> Result<i32> {
    let client = pg::connect(cfg.postgres_url()?).await?;
    let pipelines = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| {
        Error::config("the pipeline files have problems (run `deriver validate`)").with_detail(d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n"))
    })?;
    for name in only {
        if !pipelines.iter().any(|p| &p.name == name) {
            return Err(Error::config(format!("no pipeline named `{name}`")));
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for p in pipelines.iter().filter(|p| only.is_empty() || only.contains(&p.name)) {
        for case in &p.tests {
            client.batch_execute("BEGIN").await?;
            let result = run_case(&client, p, case).await;
            client.batch_execute("ROLLBACK").await?;
            match result {
                Ok(problems) if problems.is_empty() => {
                    passed += 1;
                    println!("ok    {}: {}", p.name, case.name);
                }
                Ok(problems) => {
                    failed += 1;
                    println!("FAIL  {}: {} ({}:{})", p.name, case.name, p.file.display(), case.line);
                    for line in problems {
                        println!("{line}");
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL  {}: {} ({}:{})\n    {e}", p.name, case.name, p.file.display(), case.line);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::matches;
    use serde_json::json;

    #[test]
    fn subset_and_numeric_matching() {
        assert!(matches(&json!({"a": 1, "b": [1, 2]}), &json!({"a": 1.0, "b": [1, 2], "c": 3})));
        assert!(matches(&json!({"rate": 2.99}), &json!({"rate": 2.990})));
        assert!(!matches(&json!({"a": 1}), &json!({"a": 2})));
        assert!(!matches(&json!({"a": [1]}), &json!({"a": [1, 2]})));
        assert!(!matches(&json!({"x": null}), &json!({})));
    }
}
