//! Keyed and bulk derivation: run a pipeline's SQL and turn rows into [`Record`]s and [`Write`]s.

use std::collections::HashMap;

use tokio_postgres::{Client, Row, Statement};

use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Record, Rejected, Write};

/// A source key as the column texts of its key columns, in declared order.
pub type KeyTuple = Vec<String>;

pub fn key_text(key: &KeyTuple) -> String {
    key.join(":")
}

pub fn row_to_record(row: &Row) -> Result<Record> {
    let key: String = row.try_get(0).map_err(|e| Error::record("the derived key is NULL").with_detail(e))?;
    let json: String = row.try_get(1).map_err(|e| Error::record("the derived record is NULL").with_detail(e))?;
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| Error::record("Postgres returned a record that is not a JSON object").with_detail(e))?;
    // Compact form, same field order and exact numbers (serde_json keeps both).
    let json = serde_json::to_string(&value).map_err(|e| Error::record("cannot serialize a record").with_detail(e))?;
    let texts = (2..row.len()).map(|i| row.try_get::<_, Option<String>>(i).ok().flatten()).collect();
    Ok(Record { key, json, value, texts })
}

/// Derives the records of `keys`: an `Upsert` for each key that yields a record, a `Delete` for
/// each that does not (row gone or filtered out). A key whose derivation fails in SQL is rejected
/// (found by deriving the failing chunk key by key) while the others go on.
pub async fn derive_keys(client: &Client, stmt: &Statement, n_key_cols: usize, keys: &[KeyTuple]) -> Result<(Vec<Write>, Vec<Rejected>)> {
    match query_keys(client, stmt, n_key_cols, keys).await {
        Ok(writes) => Ok((writes, Vec::new())),
        Err(e) if e.kind == ErrorKind::Transient || keys.len() == 1 => {
            if keys.len() == 1 && e.kind != ErrorKind::Transient {
                Ok((Vec::new(), vec![Rejected { key: key_text(&keys[0]), reason: e.to_string() }]))
            } else {
                Err(e)
            }
        }
        Err(_) => {
            let mut writes = Vec::new();
            let mut rejected = Vec::new();
            for key in keys {
                match query_keys(client, stmt, n_key_cols, std::slice::from_ref(key)).await {
                    Ok(mut w) => writes.append(&mut w),
                    Err(e) if e.kind == ErrorKind::Transient => return Err(e),
                    Err(e) => rejected.push(Rejected { key: key_text(key), reason: e.to_string() }),
                }
            }
            Ok((writes, rejected))
        }
    }
}

async fn query_keys(client: &Client, stmt: &Statement, n_key_cols: usize, keys: &[KeyTuple]) -> Result<Vec<Write>> {
    let columns: Vec<Vec<&str>> = (0..n_key_cols).map(|i| keys.iter().map(|k| k[i].as_str()).collect()).collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let rows = client.query(stmt, &params).await.map_err(|e| {
        let err = Error::from(e);
        if err.kind == ErrorKind::Fatal {
            Error::record(err.message)
        } else {
            err
        }
    })?;
    let mut found: HashMap<String, Record> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let r = row_to_record(row)?;
        found.insert(r.key.clone(), r);
    }
    let mut writes = Vec::with_capacity(keys.len());
    for key in keys {
        let text = key_text(key);
        match found.remove(&text) {
            Some(r) => writes.push(Write::Upsert(r)),
            None => writes.push(Write::Delete { key: text }),
        }
    }
    Ok(writes)
}
