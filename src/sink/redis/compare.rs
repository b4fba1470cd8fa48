//! Reading a record's Redis views back and comparing them with what the record derives to: the
//! audit's Redis side, and the rewrite of a full reprocess, which verifies each view and writes
//! only those Redis does not already hold exactly.
//!
//! A view whose target has `provenance: true` carries `_lsn` and `_version`; what a comparison
//! leaves out of it is the caller's [`Ignore`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::ViewWrite;
use crate::error::{Error, Result};
use crate::pipeline::{LSN_FIELD, PROVENANCE_FIELDS};
use crate::sink::provenance::strip_json;

/// One view's (expected, actual, absent) when they differ: `absent` when Redis holds nothing of it.
pub(crate) type Mismatch = (Value, Value, bool);

/// What a comparison leaves out of a view with provenance (views without it compare whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignore {
    /// `_lsn` only: a full rewrite, whose views carry the rewrite's stamp. A view that differs
    /// only in the LSN it was written at holds the same value: it is exact and stays as it is
    /// (its `_lsn` stays that of the batch that wrote the value). A view of another `_version`
    /// was made by another definition: it is rewritten.
    Lsn,
    /// `_lsn` and `_version`: the audit, which compares values only.
    Provenance,
}

impl Ignore {
    fn fields(self, v: &ViewWrite) -> &'static [&'static str] {
        match (v.provenance, self) {
            (false, _) => &[],
            (true, Ignore::Lsn) => &[LSN_FIELD],
            (true, Ignore::Provenance) => &PROVENANCE_FIELDS,
        }
    }
}

/// The fields `HMGET` reads of hash view `v`: its own, and the provenance fields it may hold.
fn hmget_fields(v: &ViewWrite) -> impl Iterator<Item = &str> {
    let own = v.values.iter().step_by(2).map(String::as_str);
    let extra = PROVENANCE_FIELDS.iter().copied().filter(move |f| v.provenance && !v.values.iter().step_by(2).any(|o| o == f));
    own.chain(extra)
}

