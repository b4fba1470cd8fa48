//! Reading a record's Redis views back and comparing them with what the record derives to: the
//! audit's Redis side, and the rewrite of a full reprocess, which verifies each view and writes
//! only those Redis does not already hold exactly.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::ViewWrite;
use crate::error::{Error, Result};

/// One view's (expected, actual, absent) when they differ: `absent` when Redis holds nothing of it.
pub(crate) type Mismatch = (Value, Value, bool);

/// Queues the reads that tell what Redis holds for view `v` (one command; a hash without
/// `detail` is two: `HLEN`, then `HMGET` of its fields when it has any). Read the replies back
/// with [`next_mismatch`].
pub(crate) fn push_reads(pipe: &mut redis::Pipeline, v: &ViewWrite, detail: bool) {
    match v.kind {
        "json" => pipe.cmd("GET").arg(&v.key),
        "hash" if detail => pipe.cmd("HGETALL").arg(&v.key),
        "hash" => {
            pipe.cmd("HLEN").arg(&v.key);
            if !v.values.is_empty() {
                let mut fields = redis::cmd("HMGET");
                fields.arg(&v.key);
                for f in v.values.iter().step_by(2) {
                    fields.arg(f);
                }
                pipe.add_command(fields);
            }
            pipe
        }
        "set" => pipe.cmd("SISMEMBER").arg(&v.key).arg(&v.values[0]),
        _ => pipe.cmd("ZSCORE").arg(&v.key).arg(&v.values[0]),
    };
}

/// Takes the replies [`push_reads`] queued for `v` and compares them with it: `None` when Redis
/// holds exactly this view.
pub(crate) fn next_mismatch(v: &ViewWrite, replies: &mut impl Iterator<Item = redis::Value>, detail: bool) -> Result<Option<Mismatch>> {
    let too_few = || Error::transient("Redis returned too few replies");
    let got = replies.next().ok_or_else(too_few)?;
    if v.kind == "hash" && !detail {
        let values = if v.values.is_empty() { redis::Value::Array(Vec::new()) } else { replies.next().ok_or_else(too_few)? };
        return compare_hash_fields(v, redis::Value::Array(vec![got, values]));
    }
    compare_view(v, got)
}

/// Whether ledger entry `entry` lists exactly the views `views` (as the apply script records
/// them); an absent entry matches only a record without views.
pub(crate) fn ledger_matches(entry: Option<&str>, views: &[ViewWrite]) -> bool {
    match entry {
        None => views.is_empty(),
        Some(e) if ledger_text_matches(e, views) => true,
        Some(e) => ledger_ids(e).is_some_and(|have| have == views.iter().map(entry_id).collect::<BTreeSet<_>>()),
    }
}

pub(crate) fn ledger_ids(text: &str) -> Option<BTreeSet<String>> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else { return None };
    let mut ids = BTreeSet::new();
    for it in items {
        match it {
            Value::String(k) => {
                ids.insert(k);
            }
            Value::Array(parts) => {
                if let (Some(Value::String(k)), Some(Value::String(m))) = (parts.first(), parts.get(1)) {
                    ids.insert(format!("{k}\u{0}{m}"));
                }
            }
            _ => {}
        }
    }
    Some(ids)
}

pub(crate) fn entry_id(v: &ViewWrite) -> String {
    match v.kind {
        "set" | "zset" => format!("{}\u{0}{}", v.key, v.values[0]),
        _ => v.key.clone(),
    }
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub(crate) fn redis_error(v: &redis::Value) -> Option<Value> {
    match v {
        redis::Value::ServerError(e) => Some(Value::String(format!("(error) {e:?}"))),
        _ => None,
    }
}

pub(crate) fn parse<T: redis::FromRedisValue>(v: redis::Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| Error::from(redis::RedisError::from(e)))
}

