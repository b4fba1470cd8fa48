//! Keyed and bulk derivation: run a pipeline's SQL and turn rows into [`Record`]s and [`Write`]s.

use tokio_postgres::{Client, Row, Statement};

use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Record, Rejected, Write};

/// A source key as the column texts of its key columns, in declared order.
pub type KeyTuple = Vec<String>;

/// The key text of a tuple as deriver prints it (see `pipeline::sql::key_text_sql`).
pub fn key_text(key: &KeyTuple) -> String {
    if key.len() == 1 {
        return key[0].clone();
    }
    key.iter().map(|p| p.replace('\\', "\\\\").replace(':', "\\:")).collect::<Vec<_>>().join(":")
}

/// Splits a key text into its `n` column texts (the inverse of [`key_text`]).
pub fn split_key_text(text: &str, n: usize) -> Option<KeyTuple> {
    if n == 1 {
        return Some(vec![text.to_string()]);
    }
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut()?.push(chars.next()?),
            ':' => parts.push(String::new()),
            c => parts.last_mut()?.push(c),
        }
    }
    (parts.len() == n).then_some(parts)
}

pub fn row_to_record(row: &Row) -> Result<Record> {
    let key: String = row.try_get(0).map_err(|e| Error::record("the derived key is NULL").with_detail(e))?;
    let json: String = row.try_get(1).map_err(|e| Error::record("the derived record is NULL").with_detail(e))?;
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| Error::record("Postgres returned a record that is not a JSON object").with_detail(e))?;
    // Compact form, same field order and exact numbers: the text Postgres wrote, without its
    // whitespace. Postgres escapes strings as serde_json does and `to_jsonb` leaves no duplicate
    // keys, so this is what serializing `value` again would give, without its cost per record.
    let json = compact_json(&json);
    debug_assert_eq!(json, serde_json::to_string(&value).unwrap_or_default(), "compact_json differs from serde_json");
    let texts = (2..row.len()).map(|i| row.try_get::<_, Option<String>>(i).ok().flatten()).collect();
    Ok(Record { key, json, value, texts })
}

/// `text` (valid JSON) without the whitespace between its tokens; strings are copied as they are.
pub fn compact_json(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut from = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // To the closing quote: the next `"` not escaped. An escape is `\` and one ASCII
                // character (`\uXXXX` goes on with hex digits), so every cut is a char boundary.
                i += 1;
                while let Some(j) = bytes.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
                    i += j;
                    if bytes[i] == b'\\' {
                        i += 2;
                    } else {
                        break;
                    }
                }
                i = (i + 1).min(bytes.len());
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&text[from..i]);
                i += 1;
                from = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[from..]);
    out
}

/// Derives the records of `keys`: an `Upsert` for each key that yields a record, a `Delete` for
/// each that does not (row gone or filtered out). A key whose derivation fails in SQL is rejected
/// (found by deriving the failing chunk key by key) while the others go on.
pub async fn derive_keys(client: &Client, stmt: &Statement, n_key_cols: usize, keys: &[KeyTuple]) -> Result<(Vec<Write>, Vec<Rejected>)> {
    match query_keys(client, stmt, n_key_cols, keys).await {
        Ok(writes) => Ok((writes, Vec::new())),
        Err(e) if e.kind == ErrorKind::Transient || keys.len() == 1 => {
            if keys.len() == 1 && e.kind != ErrorKind::Transient {
                Ok((Vec::new(), vec![Rejected::by_derivation(key_text(&keys[0]), e.to_string())]))
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
                    Err(e) => rejected.push(Rejected::by_derivation(key_text(key), e.to_string())),
                }
            }
            Ok((writes, rejected))
        }
    }
}

async fn query_keys(client: &Client, stmt: &Statement, n_key_cols: usize, keys: &[KeyTuple]) -> Result<Vec<Write>> {
    let columns: Vec<Vec<&str>> = (0..n_key_cols).map(|i| keys.iter().map(|k| k[i].as_str()).collect()).collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns.iter().map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
    let rows = client.query(stmt, &params).await.map_err(|e| {
        let err = Error::from(e);
        if err.kind == ErrorKind::Fatal {
            Error::record(err.message)
        } else {
            err
        }
    })?;
    // One row per input key: its canonical text, and the record or NULL.
    let mut writes = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: Option<String> = row.try_get(0).map_err(|e| Error::record("the derived key is unreadable").with_detail(e))?;
        let Some(key) = key else { continue };
        if !seen.insert(key.clone()) {
            continue;
        }
        let record: Option<String> = row.try_get(1).map_err(|e| Error::record("the derived record is unreadable").with_detail(e))?;
        match record {
            Some(_) => writes.push(Write::Upsert(row_to_record(row)?)),
            None => writes.push(Write::Delete { key }),
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_is_serde_json_compact_form() {
        for text in [
            r#"{"id" : 1, "title" : "a \"quoted\" \\ word", "tags" : ["x", "y z"], "n" : 1.50, "o" : {"a": [1, 2], "b": null}}"#,
            r#"{"s" : "tab\tnl\ncr\r\u0001 \\\" end", "e" : "", "u" : "é ☃ 𝄞", "t" : true, "f" : false}"#,
            r#"{ "k" : "\\", "k2" : "\\\\\"" }"#,
            "{}",
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(compact_json(text), serde_json::to_string(&value).unwrap(), "{text}");
        }
    }

    proptest::proptest! {
        /// Any JSON, written with spaces and newlines between tokens (as Postgres's `json` and
        /// `jsonb` output does), compacts to what serde_json writes.
        #[test]
        fn compact_json_matches_serde_json_on_any_value(strings in proptest::collection::vec(".*", 1..6), n in proptest::num::i64::ANY) {
            let value = serde_json::json!({ "s": strings, "n": n, "nested": { "first": strings[0], "list": [n, null, true] } });
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            proptest::prop_assert_eq!(compact_json(&pretty), serde_json::to_string(&value).unwrap());
        }
    }

    #[test]
    fn composite_key_texts_round_trip() {
        for parts in [vec!["x:y", "z"], vec!["x", "y:z"], vec!["a\\", ":"], vec!["", ""], vec!["1", "2", "3"]] {
            let t: KeyTuple = parts.iter().map(|s| s.to_string()).collect();
            let text = key_text(&t);
            assert_eq!(split_key_text(&text, t.len()), Some(t.clone()), "{text}");
        }
        assert_ne!(key_text(&vec!["x:y".into(), "z".into()]), key_text(&vec!["x".into(), "y:z".into()]));
        assert_eq!(key_text(&vec!["7".into()]), "7");
        assert_eq!(split_key_text("a:b", 3), None);
    }
}