/// Queues the reads that tell what Redis holds for view `v` (one command; a hash without
/// `detail` is two: `HLEN`, then `HMGET` of its fields when it has any). Read the replies back
/// with [`next_mismatch`].
pub(crate) fn push_reads(pipe: &mut redis::Pipeline, v: &ViewWrite, detail: bool) {
    match v.kind {
        "json" => pipe.cmd("GET").arg(&v.key),
        "hash" if detail => pipe.cmd("HGETALL").arg(&v.key),
        "hash" => {
            pipe.cmd("HLEN").arg(&v.key);
            if hmget_fields(v).next().is_some() {
                let mut fields = redis::cmd("HMGET");
                fields.arg(&v.key);
                for f in hmget_fields(v) {
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
/// holds exactly this view (but for what `ignore` leaves out).
pub(crate) fn next_mismatch(v: &ViewWrite, replies: &mut impl Iterator<Item = redis::Value>, detail: bool, ignore: Ignore) -> Result<Option<Mismatch>> {
    let too_few = || Error::transient("Redis returned too few replies");
    let got = replies.next().ok_or_else(too_few)?;
    if v.kind == "hash" && !detail {
        let values = if hmget_fields(v).next().is_none() { redis::Value::Array(Vec::new()) } else { replies.next().ok_or_else(too_few)? };
        return compare_hash_fields(v, redis::Value::Array(vec![got, values]), ignore);
    }
    compare_view(v, got, ignore)
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
fn compare_hash_fields(v: &ViewWrite, got: redis::Value, ignore: Ignore) -> Result<Option<Mismatch>> {
    let redis::Value::Array(mut parts) = got else { return Err(Error::transient("unexpected reply to HLEN/HMGET")) };
    let values = parts.pop().unwrap_or(redis::Value::Nil);
    let len = parts.pop().unwrap_or(redis::Value::Nil);
    for r in [&len, &values] {
        if let Some(err) = redis_error(r) {
            return Ok(Some((Value::String("a hash view".into()), err, false)));
        }
    }
    let len: usize = parse(len)?;
    let ignored = ignore.fields(v);
    // The value each HMGET field should have: the view's own, none for a provenance field it
    // does not carry.
    let wanted = || hmget_fields(v).zip(v.values.iter().skip(1).step_by(2).map(|w| Some(w.as_str())).chain(std::iter::repeat(None)));
    // The common case, checked without allocating: every field as wanted, no other field.
    if let redis::Value::Array(replies) = &values {
        let (mut read, mut same) = (0, replies.len() == hmget_fields(v).count());
        for ((name, want), g) in wanted().zip(replies) {
            let g = match g {
                redis::Value::BulkString(b) => Some(b.as_slice()),
                redis::Value::Nil => None,
                _ => return Err(Error::transient("unexpected reply to HMGET")),
            };
            read += usize::from(g.is_some());
            same &= ignored.contains(&name) || want.map(str::as_bytes) == g;
        }
        if same && read == len {
            return Ok(None);
        }
    }
    let got: Vec<Option<String>> = if hmget_fields(v).next().is_none() { Vec::new() } else { parse(values)? };
    let want: BTreeMap<&str, &str> = wanted().filter_map(|(name, w)| Some((name, w?))).filter(|(k, _)| !ignored.contains(k)).collect();
    let mut actual = serde_json::Map::new();
    let mut read = 0;
    for ((name, _), g) in wanted().zip(got) {
        read += usize::from(g.is_some());
        if let Some(g) = g.filter(|_| !ignored.contains(&name)) {
            actual.insert(name.to_string(), Value::String(g));
        }
    }
    let others = len.saturating_sub(read);
    if others > 0 {
        actual.insert("(other fields)".into(), serde_json::json!(others));
    }
    Ok(Some((serde_json::to_value(want).unwrap_or_default(), Value::Object(actual), len == 0)))
}

/// Without the top-level fields `ignored` (a JSON object; anything else as it is).
fn without(mut value: Value, ignored: &[&str]) -> Value {
    if let Value::Object(obj) = &mut value {
        for f in ignored {
            obj.shift_remove(*f);
        }
    }
    value
}

/// Whether two JSON texts are equal but for a stamp (`_lsn` ignored; `_version` too when
/// `ignore` says so), by their text alone: `false` means "parse and compare".
fn equal_but_stamp(want: &str, got: &str, ignore: Ignore) -> bool {
    let (w, g) = (strip_json(want), strip_json(got));
    let body_w: &str = w.as_ref().map_or(want, |(b, _)| b.as_ref());
    let body_g: &str = g.as_ref().map_or(got, |(b, _)| b.as_ref());
    body_w == body_g && (ignore == Ignore::Provenance || w.as_ref().map(|(_, v)| *v) == g.as_ref().map(|(_, v)| *v))
}

/// Compares one view with what Redis returned for it: `None` when equal, else
/// (expected, actual, absent) — `absent` when Redis holds nothing of it.
fn compare_view(v: &ViewWrite, got: redis::Value, ignore: Ignore) -> Result<Option<Mismatch>> {
    if let Some(err) = redis_error(&got) {
        return Ok(Some((Value::String(format!("a {} view", v.kind)), err, false)));
    }
    let ignored = ignore.fields(v);
    Ok(match v.kind {
        "json" => {
            let got: Option<String> = parse(got)?;
            match got {
                Some(g) if g == v.values[0] => None,
                Some(g) if !ignored.is_empty() && equal_but_stamp(&v.values[0], &g, ignore) => None,
                Some(g) => {
                    let (want, actual) = (without(parse_json(&v.values[0]), ignored), without(parse_json(&g), ignored));
                    (want != actual).then_some((want, actual, false))
                }
                None => Some((without(parse_json(&v.values[0]), ignored), Value::Null, true)),
            }
        }
        "hash" if ignored.is_empty() && hash_equal(&got, &v.values) => None,
        "hash" => {
            let mut got: BTreeMap<String, String> = parse(got)?;
            let absent = got.is_empty();
            got.retain(|k, _| !ignored.contains(&k.as_str()));
            let want: BTreeMap<&str, &str> = v.values.chunks(2).map(|kv| (kv[0].as_str(), kv[1].as_str())).filter(|(k, _)| !ignored.contains(k)).collect();
            let same = got.len() == want.len() && want.iter().all(|(k, w)| got.get(*k).is_some_and(|g| g == w));
            if same {
                None
            } else {
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
        ViewWrite { key: key.into(), kind, values: values.iter().map(|v| v.to_string()).collect(), provenance: false }
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
        assert_eq!(compare_view(&v, redis::Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")]), Ignore::Lsn).unwrap(), None);
        let (_, _, absent) = compare_view(&v, redis::Value::Array(vec![]), Ignore::Lsn).unwrap().unwrap();
        assert!(absent);
    }

    #[test]
    fn hash_fields_and_length_decide_equality() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let v = view("p:h:1", "hash", &["a", "1", "b", "2"]);
        let reply = |len: i64, vals: Vec<redis::Value>| redis::Value::Array(vec![redis::Value::Int(len), redis::Value::Array(vals)]);
        assert_eq!(compare_hash_fields(&v, reply(2, vec![bulk("1"), bulk("2")]), Ignore::Lsn).unwrap(), None);
        let (_, actual, absent) = compare_hash_fields(&v, reply(3, vec![bulk("1"), bulk("2")]), Ignore::Lsn).unwrap().unwrap();
        assert!(!absent);
        assert_eq!(actual, serde_json::json!({"a": "1", "b": "2", "(other fields)": 1}));
        assert!(compare_hash_fields(&v, reply(2, vec![bulk("1"), bulk("3")]), Ignore::Lsn).unwrap().is_some());
        let (_, _, absent) = compare_hash_fields(&v, reply(0, vec![redis::Value::Nil, redis::Value::Nil]), Ignore::Lsn).unwrap().unwrap();
        assert!(absent);
        let empty = view("p:h:2", "hash", &[]);
        assert_eq!(compare_hash_fields(&empty, reply(0, vec![]), Ignore::Lsn).unwrap(), None);
        assert!(compare_hash_fields(&empty, reply(1, vec![]), Ignore::Lsn).unwrap().is_some());
    }

    fn stamped(key: &str, kind: &'static str, values: &[&str]) -> ViewWrite {
        ViewWrite { provenance: true, ..view(key, kind, values) }
    }

    fn get(text: &str) -> redis::Value {
        redis::Value::BulkString(text.as_bytes().to_vec())
    }

    /// A rewrite leaves a JSON view that differs only in `_lsn` as it is and rewrites one of
    /// another `_version` or value; the audit leaves both fields out (its views carry neither).
    #[test]
    fn json_views_compare_without_their_stamp_as_told() {
        let want = stamped("p:film:1", "json", &[r#"{"id":1,"t":"A","_lsn":"0/200","_version":"aaaaaaaaaaaa"}"#]);
        let older = get(r#"{"id":1,"t":"A","_lsn":"0/100","_version":"aaaaaaaaaaaa"}"#);
        assert_eq!(compare_view(&want, older.clone(), Ignore::Lsn).unwrap(), None, "only the LSN differs: exact");
        let other_def = get(r#"{"id":1,"t":"A","_lsn":"0/100","_version":"bbbbbbbbbbbb"}"#);
        let (w, a, absent) = compare_view(&want, other_def.clone(), Ignore::Lsn).unwrap().expect("another definition made it");
        assert!(!absent);
        assert_eq!((w["_version"].as_str(), a["_version"].as_str(), w.get("_lsn")), (Some("aaaaaaaaaaaa"), Some("bbbbbbbbbbbb"), None));
        assert!(compare_view(&want, get(r#"{"id":1,"t":"B","_lsn":"0/200","_version":"aaaaaaaaaaaa"}"#), Ignore::Lsn).unwrap().is_some());
        assert!(compare_view(&want, get(r#"{"id":1,"t":"A"}"#), Ignore::Lsn).unwrap().is_some(), "written before provenance was on");
        // Another spelling of the same JSON (parsed and compared).
        assert_eq!(compare_view(&want, get(r#"{"t":"A","_version":"aaaaaaaaaaaa","id":1,"_lsn":"9/9"}"#), Ignore::Lsn).unwrap(), None);

        let audited = stamped("p:film:1", "json", &[r#"{"id":1,"t":"A"}"#]);
        assert_eq!(compare_view(&audited, older, Ignore::Provenance).unwrap(), None);
        assert_eq!(compare_view(&audited, other_def, Ignore::Provenance).unwrap(), None, "the audit compares values only");
        assert_eq!(compare_view(&audited, get(r#"{"id":1,"t":"A"}"#), Ignore::Provenance).unwrap(), None);
        let (w, a, _) = compare_view(&audited, get(r#"{"id":1,"t":"B","_lsn":"0/1","_version":"aaaaaaaaaaaa"}"#), Ignore::Provenance).unwrap().unwrap();
        assert_eq!((w, a), (serde_json::json!({"id": 1, "t": "A"}), serde_json::json!({"id": 1, "t": "B"})), "diffs show values only");
        // Without provenance on the target, `_lsn` is a value like any other.
        let plain = view("p:film:1", "json", &[r#"{"id":1,"t":"A","_lsn":"0/200","_version":"aaaaaaaaaaaa"}"#]);
        assert!(compare_view(&plain, get(r#"{"id":1,"t":"A","_lsn":"0/100","_version":"aaaaaaaaaaaa"}"#), Ignore::Provenance).unwrap().is_some());
    }

    #[test]
    fn hash_views_compare_without_their_stamp_as_told() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let reply = |len: i64, vals: Vec<redis::Value>| redis::Value::Array(vec![redis::Value::Int(len), redis::Value::Array(vals)]);
        // A rewrite's view: its fields and the stamp; HMGET reads exactly those.
        let want = stamped("p:h:1", "hash", &["a", "1", "_lsn", "0/200", "_version", "aaaaaaaaaaaa"]);
        assert_eq!(hmget_fields(&want).collect::<Vec<_>>(), vec!["a", "_lsn", "_version"]);
        assert_eq!(compare_hash_fields(&want, reply(3, vec![bulk("1"), bulk("0/100"), bulk("aaaaaaaaaaaa")]), Ignore::Lsn).unwrap(), None);
        assert!(compare_hash_fields(&want, reply(3, vec![bulk("1"), bulk("0/100"), bulk("bbbbbbbbbbbb")]), Ignore::Lsn).unwrap().is_some());
        assert!(compare_hash_fields(&want, reply(1, vec![bulk("1"), redis::Value::Nil, redis::Value::Nil]), Ignore::Lsn).unwrap().is_some(), "no stamp yet");
        assert!(compare_hash_fields(&want, reply(4, vec![bulk("1"), bulk("0/100"), bulk("aaaaaaaaaaaa")]), Ignore::Lsn).unwrap().is_some(), "a stray field");
        // The audit's view has no stamp; HMGET also reads the stamp's fields, so HLEN adds up.
        let audited = stamped("p:h:1", "hash", &["a", "1"]);
        assert_eq!(hmget_fields(&audited).collect::<Vec<_>>(), vec!["a", "_lsn", "_version"]);
        assert_eq!(compare_hash_fields(&audited, reply(3, vec![bulk("1"), bulk("0/100"), bulk("bbbbbbbbbbbb")]), Ignore::Provenance).unwrap(), None);
        assert_eq!(compare_hash_fields(&audited, reply(1, vec![bulk("1"), redis::Value::Nil, redis::Value::Nil]), Ignore::Provenance).unwrap(), None);
        let (w, a, _) = compare_hash_fields(&audited, reply(4, vec![bulk("2"), bulk("0/100"), bulk("x")]), Ignore::Provenance).unwrap().unwrap();
        assert_eq!((w, a), (serde_json::json!({"a": "1"}), serde_json::json!({"a": "2", "(other fields)": 1})));
        // HGETALL (the audit's detail) the same way.
        let all = |pairs: &[&str]| redis::Value::Array(pairs.iter().map(|s| bulk(s)).collect());
        assert_eq!(compare_view(&audited, all(&["a", "1", "_lsn", "0/1", "_version", "x"]), Ignore::Provenance).unwrap(), None);
        assert!(compare_view(&audited, all(&["a", "1", "_lsn", "0/1", "b", "x"]), Ignore::Provenance).unwrap().is_some());
        assert_eq!(compare_view(&want, all(&["a", "1", "_lsn", "0/1", "_version", "aaaaaaaaaaaa"]), Ignore::Lsn).unwrap(), None);
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