/// Whether an `HGETALL` reply holds exactly these field/value pairs (the common case, checked
/// without allocating; anything else goes the slow way).
fn hash_equal(got: &redis::Value, want: &[String]) -> bool {
    let redis::Value::Array(items) = got else { return false };
    if items.len() != want.len() || want.len() > 64 {
        return false;
    }
    items.chunks(2).all(|pair| match pair {
        [redis::Value::BulkString(f), redis::Value::BulkString(v)] => {
            want.chunks(2).any(|kv| kv[0].as_bytes() == f.as_slice() && kv[1].as_bytes() == v.as_slice())
        }
        _ => false,
    })
}

/// Whether a ledger entry is exactly the JSON list of these views' keys as the apply script
/// writes it (the common case, checked without parsing); `false` means "parse and compare".
pub(crate) fn ledger_text_matches(entry: &str, views: &[ViewWrite]) -> bool {
    if views.is_empty() || views.iter().any(|v| !matches!(v.kind, "json" | "hash") || v.key.contains(['"', '\\', '/']) || v.key.chars().any(char::is_control)) {
        return false;
    }
    let mut expected = String::with_capacity(entry.len());
    expected.push('[');
    for (i, v) in views.iter().enumerate() {
        if views[..i].iter().any(|w| w.key == v.key) {
            continue;
        }
        if expected.len() > 1 {
            expected.push(',');
        }
        expected.push('"');
        expected.push_str(&v.key);
        expected.push('"');
    }
    expected.push(']');
    expected == entry
}

/// Compares a hash view with `[HLEN, HMGET of its fields]`: like [`compare_view`].
fn compare_hash_fields(v: &ViewWrite, got: redis::Value) -> Result<Option<Mismatch>> {
    let redis::Value::Array(mut parts) = got else { return Err(Error::transient("unexpected reply to HLEN/HMGET")) };
    let values = parts.pop().unwrap_or(redis::Value::Nil);
    let len = parts.pop().unwrap_or(redis::Value::Nil);
    for r in [&len, &values] {
        if let Some(err) = redis_error(r) {
            return Ok(Some((Value::String("a hash view".into()), err, false)));
        }
    }
    let len: usize = parse(len)?;
    let n = v.values.len() / 2;
    let same_values = match &values {
        redis::Value::Array(got) if got.len() == n => {
            got.iter().zip(v.values.iter().skip(1).step_by(2)).all(|(g, w)| matches!(g, redis::Value::BulkString(b) if b.as_slice() == w.as_bytes()))
        }
        _ => n == 0,
    };
    if len == n && same_values {
        return Ok(None);
    }
    let got: Vec<Option<String>> = if n == 0 { Vec::new() } else { parse(values)? };
    let want: BTreeMap<&str, &str> = v.values.chunks(2).map(|kv| (kv[0].as_str(), kv[1].as_str())).collect();
    let mut actual = serde_json::Map::new();
    for (kv, g) in v.values.chunks(2).zip(got) {
        if let Some(g) = g {
            actual.insert(kv[0].clone(), Value::String(g));
        }
    }
    let others = len.saturating_sub(actual.len());
    if others > 0 {
        actual.insert("(other fields)".into(), serde_json::json!(others));
    }
    Ok(Some((serde_json::to_value(want).unwrap_or_default(), Value::Object(actual), len == 0)))
}

/// Compares one view with what Redis returned for it: `None` when equal, else
/// (expected, actual, absent) — `absent` when Redis holds nothing of it.
fn compare_view(v: &ViewWrite, got: redis::Value) -> Result<Option<Mismatch>> {
    if let Some(err) = redis_error(&got) {
        return Ok(Some((Value::String(format!("a {} view", v.kind)), err, false)));
    }
    Ok(match v.kind {
        "json" => {
            let got: Option<String> = parse(got)?;
            match got {
                Some(g) if g == v.values[0] => None,
                Some(g) => {
                    let (want, actual) = (parse_json(&v.values[0]), parse_json(&g));
                    (want != actual).then_some((want, actual, false))
                }
                None => Some((parse_json(&v.values[0]), Value::Null, true)),
            }
        }
        "hash" if hash_equal(&got, &v.values) => None,
        "hash" => {
            let got: BTreeMap<String, String> = parse(got)?;
            let want: BTreeMap<&str, &str> = v.values.chunks(2).map(|kv| (kv[0].as_str(), kv[1].as_str())).collect();
            let same = got.len() == want.len() && want.iter().all(|(k, w)| got.get(*k).is_some_and(|g| g == w));
            if same {
                None
            } else {
                let absent = got.is_empty();
                Some((serde_json::to_value(want).unwrap_or_default(), serde_json::to_value(got).unwrap_or_default(), absent))
            }
        }
        "set" => {
            let is: bool = parse(got)?;
            (!is).then_some((Value::Bool(true), Value::Bool(false), true))
        }
        _ => {
            let score: Option<f64> = parse(got)?;
            let want: f64 = v.values[1].parse().unwrap_or(f64::NAN);
            let same = score.is_some_and(|s| (s - want).abs() <= 1e-9 * want.abs().max(1.0));
            (!same).then(|| (serde_json::json!(want), serde_json::json!(score), score.is_none()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: &str, kind: &'static str, values: &[&str]) -> ViewWrite {
        ViewWrite { key: key.into(), kind, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn hash_replies_compare_without_order() {
        let want: Vec<String> = ["a", "1", "b", "2"].iter().map(|s| s.to_string()).collect();
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        assert!(hash_equal(&redis::Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")]), &want));
        assert!(!hash_equal(&redis::Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("9")]), &want));
        assert!(!hash_equal(&redis::Value::Array(vec![bulk("a"), bulk("1")]), &want));
        assert!(!hash_equal(&redis::Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2"), bulk("c"), bulk("3")]), &want));
        let v = view("p:h:1", "hash", &["a", "1", "b", "2"]);
        assert_eq!(compare_view(&v, redis::Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")])).unwrap(), None);
        let (_, _, absent) = compare_view(&v, redis::Value::Array(vec![])).unwrap().unwrap();
        assert!(absent);
    }

    #[test]
    fn hash_fields_and_length_decide_equality() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let v = view("p:h:1", "hash", &["a", "1", "b", "2"]);
        let reply = |len: i64, vals: Vec<redis::Value>| redis::Value::Array(vec![redis::Value::Int(len), redis::Value::Array(vals)]);
        assert_eq!(compare_hash_fields(&v, reply(2, vec![bulk("1"), bulk("2")])).unwrap(), None);
        let (_, actual, absent) = compare_hash_fields(&v, reply(3, vec![bulk("1"), bulk("2")])).unwrap().unwrap();
        assert!(!absent);
        assert_eq!(actual, serde_json::json!({"a": "1", "b": "2", "(other fields)": 1}));
        assert!(compare_hash_fields(&v, reply(2, vec![bulk("1"), bulk("3")])).unwrap().is_some());
        let (_, _, absent) = compare_hash_fields(&v, reply(0, vec![redis::Value::Nil, redis::Value::Nil])).unwrap().unwrap();
        assert!(absent);
        let empty = view("p:h:2", "hash", &[]);
        assert_eq!(compare_hash_fields(&empty, reply(0, vec![])).unwrap(), None);
        assert!(compare_hash_fields(&empty, reply(1, vec![])).unwrap().is_some());
    }

    #[test]
    fn ledger_text_fast_path_is_exact() {
        let views = vec![view("p:film:1", "json", &["{}"]), view("p:film:1:summary", "hash", &[])];
        assert!(ledger_text_matches(r#"["p:film:1","p:film:1:summary"]"#, &views));
        assert!(!ledger_text_matches(r#"["p:film:1"]"#, &views));
        assert!(!ledger_text_matches(r#"["p:film:1:summary","p:film:1"]"#, &views), "another order: parsed and compared as sets");
        assert!(!ledger_text_matches(r#"["a\/b"]"#, &[view("a/b", "json", &["{}"])]), "escapes take the slow path");
        assert!(!ledger_text_matches(r#"[["p:s",  "1", "s"]]"#, &[view("p:s", "set", &["1"])]));
    }
}
